//! The streaming decoder.
//!
//! A packet is checked in three steps as it arrives, so that a bad one is
//! refused as early as possible and nothing is reserved for a packet whose
//! headers are not both in and valid: the header alone (type, sender,
//! length), then the type-specific header against the length of the data
//! still to come, then the data itself (hello's words, filter_filter's
//! string).

use bytes::{Buf, BytesMut};

use crate::packets::{check_header, decode_type_header, fill_control, fill_data};
use crate::{Caps, Header, Packet, ProtoError, Sender};

impl Packet {
    /// Decodes one packet sent by `sender` from the front of `src`, under
    /// these negotiated capabilities ([`Caps::empty()`] until both hellos
    /// have been seen), consuming it.
    ///
    /// `Ok(None)` means more bytes are needed, and an error that the peer
    /// broke the protocol; either way `src` is left as it was. Once both
    /// headers have arrived and passed their checks, room for the whole
    /// packet is reserved in `src` (at most [`crate::limits::MAX_PACKET_LEN`]
    /// and a header).
    pub fn decode(
        src: &mut BytesMut,
        caps: Caps,
        sender: Sender,
    ) -> Result<Option<Packet>, ProtoError> {
        let Some(header) = Header::peek(src, caps) else {
            return Ok(None);
        };
        let type_header_len = check_header(&header, caps, sender)?;
        let start = Header::wire_len(caps);
        let Some(type_header) = src.get(start..start + type_header_len) else {
            return Ok(None);
        };
        let data_len = header.length as usize - type_header_len;
        let body = decode_type_header(header.packet_type, type_header, data_len, caps, sender)?;
        let total = start + header.length as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let data_start = start + type_header_len;
        let body = if body.is_data_packet() {
            // The data is handed out as a slice of the receive buffer.
            src.advance(data_start);
            fill_data(body, src.split_to(data_len).freeze())
        } else {
            // Hello's words and filter_filter's string are parsed before
            // anything is consumed, so that an error leaves `src` as it was.
            let body = fill_control(body, &src[data_start..total])?;
            src.advance(total);
            body
        };
        Ok(Some(Packet {
            id: header.id,
            body,
        }))
    }
}
