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
    /// Also record the HRH's packets (DIR/hrh-nic.pcap) and split each serial, HID and
    /// SCSI transaction into the HRH's part and the ISP's part (DIR/capture.md). Best with
    /// --quick: the capture holds every byte the pendrive moves.
    #[arg(long)]
    capture: bool,
    /// Where results.json and results.md go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
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
    let results = runner::run(&plan, &args.out, args.capture)?;
    eprintln!("results in {}", args.out.display());
    if !results.all_ok() {
        anyhow::bail!("some measurements failed; see the failures in results.md");
    }
    Ok(())
}
