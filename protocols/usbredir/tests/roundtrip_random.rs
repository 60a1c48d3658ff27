//! The fuzz target's property (`common/property.rs`) over a few thousand
//! deterministic pseudo-random inputs, so that every `cargo test` exercises
//! it without cargo-fuzz: random valid packets under random capabilities
//! (which must round-trip), the same with a few bytes flipped, noise with a
//! plausible header, and plain noise. Plus a stream of packets cut at random
//! places, as a socket delivers it.

mod common;

use bytes::{Bytes, BytesMut};
use common::decode_bytewise;
use common::property::{check_packet, selector};
use usbredir_proto::{
    carries_data, packet_type as t, Body, BufferedBulkPacket, BulkPacket, Cap, Caps, ControlPacket,
    DeviceConnect, EpInfo, Hello, InterfaceInfo, InterruptPacket, IsoPacket, Packet, Sender,
    MAX_ENDPOINTS, MAX_INTERFACES,
};

/// xorshift64*: tiny, deterministic, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.u8())
    }
    fn text(&mut self, max: usize) -> String {
        let n = self.below(max as u64 + 1) as usize;
        (0..n)
            .map(|_| char::from(b"0123456789-,|x. abcdefqemu"[self.below(26) as usize]))
            .collect()
    }
    fn sender(&mut self) -> Sender {
        if self.chance(2) {
            Sender::Guest
        } else {
            Sender::Host
        }
    }
    /// An endpoint address; IN with `in_dir`.
    fn endpoint(&mut self, in_dir: bool) -> u8 {
        (self.u8() & 0x0f) | if in_dir { 0x80 } else { 0 }
    }
}

const ITERATIONS: usize = 3000;

const GUEST_TYPES: [u32; 21] = [
    t::HELLO,
    t::RESET,
    t::SET_CONFIGURATION,
    t::GET_CONFIGURATION,
    t::SET_ALT_SETTING,
    t::GET_ALT_SETTING,
    t::START_ISO_STREAM,
    t::STOP_ISO_STREAM,
    t::START_INTERRUPT_RECEIVING,
    t::STOP_INTERRUPT_RECEIVING,
    t::ALLOC_BULK_STREAMS,
    t::FREE_BULK_STREAMS,
    t::CANCEL_DATA_PACKET,
    t::FILTER_REJECT,
    t::FILTER_FILTER,
    t::DEVICE_DISCONNECT_ACK,
    t::START_BULK_RECEIVING,
    t::STOP_BULK_RECEIVING,
    t::CONTROL_PACKET,
    t::BULK_PACKET,
    t::ISO_PACKET,
];

const HOST_TYPES: [u32; 16] = [
    t::HELLO,
    t::DEVICE_CONNECT,
    t::DEVICE_DISCONNECT,
    t::INTERFACE_INFO,
    t::EP_INFO,
    t::CONFIGURATION_STATUS,
    t::ALT_SETTING_STATUS,
    t::ISO_STREAM_STATUS,
    t::INTERRUPT_RECEIVING_STATUS,
    t::BULK_STREAMS_STATUS,
    t::FILTER_FILTER,
    t::BULK_RECEIVING_STATUS,
    t::CONTROL_PACKET,
    t::BULK_PACKET,
    t::ISO_PACKET,
    t::BUFFERED_BULK_PACKET,
];

