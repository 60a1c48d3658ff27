//! The USB/IP client engine against a real exporter (hrh-exporter with
//! simulated dongles, in process) and against a hand-written hostile server.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hrh_exporter::registry::Registry;
use hrh_exporter::server;
use hrh_exporter::source::simulated::{SimKind, SimulatedDevice};
use std::io::{Read, Write};
use usbip_proto::{
    op_status, speed, CmdMessage, CmdSubmit, DeviceInfo, OpReply, OpRequest, RetMessage, RetSubmit,
    RetUnlink, UrbHeader,
};
use vusb_backend::remote::{DeviceSelector, RemoteDevice};
use vusb_backend::transfer::{
    xfer_flags, Completion, IsoPacket, IsoResult, PortEvent, PortLayout, Ports, Speed, Status,
    Transfer, TransferKind, Upcall, UpcallSink,
};
use vusb_backend::usbip_client::UsbipClient;

const TIMEOUT: Duration = Duration::from_secs(10);

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
}

// ---------------------------------------------------------------------------
// What the client reports.

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Upcall>>,
    changed: Condvar,
}

impl UpcallSink for Recorder {
    fn upcall(&self, upcall: Upcall) {
        self.log.lock().unwrap().push(upcall);
        self.changed.notify_all();
    }
}

impl Recorder {
    /// Waits until `n` upcalls match `pred`; returns the log at that point.
    fn wait_n(&self, what: &str, n: usize, pred: impl Fn(&Upcall) -> bool) -> Vec<Upcall> {
        let deadline = Instant::now() + TIMEOUT;
        let mut log = self.log.lock().unwrap();
        loop {
            if log.iter().filter(|u| pred(u)).count() >= n {
                return log.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; log: {log:#?}"
            );
            log = self.changed.wait_timeout(log, left).unwrap().0;
        }
    }

    fn wait(&self, what: &str, pred: impl Fn(&Upcall) -> bool) -> Upcall {
        let log = self.wait_n(what, 1, &pred);
        log.into_iter().find(|u| pred(u)).unwrap()
    }

    fn completion(&self, id: u64) -> Completion {
        match self.wait(&format!("completion of {id}"), |u| completed(u, id)) {
            Upcall::Completed(c) => c,
            _ => unreachable!(),
        }
    }

    fn connected(&self, port: u8, times: usize) -> Speed {
        let log = self.wait_n(
            &format!("connect #{times} on port {port}"),
            times,
            |u| matches!(u, Upcall::Event(PortEvent::Connected { port: p, .. }) if *p == port),
        );
        log.iter()
            .find_map(|u| match u {
                Upcall::Event(PortEvent::Connected { port: p, speed }) if *p == port => {
                    Some(*speed)
                }
                _ => None,
            })
            .unwrap()
    }

    fn snapshot(&self) -> Vec<Upcall> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, pred: impl Fn(&Upcall) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|u| pred(u)).count()
    }

    fn position(&self, pred: impl Fn(&Upcall) -> bool) -> Option<usize> {
        self.log.lock().unwrap().iter().position(pred)
    }
}

fn completed(u: &Upcall, id: u64) -> bool {
    matches!(u, Upcall::Completed(c) if c.id == id)
}

fn disconnected(u: &Upcall, port: u8) -> bool {
    matches!(u, Upcall::Event(PortEvent::Disconnected { port: p }) if *p == port)
}

fn client(devices: Vec<RemoteDevice>) -> (UsbipClient, Arc<Recorder>) {
    init_logging();
    let recorder = Arc::new(Recorder::default());
    let layout = PortLayout::for_devices(devices.len());
    let client = UsbipClient::start(devices, layout, recorder.clone()).unwrap();
    (client, recorder)
}

fn remote(addr: SocketAddr, selector: DeviceSelector) -> RemoteDevice {
    RemoteDevice {
        host: addr.ip().to_string(),
        port: addr.port(),
        selector,
    }
}

