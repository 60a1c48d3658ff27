//! URBs planned as usbfs transfers, and their results read back: what an URB
//! becomes in usbfs terms and what the client gets from its outcome, without
//! any I/O (`submission` hands them to the kernel).

use std::sync::Arc;

use bytes::Bytes;
use usbip_proto::{errno, limits, transfer_flags, IsoPacket, SetupPacket};

use super::descriptors::transfer_type;
use super::mapped::{MappedBuf, MappedPool};
use crate::device::{Urb, UrbResult};

/// Linux errno values the USB/IP codec does not name.
pub mod more_errno {
    pub const EINTR: i32 = 4;
    pub const EIO: i32 = 5;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EOPNOTSUPP: i32 = 95;
}

/// The status usbfs reports for a finished URB (or isochronous packet): the
/// kernel's own, as usbip-host would send it; anything but 0 or a negated
/// errno reads as a protocol error.
pub fn kernel_status(status: i32) -> i32 {
    if status > 0 {
        -errno::EPROTO
    } else {
        status
    }
}

/// A rusb error as a negated Linux errno.
pub fn rusb_error_errno(e: rusb::Error) -> i32 {
    use more_errno::*;
    match e {
        rusb::Error::Io => -EIO,
        rusb::Error::InvalidParam => -errno::EINVAL,
        rusb::Error::Access => -EACCES,
        rusb::Error::NoDevice => -errno::ENODEV,
        rusb::Error::NotFound => -errno::ENOENT,
        rusb::Error::Busy => -EBUSY,
        rusb::Error::Timeout => -errno::ETIMEDOUT,
        rusb::Error::Overflow => -errno::EOVERFLOW,
        rusb::Error::Pipe => -errno::EPIPE,
        rusb::Error::Interrupted => -EINTR,
        rusb::Error::NoMem => -ENOMEM,
        rusb::Error::NotSupported => -EOPNOTSUPP,
        rusb::Error::BadDescriptor | rusb::Error::Other => -errno::EPROTO,
    }
}

/// What kind of transfer an URB became, and what its completion needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Data stage direction from the setup packet.
    Control { is_in: bool },
    /// Bulk or interrupt.
    Stream { is_in: bool },
    /// The URB's packets, with their offsets in the client's buffer.
    Iso {
        is_in: bool,
        packets: Vec<IsoPacket>,
    },
}

/// An URB translated into usbfs terms, before anything is submitted.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    pub endpoint: u8,
    /// The endpoint's transfer type (`descriptors::transfer_type`).
    pub transfer_type: u8,
    /// usbfs URB flags.
    pub flags: u32,
    pub buffer: Payload,
    pub iso_lengths: Vec<u32>,
}

/// What a transfer's buffer must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Laid out already: for control transfers the setup packet, then the
    /// data stage; for isochronous ones the packets back to back, as
    /// usbfs lays them out.
    Laid(Vec<u8>),
    /// Room for a bulk or interrupt IN transfer.
    Room(usize),
    /// A bulk or interrupt OUT transfer's data.
    Data(Bytes),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Laid(v) => v.len(),
            Payload::Room(len) => *len,
            Payload::Data(d) => d.len(),
        }
    }

    /// The buffer in ordinary memory.
    pub fn into_heap(self) -> Vec<u8> {
        match self {
            Payload::Laid(v) => v,
            Payload::Room(len) => vec![0; len],
            Payload::Data(d) => d.to_vec(),
        }
    }

    /// The buffer in `pool`'s mapped memory where it can be (see
    /// `mapped`), else in ordinary memory. Only bulk and interrupt
    /// transfers are mapped: control and isochronous ones are small or
    /// laid out already.
    pub fn into_buffer(self, pool: &Arc<MappedPool>) -> TransferBuffer {
        let mapped = match &self {
            Payload::Laid(_) => None,
            Payload::Room(len) => pool.take(*len),
            Payload::Data(d) => pool.take(d.len()).map(|mut buf| {
                buf.copy_from(d);
                buf
            }),
        };
        match mapped {
            Some(buf) => TransferBuffer::Mapped(buf),
            None => TransferBuffer::Heap(self.into_heap()),
        }
    }
}

