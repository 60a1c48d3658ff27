//! Why a packet could not be decoded or encoded.

use crate::packet_type::name;
use crate::{Cap, Sender};

/// A protocol violation by the peer (or by the caller, for encoding).
///
/// usbredirparser skips such a packet by its header's length and reports a
/// parse error; as the length may itself be what is wrong, the safe reaction
/// is to close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unknown packet type {0}")]
    UnknownType(u32),
    #[error("{} ({packet_type}) is never sent by the usb-{sender}", name(*packet_type))]
    WrongSender { packet_type: u32, sender: Sender },
    #[error("packet length {length} exceeds the limit of {max} bytes")]
    TooLong { length: u32, max: u32 },
    #[error(
        "{} ({packet_type}) of length {length} is shorter than its {header_len}-byte header",
        name(*packet_type)
    )]
    TooShort {
        packet_type: u32,
        length: u32,
        header_len: usize,
    },
    #[error("{} ({packet_type}) carries no data but has {len} bytes of it", name(*packet_type))]
    UnexpectedData { packet_type: u32, len: usize },
    /// The length field of a data packet disagrees with the data it carries:
    /// data must be exactly `length` bytes where the protocol sends data, and
    /// absent where it does not.
    #[error(
        "{} ({packet_type}) on endpoint {endpoint:#04x} from the usb-{sender} \
         must carry {expected} bytes of data, not {actual}",
        name(*packet_type)
    )]
    DataLength {
        packet_type: u32,
        endpoint: u8,
        sender: Sender,
        expected: u32,
        actual: usize,
    },
    /// An iso packet, or an interrupt or buffered bulk packet, going the way
    /// its endpoint's data cannot: the protocol sends those only with data.
    #[error(
        "{} ({packet_type}) on endpoint {endpoint:#04x} cannot come from the usb-{sender}",
        name(*packet_type)
    )]
    WrongDirection {
        packet_type: u32,
        endpoint: u8,
        sender: Sender,
    },
    #[error("{} ({packet_type}) names endpoint {endpoint:#04x}, which is not an IN endpoint", name(*packet_type))]
    NotInEndpoint { packet_type: u32, endpoint: u8 },
    #[error("transfer length {length} exceeds the limit of {max} bytes")]
    TransferLength { length: u32, max: u32 },
    #[error("interface_count {0} exceeds 32")]
    InterfaceCount(u32),
    #[error("hello capabilities of {0} bytes are not whole 32-bit words")]
    CapsLength(usize),
    #[error("{field} is not NUL-terminated UTF-8")]
    Text { field: &'static str },
    #[error("{field} of {len} bytes does not fit in {max}, or holds a NUL")]
    TextTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// An id over 32 bits to encode without [`Cap::Ids64`].
    #[error("id {0:#x} does not fit in a 32-bit id")]
    Id(u64),
    /// A field to encode whose presence contradicts the negotiated
    /// capabilities (it would be dropped, or be missing, on the wire).
    #[error("{field} must be present exactly when {cap:?} is negotiated")]
    CapMismatch { field: &'static str, cap: Cap },
}
