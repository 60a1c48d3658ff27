//! A CDC-ACM serial temperature sensor, like the research's Bluetooth-SPP
//! Arduino: while the host holds the line open (DTR asserted) it sends one
//! reading line per second, and it echoes back every byte the host writes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use usbip_proto::SetupPacket;

use crate::descriptor::{self, EndpointType};
use crate::function::{Descriptors, Function, InResponse, Stall};

/// USB product id of the sensor.
pub const PRODUCT_ID: u16 = 0x0001;
/// Time between two readings.
pub const READING_PERIOD: Duration = Duration::from_secs(1);
/// Bytes the device buffers for the host before it drops the oldest
/// readings, as a UART with nobody reading would.
const TX_BUFFER: usize = 64 * 1024;

const DATA_IN_EP: u8 = 1;
const DATA_OUT_EP: u8 = 2;
const NOTIFY_EP: u8 = 3;

/// CDC class requests (CDC 1.2 PSTN table 13).
mod cdc {
    pub const SET_LINE_CODING: u8 = 0x20;
    pub const GET_LINE_CODING: u8 = 0x21;
    pub const SET_CONTROL_LINE_STATE: u8 = 0x22;
    pub const SEND_BREAK: u8 = 0x23;
    pub const DTR: u16 = 0x01;
}

/// The simulated serial sensor.
#[derive(Debug)]
pub struct Sensor {
    line_coding: [u8; 7],
    dtr: bool,
    to_host: VecDeque<u8>,
    readings: u64,
    /// A deterministic random walk, so readings look alive but tests and
    /// benchmarks are reproducible.
    temperature_centi: i32,
    rng: u32,
}

impl Default for Sensor {
    fn default() -> Self {
        Self::new()
    }
}

impl Sensor {
    pub fn new() -> Self {
        Self {
            // 115200 baud, 1 stop bit, no parity, 8 data bits.
            line_coding: [0x00, 0xc2, 0x01, 0x00, 0, 0, 8],
            dtr: false,
            to_host: VecDeque::new(),
            readings: 0,
            temperature_centi: 2150,
            rng: 0x2545_f491,
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.to_host.extend(bytes);
        // Drop whole old lines rather than cut one in half.
        while self.to_host.len() > TX_BUFFER {
            match self.to_host.iter().position(|&b| b == b'\n') {
                Some(end) => drop(self.to_host.drain(..=end)),
                None => self.to_host.clear(),
            }
        }
    }

    fn next_reading(&mut self) -> String {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let step = (self.rng % 21) as i32 - 10;
        self.temperature_centi = (self.temperature_centi + step).clamp(1500, 3000);
        self.readings += 1;
        let t = self.temperature_centi;
        format!(
            "reading {}: {}.{:02} C\r\n",
            self.readings,
            t / 100,
            t % 100
        )
    }
}

impl Function for Sensor {
    fn descriptors(&self) -> Descriptors {
        let comm = descriptor::interface(0, 1, [0x02, 0x02, 0x01]);
        let header = [5, 0x24, 0x00, 0x10, 0x01];
        let call_mgmt = [5, 0x24, 0x01, 0x00, 0x01];
        let acm = [4, 0x24, 0x02, 0x02];
        let union = [5, 0x24, 0x06, 0x00, 0x01];
        let notify = descriptor::endpoint(0x80 | NOTIFY_EP, EndpointType::Interrupt, 16, 8);
        let data = descriptor::interface(1, 2, [0x0a, 0x00, 0x00]);
        let data_in = descriptor::endpoint(0x80 | DATA_IN_EP, EndpointType::Bulk, 512, 0);
        let data_out = descriptor::endpoint(DATA_OUT_EP, EndpointType::Bulk, 512, 0);
        Descriptors {
            device: descriptor::device([0x02, 0x00, 0x00], PRODUCT_ID, 0x0100),
            configuration: descriptor::configuration(
                2,
                &[
                    &comm, &header, &call_mgmt, &acm, &union, &notify, &data, &data_in, &data_out,
                ],
            ),
            strings: descriptor::strings("Simulated temperature sensor", "SENSOR000001"),
        }
    }

