//! The results: everything as JSON (the plots are drawn from it), the tables as markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::workloads::Workload;
use super::{PathKind, Plan};

/// One run.
#[derive(Debug, Serialize)]
pub struct Results {
    /// When it started (UTC, RFC 3339).
    pub started: String,
    pub machine: BTreeMap<&'static str, String>,
    /// What was measured, the links' parameters included.
    pub plan: Plan,
    pub paths: Vec<PathSummary>,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
pub struct PathSummary {
    pub name: &'static str,
    pub about: &'static str,
}

/// One path over one link (no link: local).
#[derive(Debug, Serialize)]
pub struct Cell {
    pub path: PathKind,
    pub link: Option<&'static str>,
    /// vusb-probe's result per workload.
    pub results: BTreeMap<&'static str, Value>,
    /// What failed, by workload (or `setup`).
    pub errors: BTreeMap<&'static str, String>,
    /// When each workload ran: its first and last instant, in seconds since the Unix epoch
    /// (the clock of a network capture, [`super::capture`]).
    pub windows: BTreeMap<&'static str, [f64; 2]>,
    /// Wall time of the whole cell, guest boot included.
    pub seconds: f64,
}

impl Cell {
    /// A number in a workload's result, by its dotted path (`rtt_stats_us.p50`).
    fn metric(&self, w: Workload, path: &str) -> Option<f64> {
        let mut v = self.results.get(w.name())?;
        for key in path.split('.') {
            v = v.get(key)?;
        }
        v.as_f64()
    }
}

fn cell_label(c: &Cell) -> String {
    format!("{} | {}", c.link.unwrap_or("–"), c.path.name())
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

/// Microseconds in a result, shown as milliseconds.
fn ms(c: &Cell, w: Workload, field: &str) -> String {
    fmt(c.metric(w, field).map(|us| us / 1000.0), 2)
}

impl Results {
    /// The tables: throughput (Table I), round trips (Table II) at 1 Hz and back to back,
    /// the interrupt endpoints, and what failed.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Link benchmark, {}\n", self.started);
        for (k, v) in &self.machine {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let p = &self.plan;
        let _ = writeln!(
            s,
            "- Plan: {} MiB written and read; {} serial round trips every {} ms and back to back; \
             {} HID round trips; {} HID reports every {} ms{}.\n",
            p.disk_mib,
            p.pings,
            p.slow_interval_ms,
            p.hid_pings,
            p.stream_reports,
            p.stream_interval_ms,
            if p.quick { " (quick run)" } else { "" }
        );
        let _ = writeln!(
            s,
            "| link | rate | RTT | jitter | loss |\n|---|---:|---:|---:|---:|"
        );
        for l in &self.plan.links {
            let _ = writeln!(
                s,
                "| {} | {} Mbit/s | {} ms | {} ms | {} % |",
                l.name, l.rate_mbit, l.rtt_ms, l.jitter_ms, l.loss_percent
            );
        }
        let _ = writeln!(s, "\n| path | what |\n|---|---|");
        for p in &self.paths {
            let _ = writeln!(s, "| {} | {} |", p.name, p.about);
        }

        let _ = writeln!(
            s,
            "\n## Pendrive throughput (MB/s)\n\n| link | path | write | read |\n|---|---|---:|---:|"
        );
        for c in &self.cells {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                cell_label(c),
                fmt(c.metric(Workload::DiskWrite, "mb_per_s"), 2),
                fmt(c.metric(Workload::DiskRead, "mb_per_s"), 2)
            );
        }
        for (w, title) in [
            (
                Workload::SerialSlow,
                "Serial round trips, one every interval (ms)",
            ),
            (
                Workload::SerialBackToBack,
                "Serial round trips, back to back (ms)",
            ),
            (
                Workload::HidPing,
                "HID round trips through the interrupt endpoints (ms)",
            ),
        ] {
            let _ = writeln!(
                s,
                "\n## {title}\n\n| link | path | n | min | p50 | mean | p99 | max | std |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|"
            );
            for c in &self.cells {
                let stat = |k: &str| ms(c, w, &format!("rtt_stats_us.{k}"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell_label(c),
                    fmt(c.metric(w, "rtt_stats_us.count"), 0),
                    stat("min"),
                    stat("p50"),
                    stat("mean"),
                    stat("p99"),
                    stat("max"),
                    stat("std"),
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Interrupt stream\n\n| link | path | reports/s | missing | interval p50 ms | \
             interval p99 ms | jitter ms |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for c in &self.cells {
            let w = Workload::HidStream;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                cell_label(c),
                fmt(c.metric(w, "rate_per_s"), 1),
                fmt(c.metric(w, "missing"), 0),
                ms(c, w, "interval_stats_us.p50"),
                ms(c, w, "interval_stats_us.p99"),
                ms(c, w, "jitter_us"),
            );
        }
        let failed: Vec<&Cell> = self.cells.iter().filter(|c| !c.errors.is_empty()).collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "\n## Failures\n");
            for c in failed {
                for (w, e) in &c.errors {
                    let first = e.lines().next().unwrap_or_default();
                    let _ = writeln!(s, "- {} {}: {first}", cell_label(c).replace(" | ", " "), w);
                }
            }
        }
        s
    }

    /// Whether every workload of every cell succeeded.
    pub fn all_ok(&self) -> bool {
        self.cells.iter().all(|c| c.errors.is_empty())
    }
}
