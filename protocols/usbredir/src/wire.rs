//! Little-endian field access over a byte slice whose length the caller has
//! already checked.

use bytes::BufMut;

use crate::ProtoError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// `N` little-endian u16s.
    pub(crate) fn u16s<const N: usize>(&mut self) -> [u16; N] {
        std::array::from_fn(|_| self.u16())
    }

    /// `N` little-endian u32s.
    pub(crate) fn u32s<const N: usize>(&mut self) -> [u32; N] {
        std::array::from_fn(|_| self.u32())
    }
}

/// Reads text that ends at its first NUL, which must be there.
pub(crate) fn nul_terminated(raw: &[u8], field: &'static str) -> Result<String, ProtoError> {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtoError::Text { field })?;
    std::str::from_utf8(&raw[..end])
        .map(str::to_owned)
        .map_err(|_| ProtoError::Text { field })
}

/// Checks that `text` can travel NUL-terminated in `max + 1` bytes: the
/// peer reads up to the first NUL, so an embedded one would cut it short.
pub(crate) fn check_text(text: &str, max: usize, field: &'static str) -> Result<(), ProtoError> {
    if text.len() > max || text.contains('\0') {
        return Err(ProtoError::TextTooLong {
            field,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

/// Writes `text` NUL-padded into a field of `size` bytes; `check_text` with
/// `size - 1` has passed.
pub(crate) fn put_padded(dst: &mut impl BufMut, text: &str, size: usize) {
    dst.put_slice(text.as_bytes());
    dst.put_bytes(0, size - text.len());
}
