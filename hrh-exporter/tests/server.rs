//! The exporter over real TCP, driven by a minimal USB/IP client built on
//! the codec: device list, import rules, URB semantics, and bad clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hrh_exporter::device::{DeviceEvent, DeviceIdentity, EventSink, Urb, UrbResult, UsbDevice};
use hrh_exporter::registry::Registry;
use hrh_exporter::server;
use hrh_exporter::source::simulated::{SimKind, SimulatedDevice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use usbip_proto::{
    errno, op_code, op_status, CmdMessage, CmdSubmit, CmdUnlink, DeviceInfo, Direction, OpReply,
    OpRequest, RetMessage, RetSubmit, SetupPacket, UrbHeader, URB_HEADER_LEN,
};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(kinds: &[SimKind]) -> SocketAddr {
    let registry = Registry::new();
    for (i, kind) in kinds.iter().enumerate() {
        registry.add(Arc::new(SimulatedDevice::new(kind, i as u32 + 1).unwrap()));
    }
    serve(registry).await
}

async fn serve(registry: Registry) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, registry));
    addr
}

async fn op(addr: SocketAddr, req: OpRequest) -> (TcpStream, OpReply) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    req.encode(&mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let code = match req {
        OpRequest::DevList => op_code::REQ_DEVLIST,
        OpRequest::Import { .. } => op_code::REQ_IMPORT,
    };
    let mut buf = BytesMut::new();
    loop {
        if let Some(reply) = OpReply::decode(&mut buf, code).unwrap() {
            return (s, reply);
        }
        let n = tokio::time::timeout(TIMEOUT, s.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed before replying");
    }
}

/// An imported device: submits URBs and reads replies.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    devid: u32,
    directions: HashMap<u32, Direction>,
    next_seqnum: u32,
}

impl Client {
    async fn import(addr: SocketAddr, busid: &str) -> Client {
        let (stream, reply) = op(
            addr,
            OpRequest::Import {
                busid: busid.into(),
            },
        )
        .await;
        let OpReply::Import {
            status: 0,
            device: Some(dev),
        } = reply
        else {
            panic!("import failed: {reply:?}")
        };
        Client {
            stream,
            buf: BytesMut::new(),
            devid: dev.busnum << 16 | dev.devnum,
            directions: HashMap::new(),
            next_seqnum: 1,
        }
    }

