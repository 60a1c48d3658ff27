//! URBs as asynchronous libusb transfers.
//!
//! Ownership of a transfer, start to end:
//!
//! 1. [`Prepared::new`] allocates the `libusb_transfer` and a boxed
//!    [`Pending`] (the URB's buffer and where its result goes) that the
//!    transfer's `user_data` points to. Until it is submitted, dropping the
//!    [`Prepared`] frees both.
//! 2. [`Prepared::submit`] hands both to libusb. From then on only the
//!    completion callback ([`transfer_done`]) may free them, and it does so
//!    exactly once: libusb calls it exactly once per submitted transfer,
//!    also for cancelled ones and when the device disappears.
//! 3. Meanwhile the device keeps a [`TransferPtr`] in its in-flight table,
//!    under its state lock, to cancel the transfer. The callback takes the
//!    entry out of the table under that same lock *before* freeing the
//!    transfer, so a cancel never sees a freed transfer.
//!
//! `Pending` holds the device, which owns the libusb device handle, so the
//! handle outlives every transfer submitted on it.

use std::ffi::{c_int, c_uint};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rusb::constants::*;
use rusb::ffi;
use tracing::error;
use usbip_proto::{errno, limits, transfer_flags, IsoPacket, SetupPacket};

use super::descriptors::transfer_type;
use super::handle::Shared;
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

/// The status of a finished libusb transfer (or isochronous packet) as
/// the negated Linux errno an URB would have ended with.
pub fn transfer_status_errno(status: c_int) -> i32 {
    match status {
        LIBUSB_TRANSFER_COMPLETED => 0,
        LIBUSB_TRANSFER_ERROR => -errno::EPROTO,
        LIBUSB_TRANSFER_TIMED_OUT => -errno::ETIMEDOUT,
        LIBUSB_TRANSFER_CANCELLED => -errno::ECONNRESET,
        LIBUSB_TRANSFER_STALL => -errno::EPIPE,
        LIBUSB_TRANSFER_NO_DEVICE => -errno::ENODEV,
        LIBUSB_TRANSFER_OVERFLOW => -errno::EOVERFLOW,
        _ => -errno::EPROTO,
    }
}

/// A libusb function's error code as a negated Linux errno. Never
/// `-ECONNRESET`: that would read as "cancelled" to the session.
pub fn libusb_error_errno(code: c_int) -> i32 {
    use more_errno::*;
    match code {
        LIBUSB_ERROR_IO => -EIO,
        LIBUSB_ERROR_INVALID_PARAM => -errno::EINVAL,
        LIBUSB_ERROR_ACCESS => -EACCES,
        LIBUSB_ERROR_NO_DEVICE => -errno::ENODEV,
        LIBUSB_ERROR_NOT_FOUND => -errno::ENOENT,
        LIBUSB_ERROR_BUSY => -EBUSY,
        LIBUSB_ERROR_TIMEOUT => -errno::ETIMEDOUT,
        LIBUSB_ERROR_OVERFLOW => -errno::EOVERFLOW,
        LIBUSB_ERROR_PIPE => -errno::EPIPE,
        LIBUSB_ERROR_INTERRUPTED => -EINTR,
        LIBUSB_ERROR_NO_MEM => -ENOMEM,
        LIBUSB_ERROR_NOT_SUPPORTED => -EOPNOTSUPP,
        _ => -errno::EPROTO,
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

/// An URB translated into libusb terms, before any libusb call.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    pub endpoint: u8,
    pub transfer_type: u8,
    pub flags: u8,
    pub buffer: Payload,
    pub iso_lengths: Vec<u32>,
}

/// What a transfer's buffer must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Laid out already: for control transfers the setup packet, then the
    /// data stage; for isochronous ones the packets back to back, as
    /// libusb lays them out.
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
    fn into_buffer(self, pool: &Arc<MappedPool>) -> TransferBuffer {
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

    fn as_mut_ptr(&mut self) -> *mut u8 {
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
                flags: if zlp {
                    LIBUSB_TRANSFER_ADD_ZERO_PACKET
                } else {
                    0
                },
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
        flags: 0,
        buffer: Payload::Laid(buffer),
        iso_lengths: packets.iter().map(|p| p.length).collect(),
    })
}

