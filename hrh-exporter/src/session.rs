//! The URB phase of one imported device, without I/O: it turns client
//! commands into device actions and device completions into replies, and
//! owns the unlink semantics of Linux's usbip-host.
//!
//! * An URB still queued when its CMD_UNLINK arrives is cancelled: the
//!   client gets RET_UNLINK with `-ECONNRESET` and never a RET_SUBMIT.
//! * An URB the device already answered (or answers while the cancel is on
//!   its way) loses nothing: the client gets its RET_SUBMIT, then RET_UNLINK
//!   with status 0.

use std::collections::HashMap;

use usbip_proto::{
    errno, transfer_flags, CmdMessage, CmdSubmit, CmdUnlink, Direction, IsoPacket, RetMessage,
    RetSubmit, RetUnlink, UrbHeader,
};

use crate::device::{Urb, UrbResult};

/// A client broke the protocol; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("URB for devid {found:#x}, but this connection imported devid {expected:#x}")]
    WrongDevid { expected: u32, found: u32 },
    #[error("seqnum {0} is already in flight")]
    DuplicateSeqnum(u32),
}

/// What the session asks its owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Submit(Urb),
    Cancel(u32),
    Reply(RetMessage),
}

/// What the session remembers of an URB in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    direction: Direction,
    buffer_len: u32,
    transfer_flags: u32,
    number_of_packets: u32,
    /// The seqnum of a CMD_UNLINK waiting for this URB's outcome.
    unlink: Option<u32>,
}

/// The URB state of one connection.
#[derive(Debug)]
pub struct Session {
    devid: u32,
    in_flight: HashMap<u32, InFlight>,
}

impl Session {
    /// A session for the device clients address as `devid`.
    pub fn new(devid: u32) -> Self {
        Self {
            devid,
            in_flight: HashMap::new(),
        }
    }

    /// URBs submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Handles one client message.
    pub fn on_command(&mut self, msg: CmdMessage) -> Result<Vec<Action>, SessionError> {
        let header = match &msg {
            CmdMessage::Submit(c) => c.header,
            CmdMessage::Unlink(u) => u.header,
        };
        if header.devid != self.devid {
            return Err(SessionError::WrongDevid {
                expected: self.devid,
                found: header.devid,
            });
        }
        match msg {
            CmdMessage::Submit(c) => self.submit(c),
            CmdMessage::Unlink(u) => Ok(self.unlink(u)),
        }
    }

    fn submit(&mut self, c: CmdSubmit) -> Result<Vec<Action>, SessionError> {
        let seqnum = c.header.seqnum;
        if self.in_flight.contains_key(&seqnum) {
            return Err(SessionError::DuplicateSeqnum(seqnum));
        }
        let is_in = c.header.direction == Direction::In;
        let endpoint = c.header.ep as u8 | if is_in { 0x80 } else { 0 };
        // The header's direction decides where data flows, as the pipe
        // does in Linux; the reply is fixed up to match it.
        let setup = (c.header.ep == 0).then_some(c.setup);
        self.in_flight.insert(
            seqnum,
            InFlight {
                direction: c.header.direction,
                buffer_len: c.transfer_buffer_length,
                transfer_flags: c.transfer_flags,
                number_of_packets: c.number_of_packets,
                unlink: None,
            },
        );
        Ok(vec![Action::Submit(Urb {
            seqnum,
            endpoint,
            setup,
            data: c.data,
            buffer_len: c.transfer_buffer_length,
            transfer_flags: c.transfer_flags,
            interval: c.interval,
            iso_packets: c.iso_packets,
        })])
    }

    fn unlink(&mut self, u: CmdUnlink) -> Vec<Action> {
        match self.in_flight.get_mut(&u.unlink_seqnum) {
            Some(urb) if urb.unlink.is_none() => {
                urb.unlink = Some(u.header.seqnum);
                vec![Action::Cancel(u.unlink_seqnum)]
            }
            // Already answered (or already being unlinked): nothing to
            // cancel, as usbip-host answers when it finds no such URB.
            _ => vec![Action::Reply(ret_unlink(u.header.seqnum, 0))],
        }
    }

    /// Handles a device completion. A completion for an unknown seqnum
    /// (impossible unless the device misbehaves) is dropped.
    pub fn on_completion(&mut self, mut r: UrbResult) -> Vec<RetMessage> {
        let Some(urb) = self.in_flight.remove(&r.seqnum) else {
            return Vec::new();
        };
        let cancelled = r.status == -errno::ECONNRESET;
        if let (Some(unlink), true) = (urb.unlink, cancelled) {
            return vec![ret_unlink(unlink, -errno::ECONNRESET)];
        }
        fix_up(&urb, &mut r);
        let submit = RetMessage::Submit(RetSubmit {
            header: reply_header(r.seqnum),
            status: r.status,
            actual_length: r.actual_length,
            start_frame: 0,
            number_of_packets: urb.number_of_packets,
            error_count: 0,
            data: r.data,
            iso_packets: r.iso_packets,
        });
        match urb.unlink {
            Some(unlink) => vec![submit, ret_unlink(unlink, 0)],
            None => vec![submit],
        }
    }
}

