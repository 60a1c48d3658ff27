//! URBs in the kernel's hands: a planned transfer handed to usbfs, cancelled
//! on request, and reaped by a thread that waits in usbfs for completions.
//!
//! Ownership of an URB, start to end:
//!
//! 1. [`Prepared::new`] lays the plan out in a boxed [`Pending`]: the
//!    transfer's buffer and one usbfs URB, or several for an isochronous URB
//!    of more packets than usbfs takes at once. Each points back at the
//!    `Pending`. Until submitted, dropping the [`Prepared`] frees it all.
//! 2. The device's in-flight table takes the [`Submitted`] record of
//!    [`Prepared::record`] (the URBs' addresses, to cancel them, and how many
//!    are still out); then [`Prepared::submit`] hands the URBs to usbfs,
//!    without the table's lock.
//! 3. The reaping thread ([`reap_loop`]) gets each URB back from usbfs. Under
//!    the same lock it counts it in, and with the last one takes the record
//!    out of the table; only then does it free the `Pending`, so a cancel
//!    never names an address a newer URB may have reused.
//!
//! `Pending` holds the device, which holds the usbfs file, so the file
//! outlives every URB submitted on it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{error, warn};
use usbfs::{RawUrb, UrbBlock};
use usbip_proto::errno;

use super::descriptors::transfer_type;
use super::handle::Shared;
use super::transfer::{finish, Kind, Outcome, Plan, TransferBuffer};
use crate::device::UrbResult;

/// What the reaping thread owns while usbfs runs a transfer.
pub struct Pending {
    /// Declared before `device`: a mapped buffer goes back to the device's
    /// pool while the device, and so its mappings' file, still exists.
    buffer: TransferBuffer,
    urbs: Vec<UrbBlock>,
    /// The first of the URBs of a split isochronous transfer that never
    /// started, and why.
    failed: Option<(usize, i32)>,
    device: Arc<Shared>,
    generation: u64,
    seqnum: u32,
    kind: Kind,
}

/// A transfer laid out for usbfs, not yet submitted.
#[derive(Debug)]
pub struct Prepared(Box<Pending>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("seqnum", &self.seqnum)
            .field("urbs", &self.urbs.len())
            .finish_non_exhaustive()
    }
}

/// usbfs's URB type for an endpoint's transfer type.
fn usbfs_type(ty: u8) -> u8 {
    match ty {
        transfer_type::CONTROL => usbfs::TYPE_CONTROL,
        transfer_type::ISOCHRONOUS => usbfs::TYPE_ISO,
        transfer_type::INTERRUPT => usbfs::TYPE_INTERRUPT,
        _ => usbfs::TYPE_BULK,
    }
}

impl Prepared {
    /// Lays `plan` out for usbfs; its result goes to `device` as URB
    /// `seqnum` of attachment `generation`.
    pub fn new(
        device: &Arc<Shared>,
        generation: u64,
        seqnum: u32,
        plan: Plan,
    ) -> Result<Self, i32> {
        i32::try_from(plan.buffer.len()).map_err(|_| -errno::EINVAL)?;
        let is_iso = plan.transfer_type == transfer_type::ISOCHRONOUS;
        // Packets per usbfs URB: all of them, or as many as usbfs takes.
        let chunks: Vec<&[u32]> = if is_iso {
            plan.iso_lengths.chunks(usbfs::MAX_ISO_PACKETS).collect()
        } else {
            vec![&[]]
        };
        let urbs = chunks.iter().map(|c| UrbBlock::new(c.len())).collect();
        let mut pending = Box::new(Pending {
            buffer: plan.buffer.into_buffer(device.buffers()),
            urbs,
            failed: None,
            device: Arc::clone(device),
            generation,
            seqnum,
            kind: plan.kind,
        });
        let base = pending.buffer.as_mut_ptr();
        let total = pending.buffer.len();
        let mut offset = 0usize;
        for (block, lengths) in pending.urbs.iter_mut().zip(&chunks) {
            let length = if is_iso {
                lengths.iter().map(|&l| l as usize).sum()
            } else {
                total
            };
            let urb = block.urb_mut();
            urb.kind = usbfs_type(plan.transfer_type);
            urb.endpoint = plan.endpoint;
            urb.flags = plan.flags;
            // SAFETY: the lengths add up to the buffer's length (the plan
            // laid the packets out back to back), so this stays inside it.
            urb.buffer = unsafe { base.add(offset) };
            urb.buffer_length = length as i32;
            urb.number_of_packets = lengths.len() as i32;
            for (desc, &len) in block.iso_mut().iter_mut().zip(lengths.iter()) {
                desc.length = len;
            }
            offset += length;
        }
        Ok(Self(pending))
    }

