//! Malformed and hostile input: every case is a clear error or a request for
//! more bytes, never a panic, and nothing is allocated for lengths a peer
//! declares beyond the limits.

mod common;

use bytes::{Bytes, BytesMut};
use common::{cat, nul_padded};
use hex_literal::hex;
use usbip_proto::{
    limits, op_code, op_status, CmdMessage, CmdSubmit, DeviceInfo, Direction, IsoPacket, OpReply,
    OpRequest, ProtoError, RetMessage, RetSubmit, SubmitInfo, UrbHeader, BUSID_SIZE,
    DEVICE_INFO_LEN, ISO_PACKET_LEN, NON_ISO_PACKETS, PATH_SIZE, URB_HEADER_LEN,
};

/// A CMD_SUBMIT header with the fields the tests vary.
fn cmd_submit(direction: u32, ep: u32, len: u32, packets: u32) -> Vec<u8> {
    cat(&[
        &hex!("00000001" "00000009" "00010002"),
        &direction.to_be_bytes(),
        &ep.to_be_bytes(),
        &hex!("00000000"), // transfer_flags
        &len.to_be_bytes(),
        &hex!("00000000"), // start_frame
        &packets.to_be_bytes(),
        &hex!("00000000" "0000000000000000"),
    ])
}

/// A RET_SUBMIT header for seqnum 9.
fn ret_submit(actual_length: u32, packets: u32) -> Vec<u8> {
    cat(&[
        &hex!("00000003" "00000009" "00000000" "00000000" "00000000" "00000000"),
        &actual_length.to_be_bytes(),
        &hex!("00000000"),
        &packets.to_be_bytes(),
        &hex!("00000000" "0000000000000000"),
    ])
}

fn iso(offset: u32, length: u32, actual: u32) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&offset.to_be_bytes());
    out[4..8].copy_from_slice(&length.to_be_bytes());
    out[8..12].copy_from_slice(&actual.to_be_bytes());
    out
}

fn cmd(wire: &[u8]) -> Result<Option<CmdMessage>, ProtoError> {
    let mut buf = BytesMut::from(wire);
    let res = CmdMessage::decode(&mut buf);
    if !matches!(res, Ok(Some(_))) {
        assert_eq!(&buf[..], wire, "a failed or partial decode consumed bytes");
    }
    res
}

fn ret(wire: &[u8], dir: Option<Direction>) -> Result<Option<RetMessage>, ProtoError> {
    let mut buf = BytesMut::from(wire);
    let res = RetMessage::decode(&mut buf, |_| dir);
    if !matches!(res, Ok(Some(_))) {
        assert_eq!(&buf[..], wire, "a failed or partial decode consumed bytes");
    }
    res
}

fn ret_with(wire: &[u8], info: SubmitInfo) -> Result<Option<RetMessage>, ProtoError> {
    RetMessage::decode_with(&mut BytesMut::from(wire), |_| Some(info))
}

// ------------------------------------------------------------ short input

#[test]
fn short_input_asks_for_more() {
    // Every prefix of a header, whatever its content, is "not yet".
    let junk: Vec<u8> = (0..URB_HEADER_LEN as u8)
        .map(|i| i.wrapping_mul(37))
        .collect();
    for n in 0..URB_HEADER_LEN {
        assert_eq!(cmd(&junk[..n]), Ok(None));
        assert_eq!(ret(&junk[..n], None), Ok(None));
        assert_eq!(
            RetMessage::decode_with(&mut BytesMut::from(&junk[..n]), |_| None),
            Ok(None)
        );
    }
    for n in 0..8 {
        assert_eq!(OpRequest::decode(&mut BytesMut::from(&junk[..n])), Ok(None));
        for req in [op_code::REQ_DEVLIST, op_code::REQ_IMPORT] {
            assert_eq!(
                OpReply::decode(&mut BytesMut::from(&junk[..n]), req),
                Ok(None)
            );
        }
    }
    // A body that has not arrived yet.
    assert_eq!(cmd(&cmd_submit(0, 1, 10, 0)[..]), Ok(None));
    assert_eq!(
        OpRequest::decode(&mut BytesMut::from(
            &hex!("0111" "8003" "00000000" "3100")[..]
        )),
        Ok(None)
    );
}

// ---------------------------------------------------------------- op

