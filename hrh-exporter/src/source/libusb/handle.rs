//! An opened USB device: claiming, URBs in flight, cancellation, unplug,
//! and the requests Linux's usbip-host runs itself.
//!
//! URBs go straight to usbfs and a thread of the device's own waits there
//! for their completions (`submission`). libusb, in a context of the
//! device's own where nobody handles events, only claims interfaces and
//! runs the requests that are not transfers.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusb::{Context, UsbContext};
use tracing::{debug, info, warn};
use usbip_proto::{errno, feature, request, SetupPacket};

use super::descriptors::{build_identity, Configuration, DeviceDescriptor, Location};
use super::discovery::{read_active_config, FoundDevice};
use super::mapped::{MappedPool, UsbfsMapper};
use super::submission::{self, Prepared, Submission, Submitted};
use super::transfer::{self, rusb_error_errno};
use super::LibusbError;
use crate::device::{DeviceEvent, DeviceIdentity, EventSink, Urb, UrbResult, UsbDevice};

/// How long a detach waits for cancelled URBs (and device requests under
/// way) to finish before it gives up on them.
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The requests usbip-host does not forward: it runs the kernel's own
/// function instead (stub_rx.c, `tweak_special_requests()`), because the
/// host's USB core must know about them, and answers the URB itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `usb_set_configuration()`; wValue.
    SetConfiguration(u16),
    /// `usb_set_interface()`; wIndex, wValue.
    SetInterface { interface: u16, alt: u16 },
    /// `usb_clear_halt()` on the endpoint in wIndex.
    ClearHalt(u8),
    /// `usb_reset_device()`, for a hub-class SET_FEATURE(PORT_RESET).
    ResetDevice,
}

impl Special {
    /// Recognises a special request exactly as usbip-host does: by
    /// bRequest and the whole bmRequestType, on the default pipe.
    pub fn classify(urb: &Urb) -> Option<Self> {
        if urb.endpoint & 0x0f != 0 {
            return None;
        }
        let s: SetupPacket = urb.setup?;
        match (s.request, s.request_type) {
            (request::CLEAR_FEATURE, 0x02) if s.value == feature::ENDPOINT_HALT => {
                // As usbip-host: the endpoint number and direction bit.
                Some(Special::ClearHalt((s.index & 0x8f) as u8))
            }
            (request::SET_INTERFACE, 0x01) => Some(Special::SetInterface {
                interface: s.index,
                alt: s.value,
            }),
            (request::SET_CONFIGURATION, 0x00) => Some(Special::SetConfiguration(s.value)),
            (request::SET_FEATURE, 0x23) if s.value == feature::PORT_RESET => {
                Some(Special::ResetDevice)
            }
            _ => None,
        }
    }
}

/// Work for the device's request thread.
type Job = Box<dyn FnOnce() + Send>;

/// An URB the device has not answered yet.
#[derive(Debug)]
enum InFlight {
    Transfer(Submitted),
    /// A special request running on the request thread; it cannot be
    /// cancelled and is left to finish.
    Special,
}

struct State {
    /// Where the importer takes events, between attach and detach.
    events: Option<EventSink>,
    /// Counts attachments, so that a late completion for a previous
    /// importer never reaches the next one.
    generation: u64,
    in_flight: HashMap<(u64, u32), InFlight>,
    /// `DeviceEvent::Gone` was sent to the current importer.
    gone_reported: bool,
    config: Option<Configuration>,
    /// Alternate settings other than 0, by interface.
    alts: HashMap<u8, u8>,
    /// Transfer type by endpoint address, for the current settings.
    endpoint_types: HashMap<u8, u8>,
    claimed: Vec<u8>,
    identity: DeviceIdentity,
}

