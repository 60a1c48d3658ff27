//! URB messages: CMD_SUBMIT, RET_SUBMIT, CMD_UNLINK, RET_UNLINK.
//!
//! Layout from `drivers/usb/usbip/usbip_common.h`: a 48-byte header (the
//! 20-byte `usbip_header_basic` and a 28-byte union), then the transfer data
//! (OUT data after CMD_SUBMIT, IN data after RET_SUBMIT), then, for
//! isochronous URBs, one 16-byte `usbip_iso_packet_descriptor` per packet.
//!
//! Whether data follows a RET_SUBMIT depends on the direction of the request
//! it answers, and the server zeroes `direction` in its replies (as Linux's
//! `stub_tx.c` does), so a client decodes replies with the help of its own
//! per-seqnum records.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::Reader;
use crate::{limits, ProtoError, SetupPacket};

/// Size of every URB message header.
pub const URB_HEADER_LEN: usize = 48;
/// Size of one isochronous packet descriptor.
pub const ISO_PACKET_LEN: usize = 16;
/// `number_of_packets` of a non-isochronous URB in the protocol document.
/// Linux's own client sends 0 instead; both mean "not isochronous".
pub const NON_ISO_PACKETS: u32 = 0xffff_ffff;

/// The `command` field.
pub mod command {
    pub const CMD_SUBMIT: u32 = 1;
    pub const CMD_UNLINK: u32 = 2;
    pub const RET_SUBMIT: u32 = 3;
    pub const RET_UNLINK: u32 = 4;
}

/// The URB `transfer_flags` bits that cross the wire (`USBIP_URB_*` of
/// `include/uapi/linux/usbip.h`, equal to Linux's `URB_*`).
pub mod transfer_flags {
    pub const SHORT_NOT_OK: u32 = 0x0001;
    pub const ISO_ASAP: u32 = 0x0002;
    /// vhci-hcd clears it (`tweak_transfer_flags()`); meaningless remotely.
    pub const NO_TRANSFER_DMA_MAP: u32 = 0x0004;
    pub const ZERO_PACKET: u32 = 0x0040;
    pub const NO_INTERRUPT: u32 = 0x0080;
    pub const FREE_BUFFER: u32 = 0x0100;
    pub const DIR_IN: u32 = 0x0200;
    /// vhci-hcd forwards it for URBs that came with a scatterlist, and
    /// Linux's usbip-host then allocates a scatter-gather buffer (splitting
    /// the URB if its host controller cannot do scatter-gather). The wire
    /// format is the same either way: the data is sent contiguously.
    pub const DMA_MAP_SG: u32 = 0x0004_0000;
}

/// Linux errno values used as URB status (always sent negated).
pub mod errno {
    pub const ENOENT: i32 = 2;
    pub const EXDEV: i32 = 18;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const EPIPE: i32 = 32;
    pub const EPROTO: i32 = 71;
    pub const EOVERFLOW: i32 = 75;
    pub const ECONNRESET: i32 = 104;
    pub const ESHUTDOWN: i32 = 108;
    pub const ETIMEDOUT: i32 = 110;
    pub const EREMOTEIO: i32 = 121;
}

/// Transfer direction (`USBIP_DIR_OUT` = 0, `USBIP_DIR_IN` = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Out,
    In,
}

impl Direction {
    fn from_wire(v: u32) -> Result<Self, ProtoError> {
        match v {
            0 => Ok(Direction::Out),
            1 => Ok(Direction::In),
            other => Err(ProtoError::Direction(other)),
        }
    }

    fn to_wire(self) -> u32 {
        match self {
            Direction::Out => 0,
            Direction::In => 1,
        }
    }
}

/// The fields every URB message starts with (`usbip_header_basic`, less
/// the command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UrbHeader {
    pub seqnum: u32,
    /// `busnum << 16 | devnum` of the imported device.
    pub devid: u32,
    pub direction: Direction,
    /// Endpoint number, 0..=15.
    pub ep: u32,
}

