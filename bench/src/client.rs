//! A USB/IP client that does nothing but keep bulk URBs in flight.
//!
//! One connection, one task: submissions and replies share a `select!` on
//! the two halves of the socket, so a large OUT transfer being written never
//! stops replies from being read, and the generator needs no locks, no
//! channels and no second thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use usbip_proto::{
    errno, op_code, CmdMessage, CmdSubmit, Direction, OpReply, OpRequest, RetMessage, SetupPacket,
    SubmitInfo, UrbHeader,
};

use crate::cpu::{CpuClock, CpuTimes};
use crate::pattern::Pattern;
use crate::stats::{CpuUse, Dir, Latency, Measurement};

/// Free space kept in the receive buffer before each read, so that reads
/// are large; a 1 MiB IN reply then takes a few reads, not thousands.
const READ_SPARE: usize = 256 * 1024;

/// Vendor request of the loopback dongle: the sink's byte count, 8 bytes LE.
const REQ_SINK_COUNT: u8 = 0x01;

/// The line [`Client::announce_window`] prints when a run's measuring window opens.
pub const WINDOW_OPEN: &str = "usbip-load: window open";
/// The line it prints when the window closes.
pub const WINDOW_CLOSED: &str = "usbip-load: window closed";

/// When a run stops measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Urbs(u64),
}

/// One load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSpec {
    pub dir: Dir,
    /// Bytes per URB.
    pub size: u32,
    /// URBs kept in flight.
    pub depth: usize,
    /// Time at full queue before the window opens (connection ramp-up,
    /// allocator and cache warm-up).
    pub warmup: Duration,
    pub stop: Stop,
    /// Check IN data against the pattern and the sink's count after OUT.
    pub verify: bool,
}

/// An imported device.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    rx: BytesMut,
    devid: u32,
    next_seqnum: u32,
    /// The source endpoint's stream offset of the next IN URB submitted.
    /// An endpoint serves its URBs in submission order and the source fills
    /// each one (a short one fails the run), so every URB's offset is known
    /// when it is sent, whatever order the replies come back in.
    in_offset: u64,
    in_ep: u32,
    out_ep: u32,
    /// A silence this long from the server is an error.
    timeout: Duration,
    pattern: Pattern,
    /// `None` until asked; `Some(false)` when the device does not answer
    /// the loopback's sink-count request, so OUT runs check only statuses.
    has_sink_count: Option<bool>,
    /// The server's CPU clock, when it runs on this machine.
    server_clock: Option<CpuClock>,
    own_clock: CpuClock,
    /// Print [`WINDOW_OPEN`] and [`WINDOW_CLOSED`] on standard output.
    announce: bool,
}

/// Hands out `*next` and advances it. Seqnum 0 is never used by Linux
/// clients, so it is skipped on wrap-around.
fn take_seqnum(next: &mut u32) -> u32 {
    let seqnum = *next;
    *next = next.checked_add(1).unwrap_or(1);
    seqnum
}

/// What the client remembers of an URB in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    info: SubmitInfo,
    submitted: Instant,
    /// Source stream offset of the URB's first byte (IN only).
    offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measuring,
    /// No new submissions; wait for the rest.
    Draining,
}