    async fn send(&mut self, msg: CmdMessage) {
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn submit(
        &mut self,
        direction: Direction,
        ep: u32,
        setup: SetupPacket,
        len: u32,
        data: &[u8],
    ) -> u32 {
        let seqnum = self.next_seqnum;
        self.next_seqnum += 1;
        self.directions.insert(seqnum, direction);
        self.send(CmdMessage::Submit(CmdSubmit {
            header: UrbHeader {
                seqnum,
                devid: self.devid,
                direction,
                ep,
            },
            transfer_buffer_length: len,
            setup,
            data: Bytes::copy_from_slice(data),
            ..CmdSubmit::default()
        }))
        .await;
        seqnum
    }

    async fn unlink(&mut self, victim: u32) -> u32 {
        let seqnum = self.next_seqnum;
        self.next_seqnum += 1;
        self.send(CmdMessage::Unlink(CmdUnlink {
            header: UrbHeader {
                seqnum,
                devid: self.devid,
                direction: Direction::Out,
                ep: 0,
            },
            unlink_seqnum: victim,
        }))
        .await;
        seqnum
    }

    async fn recv(&mut self) -> RetMessage {
        loop {
            let dirs = &self.directions;
            if let Some(msg) = RetMessage::decode(&mut self.buf, |s| dirs.get(&s).copied()).unwrap()
            {
                return msg;
            }
            let n = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no reply in time")
                .unwrap();
            assert!(n > 0, "server closed the connection");
        }
    }

    async fn recv_submit(&mut self) -> RetSubmit {
        match self.recv().await {
            RetMessage::Submit(r) => r,
            other => panic!("expected RET_SUBMIT, got {other:?}"),
        }
    }

    async fn control_in(
        &mut self,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
        len: u16,
    ) -> RetSubmit {
        let setup = SetupPacket {
            request_type,
            request,
            value,
            index,
            length: len,
        };
        self.submit(Direction::In, 0, setup, len.into(), &[]).await;
        self.recv_submit().await
    }

    async fn control_out(
        &mut self,
        request_type: u8,
        request: u8,
        value: u16,
        index: u16,
    ) -> RetSubmit {
        let setup = SetupPacket {
            request_type,
            request,
            value,
            index,
            length: 0,
        };
        self.submit(Direction::Out, 0, setup, 0, &[]).await;
        self.recv_submit().await
    }

    async fn configure(&mut self) {
        let r = self.control_out(0x00, 0x09, 1, 0).await;
        assert_eq!(r.status, 0);
    }
}

/// Imports `busid` as soon as the exporter offers it again (a release is
/// noticed when the old connection's task ends, which takes a moment).
async fn import_when_free(addr: SocketAddr, busid: &str) -> Option<Client> {
    for _ in 0..50 {
        let (stream, reply) = op(
            addr,
            OpRequest::Import {
                busid: busid.into(),
            },
        )
        .await;
        if let OpReply::Import {
            status: 0,
            device: Some(dev),
        } = reply
        {
            return Some(Client {
                stream,
                buf: BytesMut::new(),
                devid: dev.busnum << 16 | dev.devnum,
                directions: HashMap::new(),
                next_seqnum: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A 48-byte URB header from its ten big-endian words and a zero setup packet.
fn raw_urb(words: [u32; 10]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .chain([0; 8])
        .collect()
}

async fn expect_closed(stream: &mut TcpStream) {
    let mut scratch = [0u8; 1024];
    loop {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("server kept the connection open"),
        }
    }
}

#[tokio::test]
async fn device_list_shows_every_dongle_with_its_interfaces() {
    let addr = start(&[SimKind::Sensor, SimKind::Loopback]).await;
    let (_, reply) = op(addr, OpRequest::DevList).await;
    let OpReply::DevList { status: 0, devices } = reply else {
        panic!("{reply:?}")
    };
    let ids: Vec<_> = devices
        .iter()
        .map(|(d, i)| (d.busid.as_str(), d.id_vendor, d.id_product, i.len()))
        .collect();
    assert_eq!(
        ids,
        vec![("1-1", 0x1209, 0x0001, 2), ("1-2", 0x1209, 0x0003, 1)]
    );
}

#[tokio::test]
async fn second_importer_is_refused_until_the_first_leaves() {
    let addr = start(&[SimKind::Loopback]).await;
    let first = Client::import(addr, "1-1").await;
    let (_, reply) = op(
        addr,
        OpRequest::Import {
            busid: "1-1".into(),
        },
    )
    .await;
    assert_eq!(
        reply,
        OpReply::Import {
            status: op_status::DEV_BUSY,
            device: None
        }
    );
    // An imported device is not offered to others.
    let (_, list) = op(addr, OpRequest::DevList).await;
    assert!(matches!(list, OpReply::DevList { devices, .. } if devices.is_empty()));
    drop(first);
    assert!(
        import_when_free(addr, "1-1").await.is_some(),
        "device never became importable again"
    );
}

#[tokio::test]
async fn unknown_bus_id_is_refused_with_nodev() {
    let addr = start(&[SimKind::Loopback]).await;
    let (_, reply) = op(
        addr,
        OpRequest::Import {
            busid: "9-9".into(),
        },
    )
    .await;
    assert_eq!(
        reply,
        OpReply::Import {
            status: op_status::NODEV,
            device: None
        }
    );
}

#[tokio::test]
async fn descriptors_and_bulk_data_flow_through_the_tunnel() {
    let addr = start(&[SimKind::Loopback]).await;
    let mut c = Client::import(addr, "1-1").await;
    let dev = c.control_in(0x80, 0x06, 0x0100, 0, 18).await;
    assert_eq!((dev.status, dev.actual_length), (0, 18));
    assert_eq!(&dev.data[8..12], &[0x09, 0x12, 0x03, 0x00]);
    // Before SET_CONFIGURATION the data endpoints do not exist.
    c.submit(Direction::In, 1, SetupPacket::default(), 64, &[])
        .await;
    assert_eq!(c.recv_submit().await.status, -errno::ESHUTDOWN);
    c.configure().await;
    c.submit(Direction::Out, 4, SetupPacket::default(), 5, b"hello")
        .await;
    let out = c.recv_submit().await;
    assert_eq!((out.status, out.actual_length, out.data.len()), (0, 5, 0));
    c.submit(Direction::In, 3, SetupPacket::default(), 512, &[])
        .await;
    let back = c.recv_submit().await;
    assert_eq!(&back.data[..], b"hello");
}

#[tokio::test]
async fn many_urbs_in_flight_complete_in_order_per_endpoint() {
    let addr = start(&[SimKind::Loopback]).await;
    let mut c = Client::import(addr, "1-1").await;
    c.configure().await;
    let mut seqnums = Vec::new();
    for _ in 0..32 {
        seqnums.push(
            c.submit(Direction::In, 1, SetupPacket::default(), 4096, &[])
                .await,
        );
    }
    let mut stream = Vec::new();
    for want in seqnums {
        let r = c.recv_submit().await;
        assert_eq!(r.header.seqnum, want);
        stream.extend_from_slice(&r.data);
    }
    let expected: Vec<u8> = (0..32 * 4096)
        .map(sim_dongles::loopback::pattern_byte)
        .collect();
    assert!(stream == expected, "source data reordered or corrupted");
}

#[tokio::test]
async fn unlink_of_a_waiting_urb_wins_and_suppresses_ret_submit() {
    let addr = start(&[SimKind::Loopback]).await;
    let mut c = Client::import(addr, "1-1").await;
    c.configure().await;
    // The loop endpoint has no data, so this URB waits.
    let victim = c
        .submit(Direction::In, 3, SetupPacket::default(), 512, &[])
        .await;
    let unlink = c.unlink(victim).await;
    match c.recv().await {
        RetMessage::Unlink(u) => {
            assert_eq!((u.header.seqnum, u.status), (unlink, -errno::ECONNRESET))
        }
        other => panic!("expected RET_UNLINK, got {other:?}"),
    }
    // No RET_SUBMIT for the victim follows: the next reply is for new work.
    c.submit(Direction::Out, 4, SetupPacket::default(), 2, b"ok")
        .await;
    let next = c.recv_submit().await;
    assert_ne!(next.header.seqnum, victim);
}

#[tokio::test]
async fn unlink_of_a_completed_urb_answers_zero() {
    let addr = start(&[SimKind::Loopback]).await;
    let mut c = Client::import(addr, "1-1").await;
    c.configure().await;
    let done = c
        .submit(Direction::In, 1, SetupPacket::default(), 64, &[])
        .await;
    assert_eq!(c.recv_submit().await.header.seqnum, done);
    let unlink = c.unlink(done).await;
    match c.recv().await {
        RetMessage::Unlink(u) => assert_eq!((u.header.seqnum, u.status), (unlink, 0)),
        other => panic!("expected RET_UNLINK, got {other:?}"),
    }
}

#[tokio::test]
async fn stall_then_clear_halt() {
    let addr = start(&[SimKind::Loopback]).await;
    let mut c = Client::import(addr, "1-1").await;
    c.configure().await;
    // SET_FEATURE(ENDPOINT_HALT) on EP 1 IN, then every transfer stalls.
    assert_eq!(c.control_out(0x02, 0x03, 0, 0x81).await.status, 0);
    c.submit(Direction::In, 1, SetupPacket::default(), 64, &[])
        .await;
    assert_eq!(c.recv_submit().await.status, -errno::EPIPE);
    let st = c.control_in(0x82, 0x00, 0, 0x81, 2).await;
    assert_eq!(&st.data[..], &[1, 0]);
    assert_eq!(c.control_out(0x02, 0x01, 0, 0x81).await.status, 0);
    c.submit(Direction::In, 1, SetupPacket::default(), 64, &[])
        .await;
    assert_eq!(c.recv_submit().await.status, 0);
}

/// Each kind of bad client loses its connection; a well-behaved client on
/// the same exporter keeps working and the device becomes importable again.
#[tokio::test]
async fn bad_clients_are_cut_off_and_others_keep_working() {
    let addr = start(&[SimKind::Loopback, SimKind::Sensor]).await;
    let mut good = Client::import(addr, "1-2").await;
    good.configure().await;

    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    expect_closed(&mut garbage).await;

    let mut wrong_version = TcpStream::connect(addr).await.unwrap();
    wrong_version
        .write_all(&[0x01, 0x06, 0x80, 0x05, 0, 0, 0, 0])
        .await
        .unwrap();
    expect_closed(&mut wrong_version).await;

    let mut truncated = TcpStream::connect(addr).await.unwrap();
    truncated.write_all(&[0x01, 0x11, 0x80]).await.unwrap();
    truncated.shutdown().await.unwrap();
    expect_closed(&mut truncated).await;

    // Raw headers the codec refuses to build: command, seqnum, devid,
    // direction, ep, flags, length, start_frame, packets, interval.
    let bad_urbs: Vec<Box<dyn Fn(u32) -> Vec<u8>>> = vec![
        // Unknown command 9.
        Box::new(|_| raw_urb([9, 1, 0, 0, 0, 0, 0, 0, 0, 0])),
        // A 2 GiB IN transfer.
        Box::new(|devid| raw_urb([1, 1, devid, 1, 1, 0, 0x7fff_ffff, 0, 0, 0])),
        // 100000 isochronous packets.
        Box::new(|devid| raw_urb([1, 1, devid, 1, 1, 0, 64, 0, 100_000, 0])),
        // An URB for a device this connection did not import.
        Box::new(|_| raw_urb([1, 1, 0x00ff_00ff, 1, 1, 0, 64, 0, 0, 0])),
    ];
    for make in bad_urbs {
        let mut bad = import_when_free(addr, "1-1").await.expect("not released");
        let bytes = make(bad.devid);
        bad.stream.write_all(&bytes).await.unwrap();
        expect_closed(&mut bad.stream).await;
        // Imported again on the next round: the claim was released.
    }

    // A client that disconnects with an URB half sent.
    let mut half = import_when_free(addr, "1-1").await.expect("not released");
    let mut out = BytesMut::new();
    CmdMessage::Submit(CmdSubmit {
        header: UrbHeader {
            seqnum: 1,
            devid: half.devid,
            direction: Direction::Out,
            ep: 2,
        },
        transfer_buffer_length: 4096,
        data: Bytes::from(vec![0u8; 4096]),
        ..CmdSubmit::default()
    })
    .encode(&mut out)
    .unwrap();
    half.stream.write_all(&out[..1000]).await.unwrap();
    drop(half);

    // The good client never noticed.
    let st = good.control_in(0xa1, 0x21, 0, 0, 7).await;
    assert_eq!((st.status, st.actual_length), (0, 7));
    // And the loopback is importable again.
    assert!(
        import_when_free(addr, "1-1").await.is_some(),
        "loopback not importable after bad clients"
    );
}

/// URBs left waiting by a client that vanished must not outlive it: if they
/// stayed queued in the device they would swallow the next importer's data.
#[tokio::test]
async fn a_vanished_clients_urbs_do_not_leak_into_the_next_import() {
    let addr = start(&[SimKind::Loopback]).await;
    let mut first = Client::import(addr, "1-1").await;
    first.configure().await;
    for _ in 0..4 {
        first
            .submit(Direction::In, 3, SetupPacket::default(), 512, &[])
            .await;
    }
    drop(first);

    let mut second = import_when_free(addr, "1-1")
        .await
        .expect("device never became importable again");
    second.configure().await;
    second
        .submit(Direction::Out, 4, SetupPacket::default(), 3, b"abc")
        .await;
    assert_eq!(second.recv_submit().await.status, 0);
    second
        .submit(Direction::In, 3, SetupPacket::default(), 512, &[])
        .await;
    assert_eq!(&second.recv_submit().await.data[..], b"abc");
}

/// A device that answers every IN URB at once, in the thread that submits
/// it, with as much data as asked; an URB to endpoint 15 makes it go away.
/// With a gate, an URB to endpoint 3 holds the submitting thread until the
/// gate lets it through.
#[derive(Default)]
struct Eager {
    events: Mutex<Option<EventSink>>,
    submitted: AtomicUsize,
    gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl std::fmt::Debug for Eager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Eager")
    }
}

impl UsbDevice for Eager {
    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            info: DeviceInfo {
                busid: "9-9".into(),
                busnum: 9,
                devnum: 9,
                ..DeviceInfo::default()
            },
            interfaces: Vec::new(),
        }
    }

    fn attach(&self, events: EventSink) {
        *self.events.lock().unwrap() = Some(events);
    }

    fn submit(&self, urb: Urb) {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let events = self.events.lock().unwrap().clone().expect("attached");
        if urb.endpoint & 0x0f == 15 {
            return events(DeviceEvent::Gone);
        }
        if urb.endpoint & 0x0f == 3 {
            if let Some(gate) = &*self.gate.lock().unwrap() {
                let _ = gate.recv();
            }
        }
        events(DeviceEvent::Completed(UrbResult {
            seqnum: urb.seqnum,
            data: Bytes::from(vec![0x5a; urb.buffer_len as usize]),
            actual_length: urb.buffer_len,
            ..UrbResult::default()
        }));
    }

    fn cancel(&self, _: u32) {}

    fn detach(&self) {
        *self.events.lock().unwrap() = None;
    }
}

/// A client that sends commands but never reads its replies must not make
/// the exporter hold ever more of them: once the socket takes no more, the
/// reply's write waits, the connection's reader waits for the writer, and
/// the client's writes stall instead.
#[tokio::test]
async fn a_client_that_does_not_read_its_replies_is_not_read_from_either() {
    let device = Arc::new(Eager::default());
    let registry = Registry::new();
    registry.add(device.clone());
    let addr = serve(registry).await;
    let mut client = Client::import(addr, "9-9").await;
    // 64 KiB asked per 48-byte command: unchecked, the replies would grow
    // without bound long before the client's writes stall.
    let mut commands = BytesMut::new();
    for seqnum in 1..=300_000u32 {
        CmdMessage::Submit(CmdSubmit {
            header: UrbHeader {
                seqnum,
                devid: client.devid,
                direction: Direction::In,
                ep: 1,
            },
            transfer_buffer_length: 64 * 1024,
            ..CmdSubmit::default()
        })
        .encode(&mut commands)
        .unwrap();
    }
    let stalled = tokio::time::timeout(Duration::from_secs(3), client.stream.write_all(&commands))
        .await
        .is_err();
    let submitted = device.submitted.load(Ordering::SeqCst);
    assert!(
        stalled,
        "the exporter read every command ({submitted} URBs) from a client that reads nothing"
    );
    // What the sockets hold, plus one read's worth of commands handled at
    // once.
    let submitted = device.submitted.load(Ordering::SeqCst);
    assert!(
        submitted < 2_000,
        "{submitted} URBs of 64 KiB submitted for a client that reads nothing"
    );
}

/// A large OUT URB arriving in many pieces, as a LAN delivers a pendrive's
/// 120 KiB writes, wakes the connection's reader once it is whole, not once
/// per piece: each wake-up of a user-space thread costs an address-space
/// switch, which usbip-host's kernel threads do not pay.
#[tokio::test]
async fn a_large_out_urb_arriving_in_pieces_wakes_the_reader_once_it_is_whole() {
    const PIECES: usize = 64;
    const PIECE: usize = 1024;
    let registry = Registry::new();
    registry.add(Arc::new(Eager::default()));
    let addr = serve(registry).await;
    let before = threads();
    let mut client = Client::import(addr, "9-9").await;
    client.stream.set_nodelay(true).unwrap();
    // The connection's thread: born at the import, named after this one.
    let readers = {
        let mut born = Vec::new();
        for _ in 0..100 {
            born = threads()
                .into_iter()
                .filter(|t| !before.contains(t) && comm(*t) == comm(gettid()))
                .collect();
            if !born.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        born
    };
    assert!(
        !readers.is_empty(),
        "no thread was started for the connection"
    );
    let woken = || -> u64 { readers.iter().map(|&t| voluntary_switches(t)).sum() };

    let mut wire = BytesMut::new();
    CmdMessage::Submit(CmdSubmit {
        header: UrbHeader {
            seqnum: 1,
            devid: client.devid,
            direction: Direction::Out,
            ep: 2,
        },
        transfer_buffer_length: (PIECES * PIECE) as u32,
        data: Bytes::from(vec![0xa5; PIECES * PIECE]),
        ..CmdSubmit::default()
    })
    .encode(&mut wire)
    .unwrap();
    client.directions.insert(1, Direction::Out);
    let start = woken();
    // The header with the first piece, then one piece every 2 ms.
    let (first, rest) = wire.split_at(wire.len() - (PIECES - 1) * PIECE);
    client.stream.write_all(first).await.unwrap();
    for piece in rest.chunks(PIECE) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        client.stream.write_all(piece).await.unwrap();
    }
    let reply = client.recv_submit().await;
    assert_eq!(
        (reply.status, reply.actual_length),
        (0, (PIECES * PIECE) as u32)
    );
    let wakeups = woken() - start;
    assert!(
        wakeups < 8,
        "the reader slept and woke {wakeups} times for one URB sent in {PIECES} pieces"
    );
}

/// The rest of a large URB already queued when the reader comes back for
/// it, and its last bytes arriving later: the reader must count what is
/// queued towards the bytes it waits for, or it waits forever.
#[tokio::test]
async fn a_large_out_urb_partly_queued_while_the_reader_was_busy_is_received() {
    const LEN: usize = 64 * 1024;
    let (open, gate) = std::sync::mpsc::channel();
    let device = Arc::new(Eager {
        gate: Mutex::new(Some(gate)),
        ..Eager::default()
    });
    let registry = Registry::new();
    registry.add(device);
    let addr = serve(registry).await;
    let mut client = Client::import(addr, "9-9").await;
    client.stream.set_nodelay(true).unwrap();
    let mut wire = BytesMut::new();
    let held = CmdSubmit {
        header: UrbHeader {
            seqnum: 1,
            devid: client.devid,
            direction: Direction::In,
            ep: 3,
        },
        transfer_buffer_length: 8,
        ..CmdSubmit::default()
    };
    CmdMessage::Submit(held).encode(&mut wire).unwrap();
    CmdMessage::Submit(CmdSubmit {
        header: UrbHeader {
            seqnum: 2,
            devid: client.devid,
            direction: Direction::Out,
            ep: 2,
        },
        transfer_buffer_length: LEN as u32,
        data: Bytes::from(vec![0xa5; LEN]),
        ..CmdSubmit::default()
    })
    .encode(&mut wire)
    .unwrap();
    client.directions.insert(1, Direction::In);
    client.directions.insert(2, Direction::Out);
    // The held URB and the large one's first 4 KiB: the reader takes them
    // and stops in the device. All but the last 1 KiB then queue up.
    let (first, rest) = wire.split_at(URB_HEADER_LEN * 2 + 4096);
    let (middle, last) = rest.split_at(rest.len() - 1024);
    client.stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.stream.write_all(middle).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.stream.write_all(last).await.unwrap();
    let replies = [client.recv_submit().await, client.recv_submit().await];
    assert_eq!(
        replies.map(|r| (r.header.seqnum, r.status, r.actual_length)),
        [(1, 0, 8), (2, 0, LEN as u32)]
    );
}

fn gettid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

fn threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn comm(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default()
}

/// How often the thread went to sleep and was woken again.
fn voluntary_switches(tid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A device that goes away ends the connection of its importer.
#[tokio::test]
async fn an_unplugged_device_ends_its_connection() {
    let registry = Registry::new();
    registry.add(Arc::new(Eager::default()));
    let addr = serve(registry).await;
    let mut client = Client::import(addr, "9-9").await;
    client
        .submit(Direction::In, 1, SetupPacket::default(), 8, &[])
        .await;
    assert_eq!(&client.recv_submit().await.data[..], &[0x5a; 8]);
    client
        .submit(Direction::In, 15, SetupPacket::default(), 8, &[])
        .await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(TIMEOUT, client.stream.read_to_end(&mut rest))
        .await
        .expect("the connection stayed open after the device went away");
    assert_eq!(
        n.unwrap(),
        0,
        "replies after the device went away: {rest:?}"
    );
}
