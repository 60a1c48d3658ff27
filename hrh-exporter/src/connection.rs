//! The URB phase of one imported device: commands read from the client by
//! the connection's task, completions answered on the thread the device
//! completes them on.
//!
//! A completion is encoded and written to the socket right where the device
//! reports it (for a real device, its thread blocked in usbfs), as Linux's
//! usbip-host sends from the thread that completes the URB: no hand-off to
//! the async runtime on the way back. Only what the socket does not take at
//! once is left for the task to write when there is room.
//!
//! The session (and so the unlink semantics) sits under one lock that both
//! sides take, so a command and a completion are never handled at once. The
//! device is called only outside that lock: the device delivers events
//! while holding its own.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use usbip_proto::CmdMessage;

use crate::device::{DeviceEvent, UsbDevice};
use crate::server::{make_room, ConnectionError, READ_CHUNK};
use crate::session::{Action, Session};

/// Replies waiting for a client that does not read them: above this much,
/// no more commands are read from it (whose URBs would add replies).
pub const OUT_HIGH_WATER: usize = 4 * 1024 * 1024;

/// Runs the URB phase on `stream` until the client leaves, breaks the
/// protocol, or the device goes away. `buf` holds what was read past the
/// import request.
pub async fn run_urbs(
    stream: TcpStream,
    mut buf: BytesMut,
    device: Arc<dyn UsbDevice>,
    devid: u32,
) -> Result<(), ConnectionError> {
    let (mut rd, wr) = stream.into_split();
    let link = Arc::new(Link {
        wr,
        state: Mutex::new(Outbox {
            session: Session::new(devid),
            out: BytesMut::with_capacity(READ_CHUNK),
            gone: false,
            closed: false,
            failed: None,
        }),
        wake: Notify::new(),
    });
    let events = Arc::clone(&link);
    device.attach(Arc::new(move |event| events.on_event(event)));
    let result = serve(&link, &mut rd, &mut buf, &*device).await;
    link.lock().closed = true;
    result
}

async fn serve(
    link: &Link,
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    device: &dyn UsbDevice,
) -> Result<(), ConnectionError> {
    let mut actions = Vec::new();
    loop {
        let (backlog, unwritten) = {
            let mut st = link.lock();
            while let Some(msg) = CmdMessage::decode(buf)? {
                for action in st.session.on_command(msg)? {
                    match action {
                        Action::Reply(reply) => reply.encode(&mut st.out)?,
                        other => actions.push(other),
                    }
                }
            }
            link.flush(&mut st);
            // Checked before anything goes to the device: what a device
            // thread reported, or a write of ours that failed just now.
            if st.gone {
                return Err(ConnectionError::DeviceGone);
            }
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            (st.out.len(), !st.out.is_empty())
        };
        for action in actions.drain(..) {
            match action {
                Action::Submit(urb) => device.submit(urb),
                Action::Cancel(seqnum) => device.cancel(seqnum),
                Action::Reply(_) => unreachable!("replies are encoded above"),
            }
        }
        make_room(buf);
        tokio::select! {
            n = rd.read_buf(buf), if backlog < OUT_HIGH_WATER => {
                if n? == 0 {
                    return if buf.is_empty() {
                        Ok(())
                    } else {
                        Err(ConnectionError::Truncated(buf.len()))
                    };
                }
            }
            // A completion left replies over, or the device is gone.
            () = link.wake.notified() => {}
            ready = link.wr.writable(), if unwritten => ready?,
        }
    }
}

/// What the connection's task and the device's threads share.
struct Link {
    wr: OwnedWriteHalf,
    state: Mutex<Outbox>,
    /// Wakes the task: replies left for it to write, the device gone, or a
    /// write failed.
    wake: Notify,
}

struct Outbox {
    session: Session,
    /// Encoded replies the socket has not taken yet, in order.
    out: BytesMut,
    gone: bool,
    /// The task has ended: events from now on are dropped.
    closed: bool,
    /// Why a device thread could not answer; the task ends the connection.
    failed: Option<ConnectionError>,
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
                self.flush(&mut st);
                // The task writes what is left (it may be waiting only for
                // commands), or ends the connection.
                if !st.out.is_empty() || st.failed.is_some() {
                    self.wake.notify_one();
                }
            }
            DeviceEvent::Gone => {
                st.gone = true;
                self.wake.notify_one();
            }
        }
    }

    /// Writes what the socket takes now; the rest waits in `out`.
    fn flush(&self, st: &mut Outbox) {
        while !st.out.is_empty() && st.failed.is_none() {
            match self.wr.try_write(&st.out) {
                Ok(0) => st.failed = Some(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => st.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => st.failed = Some(e.into()),
            }
        }
    }
}
