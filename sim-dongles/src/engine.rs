//! Runs one simulated device: a thread that plays the part of a USB device
//! controller around a [`Function`].
//!
//! The engine answers the standard control requests from the descriptors,
//! keeps each endpoint's halt flag, and queues IN transfers until the function
//! has data for them, in submission order per endpoint, the way a device
//! NAKs until it is ready. Completions go to a callback, so the engine knows
//! nothing of the async runtime or the protocol in front of it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Instant;

use usbip_proto::{feature, request, Recipient, RequestType, SetupPacket};

use crate::function::{Descriptors, Function, InResponse, Stall};

/// Descriptor type codes (USB 2.0 table 9-5).
mod desc_type {
    pub const DEVICE: u8 = 1;
    pub const CONFIGURATION: u8 = 2;
    pub const STRING: u8 = 3;
    pub const DEVICE_QUALIFIER: u8 = 6;
}

/// `bmRequestType` of a hub class request to a port (`USB_RT_PORT`): a
/// port reset arrives this way from clients that forward it.
const RT_PORT: u8 = 0x23;

/// One transfer submitted to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The caller's handle, echoed in the completion (USB/IP's seqnum).
    pub id: u64,
    /// Endpoint address with the direction bit (0x81 = EP 1 IN); 0x00 or
    /// 0x80 for the default control pipe.
    pub endpoint: u8,
    /// The setup packet of a control transfer.
    pub setup: Option<SetupPacket>,
    /// OUT data.
    pub data: Vec<u8>,
    /// The most an IN transfer may return.
    pub max_len: usize,
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferStatus {
    Completed,
    /// The endpoint stalled (`-EPIPE`).
    Stalled,
    /// Cancelled before the device answered (`-ECONNRESET`).
    Cancelled,
    /// The endpoint went away: reset, reconfigured or device released
    /// (`-ESHUTDOWN`).
    Shutdown,
}

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: u64,
    pub status: TransferStatus,
    /// IN data (empty for OUT).
    pub data: Vec<u8>,
    /// Bytes transferred: `data.len()` for IN, bytes accepted for OUT.
    pub actual_length: usize,
}

/// Where completions go. Called on the engine thread.
pub type CompletionSink = Box<dyn FnMut(Completion) + Send>;

enum Event {
    Attach(CompletionSink),
    Submit(Transfer),
    Cancel(u64),
    /// The importer went away: fail everything and return to power-on state.
    Detach,
}

/// A handle to a running simulated device. Dropping it stops the thread.
#[derive(Debug)]
pub struct SimDevice {
    descriptors: Descriptors,
    events: mpsc::Sender<Event>,
}

impl SimDevice {
    /// Starts the engine thread for `function`.
    pub fn spawn(name: &str, function: Box<dyn Function>) -> std::io::Result<Self> {
        let descriptors = function.descriptors();
        let (events, rx) = mpsc::channel();
        let engine = Engine::new(function, descriptors.clone());
        thread::Builder::new()
            .name(format!("sim-{name}"))
            .spawn(move || engine.run(rx))?;
        Ok(Self {
            descriptors,
            events,
        })
    }

    /// The device's descriptors.
    pub fn descriptors(&self) -> &Descriptors {
        &self.descriptors
    }

    /// Connects an importer: completions of later submissions go to `sink`.
    pub fn attach(&self, sink: CompletionSink) {
        let _ = self.events.send(Event::Attach(sink));
    }

    /// Queues a transfer.
    pub fn submit(&self, transfer: Transfer) {
        let _ = self.events.send(Event::Submit(transfer));
    }

    /// Cancels transfer `id` if the device has not answered it yet; it then
    /// completes with [`TransferStatus::Cancelled`]. A transfer that already
    /// completed is unaffected.
    pub fn cancel(&self, id: u64) {
        let _ = self.events.send(Event::Cancel(id));
    }

    /// Disconnects the importer: pending transfers complete with
    /// [`TransferStatus::Shutdown`] and the device returns to its power-on
    /// state, ready for the next importer.
    pub fn detach(&self) {
        let _ = self.events.send(Event::Detach);
    }
}

struct Engine {
    function: Box<dyn Function>,
    descriptors: Descriptors,
    sink: Option<CompletionSink>,
    configuration: u8,
    halted: BTreeSet<u8>,
    /// IN transfers waiting for data, by endpoint address, oldest first.
    pending_in: BTreeMap<u8, VecDeque<Transfer>>,
    deadline: Option<Instant>,
}

