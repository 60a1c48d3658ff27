//! URB messages against literal wire bytes.
//!
//! Layouts from `drivers/usb/usbip/usbip_common.h`: `struct usbip_header` is
//! `usbip_header_basic` (20 bytes) plus a 28-byte union of
//! `usbip_header_cmd_submit`, `_ret_submit`, `_cmd_unlink`, `_ret_unlink`;
//! then the transfer buffer, then `usbip_iso_packet_descriptor`s (16 bytes
//! each). All integers are big-endian (`usbip_header_correct_endian()` in
//! `usbip_common.c`); the setup packet is copied verbatim from the URB
//! (`setup_cmd_submit_pdu()` in `vhci_tx.c`), so it stays little-endian.
//! Who sends what:
//! * CMD_SUBMIT: `vhci_tx.c` sends the header, the whole OUT buffer
//!   (`transfer_buffer_length` bytes, never for IN) and, for an isochronous
//!   pipe, the descriptors;
//! * RET_SUBMIT: `stub_tx.c` zeroes devid/direction/ep (`setup_base_pdu()`),
//!   sends `actual_length` bytes for IN (ISO IN compacted: each packet's
//!   `actual_length` bytes back to back), nothing for OUT, then the
//!   descriptors for an isochronous pipe;
//! * CMD_UNLINK / RET_UNLINK: the header alone.

mod common;

use bytes::{Bytes, BytesMut};
use common::{cat, decode_bytewise};
use hex_literal::hex;
use usbip_proto::{
    command, errno, transfer_flags, CmdMessage, CmdSubmit, CmdUnlink, Direction, IsoPacket,
    RetMessage, RetSubmit, RetUnlink, SetupPacket, SubmitInfo, UrbHeader, ISO_PACKET_LEN,
    NON_ISO_PACKETS, URB_HEADER_LEN,
};

/// devid of the imported device: busnum 1 << 16 | devnum 2 (stub's
/// `sdev->devid`, echoed by vhci as `vdev->devid`).
const DEVID: u32 = 0x0001_0002;

fn encode_cmd(m: &CmdMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode(&mut out).expect("encodes");
    out.to_vec()
}

fn encode_ret(m: &RetMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode(&mut out).expect("encodes");
    out.to_vec()
}

/// Decodes a server message the way a client does, knowing its requests.
fn decode_ret(wire: &[u8], requests: &[(u32, SubmitInfo)]) -> RetMessage {
    let lookup = |seqnum: u32| {
        requests
            .iter()
            .find(|(s, _)| *s == seqnum)
            .map(|(_, info)| *info)
    };
    let loose = decode_bytewise(wire, |b| {
        RetMessage::decode(b, |s| lookup(s).map(|i| i.direction))
    });
    let strict = decode_bytewise(wire, |b| RetMessage::decode_with(b, lookup));
    assert_eq!(loose, strict);
    // The server side, knowing the request, produces the same bytes.
    if let RetMessage::Submit(s) = &strict {
        let info = lookup(s.header.seqnum).expect("known request");
        let mut out = BytesMut::new();
        strict.encode_for(&info, &mut out).expect("encode_for");
        assert_eq!(&out[..], wire);
    }
    strict
}

/// The header every Linux reply carries: only the seqnum is set.
fn reply_header(seqnum: u32) -> UrbHeader {
    UrbHeader {
        seqnum,
        ..Default::default()
    }
}

