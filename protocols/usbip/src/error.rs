//! Why a message could not be decoded or encoded.

/// A protocol violation by the peer (or by the caller, for encoding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unsupported USB/IP version {0:#06x} (expected 0x0111)")]
    Version(u16),
    #[error("unknown op code {0:#06x}")]
    UnknownOpCode(u16),
    #[error("unexpected op code {found:#06x} (expected {expected:#06x})")]
    UnexpectedOpCode { expected: u16, found: u16 },
    #[error("unknown URB command {0:#x}")]
    UnknownCommand(u32),
    #[error("invalid direction {0}")]
    Direction(u32),
    #[error("invalid endpoint number {0}")]
    Endpoint(u32),
    #[error("transfer length {0} out of range")]
    TransferLength(i32),
    #[error("actual length {actual} exceeds the {limit} bytes the request allows")]
    ActualLength { actual: i32, limit: u32 },
    #[error("number of isochronous packets {0} out of range")]
    IsoPackets(i32),
    #[error("isochronous packets are inconsistent: {0}")]
    IsoLayout(&'static str),
    #[error("device list of {0} devices is too long")]
    DeviceCount(u32),
    #[error("{field} is not NUL-terminated or not UTF-8")]
    Text { field: &'static str },
    #[error("{field} of {len} bytes does not fit in {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("RET_SUBMIT for unknown seqnum {0}")]
    UnknownSeqnum(u32),
    /// A message to encode contradicts itself (a caller's mistake, caught
    /// before it would desynchronise the peer's parser).
    #[error("inconsistent message: {0}")]
    Inconsistent(&'static str),
}