/// The memory a transfer runs in.
#[derive(Debug)]
pub enum TransferBuffer {
    Heap(Vec<u8>),
    Mapped(MappedBuf),
}

impl From<Vec<u8>> for TransferBuffer {
    fn from(v: Vec<u8>) -> Self {
        TransferBuffer::Heap(v)
    }
}

impl TransferBuffer {
    pub fn len(&self) -> usize {
        match self {
            TransferBuffer::Heap(v) => v.len(),
            TransferBuffer::Mapped(m) => m.len(),
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            TransferBuffer::Heap(v) => v.as_mut_ptr(),
            TransferBuffer::Mapped(m) => m.as_mut_ptr(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            TransferBuffer::Heap(v) => v,
            TransferBuffer::Mapped(m) => m.as_slice(),
        }
    }

    /// The `len` bytes at `start` of a finished IN transfer. Ordinary
    /// memory becomes the result without a copy (a bulk IN URB carries up
    /// to hundreds of KiB); a mapped buffer is copied out, which is the
    /// copy usbfs would otherwise have made, and goes back to its pool.
    fn into_in_data(self, start: usize, len: usize) -> Bytes {
        let end = start.saturating_add(len).min(self.len());
        let start = start.min(end);
        match self {
            TransferBuffer::Heap(mut v) => {
                v.truncate(end);
                Bytes::from(v).slice(start..)
            }
            TransferBuffer::Mapped(m) => Bytes::copy_from_slice(&m.as_slice()[start..end]),
        }
    }
}

/// Translates an URB. `endpoint_type` is the transfer type of the URB's
/// endpoint in the device's current configuration, if known. `Err` is
/// the status to complete the URB with at once.
pub fn plan(urb: &Urb, endpoint_type: Option<u8>) -> Result<Plan, i32> {
    if urb.endpoint & 0x0f == 0 {
        let setup = urb.setup.ok_or(-errno::EINVAL)?;
        return Ok(plan_control(urb, setup));
    }
    let is_in = urb.is_in();
    let ty = endpoint_type.unwrap_or(if urb.iso_packets.is_empty() {
        transfer_type::BULK
    } else {
        transfer_type::ISOCHRONOUS
    });
    match ty {
        transfer_type::BULK | transfer_type::INTERRUPT => {
            let buffer = if is_in {
                Payload::Room(urb.buffer_len as usize)
            } else {
                Payload::Data(urb.data.clone())
            };
            // As usbip-host's masking_bogus_flags(): a zero-length packet
            // only ends bulk OUT transfers.
            let zlp = ty == transfer_type::BULK
                && !is_in
                && urb.transfer_flags & transfer_flags::ZERO_PACKET != 0;
            Ok(Plan {
                kind: Kind::Stream { is_in },
                endpoint: urb.endpoint,
                transfer_type: ty,
                flags: if zlp { usbfs::FLAG_ZERO_PACKET } else { 0 },
                buffer,
                iso_lengths: Vec::new(),
            })
        }
        transfer_type::ISOCHRONOUS => plan_iso(urb, is_in),
        // A message pipe other than endpoint 0: nothing sends those.
        _ => Err(-errno::EINVAL),
    }
}

fn plan_control(urb: &Urb, setup: SetupPacket) -> Plan {
    let is_in = setup.is_in();
    let len = usize::from(setup.length);
    let mut buffer = Vec::with_capacity(SetupPacket::LEN + len);
    buffer.extend_from_slice(&setup.to_bytes());
    if is_in {
        buffer.resize(SetupPacket::LEN + len, 0);
    } else {
        // wLength rules the data stage; a client that sent less gets
        // zeros rather than a transfer of a length the setup contradicts.
        let data = &urb.data[..urb.data.len().min(len)];
        buffer.extend_from_slice(data);
        buffer.resize(SetupPacket::LEN + len, 0);
    }
    Plan {
        kind: Kind::Control { is_in },
        endpoint: 0,
        transfer_type: transfer_type::CONTROL,
        flags: 0,
        buffer: Payload::Laid(buffer),
        iso_lengths: Vec::new(),
    }
}

fn plan_iso(urb: &Urb, is_in: bool) -> Result<Plan, i32> {
    let packets = &urb.iso_packets;
    if packets.is_empty() || packets.len() > limits::MAX_ISO_PACKETS as usize {
        return Err(-errno::EINVAL);
    }
    let total: u64 = packets.iter().map(|p| u64::from(p.length)).sum();
    if total > u64::from(limits::MAX_TRANSFER_LEN) {
        return Err(-errno::EINVAL);
    }
    let mut buffer = Vec::with_capacity(total as usize);
    for p in packets {
        if is_in {
            buffer.resize(buffer.len() + p.length as usize, 0);
        } else {
            // The codec checked that packets lie inside the buffer; data
            // shorter than the buffer is padded, never read past.
            let start = (p.offset as usize).min(urb.data.len());
            let end = (p.offset as usize)
                .saturating_add(p.length as usize)
                .min(urb.data.len());
            buffer.extend_from_slice(&urb.data[start..end]);
            buffer.resize(buffer.len() + p.length as usize - (end - start), 0);
        }
    }
    Ok(Plan {
        kind: Kind::Iso {
            is_in,
            packets: packets.clone(),
        },
        endpoint: urb.endpoint,
        transfer_type: transfer_type::ISOCHRONOUS,
        flags: usbfs::FLAG_ISO_ASAP,
        buffer: Payload::Laid(buffer),
        iso_lengths: packets.iter().map(|p| p.length).collect(),
    })
}

/// What usbfs reported for a finished transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// 0 or a negated errno.
    pub status: i32,
    pub actual_length: i32,
    /// Per isochronous packet: actual length and status.
    pub iso: Vec<(u32, i32)>,
}

