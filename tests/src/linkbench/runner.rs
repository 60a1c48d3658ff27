//! Running a plan: one HRH guest for the whole run, shaped link after link; every path
//! brought up, measured and taken down in turn. A workload that fails is recorded and the
//! run goes on; the results are written after every cell, so an interrupted run keeps what
//! it measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::capture;
use super::hrh_cpu;
use super::paths::{self, Devices};
pub use super::plan::Options;
use super::profile;
use super::report::{Cell, PathSummary, Results};
use super::sched_trace;
use super::workloads::{self, Workload};
use super::{PathKind, Plan};
use crate::hrh::{Hrh, HrhConfig};
use crate::link::Link;
use crate::remote::Remote;
use crate::util::unix_now;

const BOOT: Duration = Duration::from_secs(240);

/// Lines on stderr as the run goes: the cell, each workload's headline number, the time
/// spent and an estimate of what is left.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    cells: usize,
    done: usize,
}

impl Progress {
    fn new(cells: usize) -> Self {
        Self {
            started: Instant::now(),
            cells,
            done: 0,
        }
    }

    fn say(&self, what: &str) {
        let elapsed = self.started.elapsed().as_secs();
        let left = if self.done == 0 {
            String::new()
        } else {
            let per_cell = elapsed / self.done as u64;
            let rest = per_cell * (self.cells - self.done) as u64;
            format!(", ~{}:{:02} left", rest / 60, rest % 60)
        };
        eprintln!(
            "[{}/{} {}:{:02}{left}] {what}",
            (self.done + 1).min(self.cells),
            self.cells,
            elapsed / 60,
            elapsed % 60
        );
    }
}

/// The file a run with `capture` records the HRH's packets into, in its output folder.
pub const CAPTURE_FILE: &str = "hrh-nic.pcap";

/// Runs `plan`, writing `results.json` and `results.md` into `out` as it goes, and what
/// `options` ask for.
pub fn run(plan: &Plan, out: &Path, options: Options) -> Result<Results> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if options.profile {
        profile::check_available()?;
        let dir = out.join("profiles");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if options.trace {
        let dir = out.join("traces");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cells = plan.cells();
    let mut progress = Progress::new(cells.len());
    let mut results = Results {
        started: first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        machine: machine(),
        plan: plan.clone(),
        recorded: options,
        paths: plan
            .paths
            .iter()
            .map(|p| PathSummary {
                name: p.name(),
                about: p.about(),
            })
            .collect(),
        cells: Vec::new(),
    };

    progress.say("booting the HRH guest");
    let mut config = HrhConfig::new("linkbench-hrh")
        .with_exporter()
        .with_probe()
        // The image lives in the HRH's memory; a little beyond what is written.
        .storage_mib(plan.disk_mib + 8);
    if options.capture {
        config = config.capture(&out.join(CAPTURE_FILE));
    }
    if options.profile {
        config = config.with_host_tool(Path::new(profile::PERF));
    }
    let mut hrh = Hrh::boot(config)?;
    let devices = Devices::find(&hrh.wait_ready(BOOT)?)?;

    let setting = Setting { plan, options, out };
    let mut shaped: Option<Link> = None;
    for (link, kind) in cells {
        if link != shaped {
            match &link {
                Some(l) => {
                    progress.say(&format!("shaping the HRH's link: {}", l.name));
                    hrh.shape(l)?;
                }
                None => hrh.unshape()?,
            }
            shaped = link;
        }
        let cell = run_cell(
            &setting,
            &mut hrh,
            &devices,
            link.as_ref(),
            kind,
            &mut progress,
        );
        results.cells.push(cell);
        progress.done += 1;
        write(&results, out)?;
    }
    hrh.finish(Duration::from_secs(60))?;
    if options.capture {
        progress.say("splitting the captured transactions");
        split_capture(out, &results.cells, capture::Cells::All)?;
    }
    Ok(results)
}

/// Splits the capture of an earlier run in `out` again, from its `results.json`: for a run
/// that was stopped before it got that far (every finished cell is in the file).
pub fn split_saved_capture(out: &Path) -> Result<()> {
    let path = out.join("results.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let cells = saved["cells"]
        .as_array()
        .with_context(|| format!("{} has no cells", path.display()))?
        .iter()
        .map(Cell::from_saved)
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("reading the cells of {}", path.display()))?;
    split_capture(out, &cells, capture::Cells::Saved)
}

/// Splits the transactions in `out`'s capture (`capture.json`, `capture.md`).
fn split_capture(out: &Path, cells: &[Cell], which: capture::Cells) -> Result<()> {
    let file = out.join(CAPTURE_FILE);
    let pcap = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let split = capture::split(&pcap, cells, which)?;
    std::fs::write(
        out.join("capture.json"),
        serde_json::to_string_pretty(&split)?,
    )?;
    std::fs::write(out.join("capture.md"), capture::markdown(&split))?;
    Ok(())
}

/// What every cell of a run shares.
struct Setting<'a> {
    plan: &'a Plan,
    options: Options,
    /// The output folder.
    out: &'a Path,
}

