//! Waiting on a few file descriptors at once, for the daemons that serve one
//! connection from a single thread.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until one of `fds` is readable, was closed by its peer, or failed,
/// or until `timeout` passes (`None`: forever). Returns, per descriptor,
/// whether it is ready.
pub fn readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: `polled` is a valid array of `polled.len()` pollfd for the
        // duration of the call.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ready = libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    Ok(polled.iter().map(|p| p.revents & ready != 0).collect())
}
