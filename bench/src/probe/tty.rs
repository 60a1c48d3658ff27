//! Raw mode for serial ports, undone when the guard is dropped.
//!
//! Both ends of a CDC-ACM link are ttys with a line discipline: in their
//! default (cooked) mode they echo input back to the sender, turn `\r`
//! into `\n` and `\n` into `\r\n`, and hold input until a newline. Any of
//! that would corrupt or loop the probes' bytes, so both the host side
//! (`/dev/ttyACM0`) and the gadget side (`/dev/ttyGS0`) go raw.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A tty in raw mode; dropping it restores the settings it had before.
#[derive(Debug)]
pub struct RawTty {
    file: File,
    saved: libc::termios,
}

fn get_attr(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain old data; all-zero is a valid value to
    // overwrite.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to write to.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

fn set_attr(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: `t` is a valid termios that was read by tcgetattr.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the tty is in raw mode as [`RawTty`] sets it (no canonical
/// input, no echo): how a test sees that the other side is ready.
pub fn is_raw(file: &File) -> io::Result<bool> {
    let t = get_attr(file.as_raw_fd())?;
    Ok(t.c_lflag & (libc::ICANON | libc::ECHO) == 0)
}

impl RawTty {
    /// Opens `path` non-blocking (no wait for a carrier), without making it
    /// the controlling tty, and switches it to raw mode.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)?;
        Self::new(file)
    }

    /// Switches an open tty to raw mode.
    pub fn new(file: File) -> io::Result<Self> {
        let fd = file.as_raw_fd();
        let saved = get_attr(fd)?;
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only changes flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        // CLOCAL: ignore modem lines, so a port without carrier still
        // works; CREAD: receive at all.
        raw.c_cflag |= libc::CLOCAL | libc::CREAD;
        // Reads return whatever is there; waiting is done with poll.
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        set_attr(fd, &raw)?;
        Ok(Self { file, saved })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Discards input that arrived before now: the kernel's buffer only,
    /// bytes still on the way come later.
    pub fn flush_input(&self) -> io::Result<()> {
        // SAFETY: tcflush on an open descriptor takes no pointer.
        if unsafe { libc::tcflush(self.file.as_raw_fd(), libc::TCIFLUSH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawTty {
    fn drop(&mut self) {
        // Best effort: a port that was unplugged has no settings to restore.
        let _ = set_attr(self.file.as_raw_fd(), &self.saved);
    }
}

/// A new pseudo-terminal: its master and slave, and the slave's path.
/// For tests, which stand a pty pair in for a serial link; the slave is
/// kept open so that the master does not see a hang-up while nobody else
/// has the slave open.
pub fn open_pty() -> io::Result<(File, File, PathBuf)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: both out-pointers are valid ints; name, termios and window
    // size are optional and not given.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are open descriptors that nothing
    // else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))?;
    Ok((File::from(master), File::from(slave), path))
}
