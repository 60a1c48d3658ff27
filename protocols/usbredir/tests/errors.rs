//! Malformed and hostile input: every case is a clear error or a request for
//! more bytes, never a panic, and nothing is reserved for lengths a peer
//! declares beyond the limits or before the headers are valid. The encoder
//! refuses what the peer's parser would refuse.

mod common;

use bytes::{Bytes, BytesMut};
use common::{cat, decode, nul_padded};
use hex_literal::hex;
use usbredir_proto::{
    limits, packet_type as t, Body, BulkPacket, Cap, Caps, ControlPacket, DeviceConnect, EpInfo,
    Header, Hello, InterfaceInfo, InterruptPacket, IsoPacket, Packet, ProtoError, Sender,
};

const ALL: Caps = Caps::ALL;
const NONE: Caps = Caps::empty();
use Sender::{Guest, Host};

/// A 12-byte header (32-bit id 9).
fn h32(packet_type: u32, length: u32) -> Vec<u8> {
    cat(&[
        &packet_type.to_le_bytes(),
        &length.to_le_bytes(),
        &9u32.to_le_bytes(),
    ])
}

/// A 16-byte header (64-bit id 9).
fn h64(packet_type: u32, length: u32) -> Vec<u8> {
    cat(&[
        &packet_type.to_le_bytes(),
        &length.to_le_bytes(),
        &9u64.to_le_bytes(),
    ])
}

/// A header of the width `caps` gives, id 0.
fn header(packet_type: u32, length: u32, caps: Caps) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        packet_type,
        length,
        id: 0,
    }
    .encode(caps, &mut out)
    .unwrap();
    out
}

fn encode_err(packet: &Packet, caps: Caps, sender: Sender) -> ProtoError {
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = packet
        .encode(caps, sender, &mut out)
        .expect_err("encoding must fail");
    assert_eq!(&out[..], b"keep", "a failed encode wrote something");
    err
}

// ---------------------------------------------------------------- short input

#[test]
fn short_input_asks_for_more() {
    // Every prefix of a header, whatever its content, is "not yet".
    let junk: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37)).collect();
    for caps in [NONE, ALL] {
        for n in 0..Header::wire_len(caps) {
            for sender in [Guest, Host] {
                assert_eq!(decode(&junk[..n], caps, sender), Ok(None));
            }
        }
    }
    // A valid header whose type-specific header or data has not arrived.
    let ep_info = h64(t::EP_INFO, 288);
    assert_eq!(decode(&ep_info, ALL, Host), Ok(None));
    assert_eq!(decode(&cat(&[&ep_info, &[0xff; 287]]), ALL, Host), Ok(None));
    let bulk = cat(&[
        &h32(t::BULK_PACKET, 8 + 3),
        &hex!("02 00 0300 00000000" "aabb"),
    ]);
    assert_eq!(decode(&bulk, NONE, Guest), Ok(None));
}

#[test]
fn truncated_fixtures_never_decode() {
    let packets = [
        (
            Packet::new(0, Body::Hello(Hello::new("x", ALL))),
            NONE,
            Guest,
        ),
        (
            Packet::new(
                3,
                Body::Control(ControlPacket {
                    data: Bytes::from_static(b"abc"),
                    ..ControlPacket::from_setup([0x40, 1, 0, 0, 0, 0, 3, 0])
                }),
            ),
            ALL,
            Guest,
        ),
    ];
    for (packet, caps, sender) in packets {
        let wire = common::encode(&packet, caps, sender);
        for n in 0..wire.len() {
            assert_eq!(decode(&wire[..n], caps, sender), Ok(None), "{n} bytes");
        }
    }
}

// ------------------------------------------------------------------ header

#[test]
fn unknown_packet_types() {
    for packet_type in [28, 99, 105, 0x8000_0000, u32::MAX] {
        assert_eq!(
            decode(&h32(packet_type, 0), NONE, Guest),
            Err(ProtoError::UnknownType(packet_type))
        );
    }
    // usb_redir_report_descriptor was dropped in protocol 0.2 and never had
    // a number; nothing between the control and data ranges exists.
    assert_eq!(
        decode(&h64(50, 4), ALL, Host),
        Err(ProtoError::UnknownType(50))
    );
}

