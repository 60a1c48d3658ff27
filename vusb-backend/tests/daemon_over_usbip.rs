//! The whole backend without QEMU: a simulated guest driver on the
//! vhost-user socket, the daemon with its real USB/IP client, and an
//! in-process hrh-exporter with simulated dongles behind it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hrh_exporter::registry::Registry;
use hrh_exporter::server;
use hrh_exporter::source::simulated::{SimKind, SimulatedDevice};
use vusb_backend::remote::RemoteDevice;
use vusb_backend::sim_driver::{Options, SimDriver};
use vusb_backend::transfer::{PortLayout, Status};
use vusb_backend::usbip_client::UsbipClient;
use vusb_backend::vhost_user::VusbBackend;
use vusb_backend::virtio_usb::wire::{XferReq, EVT_CONNECT, EVT_DISCONNECT};
use vusb_backend::virtio_usb::{Controller, Limits};
use vusb_backend::{daemon, upcalls};

const WAIT: Duration = Duration::from_secs(15);

/// An hrh-exporter on its own runtime: dropping it closes every connection.
struct Exporter {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
}

impl Exporter {
    fn start(kind: SimKind, addr: &str) -> Exporter {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = runtime.block_on(async {
            // The port may linger briefly after a previous exporter.
            for _ in 0..100 {
                if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("cannot bind {addr}");
        });
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        registry.add(Arc::new(SimulatedDevice::new(&kind, 1).unwrap()));
        runtime.spawn(server::serve(listener, registry));
        Exporter { runtime, addr }
    }

    fn stop(self) {
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

fn start_backend(device: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vusb.sock");
    let devices: Vec<RemoteDevice> = vec![device.parse().unwrap()];
    let layout = PortLayout::for_devices(1);
    let (sender, receiver) = upcalls::channel().unwrap();
    let client = UsbipClient::start(devices, layout, sender).unwrap();
    let controller = Controller::new(
        Arc::new(client),
        layout,
        Limits {
            max_transfer: 1 << 20,
            max_iso_packets: 1024,
            iso: true,
        },
    );
    let backend = VusbBackend::new(controller, receiver);
    let path = socket.clone();
    std::thread::spawn(move || daemon::serve_forever(backend, &path));
    wait_for(&socket);
    (dir, socket)
}

fn wait_for(socket: &Path) {
    for _ in 0..500 {
        if socket.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", socket.display());
}

/// The dongle sits on port 1.
fn control(id: u64, setup: [u8; 8]) -> XferReq {
    XferReq::control(id, 1, setup)
}

fn bulk(id: u64, endpoint: u8, length: u32) -> XferReq {
    XferReq::bulk(id, 1, endpoint, length)
}

fn set_configuration(d: &mut SimDriver) {
    d.submit(&control(100, [0, 9, 1, 0, 0, 0, 0, 0]), &[], &[])
        .unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.id, done.resp.status), (100, 0));
}

#[test]
fn a_remote_loopback_dongle_works_through_the_daemon() {
    let exporter = Exporter::start(SimKind::Loopback, "127.0.0.1:0");
    let (_dir, socket) = start_backend(&format!("tcp://{}/1209:0003", exporter.addr));
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    let (kind, port, _speed) = d.wait_event(WAIT).unwrap();
    assert_eq!((kind, port), (EVT_CONNECT, 1));

    // GET_DESCRIPTOR(DEVICE): the dongle's own descriptor, from the network.
    d.submit(&control(1, [0x80, 6, 0, 1, 0, 0, 18, 0]), &[], &[])
        .unwrap();
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!((done.resp.status, done.resp.actual_length), (0, 18));
    assert_eq!(&done.data[8..12], &[0x09, 0x12, 0x03, 0x00]);

    set_configuration(&mut d);

    // OUT to the loop endpoint comes back IN, byte for byte.
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    d.submit(&bulk(3, 0x04, 4096), &[], &payload).unwrap();
    let out = d.wait_transfer(WAIT).unwrap();
    assert_eq!(
        (out.id, out.resp.status, out.resp.actual_length),
        (3, 0, 4096)
    );
    d.submit(&bulk(4, 0x83, 4096), &[], &[]).unwrap();
    let back = d.wait_transfer(WAIT).unwrap();
    assert_eq!((back.resp.status, back.resp.actual_length), (0, 4096));
    assert_eq!(back.data, payload);

    // Many in flight on the source endpoint, each with its pattern.
    for id in 10..74 {
        d.submit(&bulk(id, 0x81, 16384), &[], &[]).unwrap();
    }
    for _ in 10..74 {
        let done = d.wait_transfer(WAIT).unwrap();
        assert_eq!(done.resp.status, 0, "request {}", done.id);
        assert_eq!(done.resp.actual_length, 16384);
    }
    exporter.stop();
}

#[test]
fn losing_the_exporter_is_a_disconnect_and_its_return_a_connect() {
    let exporter = Exporter::start(SimKind::Loopback, "127.0.0.1:0");
    let addr = exporter.addr;
    let (_dir, socket) = start_backend(&format!("tcp://{addr}/1-1"));
    let mut d = SimDriver::connect(&socket, Options::default()).unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    set_configuration(&mut d);
    // A loop read with nothing to loop waits on the device.
    d.submit(&bulk(1, 0x83, 512), &[], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    exporter.stop();
    // Failed either by the dying exporter (the device went away) or by the
    // lost connection.
    let done = d.wait_transfer(WAIT).unwrap();
    assert_eq!(done.id, 1);
    assert!(
        [Status::NoDevice as u32, Status::Shutdown as u32].contains(&done.resp.status),
        "status {}",
        done.resp.status
    );
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_DISCONNECT);
    d.submit(&bulk(2, 0x81, 512), &[], &[]).unwrap();
    assert_eq!(
        d.wait_transfer(WAIT).unwrap().resp.status,
        Status::NoDevice as u32
    );

    let exporter = Exporter::start(SimKind::Loopback, &addr.to_string());
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    // A new device as far as the guest knows: configured again.
    set_configuration(&mut d);
    d.submit(&bulk(3, 0x81, 512), &[], &[]).unwrap();
    assert_eq!(d.wait_transfer(WAIT).unwrap().resp.status, 0);
    exporter.stop();
}

/// A paused VM is told to reset the device (§7.1), which abandons what was
/// in flight on the server. After the driver's reset and a port reset the
/// device answers again, as it did before the pause.
#[test]
fn after_a_vm_pause_and_the_drivers_reset_the_device_answers_again() {
    use vusb_backend::virtio_usb::wire::{CtrlReq, CTRL_PORT_RESET, EVT_RESTARTED};
    let exporter = Exporter::start(SimKind::Loopback, "127.0.0.1:0");
    let (_dir, socket) = start_backend(&format!("tcp://{}/1-1", exporter.addr));
    let options = Options {
        event_idx: true,
        ..Options::default()
    };
    let mut d = SimDriver::connect(&socket, options).unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    set_configuration(&mut d);
    // Loop reads with nothing to loop wait on the device.
    for id in 1..5 {
        d.submit(&bulk(id, 0x83, 512), &[], &[]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));

    d.pause_and_resume().unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_RESTARTED);
    drop(d);
    let mut d = SimDriver::connect(&socket, options).unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    let reset = CtrlReq {
        code: CTRL_PORT_RESET,
        port: 1,
        id: 0,
    };
    d.send_control(&reset).unwrap();
    assert_eq!(d.wait_control(WAIT).unwrap().0, 0, "port reset failed");
    d.submit(&control(5, [0x80, 6, 0, 1, 0, 0, 18, 0]), &[], &[])
        .unwrap();
    let done = d.wait_transfer(WAIT).expect("GET_DESCRIPTOR unanswered");
    assert_eq!((done.id, done.resp.status), (5, 0));
    set_configuration(&mut d);
    let payload = vec![0x5a; 512];
    d.submit(&bulk(6, 0x04, 512), &[], &payload).unwrap();
    assert_eq!(d.wait_transfer(WAIT).unwrap().resp.status, 0);
    d.submit(&bulk(7, 0x83, 512), &[], &[]).unwrap();
    let back = d.wait_transfer(WAIT).unwrap();
    assert_eq!((back.id, back.resp.status), (7, 0));
    assert_eq!(back.data, payload);
    exporter.stop();
}

/// A child process killed when dropped.
struct Process(std::process::Child);

impl Process {
    fn spawn(program: &str, args: &[&str]) -> Process {
        Process(
            std::process::Command::new(program)
                .args(args)
                .env("RUST_LOG", "debug")
                .spawn()
                .unwrap(),
        )
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// vusb-backend killed and started again behind vusb-keeper: the driver's
/// connection never breaks. The new backend is brought back to the
/// driver's setup, finds the rings further on than that setup says, and
/// asks for a reset (§7.1) on a buffer the driver stocked; after the reset,
/// on the same connection, the device works again.
#[test]
fn a_backend_restarted_behind_the_keeper_asks_for_a_reset_and_serves_again() {
    use vusb_backend::virtio_usb::wire::EVT_RESTARTED;
    let exporter = Exporter::start(SimKind::Loopback, "127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let backend_socket = dir.path().join("backend.sock");
    let keeper_socket = dir.path().join("keeper.sock");
    let device = format!("tcp://{}/1-1", exporter.addr);
    let backend_args = [
        "--socket-path",
        backend_socket.to_str().unwrap(),
        "--device",
        &device,
    ];
    let backend_bin = env!("CARGO_BIN_EXE_vusb-backend");
    let mut backend = Process::spawn(backend_bin, &backend_args);
    let _keeper = Process::spawn(
        env!("CARGO_BIN_EXE_vusb-keeper"),
        &[
            "--socket-path",
            keeper_socket.to_str().unwrap(),
            "--backend",
            backend_socket.to_str().unwrap(),
        ],
    );
    wait_for(&keeper_socket);
    let options = Options {
        event_idx: true,
        ..Options::default()
    };
    let mut d = SimDriver::connect(&keeper_socket, options).unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    set_configuration(&mut d);
    let payload = vec![0xa5; 512];
    d.submit(&bulk(1, 0x04, 512), &[], &payload).unwrap();
    assert_eq!(d.wait_transfer(WAIT).unwrap().resp.status, 0);
    d.submit(&bulk(2, 0x83, 512), &[], &[]).unwrap();
    assert_eq!(d.wait_transfer(WAIT).unwrap().data, payload);
    // Waits on the device when the backend dies.
    d.submit(&bulk(3, 0x83, 512), &[], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    backend.kill();
    let _ = std::fs::remove_file(&backend_socket);
    let _backend = Process::spawn(backend_bin, &backend_args);
    assert_eq!(
        d.wait_event(WAIT).unwrap().0,
        EVT_RESTARTED,
        "the restarted backend did not ask for a reset"
    );
    // Nothing is served until the reset.
    d.submit(&bulk(4, 0x04, 512), &[], &payload).unwrap();
    assert!(d.wait_transfer(Duration::from_millis(500)).is_err());

    d.reset_device().unwrap();
    assert_eq!(d.wait_event(WAIT).unwrap().0, EVT_CONNECT);
    set_configuration(&mut d);
    d.submit(&bulk(5, 0x04, 512), &[], &payload).unwrap();
    assert_eq!(d.wait_transfer(WAIT).unwrap().resp.status, 0);
    d.submit(&bulk(6, 0x83, 512), &[], &[]).unwrap();
    let back = d.wait_transfer(WAIT).unwrap();
    assert_eq!((back.id, back.data), (6, payload));
    exporter.stop();
}

/// Reads packets from a usbredir front-end until `want` picks one; `None`
/// at EOF or after [`WAIT`] without it.
fn read_packet_until(
    s: &mut (impl std::io::Read + ?Sized),
    want: &dyn Fn(&usbredir_proto::Packet) -> bool,
) -> Option<usbredir_proto::Packet> {
    use usbredir_proto::{Caps, Packet, Sender};
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some(p)) = Packet::decode(&mut buf, Caps::empty(), Sender::Host) {
            if want(&p) {
                return Some(p);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends a usb-guest's hello without capabilities (so 32-bit ids).
fn send_guest_hello(s: &mut impl std::io::Write) {
    use usbredir_proto::{Body, Caps, Hello, Packet, Sender};
    let mut out = bytes::BytesMut::new();
    Packet::new(0, Body::Hello(Hello::new("test usb-guest", Caps::empty())))
        .encode(Caps::empty(), Sender::Guest, &mut out)
        .unwrap();
    s.write_all(&out).unwrap();
}

fn is_device_connect(p: &usbredir_proto::Packet) -> bool {
    matches!(p.body, usbredir_proto::Body::DeviceConnect(_))
}

/// The usbredir front-end refuses a peer that breaks the protocol: that
/// connection is closed with a log line, and the next peer is served.
#[test]
fn usbredir_front_end_closes_a_bad_peer_and_serves_the_next() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use usbredir_proto::{Body, Packet};

    let exporter = Exporter::start(SimKind::Sensor, "127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redir.sock");
    let device = format!("tcp://{}/1-1", exporter.addr);
    let _backend = Process::spawn(
        env!("CARGO_BIN_EXE_vusb-backend"),
        &[
            "--frontend",
            "usbredir",
            "--socket-path",
            socket.to_str().unwrap(),
            "--device",
            &device,
        ],
    );
    wait_for(&socket);

    // An unknown packet type: the backend hangs up.
    let mut bad = UnixStream::connect(&socket).unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    let hello = read_packet_until(&mut bad, &|p| matches!(p.body, Body::Hello(_)));
    assert!(hello.is_some(), "no hello from the backend");
    bad.write_all(&[0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let mut rest = Vec::new();
    // EOF, not a timeout: the backend closed its end.
    bad.read_to_end(&mut rest)
        .expect("the connection stayed open");

    // A well-behaved peer gets the device.
    let mut good = UnixStream::connect(&socket).unwrap();
    good.set_read_timeout(Some(WAIT)).unwrap();
    send_guest_hello(&mut good);
    let Some(Packet {
        body: Body::DeviceConnect(c),
        ..
    }) = read_packet_until(&mut good, &is_device_connect)
    else {
        panic!("the device was not announced to the next peer")
    };
    assert_eq!((c.vendor_id, c.product_id), (0x1209, 0x0001));
    exporter.stop();
}

/// `--listen` serves usbredir over TCP, and a device lost on the USB/IP
/// side (the exporter gone) reaches the peer as device_disconnect, and its
/// return as a new device_connect on the same connection.
#[test]
fn usbredir_over_tcp_announces_the_device_its_loss_and_its_return() {
    use std::net::{TcpListener, TcpStream};
    use usbredir_proto::Body;

    let exporter = Exporter::start(SimKind::Sensor, "127.0.0.1:0");
    let exporter_addr = exporter.addr;
    // A free port, for the backend to listen on.
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let device = format!("tcp://{}/1-1", exporter.addr);
    let _backend = Process::spawn(
        env!("CARGO_BIN_EXE_vusb-backend"),
        &[
            "--frontend",
            "usbredir",
            "--listen",
            &listen.to_string(),
            "--device",
            &device,
        ],
    );
    let mut peer = (0..500)
        .find_map(|_| {
            TcpStream::connect(listen).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(10));
                None
            })
        })
        .expect("the backend never listened on TCP");
    peer.set_read_timeout(Some(WAIT)).unwrap();
    send_guest_hello(&mut peer);
    assert!(
        read_packet_until(&mut peer, &is_device_connect).is_some(),
        "the device was not announced over TCP"
    );

    exporter.stop();
    let gone = read_packet_until(&mut peer, &|p| matches!(p.body, Body::DeviceDisconnect));
    assert!(gone.is_some(), "the device's loss was not announced");

    // The USB/IP client reconnects with backoff; the device comes back.
    let exporter = Exporter::start(SimKind::Sensor, &exporter_addr.to_string());
    assert!(
        read_packet_until(&mut peer, &is_device_connect).is_some(),
        "the device's return was not announced"
    );
    exporter.stop();
}
