//! Hot-plug by polling: devices that match the selectors are exported when
//! they appear and withdrawn when they go.
//!
//! Not libusb's hot-plug callbacks: those rely on udevd's events, and small
//! gateways (and the test guests) run no udevd. The watcher listens to the
//! kernel's own device events instead (`uevents`) and looks when a USB
//! device came or went; where those cannot be received it looks every scan
//! interval.
//!
//! A look first reads a fingerprint of sysfs and scans through libusb only
//! when it changed. A scan creates and enumerates a fresh libusb context:
//! on a 1-CPU gateway under emulation it took about 300 ms of CPU, and
//! every second that was a third of the machine taken from the transfers
//! being exported.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use super::discovery::{sysfs_fingerprint, Fingerprint, FoundDevice, LibusbSource, Selector};
use super::handle::LibusbDevice;
use super::uevents::UeventSocket;
use crate::registry::Registry;

/// Stops the watcher when dropped (and waits for it).
#[derive(Debug)]
pub struct WatchHandle {
    /// Closing our end wakes the watcher, which waits on the other.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Exports the devices matching `selectors` into `registry`, now and as
/// they come and go, checking every `interval`. The first scan is done
/// before this returns, so devices already present are exported at once.
pub fn watch(
    source: Arc<LibusbSource>,
    selectors: Vec<Selector>,
    registry: Registry,
    interval: Duration,
) -> WatchHandle {
    let mut watcher = Watcher {
        source,
        selectors,
        registry,
        exported: HashMap::new(),
        failed: HashMap::new(),
        scan_failing: false,
        gate: ScanGate::default(),
    };
    // Opened before the first look: a device plugged in meanwhile is news.
    let uevents = UeventSocket::open()
        .inspect_err(|e| {
            warn!("cannot receive the kernel's device events ({e}); looking for USB devices every {interval:?}");
        })
        .ok();
    watcher.poll();
    let (stop, stopped) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            warn!("cannot start the USB hot-plug watcher ({e}): devices plugged in later will not be exported");
            return WatchHandle {
                stop: None,
                thread: None,
            };
        }
    };
    let thread = std::thread::Builder::new()
        .name("usb-watch".into())
        .spawn(move || run(watcher, uevents, &stopped, interval));
    let thread = match thread {
        Ok(thread) => Some(thread),
        Err(e) => {
            warn!("cannot start the USB hot-plug watcher ({e}): devices plugged in later will not be exported");
            None
        }
    };
    WatchHandle {
        stop: Some(stop),
        thread,
    }
}

/// With the kernel's device events, how often to look anyway. In a
/// container whose network namespace the kernel does not send them to, the
/// socket opens all the same and then hears nothing; a look that finds no
/// change costs a few milliseconds.
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

/// Looks whenever the kernel reports a USB device added or removed (or
/// every `interval` without its reports), every `interval` while a look is
/// due for other reasons, and at least every [`LOOK_AT_LEAST_EVERY`] (or
/// `interval`, if longer), until `stopped` is readable (its peer closed).
fn run(
    mut watcher: Watcher,
    mut uevents: Option<UeventSocket>,
    stopped: &UnixStream,
    interval: Duration,
) {
    loop {
        let timeout = next_look(uevents.is_some(), watcher.look_due(), interval);
        match wait(stopped, uevents.as_ref(), timeout) {
            Wake::Stop => return,
            Wake::Timeout => watcher.poll(),
            Wake::Uevent => {
                let Some(socket) = &uevents else { continue };
                match socket.drain() {
                    Ok(news) if news.usb_changed || news.lost => watcher.poll(),
                    Ok(_) => {}
                    Err(e) => {
                        warn!("cannot read the kernel's device events ({e}); looking for USB devices every {interval:?}");
                        uevents = None;
                        watcher.poll();
                    }
                }
            }
        }
    }
}