    /// The record the device's in-flight table keeps for the transfer: the
    /// addresses of its URBs, all of them counted as out. It goes into the
    /// table before [`Self::submit`], since the reaping thread may be handed
    /// an URB back before `submit` returns, and looks for its record there.
    pub fn record(&mut self) -> Submitted {
        let pending: *mut Pending = &mut *self.0;
        let urbs: Vec<NonNull<RawUrb>> = self
            .0
            .urbs
            .iter_mut()
            .map(|block| {
                block.urb_mut().usercontext = pending.cast();
                NonNull::new(block.as_ptr()).expect("a block's address")
            })
            .collect();
        Submitted {
            outstanding: urbs.len(),
            urbs,
        }
    }

    /// Hands the URBs to usbfs on `fd`, once [`Self::record`]'s record is in
    /// the in-flight table. Not under the device's state lock: the
    /// completion's wake-up may preempt this thread at once, and the reaping
    /// thread would then wait for the lock.
    pub fn submit(self, fd: BorrowedFd<'_>) -> Submission {
        // The URBs' addresses are taken before the first is submitted: from
        // then on the reaping thread may free the `Pending` as soon as all
        // of them are back, and it must not be touched again.
        let pending = NonNull::from(Box::leak(self.0));
        // SAFETY: not submitted yet: the box is ours alone.
        let urbs: Vec<*mut RawUrb> = unsafe {
            (*pending.as_ptr())
                .urbs
                .iter_mut()
                .map(UrbBlock::as_ptr)
                .collect()
        };
        for (i, &urb) in urbs.iter().enumerate() {
            // SAFETY: the block, its buffer and `Pending` stay where they
            // are until the reaping thread frees them after reaping them.
            if let Err(e) = unsafe { usbfs::submit(fd, urb) } {
                let status = -e.raw_os_error().unwrap_or(errno::EPROTO);
                if i == 0 {
                    // SAFETY: nothing reached usbfs: the box is ours.
                    drop(unsafe { Box::from_raw(pending.as_ptr()) });
                    return Submission::Refused(status);
                }
                for &started in &urbs[..i] {
                    usbfs::discard(fd, started);
                }
                return Submission::Partly(Unstarted {
                    pending,
                    started: i,
                    status,
                });
            }
        }
        Submission::Started
    }
}

/// How handing a transfer to usbfs went.
#[derive(Debug)]
pub enum Submission {
    /// Every URB is in usbfs's hands.
    Started,
    /// None is, for this errno; the transfer is freed. Its record must
    /// leave the in-flight table.
    Refused(i32),
    /// Only the first URBs of a split isochronous transfer are, and they
    /// are being cancelled; the caller settles the record with
    /// [`Unstarted::settle`].
    Partly(Unstarted),
}

/// The URBs of a split isochronous transfer that usbfs did not take.
#[derive(Debug)]
pub struct Unstarted {
    pending: NonNull<Pending>,
    started: usize,
    status: i32,
}

// SAFETY: it only stands for the `Pending`, which `settle` reaches under the
// device's state lock.
unsafe impl Send for Unstarted {}

