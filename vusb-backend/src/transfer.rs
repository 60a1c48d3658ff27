//! What the virtio-usb controller asks of the devices behind its ports, and
//! what comes back.
//!
//! The device model (`virtio_usb`) speaks only these types. The USB/IP client
//! engine (`usbip_client`) carries them over the network; tests carry them in
//! memory. Ports are numbered from 1 as in `docs/virtio-usb.md` §2.

use bytes::Bytes;

/// A 1-based root-hub port number.
pub type Port = u8;

/// The most ports one root hub may have (a 4-bit field in the spec).
pub const MAX_PORTS_PER_HUB: u8 = 15;

/// How the controller's ports split between its two root hubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortLayout {
    pub usb2_ports: u8,
    pub usb3_ports: u8,
}

impl PortLayout {
    /// One USB 2.0 and one USB 3 port per device, so each device can sit on
    /// the hub that matches the speed it turns out to have (as vhci-hcd
    /// does); device `i` (0-based) gets port `i + 1` or `usb2_ports + i + 1`.
    pub fn for_devices(devices: usize) -> Self {
        let n = devices.min(MAX_PORTS_PER_HUB as usize) as u8;
        Self {
            usb2_ports: n,
            usb3_ports: n,
        }
    }

    pub fn total(&self) -> u8 {
        self.usb2_ports + self.usb3_ports
    }

    pub fn exists(&self, port: Port) -> bool {
        port >= 1 && port <= self.total()
    }

    /// The port device `index` takes at `speed`.
    pub fn port_for(&self, index: usize, speed: Speed) -> Port {
        let i = index as u8 + 1;
        if speed.is_superspeed() {
            self.usb2_ports + i
        } else {
            i
        }
    }
}

/// Transfer types, numbered as in the spec and in `bmAttributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Control = 0,
    Isochronous = 1,
    Bulk = 2,
    Interrupt = 3,
}

impl TransferKind {
    pub fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Control,
            1 => Self::Isochronous,
            2 => Self::Bulk,
            3 => Self::Interrupt,
            _ => return None,
        })
    }
}

/// Request outcomes (`VIRTIO_USB_S_*`, spec §4.1 and §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    Stall = 1,
    Cancelled = 2,
    NoDevice = 3,
    Protocol = 4,
    Overflow = 5,
    Short = 6,
    Timeout = 7,
    Invalid = 8,
    Shutdown = 9,
    IsoPartial = 10,
    NotFound = 11,
}

/// Device speeds as Linux's `enum usb_device_speed` numbers them (the same
/// numbers USB/IP carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    Low = 1,
    Full = 2,
    High = 3,
    Wireless = 4,
    Super = 5,
    SuperPlus = 6,
}

impl Speed {
    pub fn from_linux(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Low,
            2 => Self::Full,
            3 => Self::High,
            4 => Self::Wireless,
            5 => Self::Super,
            6 => Self::SuperPlus,
            _ => return None,
        })
    }

    pub fn is_superspeed(self) -> bool {
        matches!(self, Self::Super | Self::SuperPlus)
    }
}

/// One isochronous packet of a request: where it lies in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoPacket {
    pub offset: u32,
    pub length: u32,
}

/// One isochronous packet's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoResult {
    pub actual_length: u32,
    pub status: Status,
}

/// `VIRTIO_USB_XFER_F_*`.
pub mod xfer_flags {
    pub const SHORT_NOT_OK: u32 = 1;
    pub const ZERO_PACKET: u32 = 2;
    pub const ISO_ASAP: u32 = 4;
    pub const ALL: u32 = SHORT_NOT_OK | ZERO_PACKET | ISO_ASAP;
}

/// A validated transfer request from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The driver's cookie, unique among its requests in flight.
    pub id: u64,
    pub port: Port,
    /// `bEndpointAddress`: number, plus 0x80 for IN.
    pub endpoint: u8,
    pub kind: TransferKind,
    /// `xfer_flags::*`.
    pub flags: u32,
    /// Size of the transfer buffer.
    pub length: u32,
    pub interval: u32,
    pub start_frame: u32,
    /// Control transfers: the setup packet as on the bus; zero otherwise.
    pub setup: [u8; 8],
    /// Isochronous transfers: the packets, inside `length`; empty otherwise.
    pub iso_packets: Vec<IsoPacket>,
    /// OUT transfers: exactly `length` bytes; empty for IN.
    pub out_data: Bytes,
}

impl Transfer {
    /// A transfer with no flags, setup packet, isochronous packets or OUT
    /// data; fill in the rest with struct update syntax.
    pub fn new(id: u64, port: Port, endpoint: u8, kind: TransferKind, length: u32) -> Self {
        Self {
            id,
            port,
            endpoint,
            kind,
            flags: 0,
            length,
            interval: 0,
            start_frame: 0,
            setup: [0; 8],
            iso_packets: Vec::new(),
            out_data: Bytes::new(),
        }
    }

    pub fn is_in(&self) -> bool {
        self.endpoint & 0x80 != 0
    }

    pub fn endpoint_number(&self) -> u8 {
        self.endpoint & 0x0f
    }
}

/// The outcome of one [`Transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub port: Port,
    pub id: u64,
    pub status: Status,
    /// Bytes transferred; isochronous: the sum of the packets'.
    pub actual_length: u32,
    pub start_frame: u32,
    /// Isochronous: packets that failed.
    pub error_count: u32,
    /// Isochronous: one per requested packet; empty otherwise.
    pub iso_results: Vec<IsoResult>,
    /// IN data, as pieces to write at offsets into the request's buffer
    /// (isochronous packets land at their own offsets). Empty for OUT.
    pub in_data: Vec<(u32, Bytes)>,
}

impl Completion {
    /// A request that transferred nothing and failed with `status`.
    pub fn failed(port: Port, id: u64, status: Status) -> Self {
        Self {
            port,
            id,
            status,
            actual_length: 0,
            start_frame: 0,
            error_count: 0,
            iso_results: Vec::new(),
            in_data: Vec::new(),
        }
    }
}

/// A change on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEvent {
    Connected { port: Port, speed: Speed },
    Disconnected { port: Port },
}

impl PortEvent {
    pub fn port(&self) -> Port {
        match *self {
            Self::Connected { port, .. } | Self::Disconnected { port } => port,
        }
    }
}

/// What the devices report back to the controller, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upcall {
    Completed(Completion),
    Event(PortEvent),
    /// A [`Ports::reset_port`] finished. Every request that was in flight on
    /// the port has been completed (with `Shutdown`) before this arrives.
    ResetDone {
        port: Port,
        token: u64,
        status: Status,
        /// The device's speed after the reset, when `status` is `Ok`.
        speed: Option<Speed>,
    },
}

/// Where the devices deliver [`Upcall`]s. Called from any thread; must not
/// block for long.
pub trait UpcallSink: Send + Sync + 'static {
    fn upcall(&self, upcall: Upcall);
}

/// The devices behind the controller's ports.
///
/// Every submitted transfer is answered by exactly one
/// [`Upcall::Completed`], whatever happens; a transfer to a port without a
/// device is answered at once with `NoDevice`.
pub trait Ports: Send + Sync {
    fn submit(&self, transfer: Transfer);
    /// Tries to cancel transfer `id`; its completion says whether it won
    /// (`Cancelled`) or lost (the real result). Unknown ids are ignored.
    fn cancel(&self, port: Port, id: u64);
    /// Resets the device on `port`; answered by [`Upcall::ResetDone`] with
    /// the same `token`.
    fn reset_port(&self, port: Port, token: u64);
}