impl UrbHeader {
    fn encode(&self, command: u32, dst: &mut impl BufMut) {
        dst.put_u32(command);
        dst.put_u32(self.seqnum);
        dst.put_u32(self.devid);
        dst.put_u32(self.direction.to_wire());
        dst.put_u32(self.ep);
    }

    fn parse(r: &mut Reader<'_>) -> Result<(u32, Self), ProtoError> {
        let command = r.u32();
        let seqnum = r.u32();
        let devid = r.u32();
        let direction = Direction::from_wire(r.u32())?;
        let ep = r.u32();
        if ep > 15 {
            return Err(ProtoError::Endpoint(ep));
        }
        Ok((
            command,
            UrbHeader {
                seqnum,
                devid,
                direction,
                ep,
            },
        ))
    }
}

/// One isochronous packet (`usbip_iso_packet_descriptor`).
///
/// In a CMD_SUBMIT, `actual_length` is 0: `usb_submit_urb()` zeroes it (and
/// sets `status` to `-EXDEV`, which vhci-hcd then sends; usbip-win2 sends 0),
/// and Linux's usbip-host drops the connection unless the packets' actual
/// lengths add up to the new URB's actual length, 0. In a RET_SUBMIT they add
/// up to the reply's `actual_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IsoPacket {
    pub offset: u32,
    pub length: u32,
    pub actual_length: u32,
    pub status: i32,
}

/// `USBIP_CMD_SUBMIT`: submit an URB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdSubmit {
    pub header: UrbHeader,
    pub transfer_flags: u32,
    pub transfer_buffer_length: u32,
    pub start_frame: i32,
    /// As received: 0 or [`NON_ISO_PACKETS`] for a non-isochronous URB,
    /// otherwise `iso_packets.len()`.
    pub number_of_packets: u32,
    pub interval: i32,
    pub setup: SetupPacket,
    /// OUT data (`transfer_buffer_length` bytes); empty for IN.
    pub data: Bytes,
    pub iso_packets: Vec<IsoPacket>,
}

/// `USBIP_CMD_UNLINK`: cancel the URB with `unlink_seqnum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmdUnlink {
    pub header: UrbHeader,
    pub unlink_seqnum: u32,
}

/// `USBIP_RET_SUBMIT`: an URB completed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetSubmit {
    pub header: UrbHeader,
    /// 0 or a negated Linux errno ([`errno`]).
    pub status: i32,
    pub actual_length: u32,
    pub start_frame: i32,
    /// Echoes the request's value for a non-isochronous URB.
    pub number_of_packets: u32,
    pub error_count: i32,
    /// IN data, `actual_length` bytes (isochronous data compacted: the
    /// packets' actual lengths back to back); empty for OUT.
    pub data: Bytes,
    pub iso_packets: Vec<IsoPacket>,
}

