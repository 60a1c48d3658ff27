//! `hid-ping`/`hid-echo` and the HID stream over datagram socket pairs,
//! which keep report boundaries as hidraw and hidg do, joined by a thread
//! that plays the kernel and the USB link in between: it takes a written
//! output report only with hidraw's leading report id 0 and hands it to
//! the gadget without it, and passes input reports back unchanged.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vusb_bench::probe::echo::pump;
use vusb_bench::probe::hid::{HidLink, NO_REPORT_ID, REPORT_LEN};
use vusb_bench::probe::ping::{self, PingSpec, Unit};
use vusb_bench::probe::sink::{sink, SinkEnd};
use vusb_bench::probe::stream::{parse_stream, source};

/// What the fake link does to input reports (gadget to host).
type InFilter = Box<dyn FnMut(&[u8]) -> bool + Send>;

struct Link {
    /// The ISP guest's end: hidraw.
    host: File,
    /// The HRH's end: hidg.
    gadget: File,
    /// Output reports written without the report id in front.
    bad_writes: Arc<AtomicU32>,
}

fn file(sock: UnixDatagram) -> File {
    File::from(OwnedFd::from(sock))
}

/// `keep_in` decides, per input report, whether the link delivers it.
fn link(mut keep_in: InFilter) -> Link {
    let (host, host_kernel) = UnixDatagram::pair().unwrap();
    let (gadget, gadget_kernel) = UnixDatagram::pair().unwrap();
    let bad_writes = Arc::new(AtomicU32::new(0));
    let (hk, gk, bad) = (
        host_kernel.try_clone().unwrap(),
        gadget_kernel.try_clone().unwrap(),
        bad_writes.clone(),
    );
    thread::spawn(move || {
        let mut buf = [0; 64];
        while let Ok(n) = hk.recv(&mut buf) {
            if n == REPORT_LEN + 1 && buf[0] == NO_REPORT_ID {
                let _ = gk.send(&buf[1..n]);
            } else {
                bad.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    thread::spawn(move || {
        let mut buf = [0; 64];
        while let Ok(n) = gadget_kernel.recv(&mut buf) {
            if keep_in(&buf[..n]) {
                let _ = host_kernel.send(&buf[..n]);
            }
        }
    });
    Link {
        host: file(host),
        gadget: file(gadget),
        bad_writes,
    }
}

#[test]
fn hid_ping_through_an_echoing_gadget() {
    // The link loses the echo of ping 3.
    let mut n = 0;
    let l = link(Box::new(move |_| {
        n += 1;
        n != 4
    }));
    let mut gadget = l.gadget;
    let echo = thread::spawn(move || pump(&mut gadget, Some((Unit::Reads, 20))).unwrap());
    let mut hid = HidLink::new(l.host).unwrap();
    let spec = PingSpec {
        count: 20,
        interval: Duration::ZERO,
        timeout: Duration::from_millis(300),
    };
    let r = ping::ping(&mut hid, &spec, 0).unwrap();
    assert_eq!(l.bad_writes.load(Ordering::SeqCst), 0);
    assert_eq!(
        (r.received, r.timeouts, r.lost, r.late),
        (19, 1, 1, 0),
        "{r:?}"
    );
    assert_eq!((r.unexpected, r.garbage), (0, 0));
    assert_eq!(r.rtt_us.len(), 19);
    assert_eq!(r.rtt_stats_us.unwrap().count, 19);
    let (bytes, reads, end) = echo.join().unwrap();
    assert_eq!((bytes, reads), (20 * REPORT_LEN as u64, 20));
    assert_eq!(end, vusb_bench::probe::echo::End::Count);
}

#[test]
fn foreign_reports_are_garbage_and_drained_before_the_first_ping() {
    let l = link(Box::new(|_| true));
    let mut gadget = l.gadget;
    // Stale input reports from before the run.
    for _ in 0..3 {
        vusb_bench::probe::sys::write_record(&mut gadget, &[0x55; REPORT_LEN], None).unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    let mut hid = HidLink::new(l.host).unwrap();
    assert_eq!(hid.drain().unwrap(), 3);
    let echo = thread::spawn(move || pump(&mut gadget, Some((Unit::Reads, 5))).unwrap());
    let spec = PingSpec {
        count: 5,
        interval: Duration::from_millis(10),
        timeout: Duration::from_millis(500),
    };
    let r = ping::ping(&mut hid, &spec, 3).unwrap();
    assert_eq!((r.received, r.drained, r.garbage), (5, 3, 0));
    echo.join().unwrap();
}

#[test]
fn stream_rate_gaps_and_jitter() {
    // The link loses slots 10 to 12.
    let l = link(Box::new(|r| !matches!(parse_stream(r), Some((10..=12, _)))));
    let mut gadget = l.gadget;
    let src = thread::spawn(move || {
        source(
            &mut gadget,
            Duration::from_millis(5),
            100,
            Duration::from_secs(2),
        )
        .unwrap()
    });
    let mut host = l.host;
    let r = sink(&mut host, 100, Duration::from_secs(2)).unwrap();
    let s = src.join().unwrap();
    assert_eq!(s.sent + s.skipped, 100);
    assert_eq!(r.end, SinkEnd::Complete, "{r:?}");
    assert_eq!(r.received, s.sent - 3, "{r:?} {s:?}");
    assert_eq!(r.missing, 3 + s.skipped);
    assert!(r.gaps.contains(&[10, 12]), "{:?}", r.gaps);
    assert_eq!((r.duplicates, r.out_of_order, r.garbage), (0, 0, 0));
    // 200 reports/s nominal; a loaded machine may skip some slots.
    let rate = r.rate_per_s.unwrap();
    assert!((100.0..=260.0).contains(&rate), "{rate}");
    let sender = r.sender_interval_stats_us.unwrap();
    assert!((4000.0..=6000.0).contains(&sender.p50), "{sender:?}");
    let iv = r.interval_stats_us.unwrap();
    assert_eq!(iv.count as u32, r.received - 1);
    assert_eq!(r.jitter_us, Some(iv.std));
    assert_eq!(r.delay_variation_stats_us.unwrap().min, 0.0);
    assert!(r.failure().is_none());
}

#[test]
fn a_silent_stream_times_out_and_fails() {
    let l = link(Box::new(|_| true));
    let mut host = l.host;
    let r = sink(&mut host, 10, Duration::from_millis(200)).unwrap();
    assert_eq!((r.end, r.received, r.missing), (SinkEnd::Timeout, 0, 10));
    assert_eq!(r.gaps, vec![[0, 9]]);
    assert!(r.rate_per_s.is_none());
    assert!(r.failure().is_some());
    drop(l.gadget);
}
