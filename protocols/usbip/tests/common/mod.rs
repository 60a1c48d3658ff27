//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod property;

use std::fmt::Debug;

use bytes::BytesMut;
use usbip_proto::ProtoError;

/// Concatenates fixture pieces (hex literals, text fields, payloads).
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A fixed-size text field as C's `char field[N]` holds it: the text, then
/// NUL bytes to the end (what usbipd's `strncpy()` into a zeroed struct
/// produces).
pub fn nul_padded<const N: usize>(text: &[u8]) -> [u8; N] {
    assert!(text.len() < N, "fixture text does not fit");
    let mut out = [0; N];
    out[..text.len()].copy_from_slice(text);
    out
}

/// Feeds `wire` to `decode` one byte at a time, as a slow TCP peer would:
/// every proper prefix must be `Ok(None)` with the buffer untouched, and the
/// last byte must yield exactly one message consuming everything. Then
/// decodes `wire` followed by a trailer and checks the trailer is left
/// intact.
pub fn decode_bytewise<M: Debug + PartialEq>(
    wire: &[u8],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<M>, ProtoError>,
) -> M {
    let mut buf = BytesMut::new();
    for (i, &b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        if i + 1 < wire.len() {
            let got = decode(&mut buf);
            assert!(
                matches!(got, Ok(None)),
                "after {} of {} bytes: {got:?}",
                i + 1,
                wire.len()
            );
            assert_eq!(&buf[..], &wire[..=i], "a partial decode consumed bytes");
        }
    }
    let msg = decode(&mut buf)
        .expect("complete message decodes")
        .expect("complete message is not Ok(None)");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());

    let trailer = [0xde, 0xad, 0xbe, 0xef, 0x00, 0x01];
    let mut buf = BytesMut::from(&cat(&[wire, &trailer])[..]);
    let again = decode(&mut buf).expect("decodes").expect("complete");
    assert_eq!(again, msg);
    assert_eq!(&buf[..], &trailer, "bytes after the message were touched");
    msg
}
