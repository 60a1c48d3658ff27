//! The emulated home-to-ISP links (`vusb_vm_tests::link`) are in force on the HRH guest, in
//! both directions, and come off again.
//!
//! One HRH guest is measured unshaped, then under each profile (slowest first, so that each
//! `tc qdisc replace` must also take the previous profile's jitter and loss away), then
//! unshaped again:
//!
//! - `ping` of QEMU's user-mode gateway (10.0.2.2 answers inside QEMU, so each echo crosses
//!   eth0 out and back in) takes at least about the profile's round-trip time;
//! - a bulk TCP transfer through the HRH's forwarded port, host → HRH and HRH → host, takes at
//!   least about bytes / rate, and its bytes went through the netem qdisc of its direction;
//! - `tc -s qdisc` shows netem on eth0 and on ifb0 with the profile's settings;
//! - no segment reaches the HRH's TCP out of order on a link without loss: netem's jitter
//!   must not reorder packets.
//!
//! Only lower bounds on time are asserted: the machine is shared and TCG is slow, so anything
//! may take longer. A TCG guest moves only some tens of Mbit/s, below the faster profiles'
//! rates: the unshaped transfers measure what it manages, and each profile's transfers are
//! sized to last a few seconds at the lower of that and the profile's rate.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only -E 'binary(link_profiles)'`
//! after `cargo build --workspace` (or through scripts/test.sh).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vusb_vm_tests::link::{Link, Netem, IFB, LINKS, LONG_HAUL, TC};
use vusb_vm_tests::{Hrh, HrhConfig, Output};

const BOOT: Duration = Duration::from_secs(180);
/// An ordinary step (a few shell commands).
const STEP: Duration = Duration::from_secs(60);
/// How many echo requests a round-trip measurement sends, 0.2 s apart.
const PINGS: usize = 20;
/// How long a transfer is meant to last at the rate it can get.
const TRANSFER_SECONDS: f64 = 3.0;
/// The transfers that measure the unshaped guest.
const PROBE_BYTES: u64 = 4 << 20;
/// Transfers are whole dd blocks of this size.
const BLOCK: u64 = 64 << 10;
/// Time measured against time expected from the rate: a transfer's first packets may be under
/// way before the clock starts; netem's rate counts headers too, which only adds time.
const RATE_MARGIN: f64 = 0.8;
/// Round-trip times measured against the profile's.
const RTT_MARGIN: f64 = 0.9;

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn link_profiles_shape_both_directions() -> Result<()> {
    let mut hrh = Hrh::boot(HrhConfig::new("link_profiles"))?;
    hrh.wait_ready(BOOT)?;

    let rtt = ping(&mut hrh)?;
    let up = send_from_hrh(&mut hrh, PROBE_BYTES)?;
    let down = send_to_hrh(&mut hrh, PROBE_BYTES)?;
    report(
        &mut hrh,
        &format!(
            "unshaped: RTT {rtt}; HRH->host {}; host->HRH {}",
            up.describe(),
            down.describe()
        ),
    );

    let mut profiles = LINKS;
    profiles.reverse();
    for link in profiles {
        check_profile(&mut hrh, &link, up.mbit(), down.mbit())
            .with_context(|| format!("profile {}", link.name))?;
    }

    hrh.unshape()?;
    // Again: nothing is left to take off, and that is no error.
    hrh.unshape()?;
    for dev in ["eth0", IFB] {
        let out = hrh
            .remote()
            .check(&format!("{TC} qdisc show dev {dev}"), STEP)?;
        ensure!(
            !out.text().contains("netem") && !out.text().contains("ingress"),
            "{dev} is still shaped:\n{}",
            out.text()
        );
    }
    let rtt = ping(&mut hrh)?;
    report(&mut hrh, &format!("unshaped again: RTT {rtt}"));
    let long_haul_fastest = LONG_HAUL.rtt_ms - LONG_HAUL.jitter_ms;
    ensure!(
        rtt.median < long_haul_fastest,
        "unshaped, the median RTT {:.2} ms is still not below {long_haul_fastest} ms, the \
         fastest round trip of {}",
        rtt.median,
        LONG_HAUL.name
    );

    assert_eq!(hrh.finish(STEP)?, 0);
    Ok(())
}

