//! Decode → re-encode → decode properties over arbitrary input.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs` include this
//! file by path) and by the stable pseudo-random test, so that CI checks the
//! same properties the fuzzers do. Each `check_*` must never panic except on
//! a real codec bug.
//!
//! For every input:
//! * a decode that needs more bytes (`Ok(None)`) or fails leaves the buffer
//!   exactly as it was;
//! * a decode that succeeds consumes one message and leaves what follows
//!   intact, and every proper prefix of that message is `Ok(None)`;
//! * the decoded message re-encodes to as many bytes as were consumed, equal
//!   to the input except in padding/ignored fields, and decodes back to the
//!   same message;
//! * `CmdMessage::missing` agrees with `CmdMessage::decode` about whether a
//!   client message is whole, and once its header is in, adding the bytes it
//!   asks for makes it whole.

#![allow(dead_code)]

use std::fmt::Debug;
use std::ops::Range;

use bytes::BytesMut;
use usbip_proto::{
    op_code, CmdMessage, Direction, OpReply, OpRequest, ProtoError, RetMessage, SubmitInfo,
};

/// Proper prefix lengths worth trying for a message of `len` bytes: the
/// empty one, the header boundaries and a few in the body.
fn prefixes(len: usize) -> impl Iterator<Item = usize> {
    [
        0,
        1,
        7,
        8,
        39,
        40,
        47,
        48,
        49,
        len / 2,
        len.saturating_sub(1),
    ]
    .into_iter()
    .filter(move |&n| n < len)
}

/// The generic property. `ignored` gives the byte range of the wire form the
/// decoder does not keep (padding, request status, text after its NUL), which
/// the encoder therefore normalises.
pub fn roundtrip<M: PartialEq + Debug>(
    input: &[u8],
    decode: impl Fn(&mut BytesMut) -> Result<Option<M>, ProtoError>,
    encode: impl Fn(&M, &mut BytesMut) -> Result<(), ProtoError>,
    ignored: impl Fn(&M, usize) -> Option<Range<usize>>,
) -> Option<M> {
    let mut buf = BytesMut::from(input);
    let msg = match decode(&mut buf) {
        Ok(Some(msg)) => msg,
        Ok(None) | Err(_) => {
            assert_eq!(&buf[..], input, "an undecoded buffer was modified");
            return None;
        }
    };
    let consumed = input.len() - buf.len();
    assert!(consumed > 0, "a message of no bytes");
    assert_eq!(
        &buf[..],
        &input[consumed..],
        "the bytes after the message changed"
    );
    for n in prefixes(consumed) {
        let mut part = BytesMut::from(&input[..n]);
        let got = decode(&mut part);
        assert!(
            matches!(got, Ok(None)),
            "a {n}-byte prefix of a {consumed}-byte message gave {got:?}"
        );
        assert_eq!(&part[..], &input[..n]);
    }

    let mut wire = BytesMut::new();
    if let Err(e) = encode(&msg, &mut wire) {
        panic!("{msg:?} was decoded but does not encode: {e}");
    }
    assert_eq!(wire.len(), consumed, "re-encoded length differs");
    let skip = ignored(&msg, consumed).unwrap_or_default();
    for i in 0..consumed {
        if !skip.contains(&i) {
            assert_eq!(
                wire[i], input[i],
                "byte {i} differs after re-encoding {msg:?}"
            );
        }
    }
    let mut again = wire.clone();
    let back = decode(&mut again).expect("re-encoded message decodes");
    assert_eq!(back.as_ref(), Some(&msg), "decode(encode(m)) != m");
    assert!(again.is_empty(), "re-decoding left bytes behind");
    Some(msg)
}

/// Client-to-server URB messages from arbitrary bytes. True if a message
/// was decoded.
pub fn check_cmd(input: &[u8]) -> bool {
    missing_agrees(input);
    roundtrip(
        input,
        CmdMessage::decode,
        |m, dst| m.encode(dst),
        |m, _| match m {
            CmdMessage::Submit(_) => None,
            // usbip_header_cmd_unlink is 4 bytes of the 28-byte union.
            CmdMessage::Unlink(_) => Some(24..48),
        },
    )
    .is_some()
}

