//! Packets against literal wire bytes.
//!
//! Layouts from `usbredirproto.h` and `usb-redirection-protocol.md`: every
//! struct is packed and every integer little-endian. The header is `type`,
//! `length` (what follows the header) and `id`, 4 bytes wide, or 8 once both
//! hellos announced `usb_redir_cap_64bits_ids`. Who sends what, and which
//! fields exist under which capabilities, follows usbredirparser
//! (`usbredirparser_get_type_header_len()`); what QEMU sends follows
//! `hw/usb/redirect.c`.

mod common;

use bytes::Bytes;
use common::{cat, decode_bytewise, encode, nul_padded};
use hex_literal::hex;
use usbredir_proto::{
    ep_index, ep_type, packet_type, speed, status, type_header_len, Body, BufferedBulkPacket,
    BulkPacket, Cap, Caps, ControlPacket, DeviceConnect, EpInfo, Hello, InterfaceInfo,
    InterruptPacket, IsoPacket, Packet, Sender, HEADER_LEN_32, HEADER_LEN_64, MAX_ENDPOINTS,
};

/// What QEMU and usbredirhost both announce, so what they negotiate: all
/// eight capabilities.
const ALL: Caps = Caps::ALL;
/// Before the hellos (or with a peer that announces nothing).
const NONE: Caps = Caps::empty();

