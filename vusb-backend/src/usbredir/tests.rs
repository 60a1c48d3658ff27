//! The session through whole conversations: QEMU's packets go through the
//! codec on their way in, every packet sent back must encode and decode
//! under the capabilities in force, and a scripted device answers the
//! standard requests on endpoint 0 from a fixed descriptor set (the
//! CDC-ACM-like device of `descriptors::tests`: interrupt IN 0x83 and OUT
//! 0x03, bulk IN 0x81 and OUT 0x02, and isochronous IN 0x84 and OUT 0x05 in
//! alternate setting 1 of interface 1). Everything else the device does is up to each test.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use usbredir_proto::{
    ep_index, ep_type, speed, status, Body, BulkPacket, Cap, Caps, ControlPacket, Hello,
    InterruptPacket, IsoPacket, Packet, Sender,
};

use super::descriptors::tests::{config, DEVICE};
use super::*;
use crate::transfer::{Completion, PortEvent, Speed, Status, Transfer, TransferKind, Upcall};

/// What QEMU announces: usb-redir's own capabilities plus
/// device_disconnect_ack, which usbredirparser adds for a usb-guest.
const QEMU_CAPS: Caps = Caps::empty()
    .with(Cap::ConnectDeviceVersion)
    .with(Cap::Filter)
    .with(Cap::EpInfoMaxPacketSize)
    .with(Cap::Ids64)
    .with(Cap::BulkLength32)
    .with(Cap::BulkReceiving)
    .with(Cap::DeviceDisconnectAck);

const PORT: Port = 1;

/// The scripted device's state: what its standard requests change.
#[derive(Debug, Default)]
struct FakeDevice {
    configuration: u8,
    alts: HashMap<u8, u8>,
    /// Stall GET_DESCRIPTOR(DEVICE).
    broken: bool,
}

impl FakeDevice {
    fn new() -> Self {
        Self {
            configuration: 1,
            ..Self::default()
        }
    }

    /// The answer to a standard request on endpoint 0, or `None` for
    /// anything else.
    fn answer(&mut self, t: &Transfer) -> Option<Completion> {
        if t.kind != TransferKind::Control || t.endpoint & 0x0f != 0 {
            return None;
        }
        let s = t.setup;
        let value = u16::from_le_bytes([s[2], s[3]]);
        let index = u16::from_le_bytes([s[4], s[5]]);
        let length = usize::from(u16::from_le_bytes([s[6], s[7]]));
        let data = match (s[0], s[1]) {
            (0x80, 6) => match value {
                0x0100 if self.broken => return Some(done(t.id, Status::Stall, &[])),
                0x0100 => DEVICE.to_vec(),
                0x0200 => config(),
                _ => return Some(done(t.id, Status::Stall, &[])),
            },
            (0x80, 8) => vec![self.configuration],
            (0x81, 10) => vec![self.alts.get(&(index as u8)).copied().unwrap_or(0)],
            (0x00, 9) => {
                self.configuration = value as u8;
                self.alts.clear();
                Vec::new()
            }
            (0x01, 11) => {
                self.alts.insert(index as u8, value as u8);
                Vec::new()
            }
            _ => return None,
        };
        Some(done(t.id, Status::Ok, &data[..data.len().min(length)]))
    }
}

/// A completion of transfer `tag`; `data` is IN data.
fn done(tag: u64, status: Status, data: &[u8]) -> Completion {
    Completion {
        actual_length: data.len() as u32,
        in_data: if data.is_empty() {
            Vec::new()
        } else {
            vec![(0, Bytes::copy_from_slice(data))]
        },
        ..Completion::failed(PORT, tag, status)
    }
}

/// An OUT transfer that sent `length` bytes.
fn sent_out(tag: u64, length: u32) -> Completion {
    Completion {
        actual_length: length,
        ..Completion::failed(PORT, tag, Status::Ok)
    }
}

struct Harness {
    s: Session,
    dev: FakeDevice,
    /// The transfers the scripted device answered, in order.
    answered: Vec<Transfer>,
}

impl Harness {
    fn new() -> Self {
        Self::with_caps(DEFAULT_CAPS)
    }

    fn with_caps(caps: Caps) -> Self {
        Self::with_session(Session::new(caps))
    }

    fn with_session(mut s: Session) -> Self {
        let hello = s.start();
        assert!(hello.to_bytes(Caps::empty(), Sender::Host).is_ok());
        Self {
            s,
            dev: FakeDevice::new(),
            answered: Vec::new(),
        }
    }

    /// QEMU's hello.
    fn hello(&mut self, caps: Caps) -> Vec<Action> {
        let hello = Hello::new("qemu usb-redir guest 9.2.0", caps);
        self.guest(0, Body::Hello(hello))
    }

    /// A packet from QEMU, through the codec.
    fn guest(&mut self, id: u64, body: Body) -> Vec<Action> {
        let caps = self.s.caps();
        let bytes = Packet::new(id, body)
            .to_bytes(caps, Sender::Guest)
            .expect("QEMU's packet encodes");
        let mut buf = BytesMut::from(&bytes[..]);
        let packet = Packet::decode(&mut buf, caps, Sender::Guest)
            .expect("and decodes")
            .expect("whole");
        let actions = self.s.on_packet(packet);
        self.settle(actions)
    }

    fn upcall(&mut self, upcall: Upcall) -> Vec<Action> {
        let actions = self.s.on_upcall(upcall);
        self.settle(actions)
    }

    fn complete(&mut self, c: Completion) -> Vec<Action> {
        self.upcall(Upcall::Completed(c))
    }

    fn connect(&mut self, port: Port, speed: Speed) -> Vec<Action> {
        self.upcall(Upcall::Event(PortEvent::Connected { port, speed }))
    }

    /// Lets the scripted device answer what it can, feeding its answers
    /// back, and returns the rest in order. Every packet for QEMU must
    /// survive the codec.
    fn settle(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut queue: VecDeque<Action> = actions.into();
        let mut left = Vec::new();
        while let Some(action) = queue.pop_front() {
            match &action {
                Action::Send(p) => {
                    let caps = match p.body {
                        Body::Hello(_) => Caps::empty(),
                        _ => self.s.caps(),
                    };
                    let bytes = p.to_bytes(caps, Sender::Host).expect("our packet encodes");
                    let mut buf = BytesMut::from(&bytes[..]);
                    let back = Packet::decode(&mut buf, caps, Sender::Host)
                        .expect("and decodes")
                        .expect("whole");
                    assert_eq!(&back, p);
                }
                Action::Submit(t) => {
                    if let Some(c) = self.dev.answer(t) {
                        self.answered.push(t.clone());
                        queue.extend(self.s.on_upcall(Upcall::Completed(c)));
                        continue;
                    }
                }
                _ => {}
            }
            left.push(action);
        }
        left
    }