#[test]
fn constants_match_linux() {
    assert_eq!(URB_HEADER_LEN, 48); // sizeof(struct usbip_header)
    assert_eq!(ISO_PACKET_LEN, 16); // sizeof(struct usbip_iso_packet_descriptor)
    assert_eq!(
        [
            command::CMD_SUBMIT,
            command::CMD_UNLINK,
            command::RET_SUBMIT,
            command::RET_UNLINK
        ],
        [1, 2, 3, 4]
    );
    // USBIP_URB_* of include/uapi/linux/usbip.h
    assert_eq!(transfer_flags::SHORT_NOT_OK, 0x0001);
    assert_eq!(transfer_flags::ISO_ASAP, 0x0002);
    assert_eq!(transfer_flags::NO_TRANSFER_DMA_MAP, 0x0004);
    assert_eq!(transfer_flags::ZERO_PACKET, 0x0040);
    assert_eq!(transfer_flags::NO_INTERRUPT, 0x0080);
    assert_eq!(transfer_flags::FREE_BUFFER, 0x0100);
    assert_eq!(transfer_flags::DIR_IN, 0x0200);
    assert_eq!(transfer_flags::DMA_MAP_SG, 0x0004_0000);
    // include/uapi/asm-generic/errno*.h
    assert_eq!(
        [
            errno::ENOENT,
            errno::EXDEV,
            errno::ENODEV,
            errno::EINVAL,
            errno::EPIPE,
            errno::EPROTO,
            errno::EOVERFLOW,
            errno::ECONNRESET,
            errno::ESHUTDOWN,
            errno::ETIMEDOUT,
            errno::EREMOTEIO
        ],
        [2, 18, 19, 22, 32, 71, 75, 104, 108, 110, 121]
    );
}

// ---------------------------------------------------------------- CMD_SUBMIT

/// GET_DESCRIPTOR(DEVICE, 18 bytes) on ep 0, as vhci-hcd sends it for
/// `usb_get_device_descriptor()`.
const CMD_CONTROL_IN: [u8; 48] = hex!(
    // usbip_header_basic
    "00000001" // command: USBIP_CMD_SUBMIT
    "00000001" // seqnum
    "00010002" // devid: busnum 1 << 16 | devnum 2
    "00000001" // direction: USBIP_DIR_IN
    "00000000" // ep 0
    // usbip_header_cmd_submit
    "00000200" // transfer_flags: URB_DIR_IN
    "00000012" // transfer_buffer_length: 18
    "00000000" // start_frame
    "00000000" // number_of_packets: 0, what vhci-hcd sends for non-iso
    "00000000" // interval
    // setup[8], little-endian usb_ctrlrequest
    "80"       // bmRequestType: device-to-host, standard, device
    "06"       // bRequest: GET_DESCRIPTOR
    "0001"     // wValue 0x0100: descriptor type DEVICE, index 0
    "0000"     // wIndex 0
    "1200"     // wLength 18
);

#[test]
fn cmd_submit_control_in_with_setup() {
    let msg = decode_bytewise(&CMD_CONTROL_IN, CmdMessage::decode);
    let CmdMessage::Submit(ref c) = msg else {
        panic!("not a submit: {msg:?}")
    };
    assert_eq!(
        c.header,
        UrbHeader {
            seqnum: 1,
            devid: DEVID,
            direction: Direction::In,
            ep: 0,
        }
    );
    assert_eq!(c.transfer_flags, transfer_flags::DIR_IN);
    assert_eq!(c.transfer_buffer_length, 18);
    assert_eq!(c.number_of_packets, 0);
    assert_eq!(
        c.setup,
        SetupPacket {
            request_type: 0x80,
            request: 0x06,
            value: 0x0100,
            index: 0,
            length: 18,
        }
    );
    assert!(c.data.is_empty(), "IN requests carry no data");
    assert!(!c.is_iso());
    assert_eq!(encode_cmd(&msg), CMD_CONTROL_IN);
}

/// 12 bytes to a bulk OUT endpoint, with the `number_of_packets` the protocol
/// document prescribes for non-iso (and usbip-win2 sends): 0xffffffff.
fn cmd_bulk_out() -> Vec<u8> {
    cat(&[
        &hex!(
            "00000001" // command: USBIP_CMD_SUBMIT
            "00000002" // seqnum
            "00010002" // devid
            "00000000" // direction: USBIP_DIR_OUT
            "00000002" // ep 2
            "00000000" // transfer_flags
            "0000000c" // transfer_buffer_length: 12
            "00000000" // start_frame
            "ffffffff" // number_of_packets: non-iso
            "00000000" // interval
            "0000000000000000" // setup: unused
        ),
        b"hello, world", // transfer buffer: transfer_buffer_length bytes
    ])
}

