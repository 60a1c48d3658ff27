//! vhost-user messages as the keeper sees them: a header it must
//! understand, a payload it mostly passes on untouched, and the file
//! descriptors that came with them. No I/O.

use std::os::fd::OwnedFd;
use std::sync::Arc;

/// `request`, `flags`, `size`, each a little-endian u32.
pub const HEADER_LEN: usize = 12;

/// Largest payload accepted. The vhost-user messages this device uses are
/// far smaller (a memory table of 8 regions is 264 bytes); anything beyond
/// this is a broken or hostile peer.
pub const MAX_PAYLOAD: u32 = 64 << 10;

/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 32;

/// Front-end request codes the keeper acts on (vhost-user specification).
pub mod request {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const GET_CONFIG: u32 = 24;
    pub const RESET_DEVICE: u32 = 34;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
}

/// The protocol version, in the low two bits of `flags`.
pub const FLAG_VERSION: u32 = 0x1;
/// Set on replies.
pub const FLAG_REPLY: u32 = 0x4;
/// The front-end wants an acknowledgement (`REPLY_ACK`).
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.request.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b
    }
}

/// One message with its payload and descriptors. The descriptors are
/// shared: the journal keeps them open for a later back-end while the
/// message is passed on.
#[derive(Debug, Clone)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<Arc<OwnedFd>>,
}

impl Message {
    /// A message without descriptors; `size` follows the payload.
    pub fn new(request: u32, flags: u32, payload: Vec<u8>) -> Self {
        Self {
            header: Header {
                request,
                flags,
                size: payload.len() as u32,
            },
            payload,
            fds: Vec::new(),
        }
    }

    /// Whether the back-end answers it: every `GET_*`, and anything the
    /// front-end asked an acknowledgement for.
    pub fn expects_reply(&self) -> bool {
        use request::*;
        self.header.flags & FLAG_NEED_REPLY != 0
            || matches!(
                self.header.request,
                GET_FEATURES
                    | GET_PROTOCOL_FEATURES
                    | GET_QUEUE_NUM
                    | GET_VRING_BASE
                    | GET_CONFIG
                    | GET_MAX_MEM_SLOTS
            )
    }

    /// The virtqueue a per-ring message is about, if it is one.
    pub fn vring_index(&self) -> Option<u32> {
        use request::*;
        match self.header.request {
            // A `vhost_vring_state` or `vhost_vring_addr`: the index first.
            SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
                let b = self.payload.get(..4)?;
                Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            // A u64: the index in the low byte, flags above.
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
                self.payload.first().map(|i| u32::from(*i))
            }
            _ => None,
        }
    }

    /// The same message asking for no acknowledgement.
    pub fn without_ack(&self) -> Self {
        let mut m = self.clone();
        m.header.flags &= !FLAG_NEED_REPLY;
        m
    }

    /// The header and payload as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.payload.len());
        b.extend_from_slice(&self.header.to_bytes());
        b.extend_from_slice(&self.payload);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_little_endian() {
        let h = Header {
            request: request::SET_VRING_KICK,
            flags: FLAG_VERSION | FLAG_NEED_REPLY,
            size: 8,
        };
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[12, 0, 0, 0]);
        assert_eq!(Header::parse(&b), h);
    }

    #[test]
    fn ring_messages_name_their_ring() {
        let state = Message::new(
            request::SET_VRING_BASE,
            FLAG_VERSION,
            vec![2, 0, 0, 0, 7, 0, 0, 0],
        );
        assert_eq!(state.vring_index(), Some(2));
        let kick = Message::new(
            request::SET_VRING_KICK,
            FLAG_VERSION,
            vec![1, 1, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(kick.vring_index(), Some(1));
        let short = Message::new(request::SET_VRING_NUM, FLAG_VERSION, vec![1]);
        assert_eq!(short.vring_index(), None);
        assert_eq!(
            Message::new(request::SET_OWNER, FLAG_VERSION, vec![]).vring_index(),
            None
        );
    }

    #[test]
    fn queries_and_acknowledged_messages_expect_replies() {
        assert!(Message::new(request::GET_VRING_BASE, FLAG_VERSION, vec![0; 8]).expects_reply());
        let set = Message::new(
            request::SET_MEM_TABLE,
            FLAG_VERSION | FLAG_NEED_REPLY,
            vec![],
        );
        assert!(set.expects_reply());
        assert!(!set.without_ack().expects_reply());
        assert!(!Message::new(request::SET_VRING_KICK, FLAG_VERSION, vec![0; 8]).expects_reply());
    }
}