    /// Hellos exchanged and the device announced.
    fn ready() -> Self {
        Self::ready_with(Session::new(DEFAULT_CAPS))
    }

    fn ready_with(session: Session) -> Self {
        let mut h = Self::with_session(session);
        h.hello(QEMU_CAPS);
        let announced = h.connect(PORT, Speed::High);
        assert_eq!(sent(&announced).len(), 3);
        assert!(h.s.announced());
        h
    }

    /// Starts interrupt receiving on 0x83 and returns the stream's tags.
    fn receive_interrupts(&mut self) -> Vec<u64> {
        let out = self.guest(0, Body::StartInterruptReceiving { endpoint: 0x83 });
        submitted(&out).iter().map(|t| t.id).collect()
    }
}

fn sent(actions: &[Action]) -> Vec<(u64, Body)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some((p.id, p.body.clone())),
            _ => None,
        })
        .collect()
}

fn submitted(actions: &[Action]) -> Vec<Transfer> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Submit(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn cancelled(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { tag, .. } => Some(*tag),
            _ => None,
        })
        .collect()
}

fn bulk(endpoint: u8, length: u32, data: &'static [u8]) -> Body {
    Body::Bulk(BulkPacket {
        endpoint,
        status: 0,
        length,
        stream_id: 0,
        data: Bytes::from_static(data),
    })
}

fn bulk_reply(endpoint: u8, status: u8, length: u32, data: &'static [u8]) -> Body {
    Body::Bulk(BulkPacket {
        endpoint,
        status,
        length,
        stream_id: 0,
        data: Bytes::from_static(data),
    })
}

#[test]
fn our_hello_comes_first_and_the_caps_are_negotiated() {
    let mut s = Session::new(DEFAULT_CAPS.with(Cap::BulkStreams));
    assert_eq!(
        s.start(),
        Packet::new(0, Body::Hello(Hello::new(VERSION, DEFAULT_CAPS)))
    );
    assert_eq!(s.caps(), Caps::empty());
    let qemu = Hello::new("qemu", QEMU_CAPS.with(Cap::BulkStreams));
    assert_eq!(s.on_packet(Packet::new(0, Body::Hello(qemu.clone()))), []);
    assert_eq!(s.caps(), QEMU_CAPS);
    assert_eq!(s.complaints(), 0);

    // A caller that forgets start() still sends the hello first.
    let mut s = Session::new(DEFAULT_CAPS);
    let out = s.on_packet(Packet::new(0, Body::Hello(qemu)));
    assert!(
        matches!(&out[..], [Action::Send(Packet { body: Body::Hello(h), .. })] if h.caps() == DEFAULT_CAPS)
    );
}

#[test]
fn nothing_but_the_hello_before_the_hello() {
    let mut s = Session::new(DEFAULT_CAPS);
    s.start();
    let out = s.on_packet(Packet::new(1, Body::Reset));
    assert!(matches!(&out[..], [Action::Close(why)] if why.contains("reset before the hello")));
    assert_eq!(s.complaints(), 1);
    // Closed: nothing more happens.
    assert_eq!(
        s.on_packet(Packet::new(0, Body::Hello(Hello::new("q", QEMU_CAPS)))),
        []
    );
    let event = Upcall::Event(PortEvent::Connected {
        port: 1,
        speed: Speed::High,
    });
    assert_eq!(s.on_upcall(event), []);

    // A device that arrives first is read at once but announced only
    // after QEMU's hello.
    let mut h = Harness::new();
    let out = h.connect(PORT, Speed::High);
    assert_eq!(out, []);
    assert_eq!(h.answered.len(), 4);
    assert!(!h.s.announced());
    let out = h.hello(QEMU_CAPS);
    let kinds: Vec<u32> = sent(&out).iter().map(|(_, b)| b.packet_type()).collect();
    use usbredir_proto::packet_type as t;
    assert_eq!(kinds, [t::INTERFACE_INFO, t::EP_INFO, t::DEVICE_CONNECT]);
}

#[test]
fn the_device_is_announced_with_its_interfaces_and_endpoints() {
    let mut h = Harness::new();
    h.hello(QEMU_CAPS);
    let out = h.connect(PORT, Speed::High);
    let setups: Vec<[u8; 8]> = h.answered.iter().map(|t| t.setup).collect();
    let total = (config().len() as u16).to_le_bytes();
    assert_eq!(
        setups,
        [
            [0x80, 6, 0, 1, 0, 0, 18, 0],
            [0x80, 8, 0, 0, 0, 0, 1, 0],
            [0x80, 6, 0, 2, 0, 0, 9, 0],
            [0x80, 6, 0, 2, 0, 0, total[0], total[1]],
        ]
    );
    assert!(h
        .answered
        .iter()
        .all(|t| t.port == PORT && t.endpoint == 0x80));

    let sent = sent(&out);
    let [(0, Body::InterfaceInfo(i)), (0, Body::EpInfo(e)), (0, Body::DeviceConnect(d))] =
        &sent[..]
    else {
        panic!("{sent:?}")
    };
    assert_eq!(i.interface_count, 2);
    assert_eq!(i.interface[..2], [0, 1]);
    assert_eq!(i.interface_class[..2], [0x02, 0x0a]);
    assert_eq!(i.interface_subclass[..2], [0x02, 0x00]);
    assert_eq!(i.interface_protocol[..2], [0x01, 0x00]);

    let mps = e.max_packet_size.expect("negotiated");
    let ep = |a: u8| {
        let i = ep_index(a);
        (e.ep_type[i], e.interval[i], e.interface[i], mps[i])
    };
    assert_eq!(ep(0x00), (ep_type::CONTROL, 0, 0, 0));
    assert_eq!(ep(0x80), (ep_type::CONTROL, 0, 0, 0));
    assert_eq!(ep(0x83), (ep_type::INTERRUPT, 10, 0, 16));
    assert_eq!(ep(0x81), (ep_type::BULK, 0, 1, 512));
    assert_eq!(ep(0x02), (ep_type::BULK, 0, 1, 512));
    assert_eq!(ep(0x84).0, ep_type::INVALID);
    assert_eq!(e.max_streams, None);

    assert_eq!(
        *d,
        usbredir_proto::DeviceConnect {
            speed: speed::HIGH,
            device_class: 2,
            device_subclass: 0,
            device_protocol: 0,
            vendor_id: 0x1234,
            product_id: 0x5678,
            device_version_bcd: Some(0x0201),
        }
    );
}

