//! The few usbfs requests the floor server makes (`linux/usbdevice_fs.h`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `struct usbdevfs_urb`, without isochronous packets.
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
    pub number_of_packets: i32,
    pub error_count: i32,
    pub signr: u32,
    pub usercontext: *mut libc::c_void,
}

pub const TYPE_INTERRUPT: u8 = 1;
pub const TYPE_CONTROL: u8 = 2;
pub const TYPE_BULK: u8 = 3;

// _IOR('U', 10, struct usbdevfs_urb), _IOW('U', 12, void *), _IO('U', 11),
// _IOR('U', 15, unsigned int), _IOR('U', 16, unsigned int).
const SUBMITURB: libc::c_ulong =
    0x8000_0000 | ((size_of::<RawUrb>() as libc::c_ulong) << 16) | 0x550a;
const REAPURB: libc::c_ulong = 0x4008_550c;
const DISCARDURB: libc::c_ulong = 0x550b;
const CLAIMINTERFACE: libc::c_ulong = 0x8004_550f;
const RELEASEINTERFACE: libc::c_ulong = 0x8004_5510;

/// Hands `urb` to the kernel. It must stay where it is, untouched, until reaped.
///
/// # Safety
/// `urb` and its buffer must stay valid and unmoved until [`reap`] returns it.
pub unsafe fn submit(fd: &OwnedFd, urb: *mut RawUrb) -> io::Result<()> {
    // SAFETY: the caller keeps `urb` and its buffer alive until reaped.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SUBMITURB, urb) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the next completed URB and returns it (as submitted).
pub fn reap(fd: &OwnedFd) -> io::Result<*mut RawUrb> {
    let mut urb: *mut RawUrb = std::ptr::null_mut();
    loop {
        // SAFETY: the kernel writes one pointer into `urb`.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), REAPURB, &mut urb) };
        if rc == 0 {
            return Ok(urb);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Asks the kernel to cancel `urb`; it is reaped all the same.
pub fn discard(fd: &OwnedFd, urb: *mut RawUrb) {
    // SAFETY: the kernel looks `urb` up among this file's URBs and touches nothing if it
    // has none such.
    unsafe { libc::ioctl(fd.as_raw_fd(), DISCARDURB, urb) };
}

pub fn claim_interface(fd: &OwnedFd, number: u32) -> io::Result<()> {
    interface_request(fd, CLAIMINTERFACE, number)
}

pub fn release_interface(fd: &OwnedFd, number: u32) -> io::Result<()> {
    interface_request(fd, RELEASEINTERFACE, number)
}

fn interface_request(fd: &OwnedFd, request: libc::c_ulong, number: u32) -> io::Result<()> {
    let mut number = number as libc::c_uint;
    // SAFETY: the kernel reads one unsigned int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut number) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_urb_has_the_kernels_layout() {
        assert_eq!(size_of::<RawUrb>(), 56);
        assert_eq!(std::mem::offset_of!(RawUrb, buffer), 16);
        assert_eq!(std::mem::offset_of!(RawUrb, usercontext), 48);
        assert_eq!(SUBMITURB, 0x8038_550a);
    }
}