fn check_profile(hrh: &mut Hrh, link: &Link, up_mbit: f64, down_mbit: f64) -> Result<()> {
    hrh.shape(link)?;
    // Applying the same profile again changes nothing and is no error.
    hrh.shape(link)?;
    let expected = link.netem();
    let out_before = qdisc(hrh, "eth0")?;
    let in_before = qdisc(hrh, IFB)?;
    for (dev, state) in [("eth0", &out_before), (IFB, &in_before)] {
        ensure!(
            expected.matches(&state.netem),
            "{dev}'s netem is {:?}, not {expected:?}",
            state.netem
        );
    }
    let filters = hrh
        .remote()
        .check(&format!("{TC} filter show dev eth0 ingress"), STEP)?;
    ensure!(
        filters.text().matches("mirred").count() == 1
            && filters.text().contains(&format!("to device {IFB}")),
        "eth0's ingress does not redirect to {IFB} exactly once:\n{}",
        filters.text()
    );

    let rtt = ping(hrh)?;
    ensure!(
        rtt.mean >= RTT_MARGIN * link.rtt_ms,
        "mean RTT {:.2} ms, below {RTT_MARGIN} x {} ms",
        rtt.mean,
        link.rtt_ms
    );
    let fastest = link.rtt_ms - link.jitter_ms;
    ensure!(
        rtt.min >= RTT_MARGIN * fastest,
        "fastest RTT {:.2} ms, below {RTT_MARGIN} x {fastest} ms",
        rtt.min
    );

    let rate = f64::from(link.rate_mbit);
    let ofo_before = out_of_order_segments(hrh)?;
    let up = send_from_hrh(hrh, transfer_bytes(rate.min(up_mbit)))?;
    let down = send_to_hrh(hrh, transfer_bytes(rate.min(down_mbit)))?;
    let ofo = out_of_order_segments(hrh)? - ofo_before;
    let out_after = qdisc(hrh, "eth0")?;
    let in_after = qdisc(hrh, IFB)?;
    report(
        hrh,
        &format!(
            "{}: RTT {rtt}; HRH->host {}; host->HRH {}; out-of-order segments at the HRH: {ofo}; \
             netem drops out/in: {}/{}",
            link.name,
            up.describe(),
            down.describe(),
            out_after.dropped - out_before.dropped,
            in_after.dropped - in_before.dropped
        ),
    );

    for (what, transfer) in [("HRH->host", &up), ("host->HRH", &down)] {
        let floor = RATE_MARGIN * transfer.bytes as f64 * 8.0 / (rate * 1e6);
        ensure!(
            transfer.seconds >= floor,
            "{what}: {} in {:.2} s, faster than {RATE_MARGIN} x the {rate} Mbit/s rate allows \
             ({floor:.2} s)",
            transfer.bytes,
            transfer.seconds
        );
    }
    for (dev, before, after, bytes) in [
        ("eth0", &out_before, &out_after, up.bytes),
        (IFB, &in_before, &in_after, down.bytes),
    ] {
        let sent = after.sent_bytes - before.sent_bytes;
        ensure!(
            sent >= bytes,
            "{dev}'s netem passed {sent} bytes during a transfer of {bytes} through it"
        );
    }
    // Lost packets leave gaps that the segments behind them wait in; without loss, a segment
    // out of order can only come from netem's jitter.
    if link.loss_percent == 0.0 && in_after.dropped == in_before.dropped {
        ensure!(
            ofo == 0,
            "{ofo} segments reached the HRH out of order on a link without loss"
        );
    }
    Ok(())
}

/// Round-trip times of `ping`, in ms.
#[derive(Debug, Clone, Copy)]
struct Rtt {
    min: f64,
    median: f64,
    mean: f64,
}

impl std::fmt::Display for Rtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:.2} / median {:.2} / mean {:.2} ms",
            self.min, self.median, self.mean
        )
    }
}

