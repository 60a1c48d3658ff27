//! The real daemon driven over its vhost-user socket by a simulated guest
//! driver with memfd guest memory (no QEMU): configuration, events, data
//! both ways, broken chains, and a front-end that goes and comes back.
//! The devices behind the ports are an in-memory twin; the USB/IP engine
//! has its own tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use vm_memory::{Bytes as _, GuestAddress};
use vusb_backend::daemon;
use vusb_backend::sim_driver::{Options, SimDriver};
use vusb_backend::transfer::{
    Completion, PortEvent, PortLayout, Ports, Speed, Status, Transfer, Upcall, UpcallSink,
};
use vusb_backend::upcalls::{self, UpcallSender};
use vusb_backend::vhost_user::VusbBackend;
use vusb_backend::virtio_usb::wire::{
    CtrlReq, XferReq, CONTROL_QUEUE, CTRL_CANCEL, EVT_CONNECT, EVT_RESTARTED, REQUEST_QUEUE,
};
use vusb_backend::virtio_usb::{Controller, Limits};

const WAIT: Duration = Duration::from_secs(10);

/// A device on port 1 that answers IN transfers with `i % 251` and
/// swallows OUT data; endpoint 0x85 never answers (until cancelled).
struct Twin {
    sink: Mutex<Option<Arc<UpcallSender>>>,
    parked: Mutex<Vec<Transfer>>,
}

impl Twin {
    fn send(&self, u: Upcall) {
        if let Some(s) = &*self.sink.lock().unwrap() {
            s.upcall(u);
        }
    }
}

impl Ports for Twin {
    fn submit(&self, t: Transfer) {
        if t.port != 1 {
            return self.send(Upcall::Completed(Completion::failed(
                t.port,
                t.id,
                Status::NoDevice,
            )));
        }
        if t.endpoint == 0x85 {
            self.parked.lock().unwrap().push(t);
            return;
        }
        let mut c = Completion::failed(t.port, t.id, Status::Ok);
        c.actual_length = t.length;
        if t.is_in() {
            let data: Vec<u8> = (0..t.length).map(|i| (i % 251) as u8).collect();
            c.in_data = vec![(0, Bytes::from(data))];
        }
        self.send(Upcall::Completed(c));
    }
    fn cancel(&self, port: u8, id: u64) {
        let mut parked = self.parked.lock().unwrap();
        if let Some(i) = parked.iter().position(|t| t.id == id) {
            parked.remove(i);
            self.send(Upcall::Completed(Completion::failed(
                port,
                id,
                Status::Cancelled,
            )));
        }
    }
    fn reset_port(&self, port: u8, token: u64) {
        self.send(Upcall::ResetDone {
            port,
            token,
            status: Status::Ok,
            speed: Some(Speed::High),
        });
    }
}

fn start_daemon() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vusb.sock");
    let (sender, receiver) = upcalls::channel().unwrap();
    let twin = Arc::new(Twin {
        sink: Mutex::new(Some(sender)),
        parked: Mutex::new(Vec::new()),
    });
    twin.send(Upcall::Event(PortEvent::Connected {
        port: 1,
        speed: Speed::High,
    }));
    let controller = Controller::new(
        twin,
        PortLayout::for_devices(1),
        Limits {
            max_transfer: 1 << 20,
            max_iso_packets: 1024,
            iso: true,
        },
    );
    let backend = VusbBackend::new(controller, receiver);
    let path = socket.clone();
    std::thread::spawn(move || daemon::serve_forever(backend, &path));
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (dir, socket)
}

/// Driver options as a Linux guest negotiates them (EVENT_IDX).
fn linux_like() -> Options {
    Options {
        event_idx: true,
        ..Options::default()
    }
}

/// A driver ([`linux_like`]) whose device is up and has answered request 1,
/// with request 2 on endpoint 0x85, which the twin never answers, in flight.
fn driver_with_a_request_parked(socket: &Path) -> SimDriver {
    let mut d = SimDriver::connect(socket, linux_like()).unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    d.submit(&bulk_in(1, 0x81, 64), &[], &[]).unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (1, 0));
    d.submit(&bulk_in(2, 0x85, 64), &[], &[]).unwrap();
    d
}

/// A bulk transfer to the twin on port 1 (IN or OUT by `endpoint`).
fn bulk_in(id: u64, endpoint: u8, length: u32) -> XferReq {
    XferReq::bulk(id, 1, endpoint, length)
}

