//! The few system calls std does not wrap: poll with a deadline, the
//! monotonic clock as a number, absolute sleeps, and a stop flag set by
//! SIGINT/SIGTERM so that the tools restore a tty before they exit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest single poll: a signal that lands between the stop check and
/// the poll is then noticed within this time instead of never.
const POLL_SLICE: Duration = Duration::from_millis(100);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set the stop flag instead of killing
/// the process. Without SA_RESTART, so a blocked poll returns at once.
pub fn install_stop_handlers() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is valid: no flags, empty mask.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
        // SAFETY: `action` is a valid sigaction, the handler only stores to
        // an atomic, and the old action is not asked for.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a stop signal has arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "stopped by a signal")
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock as [`Instant`], as a
/// number that can travel inside a report.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC exists
    // on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until CLOCK_MONOTONIC reads `ns`. Absolute, so a periodic
/// sender's period does not drift by the time spent between its sleeps.
pub fn sleep_until_ns(ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        if stop_requested() {
            return Err(stopped());
        }
        // SAFETY: `ts` is a valid timespec; no remainder is asked for
        // (an absolute sleep is simply restarted).
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            err => return Err(io::Error::from_raw_os_error(err)),
        }
    }
}

/// Puts the file into non-blocking mode: every wait then goes through
/// [`wait`], which has a deadline.
pub fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor with F_GETFL takes no pointer.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an int.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the file is readable (`libc::POLLIN`) or writable
/// (`libc::POLLOUT`), or until `deadline` (`None`: no deadline). Returns
/// whether it is ready; a stop signal is an `Interrupted` error. Errors
/// and hang-ups count as ready: the read or write that follows reports
/// them.
pub fn wait(file: &File, events: libc::c_short, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        if stop_requested() {
            return Err(stopped());
        }
        let slice = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // One last non-blocking look: data that is already
                    // there at the deadline is not a timeout.
                    Duration::ZERO
                } else {
                    left.min(POLL_SLICE)
                }
            }
            None => POLL_SLICE,
        };
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events,
            revents: 0,
        };
        // Round up: a poll that returns a little early would spin.
        let ms = slice.as_micros().div_ceil(1000) as libc::c_int;
        // SAFETY: `pfd` is one valid pollfd, and the count says one.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc > 0 {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// One read from a non-blocking file: `Ok(None)` when nothing is there.
pub fn try_read(file: &mut File, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !stop_requested() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data` to a non-blocking file, waiting for room until
/// `deadline`.
pub fn write_all(file: &mut File, mut data: &[u8], deadline: Option<Instant>) -> io::Result<()> {
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait(file, libc::POLLOUT, deadline)? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the other side took no data before the deadline",
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !stop_requested() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One write of a whole record (a HID report) to a non-blocking file,
/// waiting for room until `deadline`; returns the bytes the write took.
/// Never split: a report written in two pieces would be two reports.
pub fn write_record(
    file: &mut File,
    record: &[u8],
    deadline: Option<Instant>,
) -> io::Result<usize> {
    loop {
        match file.write(record) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait(file, libc::POLLOUT, deadline)? {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the other side took no report before the deadline",
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !stop_requested() => {}
            Err(e) => return Err(e),
        }
    }
}