/// `USBIP_RET_UNLINK`: the outcome of a CMD_UNLINK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetUnlink {
    pub header: UrbHeader,
    /// `-ECONNRESET` when the URB was cancelled, 0 when it had completed.
    pub status: i32,
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdMessage {
    Submit(CmdSubmit),
    Unlink(CmdUnlink),
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetMessage {
    Submit(RetSubmit),
    Unlink(RetUnlink),
}

/// Turns the raw `number_of_packets` into a packet count.
fn iso_count(raw: u32) -> Result<usize, ProtoError> {
    match raw {
        0 | NON_ISO_PACKETS => Ok(0),
        n if n <= limits::MAX_ISO_PACKETS => Ok(n as usize),
        n => Err(ProtoError::IsoPackets(n as i32)),
    }
}

/// A CMD_SUBMIT's data length and whole length on the wire: its header,
/// its OUT data, its isochronous packet descriptors.
fn submit_layout(
    direction: Direction,
    transfer_buffer_length: u32,
    packets: usize,
) -> (usize, usize) {
    let data_len = match direction {
        Direction::Out => transfer_buffer_length as usize,
        Direction::In => 0,
    };
    (
        data_len,
        URB_HEADER_LEN + data_len + packets * ISO_PACKET_LEN,
    )
}

fn parse_iso(raw: &[u8]) -> Vec<IsoPacket> {
    raw.chunks_exact(ISO_PACKET_LEN)
        .map(|c| {
            let mut r = Reader::new(c);
            IsoPacket {
                offset: r.u32(),
                length: r.u32(),
                actual_length: r.u32(),
                status: r.i32(),
            }
        })
        .collect()
}

fn put_iso(dst: &mut impl BufMut, packets: &[IsoPacket]) {
    for p in packets {
        dst.put_u32(p.offset);
        dst.put_u32(p.length);
        dst.put_u32(p.actual_length);
        dst.put_i32(p.status);
    }
}

fn transfer_len(raw: i32) -> Result<u32, ProtoError> {
    if raw < 0 || raw as u32 > limits::MAX_TRANSFER_LEN {
        return Err(ProtoError::TransferLength(raw));
    }
    Ok(raw as u32)
}

/// Every packet must lie inside the transfer buffer (Linux does not check
/// this, and its host controller drivers and `usbip_pad_iso()` trust it).
fn check_iso_layout(packets: &[IsoPacket], buffer_len: u32) -> Result<(), ProtoError> {
    for p in packets {
        let end = p.offset.checked_add(p.length);
        if end.is_none_or(|end| end > buffer_len) {
            return Err(ProtoError::IsoLayout("packet outside the transfer buffer"));
        }
    }
    Ok(())
}

/// Checks a CMD_SUBMIT's packets the way Linux's usbip-host receives them:
/// inside the buffer, and with actual lengths adding up to 0
/// (`usbip_recv_iso()` compares their sum with the freshly allocated URB's
/// `actual_length` and drops the connection when they differ).
fn check_iso_submit(packets: &[IsoPacket], buffer_len: u32) -> Result<(), ProtoError> {
    check_iso_layout(packets, buffer_len)?;
    if packets.iter().any(|p| p.actual_length != 0) {
        return Err(ProtoError::IsoLayout(
            "CMD_SUBMIT packet has a non-zero actual_length",
        ));
    }
    Ok(())
}

impl CmdSubmit {
    /// True when this URB carries isochronous packets.
    pub fn is_iso(&self) -> bool {
        !self.iso_packets.is_empty()
    }
}

impl CmdMessage {
    /// How many more bytes the message at the front of `src` needs before
    /// [`decode`](Self::decode) returns it: the rest of the header while that
    /// is incomplete, then the rest of the message; 0 once it is whole, or
    /// when the header is one `decode` refuses.
    pub fn missing(src: &[u8]) -> usize {
        let Some(header) = src.get(..URB_HEADER_LEN) else {
            return URB_HEADER_LEN - src.len();
        };
        let mut r = Reader::new(header);
        let Ok((command::CMD_SUBMIT, header)) = UrbHeader::parse(&mut r) else {
            return 0;
        };
        let _transfer_flags = r.u32();
        let length = transfer_len(r.i32());
        let _start_frame = r.i32();
        match (length, iso_count(r.u32())) {
            (Ok(length), Ok(packets)) => {
                let (_, total) = submit_layout(header.direction, length, packets);
                total.saturating_sub(src.len())
            }
            _ => 0,
        }
    }

    /// Decodes one client message from the front of `src`, consuming it.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, ProtoError> {
        if src.len() < URB_HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&src[..URB_HEADER_LEN]);
        let (command, header) = UrbHeader::parse(&mut r)?;
        match command {
            command::CMD_SUBMIT => {
                let transfer_flags = r.u32();
                let transfer_buffer_length = transfer_len(r.i32())?;
                let start_frame = r.i32();
                let number_of_packets = r.u32();
                let interval = r.i32();
                let setup = SetupPacket::from_bytes(r.bytes());
                let packets = iso_count(number_of_packets)?;
                let (data_len, total) =
                    submit_layout(header.direction, transfer_buffer_length, packets);
                if src.len() < total {
                    // Bounded by the checks above: at most MAX_TRANSFER_LEN
                    // plus MAX_ISO_PACKETS descriptors, and only once a
                    // whole, valid header has arrived.
                    src.reserve(total - src.len());
                    return Ok(None);
                }
                let iso_packets = parse_iso(&src[URB_HEADER_LEN + data_len..total]);
                check_iso_submit(&iso_packets, transfer_buffer_length)?;
                src.advance(URB_HEADER_LEN);
                let data = src.split_to(data_len).freeze();
                src.advance(packets * ISO_PACKET_LEN);
                Ok(Some(CmdMessage::Submit(CmdSubmit {
                    header,
                    transfer_flags,
                    transfer_buffer_length,
                    start_frame,
                    number_of_packets,
                    interval,
                    setup,
                    data,
                    iso_packets,
                })))
            }
            command::CMD_UNLINK => {
                let unlink_seqnum = r.u32();
                src.advance(URB_HEADER_LEN);
                Ok(Some(CmdMessage::Unlink(CmdUnlink {
                    header,
                    unlink_seqnum,
                })))
            }
            other => Err(ProtoError::UnknownCommand(other)),
        }
    }

    /// Appends the wire form to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<(), ProtoError> {
        match self {
            CmdMessage::Submit(c) => {
                let packets = iso_count(c.number_of_packets)?;
                if packets != c.iso_packets.len() {
                    return Err(ProtoError::IsoLayout("number_of_packets mismatch"));
                }
                transfer_len(c.transfer_buffer_length as i32)?;
                let expected_data = match c.header.direction {
                    Direction::Out => c.transfer_buffer_length as usize,
                    Direction::In => 0,
                };
                if c.data.len() != expected_data {
                    return Err(ProtoError::TransferLength(c.data.len() as i32));
                }
                check_iso_submit(&c.iso_packets, c.transfer_buffer_length)?;
                c.header.encode(command::CMD_SUBMIT, dst);
                dst.put_u32(c.transfer_flags);
                dst.put_u32(c.transfer_buffer_length);
                dst.put_i32(c.start_frame);
                dst.put_u32(c.number_of_packets);
                dst.put_i32(c.interval);
                dst.put_slice(&c.setup.to_bytes());
                dst.put_slice(&c.data);
                put_iso(dst, &c.iso_packets);
            }
            CmdMessage::Unlink(u) => {
                u.header.encode(command::CMD_UNLINK, dst);
                dst.put_u32(u.unlink_seqnum);
                dst.put_bytes(0, 24);
            }
        }
        Ok(())
    }
}