/// Pings QEMU's user-mode gateway from the HRH.
fn ping(hrh: &mut Hrh) -> Result<Rtt> {
    let out = hrh
        .remote()
        .check(&format!("ping -c {PINGS} -i 0.2 10.0.2.2"), STEP)?;
    // "64 bytes from 10.0.2.2: seq=0 ttl=255 time=0.571 ms"
    let mut times: Vec<f64> = out
        .lines
        .iter()
        .filter_map(|line| line.split_once("time=")?.1.split_whitespace().next())
        .filter_map(|t| t.parse().ok())
        .collect();
    ensure!(
        times.len() >= PINGS / 2,
        "only {} of {PINGS} echo requests were answered:\n{}",
        times.len(),
        out.text()
    );
    times.sort_by(f64::total_cmp);
    Ok(Rtt {
        min: times[0],
        median: times[times.len() / 2],
        mean: times.iter().sum::<f64>() / times.len() as f64,
    })
}

/// A bulk transfer as its receiver saw it.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    bytes: u64,
    seconds: f64,
}

impl Transfer {
    fn mbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }

    fn describe(&self) -> String {
        format!(
            "{:.1} MiB in {:.2} s = {:.1} Mbit/s",
            self.bytes as f64 / f64::from(1 << 20),
            self.seconds,
            self.mbit()
        )
    }
}

/// What lasts about TRANSFER_SECONDS at `mbit`, in whole blocks.
fn transfer_bytes(mbit: f64) -> u64 {
    let bytes = (mbit * 1e6 / 8.0 * TRANSFER_SECONDS) as u64;
    bytes.clamp(1 << 20, 32 << 20) / BLOCK * BLOCK
}

/// The shell function `listening`: something listens on the HRH's forwarded port (3240 is
/// 0x0CA8 in /proc/net/tcp*, state 0A is LISTEN; busybox's nc listens on IPv6's any address).
const LISTENING: &str = r#"listening() { cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$2 ~ /:0CA8$/ && $4 == "0A" { f = 1 } END { exit !f }'; }"#;

/// The HRH sends `bytes` to the host through its forwarded port; the host times them from
/// connecting to the end of the stream.
fn send_from_hrh(hrh: &mut Hrh, bytes: u64) -> Result<Transfer> {
    ensure!(
        bytes.is_multiple_of(BLOCK),
        "{bytes} is not a number of blocks"
    );
    hrh.remote().check(
        &format!(
            "rm -f /tmp/tx.rc; {LISTENING}; \
             (dd if=/dev/zero bs={BLOCK} count={} 2>/dev/null | nc -l -p 3240 >/dev/null 2>/tmp/nc.err; \
              echo $? >/tmp/tx.rc) & \
             wait_for 20 listening",
            bytes / BLOCK
        ),
        STEP,
    )?;
    let started = Instant::now();
    let mut stream = connect(hrh.port())?;
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading what the HRH sends"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(stream);
    let out = hrh.remote().check(
        "wait_for 30 test -s /tmp/tx.rc; echo \"NC-RC=$(cat /tmp/tx.rc)\"; cat /tmp/nc.err",
        STEP,
    )?;
    ensure!(
        out.required("NC-RC")? == "0",
        "the HRH's nc failed:\n{}",
        out.text()
    );
    ensure!(
        received == bytes,
        "the host received {received} of the {bytes} bytes the HRH sent"
    );
    Ok(Transfer { bytes, seconds })
}

/// The host sends `bytes` to the HRH through its forwarded port; the HRH times them from the
/// first byte to the end of the stream (the host's writes end early, in socket buffers).
fn send_to_hrh(hrh: &mut Hrh, bytes: u64) -> Result<Transfer> {
    hrh.remote().check(
        &format!(
            "rm -f /tmp/rx.out; {LISTENING}; \
             (nc -l -p 3240 </dev/null 2>/tmp/nc.err | {{ \
                 dd bs=1 count=1 of=/dev/null 2>/dev/null; t0=$(cut -d' ' -f1 /proc/uptime); \
                 n=$(wc -c); t1=$(cut -d' ' -f1 /proc/uptime); \
                 printf 'RX-BYTES=%s\\nRX-T0=%s\\nRX-T1=%s\\n' $((n + 1)) $t0 $t1 >/tmp/rx.part; \
                 mv /tmp/rx.part /tmp/rx.out; }}) & \
             wait_for 20 listening"
        ),
        STEP,
    )?;
    let mut stream = connect(hrh.port())?;
    let block = vec![0u8; BLOCK as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BLOCK) as usize;
        stream
            .write_all(&block[..n])
            .context("sending to the HRH")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    // The HRH's nc sends nothing and closes when its stdin ends, at once.
    let _ = stream.read(&mut [0u8; 1]);
    drop(stream);
    let out = hrh.remote().check(
        "wait_for 60 test -s /tmp/rx.out || cat /tmp/nc.err; cat /tmp/rx.out",
        STEP,
    )?;
    let received: u64 = out.required("RX-BYTES")?.parse()?;
    let t0: f64 = out.required("RX-T0")?.parse()?;
    let t1: f64 = out.required("RX-T1")?.parse()?;
    ensure!(
        received == bytes,
        "the HRH received {received} of the {bytes} bytes the host sent:\n{}",
        out.text()
    );
    Ok(Transfer {
        bytes,
        seconds: t1 - t0,
    })
}

