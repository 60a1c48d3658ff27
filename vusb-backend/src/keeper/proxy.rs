//! The keeper's I/O: one front-end connection at a time, passed through to
//! the back-end message by message, the back-end reconnected and brought
//! back to the recorded setup whenever its connection breaks.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::journal::Journal;
use super::message::{Header, Message, HEADER_LEN, MAX_FDS, MAX_PAYLOAD};

/// Between attempts to reach a back-end that is not (yet) listening.
const RETRY: Duration = Duration::from_millis(100);

/// How long a back-end may take to answer during its replay.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts front-ends on `listener` one after another and keeps each one
/// connected to the back-end listening on `backend`.
pub fn serve_forever(listener: &UnixListener, backend: &Path) -> io::Result<()> {
    loop {
        let (front, _) = listener.accept()?;
        info!("front-end connected");
        match Session::new(front, backend).run() {
            Ok(()) => info!("front-end disconnected"),
            Err(e) => warn!("front-end connection ended: {e}"),
        }
    }
}

/// Why a message could not be read.
enum ReadError {
    /// The peer closed the connection or broke the framing.
    Gone(io::Error),
}

struct Session<'a> {
    front: UnixStream,
    backend_path: &'a Path,
    journal: Journal,
    /// Messages passed to the back-end whose replies are still due, oldest
    /// first.
    unanswered: VecDeque<Message>,
}

impl<'a> Session<'a> {
    fn new(front: UnixStream, backend_path: &'a Path) -> Self {
        Self {
            front,
            backend_path,
            journal: Journal::default(),
            unanswered: VecDeque::new(),
        }
    }

    fn run(mut self) -> io::Result<()> {
        let Some(mut back) = self.reach_backend()? else {
            return Ok(());
        };
        info!("back-end connected");
        loop {
            let (front_ready, back_ready) = poll_two(&self.front, &back)?;
            if front_ready {
                let m = match read_message(&self.front) {
                    Ok(m) => m,
                    // The front-end is gone: so is this session. Dropping
                    // the back-end's connection tells it.
                    Err(ReadError::Gone(_)) => return Ok(()),
                };
                debug!(request = m.header.request, "front-end → back-end");
                self.journal.record(&m);
                if m.expects_reply() {
                    self.unanswered.push_back(m.clone());
                }
                if let Err(e) = write_message(&back, &m) {
                    warn!("the back-end connection broke: {e}");
                    match self.restore_backend()? {
                        Some(b) => back = b,
                        None => return Ok(()),
                    }
                }
                continue;
            }
            if back_ready {
                match read_message(&back) {
                    Ok(reply) => {
                        self.unanswered.pop_front();
                        write_message(&self.front, &reply)?;
                    }
                    Err(ReadError::Gone(e)) => {
                        warn!("the back-end connection broke: {e}");
                        match self.restore_backend()? {
                            Some(b) => back = b,
                            None => return Ok(()),
                        }
                    }
                }
            }
        }
    }

    /// Connects to the back-end, retrying while it is away. `None` when the
    /// front-end hung up meanwhile.
    fn reach_backend(&self) -> io::Result<Option<UnixStream>> {
        let mut logged = false;
        loop {
            match UnixStream::connect(self.backend_path) {
                Ok(s) => return Ok(Some(s)),
                Err(e) => {
                    if !logged {
                        info!(backend = %self.backend_path.display(), "waiting for the back-end: {e}");
                        logged = true;
                    }
                }
            }
            if hung_up(&self.front, RETRY)? {
                return Ok(None);
            }
        }
    }

