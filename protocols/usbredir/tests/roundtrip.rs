//! Every packet type, encoded and decoded back, under every capability that
//! changes a layout.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{decode_bytewise, encode};
use usbredir_proto::{
    packet_type, status, Body, BufferedBulkPacket, BulkPacket, Cap, Caps, ControlPacket,
    DeviceConnect, EpInfo, Hello, InterfaceInfo, InterruptPacket, IsoPacket, Packet, Sender,
    MAX_ENDPOINTS,
};

/// One packet of every type, valid under `caps`, with its sender.
fn samples(caps: Caps) -> Vec<(Sender, Body)> {
    use Sender::{Guest, Host};
    let data = |n: usize| Bytes::from((0..n).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    let mut interface_info = InterfaceInfo {
        interface_count: 3,
        ..Default::default()
    };
    interface_info.interface[..3].copy_from_slice(&[0, 1, 2]);
    interface_info.interface_class[..3].copy_from_slice(&[1, 1, 0xff]);
    let big_bulk = if caps.has(Cap::BulkLength32) {
        70_000
    } else {
        65_535
    };
    vec![
        (
            Guest,
            Body::Hello(Hello::new("qemu usb-redir guest 9.0", caps)),
        ),
        (Host, Body::Hello(Hello::new("", Caps::ALL))),
        (
            Host,
            Body::DeviceConnect(DeviceConnect {
                speed: 2,
                device_class: 0xef,
                device_subclass: 2,
                device_protocol: 1,
                vendor_id: 0x1209,
                product_id: 0x0002,
                device_version_bcd: caps.has(Cap::ConnectDeviceVersion).then_some(0x0217),
            }),
        ),
        (Host, Body::DeviceDisconnect),
        (Guest, Body::Reset),
        (Host, Body::InterfaceInfo(interface_info)),
        (
            Host,
            Body::EpInfo(Box::new(EpInfo {
                ep_type: [2; MAX_ENDPOINTS],
                interval: [1; MAX_ENDPOINTS],
                interface: [3; MAX_ENDPOINTS],
                max_packet_size: (caps.has(Cap::EpInfoMaxPacketSize) || caps.has(Cap::BulkStreams))
                    .then_some([512; MAX_ENDPOINTS]),
                max_streams: caps.has(Cap::BulkStreams).then_some([31; MAX_ENDPOINTS]),
            })),
        ),
        (Guest, Body::SetConfiguration { configuration: 2 }),
        (Guest, Body::GetConfiguration),
        (
            Host,
            Body::ConfigurationStatus {
                status: status::SUCCESS,
                configuration: 2,
            },
        ),
        (
            Guest,
            Body::SetAltSetting {
                interface: 1,
                alt: 3,
            },
        ),
        (Guest, Body::GetAltSetting { interface: 1 }),
        (
            Host,
            Body::AltSettingStatus {
                status: status::INVAL,
                interface: 1,
                alt: 0,
            },
        ),
        (
            Guest,
            Body::StartIsoStream {
                endpoint: 0x83,
                pkts_per_urb: 8,
                no_urbs: 3,
            },
        ),
        (Guest, Body::StopIsoStream { endpoint: 0x83 }),
        (
            Host,
            Body::IsoStreamStatus {
                status: status::STALL,
                endpoint: 0x83,
            },
        ),
        (Guest, Body::StartInterruptReceiving { endpoint: 0x81 }),
        (Guest, Body::StopInterruptReceiving { endpoint: 0x81 }),
        (
            Host,
            Body::InterruptReceivingStatus {
                status: status::SUCCESS,
                endpoint: 0x81,
            },
        ),
        (
            Guest,
            Body::AllocBulkStreams {
                endpoints: 0b110,
                no_streams: 15,
            },
        ),
        (Guest, Body::FreeBulkStreams { endpoints: 0b110 }),
        (
            Host,
            Body::BulkStreamsStatus {
                endpoints: 0b110,
                no_streams: 0,
                status: status::SUCCESS,
            },
        ),
        (Guest, Body::CancelDataPacket),
        (Guest, Body::FilterReject),
        (
            Host,
            Body::FilterFilter {
                rules: "-1,-1,-1,-1,1".into(),
            },
        ),
        (
            Guest,
            Body::FilterFilter {
                rules: String::new(),
            },
        ),
        (Guest, Body::DeviceDisconnectAck),
        (
            Guest,
            Body::StartBulkReceiving {
                stream_id: 0,
                bytes_per_transfer: 0x8000,
                endpoint: 0x82,
                no_transfers: 5,
            },
        ),
        (
            Guest,
            Body::StopBulkReceiving {
                stream_id: 0,
                endpoint: 0x82,
            },
        ),
        (
            Host,
            Body::BulkReceivingStatus {
                stream_id: 0,
                endpoint: 0x82,
                status: status::STALL,
            },
        ),
        (
            Guest,
            Body::Control(ControlPacket::from_setup([0x80, 6, 0, 2, 0, 0, 0xff, 0])),
        ),
        (
            Host,
            Body::Control(ControlPacket {
                data: data(32),
                length: 32,
                ..ControlPacket::from_setup([0x80, 6, 0, 2, 0, 0, 0xff, 0])
            }),
        ),
        (
            Guest,
            Body::Control(ControlPacket {
                data: data(2),
                ..ControlPacket::from_setup([0x21, 0x22, 3, 0, 0, 0, 2, 0])
            }),
        ),
        (
            Guest,
            Body::Bulk(BulkPacket {
                endpoint: 0x02,
                length: big_bulk,
                data: data(big_bulk as usize),
                ..Default::default()
            }),
        ),
        (
            Guest,
            Body::Bulk(BulkPacket {
                endpoint: 0x82,
                length: big_bulk,
                stream_id: 4,
                ..Default::default()
            }),
        ),
        (
            Host,
            Body::Bulk(BulkPacket {
                endpoint: 0x82,
                status: status::BABBLE,
                length: 13,
                stream_id: 4,
                data: data(13),
            }),
        ),
        (
            Guest,
            Body::Iso(IsoPacket {
                endpoint: 0x03,
                length: 192,
                data: data(192),
                ..Default::default()
            }),
        ),
        (
            Host,
            Body::Iso(IsoPacket {
                endpoint: 0x83,
                status: status::SUCCESS,
                length: 0,
                data: Bytes::new(),
            }),
        ),
        (
            Host,
            Body::Interrupt(InterruptPacket {
                endpoint: 0x81,
                length: 8,
                data: data(8),
                ..Default::default()
            }),
        ),
        (
            Guest,
            Body::Interrupt(InterruptPacket {
                endpoint: 0x01,
                length: 3,
                data: data(3),
                ..Default::default()
            }),
        ),
        (
            Host,
            Body::Interrupt(InterruptPacket {
                endpoint: 0x01,
                status: status::TIMEOUT,
                length: 0,
                data: Bytes::new(),
            }),
        ),
        (
            Host,
            Body::BufferedBulk(BufferedBulkPacket {
                stream_id: 0,
                length: 512,
                endpoint: 0x82,
                status: status::SUCCESS,
                data: data(512),
            }),
        ),
    ]
}

/// The capability sets worth covering: none, all, each alone, all but each,
/// and bulk streams without max_packet_size (which usbredirparser would
/// never negotiate, but whose layout is still defined).
fn cap_sets() -> Vec<Caps> {
    let mut sets = vec![Caps::empty(), Caps::ALL];
    for cap in Cap::ALL {
        sets.push(Caps::empty().with(cap));
        sets.push(Caps::ALL.without(cap));
    }
    sets
}

#[test]
fn every_type_round_trips_under_every_layout() {
    let mut types = BTreeSet::new();
    for caps in cap_sets() {
        for (i, (sender, body)) in samples(caps).into_iter().enumerate() {
            types.insert(body.packet_type());
            let id = if caps.has(Cap::Ids64) {
                0x1234_5678_9abc_0000 + i as u64
            } else {
                0x8000_0000 + i as u64
            };
            let packet = Packet::new(id, body);
            let wire = encode(&packet, caps, sender);
            let back = if wire.len() < 4096 {
                decode_bytewise(&wire, caps, sender)
            } else {
                common::decode(&wire, caps, sender).unwrap().unwrap()
            };
            assert_eq!(back, packet, "under {caps:?}");
        }
    }
    let expected: BTreeSet<u32> = (0..=27).chain(100..=104).collect();
    assert_eq!(types, expected, "a packet type has no sample");
    assert!(packet_type::name(104) != "unknown");
}

#[test]
fn the_layout_is_the_only_thing_that_changes() {
    // The same packet under different capabilities differs in its length
    // exactly by the fields the capabilities add.
    let sizes = |caps: Caps| -> Vec<usize> {
        samples(caps)
            .into_iter()
            .map(|(sender, body)| encode(&Packet::new(0, body), caps, sender).len())
            .collect()
    };
    let narrow = sizes(Caps::empty());
    let wide = sizes(Caps::empty().with(Cap::Ids64));
    for (n, w) in narrow.iter().zip(&wide) {
        assert_eq!(w - n, 4, "a 64-bit id adds 4 bytes to every packet");
    }
}