#[test]
fn config_space_and_connect_event_reach_the_driver() {
    let (_dir, socket) = start_daemon();
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    let config = d.config().unwrap();
    assert_eq!(&config[..4], b"vUSB");
    assert_eq!(&config[4..10], &[1, 0, 0, 0, 1, 1]);
    assert_eq!(
        d.wait_event(WAIT).unwrap(),
        (EVT_CONNECT, 1, Speed::High as u8)
    );
}

#[test]
fn data_flows_both_ways_with_many_requests_in_flight() {
    let (_dir, socket) = start_daemon();
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    d.wait_event(WAIT).unwrap();
    for id in 0..100u64 {
        if id % 2 == 0 {
            d.submit(&bulk_in(id, 0x81, 4096), &[], &[]).unwrap();
        } else {
            let req = XferReq {
                endpoint: 0x02,
                ..bulk_in(id, 0, 512)
            };
            d.submit(&req, &[], &[7; 512]).unwrap();
        }
    }
    let mut seen = [false; 100];
    for _ in 0..100 {
        let done = d.wait_transfer(WAIT).unwrap();
        assert!(
            !seen[done.id as usize],
            "request {} completed twice",
            done.id
        );
        seen[done.id as usize] = true;
        assert_eq!(done.resp.status, 0);
        if done.id.is_multiple_of(2) {
            assert_eq!(done.resp.actual_length, 4096);
            assert!(done
                .data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8));
            assert_eq!(done.used_len, 4096 + 16);
        } else {
            assert_eq!(done.resp.actual_length, 512);
            assert_eq!(done.used_len, 16);
        }
    }
}

#[test]
fn cancel_completes_a_waiting_request_once() {
    let (_dir, socket) = start_daemon();
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    d.submit(&bulk_in(42, 0x85, 64), &[], &[]).unwrap();
    let cancel = CtrlReq {
        code: CTRL_CANCEL,
        port: 1,
        id: 42,
    };
    // The daemon may see the control queue's kick before the request
    // queue's: until it has the request, a cancel finds nothing.
    loop {
        d.send_control(&cancel).unwrap();
        match d.wait_control(WAIT).unwrap().0 {
            s if s == Status::Ok as u32 => break,
            s => assert_eq!(s, Status::NotFound as u32),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (42, Status::Cancelled as u32));
    d.send_control(&cancel).unwrap();
    assert_eq!(d.wait_control(WAIT).unwrap().0, Status::NotFound as u32);
}

/// Broken chains come back without the daemon writing outside them, and
/// the daemon goes on serving.
#[test]
fn broken_chains_are_refused_and_service_continues() {
    let (_dir, socket) = start_daemon();
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    let (scratch, _) = d.take_scratch().unwrap();
    let mem_end = d.memory_size();
    let guard = vec![0x5a; 256];
    d.memory()
        .write_slice(&guard, GuestAddress(scratch))
        .unwrap();
    let header = bulk_in(1, 0x81, 64).to_bytes();
    d.memory()
        .write_slice(&header, GuestAddress(scratch))
        .unwrap();

    // Writable part outside guest memory.
    d.raw_chain(
        REQUEST_QUEUE,
        &[(scratch, 40, false), (mem_end - 16, 80, true)],
    )
    .unwrap();
    assert_eq!(d.wait_raw(REQUEST_QUEUE, WAIT).unwrap().1, 0);
    // Readable descriptor after a writable one.
    d.raw_chain(
        REQUEST_QUEUE,
        &[(scratch + 64, 80, true), (scratch, 40, false)],
    )
    .unwrap();
    assert_eq!(d.wait_raw(REQUEST_QUEUE, WAIT).unwrap().1, 0);
    // Writable part too short for the 64-byte IN buffer: INVALID at its end.
    d.raw_chain(
        REQUEST_QUEUE,
        &[(scratch, 40, false), (scratch + 64, 32, true)],
    )
    .unwrap();
    assert_eq!(d.wait_raw(REQUEST_QUEUE, WAIT).unwrap().1, 32);
    let mut b = vec![0u8; 256];
    d.memory()
        .read_slice(&mut b, GuestAddress(scratch))
        .unwrap();
    assert_eq!(&b[64..80], &guard[64..80], "wrote before the response");
    assert_eq!(&b[80..84], &(Status::Invalid as u32).to_le_bytes());
    assert_eq!(&b[96..], &guard[96..], "wrote past the chain");
    // A control chain that is all header.
    d.raw_chain(CONTROL_QUEUE, &[(scratch, 16, false)]).unwrap();
    assert_eq!(d.wait_raw(CONTROL_QUEUE, WAIT).unwrap().1, 0);

    d.submit(&bulk_in(2, 0x81, 64), &[], &[]).unwrap();
    assert_eq!(d.wait_transfer(WAIT).unwrap().resp.status, 0);
}

#[test]
fn a_new_front_end_is_served_and_told_about_the_device_again() {
    let (_dir, socket) = start_daemon();
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    d.wait_event(WAIT).unwrap();
    d.submit(&bulk_in(1, 0x85, 64), &[], &[]).unwrap();
    drop(d);
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    assert_eq!(
        d.wait_event(WAIT).unwrap(),
        (EVT_CONNECT, 1, Speed::High as u8)
    );
    d.submit(&bulk_in(1, 0x81, 64), &[], &[]).unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (1, 0));
}