#[test]
fn types_from_the_wrong_side() {
    for (packet_type, sender) in [
        (t::RESET, Host),
        (t::DEVICE_CONNECT, Guest),
        (t::EP_INFO, Guest),
        (t::SET_CONFIGURATION, Host),
        (t::CONFIGURATION_STATUS, Guest),
        (t::CANCEL_DATA_PACKET, Host),
        (t::FILTER_REJECT, Host),
        (t::DEVICE_DISCONNECT_ACK, Host),
        (t::BUFFERED_BULK_PACKET, Guest),
    ] {
        assert_eq!(
            decode(&h64(packet_type, 0), ALL, sender),
            Err(ProtoError::WrongSender {
                packet_type,
                sender
            })
        );
    }
    assert_eq!(
        encode_err(&Packet::new(0, Body::Reset), ALL, Host),
        ProtoError::WrongSender {
            packet_type: t::RESET,
            sender: Host
        }
    );
}

#[test]
fn length_over_the_limit() {
    let too_long = limits::MAX_PACKET_LEN + 1;
    for packet_type in [t::BULK_PACKET, t::HELLO, t::FILTER_FILTER, t::RESET] {
        let mut buf = BytesMut::from(&h32(packet_type, too_long)[..]);
        let capacity = buf.capacity();
        assert_eq!(
            Packet::decode(&mut buf, NONE, Guest),
            Err(ProtoError::TooLong {
                length: too_long,
                max: limits::MAX_PACKET_LEN
            })
        );
        assert_eq!(buf.capacity(), capacity, "reserved for a refused packet");
    }
    assert_eq!(
        decode(&h32(t::BULK_PACKET, u32::MAX), NONE, Guest),
        Err(ProtoError::TooLong {
            length: u32::MAX,
            max: limits::MAX_PACKET_LEN
        })
    );
}

#[test]
fn length_shorter_than_the_type_header() {
    for (packet_type, caps, length, header_len) in [
        (t::SET_CONFIGURATION, ALL, 0, 1),
        (t::HELLO, NONE, 63, 64),
        (t::INTERFACE_INFO, ALL, 131, 132),
        // 160 bytes is ep_info without max_streams, short under bulk_streams.
        (t::EP_INFO, ALL, 160, 288),
        (t::DEVICE_CONNECT, ALL, 8, 10),
        (t::BULK_PACKET, ALL, 8, 10),
        (t::CONTROL_PACKET, NONE, 9, 10),
        (t::BUFFERED_BULK_PACKET, ALL, 4, 10),
    ] {
        let sender = if packet_type == t::SET_CONFIGURATION {
            Guest
        } else {
            Host
        };
        let wire = cat(&[
            &header(packet_type, length, caps),
            &vec![0; length as usize],
        ]);
        assert_eq!(
            decode(&wire, caps, sender),
            Err(ProtoError::TooShort {
                packet_type,
                length,
                header_len
            }),
            "type {packet_type}"
        );
    }
}

#[test]
fn data_on_a_type_that_carries_none() {
    for (packet_type, sender, length, len) in [
        (t::RESET, Guest, 1, 1),
        (t::DEVICE_DISCONNECT, Host, 4, 4),
        (t::CANCEL_DATA_PACKET, Guest, 8, 8),
        (t::SET_CONFIGURATION, Guest, 2, 1),
        // device_connect with device_version_bcd, to a peer without the cap.
        (t::DEVICE_CONNECT, Host, 10, 2),
        // ep_info with max_packet_size, to a peer without the cap.
        (t::EP_INFO, Host, 160, 64),
    ] {
        assert_eq!(
            decode(&h32(packet_type, length), NONE, sender),
            Err(ProtoError::UnexpectedData { packet_type, len }),
            "type {packet_type}"
        );
    }
}

// ---------------------------------------------------- data packets' lengths

#[test]
fn control_data_must_match_its_length_in_the_direction_it_travels() {
    // OUT request announcing 4 bytes, carrying 3.
    let wire = cat(&[
        &h32(t::CONTROL_PACKET, 13),
        &hex!("00 09 00 00 0100 0000 0400" "010203"),
    ]);
    assert_eq!(
        decode(&wire, NONE, Guest),
        Err(ProtoError::DataLength {
            packet_type: t::CONTROL_PACKET,
            endpoint: 0,
            sender: Guest,
            expected: 4,
            actual: 3
        })
    );
    // IN request with data.
    let wire = cat(&[
        &h32(t::CONTROL_PACKET, 11),
        &hex!("80 06 80 00 0001 0000 1200" "00"),
    ]);
    assert_eq!(
        decode(&wire, NONE, Guest),
        Err(ProtoError::DataLength {
            packet_type: t::CONTROL_PACKET,
            endpoint: 0x80,
            sender: Guest,
            expected: 0,
            actual: 1
        })
    );
    // IN reply with less data than its length says.
    let wire = cat(&[
        &h32(t::CONTROL_PACKET, 12),
        &hex!("80 06 80 00 0001 0000 1200" "1201"),
    ]);
    assert!(matches!(
        decode(&wire, NONE, Host),
        Err(ProtoError::DataLength {
            expected: 18,
            actual: 2,
            ..
        })
    ));
    // An OUT reply with data (the host sends none back).
    let wire = cat(&[
        &h32(t::CONTROL_PACKET, 11),
        &hex!("00 09 00 00 0100 0000 0100" "00"),
    ]);
    assert!(matches!(
        decode(&wire, NONE, Host),
        Err(ProtoError::DataLength {
            expected: 0,
            actual: 1,
            ..
        })
    ));
}

