//! The packet types, who may send each, and their type-specific headers.
//!
//! Control packets (types 0-27) configure the device and are answered one
//! at a time; data packets (types 100-104) carry transfers. Which side sends
//! what, and how long each type-specific header is under which capabilities,
//! follows `usbredirparser_get_type_header_len()`; which types may carry data
//! follows `usbredirparser_expect_extra_data()`.

pub mod control;
pub mod data;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet_type as t;
use crate::{limits, Cap, Caps, Header, ProtoError};
use control::{DeviceConnect, EpInfo, Hello, InterfaceInfo};
use data::{BufferedBulkPacket, BulkPacket, ControlPacket, InterruptPacket, IsoPacket};

/// Which end of the connection sent a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The usb-guest: QEMU's `usb-redir` device.
    Guest,
    /// The usb-host: the side the USB device is attached to.
    Host,
}

impl Sender {
    /// The other end.
    pub fn peer(self) -> Sender {
        match self {
            Sender::Guest => Sender::Host,
            Sender::Host => Sender::Guest,
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Guest => "guest",
            Sender::Host => "host",
        })
    }
}

/// One packet: the header's id and everything after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// See [`Header::id`]. At most `u32::MAX` unless [`Cap::Ids64`] is
    /// negotiated.
    pub id: u64,
    pub body: Body,
}

/// The type-specific part of a packet, one variant per packet type. The
/// field names are those of `usbredirproto.h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Both sides, first thing on the connection.
    Hello(Hello),
    /// Host: a device is there.
    DeviceConnect(DeviceConnect),
    /// Host: the device is gone.
    DeviceDisconnect,
    /// Guest: reset the device.
    Reset,
    /// Host: the interfaces of the active configuration.
    InterfaceInfo(InterfaceInfo),
    /// Host: all 32 endpoints' type, interval and interface.
    EpInfo(Box<EpInfo>),
    SetConfiguration {
        configuration: u8,
    },
    GetConfiguration,
    /// Host: the answer to set/get_configuration.
    ConfigurationStatus {
        status: u8,
        configuration: u8,
    },
    SetAltSetting {
        interface: u8,
        alt: u8,
    },
    GetAltSetting {
        interface: u8,
    },
    /// Host: the answer to set/get_alt_setting.
    AltSettingStatus {
        status: u8,
        interface: u8,
        alt: u8,
    },
    StartIsoStream {
        endpoint: u8,
        pkts_per_urb: u8,
        no_urbs: u8,
    },
    StopIsoStream {
        endpoint: u8,
    },
    IsoStreamStatus {
        status: u8,
        endpoint: u8,
    },
    /// Guest: the host is to poll this interrupt IN endpoint itself.
    StartInterruptReceiving {
        endpoint: u8,
    },
    StopInterruptReceiving {
        endpoint: u8,
    },
    InterruptReceivingStatus {
        status: u8,
        endpoint: u8,
    },
    /// `endpoints` is a mask of [`crate::ep_index`] bits.
    AllocBulkStreams {
        endpoints: u32,
        no_streams: u32,
    },
    FreeBulkStreams {
        endpoints: u32,
    },
    BulkStreamsStatus {
        endpoints: u32,
        no_streams: u32,
        status: u8,
    },
    /// Guest: cancel the data packet whose id this packet carries.
    CancelDataPacket,
    /// Guest: its filter rejected the device.
    FilterReject,
    /// Both sides: the sender's device filter, in usbredirfilter's text
    /// form (`class,vendor,product,version,allow` rules joined by `|`),
    /// which this codec does not interpret. Sent NUL-terminated.
    FilterFilter {
        rules: String,
    },
    /// Guest: it has seen the device_disconnect.
    DeviceDisconnectAck,
    StartBulkReceiving {
        stream_id: u32,
        bytes_per_transfer: u32,
        endpoint: u8,
        no_transfers: u8,
    },
    StopBulkReceiving {
        stream_id: u32,
        endpoint: u8,
    },
    BulkReceivingStatus {
        stream_id: u32,
        endpoint: u8,
        status: u8,
    },
    Control(ControlPacket),
    Bulk(BulkPacket),
    Iso(IsoPacket),
    Interrupt(InterruptPacket),
    /// Host: data from an endpoint in buffered bulk mode.
    BufferedBulk(BufferedBulkPacket),
}

