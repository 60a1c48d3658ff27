//! Capabilities: what each side announces in its hello, and what both have.

use std::fmt;

/// One capability, numbered as the bit it occupies in the first capability
/// word of a hello (the capability enum of `usbredirproto.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cap {
    /// USB 3 bulk streams; ep_info grows `max_streams`. Only valid together
    /// with [`Cap::EpInfoMaxPacketSize`].
    BulkStreams = 0,
    /// device_connect has `device_version_bcd`.
    ConnectDeviceVersion = 1,
    /// filter_reject and filter_filter are understood.
    Filter = 2,
    /// device_disconnect_ack is understood.
    DeviceDisconnectAck = 3,
    /// ep_info has `max_packet_size`.
    EpInfoMaxPacketSize = 4,
    /// The header's id is 64 bits wide instead of 32.
    Ids64 = 5,
    /// bulk_packet has `length_high`, for transfers over 65535 bytes.
    BulkLength32 = 6,
    /// Buffered bulk input: start/stop_bulk_receiving, bulk_receiving_status
    /// and buffered_bulk_packet.
    BulkReceiving = 7,
}

impl Cap {
    /// Every capability of protocol 0.7, in bit order.
    pub const ALL: [Cap; 8] = [
        Cap::BulkStreams,
        Cap::ConnectDeviceVersion,
        Cap::Filter,
        Cap::DeviceDisconnectAck,
        Cap::EpInfoMaxPacketSize,
        Cap::Ids64,
        Cap::BulkLength32,
        Cap::BulkReceiving,
    ];

    /// The bit number.
    pub const fn bit(self) -> u32 {
        self as u32
    }
}

/// A set of capabilities: one side's announcement, or the negotiated set
/// both have, which decides the layout of packets.
///
/// Holds the first 32-bit capability word, unknown bits included, so that a
/// peer's announcement survives a round trip; every capability the protocol
/// defines so far lives in that word.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Caps(u32);

impl Caps {
    /// Every capability this codec knows.
    pub const ALL: Caps = Caps(0xff);

    /// No capabilities: the state before the hellos, and a peer from before
    /// protocol 0.3.2.
    pub const fn empty() -> Self {
        Caps(0)
    }

    /// The capability word as it goes on the wire.
    pub const fn from_bits(bits: u32) -> Self {
        Caps(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// This set plus `cap`.
    pub const fn with(self, cap: Cap) -> Self {
        Caps(self.0 | (1 << cap.bit()))
    }

    /// This set less `cap`.
    pub const fn without(self, cap: Cap) -> Self {
        Caps(self.0 & !(1 << cap.bit()))
    }

    pub const fn has(self, cap: Cap) -> bool {
        self.0 & (1 << cap.bit()) != 0
    }

    /// The set from a list.
    pub fn of(caps: &[Cap]) -> Self {
        caps.iter().fold(Caps::empty(), |set, &cap| set.with(cap))
    }

    /// The announcement as usbredirparser takes it: bulk streams without
    /// `max_packet_size` in ep_info are not allowed, so that capability is
    /// dropped (`usbredirparser_verify_caps()`).
    pub const fn sanitized(self) -> Self {
        if self.has(Cap::BulkStreams) && !self.has(Cap::EpInfoMaxPacketSize) {
            self.without(Cap::BulkStreams)
        } else {
            self
        }
    }

    /// What both sides can do, given the two hellos' announcements: the known
    /// capabilities both have after sanitizing. usbredirparser decides every
    /// layout question by "we have it and the peer has it", which is this.
    pub const fn negotiate(ours: Caps, peer: Caps) -> Self {
        Caps(ours.sanitized().0 & peer.sanitized().0 & Caps::ALL.0)
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set = f.debug_set();
        for cap in Cap::ALL {
            if self.has(cap) {
                set.entry(&cap);
            }
        }
        let unknown = self.0 & !Caps::ALL.0;
        if unknown != 0 {
            set.entry(&format_args!("unknown {unknown:#x}"));
        }
        set.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_numbers_match_usbredirproto_h() {
        let bits: Vec<u32> = Cap::ALL.iter().map(|c| c.bit()).collect();
        assert_eq!(bits, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(Caps::of(&Cap::ALL), Caps::ALL);
    }

    #[test]
    fn negotiation_is_the_sanitized_intersection() {
        let qemu = Caps::from_bits(0xff);
        let old_host = Caps::of(&[Cap::ConnectDeviceVersion, Cap::Ids64, Cap::BulkStreams]);
        let both = Caps::negotiate(qemu, old_host);
        // Bulk streams without max_packet_size is dropped from the host's set.
        assert_eq!(both, Caps::of(&[Cap::ConnectDeviceVersion, Cap::Ids64]));
        // Unknown bits are kept in an announcement but never negotiated.
        assert_eq!(
            Caps::negotiate(Caps::from_bits(0x100), Caps::from_bits(0x100)),
            Caps::empty()
        );
        assert_eq!(
            format!("{:?}", Caps::from_bits(0x121)),
            "{BulkStreams, Ids64, unknown 0x100}"
        );
    }
}
