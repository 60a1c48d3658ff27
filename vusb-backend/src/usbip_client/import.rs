//! Connecting to a USB/IP server and importing one device: OP_REQ_DEVLIST
//! (to resolve a VID:PID) and OP_REQ_IMPORT, each on its own connection as
//! usbip(8) does.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use usbip_proto::{op_code, op_status, DeviceInfo, OpReply, OpRequest, ProtoError};

use crate::remote::{DeviceSelector, RemoteDevice};
use crate::transfer::Speed;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to answer an op request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A home link can vanish without a FIN or RST (a gateway unplugged, a
/// route gone). Keepalive probes after this much silence, every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] times, then give up: an idle
/// dead connection is noticed within about 25 s, and its pending requests
/// fail instead of waiting forever.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Data sent and not acknowledged for this long ends the connection (the
/// busy counterpart of keepalive, which only probes idle connections).
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a device could not be imported this time.
#[derive(Debug, thiserror::Error)]
pub(super) enum ImportError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no answer within {0:?}")]
    ReplyTimeout(Duration),
    #[error("the server closed the connection without answering")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("bad answer: {0}")]
    Protocol(#[from] ProtoError),
    #[error("the server exports no device {0:04x}:{1:04x} (or it is in use)")]
    NotListed(u16, u16),
    #[error("the server refused to export {busid}: {}", status_name(*.status))]
    Refused { busid: String, status: u32 },
}

fn status_name(status: u32) -> String {
    match status {
        op_status::NA => "not available".into(),
        op_status::DEV_BUSY => "device busy (imported by another client)".into(),
        op_status::DEV_ERR => "device error".into(),
        op_status::NODEV => "no such device".into(),
        op_status::ERROR => "error".into(),
        other => format!("status {other}"),
    }
}

/// An imported device, its connection ready for URBs.
#[derive(Debug)]
pub(super) struct Imported {
    pub stream: TcpStream,
    /// Bytes that arrived after the import reply (the URB phase's start).
    pub leftover: BytesMut,
    pub busid: String,
    pub devid: u32,
    pub speed: Speed,
    /// The speed the server reported, when it is not one of [`Speed`].
    pub unknown_speed: Option<u32>,
}

async fn connect(remote: &RemoteDevice) -> Result<TcpStream, ImportError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote.address()))
        .await
        .map_err(|_| ImportError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(ImportError::Connect)?;
    tune(&stream)?;
    Ok(stream)
}

/// Socket options of a connection to a USB/IP server.
fn tune(stream: &TcpStream) -> io::Result<()> {
    // URBs are small and latency-bound; never wait for Nagle.
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

/// Sends `request` and reads its reply; returns what followed it too.
async fn exchange(
    stream: &mut TcpStream,
    request: OpRequest,
) -> Result<(OpReply, BytesMut), ImportError> {
    let code = match request {
        OpRequest::DevList => op_code::REQ_DEVLIST,
        OpRequest::Import { .. } => op_code::REQ_IMPORT,
    };
    let mut out = BytesMut::new();
    request.encode(&mut out)?;
    let read = async {
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(reply) = OpReply::decode(&mut buf, code)? {
                return Ok((reply, buf));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ImportError::Closed);
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, read)
        .await
        .map_err(|_| ImportError::ReplyTimeout(REPLY_TIMEOUT))?
}

/// The bus id of the first exported device with this VID:PID.
async fn resolve(remote: &RemoteDevice, vid: u16, pid: u16) -> Result<String, ImportError> {
    let mut stream = connect(remote).await?;
    let (reply, _) = exchange(&mut stream, OpRequest::DevList).await?;
    let OpReply::DevList { devices, .. } = reply else {
        return Err(ImportError::Closed);
    };
    devices
        .into_iter()
        .find(|(d, _)| d.id_vendor == vid && d.id_product == pid)
        .map(|(d, _)| d.busid)
        .ok_or(ImportError::NotListed(vid, pid))
}

/// Connects and imports `remote`.
pub(super) async fn import(remote: &RemoteDevice) -> Result<Imported, ImportError> {
    let busid = match &remote.selector {
        DeviceSelector::BusId(b) => b.clone(),
        DeviceSelector::VidPid(vid, pid) => resolve(remote, *vid, *pid).await?,
    };
    let mut stream = connect(remote).await?;
    let (reply, leftover) = exchange(
        &mut stream,
        OpRequest::Import {
            busid: busid.clone(),
        },
    )
    .await?;
    let device = match reply {
        OpReply::Import {
            status: op_status::OK,
            device: Some(device),
        } => device,
        OpReply::Import { status, .. } => return Err(ImportError::Refused { busid, status }),
        OpReply::DevList { .. } => return Err(ImportError::Closed),
    };
    Ok(imported(stream, leftover, busid, &device))
}

fn imported(stream: TcpStream, leftover: BytesMut, busid: String, d: &DeviceInfo) -> Imported {
    // vhci-hcd shows a device of unknown speed as full speed on its USB 2.0
    // hub; do the same.
    let (speed, unknown_speed) = match Speed::from_linux(d.speed) {
        Some(s) => (s, None),
        None => (Speed::Full, Some(d.speed)),
    };
    Imported {
        stream,
        leftover,
        busid,
        devid: (d.busnum << 16) | (d.devnum & 0xffff),
        speed,
        unknown_speed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_to_servers_detect_a_silent_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
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