#[test]
fn bulk_length_fields_must_agree_with_the_data() {
    // With 32bits_bulk_length: length_high 1 makes 0x10004, not the 4 sent.
    let wire = cat(&[
        &h64(t::BULK_PACKET, 14),
        &hex!("02 00 0400 00000000 0100" "01020304"),
    ]);
    assert_eq!(
        decode(&wire, ALL, Guest),
        Err(ProtoError::DataLength {
            packet_type: t::BULK_PACKET,
            endpoint: 2,
            sender: Guest,
            expected: 0x10004,
            actual: 4
        })
    );
    // Without it the same two bytes are data, and 6 bytes follow a length 4.
    let wire = cat(&[
        &h32(t::BULK_PACKET, 14),
        &hex!("02 00 0400 00000000" "0100 01020304"),
    ]);
    assert!(matches!(
        decode(&wire, NONE, Guest),
        Err(ProtoError::DataLength {
            expected: 4,
            actual: 6,
            ..
        })
    ));
    // Nothing is reserved for a packet whose headers are inconsistent.
    let wire = cat(&[
        &h64(t::BULK_PACKET, 10 + 0x8000),
        &hex!("82 00 0080 00000000 0000"),
    ]);
    let mut buf = BytesMut::from(&wire[..]);
    let capacity = buf.capacity();
    assert!(matches!(Packet::decode(&mut buf, ALL, Host), Ok(None)));
    assert!(buf.capacity() >= wire.len() + 0x8000 - 10, "a valid one is");
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(
        Packet::decode(&mut buf, ALL, Guest),
        Err(ProtoError::DataLength { expected: 0, .. })
    ));
    assert_eq!(buf.capacity(), capacity);
}

#[test]
fn bulk_transfers_over_128_mib() {
    let length = limits::MAX_BULK_TRANSFER_LEN + 1;
    let wire = cat(&[
        &h64(t::BULK_PACKET, 10),
        &[0x82, 0],
        &(length as u16).to_le_bytes(),
        &[0; 4],
        &((length >> 16) as u16).to_le_bytes(),
    ]);
    let err = ProtoError::TransferLength {
        length,
        max: limits::MAX_BULK_TRANSFER_LEN,
    };
    assert_eq!(decode(&wire, ALL, Guest), Err(err.clone()));
    let wire = cat(&[
        &h64(t::BUFFERED_BULK_PACKET, 10),
        &[0; 4],
        &length.to_le_bytes(),
        &[0x82, 0],
    ]);
    assert_eq!(decode(&wire, ALL, Host), Err(err.clone()));
    let wire = cat(&[
        &h64(t::START_BULK_RECEIVING, 10),
        &[0; 4],
        &length.to_le_bytes(),
        &[0x82, 1],
    ]);
    assert_eq!(decode(&wire, ALL, Guest), Err(err));
    // The largest allowed bulk request is fine (no data for IN).
    let max = limits::MAX_BULK_TRANSFER_LEN;
    let wire = cat(&[
        &h64(t::BULK_PACKET, 10),
        &[0x82, 0],
        &(max as u16).to_le_bytes(),
        &[0; 4],
        &((max >> 16) as u16).to_le_bytes(),
    ]);
    assert!(matches!(decode(&wire, ALL, Guest), Ok(Some(_))));
}

#[test]
fn transfers_in_the_direction_the_protocol_never_sends() {
    for (wire, sender, packet_type, endpoint) in [
        // An iso packet from the guest for an IN endpoint.
        (
            cat(&[&h32(t::ISO_PACKET, 4), &hex!("83 00 c000")]),
            Guest,
            t::ISO_PACKET,
            0x83,
        ),
        // An iso packet from the host for an OUT endpoint.
        (
            cat(&[&h32(t::ISO_PACKET, 4), &hex!("03 00 c000")]),
            Host,
            t::ISO_PACKET,
            0x03,
        ),
        // The guest polls interrupt IN endpoints with start_interrupt_receiving.
        (
            cat(&[&h32(t::INTERRUPT_PACKET, 4), &hex!("81 00 0800")]),
            Guest,
            t::INTERRUPT_PACKET,
            0x81,
        ),
        // Buffered bulk is for IN endpoints.
        (
            cat(&[
                &h32(t::BUFFERED_BULK_PACKET, 10),
                &hex!("00000000 00000000 02 00"),
            ]),
            Host,
            t::BUFFERED_BULK_PACKET,
            0x02,
        ),
    ] {
        assert_eq!(
            decode(&wire, NONE, sender),
            Err(ProtoError::WrongDirection {
                packet_type,
                endpoint,
                sender
            })
        );
    }
}

