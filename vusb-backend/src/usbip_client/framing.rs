//! Cutting the server's byte stream into replies, so that a reply that is
//! wrong but well framed fails only its own request.
//!
//! The codec frames a RET_SUBMIT by the direction of the request it
//! answers. For a seqnum the client does not know, the reply's own
//! `direction` field is used (servers that zero it send no data for such a
//! reply as far as the client can tell). Isochronous descriptors that do
//! not add up are a fault of that one reply: the message is skipped whole
//! and reported as [`Reply::Malformed`]. Anything that makes the stream
//! unreadable (an unknown command, lengths out of range) is an error: the
//! connection cannot continue.

use bytes::{Buf, BytesMut};
use usbip_proto::{command, Direction, ProtoError, RetMessage, ISO_PACKET_LEN, URB_HEADER_LEN};

/// One reply from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Message(RetMessage),
    /// A RET_SUBMIT for `seqnum` whose isochronous descriptors contradict
    /// themselves; it has been consumed.
    Malformed {
        seqnum: u32,
        error: ProtoError,
    },
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Takes the next whole reply off `buf`: `Ok(None)` until one has arrived.
/// `direction_of` gives the direction of the request a seqnum belongs to.
pub fn next_reply(
    buf: &mut BytesMut,
    direction_of: impl FnOnce(u32) -> Option<Direction>,
) -> Result<Option<Reply>, ProtoError> {
    if buf.len() < URB_HEADER_LEN {
        return Ok(None);
    }
    // Only 1 means IN; any other value the codec rejects before asking.
    let stated = if be_u32(buf, 12) == 1 {
        Direction::In
    } else {
        Direction::Out
    };
    let mut used = stated;
    let decoded = RetMessage::decode(buf, |seqnum| {
        used = direction_of(seqnum).unwrap_or(stated);
        Some(used)
    });
    match decoded {
        Ok(message) => Ok(message.map(Reply::Message)),
        Err(error @ ProtoError::IsoLayout(_)) => {
            // The codec checks the descriptors only once the whole message
            // is in the buffer, after its header passed every check.
            let len = ret_submit_len(buf, used).ok_or_else(|| error.clone())?;
            let seqnum = be_u32(buf, 4);
            buf.advance(len);
            Ok(Some(Reply::Malformed { seqnum, error }))
        }
        Err(e) => Err(e),
    }
}