#[test]
fn a_superspeed_device_on_its_own_port_and_an_old_peer_without_caps() {
    let mut h = Harness::new();
    // A peer from before the capabilities: the layouts shrink to match.
    h.hello(Caps::empty());
    let out = h.connect(2, Speed::SuperPlus);
    assert!(h.answered.iter().all(|t| t.port == 2));
    assert_eq!(h.s.port(), Some(2));
    let sent = sent(&out);
    let (Body::EpInfo(e), Body::DeviceConnect(d)) = (&sent[1].1, &sent[2].1) else {
        panic!("{sent:?}")
    };
    assert_eq!(e.max_packet_size, None);
    assert_eq!((d.speed, d.device_version_bcd), (speed::SUPER, None));
    let out = h.guest(5, bulk(0x81, 64, b""));
    assert_eq!(submitted(&out)[0].port, 2);
}

#[test]
fn a_control_in_get_descriptor_is_answered_with_the_data() {
    let mut h = Harness::ready();
    let get = ControlPacket::from_setup([0x80, 6, 0, 1, 0, 0, 18, 0]);
    let out = h.guest(7, Body::Control(get.clone()));
    let t = h.answered.last().unwrap();
    assert_eq!(
        (t.endpoint, t.kind, t.length, t.setup),
        (
            0x80,
            TransferKind::Control,
            18,
            [0x80, 6, 0, 1, 0, 0, 18, 0]
        )
    );
    let reply = ControlPacket {
        status: status::SUCCESS,
        data: Bytes::from_static(&DEVICE),
        ..get
    };
    assert_eq!(sent(&out), [(7, Body::Control(reply))]);
    assert_eq!(h.s.in_flight(), 0);

    // A class request with OUT data (CDC SET_LINE_CODING): the device
    // takes the 7 bytes, the answer reports them without data.
    let mut set = ControlPacket::from_setup([0x21, 0x20, 0, 0, 0, 0, 7, 0]);
    set.data = Bytes::from_static(&[0x80, 0x25, 0, 0, 0, 0, 8]);
    let out = h.guest(8, Body::Control(set.clone()));
    let [t] = &submitted(&out)[..] else { panic!() };
    assert_eq!((t.endpoint, t.length, &t.out_data), (0x00, 7, &set.data));
    assert_eq!(t.setup, [0x21, 0x20, 0, 0, 0, 0, 7, 0]);
    let out = h.complete(sent_out(t.id, 7));
    let reply = ControlPacket {
        data: Bytes::new(),
        ..set
    };
    assert_eq!(sent(&out), [(8, Body::Control(reply))]);
}

#[test]
fn bulk_out_then_bulk_in() {
    let mut h = Harness::ready();
    let out = h.guest(10, bulk(0x02, 5, b"hello"));
    let [t] = &submitted(&out)[..] else { panic!() };
    assert_eq!(
        (t.port, t.endpoint, t.kind, t.length, &t.out_data[..]),
        (PORT, 0x02, TransferKind::Bulk, 5, &b"hello"[..])
    );
    assert_ne!(t.id, 10, "the device sees a tag, not QEMU's id");
    assert_eq!(h.s.in_flight(), 1);
    let out = h.complete(sent_out(t.id, 5));
    assert_eq!(sent(&out), [(10, bulk_reply(0x02, 0, 5, b""))]);

    // 100000 bytes asked for: 32-bit bulk lengths are negotiated.
    let out = h.guest(11, bulk(0x81, 100_000, b""));
    let [t] = &submitted(&out)[..] else { panic!() };
    assert_eq!((t.endpoint, t.length, t.out_data.len()), (0x81, 100_000, 0));
    let out = h.complete(done(t.id, Status::Ok, b"abc"));
    assert_eq!(sent(&out), [(11, bulk_reply(0x81, 0, 3, b"abc"))]);

    // A device error and a device that sends more than asked for.
    let out = h.guest(12, bulk(0x81, 2, b""));
    let tag = submitted(&out)[0].id;
    let out = h.complete(done(tag, Status::Stall, &[]));
    assert_eq!(sent(&out), [(12, bulk_reply(0x81, status::STALL, 0, b""))]);
    let out = h.guest(13, bulk(0x81, 2, b""));
    let tag = submitted(&out)[0].id;
    let out = h.complete(done(tag, Status::Ok, b"abc"));
    assert_eq!(
        sent(&out),
        [(13, bulk_reply(0x81, status::IOERROR, 0, b""))]
    );
    assert_eq!(h.s.in_flight(), 0);
}

#[test]
fn interrupt_out_is_answered_with_its_length_and_its_id_may_repeat() {
    let mut h = Harness::ready();
    let packet = |length: u16, data: &'static [u8], status| {
        Body::Interrupt(InterruptPacket {
            endpoint: 0x03,
            status,
            length,
            data: Bytes::from_static(data),
        })
    };
    // QEMU reports interrupt OUT done at once and may reuse the id while
    // the device still has the first.
    let first = submitted(&h.guest(60, packet(3, b"abc", 0)));
    let second = submitted(&h.guest(60, packet(2, b"de", 0)));
    assert_eq!(h.s.complaints(), 0);
    let (a, b) = (&first[0], &second[0]);
    assert_eq!(
        (a.endpoint, a.kind, a.length, a.interval, &a.out_data[..]),
        (0x03, TransferKind::Interrupt, 3, 10, &b"abc"[..])
    );
    assert_eq!(h.s.in_flight(), 2);
    let out = h.complete(sent_out(b.id, 2));
    assert_eq!(sent(&out), [(60, packet(2, b"", 0))]);
    let out = h.complete(done(a.id, Status::Timeout, &[]));
    assert_eq!(sent(&out), [(60, packet(0, b"", status::TIMEOUT))]);
    // More than the endpoint's 8-byte packets.
    let out = h.guest(61, packet(9, b"123456789", 0));
    assert_eq!(sent(&out), [(61, packet(0, b"", status::INVAL))]);
    assert_eq!(h.s.complaints(), 1);
}

/// Interrupt transfers a stream keeps outstanding by default.
const KEPT: usize = super::streams::INTERRUPT_TRANSFERS as usize;

#[test]
fn interrupt_receiving_keeps_the_configured_transfers_outstanding() {
    for (asked, kept) in [(2, 2), (16, 16), (0, 1)] {
        let mut h = Harness::ready_with(Session::new(DEFAULT_CAPS).with_interrupt_transfers(asked));
        assert_eq!(h.receive_interrupts().len(), kept, "asked for {asked}");
    }
}