impl Engine {
    fn new(function: Box<dyn Function>, descriptors: Descriptors) -> Self {
        Self {
            function,
            descriptors,
            sink: None,
            configuration: 0,
            halted: BTreeSet::new(),
            pending_in: BTreeMap::new(),
            deadline: None,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Event>) {
        self.deadline = self.function.tick(Instant::now());
        loop {
            let event = match self.deadline {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(event) => Some(event),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match rx.recv() {
                    Ok(event) => Some(event),
                    Err(_) => return,
                },
            };
            match event {
                Some(Event::Attach(sink)) => self.sink = Some(sink),
                Some(Event::Submit(t)) => self.submit(t),
                Some(Event::Cancel(id)) => self.cancel(id),
                Some(Event::Detach) => {
                    self.power_cycle(TransferStatus::Shutdown);
                    self.sink = None;
                }
                None => {}
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| d <= now) {
                self.deadline = self.function.tick(now);
            }
            self.serve_pending();
        }
    }

    fn complete(&mut self, id: u64, status: TransferStatus, data: Vec<u8>, actual: usize) {
        if let Some(sink) = self.sink.as_mut() {
            sink(Completion {
                id,
                status,
                data,
                actual_length: actual,
            });
        }
    }

    fn fail(&mut self, t: &Transfer, status: TransferStatus) {
        self.complete(t.id, status, Vec::new(), 0);
    }

    fn submit(&mut self, t: Transfer) {
        let ep = t.endpoint;
        if ep & 0x7f == 0 {
            return self.control(t);
        }
        if self.configuration == 0 {
            return self.fail(&t, TransferStatus::Shutdown);
        }
        if self.halted.contains(&ep) {
            return self.fail(&t, TransferStatus::Stalled);
        }
        if ep & 0x80 != 0 {
            self.pending_in.entry(ep).or_default().push_back(t);
            return;
        }
        match self.function.data_out(ep, &t.data) {
            Ok(()) => self.complete(t.id, TransferStatus::Completed, Vec::new(), t.data.len()),
            Err(Stall) => {
                self.halted.insert(ep);
                self.fail(&t, TransferStatus::Stalled);
            }
        }
    }

    /// Gives every queued IN transfer the data the function now has.
    fn serve_pending(&mut self) {
        let endpoints: Vec<u8> = self.pending_in.keys().copied().collect();
        for ep in endpoints {
            while let Some(front) = self.pending_in.get(&ep).and_then(|q| q.front()) {
                let (id, max_len) = (front.id, front.max_len);
                if self.halted.contains(&ep) {
                    self.pop_pending(ep);
                    self.complete(id, TransferStatus::Stalled, Vec::new(), 0);
                    continue;
                }
                match self.function.data_in(ep & 0x7f, max_len) {
                    InResponse::Nak => break,
                    InResponse::Data(mut data) => {
                        data.truncate(max_len);
                        self.pop_pending(ep);
                        let n = data.len();
                        self.complete(id, TransferStatus::Completed, data, n);
                    }
                    InResponse::Stall => {
                        self.halted.insert(ep);
                    }
                }
            }
        }
    }

    fn pop_pending(&mut self, ep: u8) {
        if let Some(q) = self.pending_in.get_mut(&ep) {
            q.pop_front();
            if q.is_empty() {
                self.pending_in.remove(&ep);
            }
        }
    }

    fn cancel(&mut self, id: u64) {
        let found = self.pending_in.iter_mut().find_map(|(&ep, q)| {
            let pos = q.iter().position(|t| t.id == id)?;
            q.remove(pos);
            Some(ep)
        });
        if let Some(ep) = found {
            if self.pending_in.get(&ep).is_some_and(VecDeque::is_empty) {
                self.pending_in.remove(&ep);
            }
            self.complete(id, TransferStatus::Cancelled, Vec::new(), 0);
        }
    }

    /// Fails every queued transfer with `status` and returns the function
    /// to its power-on state.
    fn power_cycle(&mut self, status: TransferStatus) {
        self.flush_pending(status);
        self.halted.clear();
        self.configuration = 0;
        self.function.reset();
    }

    fn flush_pending(&mut self, status: TransferStatus) {
        let pending = std::mem::take(&mut self.pending_in);
        for t in pending.into_values().flatten() {
            self.fail(&t, status);
        }
    }

    fn control(&mut self, t: Transfer) {
        let Some(setup) = t.setup else {
            return self.fail(&t, TransferStatus::Stalled);
        };
        let result = if setup.request_kind() == RequestType::Standard {
            self.standard_request(&setup)
        } else if setup.request_type == RT_PORT
            && setup.request == request::SET_FEATURE
            && setup.value == feature::PORT_RESET
        {
            self.power_cycle(TransferStatus::Shutdown);
            Ok(Vec::new())
        } else {
            self.function.control(&setup, &t.data)
        };
        match result {
            Ok(mut data) => {
                if setup.is_in() {
                    data.truncate(usize::from(setup.length).min(t.max_len));
                    let n = data.len();
                    self.complete(t.id, TransferStatus::Completed, data, n);
                } else {
                    self.complete(t.id, TransferStatus::Completed, Vec::new(), t.data.len());
                }
            }
            Err(Stall) => self.fail(&t, TransferStatus::Stalled),
        }
    }

    fn standard_request(&mut self, setup: &SetupPacket) -> Result<Vec<u8>, Stall> {
        match (setup.request, setup.recipient()) {
            (request::GET_DESCRIPTOR, Recipient::Device) => self.descriptor(setup.value),
            (request::GET_DESCRIPTOR, Recipient::Interface) => Err(Stall),
            (request::SET_ADDRESS, Recipient::Device) => Ok(Vec::new()),
            (request::GET_CONFIGURATION, Recipient::Device) => Ok(vec![self.configuration]),
            (request::SET_CONFIGURATION, Recipient::Device) => {
                let value = u8::try_from(setup.value).map_err(|_| Stall)?;
                if value > 1 {
                    return Err(Stall);
                }
                self.flush_pending(TransferStatus::Shutdown);
                self.halted.clear();
                self.configuration = value;
                self.function.set_configuration(value);
                Ok(Vec::new())
            }
            (request::GET_INTERFACE, Recipient::Interface) if self.configuration != 0 => {
                Ok(vec![0])
            }
            (request::SET_INTERFACE, Recipient::Interface) if self.configuration != 0 => {
                let interface = u8::try_from(setup.index).map_err(|_| Stall)?;
                let alt = u8::try_from(setup.value).map_err(|_| Stall)?;
                self.function.set_interface(interface, alt)?;
                // A new alternate setting resets its endpoints' state.
                self.halted.clear();
                Ok(Vec::new())
            }
            (request::GET_STATUS, Recipient::Device) => {
                let self_powered =
                    self.descriptors.configuration.get(7).copied().unwrap_or(0) & 0x40 != 0;
                Ok(vec![u8::from(self_powered), 0])
            }
            (request::GET_STATUS, Recipient::Interface) => Ok(vec![0, 0]),
            (request::GET_STATUS, Recipient::Endpoint) => {
                let ep = setup.index as u8;
                Ok(vec![u8::from(self.halted.contains(&ep)), 0])
            }
            (request::CLEAR_FEATURE, Recipient::Endpoint)
                if setup.value == feature::ENDPOINT_HALT =>
            {
                let ep = setup.index as u8;
                self.halted.remove(&ep);
                self.function.clear_halt(ep);
                Ok(Vec::new())
            }
            (request::SET_FEATURE, Recipient::Endpoint)
                if setup.value == feature::ENDPOINT_HALT =>
            {
                let ep = setup.index as u8;
                if ep & 0x7f != 0 {
                    self.halted.insert(ep);
                }
                Ok(Vec::new())
            }
            (request::CLEAR_FEATURE | request::SET_FEATURE, Recipient::Device)
                if setup.value == feature::DEVICE_REMOTE_WAKEUP =>
            {
                Ok(Vec::new())
            }
            _ => Err(Stall),
        }
    }

    fn descriptor(&self, value: u16) -> Result<Vec<u8>, Stall> {
        let [index, kind] = value.to_le_bytes();
        match kind {
            desc_type::DEVICE => Ok(self.descriptors.device.to_vec()),
            desc_type::CONFIGURATION if index == 0 => Ok(self.descriptors.configuration.clone()),
            desc_type::STRING if index == 0 => Ok(vec![4, desc_type::STRING, 0x09, 0x04]),
            desc_type::STRING => {
                let (_, text) = self
                    .descriptors
                    .strings
                    .iter()
                    .find(|(i, _)| *i == index)
                    .ok_or(Stall)?;
                Ok(string_descriptor(text))
            }
            desc_type::DEVICE_QUALIFIER => {
                let d = &self.descriptors.device;
                // bcdUSB, class, subclass, protocol, bMaxPacketSize0,
                // bNumConfigurations, as the device descriptor has them.
                Ok(vec![
                    10,
                    desc_type::DEVICE_QUALIFIER,
                    d[2],
                    d[3],
                    d[4],
                    d[5],
                    d[6],
                    d[7],
                    d[17],
                    0,
                ])
            }
            _ => Err(Stall),
        }
    }
}

/// A string descriptor: UTF-16LE, at most 126 code units.
pub fn string_descriptor(text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().take(126).collect();
    let mut out = Vec::with_capacity(2 + units.len() * 2);
    out.push((2 + units.len() * 2) as u8);
    out.push(desc_type::STRING);
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    use super::*;
    use crate::loopback::Loopback;

    const WAIT: Duration = Duration::from_secs(5);

    fn device() -> (SimDevice, Receiver<Completion>) {
        let dev = SimDevice::spawn("test", Box::new(Loopback::new())).unwrap();
        let (tx, rx) = mpsc::channel();
        dev.attach(Box::new(move |c| {
            let _ = tx.send(c);
        }));
        (dev, rx)
    }

    fn control_out(id: u64, request_type: u8, request: u8, value: u16, index: u16) -> Transfer {
        Transfer {
            id,
            endpoint: 0,
            setup: Some(SetupPacket {
                request_type,
                request,
                value,
                index,
                length: 0,
            }),
            data: Vec::new(),
            max_len: 0,
        }
    }

    fn bulk(id: u64, endpoint: u8, data: &[u8], max_len: usize) -> Transfer {
        Transfer {
            id,
            endpoint,
            setup: None,
            data: data.to_vec(),
            max_len,
        }
    }

    fn configured() -> (SimDevice, Receiver<Completion>) {
        let (dev, rx) = device();
        dev.submit(control_out(0, 0, request::SET_CONFIGURATION, 1, 0));
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Completed
        );
        (dev, rx)
    }

