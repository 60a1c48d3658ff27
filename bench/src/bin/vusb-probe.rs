//! vusb-probe: the measuring tool that runs inside the test guests, on
//! the HRH (gadget side) and in the ISP's guests (host side of the tunnel).
//!
//! ```text
//! vusb-probe disk write|read --device /dev/sda --mib 64 [--block-kib 1024]
//! vusb-probe serial-echo --tty /dev/ttyGS0                  (HRH)
//! vusb-probe serial-ping --tty /dev/ttyACM0 --count 300 --interval-ms 1000
//! vusb-probe hid-echo --dev /dev/hidg0                      (HRH)
//! vusb-probe hid-ping --dev /dev/hidraw0 --count 300 --interval-ms 0
//! vusb-probe hid-stream-sink --dev /dev/hidraw0 --count 1000
//! vusb-probe hid-stream-source --dev /dev/hidg0 --interval-ms 8 --count 1000   (HRH)
//! vusb-probe ticker --interval-us 250 --seconds 60                 (HRH)
//! ```
//!
//! Every subcommand prints one JSON object, on one line, on stdout. Exit
//! status: 0 success; 1 an error stopped the run (message on stderr, no
//! JSON); 2 bad arguments; 3 the run measured and printed its JSON but a
//! check failed (message on stderr). The echo, source and sink sides print
//! a "ready" line on stderr once they are set up.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use vusb_bench::probe::disk::{self, DiskOp, DiskSpec};
use vusb_bench::probe::ping::PingSpec;
use vusb_bench::probe::stream::MAX_COUNT;
use vusb_bench::probe::{echo, hid, serial, sink, stream, sys, ticker, EXIT_CHECK_FAILED};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Measurements inside the test guests: disk, serial and HID"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct PingArgs {
    /// Round trips to make.
    #[arg(long, default_value_t = 300)]
    count: u32,
    /// Milliseconds from one send to the next (0: back to back).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Milliseconds a ping waits for its echo.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

impl PingArgs {
    fn spec(&self) -> PingSpec {
        PingSpec {
            count: self.count,
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Sequential write (then fsync) or checked read of a seeded pattern,
    /// with O_DIRECT.
    Disk {
        #[arg(value_enum)]
        op: DiskOp,
        /// Block device (or existing file) to use from offset 0. Its data
        /// is overwritten by `write`.
        #[arg(long)]
        device: PathBuf,
        /// MiB to move.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
        mib: u64,
        /// KiB per read or write call.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        block_kib: u64,
        /// Seed of the pattern; `read` must use the one `write` used.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Go through the page cache (fsync after writing, cache dropped
        /// before reading), for file systems that refuse O_DIRECT.
        #[arg(long)]
        no_direct: bool,
    },
    /// Round trips through a serial port whose other end runs serial-echo.
    SerialPing {
        /// The host side of the serial link, e.g. /dev/ttyACM0.
        #[arg(long)]
        tty: PathBuf,
        #[command(flatten)]
        ping: PingArgs,
        /// Bytes per message (12 to 4096).
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Echoes every byte read from a serial port back to it.
    SerialEcho {
        /// The gadget side of the serial link, e.g. /dev/ttyGS0.
        #[arg(long)]
        tty: PathBuf,
        /// Stop after echoing this many bytes (default: until a signal).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Round trips through a HID device (hidraw) whose other end runs
    /// hid-echo.
    HidPing {
        /// The device's hidraw node, e.g. /dev/hidraw0.
        #[arg(long)]
        dev: PathBuf,
        #[command(flatten)]
        ping: PingArgs,
    },
    /// Sends every output report of a HID gadget back as an input report.
    HidEcho {
        /// The HID gadget's node, e.g. /dev/hidg0.
        #[arg(long)]
        dev: PathBuf,
        /// Stop after this many reports (default: until a signal).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Sends numbered, timestamped input reports at a fixed period from a
    /// HID gadget.
    HidStreamSource {
        /// The HID gadget's node, e.g. /dev/hidg0.
        #[arg(long)]
        dev: PathBuf,
        /// Milliseconds between reports.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        interval_ms: u64,
        /// Reports (slots) to send.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
        count: u32,
        /// Milliseconds one report may wait for the host to poll.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
    },
    /// Receives hid-stream-source's reports through hidraw and measures
    /// rate, gaps and jitter.
    HidStreamSink {
        /// The device's hidraw node, e.g. /dev/hidraw0.
        #[arg(long)]
        dev: PathBuf,
        /// Reports the source sends (its --count).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
        count: u32,
        /// Milliseconds without a report (the first included) that end the run.
        #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
    },
    /// Only wakes up: sleeps a short interval, again and again.
    Ticker {
        /// Microseconds of each sleep.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        interval_us: u64,
        /// Seconds to run for.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: u64,
    },
}

/// Prints the result; hands back the failed check, if any.
fn emit(result: &impl Serialize, failure: Option<String>) -> Result<Option<String>> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, result)?;
    writeln!(out)?;
    out.flush()?;
    Ok(failure)
}

fn run(cmd: Cmd) -> Result<Option<String>> {
    match cmd {
        Cmd::Disk {
            op,
            device,
            mib,
            block_kib,
            seed,
            no_direct,
        } => {
            let r = disk::run(&DiskSpec {
                op,
                device,
                bytes: mib << 20,
                block: (block_kib << 10) as usize,
                seed,
                direct: !no_direct,
            })?;
            emit(&r, r.failure())
        }
        Cmd::SerialPing { tty, ping, size } => {
            let r = serial::serial_ping(&tty, size, &ping.spec())?;
            emit(&r, r.ping.failure())
        }
        Cmd::SerialEcho { tty, count } => emit(&echo::serial_echo(&tty, count)?, None),
        Cmd::HidPing { dev, ping } => {
            let r = hid::hid_ping(&dev, &ping.spec())?;
            emit(&r, r.ping.failure())
        }
        Cmd::HidEcho { dev, count } => emit(&echo::hid_echo(&dev, count)?, None),
        Cmd::HidStreamSource {
            dev,
            interval_ms,
            count,
            timeout_ms,
        } => {
            let r = stream::hid_stream_source(
                &dev,
                Duration::from_millis(interval_ms),
                count,
                Duration::from_millis(timeout_ms),
            )?;
            emit(&r, None)
        }
        Cmd::HidStreamSink {
            dev,
            count,
            timeout_ms,
        } => {
            let r = sink::hid_stream_sink(&dev, count, Duration::from_millis(timeout_ms))?;
            emit(&r, r.failure())
        }
        Cmd::Ticker {
            interval_us,
            seconds,
        } => emit(
            &ticker::tick(
                Duration::from_micros(interval_us),
                Duration::from_secs(seconds),
            ),
            None,
        ),
    }
}

fn main() {
    let cli = Cli::parse();
    // A signal ends a run through its normal path, so a tty gets its
    // settings back and an echo still prints what it did.
    if let Err(e) = sys::install_stop_handlers() {
        eprintln!("vusb-probe: error: cannot install signal handlers: {e}");
        std::process::exit(1);
    }
    match run(cli.cmd) {
        Ok(None) => {}
        Ok(Some(failure)) => {
            eprintln!("vusb-probe: check failed: {failure}");
            std::process::exit(EXIT_CHECK_FAILED);
        }
        Err(e) => {
            eprintln!("vusb-probe: error: {e:#}");
            std::process::exit(1);
        }
    }
}
