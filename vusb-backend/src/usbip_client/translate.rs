//! Guest transfers to USB/IP commands and USB/IP replies to completions
//! (`docs/virtio-usb.md` §8), without I/O.

use bytes::Bytes;
use usbip_proto::{
    errno, feature, limits, request, transfer_flags, CmdSubmit, CmdUnlink, Direction, RetSubmit,
    SetupPacket, UrbHeader,
};

use super::inflight::Request;
use crate::transfer::{xfer_flags, Completion, IsoResult, Port, Status, Transfer, TransferKind};

/// `EILSEQ`, which some host controllers report for CRC errors; the codec
/// does not name it.
const EILSEQ: i32 = 84;

/// Linux URB status (0 or a negated errno) to a virtio-usb status (spec
/// table 4.1).
///
/// * `-ENODEV` (the device is gone) is `NoDevice`; `-ESHUTDOWN` (the
///   endpoint or device was disabled: reset, reconfiguration, unbinding) is
///   `Shutdown`, as the table pairs them.
/// * `-ENOENT` is what `usb_kill_urb()` leaves; like `-ECONNRESET` it means
///   the URB was cancelled.
/// * `-EINVAL` (the host refused the URB as malformed) is `Invalid`.
/// * Anything else, positive values included, is `Protocol`.
pub fn status_of(status: i32) -> Status {
    match status.checked_neg() {
        Some(0) => Status::Ok,
        Some(errno::EPIPE) => Status::Stall,
        Some(errno::ECONNRESET | errno::ENOENT) => Status::Cancelled,
        Some(errno::ENODEV) => Status::NoDevice,
        Some(errno::ESHUTDOWN) => Status::Shutdown,
        Some(errno::EOVERFLOW) => Status::Overflow,
        Some(errno::EREMOTEIO) => Status::Short,
        Some(errno::ETIMEDOUT) => Status::Timeout,
        Some(errno::EXDEV) => Status::IsoPartial,
        Some(errno::EINVAL) => Status::Invalid,
        Some(errno::EPROTO | EILSEQ) => Status::Protocol,
        _ => Status::Protocol,
    }
}

/// The outcome of a port reset from the status of its SET_FEATURE
/// (PORT_RESET). Linux's usbip-host resets the device and then (in older
/// kernels) also forwards the request to the device itself, which stalls
/// a hub request it does not understand: a stall still means the reset was
/// done.
pub fn reset_status(status: i32) -> Status {
    match status_of(status) {
        Status::Stall => Status::Ok,
        other => other,
    }
}

/// `VIRTIO_USB_XFER_F_*` to Linux `URB_*` transfer flags.
pub fn urb_flags(flags: u32, is_in: bool) -> u32 {
    let mut out = 0;
    if flags & xfer_flags::SHORT_NOT_OK != 0 {
        out |= transfer_flags::SHORT_NOT_OK;
    }
    if flags & xfer_flags::ISO_ASAP != 0 {
        out |= transfer_flags::ISO_ASAP;
    }
    if flags & xfer_flags::ZERO_PACKET != 0 {
        out |= transfer_flags::ZERO_PACKET;
    }
    if is_in {
        out |= transfer_flags::DIR_IN;
    }
    out
}

fn direction(t: &Transfer) -> Direction {
    if t.is_in() {
        Direction::In
    } else {
        Direction::Out
    }
}

/// Checks what a CMD_SUBMIT must satisfy (the codec refuses to encode
/// anything else), so that a bad transfer fails alone with `Invalid`.
pub fn check(t: &Transfer) -> Result<(), &'static str> {
    let expected_out = if t.is_in() { 0 } else { t.length as usize };
    if t.out_data.len() != expected_out {
        return Err("OUT data does not match the transfer's length and direction");
    }
    if t.length > limits::MAX_TRANSFER_LEN {
        return Err("transfer longer than USB/IP carries");
    }
    let iso = t.kind == TransferKind::Isochronous;
    if iso == t.iso_packets.is_empty() {
        return Err(
            "isochronous packets on a non-isochronous transfer, or none on an isochronous one",
        );
    }
    if t.iso_packets.len() > limits::MAX_ISO_PACKETS as usize {
        return Err("more isochronous packets than USB/IP carries");
    }
    let outside = t
        .iso_packets
        .iter()
        .any(|p| u64::from(p.offset) + u64::from(p.length) > u64::from(t.length));
    if outside {
        return Err("isochronous packet outside the transfer buffer");
    }
    Ok(())
}