impl Unstarted {
    /// Takes the URBs that never started out of `record` (under the
    /// device's state lock, the record still in the in-flight table). The
    /// transfer ends with the submission's errno; if its started URBs are
    /// all back already, the transfer is returned to be finished
    /// ([`finish_reaped`]) once its record is out of the table.
    pub fn settle(self, record: &mut Submitted) -> Option<Reaped> {
        let p = self.pending.as_ptr();
        // SAFETY: the record still counts the URBs that never started, so
        // the reaping thread has not freed the `Pending`; it reads `failed`
        // only after taking the lock our caller holds.
        unsafe { (*p).failed = Some((self.started, self.status)) };
        let unstarted = record.urbs.len() - self.started;
        record.urbs.truncate(self.started);
        record.outstanding -= unstarted;
        // SAFETY: none of its URBs is out: nothing else reaches it.
        (record.outstanding == 0).then(|| Reaped(unsafe { Box::from_raw(p) }))
    }
}

/// A transfer whose URBs are all back and whose record is out of the
/// in-flight table, to be finished.
#[derive(Debug)]
pub struct Reaped(Box<Pending>);

/// Delivers the result of a transfer whose URBs are all back.
pub fn finish_reaped(reaped: Reaped) {
    let (device, generation, result, device_lost) = reaped.0.finish();
    device.finish_urb(generation, result, device_lost);
}

/// A transfer in usbfs's hands, as the device's in-flight table keeps it.
#[derive(Debug)]
pub struct Submitted {
    urbs: Vec<NonNull<RawUrb>>,
    /// URBs usbfs has not handed back yet.
    outstanding: usize,
}

// SAFETY: the addresses are only passed to usbfs (DISCARDURB compares them
// with its own list), under the device's state lock.
unsafe impl Send for Submitted {}

impl Submitted {
    /// Asks usbfs to cancel the transfer; its URBs then come back with
    /// `-ECONNRESET`, or with their real outcome if they won the race. Call
    /// it only while the record is in the in-flight table, under its lock.
    pub fn cancel(&self, fd: BorrowedFd<'_>) {
        for urb in &self.urbs {
            usbfs::discard(fd, urb.as_ptr());
        }
    }

    /// Counts one URB back; true when it was the last.
    pub fn reaped_one(&mut self) -> bool {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.outstanding == 0
    }
}

impl Pending {
    /// The URB's result from its usbfs URBs, which are all back.
    fn finish(self) -> (Arc<Shared>, u64, UrbResult, bool) {
        let mut outcome = Outcome::default();
        let (started, failure) = self.failed.unwrap_or((self.urbs.len(), 0));
        for (i, block) in self.urbs.iter().enumerate() {
            if i >= started {
                // Never submitted: its packets carry the failure.
                outcome.iso.extend(block.iso().iter().map(|_| (0, failure)));
                continue;
            }
            let urb = block.urb();
            if outcome.status == 0 {
                outcome.status = urb.status;
            }
            outcome.actual_length = outcome.actual_length.saturating_add(urb.actual_length);
            outcome.iso.extend(
                block
                    .iso()
                    .iter()
                    .map(|d| (d.actual_length, d.status as i32)),
            );
        }
        if failure != 0 {
            outcome.status = failure;
        }
        let device_lost = matches!(-outcome.status, errno::ENODEV | errno::ESHUTDOWN);
        let result = finish(self.seqnum, &self.kind, self.buffer, &outcome);
        (self.device, self.generation, result, device_lost)
    }
}

/// An URB that only tells the reaping thread to end: a GET_STATUS of the
/// device, which every device answers.
#[repr(C)]
struct Marker {
    urb: RawUrb,
    setup_and_status: [u8; 10],
}

/// Sends the marker that ends [`reap_loop`] on `fd`, and cancels it so that
/// it comes back without waiting for the device. False if usbfs would not
/// take it (the thread then ends when the device goes away).
pub fn stop_reaping(fd: BorrowedFd<'_>) -> bool {
    let marker = Box::new(Marker {
        urb: RawUrb::new(usbfs::TYPE_CONTROL, 0, 0, 10),
        setup_and_status: [0x80, 0x00, 0, 0, 0, 0, 2, 0, 0, 0],
    });
    let marker = Box::into_raw(marker);
    // SAFETY: `marker` is a live allocation we just leaked; the buffer is
    // its own field.
    unsafe { (*marker).urb.buffer = (*marker).setup_and_status.as_mut_ptr() };
    // SAFETY: the marker stays allocated until the reaping thread, which
    // recognises it by its null context, frees it.
    match unsafe { usbfs::submit(fd, marker.cast()) } {
        Ok(()) => {
            // Back at once even from a device that would never answer.
            usbfs::discard(fd, marker.cast());
            true
        }
        Err(_) => {
            // SAFETY: usbfs did not take it: still ours.
            drop(unsafe { Box::from_raw(marker) });
            false
        }
    }
}