/// The URB's result from a finished transfer. Lengths the device or the
/// kernel report are clamped to what was asked, never trusted.
pub fn finish(seqnum: u32, kind: &Kind, buffer: TransferBuffer, outcome: &Outcome) -> UrbResult {
    let status = kernel_status(outcome.status);
    let actual = usize::try_from(outcome.actual_length).unwrap_or(0);
    let (data, actual_length, iso_packets) = match kind {
        Kind::Control { is_in } => {
            let actual = actual.min(buffer.len().saturating_sub(SetupPacket::LEN));
            let data = if *is_in {
                buffer.into_in_data(SetupPacket::LEN, actual)
            } else {
                Bytes::new()
            };
            (data, actual as u32, Vec::new())
        }
        Kind::Stream { is_in } => {
            let actual = actual.min(buffer.len());
            let data = if *is_in {
                buffer.into_in_data(0, actual)
            } else {
                Bytes::new()
            };
            (data, actual as u32, Vec::new())
        }
        Kind::Iso { is_in, packets } => {
            let (data, iso_packets) = compact_iso(*is_in, packets, buffer.as_slice(), &outcome.iso);
            let actual_length = iso_packets.iter().map(|p| p.actual_length).sum();
            (data, actual_length, iso_packets)
        }
    };
    UrbResult {
        seqnum,
        status,
        data,
        actual_length,
        iso_packets,
    }
}

/// Isochronous results as USB/IP sends them (Linux's stub_tx.c): the IN
/// data of each packet back to back without the gaps, and per packet its
/// original offset and length with the actual length and status. The
/// actual lengths add up to the data's length, which vhci-hcd insists on.
///
/// `buffer` holds the packets back to back at their requested lengths (as
/// usbfs lays them out); `results` is usbfs's per-packet outcome.
pub fn compact_iso(
    is_in: bool,
    packets: &[IsoPacket],
    buffer: &[u8],
    results: &[(u32, i32)],
) -> (Bytes, Vec<IsoPacket>) {
    let mut data = Vec::new();
    let mut out = Vec::with_capacity(packets.len());
    let mut pos = 0usize;
    for (i, p) in packets.iter().enumerate() {
        // A packet usbfs did not report on ended with nothing.
        let (reported, status) = results.get(i).copied().unwrap_or((0, -errno::EPROTO));
        let room = buffer.len().saturating_sub(pos).min(p.length as usize);
        let actual = (reported as usize).min(room);
        if is_in {
            data.extend_from_slice(&buffer[pos..pos + actual]);
        }
        out.push(IsoPacket {
            offset: p.offset,
            length: p.length,
            actual_length: actual as u32,
            status: kernel_status(status),
        });
        pos = pos.saturating_add(p.length as usize);
    }
    (Bytes::from(data), out)
}

