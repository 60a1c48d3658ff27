//! `vusb-urbbench`: the HRH's CPU per URB, USB/IP server against server, in one HRH guest
//! (see `vusb_vm_tests::urbbench` and docs/link-benchmarks.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use vusb_vm_tests::urbbench::{self, Options};

/// Bulk URBs from the host to the HRH guest's sink gadget through each USB/IP server in
/// turn, and what each URB cost the HRH's CPU.
#[derive(Debug, Parser)]
#[command(name = "vusb-urbbench")]
struct Args {
    /// Rounds: every server measures every cell once a round, in turns.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of each measuring window.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Transfer sizes in bytes (comma-separated). IN transfers must be whole 512-byte
    /// packets: the source sends full ones, and a smaller transfer would overflow.
    #[arg(long, value_delimiter = ',', default_values_t = [512, 4096, 65536])]
    sizes: Vec<u32>,
    /// URBs kept in flight (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1])]
    depths: Vec<u32>,
    /// Directions: out, in (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = ["out".to_owned(), "in".to_owned()])]
    directions: Vec<String>,
    /// Another build of hrh-exporter, measured as `second` (it must link the same shared
    /// libraries as the workspace's).
    #[arg(long, value_name = "PATH")]
    second_exporter: Option<PathBuf>,
    /// Leave Debian's usbipd out.
    #[arg(long)]
    without_usbipd: bool,
    /// Measure usbfs-floor too: the least a USB/IP server in user space can do per URB.
    #[arg(long)]
    floor: bool,
    /// Sample the HRH's CPU with perf during each server's first round, into
    /// DIR/profiles/<server>.txt (costs the HRH some CPU: compare that round's numbers
    /// with each other only).
    #[arg(long)]
    profile: bool,
    /// Run `vusb-probe ticker` in the HRH beside each server, waking every US
    /// microseconds: another process between a server's URBs, as the link benchmark's echo
    /// programs are.
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u32).range(50..=1_000_000))]
    ticker_us: Option<u32>,
    /// Where results.json and results.md go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let directions = args
        .directions
        .iter()
        .map(|d| match d.as_str() {
            "in" => Ok("in"),
            "out" => Ok("out"),
            _ => bail!("unknown direction {d:?} (in or out)"),
        })
        .collect::<Result<Vec<_>>>()?;
    if directions.contains(&"in") {
        if let Some(size) = args.sizes.iter().find(|&&s| s == 0 || s % 512 != 0) {
            bail!("IN transfers of {size} bytes: the sink gadget sends 512-byte packets");
        }
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be above 0 and at most 3600");
    }
    if let Some(path) = &args.second_exporter {
        if !path.is_file() {
            bail!("--second-exporter: {} is not a file", path.display());
        }
    }
    let options = Options {
        rounds: args.rounds,
        seconds: args.seconds,
        sizes: args.sizes,
        depths: args.depths,
        directions,
        second_exporter: args.second_exporter,
        without_usbipd: args.without_usbipd,
        floor: args.floor,
        profiles: args.profile.then(|| args.out.join("profiles")),
        ticker_us: args.ticker_us,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    vusb_vm_tests::set_log_tails(false);
    eprintln!(
        "guest and daemon logs: {}",
        vusb_vm_tests::log_dir()?.display()
    );
    let samples = urbbench::run(&options, "urbbench-hrh")?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&samples)?,
    )?;
    let md = urbbench::markdown(&options, &samples);
    std::fs::write(args.out.join("results.md"), &md)?;
    print!("{md}");
    Ok(())
}
