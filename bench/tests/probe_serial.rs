//! `serial-ping` and `serial-echo` over pseudo-terminals, which have the
//! same line discipline as the CDC-ACM ttys of the guests: if raw mode
//! were missing, the ttys would echo and translate the bytes themselves.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use vusb_bench::probe::ping::PingSpec;
use vusb_bench::probe::serial::{message, serial_ping};
use vusb_bench::probe::tty::{is_raw, open_pty, RawTty};

/// Copies one master's output to another's input, like a USB link
/// between a host's ttyACM and a gadget's ttyGS.
fn copy(mut from: File, mut to: File) {
    thread::spawn(move || {
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
}

/// Two ptys joined master to master: the slaves are the two ends of a
/// serial link. Returns the slaves (kept open) and their paths.
fn serial_link() -> ((File, String), (File, String)) {
    let (master_a, slave_a, path_a) = open_pty().unwrap();
    let (master_b, slave_b, path_b) = open_pty().unwrap();
    copy(master_a.try_clone().unwrap(), master_b.try_clone().unwrap());
    copy(master_b, master_a);
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    ((slave_a, s(&path_a)), (slave_b, s(&path_b)))
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `serial-echo` on the gadget end (with `extra` arguments) and waits
/// until it has put its tty in raw mode, so nothing sent is echoed twice.
fn start_echo(gadget: &File, path: &str, extra: &[&str]) -> common::Background {
    let mut args = vec!["serial-echo", "--tty", path];
    args.extend_from_slice(extra);
    let echo = common::spawn(&args);
    wait_until("the echo side is raw", || is_raw(gadget).unwrap());
    echo
}

#[test]
fn ping_and_echo_as_two_processes() {
    let ((host, host_path), (gadget, gadget_path)) = serial_link();
    let echo = start_echo(&gadget, &gadget_path, &["--count", "480"]);
    let ping = common::run(&[
        "serial-ping",
        "--tty",
        &host_path,
        "--count",
        "30",
        "--interval-ms",
        "0",
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(ping.code, 0, "{}", ping.stderr);
    let j = ping.json.unwrap();
    assert_eq!(j["probe"], "serial-ping");
    assert_eq!(j["device"], host_path.as_str());
    assert_eq!(j["size"], 16);
    assert_eq!(
        (j["sent"].as_u64(), j["received"].as_u64()),
        (Some(30), Some(30))
    );
    for field in ["timeouts", "late", "lost", "unexpected", "garbage"] {
        assert_eq!(j[field], 0, "{field}: {j}");
    }
    let rtts = j["rtt_us"].as_array().unwrap();
    assert_eq!(rtts.len(), 30);
    assert!(rtts.iter().all(|r| r.as_f64().unwrap() > 0.0));
    let stats = &j["rtt_stats_us"];
    assert_eq!(stats["count"], 30);
    let min = stats["min"].as_f64().unwrap();
    for field in ["p50", "p99", "max", "mean"] {
        assert!(stats[field].as_f64().unwrap() >= min, "{field}");
    }
    assert!(stats["std"].as_f64().unwrap() >= 0.0);
    // The ping gave its tty its settings back.
    assert!(!is_raw(&host).unwrap());

    let echo = echo.finish();
    assert_eq!(echo.code, 0, "{}", echo.stderr);
    assert!(echo.stderr.contains("ready on"), "{}", echo.stderr);
    let e = echo.json.unwrap();
    assert_eq!(
        (e["bytes"].as_u64(), e["end"].as_str()),
        (Some(480), Some("count"))
    );
    assert!(!is_raw(&gadget).unwrap());
}

#[test]
fn pings_keep_their_interval() {
    let ((_host, host_path), (gadget, gadget_path)) = serial_link();
    let echo = start_echo(&gadget, &gadget_path, &["--count", "80"]);
    let ping = common::run(&[
        "serial-ping",
        "--tty",
        &host_path,
        "--count",
        "4",
        "--interval-ms",
        "100",
        "--size",
        "20",
    ]);
    assert_eq!(ping.code, 0, "{}", ping.stderr);
    let j = ping.json.unwrap();
    assert_eq!(j["received"], 4);
    assert!(j["duration_s"].as_f64().unwrap() >= 0.3, "{j}");
    assert_eq!(echo.finish().code, 0);
}

#[test]
fn an_echo_stopped_by_a_signal_reports_and_restores_its_tty() {
    let ((_host, _), (gadget, gadget_path)) = serial_link();
    let echo = start_echo(&gadget, &gadget_path, &[]);
    // SAFETY: kill takes no pointers; the pid is a child not yet waited
    // for, so it cannot have been reused.
    let rc = unsafe { libc::kill(echo.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let echo = echo.finish();
    assert_eq!(echo.code, 0, "{}", echo.stderr);
    assert_eq!(echo.json.unwrap()["end"], "signal");
    assert!(!is_raw(&gadget).unwrap());
}

#[test]
fn lost_late_and_garbled_echoes_are_reported_not_miscounted() {
    let (master, slave, path) = open_pty().unwrap();
    // Left over from before the run: must not count. (Raw already, or the
    // pty's line discipline would echo it to the echo thread.)
    let _raw = RawTty::new(slave).unwrap();
    (&master).write_all(b"stale#0000000000").unwrap();
    let echo = thread::spawn(move || {
        let mut master = master;
        for seq in 0..8u32 {
            let mut m = [0; 16];
            master.read_exact(&mut m).unwrap();
            assert_eq!(m[..], message(seq, 16)[..], "ping {seq}");
            match seq {
                2 => continue,
                4 => thread::sleep(Duration::from_millis(300)),
                6 => master.write_all(b"junk").unwrap(),
                _ => {}
            }
            master.write_all(&m).unwrap();
        }
        // Keep the pty open until the ping is done.
        master
    });
    let spec = PingSpec {
        count: 8,
        interval: Duration::ZERO,
        timeout: Duration::from_millis(200),
    };
    let r = serial_ping(Path::new(&path), 16, &spec).unwrap().ping;
    drop(echo.join().unwrap());
    assert_eq!((r.sent, r.received, r.timeouts), (8, 6, 2), "{r:?}");
    assert_eq!(
        (r.late, r.lost, r.unexpected, r.garbage),
        (1, 1, 0, 4),
        "{r:?}"
    );
    assert_eq!(r.rtt_us.len(), 6);
    // Ping 5 went out when ping 4 timed out, 200 ms in, and came back
    // after ping 4's late echo, 300 ms in: its round trip is its own
    // ~100 ms, not ping 4's 300.
    assert!(r.rtt_us[3] >= 50_000.0, "{:?}", r.rtt_us);
    assert!(r.rtt_us.iter().all(|&us| us < 200_000.0), "{:?}", r.rtt_us);
}

#[test]
fn bad_arguments_fail_before_touching_a_tty() {
    let r = common::run(&["serial-ping", "--tty", "/nonexistent/tty", "--size", "8"]);
    assert_eq!(r.code, 1);
    assert!(r.json.is_none());
    assert!(r.stderr.contains("12 to 4096"), "{}", r.stderr);
    let r = common::run(&["serial-ping", "--tty", "/nonexistent/tty"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cannot open /nonexistent/tty"),
        "{}",
        r.stderr
    );
}