#[cfg(test)]
mod tests {
    use super::super::mapped::test_mapper::heap_pool;
    use super::*;

    fn urb(endpoint: u8) -> Urb {
        Urb {
            seqnum: 1,
            endpoint,
            setup: None,
            data: Bytes::new(),
            buffer_len: 0,
            transfer_flags: 0,
            interval: 0,
            iso_packets: Vec::new(),
        }
    }

    /// The plan's buffer in ordinary memory, as a transfer would run in it.
    fn laid(p: &Plan) -> Vec<u8> {
        p.buffer.clone().into_heap()
    }

    fn packets(lengths: &[u32]) -> Vec<IsoPacket> {
        let mut offset = 0;
        lengths
            .iter()
            .map(|&length| {
                let p = IsoPacket {
                    offset,
                    length,
                    ..IsoPacket::default()
                };
                offset += length;
                p
            })
            .collect()
    }

    #[test]
    fn statuses_are_the_kernels() {
        for status in [0, -32, -71, -75, -104, -108, -121] {
            assert_eq!(kernel_status(status), status);
        }
        assert_eq!(kernel_status(5), -errno::EPROTO);
        assert_eq!(rusb_error_errno(rusb::Error::Pipe), -32);
        assert_eq!(rusb_error_errno(rusb::Error::NoDevice), -19);
        // A failed request is never mistaken for a cancellation.
        for e in [
            rusb::Error::Io,
            rusb::Error::Other,
            rusb::Error::Interrupted,
        ] {
            assert_ne!(rusb_error_errno(e), -errno::ECONNRESET);
        }
    }

    #[test]
    fn control_in_buffer_is_setup_then_room_for_wlength() {
        let mut u = urb(0x80);
        u.setup = Some(SetupPacket::from_bytes([0x80, 6, 0, 1, 0, 0, 18, 0]));
        u.buffer_len = 18;
        let p = plan(&u, None).unwrap();
        assert_eq!(p.kind, Kind::Control { is_in: true });
        assert_eq!((p.endpoint, p.transfer_type), (0, transfer_type::CONTROL));
        assert_eq!(p.buffer.len(), 26);
        assert_eq!(&laid(&p)[..8], &[0x80, 6, 0, 1, 0, 0, 18, 0]);

        // The reply strips the setup; a device claiming more than wLength
        // is held to wLength.
        let mut buffer = laid(&p);
        buffer[8..].copy_from_slice(&[7; 18]);
        let outcome = Outcome {
            actual_length: 500,
            ..Outcome::default()
        };
        let data_stage = buffer[8..].as_ptr();
        let r = finish(9, &p.kind, buffer.into(), &outcome);
        assert_eq!((r.seqnum, r.status, r.actual_length), (9, 0, 18));
        assert_eq!(&r.data[..], &[7; 18]);
        // Not a copy: the result points into the transfer's buffer.
        assert_eq!(r.data.as_ptr(), data_stage);
    }