#[test]
fn wrong_version() {
    let wire = hex!("0110" "8005" "00000000");
    assert_eq!(
        OpRequest::decode(&mut BytesMut::from(&wire[..])),
        Err(ProtoError::Version(0x0110))
    );
    let wire = hex!("0100" "0005" "00000000" "00000000");
    assert_eq!(
        OpReply::decode(&mut BytesMut::from(&wire[..]), op_code::REQ_DEVLIST),
        Err(ProtoError::Version(0x0100))
    );
}

#[test]
fn unknown_op_code() {
    // OP_REQ_DEVINFO exists in usbip_network.h but no usbipd answers it.
    let wire = hex!("0111" "8002" "00000000");
    assert_eq!(
        OpRequest::decode(&mut BytesMut::from(&wire[..])),
        Err(ProtoError::UnknownOpCode(0x8002))
    );
    // A reply where a request belongs.
    let wire = hex!("0111" "0005" "00000000");
    assert_eq!(
        OpRequest::decode(&mut BytesMut::from(&wire[..])),
        Err(ProtoError::UnknownOpCode(0x0005))
    );
    // The wrong reply for the request made.
    let wire = hex!("0111" "0003" "00000000");
    assert_eq!(
        OpReply::decode(&mut BytesMut::from(&wire[..]), op_code::REQ_DEVLIST),
        Err(ProtoError::UnexpectedOpCode {
            expected: op_code::REP_DEVLIST,
            found: op_code::REP_IMPORT
        })
    );
}

#[test]
fn busid_without_nul() {
    let wire = cat(&[&hex!("0111" "8003" "00000000"), &[b'1'; BUSID_SIZE]]);
    assert_eq!(
        OpRequest::decode(&mut BytesMut::from(&wire[..])),
        Err(ProtoError::Text { field: "busid" })
    );
}

#[test]
fn busid_not_utf8() {
    let wire = cat(&[
        &hex!("0111" "8003" "00000000"),
        &nul_padded::<BUSID_SIZE>(&[0xff, 0xfe]),
    ]);
    assert_eq!(
        OpRequest::decode(&mut BytesMut::from(&wire[..])),
        Err(ProtoError::Text { field: "busid" })
    );
}

#[test]
fn device_path_without_nul() {
    let wire = cat(&[
        &hex!("0111" "0003" "00000000"),
        &[b'/'; PATH_SIZE],
        &[0; DEVICE_INFO_LEN - PATH_SIZE],
    ]);
    assert_eq!(
        OpReply::decode(&mut BytesMut::from(&wire[..]), op_code::REQ_IMPORT),
        Err(ProtoError::Text { field: "path" })
    );
}

#[test]
fn too_long_busid_on_encode() {
    let busid = "1".repeat(BUSID_SIZE); // no room for the NUL
    let mut out = BytesMut::new();
    assert_eq!(
        OpRequest::Import { busid }.encode(&mut out),
        Err(ProtoError::TooLong {
            field: "busid",
            len: 32,
            max: 31
        })
    );
    assert!(out.is_empty(), "nothing written on error");
    // 31 bytes fit.
    OpRequest::Import {
        busid: "1".repeat(BUSID_SIZE - 1),
    }
    .encode(&mut out)
    .unwrap();
    assert_eq!(out.len(), 8 + BUSID_SIZE);
    // An embedded NUL would truncate it on the other side.
    assert!(matches!(
        OpRequest::Import {
            busid: "1-1\0x".into()
        }
        .encode(&mut BytesMut::new()),
        Err(ProtoError::TooLong { field: "busid", .. })
    ));
}