/// Wire size of the RET_SUBMIT at the front of `buf`, if it is one and is
/// all there.
fn ret_submit_len(buf: &[u8], direction: Direction) -> Option<usize> {
    if buf.len() < URB_HEADER_LEN || be_u32(buf, 0) != command::RET_SUBMIT {
        return None;
    }
    let actual_length = usize::try_from(be_u32(buf, 24)).ok()?;
    let packets = match be_u32(buf, 32) {
        0 | usbip_proto::NON_ISO_PACKETS => 0,
        n => usize::try_from(n).ok()?,
    };
    let data = match direction {
        Direction::In => actual_length,
        Direction::Out => 0,
    };
    let len = URB_HEADER_LEN
        .checked_add(data)?
        .checked_add(packets.checked_mul(ISO_PACKET_LEN)?)?;
    (buf.len() >= len).then_some(len)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes};
    use usbip_proto::{RetSubmit, RetUnlink, UrbHeader};

    use super::*;

    fn header(seqnum: u32) -> UrbHeader {
        UrbHeader {
            seqnum,
            ..UrbHeader::default()
        }
    }

    fn encoded(msg: RetMessage) -> BytesMut {
        let mut b = BytesMut::new();
        msg.encode(&mut b).unwrap();
        b
    }

    /// A RET_SUBMIT header from its ten big-endian words.
    fn raw_header(words: [u32; 10]) -> BytesMut {
        let mut b = BytesMut::new();
        for w in words {
            b.put_u32(w);
        }
        b.put_bytes(0, 8);
        b
    }

    #[test]
    fn frames_in_data_by_the_requests_direction() {
        let mut buf = encoded(RetMessage::Submit(RetSubmit {
            header: header(5),
            actual_length: 3,
            data: Bytes::from_static(b"abc"),
            ..RetSubmit::default()
        }));
        buf.extend_from_slice(&encoded(RetMessage::Unlink(RetUnlink {
            header: header(6),
            status: 0,
        })));
        let first = next_reply(&mut buf, |s| (s == 5).then_some(Direction::In)).unwrap();
        let Some(Reply::Message(RetMessage::Submit(r))) = first else {
            panic!("{first:?}")
        };
        assert_eq!(&r.data[..], b"abc");
        let second = next_reply(&mut buf, |_| None).unwrap();
        assert!(matches!(
            second,
            Some(Reply::Message(RetMessage::Unlink(_)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn waits_for_the_whole_message() {
        let full = encoded(RetMessage::Submit(RetSubmit {
            header: header(5),
            actual_length: 3,
            data: Bytes::from_static(b"abc"),
            ..RetSubmit::default()
        }));
        let mut buf = BytesMut::from(&full[..40]);
        assert_eq!(next_reply(&mut buf, |_| Some(Direction::In)), Ok(None));
        buf.extend_from_slice(&full[40..50]);
        assert_eq!(next_reply(&mut buf, |_| Some(Direction::In)), Ok(None));
        assert_eq!(buf.len(), 50, "nothing consumed");
    }

    #[test]
    fn an_unknown_seqnum_is_framed_by_its_own_direction_field() {
        // direction 1 and 4 data bytes, then a good reply.
        let mut buf = raw_header([3, 99, 0, 1, 0, 0, 4, 0, 0, 0]);
        buf.extend_from_slice(b"junk");
        buf.extend_from_slice(&encoded(RetMessage::Submit(RetSubmit {
            header: header(1),
            ..RetSubmit::default()
        })));
        let lookup = |s: u32| (s == 1).then_some(Direction::Out);
        let Some(Reply::Message(RetMessage::Submit(r))) = next_reply(&mut buf, lookup).unwrap()
        else {
            panic!()
        };
        assert_eq!((r.header.seqnum, &r.data[..]), (99, &b"junk"[..]));
        let Some(Reply::Message(RetMessage::Submit(r))) = next_reply(&mut buf, lookup).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.header.seqnum, 1);
    }

    #[test]
    fn inconsistent_iso_descriptors_skip_only_that_reply() {
        // IN, actual_length 4, 2 packets whose actual lengths sum to 5.
        let mut buf = raw_header([3, 8, 0, 0, 0, 0, 4, 0, 2, 0]);
        buf.extend_from_slice(b"dddd");
        for (offset, actual) in [(0u32, 2u32), (8, 3)] {
            buf.put_u32(offset);
            buf.put_u32(8);
            buf.put_u32(actual);
            buf.put_u32(0);
        }
        buf.extend_from_slice(&encoded(RetMessage::Unlink(RetUnlink {
            header: header(9),
            status: 0,
        })));
        let r = next_reply(&mut buf, |_| Some(Direction::In)).unwrap();
        assert!(
            matches!(
                r,
                Some(Reply::Malformed {
                    seqnum: 8,
                    error: ProtoError::IsoLayout(_)
                })
            ),
            "{r:?}"
        );
        let next = next_reply(&mut buf, |_| None).unwrap();
        assert!(
            matches!(next, Some(Reply::Message(RetMessage::Unlink(u))) if u.header.seqnum == 9)
        );
    }

    #[test]
    fn a_packet_longer_than_itself_is_malformed_too() {
        // OUT, actual_length 9, one packet of 4 bytes claiming 9.
        let mut buf = raw_header([3, 8, 0, 0, 0, 0, 9, 0, 1, 0]);
        for w in [0u32, 4, 9, 0] {
            buf.put_u32(w);
        }
        let r = next_reply(&mut buf, |_| Some(Direction::Out)).unwrap();
        assert!(
            matches!(r, Some(Reply::Malformed { seqnum: 8, .. })),
            "{r:?}"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..]);
        assert!(next_reply(&mut buf, |_| None).is_err());
        let mut bad_direction = raw_header([3, 1, 0, 7, 0, 0, 0, 0, 0, 0]);
        assert!(next_reply(&mut bad_direction, |_| None).is_err());
        let mut too_long = raw_header([3, 1, 0, 0, 0, 0, 0x7fff_ffff, 0, 0, 0]);
        assert!(next_reply(&mut too_long, |_| Some(Direction::In)).is_err());
    }
}