fn busid(addr: SocketAddr, busid: &str) -> RemoteDevice {
    remote(addr, DeviceSelector::BusId(busid.into()))
}

// ---------------------------------------------------------------------------
// Transfers.

fn transfer(id: u64, port: u8, endpoint: u8, kind: TransferKind, length: u32) -> Transfer {
    Transfer::new(id, port, endpoint, kind, length)
}

fn control_in(id: u64, port: u8, setup: [u8; 8]) -> Transfer {
    let len = u16::from_le_bytes([setup[6], setup[7]]);
    Transfer {
        setup,
        ..transfer(id, port, 0x80, TransferKind::Control, len.into())
    }
}

fn control_out(id: u64, port: u8, setup: [u8; 8]) -> Transfer {
    Transfer {
        setup,
        ..transfer(id, port, 0x00, TransferKind::Control, 0)
    }
}

fn bulk_in(id: u64, port: u8, endpoint: u8, length: u32) -> Transfer {
    transfer(id, port, 0x80 | endpoint, TransferKind::Bulk, length)
}

fn bulk_out(id: u64, port: u8, endpoint: u8, data: &[u8]) -> Transfer {
    Transfer {
        out_data: Bytes::copy_from_slice(data),
        ..transfer(id, port, endpoint, TransferKind::Bulk, data.len() as u32)
    }
}

const GET_DEVICE_DESCRIPTOR: [u8; 8] = [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 18, 0];
const SET_CONFIGURATION_1: [u8; 8] = [0x00, 0x09, 0x01, 0x00, 0x00, 0x00, 0, 0];

/// The IN data of a completion, pieces placed at their offsets.
fn in_bytes(c: &Completion) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, piece) in &c.in_data {
        let end = *offset as usize + piece.len();
        if out.len() < end {
            out.resize(end, 0);
        }
        out[*offset as usize..end].copy_from_slice(piece);
    }
    out
}

fn ok(rec: &Recorder, id: u64) -> Completion {
    let c = rec.completion(id);
    assert_eq!(c.status, Status::Ok, "{c:?}");
    c
}

fn vid_pid(descriptor: &[u8]) -> (u16, u16) {
    assert_eq!(descriptor.len(), 18, "{descriptor:?}");
    (
        u16::from_le_bytes([descriptor[8], descriptor[9]]),
        u16::from_le_bytes([descriptor[10], descriptor[11]]),
    )
}

fn configure(c: &UsbipClient, rec: &Recorder, port: u8, id: u64) {
    c.submit(control_out(id, port, SET_CONFIGURATION_1));
    ok(rec, id);
}

// ---------------------------------------------------------------------------
// An in-process hrh-exporter.

struct Exporter {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Exporter {
    fn start(kinds: &[SimKind]) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), kinds)
    }

    /// Dropping the exporter kills it: its tasks and sockets go with the
    /// runtime.
    fn start_at(addr: SocketAddr, kinds: &[SimKind]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let registry = Registry::new();
        for (i, kind) in kinds.iter().enumerate() {
            registry.add(Arc::new(SimulatedDevice::new(kind, i as u32 + 1).unwrap()));
        }
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(server::serve(listener, registry));
        Self {
            addr,
            _runtime: runtime,
        }
    }
}

/// A server that accepts connections and never answers. (An address where
/// nothing listens could be taken by another test's exporter meanwhile.)
fn silent_server() -> StdListener {
    StdListener::bind("127.0.0.1:0").unwrap()
}

// ---------------------------------------------------------------------------
// Against the exporter.