impl Client {
    /// Connects to `server`, imports `busid` and selects configuration 1.
    pub async fn import(
        server: SocketAddr,
        busid: &str,
        (in_ep, out_ep): (u32, u32),
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut stream = tokio::time::timeout(timeout, TcpStream::connect(server))
            .await
            .map_err(|_| anyhow!("connecting to {server} timed out"))?
            .with_context(|| format!("cannot connect to {server}"))?;
        // Commands are small and each one gates a transfer: send at once.
        stream.set_nodelay(true)?;
        let mut out = BytesMut::new();
        OpRequest::Import {
            busid: busid.into(),
        }
        .encode(&mut out)?;
        stream.write_all(&out).await?;
        let mut rx = BytesMut::with_capacity(READ_SPARE);
        let reply = loop {
            if let Some(reply) = OpReply::decode(&mut rx, op_code::REQ_IMPORT)? {
                break reply;
            }
            let n = tokio::time::timeout(timeout, stream.read_buf(&mut rx))
                .await
                .map_err(|_| anyhow!("no import reply within {timeout:?}"))??;
            ensure!(n > 0, "server closed the connection before replying");
        };
        let device = match reply {
            OpReply::Import {
                status: 0,
                device: Some(device),
            } => device,
            OpReply::Import { status, .. } => {
                bail!("server refused to export {busid} (status {status})")
            }
            other => bail!("unexpected reply to the import request: {other:?}"),
        };
        let mut client = Self {
            stream,
            rx,
            devid: (device.busnum << 16) | (device.devnum & 0xffff),
            next_seqnum: 1,
            in_offset: 0,
            in_ep,
            out_ep,
            timeout,
            pattern: Pattern::new(),
            has_sink_count: None,
            server_clock: None,
            own_clock: CpuClock::this_process(),
            announce: false,
        };
        let setup = SetupPacket {
            request_type: 0x00,
            request: usbip_proto::request::SET_CONFIGURATION,
            value: 1,
            index: 0,
            length: 0,
        };
        let (status, _) = client.control(setup).await?;
        ensure!(
            status == 0,
            "SET_CONFIGURATION(1) failed with status {status}"
        );
        Ok(client)
    }

    /// Also report the CPU time the server process `pid` spends in each
    /// measuring window.
    pub fn watch_server(&mut self, pid: u32) -> anyhow::Result<()> {
        let clock = CpuClock::process(pid);
        clock
            .read()
            .with_context(|| format!("cannot read the CPU time of process {pid}"))?;
        self.server_clock = Some(clock);
        Ok(())
    }

    /// Print a line on standard output when each run's measuring window is
    /// about to open ([`WINDOW_OPEN`]) and has closed ([`WINDOW_CLOSED`]),
    /// and wait for a line on standard input each time before going on: a
    /// program running this one can then measure the server over the same
    /// window (where it runs on another machine, say).
    pub fn announce_window(&mut self) {
        self.announce = true;
    }