/// What libusb reported for a finished transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub status: c_int,
    pub actual_length: c_int,
    /// Per isochronous packet: actual length and status.
    pub iso: Vec<(c_uint, c_int)>,
}

/// The URB's result from a finished transfer. Lengths the device or
/// libusb report are clamped to what was asked, never trusted.
pub fn finish(seqnum: u32, kind: &Kind, buffer: TransferBuffer, outcome: &Outcome) -> UrbResult {
    let status = transfer_status_errno(outcome.status);
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
/// libusb lays them out); `results` is libusb's per-packet outcome.
pub fn compact_iso(
    is_in: bool,
    packets: &[IsoPacket],
    buffer: &[u8],
    results: &[(c_uint, c_int)],
) -> (Bytes, Vec<IsoPacket>) {
    let mut data = Vec::new();
    let mut out = Vec::with_capacity(packets.len());
    let mut pos = 0usize;
    for (i, p) in packets.iter().enumerate() {
        // A packet libusb did not report on ended with nothing.
        let (reported, status) = results
            .get(i)
            .copied()
            .unwrap_or((0, LIBUSB_TRANSFER_ERROR));
        let room = buffer.len().saturating_sub(pos).min(p.length as usize);
        let actual = (reported as usize).min(room);
        if is_in {
            data.extend_from_slice(&buffer[pos..pos + actual]);
        }
        out.push(IsoPacket {
            offset: p.offset,
            length: p.length,
            actual_length: actual as u32,
            status: transfer_status_errno(status),
        });
        pos = pos.saturating_add(p.length as usize);
    }
    (Bytes::from(data), out)
}

/// Transfers completed so far, by every context: the event loop tells from
/// it whether a round of event handling may have left completions behind.
static COMPLETED: AtomicU64 = AtomicU64::new(0);

/// How many transfers have completed (their callbacks run) so far.
pub fn completed_so_far() -> u64 {
    COMPLETED.load(Ordering::Acquire)
}

/// What the completion callback owns while libusb runs a transfer.
struct Pending {
    /// Declared before `device`: a mapped buffer goes back to the device's
    /// pool while the device, and so its handle, still exists.
    buffer: TransferBuffer,
    device: Arc<Shared>,
    generation: u64,
    seqnum: u32,
    kind: Kind,
}

/// A submitted transfer, as the device's in-flight table keeps it.
#[derive(Debug)]
pub struct TransferPtr(NonNull<ffi::libusb_transfer>);

// SAFETY: a libusb transfer may be cancelled from any thread; the pointer
// is only used under the device's state lock (see `cancel`).
unsafe impl Send for TransferPtr {}

impl TransferPtr {
    /// Asks libusb to cancel the transfer; its callback then runs with
    /// `LIBUSB_TRANSFER_CANCELLED` (or its real outcome if it won the race).
    ///
    /// # Safety
    ///
    /// The transfer must not have been freed: call this only while holding
    /// the device's state lock with this pointer still in its in-flight
    /// table (the callback removes it under that lock before freeing).
    pub unsafe fn cancel(&self) {
        // SAFETY: the caller guarantees the transfer is still allocated;
        // cancelling a transfer that already completed is harmless
        // (LIBUSB_ERROR_NOT_FOUND), which is why the result is ignored.
        unsafe {
            ffi::libusb_cancel_transfer(self.0.as_ptr());
        }
    }
}

/// A filled transfer not yet submitted. Dropping it frees everything.
#[derive(Debug)]
pub struct Prepared {
    transfer: NonNull<ffi::libusb_transfer>,
    pending: NonNull<Pending>,
}

impl Prepared {
    /// Allocates and fills a transfer for `plan` on `device`'s handle; its
    /// result goes to `device` as URB `seqnum` of attachment `generation`.
    pub fn new(
        device: &Arc<Shared>,
        generation: u64,
        seqnum: u32,
        plan: Plan,
    ) -> Result<Self, i32> {
        let handle = device.raw_handle();
        let length = c_int::try_from(plan.buffer.len()).map_err(|_| -errno::EINVAL)?;
        let buffer = plan.buffer.into_buffer(device.buffers());
        let packets = c_int::try_from(plan.iso_lengths.len()).map_err(|_| -errno::EINVAL)?;
        // SAFETY: plain allocation; a null result is handled below.
        let raw = unsafe { ffi::libusb_alloc_transfer(packets) };
        let transfer = NonNull::new(raw).ok_or(-more_errno::ENOMEM)?;
        let pending = Box::new(Pending {
            buffer,
            device: Arc::clone(device),
            generation,
            seqnum,
            kind: plan.kind,
        });
        let pending = NonNull::from(Box::leak(pending));
        let t = transfer.as_ptr();
        // SAFETY: `t` was just allocated by libusb with room for `packets`
        // isochronous descriptors and is not shared with anyone yet.
        // `pending` is a live box we own; its buffer's memory (heap or
        // mapping) stays put until the box is freed, which happens only after
        // libusb is done with the transfer (callback) or when it was never
        // submitted (drop).
        unsafe {
            (*t).dev_handle = handle;
            (*t).flags = plan.flags;
            (*t).endpoint = plan.endpoint;
            (*t).transfer_type = plan.transfer_type;
            // USB/IP URBs have no timeout; the client unlinks instead.
            (*t).timeout = 0;
            (*t).length = length;
            (*t).actual_length = 0;
            (*t).callback = transfer_done;
            (*t).user_data = pending.as_ptr().cast();
            (*t).buffer = (*pending.as_ptr()).buffer.as_mut_ptr();
            (*t).num_iso_packets = packets;
            let descs = iso_descriptors(t);
            for (i, len) in plan.iso_lengths.iter().enumerate() {
                let d = descs.add(i);
                (*d).length = *len;
                (*d).actual_length = 0;
                (*d).status = 0;
            }
        }
        Ok(Self { transfer, pending })
    }

    /// Submits the transfer. On success libusb owns it until the callback;
    /// on failure it is freed here and the errno returned.
    pub fn submit(self) -> Result<TransferPtr, i32> {
        // SAFETY: the transfer is fully initialised by `new` and owned by
        // us; on success libusb takes it over, and `forget` below makes
        // sure we never free it ourselves.
        let rc = unsafe { ffi::libusb_submit_transfer(self.transfer.as_ptr()) };
        if rc != 0 {
            return Err(libusb_error_errno(rc));
        }
        let ptr = TransferPtr(self.transfer);
        std::mem::forget(self);
        Ok(ptr)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: never submitted (`submit` forgets `self` on success), so
        // we are the only owner of both allocations, freed once here.
        unsafe {
            drop(Box::from_raw(self.pending.as_ptr()));
            ffi::libusb_free_transfer(self.transfer.as_ptr());
        }
    }
}

/// The isochronous packet descriptors trailing a transfer.
///
/// # Safety
///
/// `t` must point to a live transfer.
unsafe fn iso_descriptors(t: *mut ffi::libusb_transfer) -> *mut ffi::libusb_iso_packet_descriptor {
    // SAFETY: the descriptors are a flexible array member allocated with
    // the transfer; the pointer keeps the transfer's provenance.
    unsafe { ptr::addr_of_mut!((*t).iso_packet_desc).cast() }
}

/// libusb's completion callback, run where libusb handles events (see `events`).
extern "system" fn transfer_done(transfer: *mut ffi::libusb_transfer) {
    COMPLETED.fetch_add(1, Ordering::AcqRel);
    // A panic must not unwind into libusb (it would abort the process).
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: libusb calls this once per submitted transfer, with the
        // transfer we filled in `Prepared::new`: `user_data` is the
        // `Pending` box leaked there, which nobody else frees once the
        // transfer was submitted, so taking it back here is sound.
        let pending = unsafe { Box::from_raw((*transfer).user_data.cast::<Pending>()) };
        let packets = match &pending.kind {
            Kind::Iso { packets, .. } => packets.len(),
            _ => 0,
        };
        // SAFETY: the transfer is live until freed below, and libusb has
        // finished with it (it is completing it).
        let outcome = unsafe { read_outcome(transfer, packets) };
        let Pending {
            buffer,
            device,
            generation,
            seqnum,
            kind,
        } = *pending;
        // Consumes the buffer: a mapped one is back in its pool from here.
        let result = finish(seqnum, &kind, buffer, &outcome);
        // Takes the transfer out of the in-flight table (under the lock
        // cancel uses) before it is freed.
        device.finish_urb(
            generation,
            result,
            outcome.status == LIBUSB_TRANSFER_NO_DEVICE,
        );
        // SAFETY: no longer in the in-flight table, so nothing else can
        // reach it; libusb is done with it and we free it exactly once.
        // Freeing leaves its buffer alone (no LIBUSB_TRANSFER_FREE_BUFFER):
        // `finish` took it, and a heap one is the result's now, which
        // libusb last wrote before calling us. `device`, which owns the
        // handle the transfer was on, is dropped after this.
        unsafe { ffi::libusb_free_transfer(transfer) };
        drop(device);
    }));
    if caught.is_err() {
        error!("libusb completion handler panicked; an URB is lost");
    }
}