#[test]
fn imports_by_bus_id_and_by_vid_pid_and_reads_descriptors() {
    let exporter = Exporter::start(&[SimKind::Sensor, SimKind::Loopback]);
    let (c, rec) = client(vec![
        busid(exporter.addr, "1-2"),
        remote(exporter.addr, DeviceSelector::VidPid(0x1209, 0x0001)),
    ]);
    // Both are high speed: the USB 2.0 ports 1 and 2 (of 2 + 2).
    assert_eq!(rec.connected(1, 1), Speed::High);
    assert_eq!(rec.connected(2, 1), Speed::High);
    c.submit(control_in(1, 1, GET_DEVICE_DESCRIPTOR));
    c.submit(control_in(2, 2, GET_DEVICE_DESCRIPTOR));
    let loopback = ok(&rec, 1);
    assert_eq!(loopback.actual_length, 18);
    assert_eq!(vid_pid(&in_bytes(&loopback)), (0x1209, 0x0003));
    assert_eq!(vid_pid(&in_bytes(&ok(&rec, 2))), (0x1209, 0x0001));
}

#[test]
fn bulk_data_loops_back_and_the_source_sends_its_pattern() {
    let exporter = Exporter::start(&[SimKind::Loopback]);
    let (c, rec) = client(vec![busid(exporter.addr, "1-1")]);
    rec.connected(1, 1);
    configure(&c, &rec, 1, 1);
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    c.submit(bulk_out(2, 1, 4, &data));
    assert_eq!(ok(&rec, 2).actual_length, 3000);
    c.submit(bulk_in(3, 1, 3, 4096));
    let back = ok(&rec, 3);
    assert_eq!(back.actual_length, 3000);
    assert!(in_bytes(&back) == data, "looped data differs");
    c.submit(bulk_in(4, 1, 1, 1000));
    let source = ok(&rec, 4);
    let expected: Vec<u8> = (0..1000).map(sim_dongles::loopback::pattern_byte).collect();
    assert_eq!(in_bytes(&source), expected);
}

#[test]
fn many_urbs_in_flight_each_complete_once_in_order() {
    let exporter = Exporter::start(&[SimKind::Loopback]);
    let (c, rec) = client(vec![busid(exporter.addr, "1-1")]);
    rec.connected(1, 1);
    configure(&c, &rec, 1, 1);
    const N: u64 = 64;
    const LEN: u32 = 512;
    for id in 100..100 + N {
        c.submit(bulk_in(id, 1, 1, LEN));
    }
    rec.wait_n(
        "all completions",
        N as usize,
        |u| matches!(u, Upcall::Completed(c) if (100..100 + N).contains(&c.id)),
    );
    // A later request on the same connection: anything duplicated would
    // have arrived before its answer.
    c.submit(control_in(999, 1, GET_DEVICE_DESCRIPTOR));
    ok(&rec, 999);
    let mut stream = Vec::new();
    for id in 100..100 + N {
        assert_eq!(rec.count(|u| completed(u, id)), 1, "id {id}");
        stream.extend(in_bytes(&ok(&rec, id)));
    }
    let expected: Vec<u8> = (0..N * u64::from(LEN))
        .map(sim_dongles::loopback::pattern_byte)
        .collect();
    assert!(stream == expected, "source data reordered or corrupted");
}

#[test]
fn cancel_of_a_waiting_in_wins_and_a_late_cancel_loses() {
    let exporter = Exporter::start(&[SimKind::Loopback]);
    let (c, rec) = client(vec![busid(exporter.addr, "1-1")]);
    rec.connected(1, 1);
    configure(&c, &rec, 1, 1);
    // The loop endpoint has no data: this waits until cancelled.
    c.submit(bulk_in(10, 1, 3, 512));
    c.cancel(1, 10);
    let cancelled = rec.completion(10);
    assert_eq!(
        (cancelled.status, cancelled.actual_length),
        (Status::Cancelled, 0)
    );
    // The cancelled request is gone on the device: it does not swallow
    // the next data.
    c.submit(bulk_out(11, 1, 4, b"abc"));
    ok(&rec, 11);
    c.submit(bulk_in(12, 1, 3, 512));
    assert_eq!(in_bytes(&ok(&rec, 12)), b"abc");
    // The source answers at once: a cancel right behind it loses, and the
    // data is not lost.
    c.submit(bulk_in(13, 1, 1, 64));
    c.cancel(1, 13);
    let lost = ok(&rec, 13);
    assert_eq!(lost.actual_length, 64);
    // Cancelling what is not in flight does nothing.
    c.cancel(1, 12);
    c.cancel(1, 12345);
    c.submit(control_in(14, 1, GET_DEVICE_DESCRIPTOR));
    ok(&rec, 14);
    for id in [10, 12, 13] {
        assert_eq!(rec.count(|u| completed(u, id)), 1, "id {id}");
    }
}