#[test]
fn cmd_submit_bulk_out_with_data() {
    let wire = cmd_bulk_out();
    let msg = decode_bytewise(&wire, CmdMessage::decode);
    assert_eq!(
        msg,
        CmdMessage::Submit(CmdSubmit {
            header: UrbHeader {
                seqnum: 2,
                devid: DEVID,
                direction: Direction::Out,
                ep: 2,
            },
            transfer_flags: 0,
            transfer_buffer_length: 12,
            start_frame: 0,
            number_of_packets: NON_ISO_PACKETS,
            interval: 0,
            setup: SetupPacket::default(),
            data: Bytes::from_static(b"hello, world"),
            iso_packets: vec![],
        })
    );
    assert_eq!(encode_cmd(&msg), wire);
}

/// Three 4-byte packets to an isochronous OUT endpoint. The whole buffer is
/// sent (OUT data is never compacted); each descriptor has actual_length 0
/// and status -EXDEV, as `usb_submit_urb()` leaves them before vhci-hcd
/// copies them (`usbip_alloc_iso_desc_pdu()`).
fn cmd_iso_out() -> Vec<u8> {
    cat(&[
        &hex!(
            "00000001" // command: USBIP_CMD_SUBMIT
            "00000003" // seqnum
            "00010002" // devid
            "00000000" // direction: USBIP_DIR_OUT
            "00000003" // ep 3
            "00000002" // transfer_flags: URB_ISO_ASAP
            "0000000c" // transfer_buffer_length: 12
            "00000000" // start_frame
            "00000003" // number_of_packets
            "00000001" // interval
            "0000000000000000" // setup: unused
        ),
        &hex!("000102030405060708090a0b"), // transfer buffer
        // usbip_iso_packet_descriptor: offset, length, actual_length, status
        &hex!("00000000" "00000004" "00000000" "ffffffee"),
        &hex!("00000004" "00000004" "00000000" "ffffffee"),
        &hex!("00000008" "00000004" "00000000" "ffffffee"),
    ])
}

#[test]
fn cmd_submit_iso_out_with_packets() {
    let wire = cmd_iso_out();
    assert_eq!(wire.len(), 48 + 12 + 3 * 16);
    let msg = decode_bytewise(&wire, CmdMessage::decode);
    let packet = |offset| IsoPacket {
        offset,
        length: 4,
        actual_length: 0,
        status: -errno::EXDEV,
    };
    assert_eq!(
        msg,
        CmdMessage::Submit(CmdSubmit {
            header: UrbHeader {
                seqnum: 3,
                devid: DEVID,
                direction: Direction::Out,
                ep: 3,
            },
            transfer_flags: transfer_flags::ISO_ASAP,
            transfer_buffer_length: 12,
            start_frame: 0,
            number_of_packets: 3,
            interval: 1,
            setup: SetupPacket::default(),
            data: Bytes::from_static(&hex!("000102030405060708090a0b")),
            iso_packets: vec![packet(0), packet(4), packet(8)],
        })
    );
    assert_eq!(encode_cmd(&msg), wire);
}

#[test]
fn cmd_submit_iso_in_has_descriptors_but_no_data() {
    let wire = cat(&[
        &hex!(
            "00000001" "00000004" "00010002"
            "00000001" // direction: USBIP_DIR_IN
            "00000001" // ep 1
            "00000202" // transfer_flags: URB_DIR_IN | URB_ISO_ASAP
            "00000018" // transfer_buffer_length: 24
            "00000000" // start_frame
            "00000003" // number_of_packets
            "00000001" // interval
            "0000000000000000"
        ),
        &hex!("00000000" "00000008" "00000000" "ffffffee"),
        &hex!("00000008" "00000008" "00000000" "ffffffee"),
        &hex!("00000010" "00000008" "00000000" "ffffffee"),
    ]);
    let msg = decode_bytewise(&wire, CmdMessage::decode);
    let CmdMessage::Submit(ref c) = msg else {
        panic!()
    };
    assert!(c.data.is_empty());
    assert_eq!(c.iso_packets.len(), 3);
    assert_eq!(c.iso_packets[2].offset, 16);
    assert_eq!(encode_cmd(&msg), wire);
}

// ---------------------------------------------------------------- RET_SUBMIT

const CONTROL_IN: SubmitInfo = SubmitInfo {
    direction: Direction::In,
    transfer_buffer_length: 18,
    number_of_packets: 0,
};

