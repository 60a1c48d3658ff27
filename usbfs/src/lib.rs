//! The usbfs requests a user-space USB/IP server makes (`linux/usbdevice_fs.h`):
//! submitting, cancelling and reaping URBs, and claiming interfaces.
//!
//! Nothing here decides anything: it is the kernel's structures and ioctl numbers,
//! and the memory rules usbfs imposes on an URB while the kernel holds it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// `struct usbdevfs_urb`, without its trailing isochronous packets.
#[repr(C)]
#[derive(Debug)]
pub struct RawUrb {
    pub kind: u8,
    pub endpoint: u8,
    pub status: i32,
    pub flags: u32,
    pub buffer: *mut u8,
    pub buffer_length: i32,
    pub actual_length: i32,
    pub start_frame: i32,
    /// `number_of_packets` (isochronous) or `stream_id` (bulk streams).
    pub number_of_packets: i32,
    pub error_count: i32,
    pub signr: u32,
    pub usercontext: *mut libc::c_void,
}

impl RawUrb {
    /// An URB of `kind` to `endpoint`, its buffer and context still unset.
    pub fn new(kind: u8, endpoint: u8, flags: u32, buffer_length: i32) -> Self {
        Self {
            kind,
            endpoint,
            status: 0,
            flags,
            buffer: std::ptr::null_mut(),
            buffer_length,
            actual_length: 0,
            start_frame: 0,
            number_of_packets: 0,
            error_count: 0,
            signr: 0,
            usercontext: std::ptr::null_mut(),
        }
    }
}

/// `struct usbdevfs_iso_packet_desc`, following the URB in memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IsoPacketDesc {
    pub length: u32,
    pub actual_length: u32,
    /// The packet's status: 0 or a negated errno, as the kernel stores it.
    pub status: u32,
}

/// `USBDEVFS_URB_TYPE_*`.
pub const TYPE_ISO: u8 = 0;
pub const TYPE_INTERRUPT: u8 = 1;
pub const TYPE_CONTROL: u8 = 2;
pub const TYPE_BULK: u8 = 3;

/// `USBDEVFS_URB_*` flags.
pub const FLAG_SHORT_NOT_OK: u32 = 0x01;
pub const FLAG_ISO_ASAP: u32 = 0x02;
pub const FLAG_ZERO_PACKET: u32 = 0x40;

/// The most packets usbfs takes in one isochronous URB.
pub const MAX_ISO_PACKETS: usize = 128;

// _IOR('U', 10, struct usbdevfs_urb), _IO('U', 11), _IOW('U', 12, void *),
// _IOR('U', 15, unsigned int), _IOR('U', 16, unsigned int). The sizes in the
// first and third follow the target's pointer width.
const SUBMITURB: libc::c_ulong =
    0x8000_0000 | ((size_of::<RawUrb>() as libc::c_ulong) << 16) | 0x550a;
const DISCARDURB: libc::c_ulong = 0x550b;
const REAPURB: libc::c_ulong =
    0x4000_0000 | ((size_of::<*mut libc::c_void>() as libc::c_ulong) << 16) | 0x550c;
const CLAIMINTERFACE: libc::c_ulong = 0x8004_550f;
const RELEASEINTERFACE: libc::c_ulong = 0x8004_5510;

/// The memory of one URB as usbfs wants it: the structure, then its isochronous
/// packet descriptors, in one block that never moves (it lives on the heap).
#[derive(Debug)]
pub struct UrbBlock {
    /// u64 words: the structure's alignment.
    words: Box<[u64]>,
    packets: usize,
}

// SAFETY: the block is plain memory; the raw pointers inside it are only
// addresses handed to the kernel, never dereferenced through the block.
unsafe impl Send for UrbBlock {}

impl UrbBlock {
    /// A zeroed URB with room for `packets` isochronous descriptors.
    pub fn new(packets: usize) -> Self {
        let bytes = size_of::<RawUrb>() + packets * size_of::<IsoPacketDesc>();
        Self {
            words: vec![0u64; bytes.div_ceil(8)].into_boxed_slice(),
            packets,
        }
    }

    /// The address usbfs knows the URB by.
    pub fn as_ptr(&mut self) -> *mut RawUrb {
        self.words.as_mut_ptr().cast()
    }

    pub fn urb(&self) -> &RawUrb {
        // SAFETY: the block starts with a `RawUrb`-sized, 8-aligned zeroed (or
        // kernel-written) region; every bit pattern is a valid `RawUrb`.
        unsafe { &*self.words.as_ptr().cast::<RawUrb>() }
    }