    #[test]
    fn control_out_carries_its_data_stage() {
        let mut u = urb(0x00);
        u.setup = Some(SetupPacket::from_bytes([0x21, 0x20, 0, 0, 0, 0, 7, 0]));
        u.data = Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]);
        u.buffer_len = 7;
        let p = plan(&u, None).unwrap();
        assert_eq!(p.kind, Kind::Control { is_in: false });
        assert_eq!(&laid(&p)[8..], &[1, 2, 3, 4, 5, 6, 7]);
        let r = finish(
            1,
            &p.kind,
            laid(&p).into(),
            &Outcome {
                actual_length: 7,
                ..Outcome::default()
            },
        );
        assert_eq!((r.actual_length, r.data.len()), (7, 0));
        // Without a setup packet there is nothing to send.
        assert_eq!(plan(&urb(0x80), None), Err(-errno::EINVAL));
    }

    #[test]
    fn bulk_and_interrupt_follow_the_endpoint_type() {
        let mut u = urb(0x81);
        u.buffer_len = 512;
        let p = plan(&u, Some(transfer_type::BULK)).unwrap();
        assert_eq!(
            (p.transfer_type, p.buffer.len()),
            (transfer_type::BULK, 512)
        );
        let p = plan(&u, Some(transfer_type::INTERRUPT)).unwrap();
        assert_eq!(p.transfer_type, transfer_type::INTERRUPT);
        // Unknown endpoint: bulk (Linux turns it into interrupt if needed).
        assert_eq!(plan(&u, None).unwrap().transfer_type, transfer_type::BULK);

        let mut out = urb(0x02);
        out.data = Bytes::from_static(b"hello");
        out.buffer_len = 5;
        out.transfer_flags = transfer_flags::ZERO_PACKET;
        let p = plan(&out, Some(transfer_type::BULK)).unwrap();
        assert_eq!(p.flags, usbfs::FLAG_ZERO_PACKET);
        assert_eq!(p.buffer, Payload::Data(Bytes::from_static(b"hello")));
        // Not on interrupt endpoints, nor on IN.
        assert_eq!(plan(&out, Some(transfer_type::INTERRUPT)).unwrap().flags, 0);
        u.transfer_flags = transfer_flags::ZERO_PACKET;
        assert_eq!(plan(&u, Some(transfer_type::BULK)).unwrap().flags, 0);

        // Short IN: only what arrived; a bogus actual length is clamped.
        let p = plan(&urb_in(0x81, 4), Some(transfer_type::BULK)).unwrap();
        let mut buffer = laid(&p);
        buffer.copy_from_slice(b"abcd");
        let r = finish(
            1,
            &p.kind,
            buffer.clone().into(),
            &Outcome {
                actual_length: 3,
                ..Outcome::default()
            },
        );
        assert_eq!(&r.data[..], b"abc");
        for bogus in [-1, 99] {
            let r = finish(
                1,
                &p.kind,
                buffer.clone().into(),
                &Outcome {
                    actual_length: bogus,
                    ..Outcome::default()
                },
            );
            assert!(r.data.len() <= 4 && r.actual_length as usize == r.data.len());
        }
    }

    #[test]
    fn bulk_transfers_run_in_mapped_buffers_that_go_back_to_their_pool() {
        let pool = heap_pool();
        let mut out = urb(0x02);
        out.data = Bytes::from_static(b"to the device");
        out.buffer_len = 13;
        let p = plan(&out, Some(transfer_type::BULK)).unwrap();
        let mut buffer = p.buffer.into_buffer(&pool);
        let TransferBuffer::Mapped(m) = &mut buffer else {
            panic!("OUT data not mapped: {buffer:?}");
        };
        assert_eq!(m.as_slice(), b"to the device");
        let mapping = m.as_mut_ptr();
        let outcome = Outcome {
            actual_length: 13,
            ..Outcome::default()
        };
        let r = finish(1, &p.kind, buffer, &outcome);
        assert_eq!((r.actual_length, r.data.len()), (13, 0));

        // The IN transfer reuses the page the OUT one gave back, and its
        // result holds only what the device sent: nothing of the earlier
        // data beyond it.
        let p = plan(&urb_in(0x81, 64), Some(transfer_type::BULK)).unwrap();
        let mut buffer = p.buffer.into_buffer(&pool);
        let TransferBuffer::Mapped(m) = &mut buffer else {
            panic!("IN room not mapped: {buffer:?}");
        };
        assert_eq!(m.as_mut_ptr(), mapping);
        assert_eq!(&m.as_slice()[..13], b"to the device");
        // SAFETY: 64 bytes of room; "back" is what the device wrote.
        unsafe { std::ptr::copy_nonoverlapping(b"back".as_ptr(), m.as_mut_ptr(), 4) };
        let outcome = Outcome {
            actual_length: 4,
            ..Outcome::default()
        };
        let r = finish(2, &p.kind, buffer, &outcome);
        assert_eq!(&r.data[..], b"back");
        assert_eq!(r.actual_length, 4);
        // The result is a copy: the mapping is back in the pool already.
        assert_ne!(r.data.as_ptr(), mapping.cast_const());
        assert_eq!(pool.take(1).unwrap().as_mut_ptr(), mapping);

        // Control and isochronous transfers keep ordinary memory.
        let mut c = urb(0x80);
        c.setup = Some(SetupPacket::from_bytes([0x80, 6, 0, 1, 0, 0, 18, 0]));
        c.buffer_len = 18;
        let p = plan(&c, None).unwrap();
        assert!(matches!(
            p.buffer.into_buffer(&pool),
            TransferBuffer::Heap(_)
        ));
    }

    fn urb_in(endpoint: u8, len: u32) -> Urb {
        let mut u = urb(endpoint);
        u.buffer_len = len;
        u
    }

    #[test]
    fn iso_in_data_is_compacted_with_per_packet_results() {
        let mut u = urb_in(0x85, 300);
        u.iso_packets = packets(&[100, 100, 100]);
        let p = plan(&u, Some(transfer_type::ISOCHRONOUS)).unwrap();
        assert_eq!(p.iso_lengths, vec![100, 100, 100]);
        assert_eq!(p.buffer.len(), 300);
        let mut buffer = laid(&p);
        buffer[..100].fill(b'a');
        buffer[100..200].fill(b'b');
        buffer[200..].fill(b'c');
        let outcome = Outcome {
            status: 0,
            actual_length: 0,
            iso: vec![
                (10, 0),
                (0, -errno::EPROTO),
                // More than the packet holds: clamped.
                (250, 0),
            ],
        };
        let r = finish(4, &p.kind, buffer.into(), &outcome);
        assert_eq!(r.status, 0);
        let expect: Vec<u8> = [&[b'a'; 10][..], &[b'c'; 100][..]].concat();
        assert_eq!(&r.data[..], &expect[..]);
        assert_eq!(r.actual_length, 110);
        let summary: Vec<(u32, u32, u32, i32)> = r
            .iso_packets
            .iter()
            .map(|p| (p.offset, p.length, p.actual_length, p.status))
            .collect();
        assert_eq!(
            summary,
            vec![(0, 100, 10, 0), (100, 100, 0, -71), (200, 100, 100, 0)]
        );
        let sum: u32 = r.iso_packets.iter().map(|p| p.actual_length).sum();
        assert_eq!(sum as usize, r.data.len());
    }

    #[test]
    fn iso_out_gathers_packets_from_their_offsets() {
        let mut u = urb(0x06);
        // Packets with a gap between them in the client's buffer.
        u.iso_packets = vec![
            IsoPacket {
                offset: 0,
                length: 2,
                ..IsoPacket::default()
            },
            IsoPacket {
                offset: 4,
                length: 3,
                ..IsoPacket::default()
            },
        ];
        u.data = Bytes::from_static(b"ab..cde");
        u.buffer_len = 7;
        let p = plan(&u, Some(transfer_type::ISOCHRONOUS)).unwrap();
        assert_eq!(laid(&p), b"abcde");
        let outcome = Outcome {
            iso: vec![(2, 0), (3, 0)],
            ..Outcome::default()
        };
        let r = finish(1, &p.kind, laid(&p).into(), &outcome);
        assert!(r.data.is_empty());
        assert_eq!(r.actual_length, 5);
        assert_eq!(r.iso_packets[1].offset, 4);

        // Data shorter than the packets claim: zero-padded, no panic.
        u.data = Bytes::from_static(b"ab");
        let p = plan(&u, Some(transfer_type::ISOCHRONOUS)).unwrap();
        assert_eq!(laid(&p), b"ab\0\0\0");
    }

    #[test]
    fn iso_results_missing_from_usbfs_are_empty_errors() {
        let kind = Kind::Iso {
            is_in: true,
            packets: packets(&[8, 8]),
        };
        let r = finish(
            1,
            &kind,
            vec![0; 16].into(),
            &Outcome {
                status: -errno::ENODEV,
                actual_length: 16,
                iso: vec![(8, 0)],
            },
        );
        assert_eq!(r.status, -errno::ENODEV);
        assert_eq!(r.iso_packets.len(), 2);
        assert_eq!(r.iso_packets[1].actual_length, 0);
        assert_eq!((r.actual_length, r.data.len()), (8, 8));
    }

    #[test]
    fn iso_urb_without_packets_or_on_a_message_pipe_is_refused() {
        let u = urb_in(0x85, 100);
        assert_eq!(
            plan(&u, Some(transfer_type::ISOCHRONOUS)),
            Err(-errno::EINVAL)
        );
        assert_eq!(plan(&u, Some(transfer_type::CONTROL)), Err(-errno::EINVAL));
    }
}
