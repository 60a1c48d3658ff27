//! What the session has given the device and not had back, by tag.
//!
//! The device knows every transfer by a tag of the session's, never by the
//! guest's id: ids are the guest's to reuse as soon as it has an answer
//! (after a cancel, at once), while a tag is never reused, so a late
//! completion of something cancelled or abandoned finds no entry and is
//! dropped instead of answering a newer request.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use usbredir_proto::{BulkPacket, ControlPacket, InterruptPacket, ENDPOINT_DIR_IN};

use crate::transfer::Completion;

/// Standard device requests (USB 2.0 §9.4) that the session makes or
/// recognises, and their bmRequestType values.
pub mod standard {
    pub const CLEAR_FEATURE: u8 = 1;
    pub const GET_DESCRIPTOR: u8 = 6;
    pub const GET_CONFIGURATION: u8 = 8;
    pub const SET_CONFIGURATION: u8 = 9;
    pub const GET_INTERFACE: u8 = 10;
    pub const SET_INTERFACE: u8 = 11;

    pub const TO_DEVICE: u8 = 0x00;
    pub const TO_INTERFACE: u8 = 0x01;
    pub const TO_ENDPOINT: u8 = 0x02;
    pub const FROM_DEVICE: u8 = 0x80;
    pub const FROM_INTERFACE: u8 = 0x81;

    /// A setup packet as it goes on the bus.
    pub fn setup(requesttype: u8, request: u8, value: u16, index: u16, length: u16) -> [u8; 8] {
        let [v0, v1] = value.to_le_bytes();
        let [i0, i1] = index.to_le_bytes();
        let [l0, l1] = length.to_le_bytes();
        [requesttype, request, v0, v1, i0, i1, l0, l1]
    }
}

/// A standard request whose success changes the endpoints the guest may
/// use, so that interface_info and ep_info must be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Configuration(u8),
    AltSetting { interface: u8, alt: u8 },
}

/// A guest request waiting for the device, as it will be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestKind {
    /// The request's header without its OUT data; `change` when it is a
    /// SET_CONFIGURATION or SET_INTERFACE sent as a plain control packet.
    Control {
        packet: ControlPacket,
        change: Option<Change>,
    },
    Bulk(BulkPacket),
    /// Interrupt OUT (the guest never sends interrupt IN requests).
    Interrupt(InterruptPacket),
    SetConfiguration(u8),
    GetConfiguration,
    SetAltSetting {
        interface: u8,
        alt: u8,
    },
    GetAltSetting {
        interface: u8,
    },
}

impl GuestKind {
    /// The endpoint of a data packet; `None` for the configuration
    /// requests, which cancel_data_packet cannot name.
    pub fn data_endpoint(&self) -> Option<u8> {
        match self {
            GuestKind::Control { packet, .. } => Some(packet.endpoint),
            GuestKind::Bulk(p) => Some(p.endpoint),
            GuestKind::Interrupt(p) => Some(p.endpoint),
            _ => None,
        }
    }

    /// Whether QEMU waits for the answer under the request's id, so that
    /// the id must be unique among those in flight. Not for interrupt OUT:
    /// QEMU reports those done at once (`usbredir_handle_interrupt_out_data()`)
    /// and may reuse the id while the device still has the transfer; it
    /// only logs the answer if it failed.
    pub fn keyed(&self) -> bool {
        !matches!(self, GuestKind::Interrupt(_))
    }

    /// The protocol's name of the packet type, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            GuestKind::Control { .. } => "control_packet",
            GuestKind::Bulk(_) => "bulk_packet",
            GuestKind::Interrupt(_) => "interrupt_packet",
            GuestKind::SetConfiguration(_) => "set_configuration",
            GuestKind::GetConfiguration => "get_configuration",
            GuestKind::SetAltSetting { .. } => "set_alt_setting",
            GuestKind::GetAltSetting { .. } => "get_alt_setting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRequest {
    pub id: u64,
    pub kind: GuestKind,
}

/// Why a transfer was given to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Guest(GuestRequest),
    /// A descriptor read of the device's probe.
    Probe,
    /// One of the transfers keeping a receiving stream going.
    Stream {
        endpoint: u8,
    },
    /// CLEAR_FEATURE(ENDPOINT_HALT) to restart a stalled stream.
    ClearHalt {
        endpoint: u8,
    },
    /// One of the transfers of an isochronous stream.
    Iso {
        endpoint: u8,
    },
}

/// The transfers on the device, by tag, and the guest's ids of the keyed
/// guest requests (see [`GuestKind::keyed`]).
#[derive(Debug)]
pub struct InFlight {
    /// Ordered, so that whatever is failed all at once is failed in the
    /// order it was submitted.
    by_tag: BTreeMap<u64, Pending>,
    by_id: BTreeMap<u64, u64>,
    next_tag: u64,
}

impl InFlight {
    pub fn new() -> Self {
        Self {
            by_tag: BTreeMap::new(),
            by_id: BTreeMap::new(),
            next_tag: 1,
        }
    }

