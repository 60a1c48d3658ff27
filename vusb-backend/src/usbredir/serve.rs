//! The usbredir front-end's I/O: a Unix or TCP socket that QEMU's
//! `usb-redir` chardev connects to, one connection at a time, served from
//! one thread.
//!
//! Each connection imports the device afresh and drops the import when it
//! ends: whatever the old connection had in flight dies with it, and a
//! reconnecting QEMU (`reconnect-ms` on its chardev) meets the device as
//! new, as the protocol expects.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use tracing::{info, warn};
use usbredir_proto::{Packet, Sender};

use super::{Action, Session, DEFAULT_CAPS};
use crate::remote::RemoteDevice;
use crate::transfer::{PortLayout, Ports, UpcallSink};
use crate::upcalls;
use crate::usbip_client::UsbipClient;

/// Read size per wake-up; a packet larger than this arrives over several.
const READ_CHUNK: usize = 256 << 10;

/// Where QEMU's chardev connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "{}", path.display()),
            Listen::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Serves QEMU connections at `at`, one after another, each with `device`
/// imported for it and `interrupt_transfers` interrupt IN transfers kept
/// outstanding on each endpoint QEMU receives from.
pub fn serve_forever(device: &RemoteDevice, at: &Listen, interrupt_transfers: u8) -> Result<()> {
    match at {
        Listen::Unix(path) => {
            // A socket left by an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            let listener =
                UnixListener::bind(path).with_context(|| format!("listening on {at}"))?;
            info!(socket = %at, device = %device, "listening for QEMU's usb-redir");
            loop {
                let (stream, _) = listener.accept().context("accepting a connection")?;
                info!("usb-redir connected");
                log_end(serve_connection(device, stream, interrupt_transfers));
            }
        }
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).with_context(|| format!("listening on {at}"))?;
            info!(socket = %at, device = %device, "listening for QEMU's usb-redir");
            loop {
                let (stream, peer) = listener.accept().context("accepting a connection")?;
                info!(%peer, "usb-redir connected");
                // Packets are small and answered one by one; Nagle would
                // hold each back for the previous one's acknowledgement.
                if let Err(e) = stream.set_nodelay(true) {
                    warn!("TCP_NODELAY: {e}");
                }
                log_end(serve_connection(device, stream, interrupt_transfers));
            }
        }
    }
}

fn log_end(result: Result<()>) {
    match result {
        Ok(()) => info!("usb-redir disconnected"),
        Err(e) => warn!("usb-redir connection ended: {e:#}"),
    }
}

fn serve_connection<S: Read + Write + AsRawFd>(
    device: &RemoteDevice,
    stream: S,
    interrupt_transfers: u8,
) -> Result<()> {
    let (sender, receiver) = upcalls::channel().context("creating the upcall channel")?;
    let sink: Arc<dyn UpcallSink> = sender;
    let client = UsbipClient::start(vec![device.clone()], PortLayout::for_devices(1), sink)
        .context("starting the USB/IP client")?;
    let mut session = Session::new(DEFAULT_CAPS).with_interrupt_transfers(interrupt_transfers);
    let hello = session.start();
    let mut conn = Connection {
        stream,
        out: BytesMut::new(),
        client: &client,
    };
    conn.send(&hello, &session)?;
    conn.flush()?;

    let mut inbuf = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let ready = crate::poll::readable(&[conn.stream.as_raw_fd(), receiver.fd()], None)?;
        if ready[0] {
            let n = conn.stream.read(&mut chunk).context("reading from QEMU")?;
            if n == 0 {
                return Ok(());
            }
            inbuf.extend_from_slice(&chunk[..n]);
            loop {
                let packet = match Packet::decode(&mut inbuf, session.caps(), Sender::Guest) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => bail!("QEMU sent a bad packet: {e}"),
                };
                let actions = session.on_packet(packet);
                if !conn.run(actions, &session)? {
                    return Ok(());
                }
            }
        }
        if ready[1] {
            for upcall in receiver.drain() {
                let actions = session.on_upcall(upcall);
                if !conn.run(actions, &session)? {
                    return Ok(());
                }
            }
        }
        conn.flush()?;
    }
}

/// One connection's output side.
struct Connection<'a, S> {
    stream: S,
    out: BytesMut,
    client: &'a UsbipClient,
}

impl<S: Write> Connection<'_, S> {
    /// Carries out `actions`; `false` when the session ended the connection.
    fn run(&mut self, actions: Vec<Action>, session: &Session) -> Result<bool> {
        for action in actions {
            match action {
                Action::Send(p) => self.send(&p, session)?,
                Action::Submit(t) => self.client.submit(t),
                Action::Cancel { port, tag } => self.client.cancel(port, tag),
                Action::ResetPort { port, token } => self.client.reset_port(port, token),
                Action::Close(why) => {
                    warn!("closing the usb-redir connection: {why}");
                    self.flush()?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn send(&mut self, p: &Packet, session: &Session) -> Result<()> {
        p.encode(session.caps(), Sender::Host, &mut self.out)
            .with_context(|| format!("encoding {p:?}"))
    }

    fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream
                .write_all(&self.out)
                .context("writing to QEMU")?;
            self.out.clear();
        }
        Ok(())
    }
}