// ------------------------------------------------- control packets' fields

#[test]
fn receiving_on_out_endpoints() {
    for (wire, sender, packet_type, endpoint) in [
        (
            cat(&[&h32(t::START_INTERRUPT_RECEIVING, 1), &[0x01]]),
            Guest,
            t::START_INTERRUPT_RECEIVING,
            0x01,
        ),
        (
            cat(&[&h32(t::STOP_INTERRUPT_RECEIVING, 1), &[0x02]]),
            Guest,
            t::STOP_INTERRUPT_RECEIVING,
            0x02,
        ),
        (
            cat(&[&h32(t::INTERRUPT_RECEIVING_STATUS, 2), &[0, 0x01]]),
            Host,
            t::INTERRUPT_RECEIVING_STATUS,
            0x01,
        ),
        (
            cat(&[
                &h32(t::START_BULK_RECEIVING, 10),
                &hex!("00000000 00020000 02 01"),
            ]),
            Guest,
            t::START_BULK_RECEIVING,
            0x02,
        ),
        (
            cat(&[&h32(t::STOP_BULK_RECEIVING, 5), &hex!("00000000 02")]),
            Guest,
            t::STOP_BULK_RECEIVING,
            0x02,
        ),
        (
            cat(&[&h32(t::BULK_RECEIVING_STATUS, 6), &hex!("00000000 02 00")]),
            Host,
            t::BULK_RECEIVING_STATUS,
            0x02,
        ),
    ] {
        assert_eq!(
            decode(&wire, NONE, sender),
            Err(ProtoError::NotInEndpoint {
                packet_type,
                endpoint
            })
        );
    }
}

#[test]
fn more_than_32_interfaces() {
    let wire = cat(&[&h32(t::INTERFACE_INFO, 132), &hex!("21000000"), &[0; 128]]);
    assert_eq!(
        decode(&wire, NONE, Host),
        Err(ProtoError::InterfaceCount(33))
    );
    let info = InterfaceInfo {
        interface_count: 33,
        ..Default::default()
    };
    assert_eq!(
        encode_err(&Packet::new(0, Body::InterfaceInfo(info)), NONE, Host),
        ProtoError::InterfaceCount(33)
    );
}

#[test]
fn malformed_hellos() {
    // Capabilities that are not whole words.
    let wire = cat(&[&h32(t::HELLO, 66), &nul_padded::<64>(b"x"), &hex!("ff00")]);
    assert_eq!(decode(&wire, NONE, Host), Err(ProtoError::CapsLength(2)));
    // A version without its NUL.
    let wire = cat(&[&h32(t::HELLO, 68), &[b'v'; 64], &hex!("ff000000")]);
    assert_eq!(
        decode(&wire, NONE, Host),
        Err(ProtoError::Text { field: "version" })
    );
    // A version that is not UTF-8.
    let wire = cat(&[&h32(t::HELLO, 64), &nul_padded::<64>(&[0xc3, 0x28])]);
    assert_eq!(
        decode(&wire, NONE, Host),
        Err(ProtoError::Text { field: "version" })
    );
    // Versions the peer could not read back.
    for version in ["v".repeat(64), "a\0b".into()] {
        assert!(matches!(
            encode_err(
                &Packet::new(0, Body::Hello(Hello::new(version, ALL))),
                NONE,
                Guest
            ),
            ProtoError::TextTooLong {
                field: "version",
                ..
            }
        ));
    }
    // 63 bytes fit.
    common::encode(
        &Packet::new(0, Body::Hello(Hello::new("v".repeat(63), ALL))),
        NONE,
        Guest,
    );
}