    /// Records `pending` under a fresh tag and returns the tag. A keyed
    /// guest request's id must not be in flight (see [`InFlight::has_id`]).
    pub fn insert(&mut self, pending: Pending) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Pending::Guest(req) = &pending {
            if req.kind.keyed() {
                let previous = self.by_id.insert(req.id, tag);
                debug_assert!(previous.is_none(), "guest id {} already in flight", req.id);
            }
        }
        self.by_tag.insert(tag, pending);
        tag
    }

    pub fn has_id(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn tag_of(&self, id: u64) -> Option<u64> {
        self.by_id.get(&id).copied()
    }

    pub fn get(&self, tag: u64) -> Option<&Pending> {
        self.by_tag.get(&tag)
    }

    /// Removes a transfer: it completed, or is no longer wanted.
    pub fn take(&mut self, tag: u64) -> Option<Pending> {
        let pending = self.by_tag.remove(&tag)?;
        if let Pending::Guest(req) = &pending {
            if self.by_id.get(&req.id) == Some(&tag) {
                self.by_id.remove(&req.id);
            }
        }
        Some(pending)
    }

    /// The tags of the transfers `pick` chooses, oldest first.
    pub fn tags_where(&self, mut pick: impl FnMut(&Pending) -> bool) -> Vec<u64> {
        self.by_tag
            .iter()
            .filter(|(_, p)| pick(p))
            .map(|(&tag, _)| tag)
            .collect()
    }

    /// Guest requests waiting for the device.
    pub fn guest_requests(&self) -> usize {
        self.by_tag
            .values()
            .filter(|p| matches!(p, Pending::Guest(_)))
            .count()
    }
}

/// The IN data of a completion as one contiguous buffer of
/// `actual_length` bytes, or why the completion is inconsistent with a
/// request for `requested` bytes. The device is behind a network and is
/// not trusted to stay within the request.
pub fn in_data(c: &Completion, requested: u32) -> Result<Bytes, &'static str> {
    let actual = c.actual_length;
    if actual > requested {
        return Err("more data than requested");
    }
    match c.in_data.as_slice() {
        [] if actual == 0 => return Ok(Bytes::new()),
        [(0, data)] if data.len() == actual as usize => return Ok(data.clone()),
        _ => {}
    }
    place(&c.in_data, actual as usize).ok_or("IN data beyond actual_length")
}

/// The pieces of a completion's IN data written at their offsets into a
/// zeroed buffer of `len` bytes; `None` if one reaches past it.
pub fn place(pieces: &[(u32, Bytes)], len: usize) -> Option<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    for (offset, piece) in pieces {
        let start = *offset as usize;
        let end = start.checked_add(piece.len()).filter(|&end| end <= len)?;
        buf[start..end].copy_from_slice(piece);
    }
    Some(buf.freeze())
}

/// Whether a data packet's endpoint is an IN endpoint.
pub fn is_in(endpoint: u8) -> bool {
    endpoint & ENDPOINT_DIR_IN != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::Status;

    fn bulk(id: u64) -> Pending {
        Pending::Guest(GuestRequest {
            id,
            kind: GuestKind::Bulk(BulkPacket::default()),
        })
    }

    #[test]
    fn tags_are_fresh_and_ids_are_free_again_once_taken() {
        let mut f = InFlight::new();
        let a = f.insert(bulk(7));
        let b = f.insert(Pending::Probe);
        assert_ne!(a, b);
        assert!(f.has_id(7));
        assert_eq!(f.tag_of(7), Some(a));
        assert_eq!(f.guest_requests(), 1);
        assert_eq!(f.take(a), Some(bulk(7)));
        assert!(!f.has_id(7));
        assert_eq!(f.take(a), None);
        // The same id again gets a new tag.
        let c = f.insert(bulk(7));
        assert!(c > b);
        assert_eq!(f.tags_where(|_| true), vec![b, c]);
        assert_eq!(f.tags_where(|p| matches!(p, Pending::Probe)), vec![b]);
    }

    #[test]
    fn interrupt_out_requests_are_not_keyed_by_id() {
        let mut f = InFlight::new();
        let out = |id| {
            Pending::Guest(GuestRequest {
                id,
                kind: GuestKind::Interrupt(InterruptPacket::default()),
            })
        };
        let a = f.insert(out(3));
        let b = f.insert(out(3));
        let c = f.insert(bulk(3));
        assert_eq!(f.tag_of(3), Some(c));
        assert_eq!(f.guest_requests(), 3);
        f.take(a);
        assert_eq!(f.tag_of(3), Some(c), "only its own id mapping goes");
        f.take(c);
        assert!(!f.has_id(3));
        assert_eq!(f.take(b), Some(out(3)));
    }

    #[test]
    fn in_data_is_checked_against_the_request() {
        let mut c = Completion::failed(1, 1, Status::Ok);
        assert_eq!(in_data(&c, 8), Ok(Bytes::new()));
        c.actual_length = 4;
        c.in_data = vec![(0, Bytes::from_static(b"abcd"))];
        assert_eq!(in_data(&c, 8), Ok(Bytes::from_static(b"abcd")));
        assert!(in_data(&c, 3).is_err());
        c.in_data = vec![
            (2, Bytes::from_static(b"cd")),
            (0, Bytes::from_static(b"ab")),
        ];
        assert_eq!(in_data(&c, 8), Ok(Bytes::from_static(b"abcd")));
        c.in_data = vec![(3, Bytes::from_static(b"cd"))];
        assert!(in_data(&c, 8).is_err());
    }
}