/// The device state shared with transfer callbacks and the request thread.
pub struct Shared {
    busid: String,
    location: Location,
    path: String,
    speed: u32,
    descriptor: DeviceDescriptor,
    /// Declared before `handle`, whose mappings these are: dropped first.
    buffers: Arc<MappedPool>,
    device: rusb::Device<Context>,
    /// On `usbfs`, in a libusb context of its own: nothing but the reaping
    /// thread may take URBs from the file.
    handle: rusb::DeviceHandle<Context>,
    /// The device's usbfs file; the reaping thread holds it too.
    usbfs: Arc<OwnedFd>,
    state: Mutex<State>,
    /// Signalled when the in-flight table becomes empty.
    idle: Condvar,
    gone: AtomicBool,
    requests: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibusbDevice")
            .field("busid", &self.busid)
            .field("devnum", &self.location.devnum)
            .field("gone", &self.gone.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A real USB device, exported through libusb.
#[derive(Debug)]
pub struct LibusbDevice {
    shared: Arc<Shared>,
}

impl LibusbDevice {
    pub(super) fn open(found: &FoundDevice) -> Result<Arc<Self>, LibusbError> {
        let busid = found.busid.clone();
        let usbfs = usbfs::open(found.busnum.into(), found.devnum.into())
            .map(Arc::new)
            .map_err(|source| LibusbError::OpenFile {
                busid: busid.clone(),
                source,
            })?;
        let open_error = |source| LibusbError::Open {
            busid: busid.clone(),
            source,
        };
        let context = Context::new().map_err(open_error)?;
        // SAFETY: the file is open and stays open (`Shared` holds it)
        // longer than the handle, which libusb does not let close it.
        let handle =
            unsafe { context.open_device_with_fd(usbfs.as_raw_fd()) }.map_err(open_error)?;
        let (requests, jobs) = mpsc::channel::<Job>();
        // Special requests block (a reset takes a while); they run here,
        // in order, never on the async runtime, where completions are handled.
        std::thread::Builder::new()
            .name(format!("usb-{busid}"))
            .spawn(move || {
                for job in jobs {
                    job();
                }
            })
            .map_err(LibusbError::Thread)?;
        let raw = NonNull::new(handle.as_raw()).ok_or_else(|| LibusbError::Open {
            busid: busid.clone(),
            source: rusb::Error::Other,
        })?;
        // SAFETY: the pool is a field of `Shared` declared before the
        // handle, so it is dropped (and its mappings freed) before the
        // handle closes; the buffers it hands out live in transfers, which
        // hold the `Shared` and return their buffer before letting go of it.
        let mapper = unsafe { UsbfsMapper::new(raw) };
        let buffers = MappedPool::new(busid.clone(), Box::new(mapper));
        let location = found.location.clone();
        let path = found.path.clone();
        let identity = build_identity(
            path.clone(),
            &location,
            found.speed,
            &found.descriptor,
            None,
        );
        let shared = Arc::new(Shared {
            busid,
            location,
            path,
            speed: found.speed,
            descriptor: found.descriptor,
            buffers,
            device: found.device.clone(),
            handle,
            usbfs: Arc::clone(&usbfs),
            state: Mutex::new(State {
                events: None,
                generation: 0,
                in_flight: HashMap::new(),
                gone_reported: false,
                config: None,
                alts: HashMap::new(),
                endpoint_types: HashMap::new(),
                claimed: Vec::new(),
                identity,
            }),
            idle: Condvar::new(),
            gone: AtomicBool::new(false),
            requests,
        });
        let weak = Arc::downgrade(&shared);
        let name = shared.busid.clone();
        std::thread::Builder::new()
            .name(format!("reap-{name}"))
            .spawn(move || submission::reap_loop(usbfs, &name, weak))
            .map_err(LibusbError::Thread)?;
        shared.refresh_config();
        Ok(Arc::new(Self { shared }))
    }

    /// The device's bus id, e.g. `1-1.3`.
    pub fn busid(&self) -> &str {
        &self.shared.busid
    }

    /// The device's address on its bus (a replugged device gets a new one).
    pub fn devnum(&self) -> u8 {
        self.shared.location.devnum
    }

    /// The device was unplugged: URBs in flight fail with `-ENODEV` and
    /// the importer, if any, gets [`DeviceEvent::Gone`].
    pub fn unplugged(&self) {
        let mut st = self.shared.lock();
        self.shared.mark_gone(&mut st);
    }

    /// True once the device was unplugged or stopped answering libusb.
    pub fn is_gone(&self) -> bool {
        self.shared.gone.load(Ordering::Acquire)
    }
}

impl UsbDevice for LibusbDevice {
    fn identity(&self) -> DeviceIdentity {
        self.shared.lock().identity.clone()
    }

    fn attach(&self, events: EventSink) {
        self.shared.attach(events);
    }

    fn submit(&self, urb: Urb) {
        self.shared.submit(urb);
    }

    fn cancel(&self, seqnum: u32) {
        self.shared.cancel(seqnum);
    }

    fn detach(&self) {
        self.shared.detach();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Every URB is back (each held the device): only the marker is left
        // to send, which ends the reaping thread.
        if !submission::stop_reaping(self.usbfs.as_fd()) && !self.is_gone() {
            warn!("{}: cannot stop the reaping thread; it stays", self.busid);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is complete before anything that could
        // panic, so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's mapped transfer buffers.
    pub(super) fn buffers(&self) -> &Arc<MappedPool> {
        &self.buffers
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    fn attach(&self, events: EventSink) {
        {
            let mut st = self.lock();
            st.generation += 1;
            st.events = Some(events);
            st.gone_reported = false;
            if self.is_gone() {
                self.report_gone(&mut st);
                return;
            }
        }
        // The previous importer may have left another configuration.
        self.refresh_config();
        self.claim_all();
    }

    fn submit(self: &Arc<Self>, urb: Urb) {
        let (generation, endpoint_type) = {
            let st = self.lock();
            (st.generation, st.endpoint_types.get(&urb.endpoint).copied())
        };
        let seqnum = urb.seqnum;
        if self.is_gone() {
            return self.complete_now(generation, seqnum, -errno::ENODEV);
        }
        if let Some(special) = Special::classify(&urb) {
            return self.start_special(generation, seqnum, special);
        }
        let prepared = transfer::plan(&urb, endpoint_type)
            .and_then(|plan| Prepared::new(self, generation, seqnum, plan));
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(status) => return self.complete_now(generation, seqnum, status),
        };
        // Recorded first and submitted after, outside the lock: the reaping
        // thread may get the URB back at once and must find its record, and
        // must not wait on this thread, which that completion's wake-up can
        // preempt on a one-CPU gateway.
        let key = (generation, seqnum);
        let record = prepared.record();
        self.lock()
            .in_flight
            .insert(key, InFlight::Transfer(record));
        let status = match prepared.submit(self.usbfs.as_fd()) {
            Submission::Started => return,
            Submission::Refused(status) => status,
            Submission::Partly(unstarted) => {
                let mut st = self.lock();
                // Gone from the table only if the device went away and its
                // transfers were abandoned (and leaked) meanwhile.
                let Some(InFlight::Transfer(record)) = st.in_flight.get_mut(&key) else {
                    return;
                };
                if let Some(reaped) = unstarted.settle(record) {
                    st.in_flight.remove(&key);
                    drop(st);
                    submission::finish_reaped(reaped);
                }
                return;
            }
        };
        debug!(
            "{}: cannot submit URB {seqnum} to endpoint {:#04x}: {status}",
            self.busid, urb.endpoint
        );
        let recorded = self.forget(&mut self.lock(), key);
        // Not recorded any more: the device went away meanwhile, and its
        // transfers were abandoned, this one answered with them.
        if recorded {
            self.complete_now(generation, seqnum, status);
        }
        if status == -errno::ENODEV {
            let mut st = self.lock();
            self.mark_gone(&mut st);
        }
    }

    fn cancel(&self, seqnum: u32) {
        let st = self.lock();
        if let Some(InFlight::Transfer(t)) = st.in_flight.get(&(st.generation, seqnum)) {
            t.cancel(self.usbfs.as_fd());
        }
    }

    fn detach(&self) {
        let mut st = self.lock();
        st.events = None;
        self.cancel_all(&st);
        // Never leave while usbfs still runs a transfer on our claims, and
        // let a special request finish before its interfaces go.
        let deadline = Instant::now() + DETACH_TIMEOUT;
        while !st.in_flight.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                warn!(
                    "{}: {} URBs still in flight {DETACH_TIMEOUT:?} after cancelling them",
                    self.busid,
                    st.in_flight.len()
                );
                break;
            }
            st = self
                .idle
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        self.buffers.release_idle();
        // Host drivers get their interfaces back until the next import.
        self.release_all(true);
        self.refresh_config();
    }

    /// usbfs says the device is gone.
    pub(super) fn lost(&self) {
        self.mark_gone(&mut self.lock());
    }

    pub(super) fn has_transfers_in_flight(&self) -> bool {
        self.lock()
            .in_flight
            .values()
            .any(|e| matches!(e, InFlight::Transfer(_)))
    }

    /// Fails the transfers usbfs never handed back from a device that is
    /// gone. Their memory is left to leak: the kernel may still hold it.
    pub(super) fn abandon_transfers(&self) {
        let mut st = self.lock();
        let keys: Vec<(u64, u32)> = st
            .in_flight
            .iter()
            .filter(|(_, e)| matches!(e, InFlight::Transfer(_)))
            .map(|(k, _)| *k)
            .collect();
        warn!(
            "{}: {} URBs never came back from the unplugged device",
            self.busid,
            keys.len()
        );
        for &key in &keys {
            self.forget(&mut st, key);
        }
        drop(st);
        for (generation, seqnum) in keys {
            self.complete_now(generation, seqnum, -errno::ENODEV);
        }
    }

    fn cancel_all(&self, st: &State) {
        for entry in st.in_flight.values() {
            if let InFlight::Transfer(t) = entry {
                t.cancel(self.usbfs.as_fd());
            }
        }
    }

    /// Marks the device gone, fails what is in flight and tells the
    /// importer. Cancelled transfers then complete with `-ENODEV`.
    fn mark_gone(&self, st: &mut State) {
        if !self.gone.swap(true, Ordering::AcqRel) {
            info!("{}: device is gone", self.busid);
        }
        self.cancel_all(st);
        self.report_gone(st);
    }

    fn report_gone(&self, st: &mut State) {
        if st.gone_reported {
            return;
        }
        if let Some(events) = &st.events {
            events(DeviceEvent::Gone);
            st.gone_reported = true;
        }
    }

    /// Completes an URB that never reached usbfs.
    fn complete_now(&self, generation: u64, seqnum: u32, status: i32) {
        let importer = self.importer(&self.lock(), generation);
        if let Some(events) = importer {
            events(DeviceEvent::Completed(UrbResult {
                seqnum,
                status,
                ..UrbResult::default()
            }));
        }
    }

    /// The importer of attachment `generation`, if it is still attached.
    /// Events go to it after the state lock is let go: its handler writes
    /// to the client, which must not hold up submissions.
    fn importer(&self, st: &State, generation: u64) -> Option<EventSink> {
        (generation == st.generation)
            .then(|| st.events.clone())
            .flatten()
    }

    /// Counts in one usbfs URB of transfer `seqnum`; with the last one the
    /// record leaves the table (`Some(true)`). `None` if there is none.
    pub(super) fn urb_reaped(&self, generation: u64, seqnum: u32) -> Option<bool> {
        let mut st = self.lock();
        let key = (generation, seqnum);
        let Some(InFlight::Transfer(t)) = st.in_flight.get_mut(&key) else {
            return None;
        };
        if !t.reaped_one() {
            return Some(false);
        }
        st.in_flight.remove(&key);
        Some(true)
    }

    /// Takes `key` out of the in-flight table, waking a detach that waits
    /// for the table to empty; whether it was there.
    fn forget(&self, st: &mut State, key: (u64, u32)) -> bool {
        let was_there = st.in_flight.remove(&key).is_some();
        if st.in_flight.is_empty() {
            self.idle.notify_all();
        }
        was_there
    }

    /// Delivers the result of an URB that was in flight, and forgets it.
    /// Called on the reaping thread (transfers) or the request thread.
    pub(super) fn finish_urb(&self, generation: u64, mut result: UrbResult, device_lost: bool) {
        let mut st = self.lock();
        self.forget(&mut st, (generation, result.seqnum));
        // Cancelled because the device went away, not because the client
        // asked: the session must not answer it as an unlink.
        if (device_lost || self.is_gone()) && result.status == -errno::ECONNRESET {
            result.status = -errno::ENODEV;
        }
        let importer = self.importer(&st, generation);
        drop(st);
        if let Some(events) = importer {
            events(DeviceEvent::Completed(result));
        }
        if device_lost {
            self.mark_gone(&mut self.lock());
        }
    }

    fn start_special(self: &Arc<Self>, generation: u64, seqnum: u32, special: Special) {
        self.lock()
            .in_flight
            .insert((generation, seqnum), InFlight::Special);
        let me = Arc::clone(self);
        let job: Job = Box::new(move || {
            let status =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.run_special(special)))
                    .unwrap_or(-errno::EPROTO);
            let result = UrbResult {
                seqnum,
                status,
                ..UrbResult::default()
            };
            me.finish_urb(generation, result, status == -errno::ENODEV);
        });
        if self.requests.send(job).is_err() {
            // The request thread is gone (it cannot be, while we exist).
            self.forget(&mut self.lock(), (generation, seqnum));
            self.complete_now(generation, seqnum, -errno::ESHUTDOWN);
        }
    }

    /// Runs a special request on the device; the URB's status.
    fn run_special(&self, special: Special) -> i32 {
        let busid = &self.busid;
        match special {
            Special::SetConfiguration(value) => {
                let Ok(value) = u8::try_from(value) else {
                    return -errno::EINVAL;
                };
                // Linux refuses to change the configuration while any
                // interface is claimed, and host drivers must not grab
                // the interfaces in between.
                self.release_all(false);
                let result = self.handle.set_active_configuration(value);
                self.refresh_config();
                self.claim_all();
                match result {
                    Ok(()) => {
                        debug!("{busid}: configuration {value} set");
                        0
                    }
                    Err(e) => {
                        warn!("{busid}: cannot set configuration {value}: {e}");
                        rusb_error_errno(e)
                    }
                }
            }
            Special::SetInterface { interface, alt } => {
                let (Ok(interface), Ok(alt)) = (u8::try_from(interface), u8::try_from(alt)) else {
                    return -errno::EINVAL;
                };
                match self.handle.set_alternate_setting(interface, alt) {
                    Ok(()) => {
                        self.set_alt(interface, alt);
                        debug!("{busid}: interface {interface} set to alternate setting {alt}");
                        0
                    }
                    Err(e) => {
                        warn!("{busid}: cannot set interface {interface} to alternate setting {alt}: {e}");
                        rusb_error_errno(e)
                    }
                }
            }
            Special::ClearHalt(endpoint) => match self.handle.clear_halt(endpoint) {
                Ok(()) => 0,
                Err(e) => {
                    warn!("{busid}: cannot clear the halt of endpoint {endpoint:#04x}: {e}");
                    rusb_error_errno(e)
                }
            },
            Special::ResetDevice => match self.handle.reset() {
                Ok(()) => {
                    // libusb re-claimed our interfaces; the settings are
                    // back to 0.
                    self.refresh_config();
                    info!("{busid}: device reset");
                    0
                }
                Err(rusb::Error::NotFound) | Err(rusb::Error::NoDevice) => {
                    // It re-enumerated as a new device (or left): this
                    // handle is dead, and the device will be found anew.
                    warn!("{busid}: device re-enumerated after its reset");
                    let mut st = self.lock();
                    self.mark_gone(&mut st);
                    -errno::ENODEV
                }
                Err(e) => {
                    warn!("{busid}: cannot reset the device: {e}");
                    rusb_error_errno(e)
                }
            },
        }
    }

    /// Re-reads the active configuration; alternate settings return to 0.
    fn refresh_config(&self) {
        let config = read_active_config(&self.busid, &self.device);
        let identity = build_identity(
            self.path.clone(),
            &self.location,
            self.speed,
            &self.descriptor,
            config.as_ref(),
        );
        let mut st = self.lock();
        st.alts.clear();
        st.endpoint_types = config
            .as_ref()
            .map(|c| c.endpoint_types(&HashMap::new()))
            .unwrap_or_default();
        st.identity = identity;
        st.config = config;
    }

    fn set_alt(&self, interface: u8, alt: u8) {
        let mut st = self.lock();
        st.alts.insert(interface, alt);
        let types = st
            .config
            .as_ref()
            .map(|c| c.endpoint_types(&st.alts))
            .unwrap_or_default();
        st.endpoint_types = types;
    }

    /// Claims every interface of the active configuration, detaching host
    /// drivers from them.
    fn claim_all(&self) {
        let interfaces = self
            .lock()
            .config
            .as_ref()
            .map(Configuration::interface_numbers)
            .unwrap_or_default();
        self.auto_detach(true);
        let mut claimed = Vec::new();
        for interface in interfaces {
            match self.handle.claim_interface(interface) {
                Ok(()) => claimed.push(interface),
                Err(e) if self.is_gone() => debug!("{}: claim: {e}", self.busid),
                Err(e) => warn!(
                    "{}: cannot claim interface {interface}: {e}; its URBs will fail",
                    self.busid
                ),
            }
        }
        self.lock().claimed = claimed;
    }

    /// Releases our interfaces; host drivers return to them only if
    /// `reattach`.
    fn release_all(&self, reattach: bool) {
        let claimed = std::mem::take(&mut self.lock().claimed);
        // Drivers are reattached only once every interface is free: one
        // released at a time, cdc_acm would probe its control interface
        // while its data interface is still ours, and fail with EBUSY.
        self.auto_detach(false);
        for &interface in &claimed {
            match self.handle.release_interface(interface) {
                Ok(()) => {}
                Err(e) if self.is_gone() || e == rusb::Error::NoDevice => {
                    debug!("{}: release: {e}", self.busid)
                }
                Err(e) => warn!("{}: cannot release interface {interface}: {e}", self.busid),
            }
        }
        if !reattach || self.is_gone() {
            return;
        }
        for interface in claimed {
            match self.handle.attach_kernel_driver(interface) {
                // NotFound: no driver wants it; Busy: a driver that took
                // a sibling interface took this one too.
                Ok(())
                | Err(rusb::Error::NotFound)
                | Err(rusb::Error::Busy)
                | Err(rusb::Error::NotSupported)
                | Err(rusb::Error::NoDevice) => {}
                Err(e) => debug!(
                    "{}: cannot give interface {interface} back to its driver: {e}",
                    self.busid
                ),
            }
        }
    }

    fn auto_detach(&self, on: bool) {
        match self.handle.set_auto_detach_kernel_driver(on) {
            // Platforms without kernel drivers to detach.
            Ok(()) | Err(rusb::Error::NotSupported) => {}
            Err(e) => debug!("{}: auto-detach {on}: {e}", self.busid),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn control(setup: [u8; 8]) -> Urb {
        Urb {
            seqnum: 1,
            endpoint: if setup[0] & 0x80 != 0 { 0x80 } else { 0 },
            setup: Some(SetupPacket::from_bytes(setup)),
            data: Bytes::new(),
            buffer_len: 0,
            transfer_flags: 0,
            interval: 0,
            iso_packets: Vec::new(),
        }
    }

    #[test]
    fn special_requests_are_recognised_as_usbip_host_does() {
        assert_eq!(
            Special::classify(&control([0x00, 0x09, 1, 0, 0, 0, 0, 0])),
            Some(Special::SetConfiguration(1))
        );
        assert_eq!(
            Special::classify(&control([0x01, 0x0b, 2, 0, 1, 0, 0, 0])),
            Some(Special::SetInterface {
                interface: 1,
                alt: 2
            })
        );
        assert_eq!(
            Special::classify(&control([0x02, 0x01, 0, 0, 0x81, 0, 0, 0])),
            Some(Special::ClearHalt(0x81))
        );
        assert_eq!(
            Special::classify(&control([0x23, 0x03, 4, 0, 1, 0, 0, 0])),
            Some(Special::ResetDevice)
        );
    }

    #[test]
    fn look_alikes_go_to_the_device() {
        for setup in [
            // GET_DESCRIPTOR, GET_CONFIGURATION, GET_INTERFACE.
            [0x80, 0x06, 0, 1, 0, 0, 18, 0],
            [0x80, 0x08, 0, 0, 0, 0, 1, 0],
            [0x81, 0x0a, 0, 0, 0, 0, 1, 0],
            // CLEAR_FEATURE(DEVICE_REMOTE_WAKEUP) and a class request
            // with bRequest 0x09 to an interface (HID SET_REPORT).
            [0x00, 0x01, 1, 0, 0, 0, 0, 0],
            [0x21, 0x09, 0, 2, 0, 0, 1, 0],
            // CLEAR_FEATURE(ENDPOINT_HALT) with a vendor request type.
            [0x42, 0x01, 0, 0, 0x81, 0, 0, 0],
            // SET_FEATURE(PORT_RESET) not addressed to a port, and a port
            // SET_FEATURE for another feature.
            [0x03, 0x03, 4, 0, 1, 0, 0, 0],
            [0x23, 0x03, 8, 0, 1, 0, 0, 0],
        ] {
            assert_eq!(Special::classify(&control(setup)), None, "{setup:02x?}");
        }
        // Only on the default pipe.
        let mut urb = control([0x00, 0x09, 1, 0, 0, 0, 0, 0]);
        urb.endpoint = 0x02;
        assert_eq!(Special::classify(&urb), None);
    }

    #[test]
    fn clear_halt_keeps_only_number_and_direction() {
        assert_eq!(
            Special::classify(&control([0x02, 0x01, 0, 0, 0x7f, 0xff, 0, 0])),
            Some(Special::ClearHalt(0x0f))
        );
    }
}