#[test]
fn interrupt_receiving_turns_completions_into_interrupt_packets() {
    let mut h = Harness::ready();
    let out = h.guest(3, Body::StartInterruptReceiving { endpoint: 0x83 });
    let transfers = submitted(&out);
    assert_eq!(transfers.len(), KEPT);
    for t in &transfers {
        assert_eq!(
            (t.endpoint, t.kind, t.length, t.interval),
            (0x83, TransferKind::Interrupt, 16, 10)
        );
    }
    let status_ok = Body::InterruptReceivingStatus {
        status: status::SUCCESS,
        endpoint: 0x83,
    };
    assert_eq!(sent(&out), [(3, status_ok.clone())]);

    let packet = |status, data: &'static [u8]| {
        Body::Interrupt(InterruptPacket {
            endpoint: 0x83,
            status,
            length: data.len() as u16,
            data: Bytes::from_static(data),
        })
    };
    let out = h.complete(done(transfers[0].id, Status::Ok, &[1, 2]));
    assert_eq!(sent(&out), [(0, packet(0, &[1, 2]))]);
    let again = submitted(&out);
    assert_eq!(again.len(), 1, "resubmitted");
    let out = h.complete(done(transfers[1].id, Status::Ok, &[3]));
    assert_eq!(sent(&out), [(1, packet(0, &[3]))]);
    // An error is passed on as an empty packet and the polling goes on.
    let out = h.complete(done(transfers[2].id, Status::Protocol, &[]));
    assert_eq!(sent(&out), [(2, packet(status::IOERROR, &[]))]);
    assert_eq!(submitted(&out).len(), 1);

    // Starting it twice is an error of QEMU's.
    let out = h.guest(4, Body::StartInterruptReceiving { endpoint: 0x83 });
    let inval = Body::InterruptReceivingStatus {
        status: status::INVAL,
        endpoint: 0x83,
    };
    assert_eq!((sent(&out), submitted(&out).len()), (vec![(4, inval)], 0));
    assert_eq!(h.s.complaints(), 1);

    // Stop: every outstanding transfer is cancelled; late answers vanish.
    let out = h.guest(5, Body::StopInterruptReceiving { endpoint: 0x83 });
    let gone = cancelled(&out);
    assert_eq!(gone.len(), KEPT);
    assert!(gone.contains(&transfers[3].id) && gone.contains(&again[0].id));
    assert_eq!(sent(&out), [(5, status_ok)]);
    assert_eq!(
        h.complete(done(transfers[3].id, Status::Cancelled, &[])),
        []
    );
    assert_eq!(h.complete(done(again[0].id, Status::Ok, &[9])), []);

    // Interrupt receiving on a bulk endpoint is refused with a stall.
    let out = h.guest(6, Body::StartInterruptReceiving { endpoint: 0x81 });
    let stall = Body::InterruptReceivingStatus {
        status: status::STALL,
        endpoint: 0x81,
    };
    assert_eq!((sent(&out), submitted(&out).len()), (vec![(6, stall)], 0));
    assert_eq!(h.s.complaints(), 2);
}

#[test]
fn a_stalled_stream_is_cleared_and_restarted_from_id_0() {
    let mut h = Harness::ready();
    let tags = h.receive_interrupts();
    let out = h.complete(done(tags[0], Status::Ok, &[1]));
    assert_eq!(sent(&out)[0].0, 0);
    let out = h.complete(done(tags[2], Status::Stall, &[]));
    assert_eq!(sent(&out), []);
    let others = cancelled(&out);
    assert_eq!(others.len(), KEPT - 1);
    let [clear] = &submitted(&out)[..] else {
        panic!()
    };
    assert_eq!(clear.setup, [0x02, 1, 0, 0, 0x83, 0, 0, 0]);
    assert_eq!((clear.endpoint, clear.kind), (0x00, TransferKind::Control));
    let out = h.complete(sent_out(clear.id, 0));
    let restarted = submitted(&out);
    assert_eq!(restarted.len(), KEPT);
    let out = h.complete(done(restarted[0].id, Status::Ok, &[7]));
    assert_eq!(sent(&out)[0].0, 0, "numbering starts again");

    // A halt that cannot be cleared ends the stream, reported as a stall.
    let out = h.complete(done(restarted[1].id, Status::Stall, &[]));
    let [clear] = &submitted(&out)[..] else {
        panic!()
    };
    let out = h.complete(done(clear.id, Status::Stall, &[]));
    let stall = Body::InterruptReceivingStatus {
        status: status::STALL,
        endpoint: 0x83,
    };
    assert_eq!(sent(&out), [(0, stall)]);
    assert_eq!(submitted(&out), []);
}

#[test]
fn a_stream_that_keeps_failing_is_stopped() {
    let mut h = Harness::ready();
    let mut tag = h.receive_interrupts()[0];
    for n in 0..7 {
        let out = h.complete(done(tag, Status::Protocol, &[]));
        assert_eq!(sent(&out)[0].0, n);
        tag = submitted(&out)[0].id;
    }
    let out = h.complete(done(tag, Status::Protocol, &[]));
    let stall = Body::InterruptReceivingStatus {
        status: status::STALL,
        endpoint: 0x83,
    };
    assert_eq!(sent(&out), [(0, stall)]);
    assert_eq!(cancelled(&out).len(), KEPT - 1);
    assert_eq!(submitted(&out), []);
    // QEMU may start it again.
    let out = h.guest(1, Body::StartInterruptReceiving { endpoint: 0x83 });
    assert_eq!(submitted(&out).len(), KEPT);
}

#[test]
fn bulk_receiving_turns_completions_into_buffered_bulk_packets() {
    let mut h = Harness::ready();
    let start = |bytes_per_transfer, no_transfers| Body::StartBulkReceiving {
        stream_id: 0,
        bytes_per_transfer,
        endpoint: 0x81,
        no_transfers,
    };
    let status = |status| Body::BulkReceivingStatus {
        stream_id: 0,
        endpoint: 0x81,
        status,
    };
    // Not a multiple of the endpoint's 512 bytes.
    let out = h.guest(1, start(1000, 3));
    assert_eq!(sent(&out), [(1, status(status::STALL))]);
    assert_eq!(h.s.complaints(), 1);

    let out = h.guest(2, start(1024, 3));
    let transfers = submitted(&out);
    assert_eq!(transfers.len(), 3);
    assert!(transfers
        .iter()
        .all(|t| (t.endpoint, t.kind, t.length) == (0x81, TransferKind::Bulk, 1024)));
    assert_eq!(sent(&out), [(2, status(status::SUCCESS))]);
    let out = h.complete(done(transfers[0].id, Status::Ok, b"serial data"));
    let packet = usbredir_proto::BufferedBulkPacket {
        stream_id: 0,
        length: 11,
        endpoint: 0x81,
        status: 0,
        data: Bytes::from_static(b"serial data"),
    };
    assert_eq!(sent(&out), [(0, Body::BufferedBulk(packet))]);
    assert_eq!(submitted(&out).len(), 1);

    let stop = Body::StopBulkReceiving {
        stream_id: 0,
        endpoint: 0x81,
    };
    let out = h.guest(3, stop);
    assert_eq!(cancelled(&out).len(), 3);
    assert_eq!(sent(&out), [(3, status(status::SUCCESS))]);
}

