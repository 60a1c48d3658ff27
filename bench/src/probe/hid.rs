//! `hid-ping`: round trips through a HID device's interrupt endpoints:
//! an output report written to hidraw goes to the device, `hid-echo` on the
//! gadget's `/dev/hidg0` sends it back as an input report.
//!
//! The test bed's HID gadget has 8-byte input and output reports and no
//! report ids. hidraw then wants one extra byte in front of a report it
//! writes, the report id 0, which the kernel strips before the transfer;
//! a read gives the bare 8-byte report. (With report ids both would carry
//! the id in front.)

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::echo::open_rw;
use super::ping::{self, EchoLink, PingResult, PingSpec, Reply, Unit};
use super::sys;

/// Bytes of a report (input and output alike).
pub const REPORT_LEN: usize = 8;
/// The id hidraw expects in front of a written report when the device
/// declares no report ids.
pub const NO_REPORT_ID: u8 = 0;

const PING_MARK: u8 = b'P';

/// How long hidraw must be quiet before the first ping, and the most time
/// spent waiting for that.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// The report of ping `seq`: a mark, the number, and three check bytes
/// derived from it, so a report that merely starts like a ping is not
/// taken for one.
pub fn ping_report(seq: u32) -> [u8; REPORT_LEN] {
    let mut r = [0; REPORT_LEN];
    r[0] = PING_MARK;
    r[1..5].copy_from_slice(&seq.to_le_bytes());
    let check = seq.wrapping_mul(0x9e37_79b1).to_le_bytes();
    r[5..].copy_from_slice(&check[1..]);
    r
}

/// The sequence number of an intact ping report.
pub fn parse_ping(report: &[u8]) -> Option<u32> {
    let seq = u32::from_le_bytes(report.get(1..5)?.try_into().ok()?);
    (report == ping_report(seq)).then_some(seq)
}

/// A hidraw node (or anything with its read and write semantics) to a
/// device that echoes output reports as input reports.
#[derive(Debug)]
pub struct HidLink {
    file: File,
}

impl HidLink {
    pub fn new(file: File) -> io::Result<Self> {
        sys::set_nonblocking(&file)?;
        Ok(Self { file })
    }

    /// Throws away input reports that are waiting or still come in;
    /// returns how many.
    pub fn drain(&mut self) -> io::Result<u64> {
        ping::drain(&mut self.file, DRAIN_QUIET, DRAIN_LIMIT, Unit::Reads)
    }
}

impl EchoLink for HidLink {
    fn send(&mut self, seq: u32) -> io::Result<()> {
        let mut out = [NO_REPORT_ID; REPORT_LEN + 1];
        out[1..].copy_from_slice(&ping_report(seq));
        // hidraw's write waits for the interrupt OUT transfer to finish
        // (up to 5 s in usbhid), so the round trip includes it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let written = sys::write_record(&mut self.file, &out, Some(deadline))?;
        if written != out.len() {
            return Err(io::Error::other(format!(
                "hidraw took {written} of the {} bytes of a report",
                out.len()
            )));
        }
        Ok(())
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<(Reply, Instant)>> {
        let mut buf = [0; 64];
        loop {
            if !sys::wait(&self.file, libc::POLLIN, Some(deadline))? {
                return Ok(None);
            }
            match sys::try_read(&mut self.file, &mut buf)? {
                Some(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "hang-up")),
                Some(n) => {
                    let at = Instant::now();
                    let reply = match parse_ping(&buf[..n]) {
                        Some(seq) => Reply::Echo(seq),
                        None => Reply::Garbage(1),
                    };
                    return Ok(Some((reply, at)));
                }
                None => {}
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HidPingResult {
    pub probe: &'static str,
    pub device: String,
    pub report_bytes: usize,
    #[serde(flatten)]
    pub ping: PingResult,
}

pub fn hid_ping(dev: &Path, spec: &PingSpec) -> Result<HidPingResult> {
    let mut link = HidLink::new(open_rw(dev)?)?;
    let drained = link
        .drain()
        .with_context(|| format!("cannot drain {}", dev.display()))?;
    let ping = ping::ping(&mut link, spec, drained)
        .with_context(|| format!("ping through {} failed", dev.display()))?;
    Ok(HidPingResult {
        probe: "hid-ping",
        device: dev.display().to_string(),
        report_bytes: REPORT_LEN,
        ping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_reports_round_trip_and_reject_lookalikes() {
        for seq in [0, 1, 255, 256, 70_000, u32::MAX] {
            assert_eq!(parse_ping(&ping_report(seq)), Some(seq));
        }
        let mut r = ping_report(5);
        r[7] ^= 1;
        assert_eq!(parse_ping(&r), None);
        assert_eq!(parse_ping(&ping_report(5)[..7]), None);
        assert_eq!(parse_ping(&[0; 8]), None);
        // With the report id still in front it is no ping either.
        let mut with_id = vec![NO_REPORT_ID];
        with_id.extend(ping_report(5));
        assert_eq!(parse_ping(&with_id), None);
    }
}
