//! `vusb-linkbench`: the link benchmark (see `vusb_vm_tests::linkbench` and
//! docs/link-benchmarks.md). Usually run through `scripts/bench-links.sh`, which builds
//! what it needs first.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use vusb_vm_tests::linkbench::{runner, Plan};

/// Pendrive throughput, serial and interrupt round trips and an interrupt stream through
/// each USB path over each emulated link, measured in real guests.
#[derive(Debug, Parser)]
#[command(name = "vusb-linkbench")]
struct Args {
    /// A small version: 8 MiB, 20 round trips, 10 per second (a few minutes a link).
    #[arg(long)]
    quick: bool,
    /// Only these paths (comma-separated): local, stock, ours-virtio, ours-usbredir, mixed.
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// Only these links (comma-separated), by name.
    #[arg(long, value_delimiter = ',')]
    links: Vec<String>,
    /// Round trips in each serial series and through the HID device, instead of the
    /// plan's 300 (20 with --quick). Comparing servers' CPU per round trip wants a few
    /// hundred: a workload's fixed costs are spread over them.
    #[arg(long, value_name = "N")]
    round_trips: Option<u32>,
    /// Also record the HRH's packets (DIR/hrh-nic.pcap) and split each serial, HID and
    /// SCSI transaction into the HRH's part and the ISP's part (DIR/capture.md). Best with
    /// --quick: the capture holds every byte the pendrive moves.
    #[arg(long)]
    capture: bool,
    /// Also sample where the HRH's CPU goes (perf in the HRH guest) during the round trips
    /// and the pendrive's workloads, into DIR/profiles/. Sampling costs the HRH CPU: compare
    /// a profiled run's paths with each other only.
    #[arg(long, conflicts_with = "trace")]
    profile: bool,
    /// Also trace the HRH's kernel (ftrace: task switches, system calls, page faults,
    /// address-space loads, packets) during the round trips, into DIR/traces/, with a
    /// table per round trip in results.md. Tracing costs the HRH CPU per event: compare a
    /// traced run's paths with each other only.
    #[arg(long)]
    trace: bool,
    /// Measure nothing: split the capture of an earlier --capture run in DIR again, from its
    /// results.json (for a run stopped before it got that far).
    #[arg(long, conflicts_with_all = ["quick", "paths", "links", "round_trips", "capture", "profile", "trace"])]
    split_capture: bool,
    /// Where results.json and results.md go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.split_capture {
        runner::split_saved_capture(&args.out)?;
        eprintln!("split in {}", args.out.join("capture.md").display());
        return Ok(());
    }
    // Progress lines only; every guest's and daemon's log stays in the log directory.
    vusb_vm_tests::set_log_tails(false);
    eprintln!(
        "guest and daemon logs: {}",
        vusb_vm_tests::log_dir()?.display()
    );
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if !args.paths.is_empty() {
        plan = plan.only_paths(&args.paths)?;
    }
    if !args.links.is_empty() {
        plan = plan.only_links(&args.links)?;
    }
    if let Some(n) = args.round_trips {
        plan = plan.with_round_trips(n)?;
    }
    let options = runner::Options {
        capture: args.capture,
        profile: args.profile,
        trace: args.trace,
    };
    let results = runner::run(&plan, &args.out, options)?;
    eprintln!("results in {}", args.out.display());
    if !results.all_ok() {
        anyhow::bail!("some measurements failed; see the failures in results.md");
    }
    Ok(())
}