#[test]
fn bulk_receiving_needs_the_capability() {
    let mut h = Harness::with_caps(DEFAULT_CAPS.without(Cap::BulkReceiving));
    h.hello(QEMU_CAPS);
    h.connect(PORT, Speed::High);
    let start = Body::StartBulkReceiving {
        stream_id: 0,
        bytes_per_transfer: 512,
        endpoint: 0x81,
        no_transfers: 1,
    };
    let out = h.guest(1, start);
    assert!(matches!(&out[..], [Action::Close(why)] if why.contains("BulkReceiving")));
}

#[test]
fn a_cancelled_packet_is_answered_at_once_and_its_id_is_free_again() {
    let mut h = Harness::ready();
    let out = h.guest(9, bulk(0x81, 64, b""));
    let tag = submitted(&out)[0].id;
    let out = h.guest(9, Body::CancelDataPacket);
    assert_eq!(
        out,
        [
            Action::Send(Packet::new(9, bulk_reply(0x81, status::CANCELLED, 0, b""))),
            Action::Cancel { port: PORT, tag },
        ]
    );
    assert_eq!(h.s.in_flight(), 0);
    // Whatever the device says afterwards is dropped, and the id can be
    // used again at once.
    let out = h.guest(9, bulk(0x81, 64, b""));
    let again = submitted(&out)[0].id;
    assert_ne!(again, tag);
    assert_eq!(h.complete(done(tag, Status::Ok, b"late")), []);
    let out = h.complete(done(again, Status::Ok, b"new"));
    assert_eq!(sent(&out), [(9, bulk_reply(0x81, 0, 3, b"new"))]);
    // A cancel for something already answered is no error.
    assert_eq!(h.guest(9, Body::CancelDataPacket), []);
    assert_eq!(h.s.complaints(), 0);
}

#[test]
fn set_configuration_and_set_alt_setting_announce_the_new_endpoints_first() {
    use usbredir_proto::packet_type as t;
    let mut h = Harness::ready();
    let tags = h.receive_interrupts();
    let out = h.guest(20, bulk(0x81, 64, b""));
    let waiting = submitted(&out)[0].id;

    let out = h.guest(21, Body::SetConfiguration { configuration: 1 });
    let set = h.answered.last().unwrap();
    assert_eq!(set.setup, [0x00, 9, 1, 0, 0, 0, 0, 0]);
    // The streams and whatever is in flight are stopped first.
    let mut gone = cancelled(&out);
    gone.sort();
    let mut expected = tags.clone();
    expected.push(waiting);
    assert_eq!(gone, expected);
    let kinds: Vec<u32> = sent(&out).iter().map(|(_, b)| b.packet_type()).collect();
    assert_eq!(
        kinds,
        [t::INTERFACE_INFO, t::EP_INFO, t::CONFIGURATION_STATUS]
    );
    let status_ok = Body::ConfigurationStatus {
        status: status::SUCCESS,
        configuration: 1,
    };
    assert_eq!(sent(&out)[2], (21, status_ok.clone()));
    // The cancelled transfer is answered when the device gives it back.
    let out = h.complete(done(waiting, Status::Cancelled, &[]));
    assert_eq!(
        sent(&out),
        [(20, bulk_reply(0x81, status::CANCELLED, 0, b""))]
    );

    let out = h.guest(
        22,
        Body::SetAltSetting {
            interface: 1,
            alt: 1,
        },
    );
    assert_eq!(
        h.answered.last().unwrap().setup,
        [0x01, 11, 1, 0, 1, 0, 0, 0]
    );
    let sent_now = sent(&out);
    let Body::EpInfo(e) = &sent_now[1].1 else {
        panic!("{sent_now:?}")
    };
    assert_eq!(e.ep_type[ep_index(0x84)], ep_type::ISO);
    assert_eq!(e.max_packet_size.unwrap()[ep_index(0x84)], 1024);
    let alt_ok = Body::AltSettingStatus {
        status: status::SUCCESS,
        interface: 1,
        alt: 1,
    };
    assert_eq!(sent_now[2], (22, alt_ok.clone()));

    let out = h.guest(23, Body::GetAltSetting { interface: 1 });
    assert_eq!(
        h.answered.last().unwrap().setup,
        [0x81, 10, 0, 0, 1, 0, 1, 0]
    );
    assert_eq!(sent(&out), [(23, alt_ok)]);
    let out = h.guest(24, Body::GetConfiguration);
    assert_eq!(
        h.answered.last().unwrap().setup,
        [0x80, 8, 0, 0, 0, 0, 1, 0]
    );
    assert_eq!(sent(&out), [(24, status_ok)]);

    // What the device does not have is refused without asking it.
    let asked = h.answered.len();
    let out = h.guest(25, Body::SetConfiguration { configuration: 5 });
    let refused = Body::ConfigurationStatus {
        status: status::INVAL,
        configuration: 1,
    };
    assert_eq!(sent(&out), [(25, refused)]);
    let out = h.guest(
        26,
        Body::SetAltSetting {
            interface: 7,
            alt: 0,
        },
    );
    let refused = Body::AltSettingStatus {
        status: status::INVAL,
        interface: 7,
        alt: 0xff,
    };
    assert_eq!(sent(&out), [(26, refused)]);
    assert_eq!((h.answered.len(), h.s.complaints()), (asked, 2));

    // Unconfigured, the device has no bulk endpoints any more.
    let out = h.guest(27, Body::SetConfiguration { configuration: 0 });
    let Body::InterfaceInfo(i) = &sent(&out)[0].1 else {
        panic!()
    };
    assert_eq!(i.interface_count, 0);
    let out = h.guest(28, bulk(0x81, 64, b""));
    assert_eq!(sent(&out), [(28, bulk_reply(0x81, status::INVAL, 0, b""))]);
}

