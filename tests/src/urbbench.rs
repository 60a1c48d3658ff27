//! The URB benchmark: what a USB/IP server costs the HRH's CPU per URB, server against
//! server, with nothing else in the way.
//!
//! The link benchmark ([`crate::linkbench`]) measures whole paths: client guests, the ISP's
//! daemons, the link and a program of the HRH's answering the serial port all take their
//! share of a round trip and of the host's two CPUs, and its figures move by tens of percent
//! from run to run. Here the HRH guest exports its bulk sink gadget (`sink` in
//! guest-images/hrh-gadgets.sh), whose URBs the kernel answers at once, and `usbip-load`
//! on the host keeps a fixed number of bulk URBs in flight to it through the forwarded
//! USB/IP port. No other guest runs. The servers take turns in one HRH, round after round,
//! so that the host's load of the moment falls on each of them alike:
//!
//! * `usbipd`: Debian's usbipd and the kernel's usbip-host;
//! * `hrh-exporter`: the workspace's;
//! * `second`: another build of hrh-exporter ([`Options::second_exporter`]), to compare a
//!   change with what came before it;
//! * `floor`: `usbfs-floor` ([`Options::floor`]), the least a USB/IP server in user space
//!   can do per URB (`vusb_bench::floor`): how far hrh-exporter is from what user space
//!   allows, as against how far it is from the kernel.
//!
//! Around each of `usbip-load`'s measuring windows the HRH's `/proc` is read ([`hrh_cpu`]):
//! `usbip-load` announces each window's edges on its standard output and waits until told
//! to go on, so the readings bracket exactly the URBs it counts. The server's threads' run
//! time and the whole guest's busy time are divided by those URBs. The busy time is the
//! kernel's tick-sampled count (10 ms ticks), the threads' run time an exact one: over a
//! short window the first can read a little below the second. The whole guest's time
//! is the fair figure: usbip-host does part of its work in interrupt context, which no
//! thread of its own is charged with.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::exporter::workspace_binary;
use crate::hrh::{find_device, Hrh, HrhConfig, Server, FLOOR_SERVER, SECOND_EXPORTER};
use crate::linkbench::hrh_cpu::{self, HrhCpu};
use crate::linkbench::profile;
use vusb_bench::client::{WINDOW_CLOSED, WINDOW_OPEN};

/// A USB/IP server that takes its turns in the HRH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    Usbipd,
    HrhExporter,
    /// The build of [`Options::second_exporter`].
    Second,
    /// `usbfs-floor` ([`Options::floor`]).
    Floor,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Usbipd => "usbipd",
            Contender::HrhExporter => "hrh-exporter",
            Contender::Second => "second",
            Contender::Floor => "floor",
        }
    }
}

/// One cell of the matrix: bulk URBs of `size` bytes, `depth` of them in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// `in` (from the gadget's source) or `out` (to its sink).
    pub direction: &'static str,
    pub size: u32,
    pub depth: u32,
}

impl Cell {
    pub fn label(&self) -> String {
        format!("{} {} B x{}", self.direction, self.size, self.depth)
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds; every server measures every cell once per round.
    pub rounds: u32,
    /// Seconds of each measuring window.
    pub seconds: f64,
    /// Transfer sizes, queue depths and directions (`in`, `out`): every combination is a
    /// cell, in `usbip-load --matrix`'s order.
    pub sizes: Vec<u32>,
    pub depths: Vec<u32>,
    pub directions: Vec<&'static str>,
    /// Another build of hrh-exporter to measure as well.
    pub second_exporter: Option<PathBuf>,
    /// Leave `usbipd` out.
    pub without_usbipd: bool,
    /// Measure `usbfs-floor` as well.
    pub floor: bool,
    /// Sample the HRH's CPU with perf during each server's first turn and write the
    /// reports here, one per server ([`crate::linkbench::profile`]). Sampling costs the
    /// HRH some CPU, the same for every server.
    pub profiles: Option<PathBuf>,
    /// Run `vusb-probe ticker` in the HRH beside each server, waking every this many
    /// microseconds: another process takes the CPU between a server's URBs, as the
    /// gadgets' echo programs do in the link benchmark's round trips.
    pub ticker_us: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 3,
            seconds: 5.0,
            sizes: vec![512, 4096, 65536],
            depths: vec![1],
            directions: vec!["out", "in"],
            second_exporter: None,
            without_usbipd: false,
            floor: false,
            profiles: None,
            ticker_us: None,
        }
    }
}

