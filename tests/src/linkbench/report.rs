//! The results: everything as JSON (the plots are drawn from it), the tables as markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::hrh_cpu::HrhCpu;
use super::plan::Options;
use super::sched_trace;
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
    /// What was recorded besides.
    pub recorded: Options,
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
    /// What the HRH's CPU did during each workload.
    pub hrh_cpu: BTreeMap<&'static str, HrhCpu>,
    /// The HRH's trace of each round-trip workload, per round trip (`--trace`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub traces: BTreeMap<&'static str, sched_trace::Summary>,
    /// Wall time of the whole cell, guest boot included.
    pub seconds: f64,
}

impl Cell {
    /// A cell read back from `results.json`, with what a capture's split needs: its path,
    /// its link and its windows.
    pub fn from_saved(v: &Value) -> Result<Cell> {
        let name = v["path"].as_str().context("a cell without a path")?;
        let path = PathKind::by_name(name).with_context(|| format!("unknown path {name:?}"))?;
        let link = match v["link"].as_str() {
            None => None,
            Some(n) => Some(
                crate::link::LINKS
                    .iter()
                    .find(|l| l.name == n)
                    .with_context(|| format!("unknown link {n:?}"))?
                    .name,
            ),
        };
        let mut windows = BTreeMap::new();
        if let Some(saved) = v["windows"].as_object() {
            for (name, w) in saved {
                let workload = Workload::ALL
                    .into_iter()
                    .find(|w| w.name() == name)
                    .with_context(|| format!("unknown workload {name:?}"))?;
                let (Some(from), Some(to)) = (w[0].as_f64(), w[1].as_f64()) else {
                    bail!("the window of {name} is not two numbers: {w}");
                };
                windows.insert(workload.name(), [from, to]);
            }
        }
        Ok(Cell {
            path,
            link,
            results: BTreeMap::new(),
            errors: BTreeMap::new(),
            windows,
            hrh_cpu: BTreeMap::new(),
            traces: BTreeMap::new(),
            seconds: v["seconds"].as_f64().unwrap_or_default(),
        })
    }

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
        if self.recorded.profile {
            let _ = writeln!(
                s,
                "**Profiled run**: perf sampled the HRH during some workloads, at a cost in \
                 the HRH's CPU. Compare its paths with each other, not with other runs.\n"
            );
        }
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
        let _ = writeln!(
            s,
            "\n## The HRH's CPU\n\nThe USB/IP server's run time and the whole HRH's busy time \
             (its one CPU), per round trip (ms) and per MiB of the pendrive (ms).\n\n\
             | link | path | serial server | serial HRH | HID server | HID HRH | \
             write server | write HRH | read server | read HRH |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.cells {
            let mut row = cell_label(c);
            for w in [
                Workload::SerialBackToBack,
                Workload::HidPing,
                Workload::DiskWrite,
                Workload::DiskRead,
            ] {
                let cpu = c.hrh_cpu.get(w.name());
                let n = self.units(c, w).filter(|&n| n > 0.0);
                let share = |ms: Option<f64>| fmt(ms.zip(n).map(|(ms, n)| ms / n), 2);
                let _ = write!(
                    row,
                    " | {} | {}",
                    share(cpu.and_then(|c| c.server_ms)),
                    share(cpu.map(|c| c.busy_ms))
                );
            }
            let _ = writeln!(s, "| {row} |");
        }
        if self.recorded.trace {
            s.push_str(&self.traces_markdown());
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

    /// The HRH's traces: per round trip, who had its CPU and what it switched between.
    fn traces_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n## The HRH's CPU in a round trip, traced\n\n\
             From ftrace in the HRH (`traces/`), per round trip: CPU time by task (µs, \
             softirqs apart, idle left out), task switches, address spaces loaded, \
             system calls and user page faults, from the workload's first packet in to its \
             last.\n\n\
             | workload | link | path | CPU by task | switches | mm loads | syscalls | \
             faults |\n|---|---|---|---|---:|---:|---:|---:|"
        );
        for w in sched_trace::TRACED {
            for c in &self.cells {
                let Some(t) = c.traces.get(w.name()) else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    "| {}{} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    w.name(),
                    if t.lost_events > 0 {
                        format!(" ({} events lost)", t.lost_events)
                    } else {
                        String::new()
                    },
                    cell_label(c),
                    t.busiest(5),
                    t.counts.switches,
                    t.counts.mm_loads,
                    t.counts.syscalls.values().sum::<f64>(),
                    t.counts.page_faults.values().sum::<f64>(),
                );
            }
        }
        s
    }

    /// What `w`'s CPU time is shared out over in the tables: its round trips, or the MiB
    /// the pendrive moved.
    fn units(&self, c: &Cell, w: Workload) -> Option<f64> {
        match w {
            Workload::DiskWrite | Workload::DiskRead => Some(f64::from(self.plan.disk_mib)),
            _ => c.metric(w, "rtt_stats_us.count"),
        }
    }

    /// Whether every workload of every cell succeeded.
    pub fn all_ok(&self) -> bool {
        self.cells.iter().all(|c| c.errors.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_cell_reads_back_with_its_path_link_and_windows() {
        let cell = Cell {
            path: PathKind::Mixed,
            link: Some("metro"),
            results: BTreeMap::new(),
            errors: BTreeMap::new(),
            windows: [("hid-ping", [1.5, 2.5])].into_iter().collect(),
            hrh_cpu: BTreeMap::new(),
            traces: BTreeMap::new(),
            seconds: 7.0,
        };
        let saved = serde_json::to_value(&cell).unwrap();
        let back = Cell::from_saved(&saved).unwrap();
        assert_eq!(
            (back.path, back.link, &back.windows, back.seconds),
            (cell.path, cell.link, &cell.windows, 7.0)
        );

        let mut odd = saved.clone();
        odd["link"] = "mars".into();
        let e = Cell::from_saved(&odd).unwrap_err();
        assert!(e.to_string().contains("unknown link \"mars\""), "{e}");
        let mut odd = saved;
        odd["windows"]["hid-ping"] = "soon".into();
        assert!(Cell::from_saved(&odd).is_err());
    }
}