/// The device descriptor answering [`CMD_CONTROL_IN`].
fn ret_control_in() -> Vec<u8> {
    cat(&[
        &hex!(
            // usbip_header_basic, as stub_tx.c's setup_base_pdu() fills it
            "00000003" // command: USBIP_RET_SUBMIT
            "00000001" // seqnum of the request
            "00000000" // devid: 0
            "00000000" // direction: 0
            "00000000" // ep: 0
            // usbip_header_ret_submit
            "00000000" // status
            "00000012" // actual_length: 18
            "00000000" // start_frame
            "00000000" // number_of_packets (the URB's own, 0)
            "00000000" // error_count
            "0000000000000000" // rest of the union, zeroed
        ),
        // transfer buffer: actual_length bytes of IN data
        &hex!("1201" "0002" "ef" "02" "01" "40" "6b1d" "0401" "0001" "01" "02" "03" "01"),
    ])
}

#[test]
fn ret_submit_in_with_data() {
    let wire = ret_control_in();
    let msg = decode_ret(&wire, &[(1, CONTROL_IN)]);
    assert_eq!(
        msg,
        RetMessage::Submit(RetSubmit {
            header: reply_header(1),
            status: 0,
            actual_length: 18,
            start_frame: 0,
            number_of_packets: 0,
            error_count: 0,
            data: Bytes::from_static(&hex!("12010002ef0201406b1d040100010102 0301")),
            iso_packets: vec![],
        })
    );
    assert_eq!(encode_ret(&msg), wire);
}

#[test]
fn ret_submit_out_has_no_data() {
    let wire = hex!(
        "00000003" // command: USBIP_RET_SUBMIT
        "00000002" // seqnum of the bulk OUT request
        "00000000" "00000000" "00000000"
        "00000000" // status
        "0000000c" // actual_length: 12 bytes were written
        "00000000" // start_frame
        "ffffffff" // number_of_packets: echoed from the request
        "00000000" // error_count
        "0000000000000000"
    );
    let bulk_out = SubmitInfo {
        direction: Direction::Out,
        transfer_buffer_length: 12,
        number_of_packets: NON_ISO_PACKETS,
    };
    let msg = decode_ret(&wire, &[(2, bulk_out)]);
    assert_eq!(
        msg,
        RetMessage::Submit(RetSubmit {
            header: reply_header(2),
            status: 0,
            actual_length: 12,
            start_frame: 0,
            number_of_packets: NON_ISO_PACKETS,
            error_count: 0,
            data: Bytes::new(),
            iso_packets: vec![],
        })
    );
    assert_eq!(encode_ret(&msg), wire);
}

#[test]
fn ret_submit_stall_still_carries_in_data() {
    // stub_tx.c sends actual_length bytes whatever the status.
    let wire = cat(&[
        &hex!(
            "00000003" "00000001" "00000000" "00000000" "00000000"
            "ffffffe0" // status: -EPIPE
            "00000002" // actual_length
            "00000000" "00000000" "00000000" "0000000000000000"
        ),
        &hex!("1201"),
    ]);
    let RetMessage::Submit(s) = decode_ret(&wire, &[(1, CONTROL_IN)]) else {
        panic!()
    };
    assert_eq!(s.status, -errno::EPIPE);
    assert_eq!(&s.data[..], &hex!("1201"));
}

const ISO_IN: SubmitInfo = SubmitInfo {
    direction: Direction::In,
    transfer_buffer_length: 24,
    number_of_packets: 3,
};

/// Three 8-byte isochronous IN packets that got 3, 0 and 5 bytes: the data
/// is compacted to 8 bytes ("abc" "defgh"), the descriptors keep the
/// request's offsets so the client can spread it back (`usbip_pad_iso()`).
fn ret_iso_in() -> Vec<u8> {
    cat(&[
        &hex!(
            "00000003" "00000004" "00000000" "00000000" "00000000"
            "00000000" // status
            "00000008" // actual_length: the sum of the packets' actual lengths
            "00000123" // start_frame
            "00000003" // number_of_packets
            "00000000" // error_count
            "0000000000000000"
        ),
        b"abc",   // packet 0's 3 bytes
        b"defgh", // packet 2's 5 bytes (packet 1 got none)
        &hex!("00000000" "00000008" "00000003" "00000000"),
        &hex!("00000008" "00000008" "00000000" "00000000"),
        &hex!("00000010" "00000008" "00000005" "00000000"),
    ])
}