/// Reads a finished transfer's status, length and the first `packets`
/// isochronous results.
///
/// # Safety
///
/// `t` must point to a live transfer libusb has finished with.
unsafe fn read_outcome(t: *mut ffi::libusb_transfer, packets: usize) -> Outcome {
    // SAFETY: guaranteed by the caller; only descriptors that exist
    // (`num_iso_packets` of them) are read.
    unsafe {
        let n = usize::try_from((*t).num_iso_packets)
            .unwrap_or(0)
            .min(packets);
        let descs = iso_descriptors(t);
        Outcome {
            status: (*t).status,
            actual_length: (*t).actual_length,
            iso: (0..n)
                .map(|i| {
                    let d = descs.add(i);
                    ((*d).actual_length, (*d).status)
                })
                .collect(),
        }
    }
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
    fn statuses_map_to_linux_errnos() {
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_COMPLETED), 0);
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_ERROR), -71);
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_TIMED_OUT), -110);
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_CANCELLED), -104);
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_STALL), -32);
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_NO_DEVICE), -19);
        assert_eq!(transfer_status_errno(LIBUSB_TRANSFER_OVERFLOW), -75);
        assert_eq!(transfer_status_errno(42), -71);
        assert_eq!(libusb_error_errno(LIBUSB_ERROR_NO_DEVICE), -19);
        assert_eq!(libusb_error_errno(LIBUSB_ERROR_BUSY), -16);
        assert_eq!(libusb_error_errno(LIBUSB_ERROR_PIPE), -32);
        assert_eq!(rusb_error_errno(rusb::Error::Pipe), -32);
        assert_eq!(rusb_error_errno(rusb::Error::NoDevice), -19);
        // A failure to start is never mistaken for a cancellation.
        for code in -100..0 {
            assert_ne!(libusb_error_errno(code), -errno::ECONNRESET);
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
        assert_eq!(p.flags, LIBUSB_TRANSFER_ADD_ZERO_PACKET);
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
            status: LIBUSB_TRANSFER_COMPLETED,
            actual_length: 0,
            iso: vec![
                (10, LIBUSB_TRANSFER_COMPLETED),
                (0, LIBUSB_TRANSFER_ERROR),
                // More than the packet holds: clamped.
                (250, LIBUSB_TRANSFER_COMPLETED),
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
    fn iso_results_missing_from_libusb_are_empty_errors() {
        let kind = Kind::Iso {
            is_in: true,
            packets: packets(&[8, 8]),
        };
        let r = finish(
            1,
            &kind,
            vec![0; 16].into(),
            &Outcome {
                status: LIBUSB_TRANSFER_NO_DEVICE,
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