    /// Reconnects to the back-end and replays the setup to it, then sends
    /// again what the old one left unanswered. The front-end notices
    /// nothing but the delay. `None` when the front-end hung up meanwhile.
    fn restore_backend(&mut self) -> io::Result<Option<UnixStream>> {
        loop {
            let Some(back) = self.reach_backend()? else {
                return Ok(None);
            };
            match self.replay(&back) {
                Ok(count) => {
                    info!(
                        replayed = count,
                        resent = self.unanswered.len(),
                        "back-end connected again and brought back to the front-end's setup"
                    );
                    return Ok(Some(back));
                }
                Err(e) => {
                    warn!("replaying to the back-end failed, trying again: {e}");
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn replay(&self, back: &UnixStream) -> io::Result<usize> {
        let replay = self.journal.replay();
        back.set_read_timeout(Some(REPLAY_TIMEOUT))?;
        for m in &replay {
            write_message(back, m)?;
            if m.expects_reply() {
                read_message(back).map_err(|ReadError::Gone(e)| e)?;
            }
        }
        back.set_read_timeout(None)?;
        for m in &self.unanswered {
            write_message(back, m)?;
        }
        for fd in self.journal.kick_fds() {
            kick(&fd)?;
        }
        Ok(replay.len())
    }
}

/// Reads one whole message with the descriptors that came with it.
fn read_message(s: &UnixStream) -> Result<Message, ReadError> {
    let gone = ReadError::Gone;
    let mut header = [0u8; HEADER_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER_LEN,
    }];
    // SAFETY: the iovec points at `header`, which lives through the call
    // and takes any bytes written to it.
    let (got, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| gone(io::Error::from_raw_os_error(e.errno())))?;
    let fds: Vec<Arc<OwnedFd>> = raw_fds[..nfds]
        .iter()
        // SAFETY: recvmsg just created these descriptors for this process;
        // nothing else owns them.
        .map(|fd| Arc::new(unsafe { OwnedFd::from_raw_fd(*fd) }))
        .collect();
    if got == 0 {
        return Err(gone(io::ErrorKind::UnexpectedEof.into()));
    }
    let mut reader = s;
    reader.read_exact(&mut header[got..]).map_err(gone)?;
    let header = Header::parse(&header);
    if header.size > MAX_PAYLOAD {
        return Err(gone(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "message {} announces {} bytes, more than {MAX_PAYLOAD}",
                header.request, header.size
            ),
        )));
    }
    let mut payload = vec![0u8; header.size as usize];
    reader.read_exact(&mut payload).map_err(gone)?;
    Ok(Message {
        header,
        payload,
        fds,
    })
}

/// Writes one whole message, its descriptors with its first bytes.
fn write_message(s: &UnixStream, m: &Message) -> io::Result<()> {
    let bytes = m.to_bytes();
    let fds: Vec<RawFd> = m.fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let sent = s
        .send_with_fds(&[&bytes[..]], &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let mut writer = s;
    writer.write_all(&bytes[sent..])
}

/// Signals an eventfd.
fn kick(fd: &OwnedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a descriptor we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if n == one.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until either stream has something to read (or was closed).
fn poll_two(a: &UnixStream, b: &UnixStream) -> io::Result<(bool, bool)> {
    let ready = crate::poll::readable(&[a.as_raw_fd(), b.as_raw_fd()], None)?;
    Ok((ready[0], ready[1]))
}

/// Waits up to `timeout` and says whether the peer of `s` hung up. Data it
/// sent meanwhile is left unread.
fn hung_up(s: &UnixStream, timeout: Duration) -> io::Result<bool> {
    if !crate::poll::readable(&[s.as_raw_fd()], Some(timeout))?[0] {
        return Ok(false);
    }
    // Readable: hung up only if nothing is left to read.
    let mut byte = [0u8; 1];
    // SAFETY: peeks at most one byte into a live buffer.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return Ok(true);
    }
    // Data waiting is no reason to come back early: the caller retries at
    // its own pace.
    std::thread::sleep(timeout);
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keeper::message::{request, FLAG_VERSION};

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn a_message_and_its_descriptors_pass_through_whole() {
        let (a, b) = pair();
        let (fd_end, _keep) = pair();
        let fd: OwnedFd = fd_end.into();
        let mut m = Message::new(
            request::SET_VRING_KICK,
            FLAG_VERSION,
            vec![2, 0, 0, 0, 0, 0, 0, 0],
        );
        m.fds.push(Arc::new(fd));
        write_message(&a, &m).unwrap();
        let Ok(got) = read_message(&b) else {
            panic!("the message did not arrive whole")
        };
        assert_eq!(got.header, m.header);
        assert_eq!(got.payload, m.payload);
        assert_eq!(got.fds.len(), 1);
        assert_eq!(got.vring_index(), Some(2));
    }

    #[test]
    fn an_oversized_or_cut_message_ends_the_connection() {
        let (a, b) = pair();
        let huge = Header {
            request: request::SET_MEM_TABLE,
            flags: FLAG_VERSION,
            size: MAX_PAYLOAD + 1,
        };
        (&a).write_all(&huge.to_bytes()).unwrap();
        assert!(
            matches!(read_message(&b), Err(ReadError::Gone(e)) if e.kind() == io::ErrorKind::InvalidData)
        );

        let (a, b) = pair();
        let cut = Header {
            request: request::SET_FEATURES,
            flags: FLAG_VERSION,
            size: 8,
        };
        (&a).write_all(&cut.to_bytes()).unwrap();
        (&a).write_all(&[1, 2, 3]).unwrap();
        drop(a);
        assert!(read_message(&b).is_err());

        let (a, b) = pair();
        drop(a);
        assert!(read_message(&b).is_err());
    }
}