/// Checks an isochronous completion as Linux's vhci-hcd demands: the
/// packets' actual lengths add up to `actual_length` (`usbip_recv_iso()`
/// drops the connection otherwise, for OUT as well as IN), and none exceeds
/// its packet's length (the compacted IN data is spread back to the packets'
/// offsets by `usbip_pad_iso()`).
fn check_iso_completion(packets: &[IsoPacket], actual_length: u32) -> Result<(), ProtoError> {
    let mut sum: u64 = 0;
    for p in packets {
        if p.actual_length > p.length {
            return Err(ProtoError::IsoLayout(
                "packet actual_length exceeds its length",
            ));
        }
        sum += u64::from(p.actual_length);
    }
    if !packets.is_empty() && sum != u64::from(actual_length) {
        return Err(ProtoError::IsoLayout(
            "packet actual lengths do not add up to actual_length",
        ));
    }
    Ok(())
}

/// What a client remembers of a CMD_SUBMIT it sent, to frame and check the
/// RET_SUBMIT that answers it (the server repeats neither the direction nor
/// the buffer size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitInfo {
    pub direction: Direction,
    pub transfer_buffer_length: u32,
    /// As sent: 0 or [`NON_ISO_PACKETS`] for a non-isochronous URB.
    pub number_of_packets: u32,
}