    pub fn urb_mut(&mut self) -> &mut RawUrb {
        // SAFETY: as in `urb`, and `&mut self` makes the access exclusive.
        unsafe { &mut *self.as_ptr() }
    }

    pub fn iso(&self) -> &[IsoPacketDesc] {
        // SAFETY: `new` made room for `packets` descriptors right after the
        // structure, whose size (56) keeps them 4-aligned.
        unsafe {
            let first = self.words.as_ptr().cast::<u8>().add(size_of::<RawUrb>());
            std::slice::from_raw_parts(first.cast::<IsoPacketDesc>(), self.packets)
        }
    }

    pub fn iso_mut(&mut self) -> &mut [IsoPacketDesc] {
        // SAFETY: as in `iso`, exclusive through `&mut self`.
        unsafe {
            let first = self
                .words
                .as_mut_ptr()
                .cast::<u8>()
                .add(size_of::<RawUrb>());
            std::slice::from_raw_parts_mut(first.cast::<IsoPacketDesc>(), self.packets)
        }
    }
}

/// Opens a device's usbfs file, `/dev/bus/usb/BBB/DDD`.
pub fn open(busnum: u32, devnum: u32) -> io::Result<OwnedFd> {
    open_path(Path::new(&format!("/dev/bus/usb/{busnum:03}/{devnum:03}")))
}

pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok(file.into())
}

/// Hands `urb` to the kernel.
///
/// # Safety
/// `urb`, its isochronous descriptors and its buffer must stay valid and unmoved,
/// and nothing else may touch them, until [`reap`] returns `urb`.
pub unsafe fn submit(fd: BorrowedFd<'_>, urb: *mut RawUrb) -> io::Result<()> {
    // SAFETY: the caller keeps `urb` and its buffer alive until reaped.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SUBMITURB as _, urb) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the next completed URB of this file and returns it (as submitted).
/// `ENODEV` once the device is gone and every URB was returned.
pub fn reap(fd: BorrowedFd<'_>) -> io::Result<*mut RawUrb> {
    let mut urb: *mut RawUrb = std::ptr::null_mut();
    loop {
        // SAFETY: the kernel writes one pointer into `urb`.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), REAPURB as _, &mut urb) };
        if rc == 0 {
            return Ok(urb);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Asks the kernel to cancel `urb`; it is reaped all the same, with `-ECONNRESET`
/// unless it completed first.
///
/// The kernel only compares the address with those of this file's URBs, so an
/// URB already reaped is harmless — unless its address was reused by a newer
/// one, which callers prevent by forgetting an URB before freeing it.
pub fn discard(fd: BorrowedFd<'_>, urb: *mut RawUrb) {
    // SAFETY: the kernel reads nothing through `urb` (see above).
    unsafe { libc::ioctl(fd.as_raw_fd(), DISCARDURB as _, urb as usize) };
}

pub fn claim_interface(fd: BorrowedFd<'_>, number: u32) -> io::Result<()> {
    interface_request(fd, CLAIMINTERFACE, number)
}

pub fn release_interface(fd: BorrowedFd<'_>, number: u32) -> io::Result<()> {
    interface_request(fd, RELEASEINTERFACE, number)
}

fn interface_request(fd: BorrowedFd<'_>, request: libc::c_ulong, number: u32) -> io::Result<()> {
    let mut number = number as libc::c_uint;
    // SAFETY: the kernel reads one unsigned int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut number) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_urb_has_the_kernels_layout() {
        assert_eq!(size_of::<RawUrb>(), 56);
        assert_eq!(std::mem::offset_of!(RawUrb, buffer), 16);
        assert_eq!(std::mem::offset_of!(RawUrb, number_of_packets), 36);
        assert_eq!(std::mem::offset_of!(RawUrb, usercontext), 48);
        assert_eq!(size_of::<IsoPacketDesc>(), 12);
        assert_eq!(SUBMITURB, 0x8038_550a);
        assert_eq!(REAPURB, 0x4008_550c);
    }

    #[test]
    fn isochronous_descriptors_follow_the_urb() {
        let mut block = UrbBlock::new(3);
        block.iso_mut()[2].length = 7;
        let base = block.as_ptr() as usize;
        let third = &block.iso()[2] as *const IsoPacketDesc as usize;
        assert_eq!(third - base, 56 + 2 * 12);
        assert_eq!(block.iso()[2].length, 7);
        assert!(block.words.len() * 8 >= 56 + 3 * 12);
        assert_eq!(UrbBlock::new(0).iso().len(), 0);
    }
}
