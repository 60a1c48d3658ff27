//! The header every packet starts with (`struct usb_redir_header`).

use bytes::BufMut;

use crate::wire::Reader;
use crate::{Cap, Caps, ProtoError};

/// Header size with 32-bit ids: before the hellos, or when either side lacks
/// [`Cap::Ids64`].
pub const HEADER_LEN_32: usize = 12;
/// Header size when both sides have [`Cap::Ids64`].
pub const HEADER_LEN_64: usize = 16;

/// `type`, `length` and `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// One of [`crate::packet_type`].
    pub packet_type: u32,
    /// Bytes after this header: the type-specific header plus any data.
    pub length: u32,
    /// Chosen by the guest for a request and echoed in the host's reply;
    /// 0 in unsolicited packets; a running count in the host's streams of
    /// iso, interrupt and buffered bulk input.
    pub id: u64,
}

impl Header {
    /// Size on the wire under these negotiated capabilities.
    pub fn wire_len(caps: Caps) -> usize {
        if caps.has(Cap::Ids64) {
            HEADER_LEN_64
        } else {
            HEADER_LEN_32
        }
    }

    /// Reads a header from the front of `src` without consuming anything;
    /// `None` if it has not all arrived.
    pub fn peek(src: &[u8], caps: Caps) -> Option<Header> {
        let len = Self::wire_len(caps);
        let mut r = Reader::new(src.get(..len)?);
        let packet_type = r.u32();
        let length = r.u32();
        let id = if len == HEADER_LEN_64 {
            r.u64()
        } else {
            u64::from(r.u32())
        };
        Some(Header {
            packet_type,
            length,
            id,
        })
    }

    /// Appends the wire form. Fails, writing nothing, for an id that does not
    /// fit in 32 bits without [`Cap::Ids64`] (usbredirparser would cut it).
    pub fn encode(&self, caps: Caps, dst: &mut impl BufMut) -> Result<(), ProtoError> {
        let wide = caps.has(Cap::Ids64);
        if !wide && self.id > u64::from(u32::MAX) {
            return Err(ProtoError::Id(self.id));
        }
        dst.put_u32_le(self.packet_type);
        dst.put_u32_le(self.length);
        if wide {
            dst.put_u64_le(self.id);
        } else {
            dst.put_u32_le(self.id as u32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_widths() {
        let h = Header {
            packet_type: 101,
            length: 10,
            id: 0x0102_0304,
        };
        let mut narrow = Vec::new();
        h.encode(Caps::empty(), &mut narrow).unwrap();
        assert_eq!(
            narrow,
            [0x65, 0, 0, 0, 0x0a, 0, 0, 0, 0x04, 0x03, 0x02, 0x01]
        );
        assert_eq!(Header::peek(&narrow, Caps::empty()), Some(h));
        assert_eq!(Header::peek(&narrow[..11], Caps::empty()), None);

        let wide_caps = Caps::empty().with(Cap::Ids64);
        let h = Header {
            id: 0x0807_0605_0403_0201,
            ..h
        };
        let mut wide = Vec::new();
        h.encode(wide_caps, &mut wide).unwrap();
        assert_eq!(wide.len(), HEADER_LEN_64);
        assert_eq!(&wide[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Header::peek(&wide, wide_caps), Some(h));

        let mut out = Vec::new();
        assert_eq!(
            h.encode(Caps::empty(), &mut out),
            Err(ProtoError::Id(0x0807_0605_0403_0201))
        );
        assert!(out.is_empty());
    }
}