#[test]
fn set_configuration_as_a_control_packet_and_a_refused_set_alt_setting() {
    let mut h = Harness::ready();
    // SET_CONFIGURATION(0) as a plain control packet also changes the
    // endpoints, announced before its answer.
    let set = ControlPacket::from_setup([0x00, 9, 0, 0, 0, 0, 0, 0]);
    let out = h.guest(30, Body::Control(set.clone()));
    let sent_now = sent(&out);
    let Body::InterfaceInfo(i) = &sent_now[0].1 else {
        panic!("{sent_now:?}")
    };
    assert_eq!(i.interface_count, 0);
    assert_eq!(sent_now[2], (30, Body::Control(set)));
    let out = h.guest(31, Body::SetConfiguration { configuration: 1 });
    assert_eq!(sent(&out).len(), 3);

    // A SET_INTERFACE the device stalls: no new layout, the old setting.
    let out = h.s.on_packet(Packet::new(
        32,
        Body::SetAltSetting {
            interface: 1,
            alt: 1,
        },
    ));
    let [t] = &submitted(&out)[..] else { panic!() };
    let out =
        h.s.on_upcall(Upcall::Completed(done(t.id, Status::Stall, &[])));
    let stalled = Body::AltSettingStatus {
        status: status::STALL,
        interface: 1,
        alt: 0,
    };
    assert_eq!(sent(&out), [(32, stalled)]);
}

#[test]
fn a_disconnect_fails_what_is_in_flight_then_withdraws_the_device() {
    let mut h = Harness::ready();
    let tags = h.receive_interrupts();
    let out = h.guest(30, bulk(0x81, 64, b""));
    let waiting = submitted(&out)[0].id;

    let out = h.upcall(Upcall::Event(PortEvent::Disconnected { port: PORT }));
    assert_eq!(
        sent(&out),
        [
            (30, bulk_reply(0x81, status::CANCELLED, 0, b"")),
            (0, Body::DeviceDisconnect),
        ]
    );
    let mut gone = cancelled(&out);
    gone.sort();
    let mut expected = tags;
    expected.push(waiting);
    assert_eq!(gone, expected);
    assert_eq!(
        (h.s.in_flight(), h.s.announced(), h.s.port()),
        (0, false, None)
    );
    assert_eq!(h.complete(done(waiting, Status::NoDevice, &[])), []);

    // QEMU has not seen the disconnect yet: its packets fail.
    let out = h.guest(31, bulk(0x81, 64, b""));
    assert_eq!(
        sent(&out),
        [(31, bulk_reply(0x81, status::IOERROR, 0, b""))]
    );
    assert_eq!(submitted(&out), []);

    // The device comes back, but is announced only after QEMU's ack.
    let out = h.connect(PORT, Speed::High);
    assert_eq!(out, []);
    let out = h.guest(0, Body::DeviceDisconnectAck);
    assert_eq!(sent(&out).len(), 3);
    assert!(h.s.announced());
    let out = h.guest(0, Body::DeviceDisconnectAck);
    assert_eq!(out, []);
    assert_eq!(h.s.complaints(), 1);
}

#[test]
fn a_disconnect_as_the_usbip_client_reports_it() {
    // The client fails what is in flight with NoDevice, then reports the
    // port empty.
    let mut h = Harness::ready();
    let out = h.guest(40, bulk(0x02, 3, b"abc"));
    let tag = submitted(&out)[0].id;
    let out = h.complete(Completion::failed(PORT, tag, Status::NoDevice));
    assert_eq!(
        sent(&out),
        [(40, bulk_reply(0x02, status::IOERROR, 0, b""))]
    );
    let out = h.upcall(Upcall::Event(PortEvent::Disconnected { port: PORT }));
    assert_eq!(sent(&out), [(0, Body::DeviceDisconnect)]);
    // A disconnect of another port is not ours.
    let out = h.upcall(Upcall::Event(PortEvent::Disconnected { port: 9 }));
    assert_eq!(out, []);
}

#[test]
fn a_reset_sends_nothing_back_unless_the_device_is_lost() {
    let mut h = Harness::ready();
    let tags = h.receive_interrupts();
    let out = h.guest(0, Body::Reset);
    let stopped = Body::InterruptReceivingStatus {
        status: status::STALL,
        endpoint: 0x83,
    };
    assert_eq!(sent(&out), [(0, stopped)]);
    assert_eq!(cancelled(&out).len(), tags.len());
    let Some(Action::ResetPort { port: PORT, token }) = out.last().cloned() else {
        panic!("{out:?}")
    };
    // A second reset while one is under way is not passed on.
    assert_eq!(h.guest(0, Body::Reset), []);
    let done_ok = Upcall::ResetDone {
        port: PORT,
        token,
        status: Status::Ok,
        speed: Some(Speed::High),
    };
    assert_eq!(h.upcall(done_ok), []);
    assert!(h.s.announced());

    let out = h.guest(0, Body::Reset);
    let Some(Action::ResetPort { token, .. }) = out.last().cloned() else {
        panic!()
    };
    let failed = Upcall::ResetDone {
        port: PORT,
        token,
        status: Status::Protocol,
        speed: None,
    };
    let out = h.upcall(failed);
    assert_eq!(sent(&out), [(0, Body::DeviceDisconnect)]);
    assert!(!h.s.announced());
    assert_eq!(h.s.port(), Some(PORT));
    // Until it reconnects, QEMU's packets fail and resets are ignored.
    assert_eq!(h.guest(0, Body::DeviceDisconnectAck), []);
    let out = h.guest(50, bulk(0x81, 64, b""));
    assert_eq!(
        sent(&out),
        [(50, bulk_reply(0x81, status::IOERROR, 0, b""))]
    );
    assert_eq!(h.guest(0, Body::Reset), []);
}

/// Alternate setting 1 of interface 1, which has the isochronous endpoints.
fn with_iso_endpoints() -> Harness {
    let mut h = Harness::ready();
    let out = h.guest(
        1,
        Body::SetAltSetting {
            interface: 1,
            alt: 1,
        },
    );
    assert!(matches!(
        sent(&out).last(),
        Some((1, Body::AltSettingStatus { .. }))
    ));
    h
}

fn iso_status(status: u8, endpoint: u8) -> Body {
    Body::IsoStreamStatus { status, endpoint }
}

fn iso_out(data: &[u8]) -> Body {
    Body::Iso(IsoPacket {
        endpoint: 0x05,
        status: 0,
        length: data.len() as u16,
        data: Bytes::copy_from_slice(data),
    })
}

/// An iso IN completion: `packets` as (status, bytes) at offsets `i * 1024`.
fn iso_in_done(tag: u64, packets: &[(Status, &[u8])]) -> Completion {
    let mut c = Completion::failed(PORT, tag, Status::Ok);
    c.error_count = 0;
    c.iso_results = packets
        .iter()
        .map(|(status, data)| crate::transfer::IsoResult {
            actual_length: data.len() as u32,
            status: *status,
        })
        .collect();
    c.actual_length = packets.iter().map(|(_, d)| d.len() as u32).sum();
    c.in_data = packets
        .iter()
        .enumerate()
        .filter(|(_, (_, d))| !d.is_empty())
        .map(|(i, (_, d))| (i as u32 * 1024, Bytes::copy_from_slice(d)))
        .collect();
    c
}