/// The CMD_SUBMIT for a transfer that passed [`check`].
pub fn cmd_submit(t: &Transfer, seqnum: u32, devid: u32) -> CmdSubmit {
    CmdSubmit {
        header: UrbHeader {
            seqnum,
            devid,
            direction: direction(t),
            ep: u32::from(t.endpoint_number()),
        },
        transfer_flags: urb_flags(t.flags, t.is_in()),
        transfer_buffer_length: t.length,
        start_frame: t.start_frame as i32,
        // Linux's vhci-hcd sends 0 for a non-isochronous URB.
        number_of_packets: t.iso_packets.len() as u32,
        interval: t.interval as i32,
        setup: SetupPacket::from_bytes(t.setup),
        data: if t.is_in() {
            Bytes::new()
        } else {
            t.out_data.clone()
        },
        iso_packets: t
            .iso_packets
            .iter()
            .map(|p| usbip_proto::IsoPacket {
                offset: p.offset,
                length: p.length,
                actual_length: 0,
                status: 0,
            })
            .collect(),
    }
}

/// The control request that makes usbip-host (and hrh-exporter) reset the
/// device: the hub-class SET_FEATURE(PORT_RESET) to a port, which vhci-hcd
/// would have sent to its own root hub.
pub fn port_reset(seqnum: u32, devid: u32) -> CmdSubmit {
    CmdSubmit {
        header: UrbHeader {
            seqnum,
            devid,
            direction: Direction::Out,
            ep: 0,
        },
        setup: SetupPacket {
            request_type: 0x23,
            request: request::SET_FEATURE,
            value: feature::PORT_RESET,
            index: 0,
            length: 0,
        },
        ..CmdSubmit::default()
    }
}

pub fn cmd_unlink(seqnum: u32, devid: u32, victim: u32) -> CmdUnlink {
    CmdUnlink {
        header: UrbHeader {
            seqnum,
            devid,
            direction: Direction::Out,
            ep: 0,
        },
        unlink_seqnum: victim,
    }
}

/// A request that failed with `status` and transferred nothing; an
/// isochronous one (`iso_packets` > 0) reports every packet failed, so the
/// guest still gets one result per packet.
pub fn failed(port: Port, id: u64, iso_packets: usize, status: Status) -> Completion {
    let mut c = Completion::failed(port, id, status);
    if iso_packets > 0 {
        c.iso_results = vec![
            IsoResult {
                actual_length: 0,
                status,
            };
            iso_packets
        ];
        c.error_count = iso_packets as u32;
    }
    c
}

/// [`failed`] for a request in flight.
pub fn request_failed(req: &Request, status: Status) -> Completion {
    failed(req.port, req.id, req.iso_packets.len(), status)
}