#[test]
fn malformed_filters() {
    let filter = |data: &[u8]| cat(&[&h32(t::FILTER_FILTER, data.len() as u32), data]);
    let err = Err(ProtoError::Text { field: "filter" });
    assert_eq!(decode(&filter(b""), NONE, Guest), err);
    assert_eq!(decode(&filter(b"-1,-1,-1,-1,1"), NONE, Guest), err);
    assert_eq!(decode(&filter(b"-1,-1\0,-1,-1,1\0"), NONE, Guest), err);
    assert_eq!(decode(&filter(b"\xff\0"), NONE, Host), err);
    assert!(matches!(decode(&filter(b"\0"), NONE, Host), Ok(Some(_))));
    assert!(matches!(
        encode_err(
            &Packet::new(
                0,
                Body::FilterFilter {
                    rules: "a\0b".into()
                }
            ),
            NONE,
            Host
        ),
        ProtoError::TextTooLong {
            field: "filter",
            ..
        }
    ));
}

// ---------------------------------------------------------------- encoding

#[test]
fn encoder_refuses_what_the_peer_would_misparse() {
    // A 64-bit id without 64bits_ids.
    assert_eq!(
        encode_err(&Packet::new(1 << 32, Body::Reset), NONE, Guest),
        ProtoError::Id(1 << 32)
    );
    // Fields that the negotiated capabilities leave off the wire, or add.
    let connect = DeviceConnect {
        device_version_bcd: Some(0x0100),
        ..Default::default()
    };
    assert_eq!(
        encode_err(&Packet::new(0, Body::DeviceConnect(connect)), NONE, Host),
        ProtoError::CapMismatch {
            field: "device_version_bcd",
            cap: Cap::ConnectDeviceVersion
        }
    );
    let ep_info = EpInfo::default();
    assert!(matches!(
        encode_err(
            &Packet::new(0, Body::EpInfo(Box::new(ep_info))),
            Caps::of(&[Cap::EpInfoMaxPacketSize]),
            Host
        ),
        ProtoError::CapMismatch {
            field: "max_packet_size",
            ..
        }
    ));
    let ep_info = EpInfo {
        max_packet_size: Some([0; 32]),
        ..Default::default()
    };
    assert!(matches!(
        encode_err(&Packet::new(0, Body::EpInfo(Box::new(ep_info))), ALL, Host),
        ProtoError::CapMismatch {
            field: "max_streams",
            ..
        }
    ));
    // A bulk transfer over 65535 bytes without 32bits_bulk_length.
    let bulk = BulkPacket {
        endpoint: 0x81,
        length: 0x10000,
        ..Default::default()
    };
    assert_eq!(
        encode_err(&Packet::new(0, Body::Bulk(bulk)), NONE, Guest),
        ProtoError::TransferLength {
            length: 0x10000,
            max: 0xffff
        }
    );
    // Data that disagrees with its length, or goes the wrong way.
    let control = ControlPacket {
        data: Bytes::from_static(b"abc"),
        ..ControlPacket::from_setup([0x80, 6, 0, 1, 0, 0, 3, 0])
    };
    assert!(matches!(
        encode_err(&Packet::new(0, Body::Control(control.clone())), ALL, Guest),
        ProtoError::DataLength {
            expected: 0,
            actual: 3,
            ..
        }
    ));
    common::encode(&Packet::new(0, Body::Control(control)), ALL, Host);
    let iso = IsoPacket {
        endpoint: 0x81,
        length: 1,
        data: Bytes::from_static(b"x"),
        ..Default::default()
    };
    assert!(matches!(
        encode_err(&Packet::new(0, Body::Iso(iso)), ALL, Guest),
        ProtoError::WrongDirection { .. }
    ));
    let interrupt = InterruptPacket {
        endpoint: 0x01,
        length: 2,
        data: Bytes::from_static(b"x"),
        ..Default::default()
    };
    assert!(matches!(
        encode_err(&Packet::new(0, Body::Interrupt(interrupt)), ALL, Guest),
        ProtoError::DataLength {
            expected: 2,
            actual: 1,
            ..
        }
    ));
}

// ---------------------------------------------------------------- garbage

#[test]
fn garbage_is_refused_without_panicking() {
    // An HTTP request where a hello belongs.
    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_eq!(
        decode(http, NONE, Guest),
        Err(ProtoError::UnknownType(u32::from_le_bytes(*b"GET ")))
    );
    // A USB/IP OP_REQ_DEVLIST (big-endian 0x0111 0x8005): type 0x05801101.
    assert!(matches!(
        decode(&hex!("0111 8005 00000000 00000000"), NONE, Guest),
        Err(ProtoError::UnknownType(0x0580_1101))
    ));
    // All-ones and all-zero streams.
    assert!(decode(&[0xff; 64], ALL, Host).is_err());
    // All zeros is a hello of length 0: too short for its version.
    assert_eq!(
        decode(&[0; 64], NONE, Host),
        Err(ProtoError::TooShort {
            packet_type: t::HELLO,
            length: 0,
            header_len: 64
        })
    );
}
