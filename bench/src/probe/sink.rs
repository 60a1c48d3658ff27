//! `hid-stream-sink`: receives the stream of `hid-stream-source` and
//! measures it.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use super::echo::open_rw;
use super::stream::{parse_stream, MAX_COUNT};
use super::sys;
use crate::stats::Summary;

/// Gap ranges listed in the result at most; `gap_count` has them all.
const MAX_GAPS_LISTED: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkEnd {
    /// The last slot arrived.
    Complete,
    /// Nothing came for the timeout.
    Timeout,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkResult {
    pub probe: &'static str,
    pub device: String,
    /// Slots expected: 0 to count - 1.
    pub count: u32,
    /// Distinct slots that arrived.
    pub received: u32,
    /// Slots that never arrived (`count - received`).
    pub missing: u32,
    /// Missing slots as inclusive ranges `[first, last]`, the first 100.
    pub gaps: Vec<[u32; 2]>,
    pub gap_count: usize,
    pub duplicates: u32,
    /// Reports with a lower slot than one before them.
    pub out_of_order: u32,
    /// Reports that were no stream report (or had a slot >= count).
    pub garbage: u32,
    /// From the first arrival to the last.
    pub duration_s: f64,
    /// `(received - 1) / duration_s`: arrivals per second.
    pub rate_per_s: Option<f64>,
    /// Standard deviation of the inter-arrival intervals.
    pub jitter_us: Option<f64>,
    /// Intervals between consecutive arrivals, as the reader saw them.
    pub interval_stats_us: Option<Summary>,
    /// Intervals between consecutive slots by the sender's clock.
    pub sender_interval_stats_us: Option<Summary>,
    /// One-way delay of each report minus the smallest one: arrival time
    /// minus send time across two unrelated clocks is an unknown offset
    /// plus the delay, so only its variation means something.
    pub delay_variation_stats_us: Option<Summary>,
    pub end: SinkEnd,
}

impl SinkResult {
    pub fn failure(&self) -> Option<String> {
        (self.received == 0).then(|| "no stream report arrived".to_string())
    }
}

/// One report that arrived: slot, arrival (monotonic ns), send time (µs).
type Arrival = (u32, u64, u32);

fn gaps(seen: &[bool]) -> Vec<[u32; 2]> {
    let mut out: Vec<[u32; 2]> = Vec::new();
    for (i, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
        let i = i as u32;
        match out.last_mut() {
            Some(last) if last[1] + 1 == i => last[1] = i,
            _ => out.push([i, i]),
        }
    }
    out
}

fn summarise(
    count: u32,
    seen: &[bool],
    arrivals: &[Arrival],
    garbage: u32,
    duplicates: u32,
    end: SinkEnd,
) -> SinkResult {
    let received = seen.iter().filter(|s| **s).count() as u32;
    let all_gaps = gaps(seen);
    let intervals: Vec<u64> = arrivals.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let sender: Vec<u64> = arrivals
        .windows(2)
        .filter(|w| w[1].0 == w[0].0 + 1)
        .map(|w| u64::from(w[1].2.wrapping_sub(w[0].2)) * 1000)
        .collect();
    // Arrival minus send time in wrapping 32-bit µs: an unknown offset
    // plus the delay. Relative to the first report the offset cancels and
    // the differences are small, so they fit an i32 wherever it wraps.
    let raw: Vec<u32> = arrivals
        .iter()
        .map(|&(_, at, sent)| ((at / 1000) as u32).wrapping_sub(sent))
        .collect();
    let delays: Vec<i64> = raw
        .iter()
        .map(|d| i64::from(d.wrapping_sub(raw[0]) as i32))
        .collect();
    let base = delays.iter().copied().min().unwrap_or(0);
    let variation: Vec<u64> = delays.iter().map(|d| (d - base) as u64 * 1000).collect();
    let duration_ns = match (arrivals.first(), arrivals.last()) {
        (Some(a), Some(b)) => b.1 - a.1,
        _ => 0,
    };
    let interval_stats = Summary::from_nanos(&intervals);
    SinkResult {
        probe: "hid-stream-sink",
        device: String::new(),
        count,
        received,
        missing: count - received,
        gap_count: all_gaps.len(),
        gaps: all_gaps.into_iter().take(MAX_GAPS_LISTED).collect(),
        duplicates,
        out_of_order: arrivals.windows(2).filter(|w| w[1].0 < w[0].0).count() as u32,
        garbage,
        duration_s: duration_ns as f64 / 1e9,
        rate_per_s: (duration_ns > 0)
            .then(|| (arrivals.len() - 1) as f64 / (duration_ns as f64 / 1e9)),
        jitter_us: interval_stats.map(|s| s.std),
        interval_stats_us: interval_stats,
        sender_interval_stats_us: Summary::from_nanos(&sender),
        delay_variation_stats_us: Summary::from_nanos(&variation),
        end,
    }
}

/// Receives until slot `count - 1` arrives or nothing comes for `timeout`.
pub fn sink(file: &mut File, count: u32, timeout: Duration) -> Result<SinkResult> {
    ensure!(
        (1..=MAX_COUNT).contains(&count),
        "count must be 1 to {MAX_COUNT}"
    );
    sys::set_nonblocking(file)?;
    let mut seen = vec![false; count as usize];
    let mut arrivals: Vec<Arrival> = Vec::with_capacity(count as usize);
    let (mut garbage, mut duplicates) = (0, 0);
    let mut buf = [0; 64];
    let mut deadline = Instant::now() + timeout;
    let end = loop {
        if seen[count as usize - 1] {
            break SinkEnd::Complete;
        }
        match sys::wait(file, libc::POLLIN, Some(deadline)) {
            Ok(true) => {}
            Ok(false) => break SinkEnd::Timeout,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => break SinkEnd::Signal,
            Err(e) => return Err(e.into()),
        }
        let n = match sys::try_read(file, &mut buf) {
            Ok(Some(0)) => anyhow::bail!("the HID device went away"),
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => break SinkEnd::Signal,
            Err(e) => return Err(e.into()),
        };
        let at = sys::monotonic_ns();
        deadline = Instant::now() + timeout;
        match parse_stream(&buf[..n]) {
            Some((seq, sent)) if seq < count => {
                if std::mem::replace(&mut seen[seq as usize], true) {
                    duplicates += 1;
                } else {
                    arrivals.push((seq, at, sent));
                }
            }
            _ => garbage += 1,
        }
    };
    Ok(summarise(count, &seen, &arrivals, garbage, duplicates, end))
}

pub fn hid_stream_sink(dev: &Path, count: u32, timeout: Duration) -> Result<SinkResult> {
    let mut file = open_rw(dev)?;
    // The orchestrator starts the source after this line: usbhid drops
    // input that arrives in the first 50 ms after an open, and the open
    // has returned by now.
    eprintln!("vusb-probe: hid-stream-sink: ready on {}", dev.display());
    let mut result = sink(&mut file, count, timeout)
        .with_context(|| format!("receiving on {} failed", dev.display()))?;
    result.device = dev.display().to_string();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::stream::stream_report;

    #[test]
    fn reports_round_trip() {
        let r = stream_report(0x00ab_cdef, 0xdead_beef);
        assert_eq!(parse_stream(&r), Some((0x00ab_cdef, 0xdead_beef)));
        assert_eq!(parse_stream(&r[..7]), None);
        assert_eq!(parse_stream(&[0; 8]), None);
    }

    #[test]
    fn gaps_are_inclusive_ranges() {
        let seen = [false, true, true, false, false, true, false];
        assert_eq!(gaps(&seen), vec![[0, 0], [3, 4], [6, 6]]);
        assert!(gaps(&[true; 4]).is_empty());
    }

    #[test]
    fn summary_of_a_stream_with_a_loss_and_a_wrapping_clock() {
        // Slots 0..5 every 8 ms, slot 2 lost; the sender's µs clock wraps
        // after slot 0; delays d, d, _, d + 200, d µs.
        let t = |ms: u64| ms * 1_000_000;
        let sent = |slot: u32| 0xffff_ff00u32.wrapping_add(slot * 8000);
        let arrivals: Vec<Arrival> = vec![
            (0, t(1000) + 100_000, sent(0)),
            (1, t(1008) + 100_000, sent(1)),
            (3, t(1024) + 300_000, sent(3)),
            (4, t(1032) + 100_000, sent(4)),
        ];
        let seen = [true, true, false, true, true];
        let r = summarise(5, &seen, &arrivals, 0, 0, SinkEnd::Complete);
        assert_eq!((r.received, r.missing, r.gap_count), (4, 1, 1));
        assert_eq!(r.gaps, vec![[2, 2]]);
        assert_eq!(r.duration_s, 0.032);
        assert!((r.rate_per_s.unwrap() - 3.0 / 0.032).abs() < 1e-9);
        let iv = r.interval_stats_us.unwrap();
        assert_eq!((iv.min, iv.max, iv.count), (7800.0, 16200.0, 3));
        let s = r.sender_interval_stats_us.unwrap();
        assert_eq!((s.count, s.min, s.max), (2, 8000.0, 8000.0));
        let d = r.delay_variation_stats_us.unwrap();
        assert_eq!((d.min, d.max), (0.0, 200.0));
        assert_eq!(r.out_of_order, 0);
        assert_eq!(r.failure(), None);
    }
}