impl Body {
    /// The header's `type` for this body.
    pub fn packet_type(&self) -> u32 {
        match self {
            Body::Hello(_) => t::HELLO,
            Body::DeviceConnect(_) => t::DEVICE_CONNECT,
            Body::DeviceDisconnect => t::DEVICE_DISCONNECT,
            Body::Reset => t::RESET,
            Body::InterfaceInfo(_) => t::INTERFACE_INFO,
            Body::EpInfo(_) => t::EP_INFO,
            Body::SetConfiguration { .. } => t::SET_CONFIGURATION,
            Body::GetConfiguration => t::GET_CONFIGURATION,
            Body::ConfigurationStatus { .. } => t::CONFIGURATION_STATUS,
            Body::SetAltSetting { .. } => t::SET_ALT_SETTING,
            Body::GetAltSetting { .. } => t::GET_ALT_SETTING,
            Body::AltSettingStatus { .. } => t::ALT_SETTING_STATUS,
            Body::StartIsoStream { .. } => t::START_ISO_STREAM,
            Body::StopIsoStream { .. } => t::STOP_ISO_STREAM,
            Body::IsoStreamStatus { .. } => t::ISO_STREAM_STATUS,
            Body::StartInterruptReceiving { .. } => t::START_INTERRUPT_RECEIVING,
            Body::StopInterruptReceiving { .. } => t::STOP_INTERRUPT_RECEIVING,
            Body::InterruptReceivingStatus { .. } => t::INTERRUPT_RECEIVING_STATUS,
            Body::AllocBulkStreams { .. } => t::ALLOC_BULK_STREAMS,
            Body::FreeBulkStreams { .. } => t::FREE_BULK_STREAMS,
            Body::BulkStreamsStatus { .. } => t::BULK_STREAMS_STATUS,
            Body::CancelDataPacket => t::CANCEL_DATA_PACKET,
            Body::FilterReject => t::FILTER_REJECT,
            Body::FilterFilter { .. } => t::FILTER_FILTER,
            Body::DeviceDisconnectAck => t::DEVICE_DISCONNECT_ACK,
            Body::StartBulkReceiving { .. } => t::START_BULK_RECEIVING,
            Body::StopBulkReceiving { .. } => t::STOP_BULK_RECEIVING,
            Body::BulkReceivingStatus { .. } => t::BULK_RECEIVING_STATUS,
            Body::Control(_) => t::CONTROL_PACKET,
            Body::Bulk(_) => t::BULK_PACKET,
            Body::Iso(_) => t::ISO_PACKET,
            Body::Interrupt(_) => t::INTERRUPT_PACKET,
            Body::BufferedBulk(_) => t::BUFFERED_BULK_PACKET,
        }
    }

    pub(crate) fn is_data_packet(&self) -> bool {
        self.packet_type() >= t::CONTROL_PACKET
    }
}

/// How a packet type travels.
pub(crate) struct Layout {
    /// Size of the type-specific header.
    pub(crate) header_len: usize,
    /// The only side that sends it, or `None` for both.
    pub(crate) sender: Option<Sender>,
    /// Whether anything may follow the type-specific header.
    pub(crate) data: bool,
}

pub(crate) fn layout(packet_type: u32, caps: Caps) -> Option<Layout> {
    use Sender::{Guest, Host};
    let (header_len, sender, data) = match packet_type {
        t::HELLO => (control::VERSION_LEN, None, true),
        t::DEVICE_CONNECT if caps.has(Cap::ConnectDeviceVersion) => (10, Some(Host), false),
        t::DEVICE_CONNECT => (8, Some(Host), false),
        t::DEVICE_DISCONNECT => (0, Some(Host), false),
        t::RESET => (0, Some(Guest), false),
        t::INTERFACE_INFO => (4 + 4 * control::MAX_INTERFACES, Some(Host), false),
        t::EP_INFO => (control::ep_info_len(caps), Some(Host), false),
        t::SET_CONFIGURATION => (1, Some(Guest), false),
        t::GET_CONFIGURATION => (0, Some(Guest), false),
        t::CONFIGURATION_STATUS => (2, Some(Host), false),
        t::SET_ALT_SETTING => (2, Some(Guest), false),
        t::GET_ALT_SETTING => (1, Some(Guest), false),
        t::ALT_SETTING_STATUS => (3, Some(Host), false),
        t::START_ISO_STREAM => (3, Some(Guest), false),
        t::STOP_ISO_STREAM => (1, Some(Guest), false),
        t::ISO_STREAM_STATUS => (2, Some(Host), false),
        t::START_INTERRUPT_RECEIVING => (1, Some(Guest), false),
        t::STOP_INTERRUPT_RECEIVING => (1, Some(Guest), false),
        t::INTERRUPT_RECEIVING_STATUS => (2, Some(Host), false),
        t::ALLOC_BULK_STREAMS => (8, Some(Guest), false),
        t::FREE_BULK_STREAMS => (4, Some(Guest), false),
        t::BULK_STREAMS_STATUS => (9, Some(Host), false),
        t::CANCEL_DATA_PACKET => (0, Some(Guest), false),
        t::FILTER_REJECT => (0, Some(Guest), false),
        t::FILTER_FILTER => (0, None, true),
        t::DEVICE_DISCONNECT_ACK => (0, Some(Guest), false),
        t::START_BULK_RECEIVING => (10, Some(Guest), false),
        t::STOP_BULK_RECEIVING => (5, Some(Guest), false),
        t::BULK_RECEIVING_STATUS => (6, Some(Host), false),
        t::CONTROL_PACKET => (10, None, true),
        t::BULK_PACKET if caps.has(Cap::BulkLength32) => (10, None, true),
        t::BULK_PACKET => (8, None, true),
        t::ISO_PACKET => (4, None, true),
        t::INTERRUPT_PACKET => (4, None, true),
        t::BUFFERED_BULK_PACKET => (10, Some(Host), true),
        _ => return None,
    };
    Some(Layout {
        header_len,
        sender,
        data,
    })
}

