//! The usbredir protocol (version 0.7) as QEMU's `usb-redir` device and
//! the usbredir project's `usbredirparser` speak it, as a codec without I/O.
//!
//! One USB device is tunnelled over a reliable byte stream between a
//! *usb-guest* (QEMU, which shows the device to its virtual machine) and a
//! *usb-host* (the side the device is plugged into). Every packet is a
//! [`Header`] (type, length, id), a type-specific header, then data for the
//! few types that carry any. All integers are little-endian and all structs
//! packed (`usb-redirection-protocol.md`, `usbredirproto.h`).
//!
//! The layout depends on state both ends agree on, which the caller keeps and
//! passes to every call:
//!
//! * the negotiated capabilities ([`Caps::negotiate`] of the two
//!   [`Hello`]s): the id is 64 bits wide with [`Cap::Ids64`], and some
//!   headers grow fields with other capabilities. Before both hellos have
//!   been seen, use [`Caps::empty()`]; that is why a hello always has a
//!   32-bit id.
//! * who sent the packet ([`Sender`]): most types go one way only, and
//!   whether a data packet carries its data depends on the endpoint's
//!   direction and on the sender.
//!
//! [`Packet::decode`] takes a growing receive buffer and either consumes one
//! whole packet, asks for more bytes (`Ok(None)`, buffer untouched) or fails
//! with a [`ProtoError`] (buffer untouched); lengths from the peer are checked
//! against [`limits`] before anything is reserved. [`Packet::encode`] checks
//! the same rules, so that whatever it writes decodes on the other side.

mod caps;
mod error;
mod header;
mod packets;
mod parse;
mod wire;

pub use caps::{Cap, Caps};
pub use error::ProtoError;
pub use header::{Header, HEADER_LEN_32, HEADER_LEN_64};
pub use packets::control::{
    DeviceConnect, EpInfo, Hello, InterfaceInfo, MAX_ENDPOINTS, MAX_INTERFACES, VERSION_LEN,
};
pub use packets::data::{
    carries_data, BufferedBulkPacket, BulkPacket, ControlPacket, InterruptPacket, IsoPacket,
};
pub use packets::{type_header_len, Body, Packet, Sender};

/// Bounds on what a peer may make us allocate. They are usbredirparser's own
/// (`MAX_BULK_TRANSFER_SIZE` and `MAX_PACKET_SIZE` in `usbredirparser.c`), so
/// that no packet QEMU's parser would send is refused for its size, and
/// nothing this codec sends is refused by it for its size.
pub mod limits {
    /// Largest bulk transfer: a bulk packet's length, a buffered bulk
    /// packet's length and `bytes_per_transfer` of start_bulk_receiving.
    pub const MAX_BULK_TRANSFER_LEN: u32 = 128 << 20;
    /// Largest `length` in a packet header (type-specific header and data):
    /// a bulk transfer plus 1 KiB, more than the longest type-specific header
    /// (288 bytes).
    pub const MAX_PACKET_LEN: u32 = 1024 + MAX_BULK_TRANSFER_LEN;
}

/// Packet types (`usb_redir_*` of the type enum in `usbredirproto.h`).
pub mod packet_type {
    pub const HELLO: u32 = 0;
    pub const DEVICE_CONNECT: u32 = 1;
    pub const DEVICE_DISCONNECT: u32 = 2;
    pub const RESET: u32 = 3;
    pub const INTERFACE_INFO: u32 = 4;
    pub const EP_INFO: u32 = 5;
    pub const SET_CONFIGURATION: u32 = 6;
    pub const GET_CONFIGURATION: u32 = 7;
    pub const CONFIGURATION_STATUS: u32 = 8;
    pub const SET_ALT_SETTING: u32 = 9;
    pub const GET_ALT_SETTING: u32 = 10;
    pub const ALT_SETTING_STATUS: u32 = 11;
    pub const START_ISO_STREAM: u32 = 12;
    pub const STOP_ISO_STREAM: u32 = 13;
    pub const ISO_STREAM_STATUS: u32 = 14;
    pub const START_INTERRUPT_RECEIVING: u32 = 15;
    pub const STOP_INTERRUPT_RECEIVING: u32 = 16;
    pub const INTERRUPT_RECEIVING_STATUS: u32 = 17;
    pub const ALLOC_BULK_STREAMS: u32 = 18;
    pub const FREE_BULK_STREAMS: u32 = 19;
    pub const BULK_STREAMS_STATUS: u32 = 20;
    pub const CANCEL_DATA_PACKET: u32 = 21;
    pub const FILTER_REJECT: u32 = 22;
    pub const FILTER_FILTER: u32 = 23;
    pub const DEVICE_DISCONNECT_ACK: u32 = 24;
    pub const START_BULK_RECEIVING: u32 = 25;
    pub const STOP_BULK_RECEIVING: u32 = 26;
    pub const BULK_RECEIVING_STATUS: u32 = 27;
    pub const CONTROL_PACKET: u32 = 100;
    pub const BULK_PACKET: u32 = 101;
    pub const ISO_PACKET: u32 = 102;
    pub const INTERRUPT_PACKET: u32 = 103;
    pub const BUFFERED_BULK_PACKET: u32 = 104;