#[test]
fn submit_without_a_device_fails_at_once() {
    let exporter = Exporter::start(&[SimKind::Loopback]);
    // Device 0 on port 1 (its USB 3 twin is port 3); device 1 never
    // connects (port 2 / 4).
    let silent = silent_server();
    let (c, rec) = client(vec![
        busid(exporter.addr, "1-1"),
        busid(silent.local_addr().unwrap(), "1-1"),
    ]);
    rec.connected(1, 1);
    for (id, port) in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (6, 200)] {
        c.submit(control_in(id, port, GET_DEVICE_DESCRIPTOR));
        let r = rec.completion(id);
        assert_eq!((r.port, r.status), (port, Status::NoDevice));
    }
    c.reset_port(2, 7);
    let reset = rec.wait("reset of an empty port", |u| {
        matches!(u, Upcall::ResetDone { token: 7, .. })
    });
    assert_eq!(
        reset,
        Upcall::ResetDone {
            port: 2,
            token: 7,
            status: Status::NoDevice,
            speed: None
        }
    );
    // The connected device still works.
    c.submit(control_in(8, 1, GET_DEVICE_DESCRIPTOR));
    ok(&rec, 8);
}

#[test]
fn port_reset_shuts_down_requests_then_resets_the_device() {
    let exporter = Exporter::start(&[SimKind::Loopback]);
    let (c, rec) = client(vec![busid(exporter.addr, "1-1")]);
    rec.connected(1, 1);
    configure(&c, &rec, 1, 1);
    c.submit(bulk_in(10, 1, 3, 512));
    c.submit(bulk_in(11, 1, 3, 512));
    c.reset_port(1, 77);
    let done = rec.wait("reset done", |u| matches!(u, Upcall::ResetDone { .. }));
    assert_eq!(
        done,
        Upcall::ResetDone {
            port: 1,
            token: 77,
            status: Status::Ok,
            speed: Some(Speed::High)
        }
    );
    let reset_at = rec
        .position(|u| matches!(u, Upcall::ResetDone { .. }))
        .unwrap();
    for id in [10, 11] {
        let at = rec
            .position(|u| completed(u, id))
            .expect("request not completed");
        assert!(at < reset_at, "request {id} completed after the reset");
        assert_eq!(rec.completion(id).status, Status::Shutdown);
    }
    // The device really was reset: it is unconfigured again.
    c.submit(bulk_in(12, 1, 1, 64));
    assert_eq!(rec.completion(12).status, Status::Shutdown);
    configure(&c, &rec, 1, 13);
    c.submit(bulk_out(14, 1, 4, b"xyz"));
    ok(&rec, 14);
    c.submit(bulk_in(15, 1, 3, 512));
    assert_eq!(in_bytes(&ok(&rec, 15)), b"xyz");
    // The server's answers to the unlinks produced nothing more.
    for id in [10, 11] {
        assert_eq!(rec.count(|u| completed(u, id)), 1, "id {id}");
    }
    assert_eq!(rec.count(|u| disconnected(u, 1)), 0);
}