/// Size of a packet type's type-specific header under these negotiated
/// capabilities; `None` for a type the protocol does not define.
pub fn type_header_len(packet_type: u32, caps: Caps) -> Option<usize> {
    layout(packet_type, caps).map(|l| l.header_len)
}

/// Checks what a header alone can tell: a known type, from a side that
/// sends it, with a length that holds its type-specific header, carries
/// data only if the type does, and stays within [`limits::MAX_PACKET_LEN`].
/// Returns the type-specific header's size.
pub(crate) fn check_header(h: &Header, caps: Caps, sender: Sender) -> Result<usize, ProtoError> {
    let layout = layout(h.packet_type, caps).ok_or(ProtoError::UnknownType(h.packet_type))?;
    if layout.sender.is_some_and(|only| only != sender) {
        return Err(ProtoError::WrongSender {
            packet_type: h.packet_type,
            sender,
        });
    }
    if h.length > limits::MAX_PACKET_LEN {
        return Err(ProtoError::TooLong {
            length: h.length,
            max: limits::MAX_PACKET_LEN,
        });
    }
    let length = h.length as usize;
    if length < layout.header_len {
        return Err(ProtoError::TooShort {
            packet_type: h.packet_type,
            length: h.length,
            header_len: layout.header_len,
        });
    }
    if length > layout.header_len && !layout.data {
        return Err(ProtoError::UnexpectedData {
            packet_type: h.packet_type,
            len: length - layout.header_len,
        });
    }
    Ok(layout.header_len)
}

/// Decodes a type-specific header and checks it against the length of the
/// data that follows, without needing the data itself; the result has empty
/// data, for [`fill`] to complete.
pub(crate) fn decode_type_header(
    packet_type: u32,
    raw: &[u8],
    data_len: usize,
    caps: Caps,
    sender: Sender,
) -> Result<Body, ProtoError> {
    if packet_type >= t::CONTROL_PACKET {
        data::decode(packet_type, raw, data_len, caps, sender)
    } else {
        control::decode(packet_type, raw, data_len, caps)
    }
}

/// Completes a data packet from [`decode_type_header`] with its data.
pub(crate) fn fill_data(body: Body, data: Bytes) -> Body {
    data::fill(body, data)
}

/// Completes a control packet from [`decode_type_header`] with its data
/// (hello's capability words, filter_filter's string).
pub(crate) fn fill_control(body: Body, data: &[u8]) -> Result<Body, ProtoError> {
    control::fill(body, data)
}

impl Packet {
    pub fn new(id: u64, body: Body) -> Self {
        Self { id, body }
    }

    /// Appends the wire form to `dst` under these negotiated capabilities,
    /// as sent by `sender`. Checks everything [`Packet::decode`] checks, so
    /// the peer will not reject it; on error nothing is written.
    pub fn encode(&self, caps: Caps, sender: Sender, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let packet_type = self.body.packet_type();
        let data_len = if self.body.is_data_packet() {
            data::check(&self.body, caps, sender)?
        } else {
            control::check(&self.body, caps)?
        };
        let header_len = type_header_len(packet_type, caps).expect("a body's type is known");
        let length = u32::try_from(header_len + data_len).unwrap_or(u32::MAX);
        let header = Header {
            packet_type,
            length,
            id: self.id,
        };
        check_header(&header, caps, sender)?;
        let start = dst.len();
        header.encode(caps, dst)?;
        dst.reserve(header_len + data_len);
        if self.body.is_data_packet() {
            data::encode(&self.body, caps, dst);
        } else {
            control::encode(&self.body, dst);
        }
        debug_assert_eq!(dst.len() - start, Header::wire_len(caps) + length as usize);
        Ok(())
    }

    /// The wire form, as [`Packet::encode`] writes it.
    pub fn to_bytes(&self, caps: Caps, sender: Sender) -> Result<Bytes, ProtoError> {
        let mut out = BytesMut::new();
        self.encode(caps, sender, &mut out)?;
        Ok(out.freeze())
    }
}

/// Writes a NUL-terminated string and nothing more.
pub(crate) fn put_c_string(dst: &mut impl BufMut, text: &str) {
    dst.put_slice(text.as_bytes());
    dst.put_u8(0);
}