/// The completion a RET_SUBMIT gives `req`, or why the reply is not a
/// valid answer to it (the request then fails with `Protocol`).
///
/// Isochronous IN data arrives compacted (the packets' data back to back,
/// each `actual_length` long); it is returned as one piece per packet at
/// that packet's offset in the guest's buffer.
pub fn completion(req: &Request, ret: &RetSubmit) -> Result<Completion, &'static str> {
    if ret.actual_length > req.length {
        return Err("actual_length exceeds the request's length");
    }
    let status = status_of(ret.status);
    let mut c = Completion {
        port: req.port,
        id: req.id,
        status,
        actual_length: ret.actual_length,
        start_frame: ret.start_frame as u32,
        error_count: 0,
        iso_results: Vec::new(),
        in_data: Vec::new(),
    };
    if req.direction == Direction::Out && !ret.data.is_empty() {
        return Err("data in the reply to an OUT request");
    }
    if req.iso_packets.is_empty() {
        if !ret.iso_packets.is_empty() {
            return Err("isochronous packets in the reply to a non-isochronous request");
        }
        if ret.data.len() != ret.actual_length as usize && req.direction == Direction::In {
            return Err("IN data does not match actual_length");
        }
        if !ret.data.is_empty() {
            c.in_data.push((0, ret.data.clone()));
        }
        return Ok(c);
    }
    if ret.iso_packets.is_empty() && status != Status::Ok && ret.actual_length == 0 {
        // A URB the server could not start at all: usbip-host's error
        // replies may carry no packets.
        let mut f = request_failed(req, status);
        f.start_frame = c.start_frame;
        return Ok(f);
    }
    if ret.iso_packets.len() != req.iso_packets.len() {
        return Err("isochronous packet count differs from the request");
    }
    let mut sum: u64 = 0;
    for (want, got) in req.iso_packets.iter().zip(&ret.iso_packets) {
        if got.actual_length > want.length {
            return Err("isochronous packet actual_length exceeds its length");
        }
        sum += u64::from(got.actual_length);
        c.iso_results.push(IsoResult {
            actual_length: got.actual_length,
            status: status_of(got.status),
        });
    }
    if sum != u64::from(ret.actual_length) {
        return Err("isochronous packet lengths do not add up to actual_length");
    }
    if req.direction == Direction::In {
        if ret.data.len() != ret.actual_length as usize {
            return Err("IN data does not match actual_length");
        }
        let mut pos = 0usize;
        for (want, got) in req.iso_packets.iter().zip(&ret.iso_packets) {
            let n = got.actual_length as usize;
            if n == 0 {
                continue;
            }
            if u64::from(want.offset) + n as u64 > u64::from(req.length) {
                return Err("isochronous packet data beyond the transfer buffer");
            }
            c.in_data.push((want.offset, ret.data.slice(pos..pos + n)));
            pos += n;
        }
    }
    let n = req.iso_packets.len() as u32;
    c.error_count = u32::try_from(ret.error_count).unwrap_or(0).min(n);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::IsoPacket;
    use crate::usbip_client::inflight::{InFlight, ReplyTarget};

    fn transfer(endpoint: u8, kind: TransferKind, length: u32) -> Transfer {
        Transfer::new(7, 2, endpoint, kind, length)
    }

    /// A request as the bookkeeping holds it.
    fn request(direction: Direction, length: u32, iso: &[(u32, u32)]) -> Request {
        let mut t = InFlight::new();
        let packets = iso
            .iter()
            .map(|&(offset, length)| IsoPacket { offset, length })
            .collect();
        let s = t.submit(2, 7, direction, length, packets).unwrap();
        match t.take_reply(s) {
            ReplyTarget::Transfer(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn reply(status: i32, data: &'static [u8]) -> RetSubmit {
        RetSubmit {
            status,
            actual_length: data.len() as u32,
            data: Bytes::from_static(data),
            ..RetSubmit::default()
        }
    }

    fn packet(length: u32, actual_length: u32, status: i32) -> usbip_proto::IsoPacket {
        usbip_proto::IsoPacket {
            offset: 0,
            length,
            actual_length,
            status,
        }
    }

    #[test]
    fn errno_table() {
        let cases = [
            (0, Status::Ok),
            (-32, Status::Stall),
            (-104, Status::Cancelled),
            (-2, Status::Cancelled),
            (-19, Status::NoDevice),
            (-108, Status::Shutdown),
            (-71, Status::Protocol),
            (-84, Status::Protocol),
            (-75, Status::Overflow),
            (-121, Status::Short),
            (-110, Status::Timeout),
            (-18, Status::IsoPartial),
            (-22, Status::Invalid),
            (-5, Status::Protocol),
            (32, Status::Protocol),
            (i32::MIN, Status::Protocol),
        ];
        for (errno, status) in cases {
            assert_eq!(status_of(errno), status, "errno {errno}");
        }
        assert_eq!(status_of(-EILSEQ), Status::Protocol);
    }

    #[test]
    fn a_stalled_port_reset_was_still_a_reset() {
        assert_eq!(reset_status(0), Status::Ok);
        assert_eq!(reset_status(-32), Status::Ok);
        assert_eq!(reset_status(-19), Status::NoDevice);
        assert_eq!(reset_status(-71), Status::Protocol);
    }

    #[test]
    fn flags_map_to_urb_flags_with_the_direction() {
        assert_eq!(urb_flags(0, false), 0);
        assert_eq!(urb_flags(0, true), 0x200);
        assert_eq!(urb_flags(xfer_flags::SHORT_NOT_OK, true), 0x201);
        assert_eq!(urb_flags(xfer_flags::ZERO_PACKET, false), 0x40);
        assert_eq!(urb_flags(xfer_flags::ISO_ASAP, false), 0x2);
        assert_eq!(urb_flags(xfer_flags::ALL, true), 0x243);
    }

    #[test]
    fn control_in_becomes_a_cmd_submit_like_vhci_sends() {
        let mut t = transfer(0x80, TransferKind::Control, 18);
        t.setup = [0x80, 6, 0, 1, 0, 0, 18, 0];
        t.flags = xfer_flags::SHORT_NOT_OK;
        check(&t).unwrap();
        let c = cmd_submit(&t, 5, 0x0001_0002);
        assert_eq!(
            c.header,
            UrbHeader {
                seqnum: 5,
                devid: 0x0001_0002,
                direction: Direction::In,
                ep: 0
            }
        );
        assert_eq!(c.transfer_flags, 0x201);
        assert_eq!(c.transfer_buffer_length, 18);
        assert_eq!(c.number_of_packets, 0);
        assert_eq!(c.setup.to_bytes(), t.setup);
        assert!(c.data.is_empty());
        // And the codec accepts it.
        usbip_proto::CmdMessage::Submit(c)
            .encode(&mut bytes::BytesMut::new())
            .unwrap();
    }

    #[test]
    fn iso_out_carries_data_and_zeroed_descriptors() {
        let mut t = transfer(0x05, TransferKind::Isochronous, 6);
        t.iso_packets = vec![
            IsoPacket {
                offset: 0,
                length: 3,
            },
            IsoPacket {
                offset: 3,
                length: 3,
            },
        ];
        t.out_data = Bytes::from_static(b"abcdef");
        t.flags = xfer_flags::ISO_ASAP;
        t.interval = 1;
        t.start_frame = 9;
        check(&t).unwrap();
        let c = cmd_submit(&t, 1, 1);
        assert_eq!((c.header.direction, c.header.ep), (Direction::Out, 5));
        assert_eq!((c.transfer_flags, c.number_of_packets), (0x2, 2));
        assert_eq!((c.interval, c.start_frame), (1, 9));
        assert_eq!(&c.data[..], b"abcdef");
        let second = c.iso_packets[1];
        assert_eq!(
            (second.offset, second.length, second.actual_length),
            (3, 3, 0)
        );
    }

    #[test]
    fn check_refuses_what_cannot_be_encoded() {
        let mut t = transfer(0x02, TransferKind::Bulk, 4);
        assert!(check(&t).is_err(), "OUT without its data");
        t.out_data = Bytes::from_static(b"1234");
        check(&t).unwrap();
        let mut i = transfer(0x81, TransferKind::Bulk, 4);
        i.out_data = Bytes::from_static(b"x");
        assert!(check(&i).is_err(), "IN with data");
        let iso = transfer(0x81, TransferKind::Isochronous, 4);
        assert!(check(&iso).is_err(), "isochronous without packets");
        let mut outside = iso.clone();
        outside.iso_packets = vec![IsoPacket {
            offset: 2,
            length: 3,
        }];
        assert!(check(&outside).is_err());
        let huge = transfer(0x81, TransferKind::Bulk, u32::MAX);
        assert!(check(&huge).is_err());
    }

    #[test]
    fn port_reset_is_set_feature_port_reset() {
        let c = port_reset(3, 0x10002);
        assert_eq!(c.setup.to_bytes(), [0x23, 3, 4, 0, 0, 0, 0, 0]);
        assert_eq!((c.header.ep, c.transfer_buffer_length), (0, 0));
    }

    #[test]
    fn in_data_is_one_piece_at_offset_zero() {
        let req = request(Direction::In, 8, &[]);
        let c = completion(&req, &reply(0, b"abc")).unwrap();
        assert_eq!(
            (c.port, c.id, c.status, c.actual_length),
            (2, 7, Status::Ok, 3)
        );
        assert_eq!(c.in_data, vec![(0, Bytes::from_static(b"abc"))]);
        let stall = completion(&req, &reply(-32, b"")).unwrap();
        assert_eq!(stall.status, Status::Stall);
        assert!(stall.in_data.is_empty());
    }

    #[test]
    fn out_completion_reports_the_length_sent() {
        let req = request(Direction::Out, 8, &[]);
        let mut r = reply(0, b"");
        r.actual_length = 8;
        let c = completion(&req, &r).unwrap();
        assert_eq!((c.status, c.actual_length), (Status::Ok, 8));
        assert!(c.in_data.is_empty());
    }

    #[test]
    fn too_long_a_reply_is_refused() {
        let req = request(Direction::In, 2, &[]);
        assert!(completion(&req, &reply(0, b"abc")).is_err());
        let req = request(Direction::Out, 2, &[]);
        let mut r = reply(0, b"");
        r.actual_length = 3;
        assert!(completion(&req, &r).is_err());
    }

    #[test]
    fn iso_in_data_is_spread_back_to_packet_offsets() {
        let req = request(Direction::In, 300, &[(0, 100), (100, 100), (200, 100)]);
        let mut r = reply(-18, b"aaaaccc");
        r.iso_packets = vec![packet(100, 4, 0), packet(100, 0, -18), packet(100, 3, 0)];
        r.error_count = 1;
        r.start_frame = 77;
        let c = completion(&req, &r).unwrap();
        assert_eq!(c.status, Status::IsoPartial);
        assert_eq!(c.actual_length, 7);
        assert_eq!(
            c.in_data,
            vec![
                (0, Bytes::from_static(b"aaaa")),
                (200, Bytes::from_static(b"ccc"))
            ]
        );
        let results: Vec<_> = c
            .iso_results
            .iter()
            .map(|r| (r.actual_length, r.status))
            .collect();
        assert_eq!(
            results,
            vec![(4, Status::Ok), (0, Status::IsoPartial), (3, Status::Ok)]
        );
        assert_eq!((c.error_count, c.start_frame), (1, 77));
    }

    #[test]
    fn inconsistent_iso_replies_are_refused() {
        let req = request(Direction::In, 16, &[(0, 8), (8, 8)]);
        let mut fewer = reply(0, b"abc");
        fewer.iso_packets = vec![packet(8, 3, 0)];
        assert!(completion(&req, &fewer).is_err());
        let mut overlong = reply(0, b"123456789");
        overlong.iso_packets = vec![packet(8, 9, 0), packet(8, 0, 0)];
        assert!(completion(&req, &overlong).is_err());
        let mut bad_sum = reply(0, b"abcd");
        bad_sum.iso_packets = vec![packet(8, 1, 0), packet(8, 1, 0)];
        assert!(completion(&req, &bad_sum).is_err());
        let plain = request(Direction::In, 16, &[]);
        let mut unexpected = reply(0, b"ab");
        unexpected.iso_packets = vec![packet(8, 2, 0)];
        assert!(completion(&plain, &unexpected).is_err());
    }

    #[test]
    fn a_failed_iso_urb_without_packets_fails_every_packet() {
        let req = request(Direction::In, 16, &[(0, 8), (8, 8)]);
        let c = completion(&req, &reply(-19, b"")).unwrap();
        assert_eq!(c.status, Status::NoDevice);
        assert_eq!(c.iso_results.len(), 2);
        assert_eq!(c.error_count, 2);
        assert!(c.iso_results.iter().all(|r| r.status == Status::NoDevice));
    }

    #[test]
    fn failed_gives_one_result_per_packet() {
        let plain = request_failed(&request(Direction::In, 4, &[]), Status::Shutdown);
        assert_eq!(plain, Completion::failed(2, 7, Status::Shutdown));
        let iso = request_failed(
            &request(Direction::In, 4, &[(0, 2), (2, 2)]),
            Status::NoDevice,
        );
        assert_eq!((iso.iso_results.len(), iso.error_count), (2, 2));
    }
}