/// A guest that resets the device makes QEMU stop its rings with requests
/// still on them; the daemon must keep answering (a guest waits in its
/// reset for that) and serve the next driver.
#[test]
fn stopped_rings_are_left_alone_and_the_daemon_keeps_answering() {
    let (_dir, socket) = start_daemon();
    let options = linux_like();
    let mut d = driver_with_a_request_parked(&socket);
    d.stop_rings().unwrap();
    d.kick_queue(REQUEST_QUEUE).unwrap();
    d.kick_queue(CONTROL_QUEUE).unwrap();

    // Ask for the configuration from another thread: a daemon stuck on
    // the stopped ring would never answer.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            d.config()
                .map(|c| c[..4].to_vec())
                .map_err(|e| e.to_string()),
        );
    });
    let answer = rx
        .recv_timeout(WAIT)
        .expect("the daemon stopped answering after its rings were stopped");
    assert_eq!(answer.unwrap(), b"vUSB");

    // The next driver brings the device up again.
    let mut d = SimDriver::connect(&socket, options).unwrap();
    d.wait_event(WAIT).unwrap();
    d.submit(&bulk_in(3, 0x81, 64), &[], &[]).unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (3, 0));
}

/// QEMU reconnecting after the daemon restarted resumes the rings from their
/// used index, with requests on them the new daemon knows nothing of, some
/// perhaps used and reused already. The daemon serves none of them and asks
/// the driver to reset the device; after the reset all is well again.
#[test]
fn rings_resumed_by_a_reconnecting_front_end_get_restarted_not_replayed() {
    let (_dir, socket) = start_daemon();
    let options = linux_like();
    let mut d = driver_with_a_request_parked(&socket);

    d.reconnect(&socket).unwrap();
    assert_eq!(
        d.wait_event(WAIT).unwrap(),
        (EVT_RESTARTED, 0, 0),
        "the driver was not told that the device lost its requests"
    );
    d.submit(&bulk_in(3, 0x81, 64), &[], &[]).unwrap();
    let served = d.wait_transfer(Duration::from_millis(500));
    assert!(
        served.is_err(),
        "a request was served before the driver reset the device: {served:?}"
    );

    // The driver resets the device and sets it up again.
    drop(d);
    let mut d = SimDriver::connect(&socket, options).unwrap();
    assert_eq!(
        d.wait_event(WAIT).unwrap(),
        (EVT_CONNECT, 1, Speed::High as u8)
    );
    d.submit(&bulk_in(4, 0x81, 64), &[], &[]).unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (4, 0));
}

/// A paused and resumed VM: QEMU stops every ring and starts it again on
/// the same connection where the daemon said it stopped. The daemon had
/// dropped its requests, so it asks for a reset (§7.1); the `eventq`
/// buffers it had taken but not used must be offered again, or the
/// `RESTARTED` event has nothing to travel in.
#[test]
fn a_paused_vm_is_told_to_reset_on_a_buffer_it_stocked_before_the_pause() {
    let (_dir, socket) = start_daemon();
    let options = linux_like();
    let mut d = driver_with_a_request_parked(&socket);

    d.pause_and_resume().unwrap();
    assert_eq!(
        d.wait_event(WAIT).unwrap(),
        (EVT_RESTARTED, 0, 0),
        "the driver was not told that the device lost its requests"
    );

    drop(d);
    let mut d = SimDriver::connect(&socket, options).unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    d.submit(&bulk_in(3, 0x81, 64), &[], &[]).unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (3, 0));
}