#[test]
fn a_killed_server_fails_requests_and_a_new_one_is_imported_again() {
    let exporter = Exporter::start(&[SimKind::Loopback]);
    let addr = exporter.addr;
    let (c, rec) = client(vec![busid(addr, "1-1")]);
    rec.connected(1, 1);
    configure(&c, &rec, 1, 1);
    c.submit(bulk_in(10, 1, 3, 512));
    c.submit(bulk_in(11, 1, 3, 512));
    drop(exporter);
    rec.wait("disconnect", |u| disconnected(u, 1));
    let gone = rec.position(|u| disconnected(u, 1)).unwrap();
    for id in [10, 11] {
        let at = rec
            .position(|u| completed(u, id))
            .expect("request not completed");
        assert!(at < gone, "request {id} completed after the disconnect");
        assert_eq!(rec.completion(id).status, Status::NoDevice);
    }
    // Nothing connected: requests fail at once.
    c.submit(control_in(12, 1, GET_DEVICE_DESCRIPTOR));
    assert_eq!(rec.completion(12).status, Status::NoDevice);

    let _again = Exporter::start_at(addr, &[SimKind::Loopback]);
    assert_eq!(rec.connected(1, 2), Speed::High);
    let log = rec.snapshot();
    let events: Vec<_> = log
        .iter()
        .filter_map(|u| match u {
            Upcall::Event(e) => Some(*e),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            PortEvent::Connected {
                port: 1,
                speed: Speed::High
            },
            PortEvent::Disconnected { port: 1 },
            PortEvent::Connected {
                port: 1,
                speed: Speed::High
            },
        ]
    );
    c.submit(control_in(13, 1, GET_DEVICE_DESCRIPTOR));
    assert_eq!(vid_pid(&in_bytes(&ok(&rec, 13))), (0x1209, 0x0003));
    for id in [10, 11] {
        assert_eq!(rec.count(|u| completed(u, id)), 1, "id {id}");
    }
}

// ---------------------------------------------------------------------------
// A hand-written server that says whatever a test wants.

const FAKE_DEVID: u32 = (1 << 16) | 2;

struct FakeServer {
    addr: SocketAddr,
    connections: mpsc::Receiver<StdStream>,
}

impl FakeServer {
    fn start() -> Self {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, connections) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        Self { addr, connections }
    }

    /// Accepts the next connection and grants its import of "1-1".
    fn accept_import(&self) -> FakeConn {
        let stream = self
            .connections
            .recv_timeout(TIMEOUT)
            .expect("the client did not connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut conn = FakeConn {
            stream,
            buf: BytesMut::new(),
        };
        let request = conn.read(|b| OpRequest::decode(b).unwrap());
        assert_eq!(
            request,
            OpRequest::Import {
                busid: "1-1".into()
            }
        );
        let mut out = BytesMut::new();
        OpReply::Import {
            status: op_status::OK,
            device: Some(DeviceInfo {
                path: "/sys/devices/fake/usb1/1-1".into(),
                busid: "1-1".into(),
                busnum: 1,
                devnum: 2,
                speed: speed::HIGH,
                id_vendor: 0x1209,
                id_product: 0x0003,
                ..DeviceInfo::default()
            }),
        }
        .encode(&mut out)
        .unwrap();
        conn.send(&out);
        conn
    }
}

struct FakeConn {
    stream: StdStream,
    buf: BytesMut,
}