impl From<&CmdSubmit> for SubmitInfo {
    fn from(c: &CmdSubmit) -> Self {
        Self {
            direction: c.header.direction,
            transfer_buffer_length: c.transfer_buffer_length,
            number_of_packets: c.number_of_packets,
        }
    }
}

/// How many packets a reply to `request` may carry. A request count out of
/// range (which no encoder here sends) admits the global limit, which
/// `iso_count()` enforces on the reply anyway.
fn packets_allowed(request: &SubmitInfo) -> usize {
    iso_count(request.number_of_packets).unwrap_or(limits::MAX_ISO_PACKETS as usize)
}

/// How far a RET_SUBMIT may go, from what the client knows of the request.
struct ReplyBounds {
    direction: Direction,
    max_actual_length: u32,
    max_packets: usize,
    /// The request's buffer, when known, for the packets' layout.
    buffer_len: Option<u32>,
}

impl RetMessage {
    /// Decodes one server message from the front of `src`, consuming it.
    /// `direction_of` tells the direction of the request with a given seqnum
    /// (`None` if the client never sent it), because the server zeroes it.
    ///
    /// Prefer [`RetMessage::decode_with`], which also holds the reply to the
    /// request's buffer size and packet count.
    pub fn decode(
        src: &mut BytesMut,
        direction_of: impl FnOnce(u32) -> Option<Direction>,
    ) -> Result<Option<Self>, ProtoError> {
        Self::decode_bounded(src, |seqnum| {
            direction_of(seqnum).map(|direction| ReplyBounds {
                direction,
                max_actual_length: limits::MAX_TRANSFER_LEN,
                max_packets: limits::MAX_ISO_PACKETS as usize,
                buffer_len: None,
            })
        })
    }

    /// Like [`RetMessage::decode`], with the whole request: a RET_SUBMIT is
    /// rejected if its `actual_length` exceeds the request's
    /// `transfer_buffer_length` (Linux's `usbip_recv_xbuff()` treats that as
    /// a malicious packet and drops the connection), if it has more
    /// isochronous packets than the request, or if a packet lies outside the
    /// request's buffer. `None` from `request_of` means an unknown seqnum.
    pub fn decode_with(
        src: &mut BytesMut,
        request_of: impl FnOnce(u32) -> Option<SubmitInfo>,
    ) -> Result<Option<Self>, ProtoError> {
        Self::decode_bounded(src, |seqnum| {
            let req = request_of(seqnum)?;
            Some(ReplyBounds {
                direction: req.direction,
                max_actual_length: req.transfer_buffer_length,
                max_packets: packets_allowed(&req),
                buffer_len: Some(req.transfer_buffer_length),
            })
        })
    }

    fn decode_bounded(
        src: &mut BytesMut,
        bounds_of: impl FnOnce(u32) -> Option<ReplyBounds>,
    ) -> Result<Option<Self>, ProtoError> {
        if src.len() < URB_HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(&src[..URB_HEADER_LEN]);
        let (command, header) = UrbHeader::parse(&mut r)?;
        match command {
            command::RET_SUBMIT => {
                let status = r.i32();
                let actual_length = transfer_len(r.i32())?;
                let start_frame = r.i32();
                let number_of_packets = r.u32();
                let error_count = r.i32();
                let packets = iso_count(number_of_packets)?;
                let bounds =
                    bounds_of(header.seqnum).ok_or(ProtoError::UnknownSeqnum(header.seqnum))?;
                if actual_length > bounds.max_actual_length {
                    return Err(ProtoError::ActualLength {
                        actual: actual_length as i32,
                        limit: bounds.max_actual_length,
                    });
                }
                if packets > bounds.max_packets {
                    return Err(ProtoError::IsoPackets(number_of_packets as i32));
                }
                let data_len = match bounds.direction {
                    Direction::In => actual_length as usize,
                    Direction::Out => 0,
                };
                let total = URB_HEADER_LEN + data_len + packets * ISO_PACKET_LEN;
                if src.len() < total {
                    // Bounded by the checks above: at most MAX_TRANSFER_LEN
                    // plus MAX_ISO_PACKETS descriptors, and only once a
                    // whole, valid header has arrived.
                    src.reserve(total - src.len());
                    return Ok(None);
                }
                let iso_packets = parse_iso(&src[URB_HEADER_LEN + data_len..total]);
                if let Some(buffer_len) = bounds.buffer_len {
                    check_iso_layout(&iso_packets, buffer_len)?;
                }
                check_iso_completion(&iso_packets, actual_length)?;
                src.advance(URB_HEADER_LEN);
                let data = src.split_to(data_len).freeze();
                src.advance(packets * ISO_PACKET_LEN);
                Ok(Some(RetMessage::Submit(RetSubmit {
                    header,
                    status,
                    actual_length,
                    start_frame,
                    number_of_packets,
                    error_count,
                    data,
                    iso_packets,
                })))
            }
            command::RET_UNLINK => {
                let status = r.i32();
                src.advance(URB_HEADER_LEN);
                Ok(Some(RetMessage::Unlink(RetUnlink { header, status })))
            }
            other => Err(ProtoError::UnknownCommand(other)),
        }
    }