#[test]
fn constants_match_usbredirproto_h() {
    use packet_type::*;
    assert_eq!(
        [
            HELLO,
            DEVICE_CONNECT,
            DEVICE_DISCONNECT,
            RESET,
            INTERFACE_INFO,
            EP_INFO
        ],
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(
        [SET_CONFIGURATION, GET_CONFIGURATION, CONFIGURATION_STATUS],
        [6, 7, 8]
    );
    assert_eq!(
        [SET_ALT_SETTING, GET_ALT_SETTING, ALT_SETTING_STATUS],
        [9, 10, 11]
    );
    assert_eq!(
        [START_ISO_STREAM, STOP_ISO_STREAM, ISO_STREAM_STATUS],
        [12, 13, 14]
    );
    assert_eq!(
        [
            START_INTERRUPT_RECEIVING,
            STOP_INTERRUPT_RECEIVING,
            INTERRUPT_RECEIVING_STATUS
        ],
        [15, 16, 17]
    );
    assert_eq!(
        [ALLOC_BULK_STREAMS, FREE_BULK_STREAMS, BULK_STREAMS_STATUS],
        [18, 19, 20]
    );
    assert_eq!(
        [
            CANCEL_DATA_PACKET,
            FILTER_REJECT,
            FILTER_FILTER,
            DEVICE_DISCONNECT_ACK
        ],
        [21, 22, 23, 24]
    );
    assert_eq!(
        [
            START_BULK_RECEIVING,
            STOP_BULK_RECEIVING,
            BULK_RECEIVING_STATUS
        ],
        [25, 26, 27]
    );
    assert_eq!(
        [
            CONTROL_PACKET,
            BULK_PACKET,
            ISO_PACKET,
            INTERRUPT_PACKET,
            BUFFERED_BULK_PACKET
        ],
        [100, 101, 102, 103, 104]
    );
    assert_eq!(name(BUFFERED_BULK_PACKET), "buffered_bulk_packet");
    assert_eq!(name(FILTER_FILTER), "filter_filter");
    assert_eq!(name(28), "unknown");
    assert_eq!(
        [
            status::SUCCESS,
            status::CANCELLED,
            status::INVAL,
            status::IOERROR,
            status::STALL,
            status::TIMEOUT,
            status::BABBLE
        ],
        [0, 1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        [
            speed::LOW,
            speed::FULL,
            speed::HIGH,
            speed::SUPER,
            speed::UNKNOWN
        ],
        [0, 1, 2, 3, 255]
    );
    assert_eq!(
        [
            ep_type::CONTROL,
            ep_type::ISO,
            ep_type::BULK,
            ep_type::INTERRUPT,
            ep_type::INVALID
        ],
        [0, 1, 2, 3, 255]
    );
    // QEMU's EP2I(): OUT 0-15, then IN 0-15.
    assert_eq!(
        [
            ep_index(0x00),
            ep_index(0x02),
            ep_index(0x80),
            ep_index(0x81)
        ],
        [0, 2, 16, 17]
    );
}

#[test]
fn type_header_sizes_follow_the_capabilities() {
    let sizes = |caps| {
        [
            packet_type::DEVICE_CONNECT,
            packet_type::EP_INFO,
            packet_type::BULK_PACKET,
        ]
        .map(|t| type_header_len(t, caps).unwrap())
    };
    // sizeof() of the structs of usbredirproto-compat.h and usbredirproto.h.
    assert_eq!(sizes(NONE), [8, 96, 8]);
    assert_eq!(sizes(ALL), [10, 288, 10]);
    assert_eq!(
        sizes(Caps::of(&[
            Cap::ConnectDeviceVersion,
            Cap::EpInfoMaxPacketSize
        ])),
        [10, 160, 8]
    );
    assert_eq!(sizes(Caps::of(&[Cap::BulkLength32])), [8, 96, 10]);
    assert_eq!(type_header_len(packet_type::HELLO, ALL), Some(64));
    assert_eq!(type_header_len(packet_type::INTERFACE_INFO, ALL), Some(132));
    assert_eq!(type_header_len(packet_type::CONTROL_PACKET, ALL), Some(10));
    assert_eq!(
        type_header_len(packet_type::BUFFERED_BULK_PACKET, ALL),
        Some(10)
    );
    assert_eq!(type_header_len(28, ALL), None);
}

// ------------------------------------------------------------------ hello

/// QEMU's hello: `usbredirparser_init()` with version "qemu usb-redir guest "
/// QEMU_VERSION and the capabilities `usbredir_create_parser()` sets
/// (connect_device_version, filter, ep_info_max_packet_size, 64bits_ids,
/// 32bits_bulk_length, bulk_receiving, and bulk_streams as the `streams`
/// property is on by default) plus device_disconnect_ack, which the parser
/// adds for a usb-guest. Sent before the peer's caps are known, so with a
/// 32-bit id.
fn qemu_hello() -> Vec<u8> {
    cat(&[
        &hex!(
            "00000000" // type: usb_redir_hello
            "44000000" // length: 64 + 1 capability word
            "00000000" // id: 0, 32 bits wide
        ),
        &nul_padded::<64>(b"qemu usb-redir guest 8.2.2"),
        &hex!("ff000000"), // capabilities[0]: bits 0-7
    ])
}

#[test]
fn hello_from_qemu() {
    let wire = qemu_hello();
    assert_eq!(wire.len(), HEADER_LEN_32 + 64 + 4);
    let packet = decode_bytewise(&wire, NONE, Sender::Guest);
    assert_eq!(packet.id, 0);
    let Body::Hello(hello) = &packet.body else {
        panic!("not a hello: {packet:?}")
    };
    assert_eq!(hello.version, "qemu usb-redir guest 8.2.2");
    assert_eq!(hello.cap_words, [0xff]);
    assert_eq!(hello.caps(), ALL);
    assert_eq!(
        packet,
        Packet::new(
            0,
            Body::Hello(Hello::new("qemu usb-redir guest 8.2.2", ALL))
        )
    );
    // The hello is legal from either side.
    decode_bytewise(&wire, NONE, Sender::Host);
}

/// usbredirect (usbredirhost) announces the same eight capabilities, so
/// QEMU and usbredirect negotiate all of them: 64-bit ids from then on.
#[test]
fn hello_from_usbredirhost_and_negotiation() {
    let wire = cat(&[
        &hex!("00000000" "44000000" "00000000"),
        &nul_padded::<64>(b"usbredir 0.13.0"),
        &hex!("ff000000"),
    ]);
    let Body::Hello(host) = decode_bytewise(&wire, NONE, Sender::Host).body else {
        panic!("not a hello")
    };
    let negotiated = Caps::negotiate(ALL, host.caps());
    assert_eq!(negotiated, ALL);
    assert!(negotiated.has(Cap::Ids64));

    // A host from before 0.3.2 sends no capability word at all.
    let old = cat(&[
        &hex!("00000000" "40000000" "00000000"),
        &nul_padded::<64>(b"usbredirserver 0.3"),
    ]);
    let Body::Hello(old) = decode_bytewise(&old, NONE, Sender::Host).body else {
        panic!("not a hello")
    };
    assert!(old.cap_words.is_empty());
    assert_eq!(Caps::negotiate(ALL, old.caps()), NONE);

    // A later version's second word survives a round trip.
    let future = cat(&[
        &hex!("00000000" "48000000" "00000000"),
        &nul_padded::<64>(b"usbredir 9"),
        &hex!("ff030000" "01000000"),
    ]);
    let Body::Hello(future) = decode_bytewise(&future, NONE, Sender::Host).body else {
        panic!("not a hello")
    };
    assert_eq!(future.cap_words, [0x3ff, 1]);
    assert_eq!(Caps::negotiate(ALL, future.caps()), ALL);
}

// ------------------------------------------------------- device description

#[test]
fn device_connect_without_device_version() {
    // A full-speed 1209:0001 device, to a guest that lacks
    // connect_device_version: 8 bytes, 2 less than the full header.
    let wire = hex!(
        "01000000" // type: usb_redir_device_connect
        "08000000" // length
        "00000000" // id
        "01"       // speed: full
        "02"       // device_class: CDC
        "00"       // device_subclass
        "00"       // device_protocol
        "0912"     // vendor_id 0x1209
        "0100"     // product_id 0x0001
    );
    let packet = decode_bytewise(&wire, NONE, Sender::Host);
    assert_eq!(
        packet.body,
        Body::DeviceConnect(DeviceConnect {
            speed: speed::FULL,
            device_class: 2,
            device_subclass: 0,
            device_protocol: 0,
            vendor_id: 0x1209,
            product_id: 0x0001,
            device_version_bcd: None,
        })
    );
}

#[test]
fn device_connect_with_device_version_and_64_bit_id() {
    let wire = hex!(
        "01000000"         // type: usb_redir_device_connect
        "0a000000"         // length: 10
        "0000000000000000" // id: 0, 64 bits wide
        "02"               // speed: high
        "00" "00" "00"     // class, subclass, protocol: per interface
        "6b1d" "0401"      // 1d6b:0104
        "0001"             // device_version_bcd 0x0100
    );
    assert_eq!(wire.len(), HEADER_LEN_64 + 10);
    let packet = decode_bytewise(&wire, ALL, Sender::Host);
    let Body::DeviceConnect(d) = packet.body else {
        panic!("not a device_connect")
    };
    assert_eq!((d.vendor_id, d.product_id), (0x1d6b, 0x0104));
    assert_eq!(d.device_version_bcd, Some(0x0100));
}

/// Interface info of a CDC-ACM serial device: a communication interface and
/// a data interface.
#[test]
fn interface_info_of_a_cdc_acm_device() {
    let pad = [0u8; 30];
    let wire = cat(&[
        &hex!("04000000" "84000000" "00000000"), // interface_info, 132 bytes
        &hex!("02000000"),                       // interface_count
        &hex!("0001"),
        &pad, // interface: bInterfaceNumber 0, 1
        &hex!("020a"),
        &pad, // interface_class: CDC, CDC data
        &hex!("0200"),
        &pad, // interface_subclass: ACM
        &hex!("0100"),
        &pad, // interface_protocol: AT commands
    ]);
    let packet = decode_bytewise(&wire, ALL.without(Cap::Ids64), Sender::Host);
    let Body::InterfaceInfo(i) = packet.body else {
        panic!("not interface_info")
    };
    assert_eq!(i.interface_count, 2);
    assert_eq!(i.interface[..3], [0, 1, 0]);
    assert_eq!(i.interface_class[..2], [2, 0x0a]);
    assert_eq!(i.interface_subclass[..2], [2, 0]);
    assert_eq!(i.interface_protocol[..2], [1, 0]);
}

/// The CDC-ACM device's endpoints: control 0, bulk OUT 0x02, interrupt IN
/// 0x81, bulk IN 0x82; every other entry "invalid".
fn cdc_ep_info(caps: Caps) -> EpInfo {
    let mut info = EpInfo {
        ep_type: [ep_type::INVALID; MAX_ENDPOINTS],
        ..Default::default()
    };
    let mut mps = [0u16; MAX_ENDPOINTS];
    for (ep, kind, interval, interface, size) in [
        (0x00, ep_type::CONTROL, 0, 0, 64),
        (0x80, ep_type::CONTROL, 0, 0, 64),
        (0x02, ep_type::BULK, 0, 1, 512),
        (0x81, ep_type::INTERRUPT, 9, 0, 16),
        (0x82, ep_type::BULK, 0, 1, 512),
    ] {
        let i = ep_index(ep);
        info.ep_type[i] = kind;
        info.interval[i] = interval;
        info.interface[i] = interface;
        mps[i] = size;
    }
    if caps.has(Cap::EpInfoMaxPacketSize) || caps.has(Cap::BulkStreams) {
        info.max_packet_size = Some(mps);
    }
    if caps.has(Cap::BulkStreams) {
        info.max_streams = Some([0; MAX_ENDPOINTS]);
    }
    info
}

#[test]
fn ep_info_in_its_three_sizes() {
    // The type array as it goes on the wire: index 0 (ep 0 OUT) control,
    // 2 (0x02) bulk, 16 (0x80) control, 17 (0x81) interrupt, 18 (0x82) bulk.
    let mut types = [0xff; 32];
    types[0] = 0;
    types[2] = 2;
    types[16] = 0;
    types[17] = 3;
    types[18] = 2;
    let mut intervals = [0; 32];
    intervals[17] = 9;
    let mut interfaces = [0; 32];
    interfaces[2] = 1;
    interfaces[18] = 1;
    let mut sizes = [0u8; 64];
    sizes[0..2].copy_from_slice(&hex!("4000")); // 64
    sizes[4..6].copy_from_slice(&hex!("0002")); // 512
    sizes[32..34].copy_from_slice(&hex!("4000"));
    sizes[34..36].copy_from_slice(&hex!("1000")); // 16
    sizes[36..38].copy_from_slice(&hex!("0002"));

    for (caps, length, header) in [
        (NONE, 96, &hex!("05000000" "60000000" "00000000")[..]),
        (
            Caps::of(&[Cap::EpInfoMaxPacketSize]),
            160,
            &hex!("05000000" "a0000000" "00000000")[..],
        ),
        (
            ALL,
            288,
            &hex!("05000000" "20010000" "0000000000000000")[..],
        ),
    ] {
        let wire = cat(&[
            header,
            &types,
            &intervals,
            &interfaces,
            if length >= 160 { &sizes } else { &[] },
            if length == 288 { &[0u8; 128] } else { &[] },
        ]);
        assert_eq!(wire.len(), header.len() + length);
        let packet = decode_bytewise(&wire, caps, Sender::Host);
        assert_eq!(packet.body, Body::EpInfo(Box::new(cdc_ep_info(caps))));
    }
}

// ------------------------------------------------------------ control packets

/// GET_DESCRIPTOR(DEVICE, 18 bytes) as QEMU's `usbredir_handle_control()`
/// sends it: endpoint = requesttype & 0x80, no data for an IN request.
const GET_DEVICE_DESCRIPTOR: [u8; 26] = hex!(
    "64000000"         // type: usb_redir_control_packet
    "0a000000"         // length: the 10-byte header alone
    "0100000000000000" // id 1, 64-bit
    "80"               // endpoint: IN
    "06"               // request: GET_DESCRIPTOR
    "80"               // requesttype: device-to-host, standard, device
    "00"               // status: unused in a request
    "0001"             // value 0x0100: DEVICE descriptor, index 0
    "0000"             // index
    "1200"             // length: 18 wanted
);

/// The host's answer: status and length updated, the descriptor as data.
fn device_descriptor_reply() -> Vec<u8> {
    cat(&[
        &hex!(
            "64000000" "1c000000" "0100000000000000" // 10 + 18 bytes, id 1
            "80" "06" "80" "00" "0001" "0000" "1200" // success, 18 bytes
        ),
        &DEVICE_DESCRIPTOR,
    ])
}

const DEVICE_DESCRIPTOR: [u8; 18] = hex!(
    "12 01 0002 02 00 00 40 0912 0100 0001 01 02 03 01" // USB 2.0, CDC, 1209:0001
);

#[test]
fn control_get_descriptor_request_and_reply() {
    let packet = decode_bytewise(&GET_DEVICE_DESCRIPTOR, ALL, Sender::Guest);
    let setup = hex!("80 06 0001 0000 1200");
    assert_eq!(
        packet,
        Packet::new(1, Body::Control(ControlPacket::from_setup(setup)))
    );

    let reply = decode_bytewise(&device_descriptor_reply(), ALL, Sender::Host);
    let Body::Control(c) = reply.body else {
        panic!("not a control packet")
    };
    assert_eq!((reply.id, c.status, c.length), (1, status::SUCCESS, 18));
    assert_eq!(c.data, Bytes::from_static(&DEVICE_DESCRIPTOR));
}

#[test]
fn control_out_carries_its_data_one_way() {
    // SET_LINE_CODING (CDC class request to interface 0): 7 bytes OUT.
    let request = hex!(
        "64000000" "11000000" "02000000" // 10 + 7 bytes, id 2, 32-bit ids
        "00" "20" "21" "00" "0000" "0000" "0700"
        "80250000" "00" "00" "08" // 9600 baud, 1 stop bit, no parity, 8 bits
    );
    let caps = ALL.without(Cap::Ids64);
    let packet = decode_bytewise(&request, caps, Sender::Guest);
    let Body::Control(c) = &packet.body else {
        panic!("not a control packet")
    };
    assert_eq!(c.data.len(), 7);
    // The answer repeats the length, without the data.
    let reply = hex!("64000000" "0a000000" "02000000" "00" "20" "21" "00" "0000" "0000" "0700");
    let answer = decode_bytewise(&reply, caps, Sender::Host);
    let Body::Control(c) = answer.body else {
        panic!("not a control packet")
    };
    assert!(c.data.is_empty());
    assert_eq!(c.length, 7);
}

// --------------------------------------------------------------- bulk packets

/// A 72 KiB bulk IN request: `length_high` carries bit 16 and up, which only
/// exists with 32bits_bulk_length (QEMU asserts the peer has it before
/// sending more than 65535).
const BULK_IN_72K: [u8; 26] = hex!(
    "65000000"         // type: usb_redir_bulk_packet
    "0a000000"         // length: 10-byte header, no data for IN
    "0200000000000000" // id 2
    "82"               // endpoint 0x82
    "00"               // status
    "0020"             // length: low 16 bits 0x2000
    "00000000"         // stream_id
    "0100"             // length_high: 0x0001, so 0x12000 bytes
);

#[test]
fn bulk_with_32_bit_length() {
    let packet = decode_bytewise(&BULK_IN_72K, ALL, Sender::Guest);
    let Body::Bulk(b) = &packet.body else {
        panic!("not a bulk packet")
    };
    assert_eq!((b.endpoint, b.length, b.stream_id), (0x82, 0x12000, 0));
    assert!(b.data.is_empty());

    // The answer carries all of it.
    let data: Vec<u8> = (0..0x12000u32).map(|i| i as u8).collect();
    let wire = cat(&[
        &hex!(
            "65000000" "0a200100" "0200000000000000" // 10 + 0x12000 bytes
            "82" "00" "0020" "00000000" "0100"
        ),
        &data,
    ]);
    let reply = common::decode(&wire, ALL, Sender::Host).unwrap().unwrap();
    assert_eq!(
        reply.body,
        Body::Bulk(BulkPacket {
            endpoint: 0x82,
            status: status::SUCCESS,
            length: 0x12000,
            stream_id: 0,
            data: data.into(),
        })
    );
    assert_eq!(encode(&reply, ALL, Sender::Host), wire);
}

#[test]
fn bulk_with_16_bit_length() {
    // Without 32bits_bulk_length the header is 8 bytes.
    let caps = NONE;
    let out = hex!(
        "65000000" "0d000000" "03000000" // 8 + 5 bytes, id 3
        "02" "00" "0500" "00000000"      // ep 0x02, length 5, stream 0
        "68656c6c6f"                     // "hello"
    );
    let packet = decode_bytewise(&out, caps, Sender::Guest);
    let Body::Bulk(b) = &packet.body else {
        panic!("not a bulk packet")
    };
    assert_eq!(&b.data[..], b"hello");
    let done = hex!("65000000" "08000000" "03000000" "02" "00" "0500" "00000000");
    let reply = decode_bytewise(&done, caps, Sender::Host);
    assert_eq!(
        reply.body,
        Body::Bulk(BulkPacket {
            endpoint: 2,
            length: 5,
            ..Default::default()
        })
    );
}

#[test]
fn buffered_bulk_from_the_host() {
    let wire = hex!(
        "68000000" "0e000000" "0500000000000000" // 10 + 4 bytes, id 5
        "00000000"                               // stream_id
        "04000000"                               // length
        "82" "00"                                // endpoint, status
        "6f6b0d0a"                               // "ok\r\n"
    );
    let packet = decode_bytewise(&wire, ALL, Sender::Host);
    assert_eq!(
        packet.body,
        Body::BufferedBulk(BufferedBulkPacket {
            stream_id: 0,
            length: 4,
            endpoint: 0x82,
            status: 0,
            data: Bytes::from_static(b"ok\r\n"),
        })
    );
}

// -------------------------------------------------- iso and interrupt packets

#[test]
fn iso_in_from_the_host() {
    let wire = hex!(
        "66000000" "08000000" "0700000000000000" // 4 + 4 bytes, id 7
        "83" "00" "0400" "01020304"
    );
    let packet = decode_bytewise(&wire, ALL, Sender::Host);
    assert_eq!(
        packet.body,
        Body::Iso(IsoPacket {
            endpoint: 0x83,
            status: 0,
            length: 4,
            data: Bytes::from_static(&[1, 2, 3, 4]),
        })
    );
}

#[test]
fn interrupt_in_after_start_interrupt_receiving() {
    let start = hex!("0f000000" "01000000" "0800000000000000" "81");
    assert_eq!(
        decode_bytewise(&start, ALL, Sender::Guest).body,
        Body::StartInterruptReceiving { endpoint: 0x81 }
    );
    let started = hex!("11000000" "02000000" "0800000000000000" "00" "81");
    assert_eq!(
        decode_bytewise(&started, ALL, Sender::Host).body,
        Body::InterruptReceivingStatus {
            status: status::SUCCESS,
            endpoint: 0x81
        }
    );
    // CDC SERIAL_STATE notification, 10 bytes, the host's first (id 0).
    let wire = hex!(
        "67000000" "0e000000" "0000000000000000"
        "81" "00" "0a00" "a1 20 0000 0000 0200 0300"
    );
    let packet = decode_bytewise(&wire, ALL, Sender::Host);
    let Body::Interrupt(InterruptPacket { length, data, .. }) = packet.body else {
        panic!("not an interrupt packet")
    };
    assert_eq!((length, data.len()), (10, 10));
}

// ----------------------------------------------------- the small control packets

#[test]
fn filter_filter_and_reject() {
    let rules = b"0x03,-1,-1,-1,0|-1,-1,-1,-1,1";
    let wire = cat(&[
        &hex!("17000000" "1e000000" "0000000000000000"), // 29 + 1 bytes
        rules,
        &[0],
    ]);
    let packet = decode_bytewise(&wire, ALL, Sender::Guest);
    assert_eq!(
        packet.body,
        Body::FilterFilter {
            rules: String::from_utf8(rules.to_vec()).unwrap()
        }
    );
    let reject = hex!("16000000" "00000000" "0000000000000000");
    assert_eq!(
        decode_bytewise(&reject, ALL, Sender::Guest).body,
        Body::FilterReject
    );
}

#[test]
fn cancel_with_a_64_bit_id() {
    let wire = hex!("15000000" "00000000" "0200000001000000");
    let packet = decode_bytewise(&wire, ALL, Sender::Guest);
    assert_eq!(packet, Packet::new(0x1_0000_0002, Body::CancelDataPacket));
}

#[test]
fn configuration_and_alt_setting() {
    let caps = ALL.without(Cap::Ids64);
    for (wire, sender, body) in [
        (
            &hex!("06000000" "01000000" "09000000" "01")[..],
            Sender::Guest,
            Body::SetConfiguration { configuration: 1 },
        ),
        (
            &hex!("08000000" "02000000" "09000000" "00" "01")[..],
            Sender::Host,
            Body::ConfigurationStatus {
                status: 0,
                configuration: 1,
            },
        ),
        (
            &hex!("09000000" "02000000" "0a000000" "01" "01")[..],
            Sender::Guest,
            Body::SetAltSetting {
                interface: 1,
                alt: 1,
            },
        ),
        (
            &hex!("0b000000" "03000000" "0a000000" "04" "01" "00")[..],
            Sender::Host,
            Body::AltSettingStatus {
                status: status::STALL,
                interface: 1,
                alt: 0,
            },
        ),
        (
            &hex!("19000000" "0a000000" "0b000000" "00000000" "00400000" "82" "04")[..],
            Sender::Guest,
            Body::StartBulkReceiving {
                stream_id: 0,
                bytes_per_transfer: 0x4000,
                endpoint: 0x82,
                no_transfers: 4,
            },
        ),
        (
            &hex!("14000000" "09000000" "0c000000" "00000600" "10000000" "00")[..],
            Sender::Host,
            Body::BulkStreamsStatus {
                endpoints: 0x0006_0000, // ep_index 17 and 18: 0x81, 0x82
                no_streams: 16,
                status: 0,
            },
        ),
    ] {
        assert_eq!(decode_bytewise(wire, caps, sender).body, body);
    }
    assert_eq!(
        InterfaceInfo::default().interface_count,
        0,
        "an empty interface list is the default"
    );
}
