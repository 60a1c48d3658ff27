//! Big-endian field access over a byte slice whose length the caller has
//! already checked.

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
        u16::from_be_bytes(self.bytes())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes())
    }

    pub(crate) fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.bytes())
    }
}

/// Reads a NUL-padded fixed-size text field.
pub(crate) fn text_field(raw: &[u8], field: &'static str) -> Result<String, crate::ProtoError> {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or(crate::ProtoError::Text { field })?;
    std::str::from_utf8(&raw[..end])
        .map(str::to_owned)
        .map_err(|_| crate::ProtoError::Text { field })
}

/// Writes `text` NUL-padded into a fixed-size field, keeping at least one NUL.
pub(crate) fn put_text_field(
    dst: &mut impl bytes::BufMut,
    text: &str,
    size: usize,
    field: &'static str,
) -> Result<(), crate::ProtoError> {
    if text.len() >= size {
        return Err(crate::ProtoError::TooLong {
            field,
            len: text.len(),
            max: size - 1,
        });
    }
    dst.put_slice(text.as_bytes());
    dst.put_bytes(0, size - text.len());
    Ok(())
}