impl FakeConn {
    fn read<T>(&mut self, mut decode: impl FnMut(&mut BytesMut) -> Option<T>) -> T {
        loop {
            if let Some(msg) = decode(&mut self.buf) {
                return msg;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("client sent nothing");
            assert!(n > 0, "client closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn recv(&mut self) -> CmdMessage {
        self.read(|b| CmdMessage::decode(b).unwrap())
    }

    fn recv_submit(&mut self) -> CmdSubmit {
        match self.recv() {
            CmdMessage::Submit(s) => s,
            other => panic!("expected CMD_SUBMIT, got {other:?}"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn reply(&mut self, msg: RetMessage) {
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        self.send(&out);
    }

    /// A successful IN reply with `data`.
    fn reply_in(&mut self, seqnum: u32, data: &[u8]) {
        self.reply(RetMessage::Submit(RetSubmit {
            header: reply_header(seqnum),
            actual_length: data.len() as u32,
            data: Bytes::copy_from_slice(data),
            ..RetSubmit::default()
        }));
    }
}

fn reply_header(seqnum: u32) -> UrbHeader {
    UrbHeader {
        seqnum,
        ..UrbHeader::default()
    }
}

/// A RET_SUBMIT as raw bytes, free to contradict itself: iso packets are
/// (offset, length, actual_length, status).
fn raw_ret_submit(
    seqnum: u32,
    direction: u32,
    actual_length: u32,
    data: &[u8],
    packets: &[(u32, u32, u32, i32)],
) -> Vec<u8> {
    let mut b = BytesMut::new();
    for w in [
        3,
        seqnum,
        0,
        direction,
        0,
        0,
        actual_length,
        0,
        packets.len() as u32,
        0,
    ] {
        b.put_u32(w);
    }
    b.put_bytes(0, 8);
    b.put_slice(data);
    for &(offset, length, actual, status) in packets {
        b.put_u32(offset);
        b.put_u32(length);
        b.put_u32(actual);
        b.put_i32(status);
    }
    b.to_vec()
}

fn fake_client() -> (FakeServer, FakeConn, UsbipClient, Arc<Recorder>) {
    let server = FakeServer::start();
    let (c, rec) = client(vec![busid(server.addr, "1-1")]);
    let conn = server.accept_import();
    assert_eq!(rec.connected(1, 1), Speed::High);
    (server, conn, c, rec)
}

fn iso_in(id: u64, length: u32, packets: &[(u32, u32)]) -> Transfer {
    Transfer {
        flags: xfer_flags::ISO_ASAP,
        interval: 1,
        iso_packets: packets
            .iter()
            .map(|&(offset, length)| IsoPacket { offset, length })
            .collect(),
        ..transfer(id, 1, 0x85, TransferKind::Isochronous, length)
    }
}

#[test]
fn commands_carry_transfers_as_vhci_sends_them() {
    let (_server, mut conn, c, rec) = fake_client();
    let mut t = bulk_in(1, 1, 1, 64);
    t.flags = xfer_flags::SHORT_NOT_OK;
    c.submit(t);
    let mut o = bulk_out(2, 1, 2, b"abc");
    o.flags = xfer_flags::ZERO_PACKET;
    c.submit(o);
    c.submit(iso_in(3, 16, &[(0, 8), (8, 8)]));
    let a = conn.recv_submit();
    assert_eq!(
        a.header,
        UrbHeader {
            seqnum: a.header.seqnum,
            devid: FAKE_DEVID,
            direction: usbip_proto::Direction::In,
            ep: 1
        }
    );
    assert_eq!(
        (
            a.transfer_flags,
            a.transfer_buffer_length,
            a.number_of_packets
        ),
        (0x201, 64, 0)
    );
    let b = conn.recv_submit();
    assert_eq!(
        (b.header.direction, b.header.ep),
        (usbip_proto::Direction::Out, 2)
    );
    assert_eq!((b.transfer_flags, &b.data[..]), (0x40, &b"abc"[..]));
    let i = conn.recv_submit();
    assert_eq!((i.header.ep, i.transfer_flags, i.interval), (5, 0x202, 1));
    assert_eq!(i.number_of_packets, 2);
    assert_eq!(i.iso_packets[1].offset, 8);
    assert!(i.iso_packets.iter().all(|p| p.actual_length == 0));
    let seqnums = [a.header.seqnum, b.header.seqnum, i.header.seqnum];
    assert!(seqnums[0] != seqnums[1] && seqnums[1] != seqnums[2] && seqnums[0] != seqnums[2]);

    // Replies in another order than the requests.
    conn.reply(RetMessage::Submit(RetSubmit {
        header: reply_header(b.header.seqnum),
        actual_length: 3,
        ..RetSubmit::default()
    }));
    conn.reply_in(a.header.seqnum, b"hello");
    let ca = ok(&rec, 1);
    assert_eq!((ca.actual_length, in_bytes(&ca)), (5, b"hello".to_vec()));
    assert_eq!(ok(&rec, 2).actual_length, 3);
    // Isochronous IN data arrives compacted and goes back to the packets'
    // offsets.
    conn.send(&raw_ret_submit(
        i.header.seqnum,
        0,
        8,
        b"abcdefgh",
        &[(0, 8, 3, 0), (8, 8, 5, 0)],
    ));
    let ci = ok(&rec, 3);
    assert_eq!(ci.actual_length, 8);
    assert_eq!(
        ci.in_data,
        vec![
            (0, Bytes::from_static(b"abc")),
            (8, Bytes::from_static(b"defgh"))
        ]
    );
    assert_eq!(
        ci.iso_results,
        vec![
            IsoResult {
                actual_length: 3,
                status: Status::Ok
            },
            IsoResult {
                actual_length: 5,
                status: Status::Ok
            }
        ]
    );
}

#[test]
fn a_reply_for_an_unknown_seqnum_is_skipped() {
    let (_server, mut conn, c, rec) = fake_client();
    c.submit(bulk_in(1, 1, 1, 64));
    let s = conn.recv_submit();
    // One without data, one that says it carries IN data, then the answer.
    conn.send(&raw_ret_submit(0xdead_beef, 0, 0, b"", &[]));
    conn.send(&raw_ret_submit(0xdead_bef0, 1, 4, b"junk", &[]));
    conn.reply_in(s.header.seqnum, b"ok");
    assert_eq!(in_bytes(&ok(&rec, 1)), b"ok");
    assert_eq!(rec.count(|u| disconnected(u, 1)), 0);
    // Still usable afterwards.
    c.submit(bulk_in(2, 1, 1, 64));
    let s = conn.recv_submit();
    conn.reply_in(s.header.seqnum, b"again");
    assert_eq!(in_bytes(&ok(&rec, 2)), b"again");
}

#[test]
fn too_much_data_fails_only_that_request() {
    let (_server, mut conn, c, rec) = fake_client();
    c.submit(bulk_in(1, 1, 1, 4));
    c.submit(bulk_in(2, 1, 1, 4));
    let a = conn.recv_submit();
    let b = conn.recv_submit();
    conn.send(&raw_ret_submit(a.header.seqnum, 0, 8, b"12345678", &[]));
    conn.reply_in(b.header.seqnum, b"1234");
    let bad = rec.completion(1);
    assert_eq!((bad.status, bad.actual_length), (Status::Protocol, 0));
    assert!(bad.in_data.is_empty());
    assert_eq!(in_bytes(&ok(&rec, 2)), b"1234");
    assert_eq!(rec.count(|u| disconnected(u, 1)), 0);
}

#[test]
fn inconsistent_iso_replies_fail_only_their_request() {
    let (_server, mut conn, c, rec) = fake_client();
    let packets = [(0, 8), (8, 8)];
    for id in 1..=5 {
        c.submit(iso_in(id, 16, &packets));
    }
    let s: Vec<u32> = (0..5).map(|_| conn.recv_submit().header.seqnum).collect();
    // One packet instead of two.
    conn.send(&raw_ret_submit(s[0], 0, 3, b"abc", &[(0, 8, 3, 0)]));
    // A packet longer than itself.
    conn.send(&raw_ret_submit(
        s[1],
        0,
        9,
        b"123456789",
        &[(0, 8, 9, 0), (8, 8, 0, 0)],
    ));
    // Packet lengths that do not add up to actual_length.
    conn.send(&raw_ret_submit(
        s[2],
        0,
        4,
        b"abcd",
        &[(0, 8, 1, 0), (8, 8, 1, 0)],
    ));
    // A packet longer than the request's packet, hiding behind a lie about
    // its own length.
    conn.send(&raw_ret_submit(
        s[3],
        0,
        9,
        b"123456789",
        &[(0, 16, 9, 0), (8, 8, 0, 0)],
    ));
    conn.send(&raw_ret_submit(
        s[4],
        0,
        2,
        b"ok",
        &[(0, 8, 1, 0), (8, 8, 1, -18)],
    ));
    for id in 1..=4 {
        let r = rec.completion(id);
        assert_eq!(r.status, Status::Protocol, "id {id}: {r:?}");
        assert!(r.in_data.is_empty());
        assert_eq!(r.iso_results.len(), 2, "one result per packet even so");
    }
    let good = ok(&rec, 5);
    assert_eq!(
        good.in_data,
        vec![(0, Bytes::from_static(b"o")), (8, Bytes::from_static(b"k"))]
    );
    assert_eq!(good.iso_results[1].status, Status::IsoPartial);
    assert_eq!(rec.count(|u| disconnected(u, 1)), 0);
}

#[test]
fn a_cancel_that_loses_delivers_the_real_result() {
    let (_server, mut conn, c, rec) = fake_client();
    c.submit(bulk_in(1, 1, 1, 64));
    let s = conn.recv_submit();
    c.cancel(1, 1);
    let CmdMessage::Unlink(u) = conn.recv() else {
        panic!("expected CMD_UNLINK")
    };
    assert_eq!(
        (u.unlink_seqnum, u.header.devid),
        (s.header.seqnum, FAKE_DEVID)
    );
    assert_ne!(u.header.seqnum, s.header.seqnum);
    // As usbip-host does when the URB completed first.
    conn.reply_in(s.header.seqnum, b"data");
    conn.reply(RetMessage::Unlink(RetUnlink {
        header: reply_header(u.header.seqnum),
        status: 0,
    }));
    assert_eq!(in_bytes(&ok(&rec, 1)), b"data");
    c.submit(bulk_in(2, 1, 1, 64));
    let s2 = conn.recv_submit();
    conn.reply_in(s2.header.seqnum, b"next");
    ok(&rec, 2);
    assert_eq!(rec.count(|u| completed(u, 1)), 1);

    // And when the cancel wins, only RET_UNLINK comes.
    c.submit(bulk_in(3, 1, 1, 64));
    let s3 = conn.recv_submit();
    c.cancel(1, 3);
    let CmdMessage::Unlink(u3) = conn.recv() else {
        panic!("expected CMD_UNLINK")
    };
    assert_eq!(u3.unlink_seqnum, s3.header.seqnum);
    conn.reply(RetMessage::Unlink(RetUnlink {
        header: reply_header(u3.header.seqnum),
        status: -104,
    }));
    assert_eq!(rec.completion(3).status, Status::Cancelled);
}

#[test]
fn garbage_drops_the_connection_and_the_client_reconnects() {
    let (server, mut conn, c, rec) = fake_client();
    c.submit(bulk_in(1, 1, 1, 64));
    conn.recv_submit();
    conn.send(&[0xde; 48]);
    rec.wait("disconnect", |u| disconnected(u, 1));
    let r = rec.completion(1);
    assert_eq!(r.status, Status::NoDevice);
    assert!(rec.position(|u| completed(u, 1)) < rec.position(|u| disconnected(u, 1)));
    // The client comes back by itself.
    let mut again = server.accept_import();
    assert_eq!(rec.connected(1, 2), Speed::High);
    c.submit(bulk_in(2, 1, 1, 64));
    let s = again.recv_submit();
    again.reply_in(s.header.seqnum, b"back");
    assert_eq!(in_bytes(&ok(&rec, 2)), b"back");
}