fn run_cell(
    setting: &Setting,
    hrh: &mut Hrh,
    devices: &Devices,
    link: Option<&Link>,
    kind: PathKind,
    progress: &mut Progress,
) -> Cell {
    let started = Instant::now();
    let label = format!("{} {}", link.map_or("–", |l| l.name), kind.name());
    let mut cell = Cell {
        path: kind,
        link: link.map(|l| l.name),
        results: BTreeMap::new(),
        errors: BTreeMap::new(),
        windows: BTreeMap::new(),
        hrh_cpu: BTreeMap::new(),
        traces: BTreeMap::new(),
        seconds: 0.0,
    };
    progress.say(&format!("{label}: bringing the path up"));
    let name = format!(
        "linkbench-{}-{}",
        link.map_or("local", |l| l.name),
        kind.name()
    );
    let mut attached = match paths::attach(kind, hrh, devices, &name) {
        Ok(a) => a,
        Err(e) => {
            progress.say(&format!("{label}: FAILED to come up: {e:#}"));
            cell.errors.insert("setup", format!("{e:#}"));
            // Whatever came up is taken down with the server, so the next path starts clean.
            let _ = hrh.stop_server();
            cell.seconds = started.elapsed().as_secs_f64();
            return cell;
        }
    };
    for w in Workload::ALL {
        progress.say(&format!("{label}: {}", w.name()));
        measure(
            setting,
            hrh,
            attached.guest.as_mut(),
            &mut cell,
            w,
            progress,
        );
    }
    if let Err(e) = paths::detach(attached, hrh) {
        cell.errors.insert("teardown", format!("{e:#}"));
    }
    cell.seconds = started.elapsed().as_secs_f64();
    cell
}

/// Runs workload `w` of `cell` and records its result, with what `setting` asks to record
/// around it.
fn measure(
    setting: &Setting,
    hrh: &mut Hrh,
    guest: Option<&mut Remote>,
    cell: &mut Cell,
    w: Workload,
    progress: &mut Progress,
) {
    let label = format!("{} {}", cell.link.unwrap_or("–"), cell.path.name());
    let profiling = setting.options.profile
        && profile::PROFILED.contains(&w)
        && started(cell, "profile", w, profile::start(hrh.remote()));
    // With a capture, the window's start is also a mark in it (see `capture`).
    let began = if setting.options.capture {
        hrh.mark().unwrap_or_else(|_| unix_now())
    } else {
        unix_now()
    };
    let cpu_before = hrh_cpu_snapshot(hrh);
    // Local crosses no network: its trace would have no packets to frame it.
    let tracing = setting.options.trace
        && cell.path.tunnelled()
        && sched_trace::TRACED.contains(&w)
        && started(cell, "trace", w, sched_trace::start(hrh.remote()));
    let outcome = workloads::run(w, setting.plan, hrh.remote(), guest);
    let ended = unix_now();
    if tracing {
        if let Err(e) = save_trace(setting, hrh, cell, w, outcome.result.as_ref()) {
            recording_failed(cell, "trace", w, &e);
        }
    }
    cell.windows.insert(w.name(), [began, ended]);
    let cpu_after = hrh_cpu_snapshot(hrh);
    if profiling {
        let report = profile::report_path(setting.out, cell.link, cell.path.name(), w);
        let saved = profile::stop(hrh.remote()).and_then(|text| {
            std::fs::write(&report, text).with_context(|| format!("writing {}", report.display()))
        });
        if let Err(e) = saved {
            recording_failed(cell, "profile", w, &e);
        }
    }
    if let Some(v) = outcome.result {
        progress.say(&format!("{label}: {} {}", w.name(), headline(&v)));
        cell.results.insert(w.name(), v);
        // Only beside a result: what a failed workload cost says nothing.
        if let Some(cpu) = cpu_before.zip(cpu_after).and_then(|(b, a)| b.until(&a)) {
            cell.hrh_cpu.insert(w.name(), cpu);
        }
    }
    if let Some(e) = outcome.error {
        progress.say(&format!("{label}: {} FAILED: {e}", w.name()));
        cell.errors.insert(w.name(), e);
    }
}