    fn control(&mut self, setup: &SetupPacket, data_out: &[u8]) -> Result<Vec<u8>, Stall> {
        match (setup.request_type, setup.request) {
            (0x21, cdc::SET_LINE_CODING) if data_out.len() == 7 => {
                self.line_coding.copy_from_slice(data_out);
                Ok(Vec::new())
            }
            (0xa1, cdc::GET_LINE_CODING) => Ok(self.line_coding.to_vec()),
            (0x21, cdc::SET_CONTROL_LINE_STATE) => {
                self.dtr = setup.value & cdc::DTR != 0;
                Ok(Vec::new())
            }
            (0x21, cdc::SEND_BREAK) => Ok(Vec::new()),
            _ => Err(Stall),
        }
    }

    fn data_out(&mut self, ep: u8, data: &[u8]) -> Result<(), Stall> {
        if ep != DATA_OUT_EP {
            return Err(Stall);
        }
        self.queue(data);
        Ok(())
    }

    fn data_in(&mut self, ep: u8, max_len: usize) -> InResponse {
        match ep {
            DATA_IN_EP if !self.to_host.is_empty() => {
                let n = max_len.min(self.to_host.len());
                InResponse::Data(self.to_host.drain(..n).collect())
            }
            // No serial-state notifications to send.
            DATA_IN_EP | NOTIFY_EP => InResponse::Nak,
            _ => InResponse::Stall,
        }
    }

    fn reset(&mut self) {
        *self = Self {
            readings: self.readings,
            temperature_centi: self.temperature_centi,
            rng: self.rng,
            ..Self::new()
        };
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        if self.dtr {
            let line = self.next_reading();
            self.queue(line.as_bytes());
        }
        Some(now + READING_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_out(request: u8, value: u16, len: u16) -> SetupPacket {
        SetupPacket {
            request_type: 0x21,
            request,
            value,
            index: 0,
            length: len,
        }
    }

    #[test]
    fn readings_flow_only_while_the_line_is_open() {
        let mut s = Sensor::new();
        let t0 = Instant::now();
        s.tick(t0);
        assert_eq!(s.data_in(DATA_IN_EP, 512), InResponse::Nak);
        s.control(&class_out(cdc::SET_CONTROL_LINE_STATE, 3, 0), &[])
            .unwrap();
        s.tick(t0 + READING_PERIOD);
        let InResponse::Data(line) = s.data_in(DATA_IN_EP, 512) else {
            panic!("no reading");
        };
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.starts_with("reading 1: ") && line.ends_with(" C\r\n"),
            "{line}"
        );
    }

    #[test]
    fn echoes_what_the_host_writes() {
        let mut s = Sensor::new();
        s.data_out(DATA_OUT_EP, b"ping 42\n").unwrap();
        assert_eq!(s.data_in(DATA_IN_EP, 4), InResponse::Data(b"ping".to_vec()));
        assert_eq!(
            s.data_in(DATA_IN_EP, 512),
            InResponse::Data(b" 42\n".to_vec())
        );
    }

    #[test]
    fn line_coding_round_trips() {
        let mut s = Sensor::new();
        let coding = [0x80, 0x25, 0, 0, 0, 0, 8]; // 9600 8N1
        s.control(&class_out(cdc::SET_LINE_CODING, 0, 7), &coding)
            .unwrap();
        let get = SetupPacket {
            request_type: 0xa1,
            request: cdc::GET_LINE_CODING,
            value: 0,
            index: 0,
            length: 7,
        };
        assert_eq!(s.control(&get, &[]).unwrap(), coding);
        // A short line coding is a protocol error, not a silent truncation.
        assert_eq!(
            s.control(&class_out(cdc::SET_LINE_CODING, 0, 3), &[1, 2, 3]),
            Err(Stall)
        );
    }

    #[test]
    fn a_full_buffer_drops_whole_old_lines() {
        let mut s = Sensor::new();
        for _ in 0..(TX_BUFFER / 8 + 10) {
            s.data_out(DATA_OUT_EP, b"abcdefg\n").unwrap();
        }
        assert!(s.to_host.len() <= TX_BUFFER);
        let InResponse::Data(first) = s.data_in(DATA_IN_EP, 8) else {
            panic!()
        };
        assert_eq!(first, b"abcdefg\n");
    }
}