    #[test]
    fn detach_fails_waiting_transfers_and_forgets_them() {
        let (dev, rx) = configured();
        dev.submit(bulk(1, 0x83, &[], 64));
        dev.detach();
        let c = rx.recv_timeout(WAIT).unwrap();
        assert_eq!((c.id, c.status), (1, TransferStatus::Shutdown));
        // The next importer starts from power-on state with an empty queue.
        let (tx, rx2) = mpsc::channel();
        dev.attach(Box::new(move |c| {
            let _ = tx.send(c);
        }));
        dev.submit(control_out(2, 0, request::SET_CONFIGURATION, 1, 0));
        dev.submit(bulk(3, 0x04, b"xyz", 0));
        dev.submit(bulk(4, 0x83, &[], 64));
        let ids: Vec<_> = (0..3).map(|_| rx2.recv_timeout(WAIT).unwrap()).collect();
        assert_eq!(ids[2].id, 4);
        assert_eq!(ids[2].data, b"xyz");
        assert!(rx.try_recv().is_err(), "old importer got a completion");
    }

    #[test]
    fn cancel_completes_only_a_waiting_transfer() {
        let (dev, rx) = configured();
        dev.submit(bulk(1, 0x83, &[], 64));
        dev.cancel(1);
        let c = rx.recv_timeout(WAIT).unwrap();
        assert_eq!((c.id, c.status), (1, TransferStatus::Cancelled));
        // Cancelling something already answered does nothing.
        dev.submit(bulk(2, 0x81, &[], 8));
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Completed
        );
        dev.cancel(2);
        dev.submit(bulk(3, 0x81, &[], 8));
        assert_eq!(rx.recv_timeout(WAIT).unwrap().id, 3);
    }

    #[test]
    fn halted_endpoint_stalls_until_cleared() {
        let (dev, rx) = configured();
        dev.submit(control_out(
            1,
            0x02,
            request::SET_FEATURE,
            feature::ENDPOINT_HALT,
            0x81,
        ));
        rx.recv_timeout(WAIT).unwrap();
        dev.submit(bulk(2, 0x81, &[], 8));
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Stalled
        );
        dev.submit(control_out(
            3,
            0x02,
            request::CLEAR_FEATURE,
            feature::ENDPOINT_HALT,
            0x81,
        ));
        rx.recv_timeout(WAIT).unwrap();
        dev.submit(bulk(4, 0x81, &[], 8));
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap().status,
            TransferStatus::Completed
        );
    }

    #[test]
    fn string_descriptors_are_utf16() {
        assert_eq!(string_descriptor("vU"), vec![6, 3, b'v', 0, b'U', 0]);
    }
}
