//! `hid-stream-source` and `hid-stream-sink`: a stream of small periodic
//! input reports, like a sensor on an interrupt endpoint. The source (HRH,
//! `/dev/hidg0`) sends one report per period; the sink (ISP guest,
//! hidraw) measures what arrives: rate, gaps, inter-arrival jitter.
//!
//! A report: `S`, the slot number (u24 LE) and the sender's
//! CLOCK_MONOTONIC in microseconds (u32 LE, wrapping). The two guests'
//! clocks are unrelated, so the timestamp gives no latency; it gives the
//! sender's own intervals and the variation of the one-way delay.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use super::echo::open_rw;
use super::hid::REPORT_LEN;
use super::sys;
use crate::stats::Summary;

const STREAM_MARK: u8 = b'S';
/// Slot numbers are 24 bits wide.
pub const MAX_COUNT: u32 = 1 << 24;

pub fn stream_report(seq: u32, sent_us: u32) -> [u8; REPORT_LEN] {
    let mut r = [0; REPORT_LEN];
    r[0] = STREAM_MARK;
    r[1..4].copy_from_slice(&seq.to_le_bytes()[..3]);
    r[4..].copy_from_slice(&sent_us.to_le_bytes());
    r
}

/// Slot number and send time of a stream report.
pub fn parse_stream(report: &[u8]) -> Option<(u32, u32)> {
    if report.len() != REPORT_LEN || report[0] != STREAM_MARK {
        return None;
    }
    let seq = u32::from_le_bytes([report[1], report[2], report[3], 0]);
    let sent_us = u32::from_le_bytes(report[4..].try_into().ok()?);
    Some((seq, sent_us))
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceResult {
    pub probe: &'static str,
    pub device: String,
    pub interval_ms: u64,
    /// Slots in the run: the reports a perfect link would carry.
    pub count: u32,
    pub sent: u32,
    /// Slots whose time passed while an earlier report waited for the
    /// host to poll: not sent, as a sensor sampling at a fixed rate drops
    /// samples it cannot deliver. The sink sees them as gaps.
    pub skipped: u32,
    pub duration_s: f64,
    /// How late each send started after its slot time.
    pub lag_stats_us: Option<Summary>,
}

/// Sends `count` slots, one every `interval`; a write that waits more
/// than `timeout` for the host is an error.
pub fn source(
    file: &mut File,
    interval: Duration,
    count: u32,
    timeout: Duration,
) -> Result<SourceResult> {
    ensure!(count <= MAX_COUNT, "at most {MAX_COUNT} reports");
    ensure!(!interval.is_zero(), "the interval must be at least 1 ms");
    sys::set_nonblocking(file)?;
    let period = interval.as_nanos() as u64;
    let t0 = sys::monotonic_ns();
    let mut lags = Vec::with_capacity(count as usize);
    let mut slot = 0u64;
    while slot < u64::from(count) {
        let due = t0 + slot * period;
        sys::sleep_until_ns(due)?;
        let now = sys::monotonic_ns();
        let report = stream_report(slot as u32, (now / 1000) as u32);
        sys::write_record(file, &report, Some(Instant::now() + timeout))
            .with_context(|| format!("sending report {slot} failed (is the sink reading?)"))?;
        lags.push(now.saturating_sub(due));
        if slot + 1 >= u64::from(count) {
            break;
        }
        // Go on with the latest slot whose time has come: within the next
        // slot's period that is the next slot, later ones skip slots. The
        // last slot always goes, so the sink sees where the stream ends.
        let behind = (sys::monotonic_ns() - t0) / period;
        slot = behind.max(slot + 1).min(u64::from(count) - 1);
    }
    let sent = lags.len() as u32;
    Ok(SourceResult {
        probe: "hid-stream-source",
        device: String::new(),
        interval_ms: interval.as_millis() as u64,
        count,
        sent,
        skipped: count - sent,
        duration_s: (sys::monotonic_ns() - t0) as f64 / 1e9,
        lag_stats_us: Summary::from_nanos(&lags),
    })
}

pub fn hid_stream_source(
    dev: &Path,
    interval: Duration,
    count: u32,
    timeout: Duration,
) -> Result<SourceResult> {
    let mut file = open_rw(dev)?;
    let mut result = source(&mut file, interval, count, timeout)?;
    result.device = dev.display().to_string();
    Ok(result)
}
