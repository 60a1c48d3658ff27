//! Decode → re-encode → decode properties over arbitrary input.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/packet.rs` includes
//! this file by path) and by the stable pseudo-random test, so that CI checks
//! the same properties the fuzzer does. `check_packet` must never panic
//! except on a real codec bug.
//!
//! For every input:
//! * a decode that needs more bytes (`Ok(None)`) or fails leaves the buffer
//!   exactly as it was;
//! * a decode that succeeds consumes one packet and leaves what follows
//!   intact, and every proper prefix of that packet is `Ok(None)`;
//! * the decoded packet re-encodes to as many bytes as were consumed, equal
//!   to the input except for hello's version bytes after its NUL (which the
//!   decoder does not keep), and decodes back to the same packet.

#![allow(dead_code)]

use std::ops::Range;

use bytes::BytesMut;
use usbredir_proto::{Body, Caps, Header, Packet, Sender, VERSION_LEN};

/// Proper prefix lengths worth trying for a packet of `len` bytes: the
/// empty one, around the header boundaries and a few in the body.
fn prefixes(len: usize) -> impl Iterator<Item = usize> {
    [
        0,
        1,
        11,
        12,
        13,
        15,
        16,
        17,
        len / 2,
        len.saturating_sub(2),
        len.saturating_sub(1),
    ]
    .into_iter()
    .filter(move |&n| n < len)
}

/// The bytes of the wire form the decoder does not keep.
fn ignored(packet: &Packet, caps: Caps) -> Option<Range<usize>> {
    match &packet.body {
        Body::Hello(h) => {
            let start = Header::wire_len(caps);
            Some(start + h.version.len() + 1..start + VERSION_LEN)
        }
        _ => None,
    }
}

/// The property for one stream of bytes. Returns the packet if one decoded.
pub fn roundtrip(input: &[u8], caps: Caps, sender: Sender) -> Option<Packet> {
    let mut buf = BytesMut::from(input);
    let packet = match Packet::decode(&mut buf, caps, sender) {
        Ok(Some(packet)) => packet,
        Ok(None) | Err(_) => {
            assert_eq!(&buf[..], input, "an undecoded buffer was modified");
            return None;
        }
    };
    let consumed = input.len() - buf.len();
    assert!(consumed > 0, "a packet of no bytes");
    assert_eq!(
        &buf[..],
        &input[consumed..],
        "the bytes after the packet changed"
    );
    for n in prefixes(consumed) {
        let mut part = BytesMut::from(&input[..n]);
        let got = Packet::decode(&mut part, caps, sender);
        assert!(
            matches!(got, Ok(None)),
            "a {n}-byte prefix of a {consumed}-byte packet gave {got:?}"
        );
        assert_eq!(&part[..], &input[..n]);
    }

    let mut wire = BytesMut::new();
    if let Err(e) = packet.encode(caps, sender, &mut wire) {
        panic!("{packet:?} was decoded but does not encode: {e}");
    }
    assert_eq!(wire.len(), consumed, "re-encoded length differs");
    let skip = ignored(&packet, caps).unwrap_or_default();
    for i in 0..consumed {
        if !skip.contains(&i) {
            assert_eq!(
                wire[i], input[i],
                "byte {i} differs after re-encoding {packet:?}"
            );
        }
    }
    let mut again = wire.clone();
    let back = Packet::decode(&mut again, caps, sender).expect("re-encoded packet decodes");
    assert_eq!(back.as_ref(), Some(&packet), "decode(encode(p)) != p");
    assert!(again.is_empty(), "re-decoding left bytes behind");
    Some(packet)
}

/// The negotiated capabilities and sender an input selects, and the stream.
/// Byte 0 is the capability word (the eight capabilities of protocol 0.7,
/// bit for bit, not sanitized), bit 0 of byte 1 the sender (0 the guest, 1
/// the host).
pub fn split_input(input: &[u8]) -> Option<(Caps, Sender, &[u8])> {
    let (&caps, rest) = input.split_first()?;
    let (&sel, rest) = rest.split_first()?;
    let sender = if sel & 1 == 0 {
        Sender::Guest
    } else {
        Sender::Host
    };
    Some((Caps::from_bits(u32::from(caps)), sender, rest))
}

/// The selector bytes `split_input` reads back as `caps` and `sender`.
pub fn selector(caps: Caps, sender: Sender) -> [u8; 2] {
    [caps.bits() as u8, u8::from(sender == Sender::Host)]
}

/// Arbitrary bytes as `split_input` lays them out. True if a packet was
/// decoded.
pub fn check_packet(input: &[u8]) -> bool {
    let Some((caps, sender, stream)) = split_input(input) else {
        return false;
    };
    roundtrip(stream, caps, sender).is_some()
}