#[test]
fn too_long_path_on_encode() {
    let device = DeviceInfo {
        path: "/".repeat(PATH_SIZE),
        busid: "1-1".into(),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    assert!(matches!(
        OpReply::Import {
            status: op_status::OK,
            device: Some(device)
        }
        .encode(&mut out),
        Err(ProtoError::TooLong { field: "path", .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn device_list_too_long() {
    let wire = hex!("0111" "0005" "00000000" "00000401");
    let mut buf = BytesMut::from(&wire[..]);
    let cap = buf.capacity();
    assert_eq!(
        OpReply::decode(&mut buf, op_code::REQ_DEVLIST),
        Err(ProtoError::DeviceCount(1025))
    );
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn device_list_count_allocates_nothing_before_the_devices_arrive() {
    let wire = hex!("0111" "0005" "00000000" "00000400");
    let mut buf = BytesMut::from(&wire[..]);
    let cap = buf.capacity();
    assert_eq!(OpReply::decode(&mut buf, op_code::REQ_DEVLIST), Ok(None));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn inconsistent_replies_are_refused_on_encode() {
    let device = DeviceInfo {
        busid: "1-1".into(),
        num_interfaces: 1,
        ..Default::default()
    };
    let cases = [
        OpReply::Import {
            status: op_status::OK,
            device: None,
        },
        OpReply::Import {
            status: op_status::NA,
            device: Some(device.clone()),
        },
        OpReply::DevList {
            status: op_status::ERROR,
            devices: vec![(device.clone(), vec![Default::default()])],
        },
        // num_interfaces says 1, the list has none.
        OpReply::DevList {
            status: op_status::OK,
            devices: vec![(device, vec![])],
        },
    ];
    for reply in cases {
        let mut out = BytesMut::new();
        assert!(
            matches!(reply.encode(&mut out), Err(ProtoError::Inconsistent(_))),
            "{reply:?}"
        );
        assert!(out.is_empty());
    }
    let too_many = OpReply::DevList {
        status: op_status::OK,
        devices: vec![(DeviceInfo::default(), vec![]); limits::MAX_DEVICES as usize + 1],
    };
    assert_eq!(
        too_many.encode(&mut BytesMut::new()),
        Err(ProtoError::DeviceCount(limits::MAX_DEVICES + 1))
    );
}

// ---------------------------------------------------------------- URB header

#[test]
fn unknown_command() {
    let mut wire = cmd_submit(0, 0, 0, 0);
    wire[3] = 5;
    assert_eq!(cmd(&wire), Err(ProtoError::UnknownCommand(5)));
    assert_eq!(
        ret(&wire, Some(Direction::In)),
        Err(ProtoError::UnknownCommand(5))
    );
    // Each side only accepts the other side's messages.
    wire[3] = 3; // RET_SUBMIT sent to a server
    assert_eq!(cmd(&wire), Err(ProtoError::UnknownCommand(3)));
    wire[3] = 1; // CMD_SUBMIT sent to a client
    assert_eq!(
        ret(&wire, Some(Direction::In)),
        Err(ProtoError::UnknownCommand(1))
    );
}

#[test]
fn direction_2() {
    assert_eq!(cmd(&cmd_submit(2, 1, 0, 0)), Err(ProtoError::Direction(2)));
}

#[test]
fn endpoint_16() {
    assert_eq!(cmd(&cmd_submit(0, 15, 0, 0)).map(|m| m.is_some()), Ok(true));
    assert_eq!(cmd(&cmd_submit(0, 16, 0, 0)), Err(ProtoError::Endpoint(16)));
    assert_eq!(
        cmd(&cmd_submit(1, 0x81, 0, 0)),
        Err(ProtoError::Endpoint(0x81)),
        "the direction bit does not belong in ep"
    );
}

// ------------------------------------------------------- lengths and limits

#[test]
fn negative_transfer_buffer_length() {
    assert_eq!(
        cmd(&cmd_submit(0, 1, 0xffff_ffff, 0)),
        Err(ProtoError::TransferLength(-1))
    );
    assert_eq!(
        cmd(&cmd_submit(1, 1, 0x8000_0000, 0)),
        Err(ProtoError::TransferLength(i32::MIN))
    );
}

#[test]
fn transfer_buffer_length_over_16_mib() {
    let over = limits::MAX_TRANSFER_LEN + 1;
    for dir in [0, 1] {
        let wire = cmd_submit(dir, 1, over, 0);
        let mut buf = BytesMut::from(&wire[..]);
        let cap = buf.capacity();
        assert_eq!(
            CmdMessage::decode(&mut buf),
            Err(ProtoError::TransferLength(over as i32))
        );
        assert_eq!(buf.capacity(), cap, "reserved for a rejected length");
    }
    let wire = ret_submit(over, 0);
    assert_eq!(
        ret(&wire, Some(Direction::In)),
        Err(ProtoError::TransferLength(over as i32))
    );
}

#[test]
fn reserve_is_bounded_by_the_limits() {
    // A valid header declaring the maximum: the decoder may reserve room for
    // the body (that is what the peer is about to send), never more.
    let max = limits::MAX_TRANSFER_LEN;
    let mut buf = BytesMut::from(&cmd_submit(0, 1, max, 0)[..]);
    assert_eq!(CmdMessage::decode(&mut buf), Ok(None));
    assert!(buf.capacity() >= URB_HEADER_LEN + max as usize);
    assert!(buf.capacity() <= URB_HEADER_LEN + max as usize + 4096);

    // An IN request carries no data, so only the descriptors are reserved.
    let mut buf = BytesMut::from(&cmd_submit(1, 1, max, limits::MAX_ISO_PACKETS)[..]);
    assert_eq!(CmdMessage::decode(&mut buf), Ok(None));
    let descriptors = limits::MAX_ISO_PACKETS as usize * ISO_PACKET_LEN;
    assert!(buf.capacity() <= URB_HEADER_LEN + descriptors + 4096);

    // A reply can be held to its request's buffer.
    let small = SubmitInfo {
        direction: Direction::In,
        transfer_buffer_length: 64,
        number_of_packets: 0,
    };
    let mut buf = BytesMut::from(&ret_submit(max, 0)[..]);
    let cap = buf.capacity();
    assert_eq!(
        RetMessage::decode_with(&mut buf, |_| Some(small)),
        Err(ProtoError::ActualLength {
            actual: max as i32,
            limit: 64
        })
    );
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn number_of_packets_over_1024() {
    assert_eq!(
        cmd(&cmd_submit(1, 1, 0, 1025)),
        Err(ProtoError::IsoPackets(1025))
    );
    assert_eq!(
        cmd(&cmd_submit(1, 1, 0, 0xffff_fffe)),
        Err(ProtoError::IsoPackets(-2))
    );
    assert_eq!(
        ret(&ret_submit(0, 1025), Some(Direction::In)),
        Err(ProtoError::IsoPackets(1025))
    );
    // 1024 is allowed: it waits for its descriptors.
    assert_eq!(cmd(&cmd_submit(1, 1, 0, 1024)), Ok(None));
}

#[test]
fn zero_and_all_ones_packets_both_mean_not_iso() {
    for packets in [0, NON_ISO_PACKETS] {
        let wire = cat(&[&cmd_submit(0, 1, 3, packets), b"abc"]);
        let Ok(Some(CmdMessage::Submit(c))) = cmd(&wire) else {
            panic!("number_of_packets {packets:#x} did not decode")
        };
        assert!(c.iso_packets.is_empty());
        assert_eq!(c.number_of_packets, packets, "kept as received");
        assert_eq!(&c.data[..], b"abc");

        let wire = cat(&[&ret_submit(3, packets), b"abc"]);
        let Ok(Some(RetMessage::Submit(s))) = ret(&wire, Some(Direction::In)) else {
            panic!("number_of_packets {packets:#x} did not decode")
        };
        assert!(s.iso_packets.is_empty());
        assert_eq!(s.number_of_packets, packets);
    }
}

// -------------------------------------------------------------- isochronous

#[test]
fn iso_packet_outside_the_buffer() {
    let layout = |packets: &[[u8; 16]]| {
        let mut wire = cmd_submit(1, 1, 16, packets.len() as u32);
        for p in packets {
            wire.extend_from_slice(p);
        }
        cmd(&wire)
    };
    assert!(matches!(layout(&[iso(0, 8, 0), iso(8, 8, 0)]), Ok(Some(_))));
    assert_eq!(
        layout(&[iso(0, 8, 0), iso(9, 8, 0)]),
        Err(ProtoError::IsoLayout("packet outside the transfer buffer"))
    );
    assert_eq!(
        layout(&[iso(0xffff_fff8, 0x10, 0)]),
        Err(ProtoError::IsoLayout("packet outside the transfer buffer")),
        "offset + length must not wrap"
    );
}

#[test]
fn cmd_iso_packet_with_actual_length() {
    // Linux's usbip-host drops the connection for this (usbip_recv_iso()
    // sums the packets' actual lengths against the new URB's 0).
    let wire = cat(&[&cmd_submit(1, 1, 16, 2), &iso(0, 8, 0), &iso(8, 8, 1)]);
    assert_eq!(
        cmd(&wire),
        Err(ProtoError::IsoLayout(
            "CMD_SUBMIT packet has a non-zero actual_length"
        ))
    );
}

#[test]
fn ret_iso_lengths_not_adding_up() {
    // vhci-hcd's usbip_recv_iso() drops the connection when the packets'
    // actual lengths do not add up to actual_length, IN or OUT.
    let wire = cat(&[
        &ret_submit(8, 2),
        b"abcdefgh",
        &iso(0, 8, 3),
        &iso(8, 8, 4), // 3 + 4 = 7, not 8
    ]);
    assert_eq!(
        ret(&wire, Some(Direction::In)),
        Err(ProtoError::IsoLayout(
            "packet actual lengths do not add up to actual_length"
        ))
    );
    let wire = cat(&[&ret_submit(8, 2), &iso(0, 8, 3), &iso(8, 8, 4)]);
    assert_eq!(
        ret(&wire, Some(Direction::Out)),
        Err(ProtoError::IsoLayout(
            "packet actual lengths do not add up to actual_length"
        ))
    );
    // A packet claiming more than it asked for.
    let wire = cat(&[&ret_submit(9, 1), b"abcdefghi", &iso(0, 8, 9)]);
    assert_eq!(
        ret(&wire, Some(Direction::In)),
        Err(ProtoError::IsoLayout(
            "packet actual_length exceeds its length"
        ))
    );
}

#[test]
fn ret_iso_held_to_the_request() {
    let wire = cat(&[&ret_submit(4, 2), b"abcd", &iso(0, 8, 4), &iso(8, 8, 0)]);
    let one_packet = SubmitInfo {
        direction: Direction::In,
        transfer_buffer_length: 16,
        number_of_packets: 1,
    };
    assert_eq!(ret_with(&wire, one_packet), Err(ProtoError::IsoPackets(2)));
    let non_iso = SubmitInfo {
        number_of_packets: 0,
        ..one_packet
    };
    assert_eq!(ret_with(&wire, non_iso), Err(ProtoError::IsoPackets(2)));
    let small_buffer = SubmitInfo {
        transfer_buffer_length: 12,
        number_of_packets: 2,
        ..one_packet
    };
    assert_eq!(
        ret_with(&wire, small_buffer),
        Err(ProtoError::IsoLayout("packet outside the transfer buffer"))
    );
    let right = SubmitInfo {
        number_of_packets: 2,
        ..one_packet
    };
    assert!(matches!(ret_with(&wire, right), Ok(Some(_))));
}

#[test]
fn ret_actual_length_over_the_request() {
    // usbip_recv_xbuff(): "should not happen, probably malicious packet".
    let wire = cat(&[&ret_submit(5, 0), b"12345"]);
    let info = SubmitInfo {
        direction: Direction::In,
        transfer_buffer_length: 4,
        number_of_packets: 0,
    };
    assert_eq!(
        ret_with(&wire, info),
        Err(ProtoError::ActualLength {
            actual: 5,
            limit: 4
        })
    );
}

// ----------------------------------------------------------------- seqnums

#[test]
fn ret_submit_for_unknown_seqnum() {
    let wire = ret_submit(0, 0);
    assert_eq!(ret(&wire, None), Err(ProtoError::UnknownSeqnum(9)));
    assert_eq!(
        RetMessage::decode_with(&mut BytesMut::from(&wire[..]), |_| None),
        Err(ProtoError::UnknownSeqnum(9))
    );
}

// ------------------------------------------------------ encoder misuse

#[test]
fn encoder_refuses_messages_the_peer_would_misparse() {
    let header = UrbHeader {
        seqnum: 1,
        devid: 0x0001_0002,
        direction: Direction::Out,
        ep: 1,
    };
    let submit = CmdSubmit {
        header,
        transfer_buffer_length: 4,
        data: Bytes::from_static(b"abc"), // one byte short
        ..Default::default()
    };
    let mut out = BytesMut::new();
    assert!(CmdMessage::Submit(submit.clone()).encode(&mut out).is_err());
    assert!(out.is_empty());

    let iso = CmdSubmit {
        data: Bytes::from_static(b"abcd"),
        number_of_packets: 2, // but one packet given
        iso_packets: vec![IsoPacket {
            offset: 0,
            length: 4,
            ..Default::default()
        }],
        ..submit
    };
    assert_eq!(
        CmdMessage::Submit(iso).encode(&mut out),
        Err(ProtoError::IsoLayout("number_of_packets mismatch"))
    );

    // An IN reply without its data would make the client read the next
    // message as payload; only encode_for can tell.
    let reply = RetMessage::Submit(RetSubmit {
        header: UrbHeader {
            seqnum: 1,
            ..Default::default()
        },
        actual_length: 4,
        ..Default::default()
    });
    let request = SubmitInfo {
        direction: Direction::In,
        transfer_buffer_length: 4,
        number_of_packets: 0,
    };
    assert!(matches!(
        reply.encode_for(&request, &mut out),
        Err(ProtoError::Inconsistent(_))
    ));
    assert!(out.is_empty());
    let out_request = SubmitInfo {
        direction: Direction::Out,
        ..request
    };
    reply.encode_for(&out_request, &mut out).unwrap();
    assert_eq!(out.len(), URB_HEADER_LEN);
}
