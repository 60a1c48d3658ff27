//! `serial-echo` and `hid-echo`: the HRH side of the pings. Whatever is
//! read is written straight back, one read at a time: on a tty a read is
//! whatever bytes have come, on `/dev/hidg0` one output report, written
//! back as one input report.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::ping::Unit;
use super::sys;
use super::tty::RawTty;

/// How long an echo may wait for the other side to take it: the host
/// reads its tty and polls its HID device all the time a ping runs.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the echo stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// `--count` reached.
    Count,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// The device went away (unplugged gadget, closed pty).
    Hangup,
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoResult {
    pub probe: &'static str,
    pub device: String,
    /// Stale input thrown away at the start (bytes or reports).
    pub discarded: u64,
    pub bytes: u64,
    /// Reads echoed; for `hid-echo`, reports.
    pub reads: u64,
    pub seconds: f64,
    pub end: End,
}

/// Reads what is already waiting, without waiting for more.
fn discard_queued(file: &mut File, unit: Unit) -> io::Result<u64> {
    let mut buf = [0; 4096];
    let mut n = 0;
    while let Some(got) = sys::try_read(file, &mut buf)? {
        if got == 0 {
            break;
        }
        n += match unit {
            Unit::Bytes => got as u64,
            Unit::Reads => 1,
        };
    }
    Ok(n)
}

fn is_stop(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted && sys::stop_requested()
}

/// Echoes until `limit` (bytes or reads) is reached, a stop signal comes or
/// the device hangs up.
pub fn pump(file: &mut File, limit: Option<(Unit, u64)>) -> io::Result<(u64, u64, End)> {
    sys::set_nonblocking(file)?;
    let mut buf = [0; 4096];
    let (mut bytes, mut reads) = (0u64, 0u64);
    loop {
        let room = match limit {
            Some((Unit::Bytes, n)) if bytes >= n => break,
            Some((Unit::Reads, n)) if reads >= n => break,
            // Never read past the limit: bytes after it are not ours.
            Some((Unit::Bytes, n)) => buf.len().min((n - bytes) as usize),
            _ => buf.len(),
        };
        let got = match sys::wait(file, libc::POLLIN, None)
            .and_then(|_| sys::try_read(file, &mut buf[..room]))
        {
            Ok(Some(0)) => return Ok((bytes, reads, End::Hangup)),
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) if is_stop(&e) => return Ok((bytes, reads, End::Signal)),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                return Ok((bytes, reads, End::Hangup))
            }
            Err(e) => return Err(e),
        };
        match sys::write_all(file, &buf[..got], Some(Instant::now() + WRITE_TIMEOUT)) {
            Ok(()) => {}
            Err(e) if is_stop(&e) => return Ok((bytes, reads, End::Signal)),
            Err(e) => return Err(e),
        }
        bytes += got as u64;
        reads += 1;
    }
    Ok((bytes, reads, End::Count))
}

fn finish(
    probe: &'static str,
    path: &Path,
    file: &mut File,
    unit: Unit,
    count: Option<u64>,
) -> Result<EchoResult> {
    sys::set_nonblocking(file)?;
    let discarded = discard_queued(file, unit).context("cannot discard stale input")?;
    // The orchestrator waits for this line before it starts the ping.
    eprintln!("vusb-probe: {probe}: ready on {}", path.display());
    let started = Instant::now();
    let (bytes, reads, end) = pump(file, count.map(|n| (unit, n)))
        .with_context(|| format!("echo on {} failed", path.display()))?;
    Ok(EchoResult {
        probe,
        device: path.display().to_string(),
        discarded,
        bytes,
        reads,
        seconds: started.elapsed().as_secs_f64(),
        end,
    })
}

/// `serial-echo`: `count` is in bytes.
pub fn serial_echo(path: &Path, count: Option<u64>) -> Result<EchoResult> {
    let mut tty = RawTty::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    tty.flush_input()?;
    finish("serial-echo", path, tty.file(), Unit::Bytes, count)
    // `tty` is dropped here, which restores the port's settings.
}

/// `hid-echo`: `count` is in reports.
pub fn hid_echo(path: &Path, count: Option<u64>) -> Result<EchoResult> {
    let mut file = open_rw(path)?;
    finish("hid-echo", path, &mut file, Unit::Reads, count)
}

/// Opens a device node for reading and writing, non-blocking: every wait
/// goes through poll, with a deadline and an eye on the stop flag.
pub fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}