/// Connects to the HRH's forwarded port, with a bound on waiting for data.
fn connect(port: u16) -> Result<TcpStream> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("connecting to the HRH's forwarded port {port}"))?;
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    Ok(stream)
}

/// A netem qdisc as `tc -s qdisc show` reports it.
#[derive(Debug, Clone, Copy)]
struct Qdisc {
    netem: Netem,
    sent_bytes: u64,
    dropped: u64,
}

/// The netem qdisc at the root of `dev`.
fn qdisc(hrh: &mut Hrh, dev: &str) -> Result<Qdisc> {
    let out = hrh
        .remote()
        .check(&format!("{TC} -s qdisc show dev {dev}"), STEP)?;
    parse_qdisc(&out).with_context(|| format!("no netem qdisc on {dev}:\n{}", out.text()))
}

/// Reads `qdisc netem 1: root … / Sent 9151112 bytes 6330 pkt (dropped 0, overlimits 0 …)`.
fn parse_qdisc(out: &Output) -> Option<Qdisc> {
    let at = out
        .lines
        .iter()
        .position(|l| l.starts_with("qdisc netem "))?;
    let netem = Netem::parse(&out.lines[at])?;
    let stats: Vec<&str> = out.lines.get(at + 1)?.split_whitespace().collect();
    if stats.first() != Some(&"Sent") {
        return None;
    }
    let dropped = stats.iter().position(|w| *w == "(dropped")? + 1;
    Some(Qdisc {
        netem,
        sent_bytes: stats.get(1)?.parse().ok()?,
        dropped: stats.get(dropped)?.trim_end_matches(',').parse().ok()?,
    })
}

/// How many segments the HRH's TCP has queued out of order so far (TcpExt TCPOFOQueue).
fn out_of_order_segments(hrh: &mut Hrh) -> Result<u64> {
    let out = hrh.remote().check(
        r#"awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) k[i] = $i; h = 1 } else for (i = 2; i <= NF; i++) if (k[i] == "TCPOFOQueue") print "OFO=" $i }' /proc/net/netstat"#,
        STEP,
    )?;
    Ok(out.required("OFO")?.parse()?)
}

/// Prints a result for the test's output and notes it in the HRH's log.
fn report(hrh: &mut Hrh, line: &str) {
    println!("{line}");
    hrh.remote().guest().note(line);
}

#[test]
fn link_statistics_of_tc_are_read() -> Result<()> {
    let out = Output {
        command: "tc -s qdisc show dev eth0".into(),
        rc: 0,
        lines: vec![
            "qdisc netem 1: root refcnt 2 limit 112 delay 12.5ms  5ms loss 0.05% rate 20Mbit"
                .into(),
            " Sent 44285838 bytes 35551 pkt (dropped 6, overlimits 0 requeues 0) ".into(),
            " backlog 0b 0p requeues 0".into(),
        ],
        elapsed: Duration::ZERO,
    };
    let qdisc = parse_qdisc(&out).context("not read")?;
    assert!(LONG_HAUL.netem().matches(&qdisc.netem), "{qdisc:?}");
    assert_eq!(qdisc.sent_bytes, 44285838);
    assert_eq!(qdisc.dropped, 6);
    if parse_qdisc(&Output {
        lines: vec!["qdisc fq_codel 0: root refcnt 2".into()],
        ..out
    })
    .is_some()
    {
        bail!("fq_codel read as netem");
    }
    // 7.5 MB, in 64 KiB blocks.
    assert_eq!(transfer_bytes(20.0), 114 * BLOCK);
    assert_eq!(transfer_bytes(1.0), 1 << 20);
    Ok(())
}
