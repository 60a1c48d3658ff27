//! The URB phase of one imported device, on a thread of its own: commands
//! read from the client with blocking reads, completions answered on the
//! thread the device completes them on.
//!
//! Like usbip-host's `stub_rx` and `stub_tx`, and unlike a task of the async
//! runtime, the reading thread sleeps in the socket's receive and nowhere
//! else: a command costs the receive that returns it, with no readiness
//! round through the runtime first. A completion is encoded and written to
//! the socket right where the device reports it (for a real device, its
//! thread blocked in usbfs).
//!
//! The session (and so the unlink semantics) and the writing sit under one
//! lock that both sides take, so a command and a completion are never
//! handled at once and replies go out whole and in order. Writes block: a
//! client that does not read its replies stalls the writer, which holds the
//! lock, and so the reader too, which then stops reading its commands. The
//! device is called only outside that lock: the device delivers events
//! while holding its own.

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, BytesMut};
use usbip_proto::CmdMessage;

use crate::device::{DeviceEvent, UsbDevice};
use crate::server::{make_room, ConnectionError};
use crate::session::{Action, Session};

/// Runs the URB phase on `stream` until the client leaves, breaks the
/// protocol, or the device goes away. `buf` holds what was read past the
/// import request.
pub async fn run_urbs(
    stream: tokio::net::TcpStream,
    buf: BytesMut,
    device: Arc<dyn UsbDevice>,
    devid: u32,
) -> Result<(), ConnectionError> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    // Dropping this task (its runtime shut down, say) ends the connection,
    // as it would end a connection served on the task itself.
    let _shut = ShutOnDrop(stream.try_clone()?);
    let (done, result) = tokio::sync::oneshot::channel();
    // Unnamed, the thread keeps the program's name, as the runtime's does.
    std::thread::Builder::new().spawn(move || {
        let _ = done.send(run(stream, buf, device, devid));
    })?;
    result
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the connection's thread panicked").into()))
}

/// Shuts a socket down when dropped: its reader's blocking receive returns.
struct ShutOnDrop(TcpStream);

impl Drop for ShutOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

fn run(
    stream: TcpStream,
    mut buf: BytesMut,
    device: Arc<dyn UsbDevice>,
    devid: u32,
) -> Result<(), ConnectionError> {
    let link = Arc::new(Link {
        stream,
        state: Mutex::new(Outbox {
            session: Session::new(devid),
            out: BytesMut::new(),
            gone: false,
            closed: false,
            failed: None,
        }),
    });
    let events = Arc::clone(&link);
    device.attach(Arc::new(move |event| events.on_event(event)));
    let result = serve(&link, &mut buf, &*device);
    // A device thread blocked writing to a client that reads nothing lets go
    // of the lock once the socket is shut.
    let _ = link.stream.shutdown(Shutdown::Both);
    link.lock().closed = true;
    result
}

fn serve(link: &Link, buf: &mut BytesMut, device: &dyn UsbDevice) -> Result<(), ConnectionError> {
    let mut actions = Vec::new();
    // The socket's SO_RCVLOWAT: it wakes the reader once this much is in.
    let mut low_water = 1;
    loop {
        {
            let mut st = link.lock();
            while let Some(msg) = CmdMessage::decode(buf)? {
                for action in st.session.on_command(msg)? {
                    match action {
                        Action::Reply(reply) => reply.encode(&mut st.out)?,
                        other => actions.push(other),
                    }
                }
            }
            link.send(&mut st);
            // Checked before anything goes to the device.
            if let Some(e) = st.end() {
                return Err(e);
            }
        }
        for action in actions.drain(..) {
            match action {
                Action::Submit(urb) => device.submit(urb),
                Action::Cancel(seqnum) => device.cancel(seqnum),
                Action::Reply(_) => unreachable!("replies are encoded above"),
            }
        }
        make_room(buf);
        link.expect(CmdMessage::missing(buf), &mut low_water)?;
        if link.receive(buf, low_water)? == 0 {
            // The client closed, or a device thread shut the reading side
            // to wake this one up.
            if let Some(e) = link.lock().end() {
                return Err(e);
            }
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(ConnectionError::Truncated(buf.len()))
            };
        }
    }
}

/// What the connection's thread and the device's threads share.
struct Link {
    stream: TcpStream,
    state: Mutex<Outbox>,
}