impl Options {
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &direction in &self.directions {
            for &size in &self.sizes {
                for &depth in &self.depths {
                    cells.push(Cell {
                        direction,
                        size,
                        depth,
                    });
                }
            }
        }
        cells
    }

    pub fn contenders(&self) -> Vec<Contender> {
        let mut all = Vec::new();
        if !self.without_usbipd {
            all.push(Contender::Usbipd);
        }
        all.push(Contender::HrhExporter);
        if self.second_exporter.is_some() {
            all.push(Contender::Second);
        }
        if self.floor {
            all.push(Contender::Floor);
        }
        all
    }
}

/// One measuring window.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub contender: Contender,
    pub round: u32,
    pub cell: Cell,
    /// What `usbip-load` measured over its window.
    pub urbs: u64,
    pub urbs_per_s: f64,
    pub latency_p50_us: f64,
    /// What the HRH's `/proc` said over the same window.
    pub hrh: HrhCpu,
    /// The server's threads' and the whole HRH's CPU time per URB, in microseconds.
    pub server_us_per_urb: Option<f64>,
    pub hrh_us_per_urb: f64,
}

impl Sample {
    fn new(contender: Contender, round: u32, cell: Cell, load: &LoadResult, hrh: HrhCpu) -> Self {
        // usbip-load waits while the HRH is read, so the HRH's window holds its URBs and
        // no others (give or take the depth's worth that complete during the first
        // reading), plus the readings' idle moments.
        let per_urb = |ms: f64| ms * 1000.0 / (load.urbs.max(1) as f64);
        Self {
            contender,
            round,
            cell,
            urbs: load.urbs,
            urbs_per_s: load.urbs_per_s,
            latency_p50_us: load.latency_p50_us,
            hrh,
            server_us_per_urb: hrh.server_ms.map(per_urb),
            hrh_us_per_urb: per_urb(hrh.busy_ms),
        }
    }
}

/// One cell of `usbip-load --json`.
#[derive(Debug, Clone, PartialEq)]
struct LoadResult {
    direction: String,
    size: u32,
    depth: u32,
    urbs: u64,
    urbs_per_s: f64,
    latency_p50_us: f64,
}

fn parse_load_json(text: &str) -> Result<Vec<LoadResult>> {
    let value: serde_json::Value = serde_json::from_str(text).context("usbip-load's JSON")?;
    let results = value["results"]
        .as_array()
        .context("usbip-load's JSON has no results")?;
    results
        .iter()
        .map(|r| {
            let num = |key: &str| r[key].as_f64().with_context(|| format!("no {key} in {r}"));
            Ok(LoadResult {
                direction: r["direction"].as_str().unwrap_or_default().to_owned(),
                size: num("size")? as u32,
                depth: num("depth")? as u32,
                urbs: num("urbs")? as u64,
                urbs_per_s: num("urbs_per_s")?,
                latency_p50_us: r["latency_us"]["p50"]
                    .as_f64()
                    .with_context(|| format!("no latency in {r}"))?,
            })
        })
        .collect()
}

