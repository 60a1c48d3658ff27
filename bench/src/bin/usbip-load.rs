//! usbip-load: a USB/IP load generator for throughput benchmarks.
//!
//! Imports one device from a USB/IP server and keeps a fixed number of
//! bulk URBs in flight on the loopback dongle's source (IN) or sink (OUT)
//! endpoint, then reports URB/s, MB/s (10^6 bytes of payload) and latency.
//! It runs on one thread so that, pinned to a core, it uses exactly one.
//!
//! ```text
//! usbip-load --server 127.0.0.1:3240 --busid 1-1 --direction in --size 64K --depth 8
//! usbip-load --server 127.0.0.1:3240 --matrix --markdown out.md --json out.json
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vusb_bench::client::{Client, LoadSpec, Stop};
use vusb_bench::parse_size;
use vusb_bench::report::{self, RunInfo};
use vusb_bench::stats::Dir;

/// The matrix of the throughput benchmark.
const MATRIX_SIZES: [u32; 7] = [64, 512, 4096, 16384, 65536, 262_144, 1_048_576];
const MATRIX_DEPTHS: [usize; 3] = [1, 8, 32];

#[derive(Debug, Parser)]
#[command(version, about = "Bulk URB load generator for USB/IP servers")]
struct Args {
    /// USB/IP server to connect to.
    #[arg(long, default_value = "127.0.0.1:3240")]
    server: SocketAddr,
    /// Bus id of the device to import.
    #[arg(long, default_value = "1-1")]
    busid: String,
    /// `in`: read the pattern source; `out`: write to the sink.
    #[arg(long, value_enum, default_value_t = Dir::In)]
    direction: Dir,
    /// Bytes per URB: 512, 64K, 1M, ...
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    size: u32,
    /// URBs kept in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    depth: u32,
    /// Seconds to measure (per cell with --matrix).
    #[arg(long, value_parser = parse_secs, default_value = "2")]
    duration: Duration,
    /// Measure this many URBs instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "duration")]
    count: Option<u64>,
    /// Seconds at full queue before measuring (per cell with --matrix).
    #[arg(long, value_parser = parse_secs, default_value = "0.2")]
    warmup: Duration,
    /// Skip checking IN data against the pattern and the sink's byte count.
    #[arg(long)]
    no_verify: bool,
    /// Endpoint number of the IN source.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=15))]
    in_ep: u32,
    /// Endpoint number of the OUT sink.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=15))]
    out_ep: u32,
    /// Seconds of silence from the server before giving up.
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    timeout: Duration,
    /// Process id of the server, if it runs on this machine: report the CPU
    /// time it spends per URB (read from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print a line when each measuring window is about to open and has
    /// closed, and wait for a line on standard input before going on: for a
    /// program that measures the server over the same windows.
    #[arg(long)]
    announce_window: bool,
    /// Run every combination of --sizes, --depths and --directions.
    #[arg(long)]
    matrix: bool,
    /// Transfer sizes of the matrix.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, requires = "matrix")]
    sizes: Vec<u32>,
    /// Queue depths of the matrix.
    #[arg(long, value_delimiter = ',', requires = "matrix")]
    depths: Vec<usize>,
    /// Directions of the matrix.
    #[arg(long, value_delimiter = ',', value_enum, requires = "matrix")]
    directions: Vec<Dir>,
    /// Write a markdown report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a valid duration"))
}

fn main() {
    let args = Args::parse();
    // One thread: the generator's cost shows on one core, and its two
    // socket halves are driven from one task anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("usbip-load: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cells: Vec<(Dir, u32, usize)> = if args.matrix {
        let dirs = or_default(args.directions.clone(), &[Dir::In, Dir::Out]);
        let sizes = or_default(args.sizes.clone(), &MATRIX_SIZES);
        let depths = or_default(args.depths.clone(), &MATRIX_DEPTHS);
        anyhow::ensure!(
            depths.iter().all(|&d| d > 0),
            "queue depths must be at least 1"
        );
        let mut cells = Vec::new();
        for &dir in &dirs {
            for &size in &sizes {
                for &depth in &depths {
                    cells.push((dir, size, depth));
                }
            }
        }
        cells
    } else {
        vec![(args.direction, args.size, args.depth as usize)]
    };
    let stop = match args.count {
        Some(n) => Stop::Urbs(n),
        None => Stop::After(args.duration),
    };

    // One import for every cell: re-importing would measure connection
    // setup, and the source's stream offset simply carries on.
    let mut client = Client::import(
        args.server,
        &args.busid,
        (args.in_ep, args.out_ep),
        args.timeout,
    )
    .await
    .with_context(|| format!("cannot import {} from {}", args.busid, args.server))?;
    if let Some(pid) = args.server_pid {
        client.watch_server(pid)?;
    }
    if args.announce_window {
        client.announce_window();
    }

    let mut results = Vec::with_capacity(cells.len());
    for (i, &(dir, size, depth)) in cells.iter().enumerate() {
        let spec = LoadSpec {
            dir,
            size,
            depth,
            warmup: args.warmup,
            stop,
            verify: !args.no_verify,
        };
        let m = client
            .run(spec)
            .await
            .with_context(|| format!("{dir} {size} B x {depth}"))?;
        if cells.len() > 1 {
            print!("[{:>2}/{}] ", i + 1, cells.len());
        }
        println!("{}", report::summary_line(&m));
        results.push(m);
    }

    let info = RunInfo {
        server: args.server.to_string(),
        busid: args.busid.clone(),
        window: match stop {
            Stop::After(d) => format!("{:.1} s", d.as_secs_f64()),
            Stop::Urbs(n) => format!("{n} URBs"),
        },
        warmup: args.warmup,
        verify: !args.no_verify,
    };
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::markdown(&info, &results))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&info, &results))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn or_default<T: Clone>(given: Vec<T>, default: &[T]) -> Vec<T> {
    if given.is_empty() {
        default.to_vec()
    } else {
        given
    }
}
