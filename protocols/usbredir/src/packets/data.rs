//! Data packets (types 100-104): transfers, and the rule that ties their
//! `length` field to the data they carry.
//!
//! A request and its answer have the same type and id. Data travels one way
//! only: OUT data with the guest's request, IN data with the host's answer.
//! The other packet of the pair carries none, and its `length` is what the
//! guest asks for (IN) or what the device took (OUT). Where data travels it
//! is exactly `length` bytes; usbredirparser refuses anything else
//! (`usbredirparser_verify_type_header()`), and so does this codec.

use bytes::{BufMut, Bytes};

use crate::packet_type as t;
use crate::wire::Reader;
use crate::{limits, Body, Cap, Caps, ProtoError, Sender, ENDPOINT_DIR_IN};

/// `usb_redir_control_packet_header` and the data stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlPacket {
    /// 0x00 or 0x80: the request's direction (QEMU sends
    /// `requesttype & 0x80`).
    pub endpoint: u8,
    /// bRequest.
    pub request: u8,
    /// bmRequestType.
    pub requesttype: u8,
    /// One of [`crate::status`]; 0 in the guest's request.
    pub status: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength in the request; the bytes transferred in the answer.
    pub length: u16,
    /// OUT data in the guest's request, IN data in the host's answer.
    pub data: Bytes,
}

impl ControlPacket {
    /// The guest's request for an 8-byte USB setup packet (wire order,
    /// little-endian fields), filled as QEMU fills it; OUT data, if any, is
    /// for the caller to add.
    pub fn from_setup(setup: [u8; 8]) -> Self {
        Self {
            endpoint: setup[0] & ENDPOINT_DIR_IN,
            request: setup[1],
            requesttype: setup[0],
            status: 0,
            value: u16::from_le_bytes([setup[2], setup[3]]),
            index: u16::from_le_bytes([setup[4], setup[5]]),
            length: u16::from_le_bytes([setup[6], setup[7]]),
            data: Bytes::new(),
        }
    }
}

/// `usb_redir_bulk_packet_header` and the data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BulkPacket {
    pub endpoint: u8,
    pub status: u8,
    /// `length`, plus `length_high << 16` when [`Cap::BulkLength32`] is
    /// negotiated; without it at most 65535.
    pub length: u32,
    /// 0 unless bulk streams are in use.
    pub stream_id: u32,
    pub data: Bytes,
}

/// `usb_redir_iso_packet_header` and the data: one isochronous packet.
/// Only ever sent with data: OUT from the guest, IN from the host, in a
/// stream started by start_iso_stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IsoPacket {
    pub endpoint: u8,
    /// Meaningful from the host only.
    pub status: u8,
    pub length: u16,
    pub data: Bytes,
}

/// `usb_redir_interrupt_packet_header` and the data. IN data comes from the
/// host unasked once start_interrupt_receiving is on; OUT goes as a request
/// from the guest and an answer (without data) from the host. The guest
/// never sends one for an IN endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterruptPacket {
    pub endpoint: u8,
    pub status: u8,
    pub length: u16,
    pub data: Bytes,
}

/// `usb_redir_buffered_bulk_packet_header` and the data: from the host only,
/// IN endpoints only, once start_bulk_receiving is on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BufferedBulkPacket {
    pub stream_id: u32,
    pub length: u32,
    pub endpoint: u8,
    pub status: u8,
    pub data: Bytes,
}

/// Whether a data packet from `sender` for `endpoint` carries the transfer's
/// data: OUT data goes from guest to host, IN data from host to guest.
pub fn carries_data(endpoint: u8, sender: Sender) -> bool {
    (endpoint & ENDPOINT_DIR_IN != 0) == (sender == Sender::Host)
}

/// The direction and length rules, for decoding and encoding alike.
fn check_fields(
    packet_type: u32,
    endpoint: u8,
    length: u32,
    sender: Sender,
    data_len: usize,
) -> Result<(), ProtoError> {
    let with_data = carries_data(endpoint, sender);
    let wrong_way = !with_data
        && match packet_type {
            t::ISO_PACKET | t::BUFFERED_BULK_PACKET => true,
            t::INTERRUPT_PACKET => sender == Sender::Guest,
            _ => false,
        };
    if wrong_way {
        return Err(ProtoError::WrongDirection {
            packet_type,
            endpoint,
            sender,
        });
    }
    let expected = if with_data { length } else { 0 };
    if data_len != expected as usize {
        return Err(ProtoError::DataLength {
            packet_type,
            endpoint,
            sender,
            expected,
            actual: data_len,
        });
    }
    Ok(())
}

fn check_bulk_len(length: u32, max: u32) -> Result<(), ProtoError> {
    if length > max {
        return Err(ProtoError::TransferLength { length, max });
    }
    Ok(())
}

