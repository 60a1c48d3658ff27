//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod property;

use bytes::BytesMut;
use usbredir_proto::{Caps, Packet, ProtoError, Sender};

/// Concatenates fixture pieces (hex literals, text fields, payloads).
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A fixed-size text field as C's `char field[N]` holds it after
/// `snprintf()`: the text, then NUL bytes to the end.
pub fn nul_padded<const N: usize>(text: &[u8]) -> [u8; N] {
    assert!(text.len() < N, "fixture text does not fit");
    let mut out = [0; N];
    out[..text.len()].copy_from_slice(text);
    out
}

/// Decodes from a fresh buffer holding `wire`, checking that a failed or
/// partial decode leaves it untouched.
pub fn decode(wire: &[u8], caps: Caps, sender: Sender) -> Result<Option<Packet>, ProtoError> {
    let mut buf = BytesMut::from(wire);
    let res = Packet::decode(&mut buf, caps, sender);
    match &res {
        Ok(Some(_)) => {}
        _ => assert_eq!(&buf[..], wire, "a failed or partial decode consumed bytes"),
    }
    res
}

/// Encodes, panicking on error.
pub fn encode(packet: &Packet, caps: Caps, sender: Sender) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.encode(caps, sender, &mut out).expect("encodes");
    out.to_vec()
}

/// Feeds `wire` to the decoder one byte at a time, as a slow peer would:
/// every proper prefix must be `Ok(None)` with the buffer untouched, and the
/// last byte must yield exactly one packet consuming everything. Then
/// decodes `wire` followed by a trailer and checks the trailer is left
/// intact, and that the packet encodes back to `wire`.
pub fn decode_bytewise(wire: &[u8], caps: Caps, sender: Sender) -> Packet {
    let mut buf = BytesMut::new();
    for (i, &b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        if i + 1 < wire.len() {
            let got = Packet::decode(&mut buf, caps, sender);
            assert!(
                matches!(got, Ok(None)),
                "after {} of {} bytes: {got:?}",
                i + 1,
                wire.len()
            );
            assert_eq!(&buf[..], &wire[..=i], "a partial decode consumed bytes");
        }
    }
    let packet = Packet::decode(&mut buf, caps, sender)
        .expect("complete packet decodes")
        .expect("complete packet is not Ok(None)");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());

    let trailer = [0xde, 0xad, 0xbe, 0xef, 0x00, 0x01];
    let mut buf = BytesMut::from(&cat(&[wire, &trailer])[..]);
    let again = Packet::decode(&mut buf, caps, sender)
        .expect("decodes")
        .expect("complete");
    assert_eq!(again, packet);
    assert_eq!(&buf[..], &trailer, "bytes after the packet were touched");
    assert_eq!(encode(&packet, caps, sender), wire, "re-encoding differs");
    packet
}