    /// Appends the wire form to `dst`. For a RET_SUBMIT, `data` must be empty
    /// (an OUT request) or exactly `actual_length` bytes (an IN request).
    ///
    /// Linux's `stub_tx.c` sends `devid`, `direction` and `ep` as 0 in its
    /// replies; a header of `UrbHeader { seqnum, ..Default::default() }`
    /// matches it byte for byte.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<(), ProtoError> {
        match self {
            RetMessage::Submit(s) => {
                let packets = iso_count(s.number_of_packets)?;
                if packets != s.iso_packets.len() {
                    return Err(ProtoError::IsoLayout("number_of_packets mismatch"));
                }
                transfer_len(s.actual_length as i32)?;
                let data_present = !s.data.is_empty();
                if data_present && s.data.len() != s.actual_length as usize {
                    return Err(ProtoError::ActualLength {
                        actual: s.data.len() as i32,
                        limit: s.actual_length,
                    });
                }
                check_iso_completion(&s.iso_packets, s.actual_length)?;
                s.header.encode(command::RET_SUBMIT, dst);
                dst.put_i32(s.status);
                dst.put_u32(s.actual_length);
                dst.put_i32(s.start_frame);
                dst.put_u32(s.number_of_packets);
                dst.put_i32(s.error_count);
                dst.put_bytes(0, 8);
                dst.put_slice(&s.data);
                put_iso(dst, &s.iso_packets);
            }
            RetMessage::Unlink(u) => {
                u.header.encode(command::RET_UNLINK, dst);
                dst.put_i32(u.status);
                dst.put_bytes(0, 24);
            }
        }
        Ok(())
    }

    /// Like [`RetMessage::encode`], checked against the request it answers
    /// as [`RetMessage::decode_with`] checks it on the client: data present
    /// exactly for an IN request (a missing IN payload would make the client
    /// read the next message as data), `actual_length` within the request's
    /// buffer, no more packets than requested, all inside the buffer.
    pub fn encode_for(
        &self,
        request: &SubmitInfo,
        dst: &mut impl BufMut,
    ) -> Result<(), ProtoError> {
        if let RetMessage::Submit(s) = self {
            let expected_data = match request.direction {
                Direction::In => s.actual_length as usize,
                Direction::Out => 0,
            };
            if s.data.len() != expected_data {
                return Err(ProtoError::Inconsistent(
                    "RET_SUBMIT data does not match the request's direction",
                ));
            }
            if s.actual_length > request.transfer_buffer_length {
                return Err(ProtoError::ActualLength {
                    actual: s.actual_length as i32,
                    limit: request.transfer_buffer_length,
                });
            }
            if s.iso_packets.len() > packets_allowed(request) {
                return Err(ProtoError::IsoPackets(s.number_of_packets as i32));
            }
            check_iso_layout(&s.iso_packets, request.transfer_buffer_length)?;
        }
        self.encode(dst)
    }
}
