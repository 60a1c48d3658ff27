//! The kernel's device events (uevents), read from its netlink socket, so
//! that the hot-plug watcher looks at sysfs only when a USB device came or
//! went.
//!
//! Reading sysfs every second cost the gateway's one CPU a steady 1-2 %
//! under emulation, in bursts of several milliseconds that landed inside
//! the round trips of the devices being exported. The kernel announces
//! every USB device it adds or removes on the netlink multicast group that
//! udevd listens to; any process may listen there too, with or without
//! udevd running.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The kernel's own multicast group (udevd re-broadcasts on group 2).
const KERNEL_GROUP: u32 = 1;
/// The largest uevent the kernel sends (`UEVENT_BUFFER_SIZE`).
const MAX_MESSAGE: usize = 2048;
/// Room for the bursts of a hub with many devices plugged in at once.
const RECEIVE_BUFFER: usize = 1 << 20;

/// What the watcher learns from the messages waiting on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct News {
    /// A USB device or interface was added or removed.
    pub usb_changed: bool,
    /// The kernel dropped messages (the socket's buffer was full): anything
    /// may have changed.
    pub lost: bool,
}

/// A non-blocking socket receiving the kernel's uevents.
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A bigger buffer is a convenience: an overflow is noticed anyway.
        let _ = socket2::SockRef::from(&fd).set_recv_buffer_size(RECEIVE_BUFFER);
        // SAFETY: an all-zero sockaddr_nl is a valid value of the type.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = KERNEL_GROUP;
        // SAFETY: `addr` is a properly initialised sockaddr_nl and the
        // length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads every message waiting, without blocking.
    pub fn drain(&self) -> io::Result<News> {
        let mut news = News::default();
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            // SAFETY: an all-zero sockaddr_nl is a valid value of the type.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are writable for the lengths given
            // and outlive the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(news),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => news.lost = true,
                    _ => return Err(e),
                }
                continue;
            }
            // Only the kernel speaks on its group; anything else (a local
            // process with the privilege to send there) is not believed.
            if from.nl_pid != 0 {
                continue;
            }
            news.usb_changed |= is_usb_change(&buf[..n as usize]);
        }
    }
}

impl AsFd for UeventSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// True for the kernel's announcement of a USB device or interface being
/// added or removed: `ACTION@DEVPATH`, then `KEY=value` fields, each ending
/// with a NUL. A device is announced before its configuration is chosen;
/// its interfaces, announced after that, give the watcher the cue to look
/// at the complete device.
pub fn is_usb_change(message: &[u8]) -> bool {
    let mut fields = message.split(|&b| b == 0).filter(|f| !f.is_empty());
    let Some(header) = fields.next() else {
        return false;
    };
    // udevd's re-broadcasts start with "libudev"; the kernel's with the action.
    if !header.contains(&b'@') {
        return false;
    }
    let (mut action, mut subsystem, mut devtype) = (None, None, None);
    for field in fields {
        if let Some(v) = field.strip_prefix(b"ACTION=") {
            action = Some(v);
        } else if let Some(v) = field.strip_prefix(b"SUBSYSTEM=") {
            subsystem = Some(v);
        } else if let Some(v) = field.strip_prefix(b"DEVTYPE=") {
            devtype = Some(v);
        }
    }
    subsystem == Some(b"usb")
        && matches!(devtype, Some(b"usb_device" | b"usb_interface"))
        && matches!(action, Some(b"add" | b"remove"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(fields: &[&str]) -> Vec<u8> {
        let mut m = Vec::new();
        for f in fields {
            m.extend_from_slice(f.as_bytes());
            m.push(0);
        }
        m
    }

    const DEVPATH: &str = "/devices/platform/dummy_hcd.0/usb1/1-1";

    #[test]
    fn usb_devices_and_interfaces_added_or_removed_are_news() {
        for action in ["add", "remove"] {
            let m = message(&[
                &format!("{action}@{DEVPATH}"),
                &format!("ACTION={action}"),
                &format!("DEVPATH={DEVPATH}"),
                "SUBSYSTEM=usb",
                "DEVTYPE=usb_device",
                "BUSNUM=001",
                "DEVNUM=002",
                "SEQNUM=1234",
            ]);
            assert!(is_usb_change(&m), "{action}");
            let interface = message(&[
                &format!("{action}@{DEVPATH}/1-1:1.0"),
                &format!("ACTION={action}"),
                "SUBSYSTEM=usb",
                "DEVTYPE=usb_interface",
            ]);
            assert!(is_usb_change(&interface), "{action}");
        }
    }

    #[test]
    fn other_subsystems_and_other_actions_are_not() {
        let cases: [&[&str]; 5] = [
            &[
                "add@/devices/virtual/net/tap0",
                "ACTION=add",
                "SUBSYSTEM=net",
            ],
            // usbfs's endpoint nodes.
            &[
                &format!("add@{DEVPATH}/ep_81"),
                "ACTION=add",
                "SUBSYSTEM=usb_endpoint",
            ],
            // Driver binding changes nothing the watcher exports.
            &[
                &format!("bind@{DEVPATH}"),
                "ACTION=bind",
                "SUBSYSTEM=usb",
                "DEVTYPE=usb_device",
            ],
            // udevd's own re-broadcast format.
            &[
                "libudev",
                "ACTION=add",
                "SUBSYSTEM=usb",
                "DEVTYPE=usb_device",
            ],
            &[],
        ];
        for fields in cases {
            assert!(!is_usb_change(&message(fields)), "{fields:?}");
        }
        assert!(!is_usb_change(b"add@/x\0ACTION=add\0SUBSYSTEM=usb"));
    }

    #[test]
    fn the_socket_opens_and_reads_nothing_when_nothing_happened() {
        // Netlink may be unavailable in a sandbox; the watcher then polls.
        let Ok(socket) = UeventSocket::open() else {
            return;
        };
        let news = socket.drain().expect("drain");
        assert!(!news.lost);
    }
}
