//! The task that keeps one device imported: connect and import, carry URBs
//! until the connection breaks, report the port empty, and try again with
//! backoff.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tracing::{debug, info, warn};
use usbip_proto::ProtoError;

use super::import::{self, Imported};
use super::slot::Slot;
use crate::transfer::{Port, PortLayout, Speed};

/// First wait before trying again; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: the next failure starts
/// the backoff afresh. Shorter ones keep doubling it, so a server that
/// accepts and then drops the import does not cause a storm of reconnects
/// (and of connect/disconnect events in the guest).
const STABLE: Duration = Duration::from_secs(10);
/// Receive buffer growth step.
const READ_CHUNK: usize = 256 * 1024;
/// Commands are gathered into writes of up to this size.
const WRITE_BUFFER: usize = 64 * 1024;

/// Exponential backoff between attempts.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self { next: MIN_BACKOFF }
    }

    /// How long to wait now; the wait after it is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        d
    }

    pub fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }
}

/// Why a connection in the URB phase ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("the server closed the connection")]
    Closed,
    #[error("the server closed the connection in the middle of a reply ({0} bytes pending)")]
    Truncated(usize),
    #[error("receive failed: {0}")]
    Read(io::Error),
    #[error("send failed: {0}")]
    Write(io::Error),
    #[error("unreadable reply: {0}")]
    Protocol(#[from] ProtoError),
}

/// The port device slot `index` takes at `speed`, if the controller has it.
pub(super) fn port_for(layout: PortLayout, index: usize, speed: Speed) -> Option<Port> {
    let ports = if speed.is_superspeed() {
        layout.usb3_ports
    } else {
        layout.usb2_ports
    };
    (index < usize::from(ports)).then(|| layout.port_for(index, speed))
}

/// Keeps device slot `index` imported, forever (the runtime's shutdown ends
/// it).
pub(super) async fn run(slot: Arc<Slot>, index: usize, layout: PortLayout) {
    let mut backoff = Backoff::new();
    // Failures are logged when they change, not on every retry.
    let mut last_failure: Option<String> = None;
    loop {
        let failure = match import::import(&slot.remote).await {
            Ok(imported) => match port_for(layout, index, imported.speed) {
                Some(port) => {
                    last_failure = None;
                    let started = Instant::now();
                    serve(&slot, imported, port).await;
                    if started.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    None
                }
                None => Some(format!(
                    "a {:?}-speed device has no port on this controller ({} USB 2.0, {} USB 3 ports)",
                    imported.speed, layout.usb2_ports, layout.usb3_ports
                )),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(failure) = failure {
            if last_failure.as_ref() != Some(&failure) {
                warn!(device = %slot.remote, "cannot import, will keep trying: {failure}");
            } else {
                debug!(device = %slot.remote, "cannot import: {failure}");
            }
            last_failure = Some(failure);
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Carries URBs for an imported device until the connection ends, then
/// fails what was in flight and reports the port empty.
async fn serve(slot: &Slot, imported: Imported, port: Port) {
    let Imported {
        stream,
        leftover,
        busid,
        devid,
        speed,
        unknown_speed,
    } = imported;
    if let Some(raw) = unknown_speed {
        warn!(device = %slot.remote, "the server reports unknown speed {raw}; presenting the device as full speed");
    }
    info!(device = %slot.remote, %busid, port, ?speed, "imported");
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    slot.attach(port, speed, devid, tx);
    let mut writer = tokio::spawn(write_loop(wr, rx));
    let reason = tokio::select! {
        r = read_loop(slot, rd, leftover) => r,
        w = &mut writer => match w {
            Ok(Err(e)) => LinkError::Write(e),
            // The writer stops on its own only when its channel closes,
            // which cannot happen while the slot holds the link.
            Ok(Ok(())) => LinkError::Closed,
            Err(e) => LinkError::Write(io::Error::other(e)),
        },
    };
    writer.abort();
    let failed = slot.detach();
    warn!(device = %slot.remote, port, "connection lost ({failed} requests failed): {reason}");
}

async fn read_loop(slot: &Slot, mut rd: OwnedReadHalf, mut buf: BytesMut) -> LinkError {
    loop {
        if let Err(e) = slot.on_replies(&mut buf) {
            return LinkError::Protocol(e);
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return LinkError::Closed,
            Ok(0) => return LinkError::Truncated(buf.len()),
            Ok(_) => {}
            Err(e) => return LinkError::Read(e),
        }
    }
}

/// Writes queued commands, gathering whatever is queued into as few
/// writes as possible.
async fn write_loop(wr: OwnedWriteHalf, mut rx: UnboundedReceiver<Bytes>) -> io::Result<()> {
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    while let Some(msg) = rx.recv().await {
        wr.write_all(&msg).await?;
        while let Ok(msg) = rx.try_recv() {
            wr.write_all(&msg).await?;
        }
        wr.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        b.reset();
        assert_eq!(b.next_delay(), MIN_BACKOFF);
    }

    #[test]
    fn devices_go_to_the_hub_of_their_speed() {
        let layout = PortLayout::for_devices(2);
        assert_eq!(port_for(layout, 0, Speed::High), Some(1));
        assert_eq!(port_for(layout, 1, Speed::Full), Some(2));
        assert_eq!(port_for(layout, 1, Speed::Super), Some(4));
        assert_eq!(port_for(layout, 2, Speed::High), None);
        let usb2_only = PortLayout {
            usb2_ports: 2,
            usb3_ports: 0,
        };
        assert_eq!(port_for(usb2_only, 0, Speed::SuperPlus), None);
    }
}
