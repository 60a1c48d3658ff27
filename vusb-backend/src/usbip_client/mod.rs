//! The USB/IP client engine: imports each remote device and carries the
//! controller's transfers to it (`docs/virtio-usb.md` §8).
//!
//! * [`UsbipClient`]: the handle the device model holds ([`Ports`]);
//! * `connection`: per device, a task that connects, imports, carries URBs
//!   and reconnects with backoff;
//! * `import`: OP_REQ_DEVLIST / OP_REQ_IMPORT;
//! * `slot`: the state a device's task shares with the handle;
//! * `delivery`: upcalls to the sink, in order;
//! * `inflight`: what is in flight, by seqnum;
//! * `framing`: cutting replies out of the byte stream;
//! * `translate`: transfers to CMD_SUBMIT, RET_SUBMIT to completions.
//!
//! Device `i` sits on port `layout.port_for(i, speed)`: a USB 2.0 port, or a
//! USB 3 one for a SuperSpeed device, as vhci-hcd places them.

mod connection;
mod delivery;
mod framing;
mod import;
mod inflight;
mod slot;
mod translate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tracing::warn;

use crate::remote::RemoteDevice;
use crate::transfer::{Port, PortLayout, Ports, Status, Transfer, Upcall, UpcallSink};
use delivery::Delivery;
use slot::Slot;

/// Worker threads of the client's runtime: the work is I/O and copying.
const WORKER_THREADS: usize = 2;
/// How long dropping the client waits for its threads.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Imports remote devices over USB/IP and presents them as the devices
/// behind a controller's ports.
pub struct UsbipClient {
    layout: PortLayout,
    slots: Vec<Arc<Slot>>,
    delivery: Arc<Delivery>,
    runtime: Option<Runtime>,
}

impl fmt::Debug for UsbipClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsbipClient")
            .field("layout", &self.layout)
            .field(
                "devices",
                &self
                    .slots
                    .iter()
                    .map(|s| s.remote.to_string())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl UsbipClient {
    /// Starts importing `devices[i]` into device slot `i`; returns at once.
    /// Upcalls go to `sink` from the client's threads, or from the thread
    /// calling a [`Ports`] method when it can answer at once (never with a
    /// lock held, so the sink may call back). Devices beyond what `layout`
    /// has ports for are not imported.
    pub fn start(
        devices: Vec<RemoteDevice>,
        layout: PortLayout,
        sink: Arc<dyn UpcallSink>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("usbip-client")
            .enable_all()
            .build()?;
        let delivery = Arc::new(Delivery::new(sink));
        let capacity = usize::from(layout.usb2_ports.max(layout.usb3_ports));
        let mut slots = Vec::new();
        for (index, remote) in devices.into_iter().enumerate() {
            if index >= capacity {
                warn!(device = %remote, "no port left for this device; not importing it");
                continue;
            }
            let slot = Arc::new(Slot::new(remote, delivery.clone()));
            runtime.spawn(connection::run(slot.clone(), index, layout));
            slots.push(slot);
        }
        Ok(Self {
            layout,
            slots,
            delivery,
            runtime: Some(runtime),
        })
    }

    /// The slot whose device may sit on `port` (each has one port per hub).
    fn slot(&self, port: Port) -> Option<&Slot> {
        let l = self.layout;
        let index = if port >= 1 && port <= l.usb2_ports {
            port - 1
        } else if port > l.usb2_ports && port <= l.total() {
            port - l.usb2_ports - 1
        } else {
            return None;
        };
        self.slots.get(usize::from(index)).map(|s| &**s)
    }
}

impl Ports for UsbipClient {
    fn submit(&self, transfer: Transfer) {
        match self.slot(transfer.port) {
            Some(slot) => slot.submit(transfer),
            None => self.delivery.emit(Upcall::Completed(translate::failed(
                transfer.port,
                transfer.id,
                transfer.iso_packets.len(),
                Status::NoDevice,
            ))),
        }
    }

    fn cancel(&self, port: Port, id: u64) {
        if let Some(slot) = self.slot(port) {
            slot.cancel(port, id);
        }
    }

    fn reset_port(&self, port: Port, token: u64) {
        match self.slot(port) {
            Some(slot) => slot.reset(port, token),
            None => self.delivery.emit(Upcall::ResetDone {
                port,
                token,
                status: Status::NoDevice,
                speed: None,
            }),
        }
    }
}

impl Drop for UsbipClient {
    fn drop(&mut self) {
        self.delivery.stop();
        if let Some(runtime) = self.runtime.take() {
            // Dropping the tasks closes their sockets. Waiting for the
            // threads is not allowed inside another runtime's task.
            if Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(SHUTDOWN_WAIT);
            }
        }
    }
}
