//! Times vusb-backend on its own: a simulated guest driver on the
//! backend's vhost-user socket submits bulk transfers to a remote loopback
//! dongle (`hrh-exporter --simulate loopback`), and the same sizes go
//! through a raw TCP round trip on the same machine for comparison.
//!
//! ```text
//! backend-load --socket /run/vusb/bench.sock [--direct 127.0.0.1:3240/1-2]
//!              [--seconds 2] [--markdown FILE]
//! ```
//!
//! With `--direct`, a plain USB/IP client (the one of `usbip-load`) runs
//! the same transfers against a second loopback dongle of the same
//! exporter: the path without the backend. The difference between the two
//! is what the backend itself adds (virtqueues, vhost-user notifications,
//! one more process on the way), with the exporter's and the network's
//! share taken out.
//!
//! Latency is at depth 1 (one request at a time: the time a guest driver
//! waits for one transfer); throughput at depth 32 with 64 KiB transfers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vusb_backend::sim_driver::{Options, SimDriver};
use vusb_backend::virtio_usb::wire::{XferReq, EVT_CONNECT};
use vusb_bench::client::{Client, LoadSpec, Stop};
use vusb_bench::stats::{Dir, Latency};

#[derive(Debug, Parser)]
struct Args {
    /// The backend's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Also write the results as a markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A second loopback dongle on the same exporter, `ADDR:PORT/BUSID`,
    /// measured with a plain USB/IP client for comparison.
    #[arg(long, value_parser = parse_direct)]
    direct: Option<(SocketAddr, String)>,
}

fn parse_direct(text: &str) -> Result<(SocketAddr, String), String> {
    let (addr, busid) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not ADDR:PORT/BUSID"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not ADDR:PORT: {e}"))?;
    if busid.is_empty() {
        return Err(format!("{text:?} has no bus id"));
    }
    Ok((addr, busid.to_owned()))
}

const WAIT: Duration = Duration::from_secs(10);
const SIZES: [u32; 3] = [64, 4096, 65536];
/// The USB/IP header that precedes every message on the wire.
const HEADER: usize = 48;

