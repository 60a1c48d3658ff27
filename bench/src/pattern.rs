//! The data pattern of the loopback dongle's source endpoint: the byte at
//! stream offset `i` is `i % 251` (`sim_dongles::loopback::pattern_byte`).
//!
//! Checking it must cost far less than moving it, so data is compared with
//! a precomputed table in large slices (a `memcmp`), never byte by byte.

/// Period of the pattern, a prime so that lost or reordered blocks of any
/// power-of-two size show.
pub const PERIOD: usize = 251;

/// Bytes compared per slice; the table holds this much past every phase.
const CHUNK: usize = 16 * 1024;

/// The byte the source sends at stream offset `offset`.
pub fn byte_at(offset: u64) -> u8 {
    (offset % PERIOD as u64) as u8
}

/// Where received data first differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Stream offset of the first wrong byte.
    pub offset: u64,
    pub expected: u8,
    pub found: u8,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream offset {}: expected {:#04x}, found {:#04x}",
            self.offset, self.expected, self.found
        )
    }
}

/// Generates and checks the pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// `table[j] == byte_at(j)` for `j < PERIOD + CHUNK`, so any phase has
    /// `CHUNK` contiguous bytes after it.
    table: Vec<u8>,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    pub fn new() -> Self {
        Self {
            table: (0..(PERIOD + CHUNK) as u64).map(byte_at).collect(),
        }
    }

    /// `len` bytes of the pattern from stream offset `offset`.
    pub fn fill(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut phase = (offset % PERIOD as u64) as usize;
        while out.len() < len {
            let take = CHUNK.min(len - out.len());
            out.extend_from_slice(&self.table[phase..phase + take]);
            phase = (phase + take) % PERIOD;
        }
        out
    }

    /// Checks that `data` is the pattern from stream offset `offset`.
    pub fn check(&self, offset: u64, data: &[u8]) -> Result<(), Mismatch> {
        let mut phase = (offset % PERIOD as u64) as usize;
        for (n, chunk) in data.chunks(CHUNK).enumerate() {
            let expected = &self.table[phase..phase + chunk.len()];
            if chunk != expected {
                // Off the fast path: find the first bad byte for the report.
                let i = chunk
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(Mismatch {
                    offset: offset + (n * CHUNK + i) as u64,
                    expected: expected[i],
                    found: chunk[i],
                });
            }
            phase = (phase + chunk.len()) % PERIOD;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_loopback_dongles_pattern() {
        for i in (0..3 * PERIOD as u64).chain([u64::from(u32::MAX), u64::MAX - 1]) {
            assert_eq!(
                byte_at(i),
                sim_dongles::loopback::pattern_byte(i),
                "offset {i}"
            );
        }
    }

    #[test]
    fn fill_continues_the_stream_at_any_offset_and_length() {
        let p = Pattern::new();
        for (offset, len) in [(0, 0), (0, 1), (250, 3), (1000, 1000), (7, 3 * CHUNK + 5)] {
            let expected: Vec<u8> = (offset..offset + len as u64).map(byte_at).collect();
            assert_eq!(p.fill(offset, len), expected, "offset {offset} len {len}");
            assert_eq!(p.check(offset, &expected), Ok(()));
        }
    }

    #[test]
    fn check_reports_the_first_wrong_byte() {
        let p = Pattern::new();
        let mut data = p.fill(100, 2 * CHUNK + 10);
        data[CHUNK + 3] ^= 0xff;
        data[CHUNK + 9] ^= 0xff;
        let at = 100 + CHUNK as u64 + 3;
        assert_eq!(
            p.check(100, &data),
            Err(Mismatch {
                offset: at,
                expected: byte_at(at),
                found: byte_at(at) ^ 0xff,
            })
        );
    }

    #[test]
    fn check_catches_a_shifted_stream() {
        let p = Pattern::new();
        // A lost 64-byte block: the data resumes 64 bytes further on.
        let data = p.fill(64, 4096);
        assert!(p.check(0, &data).is_err());
    }
}
