//! The TCP side: accepts connections, answers OP_REQ_DEVLIST and
//! OP_REQ_IMPORT, and runs the URB phase of an imported device.
//!
//! Each connection is its own task; a client that misbehaves loses its
//! connection with one log line and everyone else carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn};
use usbip_proto::{op_status, CmdMessage, OpReply, OpRequest, ProtoError, RetMessage};

use crate::device::{DeviceEvent, UsbDevice};
use crate::registry::{ImportError, Registry};
use crate::session::{Action, Session, SessionError};

/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffer size; grows for larger URBs.
const READ_CHUNK: usize = 256 * 1024;
/// Replies waiting for a client that does not read them: above this much,
/// no more commands are read from it (whose URBs would add replies).
const OUT_HIGH_WATER: usize = 4 * 1024 * 1024;

/// A client can vanish without a FIN or RST (the ISP side rebooted, a route
/// gone), and the device it imported would stay claimed, refusing its
/// return. Keepalive probes after this much silence, every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] times: an idle vanished
/// client releases its device within about 25 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Replies sent and not acknowledged for this long end the connection (the
/// busy counterpart of keepalive, which only probes idle connections).
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtoError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("no request within {0:?}")]
    Timeout(Duration),
    #[error("connection closed in the middle of a message ({0} bytes pending)")]
    Truncated(usize),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the device was unplugged")]
    DeviceGone,
}

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Registry) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, peer, registry).await {
                warn!(%peer, "closing connection: {e}");
            }
        });
    }
}

/// Socket options of a client connection.
fn tune(stream: &TcpStream) -> std::io::Result<()> {
    // URB replies are small and latency-bound; never wait for Nagle.
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
) -> Result<(), ConnectionError> {
    tune(&stream)?;
    let mut buf = BytesMut::with_capacity(4096);
    let request = tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_message(&mut stream, &mut buf, OpRequest::decode),
    )
    .await
    .map_err(|_| ConnectionError::Timeout(REQUEST_TIMEOUT))??;
    let Some(request) = request else {
        return Ok(());
    };
    let mut out = BytesMut::new();
    match request {
        OpRequest::DevList => {
            let devices = registry
                .exportable()
                .into_iter()
                .map(|d| (d.info, d.interfaces))
                .collect();
            OpReply::DevList {
                status: op_status::OK,
                devices,
            }
            .encode(&mut out)?;
            stream.write_all(&out).await?;
            Ok(())
        }
        OpRequest::Import { busid } => match registry.claim(&busid, peer) {
            Err(e) => {
                warn!(%peer, "import of {busid} refused: {e}");
                let status = match e {
                    ImportError::NoSuchDevice(_) => op_status::NODEV,
                    ImportError::Busy { .. } => op_status::DEV_BUSY,
                };
                OpReply::Import {
                    status,
                    device: None,
                }
                .encode(&mut out)?;
                stream.write_all(&out).await?;
                Ok(())
            }
            Ok(claim) => {
                let identity = claim.device().identity();
                OpReply::Import {
                    status: op_status::OK,
                    device: Some(identity.info.clone()),
                }
                .encode(&mut out)?;
                stream.write_all(&out).await?;
                info!(%peer, "imported {busid} ({:04x}:{:04x})", identity.info.id_vendor, identity.info.id_product);
                let result = run_urbs(stream, buf, claim.device().clone(), identity.devid()).await;
                // Detaching waits for the cancelled transfers, whose
                // completions may need this very runtime worker.
                let device = claim.device().clone();
                if let Err(e) = tokio::task::spawn_blocking(move || device.detach()).await {
                    warn!(%peer, "releasing {busid} failed: {e}");
                }
                info!(%peer, "released {busid}");
                result
            }
        },
    }
}

/// Reads until `decode` yields a message. `Ok(None)` when the peer closed
/// cleanly between messages.
async fn read_message<T, R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, ProtoError>,
) -> Result<Option<T>, ConnectionError> {
    loop {
        if let Some(msg) = decode(buf)? {
            return Ok(Some(msg));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnectionError::Truncated(buf.len()))
            };
        }
    }
}

/// The URB phase: commands from the socket and completions from the device
/// meet in one loop, so unlink and completion can never race.
///
/// One task does it all, reading, handling and writing, without waiting on
/// any one of them: a large OUT transfer arriving slowly never holds back the
/// completions of other URBs, and a client slow to read its replies never
/// stops its commands from being read, up to [`OUT_HIGH_WATER`] of replies.
/// On a gateway's small CPU every hand-off between tasks costs time on each
/// round trip, so there are none.
async fn run_urbs(
    stream: TcpStream,
    mut buf: BytesMut,
    device: Arc<dyn UsbDevice>,
    devid: u32,
) -> Result<(), ConnectionError> {
    let (mut rd, mut wr) = stream.into_split();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    device.attach(events_tx);

    let mut session = Session::new(devid);
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(msg) = CmdMessage::decode(&mut buf)? {
            for action in session.on_command(msg)? {
                match action {
                    Action::Submit(urb) => device.submit(urb),
                    Action::Cancel(seqnum) => device.cancel(seqnum),
                    Action::Reply(reply) => reply.encode(&mut out)?,
                }
            }
        }
        // Most replies fit the socket's buffer at once: no trip through the
        // runtime for them.
        if !out.is_empty() {
            match wr.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            n = rd.read_buf(&mut buf), if out.len() < OUT_HIGH_WATER => {
                if n? == 0 {
                    return if buf.is_empty() {
                        Ok(())
                    } else {
                        Err(ConnectionError::Truncated(buf.len()))
                    };
                }
            }
            event = events.recv() => {
                // The device dropped its end: it is gone as surely as if it had
                // said so (and an empty channel would be ready forever).
                let Some(event) = event else {
                    return Err(ConnectionError::DeviceGone);
                };
                let mut next = Some(event);
                // Batch whatever else has completed into the same write.
                while let Some(event) = next {
                    match event {
                        DeviceEvent::Completed(r) => encode_all(session.on_completion(r), &mut out)?,
                        DeviceEvent::Gone => return Err(ConnectionError::DeviceGone),
                    }
                    next = if out.len() < READ_CHUNK { events.try_recv().ok() } else { None };
                }
            }
            n = wr.write(&out), if !out.is_empty() => out.advance(n?),
        }
    }
}

fn encode_all(replies: Vec<RetMessage>, out: &mut BytesMut) -> Result<(), ProtoError> {
    for reply in replies {
        reply.encode(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_connections_notice_a_vanished_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        tune(&stream).unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(stream.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }
}