fn missing_agrees(input: &[u8]) {
    let missing = CmdMessage::missing(input);
    let got = CmdMessage::decode(&mut BytesMut::from(input));
    if missing == 0 {
        assert!(
            !matches!(got, Ok(None)),
            "nothing missing, yet decode waits for more"
        );
        return;
    }
    assert!(
        matches!(got, Ok(None)),
        "{missing} bytes missing, yet decode gave {got:?}"
    );
    if input.len() >= usbip_proto::URB_HEADER_LEN {
        let mut whole = BytesMut::from(input);
        whole.resize(input.len() + missing, 0);
        assert_eq!(CmdMessage::missing(&whole), 0);
        let got = CmdMessage::decode(&mut whole);
        assert!(
            !matches!(got, Ok(None)),
            "{missing} bytes added, decode still waits"
        );
    }
}

fn ret_ignored(m: &RetMessage, _len: usize) -> Option<Range<usize>> {
    match m {
        // The 8 bytes of the union after usbip_header_ret_submit.
        RetMessage::Submit(_) => Some(40..48),
        RetMessage::Unlink(_) => Some(24..48),
    }
}

/// Server-to-client URB messages. The first input byte is the oracle: bit 0
/// the request's direction, bit 1 "seqnum unknown", bit 2 "use the whole
/// request" ([`RetMessage::decode_with`]), in which case the next 8 bytes are
/// the request's `transfer_buffer_length` and `number_of_packets`. True if
/// a message was decoded.
pub fn check_ret(input: &[u8]) -> bool {
    let Some((&sel, rest)) = input.split_first() else {
        return false;
    };
    let direction = if sel & 1 != 0 {
        Direction::In
    } else {
        Direction::Out
    };
    let known = sel & 2 == 0;
    if sel & 4 == 0 {
        return roundtrip(
            rest,
            |b| RetMessage::decode(b, |_| known.then_some(direction)),
            |m, dst| m.encode(dst),
            ret_ignored,
        )
        .is_some();
    }
    if rest.len() < 8 {
        return false;
    }
    let info = SubmitInfo {
        direction,
        transfer_buffer_length: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
        number_of_packets: u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
    };
    let decoded = roundtrip(
        &rest[8..],
        |b| RetMessage::decode_with(b, |_| known.then_some(info)),
        |m, dst| m.encode_for(&info, dst),
        ret_ignored,
    );
    // What passes the whole-request check passes the direction-only one.
    let Some(m) = decoded else {
        return false;
    };
    let mut buf = BytesMut::from(&rest[8..]);
    let loose = RetMessage::decode(&mut buf, |_| Some(direction));
    assert_eq!(loose, Ok(Some(m)));
    true
}

/// Requests and replies of the management phase. The first input byte picks
/// the request a client would be waiting on the reply to. True if a request
/// or a reply was decoded.
pub fn check_op(input: &[u8]) -> bool {
    let Some((&sel, rest)) = input.split_first() else {
        return false;
    };
    // Requests: the status field is unused and sent as 0; busid text after
    // its NUL is not kept.
    let request_decoded = roundtrip(
        rest,
        OpRequest::decode,
        |m, dst| m.encode(dst),
        |_, len| Some(4..len),
    )
    .is_some();
    let request = match sel % 3 {
        0 => op_code::REQ_DEVLIST,
        1 => op_code::REQ_IMPORT,
        // OP_REQ_DEVINFO: never answered, so no reply can be decoded for it.
        _ => 0x8002,
    };
    let reply_decoded = roundtrip(
        rest,
        |b| OpReply::decode(b, request),
        |m, dst| m.encode(dst),
        // Text after a NUL and the interfaces' padding byte are not kept;
        // the typed comparison covers everything else.
        |_, len| Some(8..len),
    )
    .is_some();
    request_decoded || reply_decoded
}