    /// The protocol's name of a packet type, for messages and logs.
    pub fn name(packet_type: u32) -> &'static str {
        const CONTROL: [&str; 28] = [
            "hello",
            "device_connect",
            "device_disconnect",
            "reset",
            "interface_info",
            "ep_info",
            "set_configuration",
            "get_configuration",
            "configuration_status",
            "set_alt_setting",
            "get_alt_setting",
            "alt_setting_status",
            "start_iso_stream",
            "stop_iso_stream",
            "iso_stream_status",
            "start_interrupt_receiving",
            "stop_interrupt_receiving",
            "interrupt_receiving_status",
            "alloc_bulk_streams",
            "free_bulk_streams",
            "bulk_streams_status",
            "cancel_data_packet",
            "filter_reject",
            "filter_filter",
            "device_disconnect_ack",
            "start_bulk_receiving",
            "stop_bulk_receiving",
            "bulk_receiving_status",
        ];
        const DATA: [&str; 5] = [
            "control_packet",
            "bulk_packet",
            "iso_packet",
            "interrupt_packet",
            "buffered_bulk_packet",
        ];
        let t = packet_type as usize;
        CONTROL
            .get(t)
            .or_else(|| t.checked_sub(100).and_then(|i| DATA.get(i)))
            .copied()
            .unwrap_or("unknown")
    }
}

/// Values of the `status` fields of the host's replies. Later versions may
/// add codes; any unknown value means an error.
pub mod status {
    pub const SUCCESS: u8 = 0;
    /// The transfer was cancelled (also reported for every pending transfer
    /// when the host stops redirecting the device).
    pub const CANCELLED: u8 = 1;
    /// Invalid packet type, length, endpoint, etc.
    pub const INVAL: u8 = 2;
    pub const IOERROR: u8 = 3;
    /// Stalled; also how the host reports a stream it had to stop.
    pub const STALL: u8 = 4;
    pub const TIMEOUT: u8 = 5;
    /// The device babbled (since protocol 0.4.2).
    pub const BABBLE: u8 = 6;
}

/// `speed` of device_connect.
pub mod speed {
    pub const LOW: u8 = 0;
    pub const FULL: u8 = 1;
    pub const HIGH: u8 = 2;
    pub const SUPER: u8 = 3;
    pub const UNKNOWN: u8 = 255;
}

/// Endpoint types of ep_info (the first four are USB's own numbers).
pub mod ep_type {
    pub const CONTROL: u8 = 0;
    pub const ISO: u8 = 1;
    pub const BULK: u8 = 2;
    pub const INTERRUPT: u8 = 3;
    /// No such endpoint.
    pub const INVALID: u8 = 255;
}

/// The direction bit of an endpoint address (`USB_DIR_IN`).
pub const ENDPOINT_DIR_IN: u8 = 0x80;

/// Index of an endpoint address in ep_info's arrays: OUT endpoints 0-15
/// first, then IN endpoints 0-15 (what QEMU's `EP2I()` computes). The same
/// numbering gives the bits of alloc/free_bulk_streams' `endpoints` mask.
pub fn ep_index(endpoint: u8) -> usize {
    usize::from(((endpoint & ENDPOINT_DIR_IN) >> 3) | (endpoint & 0x0f))
}
