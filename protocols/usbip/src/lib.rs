//! The USB/IP protocol as Linux speaks it, as a codec without I/O.
//!
//! Two families of messages share a TCP connection, one after the other:
//!
//! * the management ("op") messages of `tools/usb/usbip/src/usbip_network.h`:
//!   [`OpRequest`] (`OP_REQ_DEVLIST`, `OP_REQ_IMPORT`) and [`OpReply`];
//! * after a successful import, the URB messages of
//!   `drivers/usb/usbip/usbip_common.h`: [`CmdMessage`] (client to server:
//!   `CMD_SUBMIT`, `CMD_UNLINK`) and [`RetMessage`] (server to client:
//!   `RET_SUBMIT`, `RET_UNLINK`).
//!
//! Everything is big-endian except the 8-byte [`SetupPacket`]. Decoders take a
//! growing receive buffer and either consume one whole message, ask for more
//! bytes (`Ok(None)`, buffer untouched) or fail with a [`ProtoError`]; lengths
//! from the peer are checked against [`limits`] before anything is allocated.

mod error;
mod op;
mod setup;
mod urb;
mod wire;

pub use error::ProtoError;
pub use op::{
    op_code, op_status, DeviceInfo, InterfaceInfo, OpReply, OpRequest, BUSID_SIZE, DEVICE_INFO_LEN,
    PATH_SIZE,
};
pub use setup::{feature, request, Recipient, RequestType, SetupPacket};
pub use urb::{
    command, errno, transfer_flags, CmdMessage, CmdSubmit, CmdUnlink, Direction, IsoPacket,
    RetMessage, RetSubmit, RetUnlink, SubmitInfo, UrbHeader, ISO_PACKET_LEN, NON_ISO_PACKETS,
    URB_HEADER_LEN,
};

/// The protocol version Linux speaks (v1.1.1), carried in every op message.
pub const USBIP_VERSION: u16 = 0x0111;

/// The IANA-registered USB/IP port.
pub const USBIP_PORT: u16 = 3240;

/// Bounds on what a peer may make us allocate.
pub mod limits {
    /// Largest transfer buffer accepted in one URB. Linux's usbip-host has
    /// no limit of its own (it allocates what the client declares, which
    /// fails past the kmalloc limit of a few MiB unless the client asked for
    /// scatter-gather); usb-storage stays far below this, and usbfs caps all
    /// of a process's buffers at 16 MiB by default (`usbfs_memory_mb`), so
    /// no libusb transfer is larger. The decoders reserve at most this much
    /// (plus the isochronous descriptors) for one message, and only once its
    /// whole, valid header has arrived.
    pub const MAX_TRANSFER_LEN: u32 = 16 << 20;
    /// Largest number of isochronous packets in one URB (Linux's
    /// `USBIP_MAX_ISO_PACKETS`).
    pub const MAX_ISO_PACKETS: u32 = 1024;
    /// Largest device list accepted from a server.
    pub const MAX_DEVICES: u32 = 1024;
    /// A USB configuration has at most this many interfaces that matter
    /// (bNumInterfaces is a u8, but usbip lists them in the reply).
    pub const MAX_INTERFACES: u8 = 32;
}

/// USB speeds as Linux's `enum usb_device_speed` numbers them.
pub mod speed {
    pub const UNKNOWN: u32 = 0;
    pub const LOW: u32 = 1;
    pub const FULL: u32 = 2;
    pub const HIGH: u32 = 3;
    pub const WIRELESS: u32 = 4;
    pub const SUPER: u32 = 5;
    pub const SUPER_PLUS: u32 = 6;
}