/// How long the reaping thread waits, once the device is gone, for URBs
/// the kernel has not handed back yet.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Reaps the URBs submitted on `fd` and delivers their results, until the
/// marker comes back or the device is gone and every URB is back.
pub fn reap_loop(fd: Arc<OwnedFd>, busid: &str, device: Weak<Shared>) {
    loop {
        match usbfs::reap(fd.as_fd()) {
            Ok(urb) => {
                if deliver(urb, busid) == Delivered::Marker {
                    return;
                }
            }
            Err(e) => {
                // ENODEV: the device is gone. Anything else (EFAULT) cannot
                // happen with our addresses, and waiting again would spin.
                if e.raw_os_error() != Some(errno::ENODEV) {
                    error!("{busid}: cannot reap URBs: {e}; stopping");
                }
                return drain(&fd, busid, &device);
            }
        }
    }
}

/// The device is gone, but the kernel may still be handing back URBs (a
/// host controller returns them a moment after the disconnect): reaps them
/// for a while, then fails whatever is still out.
fn drain(fd: &OwnedFd, busid: &str, device: &Weak<Shared>) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    if let Some(shared) = device.upgrade() {
        shared.lost();
    }
    loop {
        let Some(shared) = device.upgrade() else {
            return;
        };
        if !shared.has_transfers_in_flight() {
            return;
        }
        if Instant::now() >= deadline {
            shared.abandon_transfers();
            return;
        }
        drop(shared);
        match usbfs::reap(fd.as_fd()) {
            Ok(urb) => {
                deliver(urb, busid);
            }
            // Disconnected: REAPURB no longer waits.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Delivered {
    Marker,
    Urb,
}

/// Counts in an URB usbfs handed back and, with the last of its transfer,
/// delivers the transfer's result.
fn deliver(urb: *mut RawUrb, busid: &str) -> Delivered {
    // SAFETY: usbfs returns the address of an URB we submitted on this
    // file, which stays allocated until we free it below.
    let context = unsafe { (*urb).usercontext };
    if context.is_null() {
        // SAFETY: only the marker has no context; `stop_reaping` leaked it
        // for us to free.
        drop(unsafe { Box::from_raw(urb.cast::<Marker>()) });
        return Delivered::Marker;
    }
    let pending = context.cast::<Pending>();
    // SAFETY: the `Pending` lives until the last of its URBs is back; these
    // fields never change after submission.
    let (device, generation, seqnum) =
        unsafe { (&(*pending).device, (*pending).generation, (*pending).seqnum) };
    match device.urb_reaped(generation, seqnum) {
        Some(false) => return Delivered::Urb,
        Some(true) => {}
        None => {
            // Not in the table (abandoned): freeing what it points to could
            // free memory still in use. Leak it and say so.
            warn!("{busid}: reaped URB {seqnum} has no record; leaking it");
            return Delivered::Urb;
        }
    }
    // SAFETY: all its URBs are back and its record is out of the table, so
    // nothing else can reach the `Pending`: it is ours.
    finish_reaped(Reaped(unsafe { Box::from_raw(pending) }));
    Delivered::Urb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_types_map_to_usbfs_types() {
        assert_eq!(usbfs_type(transfer_type::CONTROL), usbfs::TYPE_CONTROL);
        assert_eq!(usbfs_type(transfer_type::ISOCHRONOUS), usbfs::TYPE_ISO);
        assert_eq!(usbfs_type(transfer_type::BULK), usbfs::TYPE_BULK);
        assert_eq!(usbfs_type(transfer_type::INTERRUPT), usbfs::TYPE_INTERRUPT);
    }

    #[test]
    fn the_marker_is_an_urb_first() {
        assert_eq!(std::mem::offset_of!(Marker, urb), 0);
    }
}
