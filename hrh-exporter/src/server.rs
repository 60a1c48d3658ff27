//! The TCP side: accepts connections, answers OP_REQ_DEVLIST and
//! OP_REQ_IMPORT, and runs the URB phase of an imported device.
//!
//! Each connection is its own task, and its URB phase a thread of its own
//! (`connection.rs`); a client that misbehaves loses its connection with one
//! log line and everyone else carries on.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use usbip_proto::{op_status, OpReply, OpRequest, ProtoError};

use crate::connection::run_urbs;
use crate::registry::{ImportError, Registry};
use crate::session::SessionError;

/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffer size; grows for larger URBs.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

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

/// Makes room in `buf` for the next read, in large steps.
pub(crate) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_CHUNK);
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
        make_room(buf);
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnectionError::Truncated(buf.len()))
            };
        }
    }
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