    /// One control transfer on endpoint 0 with no OUT data, alone on the
    /// wire. Returns the status and the IN data.
    async fn control(&mut self, setup: SetupPacket) -> anyhow::Result<(i32, Bytes)> {
        let direction = if setup.is_in() {
            Direction::In
        } else {
            Direction::Out
        };
        let cmd = CmdSubmit {
            header: UrbHeader {
                seqnum: take_seqnum(&mut self.next_seqnum),
                devid: self.devid,
                direction,
                ep: 0,
            },
            transfer_buffer_length: if setup.is_in() {
                u32::from(setup.length)
            } else {
                0
            },
            setup,
            ..CmdSubmit::default()
        };
        let info = SubmitInfo::from(&cmd);
        let seqnum = cmd.header.seqnum;
        let mut out = BytesMut::new();
        CmdMessage::Submit(cmd).encode(&mut out)?;
        self.stream.write_all(&out).await?;
        loop {
            let known = |s| (s == seqnum).then_some(info);
            if let Some(msg) = RetMessage::decode_with(&mut self.rx, known)? {
                return match msg {
                    RetMessage::Submit(r) => Ok((r.status, r.data)),
                    RetMessage::Unlink(u) => bail!("unexpected RET_UNLINK {}", u.header.seqnum),
                };
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.rx))
                .await
                .map_err(|_| {
                    anyhow!("no reply to a control request within {:?}", self.timeout)
                })??;
            ensure!(n > 0, "server closed the connection");
        }
    }

    /// The loopback sink's byte count, or `None` for a device without it.
    async fn sink_count(&mut self) -> anyhow::Result<Option<u64>> {
        if self.has_sink_count == Some(false) {
            return Ok(None);
        }
        let setup = SetupPacket {
            request_type: 0xc0,
            request: REQ_SINK_COUNT,
            value: 0,
            index: 0,
            length: 8,
        };
        let (status, data) = self.control(setup).await?;
        if status == -errno::EPIPE {
            self.has_sink_count = Some(false);
            return Ok(None);
        }
        ensure!(
            status == 0,
            "sink count request failed with status {status}"
        );
        let bytes: [u8; 8] = data[..]
            .try_into()
            .map_err(|_| anyhow!("sink count reply of {} bytes, expected 8", data.len()))?;
        self.has_sink_count = Some(true);
        Ok(Some(u64::from_le_bytes(bytes)))
    }

    /// Keeps `spec.depth` URBs in flight until the window closes, then
    /// waits for the rest; every URB must succeed with its full length.
    pub async fn run(&mut self, spec: LoadSpec) -> anyhow::Result<Measurement> {
        ensure!(spec.depth > 0, "queue depth must be at least 1");
        ensure!(
            spec.size <= usbip_proto::limits::MAX_TRANSFER_LEN,
            "transfer size {} exceeds the protocol limit of {} bytes",
            spec.size,
            usbip_proto::limits::MAX_TRANSFER_LEN
        );
        let sink_before = match (spec.dir, spec.verify) {
            (Dir::Out, true) => self.sink_count().await?,
            _ => None,
        };
        let (direction, ep) = match spec.dir {
            Dir::In => (Direction::In, self.in_ep),
            Dir::Out => (Direction::Out, self.out_ep),
        };
        // Every OUT URB shares this buffer; only its reference count moves.
        let payload = match spec.dir {
            Dir::In => Bytes::new(),
            Dir::Out => Bytes::from(self.pattern.fill(0, spec.size as usize)),
        };
        let size = spec.size;
        let mut pending: HashMap<u32, Pending> = HashMap::with_capacity(spec.depth * 2);
        let mut tx = BytesMut::new();
        let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
        let mut submitted: u64 = 0;
        let mut measured: u64 = 0;
        let mut phase = Phase::Warmup;
        let started = Instant::now();
        let mut window_open = started;
        let mut window_close = started;
        let mut cpu_at_open = (CpuTimes::default(), None);
        let mut cpu_at_close = (CpuTimes::default(), None);
        // One timer for the whole run, pushed back only when it fires, so
        // that the hot loop does not re-arm a timer per iteration.
        let mut last_progress = started;
        let watchdog = tokio::time::sleep(self.timeout);
        tokio::pin!(watchdog);

        let Self {
            stream,
            rx,
            devid,
            next_seqnum,
            in_offset,
            pattern,
            timeout,
            server_clock,
            own_clock,
            announce: announcing,
            ..
        } = self;
        // Announces a window's edge and waits for the go-ahead (blocking the
        // runtime is the point: nothing may happen until the reader has
        // looked at the server).
        let announce = |line: &str| {
            if *announcing {
                use std::io::{BufRead, Write};
                let mut out = std::io::stdout().lock();
                // A reader that went away costs the announcement, not the run.
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
                let _ = std::io::stdin().lock().read_line(&mut String::new());
            }
        };
        let (own_clock, server_clock) = (&*own_clock, server_clock.as_ref());
        // CPU time of (this process, the server) so far.
        let cpu_times = || -> anyhow::Result<(CpuTimes, Option<CpuTimes>)> {
            let own = own_clock.read().context("cannot read own CPU time")?;
            let server = match server_clock {
                Some(c) => Some(c.read().context("cannot read the server's CPU time")?),
                None => None,
            };
            Ok((own, server))
        };
        let (mut rd, mut wr) = stream.split();
        loop {
            if phase != Phase::Draining {
                while pending.len() < spec.depth {
                    let seqnum = take_seqnum(next_seqnum);
                    let cmd = CmdSubmit {
                        header: UrbHeader {
                            seqnum,
                            devid: *devid,
                            direction,
                            ep,
                        },
                        transfer_buffer_length: size,
                        data: payload.clone(),
                        ..CmdSubmit::default()
                    };
                    let info = SubmitInfo::from(&cmd);
                    CmdMessage::Submit(cmd).encode(&mut tx)?;
                    let offset = *in_offset;
                    if spec.dir == Dir::In {
                        *in_offset += u64::from(size);
                    }
                    pending.insert(
                        seqnum,
                        Pending {
                            info,
                            submitted: Instant::now(),
                            offset,
                        },
                    );
                    submitted += 1;
                }
            } else if pending.is_empty() {
                break;
            }

            if rx.capacity() - rx.len() < READ_SPARE / 4 {
                rx.reserve(READ_SPARE);
            }
            tokio::select! {
                // Replies first: they free queue slots.
                biased;
                n = rd.read_buf(rx) => {
                    if n? == 0 {
                        bail!("server closed the connection with {} URBs in flight", pending.len());
                    }
                    last_progress = Instant::now();
                }
                n = wr.write(&tx), if !tx.is_empty() => {
                    tx.advance(n?);
                    last_progress = Instant::now();
                }
                () = &mut watchdog => {
                    let silent = last_progress.elapsed();
                    if silent >= *timeout {
                        bail!(
                            "no progress for {silent:.1?} with {} URBs in flight",
                            pending.len()
                        );
                    }
                    watchdog.as_mut().reset((last_progress + *timeout).into());
                }
            }

            while let Some(msg) = RetMessage::decode_with(rx, |s| pending.get(&s).map(|p| p.info))?
            {
                let reply = match msg {
                    RetMessage::Submit(r) => r,
                    RetMessage::Unlink(u) => bail!("unexpected RET_UNLINK {}", u.header.seqnum),
                };
                let seqnum = reply.header.seqnum;
                let Some(urb) = pending.remove(&seqnum) else {
                    // decode_with has already refused unknown seqnums.
                    unreachable!("reply to unknown seqnum {seqnum}");
                };
                let done = Instant::now();
                ensure!(
                    reply.status == 0,
                    "URB {seqnum} ({} {size} B) failed with status {}",
                    spec.dir,
                    reply.status
                );
                ensure!(
                    reply.actual_length == size,
                    "URB {seqnum} ({} {size} B) moved only {} bytes",
                    spec.dir,
                    reply.actual_length
                );
                if spec.verify && spec.dir == Dir::In {
                    pattern
                        .check(urb.offset, &reply.data)
                        .map_err(|m| anyhow!("IN data of URB {seqnum} is corrupt at {m}"))?;
                }
                if phase == Phase::Measuring {
                    measured += 1;
                    latencies.push((done - urb.submitted).as_nanos() as u64);
                }
            }

            let now = Instant::now();
            match phase {
                Phase::Warmup if now - started >= spec.warmup => {
                    announce(WINDOW_OPEN);
                    phase = Phase::Measuring;
                    window_open = Instant::now();
                    if *announcing {
                        // The wait is not the server's: the URBs in flight count
                        // their time from now.
                        for urb in pending.values_mut() {
                            urb.submitted = window_open;
                        }
                    }
                    cpu_at_open = cpu_times()?;
                }
                Phase::Measuring => {
                    let over = match spec.stop {
                        Stop::After(d) => now - window_open >= d,
                        Stop::Urbs(n) => measured >= n,
                    };
                    if over {
                        phase = Phase::Draining;
                        window_close = now;
                        cpu_at_close = cpu_times()?;
                        announce(WINDOW_CLOSED);
                    }
                }
                _ => {}
            }
        }

        let mut verified = spec.verify && spec.dir == Dir::In;
        if let Some(before) = sink_before {
            if let Some(after) = self.sink_count().await? {
                let sent = submitted * u64::from(size);
                ensure!(
                    after.wrapping_sub(before) == sent,
                    "the sink received {} bytes, {sent} were sent",
                    after.wrapping_sub(before)
                );
                verified = true;
            }
        }
        Ok(Measurement {
            dir: spec.dir,
            size,
            depth: spec.depth,
            urbs: measured,
            elapsed: window_close - window_open,
            latency: Latency::from_samples(&mut latencies),
            cpu: {
                let server = cpu_at_close
                    .1
                    .zip(cpu_at_open.1)
                    .map(|(close, open)| close.since(open));
                CpuUse {
                    client: cpu_at_close.0.since(cpu_at_open.0).run,
                    server: server.map(|s| s.run),
                    server_wait: server.map(|s| s.wait),
                }
            },
            verified,
        })
    }
}