#[test]
fn ret_submit_iso_in_compacted() {
    let wire = ret_iso_in();
    assert_eq!(wire.len(), 48 + 8 + 3 * 16);
    let msg = decode_ret(&wire, &[(4, ISO_IN)]);
    let packet = |offset, actual_length| IsoPacket {
        offset,
        length: 8,
        actual_length,
        status: 0,
    };
    assert_eq!(
        msg,
        RetMessage::Submit(RetSubmit {
            header: reply_header(4),
            status: 0,
            actual_length: 8,
            start_frame: 0x123,
            number_of_packets: 3,
            error_count: 0,
            data: Bytes::from_static(b"abcdefgh"),
            iso_packets: vec![packet(0, 3), packet(8, 0), packet(16, 5)],
        })
    );
    assert_eq!(encode_ret(&msg), wire);
}

#[test]
fn ret_submit_iso_out_has_descriptors_only() {
    let wire = cat(&[
        &hex!(
            "00000003" "00000003" "00000000" "00000000" "00000000"
            "00000000" // status
            "0000000c" // actual_length: all 12 bytes went out
            "00000000" "00000003" "00000000" "0000000000000000"
        ),
        &hex!("00000000" "00000004" "00000004" "00000000"),
        &hex!("00000004" "00000004" "00000004" "00000000"),
        &hex!("00000008" "00000004" "00000004" "00000000"),
    ]);
    let iso_out = SubmitInfo {
        direction: Direction::Out,
        transfer_buffer_length: 12,
        number_of_packets: 3,
    };
    let RetMessage::Submit(s) = decode_ret(&wire, &[(3, iso_out)]) else {
        panic!()
    };
    assert!(s.data.is_empty());
    assert_eq!(s.iso_packets.len(), 3);
}

// ---------------------------------------------------------------- UNLINK

const CMD_UNLINK: [u8; 48] = hex!(
    "00000002" // command: USBIP_CMD_UNLINK
    "00000005" // seqnum of this unlink request
    "00010002" // devid
    "00000000" // direction: 0
    "00000000" // ep: 0 (vhci_tx.c sets it so)
    "00000004" // usbip_header_cmd_unlink.seqnum: the URB to unlink
    "000000000000000000000000000000000000000000000000" // padding
);

#[test]
fn cmd_unlink() {
    let msg = decode_bytewise(&CMD_UNLINK, CmdMessage::decode);
    assert_eq!(
        msg,
        CmdMessage::Unlink(CmdUnlink {
            header: UrbHeader {
                seqnum: 5,
                devid: DEVID,
                direction: Direction::Out,
                ep: 0,
            },
            unlink_seqnum: 4,
        })
    );
    assert_eq!(encode_cmd(&msg), CMD_UNLINK);
}

const RET_UNLINK_CONNRESET: [u8; 48] = hex!(
    "00000004" // command: USBIP_RET_UNLINK
    "00000005" // seqnum of the CMD_UNLINK (not of the unlinked URB)
    "00000000" "00000000" "00000000"
    "ffffff98" // status: -ECONNRESET, the cancel won
    "000000000000000000000000000000000000000000000000"
);

#[test]
fn ret_unlink_econnreset() {
    // RET_UNLINK needs no oracle: it carries no data.
    let msg = decode_bytewise(&RET_UNLINK_CONNRESET, |b| RetMessage::decode(b, |_| None));
    assert_eq!(
        msg,
        RetMessage::Unlink(RetUnlink {
            header: reply_header(5),
            status: -errno::ECONNRESET,
        })
    );
    assert_eq!(encode_ret(&msg), RET_UNLINK_CONNRESET);
}

#[test]
fn ret_unlink_too_late_is_status_zero() {
    let wire = hex!(
        "00000004" "00000007" "00000000" "00000000" "00000000"
        "00000000" // status 0: the URB had completed, its RET_SUBMIT went first
        "000000000000000000000000000000000000000000000000"
    );
    let msg = decode_bytewise(&wire, |b| RetMessage::decode(b, |_| None));
    assert_eq!(
        msg,
        RetMessage::Unlink(RetUnlink {
            header: reply_header(7),
            status: 0,
        })
    );
}

// ------------------------------------------- captures from the kernel docs