/// Boots the HRH, runs every round and returns every window's sample. Progress goes to
/// standard error.
pub fn run(options: &Options, name: &str) -> Result<Vec<Sample>> {
    ensure!(options.rounds > 0, "at least one round");
    let cells = options.cells();
    ensure!(!cells.is_empty(), "no cells to measure");
    let load = workspace_binary("usbip-load")?;
    let mut config = HrhConfig::new(name).with_exporter().with_sink();
    if let Some(path) = &options.second_exporter {
        config = config.with_second_exporter(path);
    }
    if options.floor {
        config = config.with_floor_server()?;
    }
    if options.ticker_us.is_some() {
        config = config.with_probe();
    }
    if let Some(dir) = &options.profiles {
        profile::check_available()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        config = config.with_host_tool(Path::new(profile::PERF));
    }
    let started = Instant::now();
    let mut hrh = Hrh::boot(config)?;
    let devices = hrh.wait_ready(Duration::from_secs(600))?;
    let busid = find_device(&devices, "sink")?.busid.clone();
    eprintln!("[{:>5.0} s] HRH up, sink gadget at {busid}", secs(started));

    let contenders = options.contenders();
    let mut samples = Vec::new();
    for round in 1..=options.rounds {
        // Each round starts with the next server, so that none is always first after the
        // same other.
        let turn = (round as usize - 1) % contenders.len();
        for &contender in contenders[turn..].iter().chain(&contenders[..turn]) {
            eprintln!(
                "[{:>5.0} s] round {round}/{}: {}",
                secs(started),
                options.rounds,
                contender.name()
            );
            let output = match contender {
                Contender::Usbipd => hrh.start_server(Server::Usbipd),
                Contender::HrhExporter => hrh.start_server(Server::HrhExporter),
                Contender::Second => hrh.start_exporter_at(SECOND_EXPORTER),
                Contender::Floor => hrh.start_exporter_at(FLOOR_SERVER),
            };
            output.with_context(|| format!("starting {}", contender.name()))?;
            let profiled = options.profiles.as_ref().filter(|_| round == 1);
            if profiled.is_some() {
                profile::start(hrh.remote())?;
            }
            if let Some(us) = options.ticker_us {
                start_ticker(&mut hrh, us)?;
            }
            let measured = measure(&mut hrh, &load, &busid, options, &cells);
            if options.ticker_us.is_some() {
                stop_ticker(&mut hrh)?;
            }
            if let Some(dir) = profiled {
                let report = profile::stop(hrh.remote())?;
                let path = dir.join(format!("{}.txt", contender.name()));
                std::fs::write(&path, report)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            hrh.stop_server()
                .with_context(|| format!("stopping {}", contender.name()))?;
            for (cell, load, cpu) in measured.with_context(|| contender.name())? {
                let sample = Sample::new(contender, round, cell, &load, cpu);
                eprintln!(
                    "           {:<14} {:>6.0} URB/s  p50 {:>7.0} us  HRH {:>6.0} us/URB  server {}",
                    cell.label(),
                    sample.urbs_per_s,
                    sample.latency_p50_us,
                    sample.hrh_us_per_urb,
                    sample
                        .server_us_per_urb
                        .map_or("-".into(), |us| format!("{us:.0} us/URB")),
                );
                samples.push(sample);
            }
        }
    }
    let rc = hrh.finish(Duration::from_secs(120))?;
    ensure!(rc == 0, "the HRH's script ended with {rc}");
    Ok(samples)
}

/// Starts `vusb-probe ticker` in the HRH ([`Options::ticker_us`]).
fn start_ticker(hrh: &mut Hrh, interval_us: u32) -> Result<()> {
    hrh.remote()
        .check(
            &format!(
                "vusb-probe ticker --interval-us {interval_us} --seconds 86400 \
                 >/tmp/ticker.out 2>&1 & echo $! >/tmp/ticker.pid"
            ),
            Duration::from_secs(30),
        )
        .context("starting the ticker")?;
    Ok(())
}

/// Stops the ticker, which must still be running.
fn stop_ticker(hrh: &mut Hrh) -> Result<()> {
    hrh.remote()
        .check(
            "p=$(cat /tmp/ticker.pid); kill \"$p\" && wait_for 10 dead \"$p\" || \
             { cat /tmp/ticker.out; false; }",
            Duration::from_secs(30),
        )
        .context("stopping the ticker")?;
    Ok(())
}

/// One `usbip-load --matrix` run against the server the HRH runs now, with the HRH's CPU
/// read around each of its windows.
fn measure(
    hrh: &mut Hrh,
    load: &Path,
    busid: &str,
    options: &Options,
    cells: &[Cell],
) -> Result<Vec<(Cell, LoadResult, HrhCpu)>> {
    let json = tempfile::NamedTempFile::new()?;
    let list = |items: Vec<String>| items.join(",");
    let mut child = Command::new(load)
        .arg("--server")
        .arg(format!("127.0.0.1:{}", hrh.port()))
        .args([
            "--busid",
            busid,
            "--no-verify",
            "--announce-window",
            "--matrix",
        ])
        .args(["--warmup", "1", "--timeout", "30"])
        .arg("--duration")
        .arg(options.seconds.to_string())
        .arg("--sizes")
        .arg(list(options.sizes.iter().map(u32::to_string).collect()))
        .arg("--depths")
        .arg(list(options.depths.iter().map(u32::to_string).collect()))
        .arg("--directions")
        .arg(list(
            options.directions.iter().map(|d| d.to_string()).collect(),
        ))
        .arg("--json")
        .arg(json.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", load.display()))?;
    let stdout = child.stdout.take().context("usbip-load's output")?;
    let mut go_on = child.stdin.take().context("usbip-load's input")?;
    let mut windows = Vec::new();
    let mut opened = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == WINDOW_OPEN {
            opened = Some(snapshot(hrh)?);
        } else if line == WINDOW_CLOSED {
            let before = opened.take().context("a window closed that never opened")?;
            let after = snapshot(hrh)?;
            windows.push(
                before
                    .until(&after)
                    .context("the HRH's CPU counters went back")?,
            );
        } else {
            continue;
        }
        // usbip-load waits for this; if it has died, its exit status says why.
        let _ = go_on.write_all(b"\n");
    }
    drop(go_on);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "usbip-load failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let results = parse_load_json(&std::fs::read_to_string(json.path())?)?;
    ensure!(
        results.len() == cells.len() && windows.len() == cells.len(),
        "{} cells asked for, usbip-load measured {} and announced {} windows",
        cells.len(),
        results.len(),
        windows.len()
    );
    cells
        .iter()
        .zip(results)
        .zip(windows)
        .map(|((&cell, result), cpu)| {
            ensure!(
                (result.direction.as_str(), result.size, result.depth)
                    == (cell.direction, cell.size, cell.depth),
                "usbip-load measured {result:?} where {} was expected",
                cell.label()
            );
            Ok((cell, result, cpu))
        })
        .collect()
}

fn snapshot(hrh: &mut Hrh) -> Result<hrh_cpu::Snapshot> {
    let out = hrh
        .remote()
        .run(hrh_cpu::SNAPSHOT, Duration::from_secs(30))?;
    hrh_cpu::Snapshot::parse(&out.lines)
        .with_context(|| format!("no CPU reading in the HRH's answer:\n{}", out.text()))
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The medians and the best values (lowest time, highest rate) over the rounds, one row
/// per cell and server, then every window. The best is the figure least disturbed by the
/// host: the HRH's share of the host's CPUs varies from window to window, and a smaller
/// share only ever adds time.
pub fn markdown(options: &Options, samples: &[Sample]) -> String {
    let mut md = String::new();
    if let Some(us) = options.ticker_us {
        md.push_str(&format!(
            "With `vusb-probe ticker` waking every {us} µs in the HRH beside each server.\n\n"
        ));
    }
    md.push_str(
        "## Medians over the rounds (best in brackets)\n\n\
         | cell | server | URB/s | latency p50 (µs) | HRH CPU per URB (µs) | server threads per URB (µs) |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for cell in options.cells() {
        for contender in options.contenders() {
            let of: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.cell == cell && s.contender == contender)
                .collect();
            if of.is_empty() {
                continue;
            }
            let stat = |f: &dyn Fn(&Sample) -> Option<f64>, best_is_low: bool| {
                let values: Vec<f64> = of.iter().filter_map(|s| f(s)).collect();
                let best =
                    values
                        .iter()
                        .copied()
                        .reduce(if best_is_low { f64::min } else { f64::max });
                match (median(&values), best) {
                    (Some(m), Some(b)) => format!("{m:.0} ({b:.0})"),
                    _ => "-".into(),
                }
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                cell.label(),
                contender.name(),
                stat(&|s| Some(s.urbs_per_s), false),
                stat(&|s| Some(s.latency_p50_us), true),
                stat(&|s| Some(s.hrh_us_per_urb), true),
                stat(&|s| s.server_us_per_urb, true),
            ));
        }
    }
    md.push_str(
        "\n## Every window\n\n\
         | round | server | cell | URBs | URB/s | p50 (µs) | HRH busy / elapsed (ms) | server (ms) | HRH per URB (µs) | server per URB (µs) |\n\
         |---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in samples {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} / {:.0} | {} | {:.0} | {} |\n",
            s.round,
            s.contender.name(),
            s.cell.label(),
            s.urbs,
            s.urbs_per_s,
            s.latency_p50_us,
            s.hrh.busy_ms,
            s.hrh.elapsed_ms,
            s.hrh.server_ms.map_or("-".into(), |ms| format!("{ms:.0}")),
            s.hrh_us_per_urb,
            s.server_us_per_urb
                .map_or("-".into(), |us| format!("{us:.0}")),
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_windows_follow_usbip_loads_matrix_order() {
        let options = Options {
            sizes: vec![64, 4096],
            depths: vec![1, 8],
            directions: vec!["out", "in"],
            ..Options::default()
        };
        let labels: Vec<String> = options.cells().iter().map(Cell::label).collect();
        assert_eq!(
            labels,
            [
                "out 64 B x1",
                "out 64 B x8",
                "out 4096 B x1",
                "out 4096 B x8",
                "in 64 B x1",
                "in 64 B x8",
                "in 4096 B x1",
                "in 4096 B x8"
            ]
        );
    }

    #[test]
    fn a_sample_divides_the_hrhs_time_by_usbip_loads_urbs() {
        let load = LoadResult {
            direction: "out".into(),
            size: 64,
            depth: 1,
            urbs: 1000,
            urbs_per_s: 200.0,
            latency_p50_us: 4000.0,
        };
        // The HRH's window is a little longer than usbip-load's (it waited while the HRH
        // was read); the URBs are usbip-load's.
        let hrh = HrhCpu {
            server_ms: Some(500.0),
            busy_ms: 1500.0,
            elapsed_ms: 5000.0,
        };
        let cell = Cell {
            direction: "out",
            size: 64,
            depth: 1,
        };
        let s = Sample::new(Contender::Usbipd, 1, cell, &load, hrh);
        assert_eq!(s.hrh_us_per_urb, 1500.0);
        assert_eq!(s.server_us_per_urb, Some(500.0));
    }

    #[test]
    fn usbip_loads_json_is_read() {
        let text = r#"{"server": "x", "results": [
            {"direction": "in", "size": 64, "depth": 1, "urbs": 10, "seconds": 1.0,
             "urbs_per_s": 10.5, "mb_per_s": 0.0, "latency_us": {"p50": 95.5, "p90": 1.0,
             "p99": 1.0, "max": 1.0}}]}"#;
        assert_eq!(
            parse_load_json(text).unwrap(),
            [LoadResult {
                direction: "in".into(),
                size: 64,
                depth: 1,
                urbs: 10,
                urbs_per_s: 10.5,
                latency_p50_us: 95.5,
            }]
        );
        assert!(parse_load_json(r#"{"results": [{"size": 1}]}"#).is_err());
    }

    #[test]
    fn the_table_gives_medians_and_the_best_window() {
        let options = Options {
            sizes: vec![512],
            directions: vec!["out"],
            without_usbipd: true,
            ..Options::default()
        };
        let cell = options.cells()[0];
        let samples: Vec<Sample> = [(100.0, 300.0), (300.0, 500.0), (200.0, 700.0)]
            .iter()
            .enumerate()
            .map(|(i, &(rate, busy_ms))| {
                let load = LoadResult {
                    direction: "out".into(),
                    size: 512,
                    depth: 1,
                    urbs: 1000,
                    urbs_per_s: rate,
                    latency_p50_us: 10.0,
                };
                let hrh = HrhCpu {
                    server_ms: None,
                    busy_ms,
                    elapsed_ms: 1000.0,
                };
                Sample::new(Contender::HrhExporter, i as u32 + 1, cell, &load, hrh)
            })
            .collect();
        let md = markdown(&options, &samples);
        assert!(
            md.contains("| out 512 B x1 | hrh-exporter | 200 (300) | 10 (10) | 500 (300) | - |"),
            "{md}"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
