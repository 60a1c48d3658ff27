//! libusb's event handling, run by the async runtime: every transfer
//! completion callback runs on a runtime worker, where the connection
//! waiting for the completion runs too.
//!
//! Why not a thread of its own: on a gateway's small CPU the hand-off from
//! such a thread to the connection's task (waking another thread, a context
//! switch, another system call) was a large part of each URB's time in the
//! exporter, and it lies on every round trip of a serial dongle.
//!
//! libusb's file descriptors (its event descriptor, its timer, one per open
//! device) are watched by the runtime's reactor. When one is ready, the
//! task takes libusb's event lock and lets libusb handle whatever is
//! pending without waiting (`libusb_handle_events_locked` with a zero
//! timeout): the integration libusb documents for programs with a main
//! loop of their own. Opening or closing a device changes the descriptors
//! and signals libusb's event descriptor, so after each round the task
//! reads them again. The reactor reports edges, and libusb reaps at most
//! [`REAPS_PER_ROUND`] URBs of a device per round: after a round that
//! completed that many, a descriptor still ready gets another round at
//! once. After a smaller round no device can have been left with
//! completions, and the check (a `poll` system call, on every round trip of
//! a serial dongle) is skipped.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rusb::constants::LIBUSB_ERROR_INTERRUPTED;
use rusb::{ffi, UsbContext};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tracing::warn;

use super::transfer;

/// How soon to try again when another thread holds libusb's event lock.
/// That thread (a synchronous request) handles our completions too while it
/// holds the lock, but may let go before it has seen the newest one.
const LOCK_RETRY: Duration = Duration::from_millis(1);

/// How often to handle events when a descriptor cannot be watched by the
/// reactor (never seen with Linux's usbfs, kept so that such a descriptor
/// costs latency, not URBs).
const FALLBACK_TICK: Duration = Duration::from_millis(5);

/// The most URBs libusb's Linux back end reaps from one device in one round
/// of event handling (`op_handle_events` in libusb 1.0.26: the first, then
/// up to 25 more).
const REAPS_PER_ROUND: u64 = 26;

/// Runs libusb's event handling for one context on the runtime until
/// dropped.
#[derive(Debug)]
pub struct EventLoop {
    stop: Arc<Stop>,
}

#[derive(Debug, Default)]
struct Stop {
    requested: AtomicBool,
    notify: Notify,
}

impl EventLoop {
    /// Starts handling `context`'s events on `runtime`.
    pub fn start(context: rusb::Context, runtime: &Handle) -> Self {
        let stop = Arc::new(Stop::default());
        // The task keeps the context alive: it is torn down (libusb_exit)
        // only after the task stopped using it.
        runtime.spawn(run(context, Arc::clone(&stop)));
        Self { stop }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.requested.store(true, Ordering::Release);
        // Stores a permit if the task is not waiting right now.
        self.stop.notify.notify_one();
    }
}

async fn run(context: rusb::Context, stop: Arc<Stop>) {
    let mut watched = Watched::default();
    while !stop.requested.load(Ordering::Acquire) {
        let completed_before = transfer::completed_so_far();
        if let Some(changed) = handle_pending(&context, &watched.fds).await {
            // The old registrations go first. Then handle once more: what
            // became ready in between raised no edge the reactor saw.
            drop(std::mem::take(&mut watched));
            watched = Watched::register(changed);
            continue;
        }
        // Completions counted from elsewhere too (a synchronous request on
        // another thread handles events as well) only make this check
        // happen more often than needed, never less.
        let completed = transfer::completed_so_far() - completed_before;
        if completed >= REAPS_PER_ROUND && watched.still_pending() {
            // libusb reaps a bounded number of URBs per device and round;
            // the rest raise no new edge. Let the connections send what
            // this round completed, then take the next batch.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = stop.notify.notified() => {}
            _ = watched.ready() => {}
            _ = tokio::time::sleep(FALLBACK_TICK), if watched.degraded => {}
        }
    }
}

/// libusb's descriptors, each with a duplicate of our own (or why there is
/// none).
type Descriptors = Vec<(RawFd, i16, io::Result<OwnedFd>)>;

