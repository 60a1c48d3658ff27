//! The seam between the USB/IP server and the hardware: a device that can be
//! exported, real (libusb) or simulated, behind one trait.

use std::sync::Arc;

use bytes::Bytes;
use usbip_proto::{DeviceInfo, InterfaceInfo, IsoPacket, SetupPacket};

/// One USB request block, as the server hands it to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urb {
    /// The client's seqnum; the completion carries it back.
    pub seqnum: u32,
    /// Endpoint address with the direction bit (0x81 = EP 1 IN; 0x00/0x80
    /// for the default control pipe).
    pub endpoint: u8,
    /// Setup packet of a control transfer.
    pub setup: Option<SetupPacket>,
    /// OUT data.
    pub data: Bytes,
    /// Size of the transfer buffer: the most an IN transfer returns.
    pub buffer_len: u32,
    /// Linux `URB_*` flags as the client sent them.
    pub transfer_flags: u32,
    pub interval: i32,
    /// Isochronous packets (empty otherwise).
    pub iso_packets: Vec<IsoPacket>,
}

impl Urb {
    /// True for a device-to-host transfer.
    pub fn is_in(&self) -> bool {
        self.endpoint & 0x80 != 0
    }
}

/// How an URB ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UrbResult {
    pub seqnum: u32,
    /// 0 or a negated Linux errno (`usbip_proto::errno`); `-ECONNRESET`
    /// means the URB was cancelled before the device answered.
    pub status: i32,
    /// IN data (for isochronous IN, the packets' data back to back).
    pub data: Bytes,
    pub actual_length: u32,
    /// Per-packet results of an isochronous URB.
    pub iso_packets: Vec<IsoPacket>,
}

/// What a device tells the connection that imported it.
#[derive(Debug)]
pub enum DeviceEvent {
    Completed(UrbResult),
    /// The device is gone (unplugged); the connection must close.
    Gone,
}

/// Where a device's events go: the connection that imported it. Called on
/// whatever thread the device completes URBs on, so it must not block.
pub type EventSink = Arc<dyn Fn(DeviceEvent) + Send + Sync>;

/// The identity a device shows in OP_REP_DEVLIST and OP_REP_IMPORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub info: DeviceInfo,
    pub interfaces: Vec<InterfaceInfo>,
}

impl DeviceIdentity {
    /// `busnum << 16 | devnum`, as clients address URBs to the device.
    pub fn devid(&self) -> u32 {
        (self.info.busnum << 16) | (self.info.devnum & 0xffff)
    }
}

/// An exportable USB device.
///
/// One importer at a time: the registry guarantees `attach` is not called
/// again before `detach`. Completions may arrive in any order across
/// endpoints, but in submission order on each endpoint.
pub trait UsbDevice: Send + Sync + std::fmt::Debug {
    /// The device as the USB/IP device list shows it.
    fn identity(&self) -> DeviceIdentity;

    /// An importer connects; events go to `events` until `detach`.
    fn attach(&self, events: EventSink);

    /// Starts an URB; its completion arrives as a [`DeviceEvent::Completed`].
    fn submit(&self, urb: Urb);

    /// Cancels an URB the device has not answered yet; it then completes
    /// with `-ECONNRESET`. Harmless if it already completed.
    fn cancel(&self, seqnum: u32);

    /// The importer went away: outstanding URBs are dropped and the device
    /// is made ready for the next importer.
    fn detach(&self);
}
