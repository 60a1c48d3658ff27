//! Interrupt IN prefetch: a layer between a front-end and the devices
//! ([`Ports`] downwards, [`UpcallSink`] upwards) that keeps several
//! interrupt IN transfers outstanding on an endpoint the guest polls, and
//! answers the guest's transfers from what they bring back.
//!
//! A guest's driver polls an interrupt IN endpoint with one transfer at a
//! time (usbhid does): over a link, each report then costs a round trip
//! before the next can even be asked for, and a device that produces
//! reports faster than that loses them. With `depth` transfers outstanding
//! the device is polled at its own pace, as a local host controller would,
//! and the reports wait here for the guest. usbredir's interrupt receiving
//! does the same for QEMU's `usb-redir`.
//!
//! * Prefetching starts with the guest's first interrupt IN transfer on an
//!   endpoint and uses its length and interval.
//! * It goes on while the guest polls: reports nobody asked for are kept,
//!   at most [`MAX_READY`]; beyond that the transfers that come back are
//!   not resubmitted until the guest takes some.
//! * It stops when the guest cancels its transfer (it closed the device),
//!   on a failed transfer (stall, error: handed to the guest's next
//!   transfer, the guest recovers as it would locally), on a port reset or
//!   disconnect. Reports fetched but not taken are then dropped, as a
//!   device drops a report that nobody read before the next one.
//! * Prefetch transfers carry tags of their own, with [`OWN_TAG`] set, out
//!   of the range a front-end's tags come from.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing::debug;

use crate::transfer::{Completion, Port, PortEvent, Ports, Status, Transfer, TransferKind};
use crate::transfer::{Upcall, UpcallSink};

/// Interrupt IN transfers kept outstanding per endpoint unless told otherwise
/// (`--interrupt-prefetch`): enough for a report every 8 ms over a round trip of up to
/// about 60 ms. The usbredir front-end's interrupt receiving keeps as many.
pub const DEFAULT_DEPTH: u8 = 8;
/// Reports kept for a guest that has not asked for them yet.
pub const MAX_READY: usize = 64;
/// Set in the tags of the prefetch's own transfers.
pub const OWN_TAG: u64 = 1 << 63;

/// One endpoint being prefetched.
#[derive(Debug)]
struct Endpoint {
    length: u32,
    interval: u32,
    /// Our transfers on the device.
    outstanding: Vec<u64>,
    /// What came back that no guest transfer has taken yet, in order.
    ready: VecDeque<Completion>,
    /// Guest transfers waiting for a report, oldest first.
    waiting: VecDeque<Transfer>,
    /// One of our transfers failed: nothing more is fetched until the guest
    /// has taken what is ready, the failure last.
    halted: bool,
}