/// Lets libusb handle what is pending, without blocking the worker. Returns
/// libusb's descriptors if they are no longer `current`.
async fn handle_pending(context: &rusb::Context, current: &[(RawFd, i16)]) -> Option<Descriptors> {
    let zero = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    loop {
        // Not held across an await: the raw pointer is not `Send`.
        let ctx = context.as_raw();
        // SAFETY: `ctx` is valid while `context` lives.
        if unsafe { ffi::libusb_try_lock_events(ctx) } != 0 {
            tokio::time::sleep(LOCK_RETRY).await;
            continue;
        }
        // SAFETY: we hold the event lock, as this call requires; `zero`
        // outlives the call.
        let rc = unsafe { ffi::libusb_handle_events_locked(ctx, &zero) };
        // Read while holding the lock: libusb_close takes it before it
        // closes a device's descriptor, so every one listed stays open
        // until duplicated. Read every round, not only when libusb's event
        // descriptor woke us: a synchronous request on another thread may
        // have handled (and cleared) that event before the reactor looked.
        let fds = pollfds(context);
        let changed = (fds != current).then(|| {
            fds.into_iter()
                .map(|(fd, events)| (fd, events, duplicate(fd)))
                .collect()
        });
        // SAFETY: we took the lock above.
        unsafe { ffi::libusb_unlock_events(ctx) };
        if rc < 0 && rc != LIBUSB_ERROR_INTERRUPTED {
            warn!("libusb event handling failed: {}", rusb_error(rc));
            // Don't spin on a persistent error.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return changed;
    }
}

/// The descriptors libusb wants watched, with the poll events it wants.
fn pollfds(context: &rusb::Context) -> Vec<(RawFd, i16)> {
    // SAFETY: `context` is valid; the list is null-terminated and freed
    // with libusb_free_pollfds once read (null on allocation failure).
    unsafe {
        let list = ffi::libusb_get_pollfds(context.as_raw());
        if list.is_null() {
            return Vec::new();
        }
        let mut fds = Vec::new();
        let mut entry = list;
        while !(*entry).is_null() {
            fds.push(((**entry).fd, (**entry).events));
            entry = entry.add(1);
        }
        ffi::libusb_free_pollfds(list);
        fds
    }
}

/// libusb's descriptors as registered with the reactor.
///
/// Each is registered through a duplicate of its own: libusb closes its
/// descriptors when it likes, and the number of a closed one may be reused
/// (by a client's socket, say) before this task notices; deregistering it
/// then would silence that socket. A duplicate's number stays ours until
/// we deregister and close it.
#[derive(Debug, Default)]
struct Watched {
    /// libusb's descriptors and poll events, as it listed them.
    fds: Vec<(RawFd, i16)>,
    /// Our duplicates, with the poll events libusb waits for on each.
    registered: Vec<(AsyncFd<OwnedFd>, i16)>,
    /// The same duplicates as `poll(2)` takes them, for [`Self::still_pending`].
    poll_set: Vec<libc::pollfd>,
    /// Some descriptor could not be registered: poll on a timer as well.
    degraded: bool,
}

impl Watched {
    fn register(descriptors: Descriptors) -> Self {
        let mut fds = Vec::with_capacity(descriptors.len());
        let mut registered = Vec::with_capacity(descriptors.len());
        let mut degraded = false;
        for (fd, events, dup) in descriptors {
            fds.push((fd, events));
            let async_fd = dup.and_then(|dup| {
                // SAFETY: an `OwnedFd` stays open, on the same file, until
                // the `AsyncFd` owning it deregisters and drops it.
                unsafe { Ok(AsyncFd::register_with_interest(dup, interest(events))?) }
            });
            match async_fd {
                Ok(async_fd) => registered.push((async_fd, events)),
                Err(e) => {
                    warn!("cannot watch libusb descriptor {fd} ({e}); polling every {FALLBACK_TICK:?}");
                    degraded = true;
                }
            }
        }
        let poll_set = registered
            .iter()
            .map(|(fd, events)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: *events,
                revents: 0,
            })
            .collect();
        Self {
            fds,
            registered,
            poll_set,
            degraded,
        }
    }

    /// Whether some descriptor is ready right now (level, not edge).
    fn still_pending(&mut self) -> bool {
        // SAFETY: `poll_set` is a valid array of `poll_set.len()` entries
        // for the duration of the call; its descriptors are our own
        // duplicates, open while `registered` holds them.
        let ready = unsafe {
            libc::poll(
                self.poll_set.as_mut_ptr(),
                self.poll_set.len() as libc::nfds_t,
                0,
            )
        };
        ready > 0
    }

    /// Waits until some descriptor is ready, and forgets that readiness
    /// before libusb handles it: what becomes ready later raises a new edge.
    async fn ready(&self) {
        if self.registered.is_empty() {
            return std::future::pending().await;
        }
        std::future::poll_fn(|cx| {
            let mut any = false;
            for (fd, events) in &self.registered {
                let interest = interest(*events);
                if interest.is_readable() {
                    if let Poll::Ready(guard) = fd.poll_read_ready(cx) {
                        if let Ok(mut guard) = guard {
                            guard.clear_ready();
                        }
                        any = true;
                    }
                }
                if interest.is_writable() {
                    if let Poll::Ready(guard) = fd.poll_write_ready(cx) {
                        if let Ok(mut guard) = guard {
                            guard.clear_ready();
                        }
                        any = true;
                    }
                }
            }
            if any {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A descriptor of our own for the open file behind libusb's `fd`.
fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: called with libusb's event lock held, right after libusb
    // listed `fd`: libusb closes a descriptor only under that lock (or in
    // libusb_exit, and our context is alive), so `fd` is open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// The reactor interest for libusb's poll events (usbfs reports completed
/// URBs as writable).
fn interest(events: i16) -> Interest {
    let readable = events & libc::POLLIN != 0;
    let writable = events & libc::POLLOUT != 0;
    match (readable, writable) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        _ => Interest::READABLE,
    }
}

fn rusb_error(code: i32) -> String {
    // SAFETY: libusb_error_name returns a pointer to a static string for
    // any code, known or not.
    let name = unsafe { std::ffi::CStr::from_ptr(ffi::libusb_error_name(code)) };
    name.to_string_lossy().into_owned()
}