/// A valid packet body of a random type the sender sends, under `caps`.
fn gen_body(rng: &mut Rng, caps: Caps, sender: Sender) -> Body {
    let types: &[u32] = match sender {
        Sender::Guest => &GUEST_TYPES,
        Sender::Host => &HOST_TYPES,
    };
    // Interrupt packets go both ways; give them a slot on each side.
    let packet_type = if rng.chance(types.len() as u64 + 1) {
        t::INTERRUPT_PACKET
    } else {
        types[rng.below(types.len() as u64) as usize]
    };
    // Data packets: the data travels one way, `length` both.
    let data_for = |rng: &mut Rng, endpoint: u8, len: usize| {
        if carries_data(endpoint, sender) {
            Bytes::from(rng.bytes(len))
        } else {
            Bytes::new()
        }
    };
    let in_ep = rng.endpoint(true);
    match packet_type {
        t::HELLO => Body::Hello(Hello {
            version: rng.text(63),
            cap_words: (0..rng.below(3)).map(|_| rng.u32()).collect(),
        }),
        t::DEVICE_CONNECT => Body::DeviceConnect(DeviceConnect {
            speed: rng.u8(),
            device_class: rng.u8(),
            device_subclass: rng.u8(),
            device_protocol: rng.u8(),
            vendor_id: rng.u16(),
            product_id: rng.u16(),
            device_version_bcd: caps.has(Cap::ConnectDeviceVersion).then(|| rng.u16()),
        }),
        t::DEVICE_DISCONNECT => Body::DeviceDisconnect,
        t::RESET => Body::Reset,
        t::INTERFACE_INFO => Body::InterfaceInfo(InterfaceInfo {
            interface_count: rng.below(MAX_INTERFACES as u64 + 1) as u32,
            interface: rng.array(),
            interface_class: rng.array(),
            interface_subclass: rng.array(),
            interface_protocol: rng.array(),
        }),
        t::EP_INFO => Body::EpInfo(Box::new(EpInfo {
            ep_type: rng.array(),
            interval: rng.array(),
            interface: rng.array(),
            max_packet_size: (caps.has(Cap::EpInfoMaxPacketSize) || caps.has(Cap::BulkStreams))
                .then(|| std::array::from_fn(|_| rng.u16())),
            max_streams: caps
                .has(Cap::BulkStreams)
                .then(|| std::array::from_fn::<u32, MAX_ENDPOINTS, _>(|_| rng.u32())),
        })),
        t::SET_CONFIGURATION => Body::SetConfiguration {
            configuration: rng.u8(),
        },
        t::GET_CONFIGURATION => Body::GetConfiguration,
        t::CONFIGURATION_STATUS => Body::ConfigurationStatus {
            status: rng.u8(),
            configuration: rng.u8(),
        },
        t::SET_ALT_SETTING => Body::SetAltSetting {
            interface: rng.u8(),
            alt: rng.u8(),
        },
        t::GET_ALT_SETTING => Body::GetAltSetting {
            interface: rng.u8(),
        },
        t::ALT_SETTING_STATUS => Body::AltSettingStatus {
            status: rng.u8(),
            interface: rng.u8(),
            alt: rng.u8(),
        },
        t::START_ISO_STREAM => Body::StartIsoStream {
            endpoint: rng.u8(),
            pkts_per_urb: rng.u8(),
            no_urbs: rng.u8(),
        },
        t::STOP_ISO_STREAM => Body::StopIsoStream { endpoint: rng.u8() },
        t::ISO_STREAM_STATUS => Body::IsoStreamStatus {
            status: rng.u8(),
            endpoint: rng.u8(),
        },
        t::START_INTERRUPT_RECEIVING => Body::StartInterruptReceiving { endpoint: in_ep },
        t::STOP_INTERRUPT_RECEIVING => Body::StopInterruptReceiving { endpoint: in_ep },
        t::INTERRUPT_RECEIVING_STATUS => Body::InterruptReceivingStatus {
            status: rng.u8(),
            endpoint: in_ep,
        },
        t::ALLOC_BULK_STREAMS => Body::AllocBulkStreams {
            endpoints: rng.u32(),
            no_streams: rng.u32(),
        },
        t::FREE_BULK_STREAMS => Body::FreeBulkStreams {
            endpoints: rng.u32(),
        },
        t::BULK_STREAMS_STATUS => Body::BulkStreamsStatus {
            endpoints: rng.u32(),
            no_streams: rng.u32(),
            status: rng.u8(),
        },
        t::CANCEL_DATA_PACKET => Body::CancelDataPacket,
        t::FILTER_REJECT => Body::FilterReject,
        t::FILTER_FILTER => Body::FilterFilter {
            rules: rng.text(80),
        },
        t::DEVICE_DISCONNECT_ACK => Body::DeviceDisconnectAck,
        t::START_BULK_RECEIVING => Body::StartBulkReceiving {
            stream_id: rng.u32(),
            bytes_per_transfer: rng.below(u64::from(usbredir_proto::limits::MAX_BULK_TRANSFER_LEN))
                as u32,
            endpoint: in_ep,
            no_transfers: rng.u8(),
        },
        t::STOP_BULK_RECEIVING => Body::StopBulkReceiving {
            stream_id: rng.u32(),
            endpoint: in_ep,
        },
        t::BULK_RECEIVING_STATUS => Body::BulkReceivingStatus {
            stream_id: rng.u32(),
            endpoint: in_ep,
            status: rng.u8(),
        },
        t::CONTROL_PACKET => {
            let setup = rng.array::<8>();
            let mut p = ControlPacket::from_setup(setup);
            p.length = rng.below(100) as u16;
            p.status = if sender == Sender::Host { rng.u8() } else { 0 };
            p.data = data_for(rng, p.endpoint, usize::from(p.length));
            Body::Control(p)
        }
        t::BULK_PACKET => {
            let in_dir = rng.chance(2);
            let endpoint = rng.endpoint(in_dir);
            let length = if caps.has(Cap::BulkLength32) && rng.chance(40) {
                65_536 + rng.below(5000) as u32
            } else {
                rng.below(200) as u32
            };
            Body::Bulk(BulkPacket {
                endpoint,
                status: rng.u8(),
                length,
                stream_id: rng.u32(),
                data: data_for(rng, endpoint, length as usize),
            })
        }
        t::ISO_PACKET => {
            // Iso packets only ever travel with their data.
            let endpoint = rng.endpoint(sender == Sender::Host);
            let length = rng.below(200) as u16;
            Body::Iso(IsoPacket {
                endpoint,
                status: rng.u8(),
                length,
                data: Bytes::from(rng.bytes(usize::from(length))),
            })
        }
        t::INTERRUPT_PACKET => {
            // The guest only sends them for OUT endpoints.
            let in_dir = sender == Sender::Host && rng.chance(2);
            let endpoint = rng.endpoint(in_dir);
            let length = rng.below(64) as u16;
            Body::Interrupt(InterruptPacket {
                endpoint,
                status: rng.u8(),
                length,
                data: data_for(rng, endpoint, usize::from(length)),
            })
        }
        t::BUFFERED_BULK_PACKET => {
            let length = rng.below(600) as u32;
            Body::BufferedBulk(BufferedBulkPacket {
                stream_id: rng.u32(),
                length,
                endpoint: in_ep,
                status: rng.u8(),
                data: Bytes::from(rng.bytes(length as usize)),
            })
        }
        other => unreachable!("type {other} is not generated"),
    }
}