/// Decodes the type-specific header `raw` and checks it against the
/// `data_len` bytes that follow; the data is added by [`fill`].
pub(crate) fn decode(
    packet_type: u32,
    raw: &[u8],
    data_len: usize,
    caps: Caps,
    sender: Sender,
) -> Result<Body, ProtoError> {
    let mut r = Reader::new(raw);
    let (endpoint, length, body) = match packet_type {
        t::CONTROL_PACKET => {
            let p = ControlPacket {
                endpoint: r.u8(),
                request: r.u8(),
                requesttype: r.u8(),
                status: r.u8(),
                value: r.u16(),
                index: r.u16(),
                length: r.u16(),
                data: Bytes::new(),
            };
            (p.endpoint, u32::from(p.length), Body::Control(p))
        }
        t::BULK_PACKET => {
            let endpoint = r.u8();
            let status = r.u8();
            let low = r.u16();
            let stream_id = r.u32();
            let high = if caps.has(Cap::BulkLength32) {
                r.u16()
            } else {
                0
            };
            let length = (u32::from(high) << 16) | u32::from(low);
            check_bulk_len(length, limits::MAX_BULK_TRANSFER_LEN)?;
            let p = BulkPacket {
                endpoint,
                status,
                length,
                stream_id,
                data: Bytes::new(),
            };
            (endpoint, length, Body::Bulk(p))
        }
        t::ISO_PACKET => {
            let p = IsoPacket {
                endpoint: r.u8(),
                status: r.u8(),
                length: r.u16(),
                data: Bytes::new(),
            };
            (p.endpoint, u32::from(p.length), Body::Iso(p))
        }
        t::INTERRUPT_PACKET => {
            let p = InterruptPacket {
                endpoint: r.u8(),
                status: r.u8(),
                length: r.u16(),
                data: Bytes::new(),
            };
            (p.endpoint, u32::from(p.length), Body::Interrupt(p))
        }
        t::BUFFERED_BULK_PACKET => {
            let p = BufferedBulkPacket {
                stream_id: r.u32(),
                length: r.u32(),
                endpoint: r.u8(),
                status: r.u8(),
                data: Bytes::new(),
            };
            check_bulk_len(p.length, limits::MAX_BULK_TRANSFER_LEN)?;
            (p.endpoint, p.length, Body::BufferedBulk(p))
        }
        other => return Err(ProtoError::UnknownType(other)),
    };
    check_fields(packet_type, endpoint, length, sender, data_len)?;
    Ok(body)
}

/// Adds the data to a body from [`decode`].
pub(crate) fn fill(body: Body, data: Bytes) -> Body {
    match body {
        Body::Control(p) => Body::Control(ControlPacket { data, ..p }),
        Body::Bulk(p) => Body::Bulk(BulkPacket { data, ..p }),
        Body::Iso(p) => Body::Iso(IsoPacket { data, ..p }),
        Body::Interrupt(p) => Body::Interrupt(InterruptPacket { data, ..p }),
        Body::BufferedBulk(p) => Body::BufferedBulk(BufferedBulkPacket { data, ..p }),
        other => other,
    }
}

/// Checks a data packet to encode; returns the length of its data.
pub(crate) fn check(body: &Body, caps: Caps, sender: Sender) -> Result<usize, ProtoError> {
    let packet_type = body.packet_type();
    let (endpoint, length, data) = match body {
        Body::Control(p) => (p.endpoint, u32::from(p.length), &p.data),
        Body::Bulk(p) => {
            let max = if caps.has(Cap::BulkLength32) {
                limits::MAX_BULK_TRANSFER_LEN
            } else {
                u32::from(u16::MAX)
            };
            check_bulk_len(p.length, max)?;
            (p.endpoint, p.length, &p.data)
        }
        Body::Iso(p) => (p.endpoint, u32::from(p.length), &p.data),
        Body::Interrupt(p) => (p.endpoint, u32::from(p.length), &p.data),
        Body::BufferedBulk(p) => {
            check_bulk_len(p.length, limits::MAX_BULK_TRANSFER_LEN)?;
            (p.endpoint, p.length, &p.data)
        }
        _ => unreachable!("control packets are checked by control.rs"),
    };
    check_fields(packet_type, endpoint, length, sender, data.len())?;
    Ok(data.len())
}

/// Writes the type-specific header and data of a checked data packet.
pub(crate) fn encode(body: &Body, caps: Caps, dst: &mut impl BufMut) {
    let data = match body {
        Body::Control(p) => {
            dst.put_slice(&[p.endpoint, p.request, p.requesttype, p.status]);
            dst.put_u16_le(p.value);
            dst.put_u16_le(p.index);
            dst.put_u16_le(p.length);
            &p.data
        }
        Body::Bulk(p) => {
            dst.put_slice(&[p.endpoint, p.status]);
            dst.put_u16_le(p.length as u16);
            dst.put_u32_le(p.stream_id);
            if caps.has(Cap::BulkLength32) {
                dst.put_u16_le((p.length >> 16) as u16);
            }
            &p.data
        }
        Body::Iso(p) => {
            dst.put_slice(&[p.endpoint, p.status]);
            dst.put_u16_le(p.length);
            &p.data
        }
        Body::Interrupt(p) => {
            dst.put_slice(&[p.endpoint, p.status]);
            dst.put_u16_le(p.length);
            &p.data
        }
        Body::BufferedBulk(p) => {
            dst.put_u32_le(p.stream_id);
            dst.put_u32_le(p.length);
            dst.put_slice(&[p.endpoint, p.status]);
            &p.data
        }
        _ => unreachable!("control packets are encoded by control.rs"),
    };
    dst.put_slice(data);
}