/// Makes a completion consistent with the request before it goes on the
/// wire, whatever the device reported.
fn fix_up(urb: &InFlight, r: &mut UrbResult) {
    match urb.direction {
        Direction::In => {
            // Never send more than the client's buffer holds.
            if r.data.len() > urb.buffer_len as usize {
                r.data.truncate(urb.buffer_len as usize);
                if r.status == 0 {
                    r.status = -errno::EOVERFLOW;
                }
            }
            r.actual_length = r.data.len() as u32;
            let short = r.actual_length < urb.buffer_len;
            if r.status == 0 && short && urb.transfer_flags & transfer_flags::SHORT_NOT_OK != 0 {
                r.status = -errno::EREMOTEIO;
            }
        }
        Direction::Out => {
            r.data.clear();
            r.actual_length = r.actual_length.min(urb.buffer_len);
        }
    }
    let packets = match urb.number_of_packets {
        0 | usbip_proto::NON_ISO_PACKETS => 0,
        n => n as usize,
    };
    if packets != r.iso_packets.len() {
        // A device that could not run the isochronous URB: report every
        // packet empty, with the URB's status, so the layout stays valid.
        r.iso_packets = vec![
            IsoPacket {
                status: r.status,
                ..IsoPacket::default()
            };
            packets
        ];
        if packets > 0 {
            r.data.clear();
            r.actual_length = 0;
        }
    }
}

/// Replies carry only the seqnum: Linux's usbip-host zeroes devid,
/// direction and ep, and clients rely on nothing else.
fn reply_header(seqnum: u32) -> UrbHeader {
    UrbHeader {
        seqnum,
        ..UrbHeader::default()
    }
}