struct Outbox {
    session: Session,
    /// Encoded replies being written.
    out: BytesMut,
    gone: bool,
    /// The connection has ended: events from now on are dropped.
    closed: bool,
    /// Why a write failed; the connection's thread ends the connection.
    failed: Option<ConnectionError>,
}

impl Outbox {
    /// Why the connection must end: what a device thread reported, or a
    /// write that failed.
    fn end(&mut self) -> Option<ConnectionError> {
        if self.gone {
            return Some(ConnectionError::DeviceGone);
        }
        self.failed.take()
    }
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // Nothing under this lock leaves the state half-updated on a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A device event, on the device's thread.
    fn on_event(&self, event: DeviceEvent) {
        let mut st = self.lock();
        if st.closed {
            // Late news for a connection that has ended: nobody to tell.
            return;
        }
        match event {
            DeviceEvent::Completed(result) => {
                for reply in st.session.on_completion(result) {
                    if let Err(e) = reply.encode(&mut st.out) {
                        st.failed = Some(e.into());
                        break;
                    }
                }
                self.send(&mut st);
                if st.failed.is_some() {
                    self.wake_reader();
                }
            }
            DeviceEvent::Gone => {
                st.gone = true;
                self.wake_reader();
            }
        }
    }

    /// Writes the encoded replies, waiting for the socket to take them.
    fn send(&self, st: &mut Outbox) {
        if !st.out.is_empty() && st.failed.is_none() {
            if let Err(e) = (&self.stream).write_all(&st.out) {
                st.failed = Some(e.into());
            }
        }
        st.out.clear();
    }

    /// Ends the reader's wait in the socket's receive: it then finds out why.
    fn wake_reader(&self) {
        let _ = self.stream.shutdown(Shutdown::Read);
    }

    /// Has the socket wake the reader only once `missing` bytes are in, when
    /// that many are worth it. Otherwise a LAN delivers a 120 KiB write in
    /// some 80 segments, waking the reader for each; a user-space thread's
    /// wake-up costs what usbip-host's kernel thread does not pay, an
    /// address-space switch, and below WHOLE_FROM the wake-ups saved do not
    /// pay for the two system calls.
    fn expect(&self, missing: usize, low_water: &mut usize) -> io::Result<()> {
        let want = if missing >= WHOLE_FROM { missing } else { 1 };
        if want != *low_water {
            set_receive_low_water(&self.stream, want)?;
            *low_water = want;
        }
        Ok(())
    }

    /// Receives what the client sent into `buf`'s spare room, waiting for
    /// it; 0 at the end of the stream. Above one byte, the low-water mark is
    /// waited for in poll, which counts every byte queued: a blocking receive
    /// counts only the bytes that arrive after it has copied those already
    /// queued, so it would wait for more than the client ever sends.
    fn receive(&self, buf: &mut BytesMut, low_water: usize) -> io::Result<usize> {
        let waits_in_poll = low_water > 1;
        let flags = if waits_in_poll { libc::MSG_DONTWAIT } else { 0 };
        let room: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
        let n = loop {
            if waits_in_poll {
                wait_readable(&self.stream)?;
            }
            match socket2::SockRef::from(&self.stream).recv_with_flags(room, flags) {
                // poll also wakes early when the receive window runs out:
                // what is there is taken, and the mark set anew.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        // SAFETY: the socket initialised the first `n` bytes of the spare
        // room.
        unsafe { buf.advance_mut(n) };
        Ok(n)
    }
}

/// Messages still missing at least this many bytes are received whole.
const WHOLE_FROM: usize = 16 * 1024;

/// Sets SO_RCVLOWAT: the socket is readable, and wakes its reader, only
/// once `bytes` are queued (or the stream ends, or the receive window runs
/// out). Linux caps it at half the largest receive buffer and grows the
/// buffer to fit.
fn set_receive_low_water(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the stream's open socket, and the option value
    // points at a c_int of the length given, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until the socket is readable, its low-water mark reached.
fn wait_readable(stream: &TcpStream) -> io::Result<()> {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd, valid for the call; no timeout.
        if unsafe { libc::poll(&mut fd, 1, -1) } >= 0 {
            // Readable, ended or failed: the receive that follows says which.
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