/// Whether recording `what` (`profile`, `trace`) around `w` started; if not, records why.
fn started(cell: &mut Cell, what: &'static str, w: Workload, start: Result<()>) -> bool {
    start
        .map_err(|e| recording_failed(cell, what, w, &e))
        .is_ok()
}

/// Records that recording `what` around `w` failed (the first such failure of the cell:
/// the measurement stands).
fn recording_failed(cell: &mut Cell, what: &'static str, w: Workload, e: &anyhow::Error) {
    cell.errors
        .entry(what)
        .or_insert_with(|| format!("{}: {e:#}", w.name()));
}

/// Stops the HRH's trace of `w`, writes it out and adds its summary to `cell`.
fn save_trace(
    setting: &Setting,
    hrh: &mut Hrh,
    cell: &mut Cell,
    w: Workload,
    result: Option<&serde_json::Value>,
) -> Result<()> {
    let lines = sched_trace::stop(hrh.remote())?;
    let path = sched_trace::trace_path(setting.out, cell.link, cell.path.name(), w);
    std::fs::write(&path, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    // The round trips the workload counted, else those it was asked for.
    let round_trips = result
        .and_then(|v| v.get("rtt_stats_us")?.get("count")?.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(match w {
            Workload::HidPing => setting.plan.hid_pings,
            _ => setting.plan.pings,
        });
    let summary = sched_trace::Summary::of(&lines, round_trips)
        .with_context(|| format!("summing up {}", path.display()))?;
    cell.traces.insert(w.name(), summary);
    Ok(())
}

/// The HRH's CPU counters now; `None` if they cannot be read (the figures are then left
/// out, and the measurement stands).
fn hrh_cpu_snapshot(hrh: &mut Hrh) -> Option<hrh_cpu::Snapshot> {
    let out = hrh
        .remote()
        .run(hrh_cpu::SNAPSHOT, Duration::from_secs(30))
        .ok()?;
    hrh_cpu::Snapshot::parse(&out.lines)
}

/// The number a reader wants first from a result.
fn headline(v: &serde_json::Value) -> String {
    let get = |k: &str| v.get(k).and_then(|x| x.as_f64());
    let rtt = |k: &str| v.get("rtt_stats_us")?.get(k)?.as_f64();
    if let Some(mbps) = get("mb_per_s") {
        format!("{mbps:.2} MB/s")
    } else if let (Some(p50), Some(p99)) = (rtt("p50"), rtt("p99")) {
        format!("p50 {:.2} ms, p99 {:.2} ms", p50 / 1000.0, p99 / 1000.0)
    } else if let Some(rate) = get("rate_per_s") {
        format!("{rate:.1} reports/s")
    } else {
        String::new()
    }
}

fn write(results: &Results, out: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    std::fs::write(out.join("results.json"), json)?;
    std::fs::write(out.join("results.md"), results.markdown())?;
    Ok(())
}

/// What the numbers depend on.
fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("CPU", format!("{cpus} × {cpu}"));
    m.insert("host kernel", first_line("uname", &["-r"]));
    m.insert(
        "QEMU (host)",
        first_line("qemu-system-x86_64", &["--version"]),
    );
    m.insert(
        "accelerator",
        if Path::new("/dev/kvm").exists() {
            "/dev/kvm present, guests run under TCG (tests/src/guest.rs)".into()
        } else {
            "TCG (no KVM)".into()
        },
    );
    m.insert(
        "commit",
        first_line("git", &["rev-parse", "--short", "HEAD"]),
    );
    m
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}