/// The EXAMPLE of `Documentation/usb/usbip_protocol.rst`, "captured from
/// wire with Human Interface Devices (HID) payload", byte for byte.
mod kernel_doc_capture {
    use super::*;

    const CMD_INTR_IN: [u8; 48] = hex!(
        "00000001 00000d05 0001000f 00000001 00000001 00000200"
        "00000040 ffffffff 00000000 00000004 00000000 00000000"
    );
    const CMD_INTR_OUT: [u8; 48 + 64] = hex!(
        "00000001 00000d06 0001000f 00000000 00000001 00000000"
        "00000040 ffffffff 00000000 00000004 00000000 00000000"
        "ffffffff860008a784ce5ae212376300000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    );
    const RET_INTR_OUT: [u8; 48] = hex!(
        "00000003 00000d06 00000000 00000000 00000000 00000000"
        "00000040 ffffffff 00000000 00000000 00000000 00000000"
    );
    const RET_INTR_IN: [u8; 48 + 64] = hex!(
        "00000003 00000d05 00000000 00000000 00000000 00000000"
        "00000040 ffffffff 00000000 00000000 00000000 00000000"
        "ffffffff860011a784ce5ae2123763612891b1020100000400000000000000000000000000000000000000000000000000000000000000000000000000000000"
    );

    #[test]
    fn interrupt_in_and_out() {
        let cmd_in = decode_bytewise(&CMD_INTR_IN, CmdMessage::decode);
        let CmdMessage::Submit(ref c) = cmd_in else {
            panic!()
        };
        assert_eq!(c.header.seqnum, 0xd05);
        assert_eq!(c.header.devid, 0x0001_000f);
        assert_eq!(c.header.direction, Direction::In);
        assert_eq!(c.header.ep, 1);
        assert_eq!(c.transfer_buffer_length, 64);
        assert_eq!(c.start_frame, -1);
        assert_eq!(c.number_of_packets, 0);
        assert_eq!(c.interval, 4);
        assert_eq!(encode_cmd(&cmd_in), CMD_INTR_IN);

        let cmd_out = decode_bytewise(&CMD_INTR_OUT, CmdMessage::decode);
        let CmdMessage::Submit(ref c) = cmd_out else {
            panic!()
        };
        assert_eq!(c.data.len(), 64);
        assert_eq!(&c.data[..4], &hex!("ffffffff"));
        assert_eq!(encode_cmd(&cmd_out), CMD_INTR_OUT);

        let requests = [
            (
                0xd05,
                SubmitInfo {
                    direction: Direction::In,
                    transfer_buffer_length: 64,
                    number_of_packets: 0,
                },
            ),
            (
                0xd06,
                SubmitInfo {
                    direction: Direction::Out,
                    transfer_buffer_length: 64,
                    number_of_packets: 0,
                },
            ),
        ];
        let ret_out = decode_ret(&RET_INTR_OUT, &requests);
        let RetMessage::Submit(ref s) = ret_out else {
            panic!()
        };
        assert_eq!((s.actual_length, s.data.len()), (64, 0));
        assert_eq!(encode_ret(&ret_out), RET_INTR_OUT);

        let ret_in = decode_ret(&RET_INTR_IN, &requests);
        let RetMessage::Submit(ref s) = ret_in else {
            panic!()
        };
        assert_eq!(s.data.len(), 64);
        assert_eq!(&s.data[..8], &hex!("ffffffff860011a7"));
        assert_eq!(encode_ret(&ret_in), RET_INTR_IN);
    }
}

// -------------------------------------------------------------- streaming

#[test]
fn a_stream_of_commands_decodes_in_order() {
    let stream = cat(&[
        &CMD_CONTROL_IN,
        &cmd_bulk_out(),
        &cmd_iso_out(),
        &CMD_UNLINK,
    ]);
    let mut buf = BytesMut::from(&stream[..]);
    let mut seqnums = vec![];
    while let Some(m) = CmdMessage::decode(&mut buf).unwrap() {
        seqnums.push(match m {
            CmdMessage::Submit(c) => c.header.seqnum,
            CmdMessage::Unlink(u) => u.header.seqnum,
        });
    }
    assert_eq!(seqnums, [1, 2, 3, 5]);
    assert!(buf.is_empty());
}