fn gen_packet(rng: &mut Rng, caps: Caps, sender: Sender) -> Packet {
    let id = if caps.has(Cap::Ids64) {
        rng.next()
    } else {
        u64::from(rng.u32())
    };
    Packet::new(id, gen_body(rng, caps, sender))
}

/// Flips 1 to 4 random bytes.
fn mutate(rng: &mut Rng, wire: &mut [u8]) {
    if wire.is_empty() {
        return;
    }
    for _ in 0..=rng.below(4) {
        let i = rng.below(wire.len() as u64) as usize;
        wire[i] = if rng.chance(2) {
            rng.u8()
        } else {
            wire[i] ^ (1 << rng.below(8))
        };
    }
}

#[test]
fn packets_round_trip() {
    let mut rng = Rng(0x5eed_0001);
    for i in 0..ITERATIONS {
        // Any capability byte: negotiated sets, and unsanitized ones.
        let caps = Caps::from_bits(u32::from(rng.u8()));
        let sender = rng.sender();
        let packet = gen_packet(&mut rng, caps, sender);
        let mut wire = BytesMut::new();
        packet
            .encode(caps, sender, &mut wire)
            .unwrap_or_else(|e| panic!("{packet:?} under {caps:?} does not encode: {e}"));
        let decoded = if i % 10 == 0 && wire.len() < 2048 {
            decode_bytewise(&wire, caps, sender)
        } else {
            Packet::decode(&mut wire.clone(), caps, sender)
                .unwrap()
                .unwrap()
        };
        assert_eq!(decoded, packet);
        let input = [&selector(caps, sender)[..], &wire].concat();
        assert!(check_packet(&input));
        let mut bad = input;
        mutate(&mut rng, &mut bad);
        check_packet(&bad);
    }
}

#[test]
fn a_stream_cut_anywhere_decodes_to_the_same_packets() {
    let mut rng = Rng(0x5eed_0002);
    let caps = Caps::ALL;
    let sender = Sender::Host;
    let packets: Vec<Packet> = (0..500)
        .map(|_| gen_packet(&mut rng, caps, sender))
        .collect();
    let mut stream = BytesMut::new();
    for p in &packets {
        p.encode(caps, sender, &mut stream).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let n = (rng.below(300) as usize + 1).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(p) = Packet::decode(&mut buf, caps, sender).unwrap() {
            got.push(p);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got, packets);
}

#[test]
fn noise_with_plausible_headers() {
    let mut rng = Rng(0x5eed_0003);
    let mut decoded = 0;
    let all_types: Vec<u32> = (0..=27).chain(100..=104).collect();
    for _ in 0..ITERATIONS {
        let caps = Caps::from_bits(u32::from(rng.u8()));
        let sender = rng.sender();
        let header_len = usbredir_proto::Header::wire_len(caps);
        let body_len = rng.below(300) as usize;
        let mut stream = rng.bytes(header_len + body_len);
        // Steer the fields that gate everything else into range, so that
        // the noise reaches the type-specific checks.
        let packet_type = all_types[rng.below(all_types.len() as u64) as usize];
        stream[0..4].copy_from_slice(&packet_type.to_le_bytes());
        let length = if rng.chance(4) {
            rng.below(body_len as u64 + 1) as u32
        } else {
            usbredir_proto::type_header_len(packet_type, caps).unwrap() as u32
        };
        stream[4..8].copy_from_slice(&length.to_le_bytes());
        // Small data lengths, so that data packets can be consistent.
        if stream.len() > header_len + 4 && rng.chance(2) {
            let at = header_len + 2;
            stream[at..at + 2].copy_from_slice(&[rng.below(4) as u8, 0]);
        }
        let input = [&selector(caps, sender)[..], &stream].concat();
        decoded += usize::from(check_packet(&input));
    }
    eprintln!("noise decoded: {decoded} of {ITERATIONS}");
    assert!(
        decoded > ITERATIONS / 10,
        "only {decoded} noisy inputs decoded"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..ITERATIONS * 3 {
        let len = rng.below(400) as usize;
        let input = rng.bytes(len);
        check_packet(&input);
    }
}

#[test]
fn fuzz_seeds_are_valid_packets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/packet");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/packet exists") {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        assert!(check_packet(&input), "{} does not decode", path.display());
        seeds += 1;
    }
    assert!(seeds >= 10, "only {seeds} seeds");
}