fn main() -> Result<()> {
    let args = Args::parse();
    let window = Duration::from_secs_f64(args.seconds);
    let mut d = SimDriver::connect(
        &args.socket,
        Options {
            queue_size: 256,
            slot_size: 80 << 10,
            ..Options::default()
        },
    )?;
    let (kind, port, _) = d.wait_event(WAIT).context("waiting for the dongle")?;
    if kind != EVT_CONNECT || port != 1 {
        bail!("expected a device on port 1, got event {kind} on port {port}");
    }
    configure(&mut d)?;

    let mut direct = match &args.direct {
        Some((addr, busid)) => Some(Direct::import(*addr, busid)?),
        None => None,
    };

    let mut rows = Vec::new();
    for size in SIZES {
        let backend = latency(&mut d, size, window)?;
        let tcp = tcp_round_trip(size, window)?;
        let row = match &mut direct {
            Some(direct) => {
                let usbip = direct.run(Dir::In, size, 1, window)?.latency;
                format!(
                    "| {size} B | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    us(backend.p50),
                    us(backend.p99),
                    us(usbip.p50),
                    us(usbip.p99),
                    us(tcp.p50),
                    us(tcp.p99),
                    us(backend.p50.saturating_sub(usbip.p50)),
                )
            }
            None => format!(
                "| {size} B | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                us(backend.p50),
                us(backend.p99),
                us(tcp.p50),
                us(tcp.p99),
                us(backend.p50.saturating_sub(tcp.p50)),
            ),
        };
        eprintln!("{row}");
        rows.push(row);
    }
    let in_mbs = throughput(&mut d, 0x81, window)?;
    let out_mbs = throughput(&mut d, 0x02, window)?;
    let tcp_mbs = tcp_throughput(65536, window)?;

    let mut md = String::new();
    md.push_str(
        "Depth 1, bulk IN from the loopback dongle; raw TCP: 48 bytes out, 48 + size back.\n\n",
    );
    if direct.is_some() {
        md.push_str(
            "| size | backend p50 µs | backend p99 µs | direct USB/IP p50 µs | direct USB/IP p99 µs \
             | raw TCP p50 µs | raw TCP p99 µs | backend's own share p50 µs |\n",
        );
        md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    } else {
        md.push_str("| size | backend p50 µs | backend p99 µs | raw TCP p50 µs | raw TCP p99 µs | difference p50 µs |\n");
        md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    }
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nThroughput, 64 KiB transfers, 32 in flight: through the backend IN {in_mbs:.0} MB/s, \
         OUT {out_mbs:.0} MB/s"
    ));
    if let Some(direct) = &mut direct {
        let din = direct.run(Dir::In, 65536, 32, window)?.mb_per_sec();
        let dout = direct.run(Dir::Out, 65536, 32, window)?.mb_per_sec();
        md.push_str(&format!(
            "; direct USB/IP IN {din:.0} MB/s, OUT {dout:.0} MB/s"
        ));
    }
    md.push_str(&format!(
        "; raw TCP one-way stream of 64 KiB messages: {tcp_mbs:.0} MB/s.\n"
    ));
    print!("{md}");
    if let Some(path) = args.markdown {
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A plain USB/IP client on its own single-threaded runtime, as
/// `usbip-load` runs it.
struct Direct {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Direct {
    fn import(addr: SocketAddr, busid: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime
            .block_on(Client::import(addr, busid, (1, 2), WAIT))
            .with_context(|| format!("importing {busid} from {addr} directly"))?;
        Ok(Self { runtime, client })
    }

    fn run(
        &mut self,
        dir: Dir,
        size: u32,
        depth: usize,
        window: Duration,
    ) -> Result<vusb_bench::stats::Measurement> {
        let spec = LoadSpec {
            dir,
            size,
            depth,
            warmup: Duration::from_millis(200),
            stop: Stop::After(window),
            verify: true,
        };
        self.runtime.block_on(self.client.run(spec))
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn configure(d: &mut SimDriver) -> Result<()> {
    d.submit(&XferReq::control(0, 1, [0, 9, 1, 0, 0, 0, 0, 0]), &[], &[])?;
    let done = d.wait_transfer(WAIT)?;
    if done.resp.status != 0 {
        bail!("SET_CONFIGURATION failed: status {}", done.resp.status);
    }
    Ok(())
}

fn latency(d: &mut SimDriver, size: u32, window: Duration) -> Result<Latency> {
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut id = 1;
    while start.elapsed() < window {
        let t = Instant::now();
        d.submit(&XferReq::bulk(id, 1, 0x81, size), &[], &[])?;
        let done = d.wait_transfer(WAIT)?;
        samples.push(t.elapsed().as_nanos() as u64);
        if done.resp.status != 0 || done.resp.actual_length != size {
            bail!("transfer failed: {:?}", done.resp);
        }
        id += 1;
    }
    Ok(Latency::from_samples(&mut samples))
}

fn throughput(d: &mut SimDriver, endpoint: u8, window: Duration) -> Result<f64> {
    const SIZE: u32 = 65536;
    const DEPTH: u64 = 32;
    let out = vec![0x5a; SIZE as usize];
    let payload: &[u8] = if endpoint & 0x80 == 0 { &out } else { &[] };
    let mut id = 1_000_000;
    for _ in 0..DEPTH {
        d.submit(&XferReq::bulk(id, 1, endpoint, SIZE), &[], payload)?;
        id += 1;
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < window {
        let done = d.wait_transfer(WAIT)?;
        if done.resp.status != 0 {
            bail!("transfer failed: {:?}", done.resp);
        }
        bytes += u64::from(done.resp.actual_length);
        d.submit(&XferReq::bulk(id, 1, endpoint, SIZE), &[], payload)?;
        id += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    for _ in 0..DEPTH {
        d.wait_transfer(WAIT)?;
    }
    Ok(bytes as f64 / secs / 1e6)
}

/// Round trips of a 48-byte request answered by 48 + `size` bytes, the
/// shape of a USB/IP IN transfer, over TCP on 127.0.0.1.
fn tcp_round_trip(size: u32, window: Duration) -> Result<Latency> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reply = HEADER + size as usize;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut req = [0u8; HEADER];
        let answer = vec![0u8; reply];
        while s.read_exact(&mut req).is_ok() {
            s.write_all(&answer)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = vec![0u8; reply];
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < window {
        let t = Instant::now();
        c.write_all(&[0u8; HEADER])?;
        c.read_exact(&mut buf)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    drop(c);
    let _ = server.join();
    Ok(Latency::from_samples(&mut samples))
}

/// A one-way stream of `size`-byte messages over TCP on 127.0.0.1.
fn tcp_throughput(size: usize, window: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    let msg = vec![0u8; size];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < window {
        c.write_all(&msg)?;
        sent += size as u64;
    }
    drop(c);
    let secs = start.elapsed().as_secs_f64();
    let _ = server.join();
    Ok(sent as f64 / secs / 1e6)
}