#[test]
fn an_iso_in_stream_keeps_its_transfers_going_and_sends_every_packet() {
    let mut h = with_iso_endpoints();
    let start = Body::StartIsoStream {
        endpoint: 0x84,
        pkts_per_urb: 4,
        no_urbs: 2,
    };
    let out = h.guest(7, start);
    let transfers = submitted(&out);
    assert_eq!(transfers.len(), 2);
    for t in &transfers {
        assert_eq!((t.endpoint, t.kind), (0x84, TransferKind::Isochronous));
        // High bandwidth: 2 × 512 bytes per microframe.
        assert_eq!(t.length, 4 * 1024);
        let offsets: Vec<(u32, u32)> = t.iso_packets.iter().map(|p| (p.offset, p.length)).collect();
        assert_eq!(
            offsets,
            [(0, 1024), (1024, 1024), (2048, 1024), (3072, 1024)]
        );
        assert_eq!(t.flags, crate::transfer::xfer_flags::ISO_ASAP);
    }
    assert_eq!(sent(&out), [(7, iso_status(status::SUCCESS, 0x84))]);

    // Each packet goes to QEMU on its own, numbered from 0, and the
    // transfer goes back to the device.
    let first = transfers[0].id;
    let done = iso_in_done(
        first,
        &[
            (Status::Ok, &[1; 1024]),
            (Status::Ok, &[2; 100]),
            (Status::Ok, &[]),
            (Status::Protocol, &[]),
        ],
    );
    let out = h.complete(done);
    let packets: Vec<(u64, u8, usize, Option<u8>)> = sent(&out)
        .into_iter()
        .map(|(id, body)| match body {
            Body::Iso(p) => {
                assert_eq!((p.endpoint, p.length as usize), (0x84, p.data.len()));
                (id, p.status, p.data.len(), p.data.first().copied())
            }
            other => panic!("not an iso packet: {other:?}"),
        })
        .collect();
    assert_eq!(
        packets,
        [
            (0, status::SUCCESS, 1024, Some(1)),
            (1, status::SUCCESS, 100, Some(2)),
            (2, status::SUCCESS, 0, None),
            (3, status::IOERROR, 0, None),
        ]
    );
    let again = submitted(&out);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].iso_packets.len(), 4);

    // A device that answers past the endpoint's packet size is not
    // believed: one packet with an error, and the stream goes on.
    let second = transfers[1].id;
    let mut liar = iso_in_done(second, &[(Status::Ok, &[][..]); 4]);
    liar.iso_results[0].actual_length = 2000;
    let out = h.complete(liar);
    let s = sent(&out);
    assert!(
        matches!(&s[..], [(4, Body::Iso(p))] if p.status == status::IOERROR && p.data.is_empty())
    );
    assert_eq!(submitted(&out).len(), 1);

    // Stopping cancels both transfers still out; their late completions
    // are dropped.
    let out = h.guest(8, Body::StopIsoStream { endpoint: 0x84 });
    assert_eq!(cancelled(&out).len(), 2);
    assert_eq!(sent(&out), [(8, iso_status(status::SUCCESS, 0x84))]);
    assert_eq!(
        h.complete(iso_in_done(again[0].id, &[(Status::Ok, &[][..]); 4])),
        []
    );
}

#[test]
fn an_iso_out_stream_fills_half_its_buffers_then_submits_whole_transfers() {
    let mut h = with_iso_endpoints();
    let start = Body::StartIsoStream {
        endpoint: 0x05,
        pkts_per_urb: 2,
        no_urbs: 4,
    };
    let out = h.guest(0, start);
    assert_eq!(
        out,
        [Action::Send(Packet::new(
            0,
            iso_status(status::SUCCESS, 0x05)
        ))]
    );
    // Half of the 8 packets' buffers, then two transfers at once.
    for n in 1..=3u8 {
        assert_eq!(h.guest(0, iso_out(&[n; 192])), []);
    }
    let out = h.guest(0, iso_out(&[4; 10]));
    let transfers = submitted(&out);
    assert_eq!(transfers.len(), 2);
    let t = &transfers[1];
    assert_eq!(
        (t.endpoint, t.kind, t.length),
        (0x05, TransferKind::Isochronous, 202)
    );
    let packets: Vec<(u32, u32)> = t.iso_packets.iter().map(|p| (p.offset, p.length)).collect();
    assert_eq!(packets, [(0, 192), (192, 10)]);
    assert_eq!((t.out_data[0], t.out_data[192], t.out_data[201]), (3, 4, 4));

    // One packet waits for a second; together they make a transfer.
    assert_eq!(h.guest(0, iso_out(&[5; 8])), []);
    assert_eq!(submitted(&h.guest(0, iso_out(&[6; 8]))).len(), 1);
    // A packet longer than the endpoint's is refused.
    assert_eq!(h.guest(0, iso_out(&[7; 193])), []);
    assert_eq!(h.s.complaints(), 1);

    // The device falls behind: 3 transfers out of 4 are taken, so after
    // one more transfer's worth, 8 packets wait and the oldest go.
    let mut all = transfers.clone();
    for n in 0..12u8 {
        all.extend(submitted(&h.guest(0, iso_out(&[100 + n; 4]))));
    }
    assert_eq!(all.len(), 3, "a fourth transfer, then nothing");
    // Completing one lets the next whole transfer go: packets 100 and 101
    // went in the fourth transfer; of the 10 left, 102 and 103 were dropped.
    let out = h.complete(sent_out(all[0].id, 192 + 10));
    let next = submitted(&out);
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].out_data[0], next[0].out_data[4]), (104, 105));

    // Stopping drops what waits; packets after the stop are dropped too.
    let out = h.guest(0, Body::StopIsoStream { endpoint: 0x05 });
    assert_eq!(cancelled(&out).len(), 4);
    assert_eq!(h.guest(0, iso_out(&[9; 4])), []);
    assert_eq!(h.s.complaints(), 1);
}

#[test]
fn bad_iso_stream_requests_are_refused() {
    let mut h = Harness::ready();
    let start = |endpoint, pkts_per_urb, no_urbs| Body::StartIsoStream {
        endpoint,
        pkts_per_urb,
        no_urbs,
    };
    // Alternate setting 0 has no isochronous endpoint.
    let out = h.guest(1, start(0x84, 4, 2));
    assert_eq!(sent(&out), [(1, iso_status(status::STALL, 0x84))]);
    let mut h = with_iso_endpoints();
    for (pkts, urbs) in [(0, 2), (33, 2), (4, 0), (4, 17)] {
        let out = h.guest(2, start(0x84, pkts, urbs));
        assert_eq!(sent(&out), [(2, iso_status(status::INVAL, 0x84))]);
    }
    assert_eq!(submitted(&h.guest(3, start(0x84, 4, 2))).len(), 2);
    let out = h.guest(4, start(0x84, 4, 2));
    assert_eq!(sent(&out), [(4, iso_status(status::INVAL, 0x84))]);
    // An iso_packet for an IN endpoint (which the codec refuses to decode
    // from QEMU already).
    let wrong_way = Body::Iso(IsoPacket {
        endpoint: 0x84,
        status: 0,
        length: 1,
        data: Bytes::from_static(&[1]),
    });
    assert_eq!(h.s.on_packet(Packet::new(0, wrong_way)), []);
    assert_eq!(h.s.complaints(), 6);
}