impl Endpoint {
    fn new(t: &Transfer) -> Self {
        Self {
            length: t.length,
            interval: t.interval,
            outstanding: Vec::new(),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            halted: false,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    endpoints: HashMap<(Port, u8), Endpoint>,
    next_tag: u64,
}

/// The layer; see the module documentation.
pub struct Prefetch {
    depth: usize,
    inner: OnceLock<Arc<dyn Ports>>,
    up: Arc<dyn UpcallSink>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

/// What to do once the lock is released: the devices and the front-end
/// are called without it, so that neither can call back into a held lock.
#[derive(Debug, Default)]
struct Deferred {
    submit: Vec<Transfer>,
    cancel: Vec<(Port, u64)>,
    up: Vec<Upcall>,
}

impl Prefetch {
    /// A layer keeping `depth` transfers outstanding per polled endpoint
    /// (at least 1), delivering to `up`. The devices are set afterwards
    /// with [`Prefetch::set_ports`], since they deliver to this layer.
    pub fn new(depth: usize, up: Arc<dyn UpcallSink>) -> Arc<Self> {
        Arc::new(Self {
            depth: depth.max(1),
            inner: OnceLock::new(),
            up,
            state: Mutex::new(State::default()),
        })
    }

    /// The devices below; set once.
    pub fn set_ports(&self, ports: Arc<dyn Ports>) {
        if self.inner.set(ports).is_err() {
            panic!("Prefetch::set_ports called twice");
        }
    }

    fn ports(&self) -> &Arc<dyn Ports> {
        self.inner
            .get()
            .expect("Prefetch::set_ports must come before any transfer")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every change
        // is made before anything is called.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, d: Deferred) {
        for (port, tag) in d.cancel {
            self.ports().cancel(port, tag);
        }
        for t in d.submit {
            self.ports().submit(t);
        }
        for u in d.up {
            self.up.upcall(u);
        }
    }

    /// Keeps `depth` transfers outstanding on the endpoint, unless enough
    /// reports are waiting already.
    fn top_up(&self, st: &mut State, key: (Port, u8), d: &mut Deferred) {
        let Some(ep) = st.endpoints.get(&key) else {
            return;
        };
        if ep.halted {
            return;
        }
        let room = MAX_READY.saturating_sub(ep.ready.len() + ep.outstanding.len());
        let wanted = self.depth.saturating_sub(ep.outstanding.len()).min(room);
        for _ in 0..wanted {
            st.next_tag += 1;
            let tag = OWN_TAG | st.next_tag;
            let ep = st.endpoints.get_mut(&key).expect("looked up above");
            ep.outstanding.push(tag);
            d.submit.push(Transfer {
                interval: ep.interval,
                ..Transfer::new(tag, key.0, key.1, TransferKind::Interrupt, ep.length)
            });
        }
    }

    /// Stops prefetching on the endpoint: its transfers are cancelled, its
    /// reports dropped, and the guest transfers still waiting completed
    /// with `status`.
    fn stop(st: &mut State, key: (Port, u8), status: Status, d: &mut Deferred) {
        let Some(ep) = st.endpoints.remove(&key) else {
            return;
        };
        if !ep.ready.is_empty() {
            debug!(
                port = key.0,
                endpoint = key.1,
                dropped = ep.ready.len(),
                "interrupt prefetch stopped"
            );
        }
        d.cancel
            .extend(ep.outstanding.iter().map(|&tag| (key.0, tag)));
        d.up.extend(
            ep.waiting
                .iter()
                .map(|t| Upcall::Completed(Completion::failed(key.0, t.id, status))),
        );
    }

    fn stop_port(st: &mut State, port: Port, status: Status, d: &mut Deferred) {
        let keys: Vec<_> = st
            .endpoints
            .keys()
            .filter(|k| k.0 == port)
            .copied()
            .collect();
        for key in keys {
            Self::stop(st, key, status, d);
        }
    }

    /// One of our transfers came back.
    fn on_own(&self, st: &mut State, c: Completion, d: &mut Deferred) {
        let key = st
            .endpoints
            .iter()
            .find(|(_, ep)| ep.outstanding.contains(&c.id))
            .map(|(k, _)| *k);
        // Cancelled by a stop, or from before one: nobody wants it.
        let Some(key) = key else {
            return;
        };
        let ep = st.endpoints.get_mut(&key).expect("found above");
        ep.outstanding.retain(|&t| t != c.id);
        let failed = !matches!(c.status, Status::Ok | Status::Short);
        match ep.waiting.pop_front() {
            Some(t) => d.up.push(Upcall::Completed(answer(c, &t))),
            None => ep.ready.push_back(c),
        }
        if !failed {
            self.top_up(st, key, d);
            return;
        }
        // The guest meets the failure in its turn and recovers (clears the
        // halt, resets) as it would locally; the reports fetched before it
        // come first. The other transfers are called back, and guest
        // transfers beyond the first go to the device as they are.
        ep.halted = true;
        d.cancel
            .extend(ep.outstanding.drain(..).map(|tag| (key.0, tag)));
        d.submit.extend(ep.waiting.drain(..));
    }
}

impl Ports for Prefetch {
    fn submit(&self, t: Transfer) {
        if t.kind != TransferKind::Interrupt || !t.is_in() {
            return self.ports().submit(t);
        }
        let key = (t.port, t.endpoint);
        let mut d = Deferred::default();
        {
            let mut st = self.lock();
            let ep = st.endpoints.entry(key).or_insert_with(|| Endpoint::new(&t));
            if ep.halted && ep.ready.is_empty() {
                // The first transfer after a failure: prefetching starts
                // again, with this transfer's sizes.
                *ep = Endpoint::new(&t);
            }
            match ep.ready.pop_front() {
                Some(c) => d.up.push(Upcall::Completed(answer(c, &t))),
                None => ep.waiting.push_back(t),
            }
            self.top_up(&mut st, key, &mut d);
        }
        self.run(d);
    }

    fn cancel(&self, port: Port, tag: u64) {
        let mut d = Deferred::default();
        let mut ours = false;
        {
            let mut st = self.lock();
            let key = st
                .endpoints
                .iter()
                .find(|(k, ep)| k.0 == port && ep.waiting.iter().any(|t| t.id == tag))
                .map(|(k, _)| *k);
            if let Some(key) = key {
                ours = true;
                let ep = st.endpoints.get_mut(&key).expect("found above");
                ep.waiting.retain(|t| t.id != tag);
                d.up.push(Upcall::Completed(Completion::failed(
                    port,
                    tag,
                    Status::Cancelled,
                )));
                // The guest stopped polling: so does the prefetch.
                if ep.waiting.is_empty() {
                    Self::stop(&mut st, key, Status::Cancelled, &mut d);
                }
            }
        }
        if ours {
            self.run(d);
        } else {
            self.ports().cancel(port, tag);
        }
    }

    fn reset_port(&self, port: Port, token: u64) {
        let mut d = Deferred::default();
        Self::stop_port(&mut self.lock(), port, Status::Shutdown, &mut d);
        // The waiting transfers are answered before the reset's outcome,
        // as the devices answer theirs.
        self.run(d);
        self.ports().reset_port(port, token);
    }
}

impl UpcallSink for Prefetch {
    fn upcall(&self, upcall: Upcall) {
        let mut d = Deferred::default();
        {
            let mut st = self.lock();
            match upcall {
                Upcall::Completed(c) if c.id & OWN_TAG != 0 => self.on_own(&mut st, c, &mut d),
                Upcall::Event(PortEvent::Disconnected { port }) => {
                    Self::stop_port(&mut st, port, Status::NoDevice, &mut d);
                    d.up.push(upcall);
                }
                other => d.up.push(other),
            }
        }
        self.run(d);
    }
}

/// A report fetched earlier, as the answer to guest transfer `t`: too long
/// for it, it is an overflow, as on a real bus.
fn answer(c: Completion, t: &Transfer) -> Completion {
    if c.actual_length > t.length {
        return Completion::failed(t.port, t.id, Status::Overflow);
    }
    Completion { id: t.id, ..c }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[derive(Default)]
    struct Devices {
        submitted: Mutex<Vec<Transfer>>,
        cancelled: Mutex<Vec<(Port, u64)>>,
        resets: Mutex<Vec<(Port, u64)>>,
    }

    impl Ports for Devices {
        fn submit(&self, t: Transfer) {
            self.submitted.lock().unwrap().push(t);
        }
        fn cancel(&self, port: Port, id: u64) {
            self.cancelled.lock().unwrap().push((port, id));
        }
        fn reset_port(&self, port: Port, token: u64) {
            self.resets.lock().unwrap().push((port, token));
        }
    }

    #[derive(Default)]
    struct Guest(Mutex<Vec<Upcall>>);

    impl UpcallSink for Guest {
        fn upcall(&self, u: Upcall) {
            self.0.lock().unwrap().push(u);
        }
    }

    struct Rig {
        layer: Arc<Prefetch>,
        devices: Arc<Devices>,
        guest: Arc<Guest>,
    }

    impl Rig {
        fn new(depth: usize) -> Self {
            let guest = Arc::new(Guest::default());
            let devices = Arc::new(Devices::default());
            let layer = Prefetch::new(depth, guest.clone());
            layer.set_ports(devices.clone());
            Self {
                layer,
                devices,
                guest,
            }
        }

        /// The transfers the devices got since the last call.
        fn submitted(&self) -> Vec<Transfer> {
            std::mem::take(&mut *self.devices.submitted.lock().unwrap())
        }

        fn cancelled(&self) -> Vec<(Port, u64)> {
            std::mem::take(&mut *self.devices.cancelled.lock().unwrap())
        }

        /// (tag, status, data) of what the guest got since the last call.
        fn answers(&self) -> Vec<(u64, Status, Vec<u8>)> {
            std::mem::take(&mut *self.guest.0.lock().unwrap())
                .into_iter()
                .map(|u| match u {
                    Upcall::Completed(c) => {
                        let data = c.in_data.iter().flat_map(|(_, b)| b.to_vec()).collect();
                        (c.id, c.status, data)
                    }
                    other => panic!("not a completion: {other:?}"),
                })
                .collect()
        }

        /// The device answers transfer `tag` with `data` (or fails it).
        fn device_answers(&self, tag: u64, status: Status, data: &[u8]) {
            let c = Completion {
                actual_length: data.len() as u32,
                in_data: vec![(0, Bytes::copy_from_slice(data))],
                ..Completion::failed(1, tag, status)
            };
            self.layer.upcall(Upcall::Completed(c));
        }
    }

    fn poll(tag: u64) -> Transfer {
        Transfer {
            interval: 8,
            ..Transfer::new(tag, 1, 0x81, TransferKind::Interrupt, 8)
        }
    }

    #[test]
    fn a_polled_endpoint_gets_depth_transfers_and_the_guest_the_reports() {
        let rig = Rig::new(3);
        rig.layer.submit(poll(10));
        let ours = rig.submitted();
        assert_eq!(ours.len(), 3);
        for t in &ours {
            assert_ne!(t.id & OWN_TAG, 0);
            assert_eq!((t.endpoint, t.length, t.interval), (0x81, 8, 8));
        }
        assert_eq!(rig.answers(), []);

        // The first report goes to the waiting transfer; the transfer it
        // came in goes back to the device.
        rig.device_answers(ours[0].id, Status::Ok, b"report-1");
        assert_eq!(rig.answers(), [(10, Status::Ok, b"report-1".to_vec())]);
        assert_eq!(rig.submitted().len(), 1);
        // Reports nobody asked for yet wait, in order, and answer at once.
        rig.device_answers(ours[1].id, Status::Ok, b"report-2");
        rig.device_answers(ours[2].id, Status::Ok, b"report-3");
        assert_eq!(rig.answers(), []);
        rig.layer.submit(poll(11));
        rig.layer.submit(poll(12));
        assert_eq!(
            rig.answers(),
            [
                (11, Status::Ok, b"report-2".to_vec()),
                (12, Status::Ok, b"report-3".to_vec())
            ]
        );
    }

    #[test]
    fn other_transfers_pass_through() {
        let rig = Rig::new(3);
        let out = Transfer::new(5, 1, 0x01, TransferKind::Interrupt, 8);
        let bulk = Transfer::new(6, 1, 0x82, TransferKind::Bulk, 512);
        rig.layer.submit(out.clone());
        rig.layer.submit(bulk.clone());
        assert_eq!(rig.submitted(), [out, bulk]);
        rig.layer.cancel(1, 6);
        assert_eq!(rig.cancelled(), [(1, 6)]);
        rig.device_answers(6, Status::Cancelled, b"");
        assert_eq!(rig.answers(), [(6, Status::Cancelled, Vec::new())]);
    }

    #[test]
    fn the_guest_cancelling_its_poll_stops_the_prefetch() {
        let rig = Rig::new(2);
        rig.layer.submit(poll(10));
        let ours: Vec<u64> = rig.submitted().iter().map(|t| t.id).collect();
        rig.layer.cancel(1, 10);
        assert_eq!(rig.answers(), [(10, Status::Cancelled, Vec::new())]);
        assert_eq!(rig.cancelled(), [(1, ours[0]), (1, ours[1])]);
        // Their late answers are dropped, and nothing is resubmitted.
        rig.device_answers(ours[0], Status::Ok, b"late");
        rig.device_answers(ours[1], Status::Cancelled, b"");
        assert_eq!(rig.answers(), []);
        assert_eq!(rig.submitted(), []);
        // Polling again starts afresh, without the late report.
        rig.layer.submit(poll(20));
        assert_eq!(rig.submitted().len(), 2);
        assert_eq!(rig.answers(), []);
    }

    #[test]
    fn a_failure_reaches_the_guest_after_the_reports_before_it_then_polling_restarts() {
        let rig = Rig::new(3);
        rig.layer.submit(poll(10));
        let ours: Vec<u64> = rig.submitted().iter().map(|t| t.id).collect();
        rig.device_answers(ours[0], Status::Ok, b"before");
        assert_eq!(rig.submitted().len(), 1);
        rig.device_answers(ours[1], Status::Ok, b"queued");
        assert_eq!(rig.submitted().len(), 1);
        rig.device_answers(ours[2], Status::Stall, b"");
        // The two still out are called back; nothing more is fetched.
        assert_eq!(rig.cancelled().len(), 2);
        assert_eq!(rig.submitted(), []);
        rig.layer.submit(poll(11));
        rig.layer.submit(poll(12));
        assert_eq!(
            rig.answers(),
            [
                (10, Status::Ok, b"before".to_vec()),
                (11, Status::Ok, b"queued".to_vec()),
                (12, Status::Stall, Vec::new())
            ]
        );
        assert_eq!(rig.submitted(), []);
        // After the guest's recovery, its next poll starts the prefetch again.
        rig.layer.submit(poll(13));
        assert_eq!(rig.submitted().len(), 3);
    }

    #[test]
    fn a_guest_that_stops_taking_reports_is_not_fetched_for_beyond_max_ready() {
        let rig = Rig::new(4);
        rig.layer.submit(poll(1));
        let mut fetched = 0;
        loop {
            let out = rig.submitted();
            if out.is_empty() {
                break;
            }
            for t in out {
                fetched += 1;
                rig.device_answers(t.id, Status::Ok, b"r");
            }
        }
        // One went to the guest's transfer; MAX_READY wait for it.
        assert_eq!(fetched, 1 + MAX_READY);
        assert_eq!(rig.answers().len(), 1);
        // Taking one lets one more be fetched.
        rig.layer.submit(poll(2));
        assert_eq!(rig.answers().len(), 1);
        assert_eq!(rig.submitted().len(), 1);
    }

    #[test]
    fn reset_and_disconnect_answer_the_waiting_transfers_first() {
        let rig = Rig::new(2);
        rig.layer.submit(poll(10));
        let ours = rig.submitted();
        rig.layer.reset_port(1, 77);
        assert_eq!(rig.answers(), [(10, Status::Shutdown, Vec::new())]);
        assert_eq!(rig.cancelled().len(), ours.len());
        assert_eq!(*rig.devices.resets.lock().unwrap(), [(1, 77)]);

        rig.layer.submit(poll(11));
        rig.submitted();
        rig.layer
            .upcall(Upcall::Event(PortEvent::Disconnected { port: 1 }));
        let got = std::mem::take(&mut *rig.guest.0.lock().unwrap());
        assert_eq!(
            got,
            [
                Upcall::Completed(Completion::failed(1, 11, Status::NoDevice)),
                Upcall::Event(PortEvent::Disconnected { port: 1 })
            ]
        );
    }

    #[test]
    fn a_report_longer_than_the_guests_transfer_is_an_overflow() {
        let rig = Rig::new(1);
        rig.layer.submit(poll(1));
        let first = rig.submitted()[0].id;
        rig.device_answers(first, Status::Ok, b"12345678");
        rig.answers();
        let second = rig.submitted()[0].id;
        rig.device_answers(second, Status::Ok, b"12345678");
        rig.layer.submit(Transfer {
            interval: 8,
            ..Transfer::new(2, 1, 0x81, TransferKind::Interrupt, 4)
        });
        assert_eq!(rig.answers(), [(2, Status::Overflow, Vec::new())]);
    }
}
