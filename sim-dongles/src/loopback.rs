//! A vendor-class bulk device for throughput measurements: endpoint 1 IN is
//! an endless source of a known pattern, endpoint 2 OUT a sink that counts
//! what it swallows, and endpoint 4 OUT feeds endpoint 3 IN back in order,
//! so data integrity can be checked end to end.

use std::collections::VecDeque;

use usbip_proto::SetupPacket;

use crate::descriptor::{self, EndpointType};
use crate::function::{Descriptors, Function, InResponse, Stall};

/// USB product id of the loopback device.
pub const PRODUCT_ID: u16 = 0x0003;
/// The most the loop endpoint holds before it stalls further writes.
pub const LOOP_CAPACITY: usize = 16 << 20;

const SOURCE_EP: u8 = 1;
const SINK_EP: u8 = 2;
const LOOP_IN_EP: u8 = 3;
const LOOP_OUT_EP: u8 = 4;

/// Period of the source pattern: a prime, so the pattern does not repeat
/// at any power-of-two stride and lost or reordered blocks show.
const PERIOD: usize = 251;

/// The byte the source sends at stream offset `i`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PERIOD as u64) as u8
}

/// `len` bytes of the pattern starting at stream offset `start`, built
/// by block copies: the source must never be what a benchmark measures.
fn pattern(start: u64, len: usize) -> Vec<u8> {
    const CYCLE: [u8; PERIOD] = {
        let mut c = [0u8; PERIOD];
        let mut i = 0;
        while i < PERIOD {
            c[i] = i as u8;
            i += 1;
        }
        c
    };
    let mut out = Vec::with_capacity(len);
    let mut phase = (start % PERIOD as u64) as usize;
    while out.len() < len {
        let take = (PERIOD - phase).min(len - out.len());
        out.extend_from_slice(&CYCLE[phase..phase + take]);
        phase = 0;
    }
    out
}

/// Vendor request: read the sink's byte count (8 bytes little-endian).
pub const REQ_SINK_COUNT: u8 = 0x01;

/// The simulated loopback device.
#[derive(Debug, Default)]
pub struct Loopback {
    source_offset: u64,
    sink_count: u64,
    looped: VecDeque<u8>,
}

impl Loopback {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Function for Loopback {
    fn descriptors(&self) -> Descriptors {
        let iface = descriptor::interface(0, 4, [0xff, 0x00, 0x00]);
        let eps: Vec<Vec<u8>> = [0x80 | SOURCE_EP, SINK_EP, 0x80 | LOOP_IN_EP, LOOP_OUT_EP]
            .iter()
            .map(|&a| descriptor::endpoint(a, EndpointType::Bulk, 512, 0))
            .collect();
        Descriptors {
            device: descriptor::device([0xff, 0x00, 0x00], PRODUCT_ID, 0x0100),
            configuration: descriptor::configuration(
                1,
                &[&iface, &eps[0], &eps[1], &eps[2], &eps[3]],
            ),
            strings: descriptor::strings("Simulated bulk loopback", "LOOP00000001"),
        }
    }

    fn control(&mut self, setup: &SetupPacket, _data_out: &[u8]) -> Result<Vec<u8>, Stall> {
        match (setup.request_type, setup.request) {
            (0xc0, REQ_SINK_COUNT) => Ok(self.sink_count.to_le_bytes().to_vec()),
            _ => Err(Stall),
        }
    }

    fn data_out(&mut self, ep: u8, data: &[u8]) -> Result<(), Stall> {
        match ep {
            SINK_EP => {
                self.sink_count += data.len() as u64;
                Ok(())
            }
            LOOP_OUT_EP if self.looped.len() + data.len() <= LOOP_CAPACITY => {
                self.looped.extend(data);
                Ok(())
            }
            _ => Err(Stall),
        }
    }

    fn data_in(&mut self, ep: u8, max_len: usize) -> InResponse {
        match ep {
            SOURCE_EP => {
                let start = self.source_offset;
                self.source_offset += max_len as u64;
                InResponse::Data(pattern(start, max_len))
            }
            LOOP_IN_EP if self.looped.is_empty() => InResponse::Nak,
            LOOP_IN_EP => {
                let n = max_len.min(self.looped.len());
                InResponse::Data(self.looped.drain(..n).collect())
            }
            _ => InResponse::Stall,
        }
    }

    fn reset(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_continues_its_pattern_across_transfers() {
        let mut l = Loopback::new();
        let InResponse::Data(a) = l.data_in(SOURCE_EP, 300) else {
            panic!()
        };
        let InResponse::Data(b) = l.data_in(SOURCE_EP, 300) else {
            panic!()
        };
        let joined: Vec<u8> = a.into_iter().chain(b).collect();
        let expected: Vec<u8> = (0..600).map(pattern_byte).collect();
        assert_eq!(joined, expected);
    }

    #[test]
    fn block_pattern_matches_the_byte_formula() {
        for (start, len) in [(0, 0), (0, 1), (250, 3), (1000, 1000), (7, 70_000)] {
            let expected: Vec<u8> = (start..start + len as u64).map(pattern_byte).collect();
            assert_eq!(pattern(start, len), expected, "start {start} len {len}");
        }
    }

    #[test]
    fn loop_returns_data_in_order_and_naks_when_empty() {
        let mut l = Loopback::new();
        assert_eq!(l.data_in(LOOP_IN_EP, 64), InResponse::Nak);
        l.data_out(LOOP_OUT_EP, b"hello ").unwrap();
        l.data_out(LOOP_OUT_EP, b"world").unwrap();
        assert_eq!(
            l.data_in(LOOP_IN_EP, 64),
            InResponse::Data(b"hello world".to_vec())
        );
    }

    #[test]
    fn sink_counts_bytes() {
        let mut l = Loopback::new();
        l.data_out(SINK_EP, &[0; 1000]).unwrap();
        let get = SetupPacket {
            request_type: 0xc0,
            request: REQ_SINK_COUNT,
            value: 0,
            index: 0,
            length: 8,
        };
        assert_eq!(l.control(&get, &[]).unwrap(), 1000u64.to_le_bytes());
    }
}