/// How long to wait for news before looking anyway.
fn next_look(hears_events: bool, look_due: bool, interval: Duration) -> Duration {
    if hears_events && !look_due {
        interval.max(LOOK_AT_LEAST_EVERY)
    } else {
        interval
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Stop,
    Uevent,
    Timeout,
}

/// Waits for the stop signal, an uevent or `timeout`.
fn wait(stopped: &UnixStream, uevents: Option<&UeventSocket>, timeout: Duration) -> Wake {
    let mut fds = vec![libc::pollfd {
        fd: stopped.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(socket) = uevents {
        fds.push(libc::pollfd {
            fd: socket.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of `fds.len()` entries for the
    // duration of the call, and its descriptors are open (borrowed from
    // `stopped` and `uevents`, which outlive the call).
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ready < 0 {
        // EINTR: look, as a timeout would; nothing is lost by looking.
        return Wake::Timeout;
    }
    if fds[0].revents != 0 {
        Wake::Stop
    } else if fds.get(1).is_some_and(|f| f.revents != 0) {
        Wake::Uevent
    } else {
        Wake::Timeout
    }
}

struct Watcher {
    source: Arc<LibusbSource>,
    selectors: Vec<Selector>,
    registry: Registry,
    /// What we exported, by bus id.
    exported: HashMap<String, Arc<LibusbDevice>>,
    /// Devices that failed to open, by bus id, with their address: tried
    /// again only once replugged, so that the log says it once.
    failed: HashMap<String, u8>,
    scan_failing: bool,
    gate: ScanGate,
}

/// Polls after a change that scan again even though nothing changed since:
/// a device caught in the middle of its enumeration (in sysfs, not yet
/// complete for libusb) is found by one of them.
const SETTLE_POLLS: u8 = 2;

/// Decides whether a poll needs a libusb scan.
#[derive(Debug, Default)]
struct ScanGate {
    /// The fingerprint at the last change.
    seen: Option<Fingerprint>,
    /// Scans still due after that change.
    settling: u8,
}

impl ScanGate {
    /// `fingerprint` is what sysfs shows now (`None`: unreadable, so always
    /// scan); `must` forces a scan for reasons sysfs does not show.
    fn should_scan(&mut self, fingerprint: Option<Fingerprint>, must: bool) -> bool {
        if fingerprint.is_none() || fingerprint != self.seen {
            self.seen = fingerprint;
            self.settling = SETTLE_POLLS;
            return true;
        }
        if self.settling > 0 {
            self.settling -= 1;
            return true;
        }
        must
    }
}

impl Watcher {
    /// A device that failed its transfers (gone) is withdrawn by a scan
    /// even if sysfs has not noticed; a failing scan is retried.
    fn must_scan(&self) -> bool {
        self.scan_failing || self.exported.values().any(|d| d.is_gone())
    }

    /// Whether to look again after the interval even without news from the
    /// kernel.
    fn look_due(&self) -> bool {
        self.gate.settling > 0 || self.must_scan()
    }

    fn poll(&mut self) {
        let must = self.must_scan();
        if !self.gate.should_scan(sysfs_fingerprint(), must) {
            return;
        }
        let found = match self.source.scan() {
            Ok(found) => {
                if self.scan_failing {
                    info!("listing USB devices works again");
                    self.scan_failing = false;
                }
                found
            }
            Err(e) => {
                if !self.scan_failing {
                    warn!("{e}; retrying");
                    self.scan_failing = true;
                }
                return;
            }
        };
        let wanted: HashMap<&str, &FoundDevice> = found
            .iter()
            .filter(|f| self.selectors.iter().any(|s| f.matches(s)))
            .map(|f| (f.busid.as_str(), f))
            .collect();

        // Gone, replugged (new address) or dead: withdraw.
        let departed: Vec<String> = self
            .exported
            .iter()
            .filter(|(busid, device)| {
                let still_there = wanted
                    .get(busid.as_str())
                    .is_some_and(|f| f.devnum == device.devnum());
                device.is_gone() || !still_there
            })
            .map(|(busid, _)| busid.clone())
            .collect();
        for busid in departed {
            if let Some(device) = self.exported.remove(&busid) {
                info!("{busid} was unplugged; no longer exported");
                device.unplugged();
                self.registry.remove(&busid);
            }
        }

        self.failed.retain(|busid, devnum| {
            wanted
                .get(busid.as_str())
                .is_some_and(|f| f.devnum == *devnum)
        });
        for (busid, found) in wanted {
            if self.exported.contains_key(busid) || self.failed.contains_key(busid) {
                continue;
            }
            if self.registry.contains(busid) {
                warn!("{busid} is already exported by another source; not exporting the USB device there");
                self.failed.insert(busid.to_owned(), found.devnum);
                continue;
            }
            match self.source.open(found) {
                Ok(device) => {
                    info!("exporting {busid} {}", describe(found));
                    self.registry.add(device.clone());
                    self.exported.insert(busid.to_owned(), device);
                }
                Err(e) => {
                    warn!("cannot export {busid} {}: {e}", describe(found));
                    self.failed.insert(busid.to_owned(), found.devnum);
                }
            }
        }
    }
}

/// `1209:0001 (Manufacturer Product)` for log lines.
fn describe(f: &FoundDevice) -> String {
    let names: Vec<&str> = [f.manufacturer.as_deref(), f.product.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if names.is_empty() {
        format!("{:04x}:{:04x}", f.vendor_id, f.product_id)
    } else {
        format!(
            "{:04x}:{:04x} ({})",
            f.vendor_id,
            f.product_id,
            names.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn fingerprint(devices: &[(&str, &str)]) -> Option<Fingerprint> {
        Some(
            devices
                .iter()
                .map(|(b, d)| (b.to_string(), d.to_string()))
                .collect(),
        )
    }

    #[test]
    fn scans_only_after_a_change_and_while_it_settles() {
        let mut gate = ScanGate::default();
        let one = fingerprint(&[("1-1", "2"), ("usb1", "1")]);
        // The first poll, then SETTLE_POLLS more.
        for _ in 0..=SETTLE_POLLS {
            assert!(gate.should_scan(one.clone(), false));
        }
        assert!(!gate.should_scan(one.clone(), false));
        assert!(gate.should_scan(one.clone(), true));
        // Replugged: same bus id, new address.
        let replugged = fingerprint(&[("1-1", "3"), ("usb1", "1")]);
        assert!(gate.should_scan(replugged.clone(), false));
        // A change while settling starts the settling over.
        assert!(gate.should_scan(one.clone(), false));
        for _ in 0..SETTLE_POLLS {
            assert!(gate.should_scan(one.clone(), false));
        }
        assert!(!gate.should_scan(one, false));
        // Without sysfs every poll scans.
        assert!(gate.should_scan(None, false));
        assert!(gate.should_scan(None, false));
    }

    #[test]
    fn with_device_events_the_watcher_looks_rarely_unless_a_look_is_due() {
        let second = Duration::from_secs(1);
        let hour = Duration::from_secs(3600);
        assert_eq!(next_look(true, false, second), LOOK_AT_LEAST_EVERY);
        assert_eq!(next_look(true, false, hour), hour);
        assert_eq!(next_look(true, true, second), second);
        assert_eq!(next_look(false, false, second), second);
    }

    #[test]
    fn the_watcher_stops_as_soon_as_its_handle_is_dropped() {
        // Without libusb at all there is nothing to watch; a machine without
        // USB devices still scans (to an empty list).
        let Ok(source) = LibusbSource::new() else {
            return;
        };
        let source = Arc::new(source);
        let found = source.scan().expect("scan");
        assert!(found.iter().all(|f| f.busid.contains('-')), "{found:?}");
        let registry = Registry::new();
        let nowhere: Selector = "255-7.7.7.7.7.7.7".parse().unwrap();
        let handle = watch(
            source,
            vec![nowhere],
            registry.clone(),
            Duration::from_secs(3600),
        );
        let start = Instant::now();
        drop(handle);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(registry.exportable().is_empty());
    }
}