fn ret_unlink(seqnum: u32, status: i32) -> RetMessage {
    RetMessage::Unlink(RetUnlink {
        header: reply_header(seqnum),
        status,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use usbip_proto::SetupPacket;

    use super::*;

    const DEVID: u32 = 0x0001_0002;

    fn header(seqnum: u32, direction: Direction, ep: u32) -> UrbHeader {
        UrbHeader {
            seqnum,
            devid: DEVID,
            direction,
            ep,
        }
    }

    fn bulk_in(seqnum: u32, len: u32) -> CmdMessage {
        CmdMessage::Submit(CmdSubmit {
            header: header(seqnum, Direction::In, 1),
            transfer_buffer_length: len,
            ..CmdSubmit::default()
        })
    }

    fn unlink(seqnum: u32, victim: u32) -> CmdMessage {
        CmdMessage::Unlink(CmdUnlink {
            header: header(seqnum, Direction::Out, 0),
            unlink_seqnum: victim,
        })
    }

    fn done(seqnum: u32, status: i32, data: &'static [u8]) -> UrbResult {
        UrbResult {
            seqnum,
            status,
            actual_length: data.len() as u32,
            data: Bytes::from_static(data),
            iso_packets: Vec::new(),
        }
    }

    #[test]
    fn submit_becomes_an_urb_with_the_direction_bit() {
        let mut s = Session::new(DEVID);
        let actions = s.on_command(bulk_in(7, 64)).unwrap();
        let [Action::Submit(urb)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!((urb.seqnum, urb.endpoint, urb.buffer_len), (7, 0x81, 64));
        assert_eq!(urb.setup, None);
    }

    #[test]
    fn control_urbs_carry_their_setup_packet() {
        let mut s = Session::new(DEVID);
        let setup = SetupPacket::from_bytes([0x80, 6, 0, 1, 0, 0, 18, 0]);
        let actions = s
            .on_command(CmdMessage::Submit(CmdSubmit {
                header: header(1, Direction::In, 0),
                transfer_buffer_length: 18,
                setup,
                ..CmdSubmit::default()
            }))
            .unwrap();
        let [Action::Submit(urb)] = &actions[..] else {
            panic!()
        };
        assert_eq!((urb.endpoint, urb.setup), (0x80, Some(setup)));
    }

    #[test]
    fn reply_zeroes_devid_direction_and_ep() {
        let mut s = Session::new(DEVID);
        s.on_command(bulk_in(3, 8)).unwrap();
        let replies = s.on_completion(done(3, 0, b"abc"));
        let [RetMessage::Submit(r)] = &replies[..] else {
            panic!()
        };
        assert_eq!(r.header, reply_header(3));
        assert_eq!(
            (r.status, r.actual_length, &r.data[..]),
            (0, 3, &b"abc"[..])
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn cancel_that_wins_sends_only_ret_unlink_econnreset() {
        let mut s = Session::new(DEVID);
        s.on_command(bulk_in(10, 512)).unwrap();
        assert_eq!(
            s.on_command(unlink(11, 10)).unwrap(),
            vec![Action::Cancel(10)]
        );
        let replies = s.on_completion(done(10, -errno::ECONNRESET, b""));
        assert_eq!(replies, vec![ret_unlink(11, -errno::ECONNRESET)]);
    }

    #[test]
    fn cancel_that_loses_sends_ret_submit_then_ret_unlink_zero() {
        let mut s = Session::new(DEVID);
        s.on_command(bulk_in(10, 512)).unwrap();
        s.on_command(unlink(11, 10)).unwrap();
        // The device answered before the cancel reached it: no data lost.
        let replies = s.on_completion(done(10, 0, b"data"));
        assert_eq!(replies.len(), 2);
        assert!(
            matches!(&replies[0], RetMessage::Submit(r) if r.header.seqnum == 10 && &r.data[..] == b"data")
        );
        assert_eq!(replies[1], ret_unlink(11, 0));
    }

    #[test]
    fn unlink_of_an_answered_urb_is_status_zero_at_once() {
        let mut s = Session::new(DEVID);
        s.on_command(bulk_in(10, 512)).unwrap();
        s.on_completion(done(10, 0, b"x"));
        assert_eq!(
            s.on_command(unlink(11, 10)).unwrap(),
            vec![Action::Reply(ret_unlink(11, 0))]
        );
    }

    #[test]
    fn wrong_devid_and_duplicate_seqnum_are_protocol_errors() {
        let mut s = Session::new(DEVID);
        let mut other = CmdSubmit {
            header: header(1, Direction::In, 1),
            ..CmdSubmit::default()
        };
        other.header.devid = 0x0002_0002;
        assert!(matches!(
            s.on_command(CmdMessage::Submit(other)),
            Err(SessionError::WrongDevid { .. })
        ));
        s.on_command(bulk_in(5, 8)).unwrap();
        assert_eq!(
            s.on_command(bulk_in(5, 8)),
            Err(SessionError::DuplicateSeqnum(5))
        );
    }

    #[test]
    fn short_in_with_short_not_ok_fails_with_eremoteio() {
        let mut s = Session::new(DEVID);
        s.on_command(CmdMessage::Submit(CmdSubmit {
            header: header(1, Direction::In, 1),
            transfer_buffer_length: 64,
            transfer_flags: transfer_flags::SHORT_NOT_OK,
            ..CmdSubmit::default()
        }))
        .unwrap();
        let replies = s.on_completion(done(1, 0, b"short"));
        let [RetMessage::Submit(r)] = &replies[..] else {
            panic!()
        };
        assert_eq!((r.status, r.actual_length), (-errno::EREMOTEIO, 5));
    }

    #[test]
    fn device_overrun_is_truncated_and_reported() {
        let mut s = Session::new(DEVID);
        s.on_command(bulk_in(1, 4)).unwrap();
        let replies = s.on_completion(done(1, 0, b"too long"));
        let [RetMessage::Submit(r)] = &replies[..] else {
            panic!()
        };
        assert_eq!((r.status, &r.data[..]), (-errno::EOVERFLOW, &b"too "[..]));
    }

    #[test]
    fn failed_iso_urb_keeps_a_valid_packet_layout() {
        let mut s = Session::new(DEVID);
        s.on_command(CmdMessage::Submit(CmdSubmit {
            header: header(1, Direction::In, 5),
            transfer_buffer_length: 300,
            number_of_packets: 3,
            iso_packets: (0..3)
                .map(|i| IsoPacket {
                    offset: i * 100,
                    length: 100,
                    ..IsoPacket::default()
                })
                .collect(),
            ..CmdSubmit::default()
        }))
        .unwrap();
        let replies = s.on_completion(done(1, -errno::EPIPE, b""));
        let [RetMessage::Submit(r)] = &replies[..] else {
            panic!()
        };
        assert_eq!(r.number_of_packets, 3);
        assert_eq!(r.iso_packets.len(), 3);
        assert!(r.iso_packets.iter().all(|p| p.actual_length == 0));
        // It must encode: vhci checks the packet lengths add up.
        replies[0].encode(&mut bytes::BytesMut::new()).unwrap();
    }
}