/// A reset stops the streams and tells QEMU (which starts them again); the
/// device's loss stops them without a word (its disconnect says it all).
#[test]
fn a_reset_or_a_disconnect_ends_the_iso_streams() {
    let mut h = with_iso_endpoints();
    let start = Body::StartIsoStream {
        endpoint: 0x84,
        pkts_per_urb: 1,
        no_urbs: 2,
    };
    h.guest(0, start.clone());
    let out = h.guest(0, Body::Reset);
    assert_eq!(cancelled(&out).len(), 2);
    assert_eq!(sent(&out), [(0, iso_status(status::STALL, 0x84))]);
    // Started again after the reset, then the device goes.
    let token = match out.last() {
        Some(Action::ResetPort { token, .. }) => *token,
        other => panic!("no reset: {other:?}"),
    };
    h.upcall(Upcall::ResetDone {
        port: PORT,
        token,
        status: Status::Ok,
        speed: Some(Speed::High),
    });
    assert_eq!(submitted(&h.guest(0, start)).len(), 2);
    let out = h.upcall(Upcall::Event(PortEvent::Disconnected { port: PORT }));
    assert_eq!(cancelled(&out).len(), 2);
    assert_eq!(sent(&out), [(0, Body::DeviceDisconnect)]);
}

#[test]
fn bad_packets_are_complained_about_and_refused() {
    let mut h = Harness::ready();
    let out = h.guest(40, bulk(0x81, 64, b""));
    let first = submitted(&out)[0].id;

    // An id already in flight.
    let out = h.guest(40, bulk(0x81, 64, b""));
    assert_eq!(sent(&out), [(40, bulk_reply(0x81, status::INVAL, 0, b""))]);
    assert_eq!(submitted(&out), []);
    assert_eq!(h.s.complaints(), 1);
    let out = h.complete(done(first, Status::Ok, b"x"));
    assert_eq!(sent(&out), [(40, bulk_reply(0x81, 0, 1, b"x"))]);

    // An endpoint the configuration does not have, or not of that type.
    let out = h.guest(41, bulk(0x05, 1, b"x"));
    assert_eq!(sent(&out), [(41, bulk_reply(0x05, status::INVAL, 0, b""))]);
    let interrupt_out = Body::Interrupt(InterruptPacket {
        endpoint: 0x02,
        status: 0,
        length: 1,
        data: Bytes::from_static(b"x"),
    });
    let out = h.guest(42, interrupt_out);
    let refused = Body::Interrupt(InterruptPacket {
        endpoint: 0x02,
        status: status::INVAL,
        length: 0,
        data: Bytes::new(),
    });
    assert_eq!(sent(&out), [(42, refused)]);
    // A control packet whose endpoint and bmRequestType disagree.
    let mut odd = ControlPacket::from_setup([0x80, 6, 0, 1, 0, 0, 0, 0]);
    odd.endpoint = 0x00;
    let out = h.guest(43, Body::Control(odd));
    assert_eq!(
        sent(&out)[0].1.packet_type(),
        usbredir_proto::packet_type::CONTROL_PACKET
    );
    assert_eq!(submitted(&out), []);
    // Bulk streams were not negotiated.
    let streamed = Body::Bulk(BulkPacket {
        endpoint: 0x81,
        status: 0,
        length: 64,
        stream_id: 3,
        data: Bytes::new(),
    });
    let out = h.guest(44, streamed);
    assert_eq!(submitted(&out), []);
    // A second hello is ignored.
    assert_eq!(h.guest(0, Body::Hello(Hello::new("again", QEMU_CAPS))), []);
    assert_eq!(h.s.complaints(), 6);
    assert!(h.s.announced());

    // A packet only a usb-host sends ends the connection.
    let out = h.s.on_packet(Packet::new(0, Body::DeviceDisconnect));
    assert!(matches!(&out[..], [Action::Close(why)] if why.contains("device_disconnect")));
}

/// QEMU's filter_reject: the device is withdrawn and not offered again on
/// this connection until it reconnects, which would otherwise have QEMU
/// refuse it again and again.
#[test]
fn a_device_qemu_rejects_is_not_offered_again_until_it_reconnects() {
    let mut h = Harness::ready();
    let filter = Body::FilterFilter {
        rules: "0x03,-1,-1,-1,0|-1,-1,-1,-1,1".into(),
    };
    assert_eq!(h.guest(0, filter), []);
    let out = h.guest(0, Body::FilterReject);
    assert_eq!(sent(&out), [(0, Body::DeviceDisconnect)]);
    assert!(!h.s.announced());
    // The acknowledgement does not bring it back, and requests fail.
    assert_eq!(h.guest(0, Body::DeviceDisconnectAck), []);
    assert!(!h.s.announced());
    let out = h.guest(1, bulk(0x81, 8, b""));
    assert_eq!(sent(&out), [(1, bulk_reply(0x81, status::IOERROR, 0, b""))]);
    assert_eq!(h.s.complaints(), 0);
    // Reconnected, it is offered again.
    h.upcall(Upcall::Event(PortEvent::Disconnected { port: PORT }));
    let out = h.connect(PORT, Speed::Full);
    assert!(matches!(
        sent(&out).last(),
        Some((_, Body::DeviceConnect(_)))
    ));
}

#[test]
fn a_device_whose_descriptors_cannot_be_read_is_not_offered() {
    let mut h = Harness::new();
    h.hello(QEMU_CAPS);
    h.dev.broken = true;
    let out = h.connect(PORT, Speed::Full);
    assert_eq!(out, []);
    assert!(!h.s.announced());
    assert_eq!(h.s.port(), Some(PORT));
    let out = h.guest(1, bulk(0x81, 8, b""));
    assert_eq!(sent(&out), [(1, bulk_reply(0x81, status::IOERROR, 0, b""))]);
    // Reconnected and readable, it is offered.
    h.dev.broken = false;
    h.upcall(Upcall::Event(PortEvent::Disconnected { port: PORT }));
    let out = h.connect(PORT, Speed::Full);
    assert_eq!(sent(&out).len(), 3);
}
