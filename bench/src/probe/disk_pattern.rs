//! The data of the disk test, a function of the seed and the byte offset
//! only, so `disk read` can check what `disk write` wrote with any block
//! size.
//!
//! Every 512-byte sector starts with a 16-byte header, the seed and the
//! sector's own byte offset (little-endian u64s), and goes on with one of
//! 128 pseudo-random bodies made from the seed. The header catches a
//! sector written to or read from the wrong place; the bodies catch stale
//! data, zeroes and data of another seed.

pub const SECTOR: usize = 512;
const HEADER: usize = 16;
const BODY: usize = SECTOR - HEADER;
/// Distinct bodies, cycled by sector number: 64 KiB of table, cheap to
/// build, and neighbouring sectors differ in their bodies as well.
const BODIES: usize = 128;

/// SplitMix64: a tiny, well-mixed generator; the data needs to be
/// reproducible and unlike anything on a disk, not secret.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct DiskPattern {
    seed: u64,
    bodies: Vec<u8>,
}

impl DiskPattern {
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut bodies = Vec::with_capacity(BODIES * BODY);
        while bodies.len() < BODIES * BODY {
            bodies.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        bodies.truncate(BODIES * BODY);
        Self { seed, bodies }
    }

    fn header(&self, offset: u64) -> [u8; HEADER] {
        let mut h = [0; HEADER];
        h[..8].copy_from_slice(&self.seed.to_le_bytes());
        h[8..].copy_from_slice(&offset.to_le_bytes());
        h
    }

    fn body(&self, offset: u64) -> &[u8] {
        let i = (offset / SECTOR as u64) as usize % BODIES;
        &self.bodies[i * BODY..(i + 1) * BODY]
    }

    /// Fills `buf` with the data that belongs at byte `offset`; both are
    /// whole sectors.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        assert!(offset.is_multiple_of(SECTOR as u64) && buf.len().is_multiple_of(SECTOR));
        for (n, sector) in buf.chunks_exact_mut(SECTOR).enumerate() {
            let at = offset + (n * SECTOR) as u64;
            sector[..HEADER].copy_from_slice(&self.header(at));
            sector[HEADER..].copy_from_slice(self.body(at));
        }
    }

    /// The byte offset of the first sector of `buf` (read from `offset`)
    /// that is not what [`Self::fill`] puts there, if any.
    pub fn first_mismatch(&self, offset: u64, buf: &[u8]) -> Option<u64> {
        assert!(offset.is_multiple_of(SECTOR as u64) && buf.len().is_multiple_of(SECTOR));
        buf.chunks_exact(SECTOR)
            .enumerate()
            .find_map(|(n, sector)| {
                let at = offset + (n * SECTOR) as u64;
                (sector[..HEADER] != self.header(at) || sector[HEADER..] != *self.body(at))
                    .then_some(at)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_depends_on_offset_only_not_on_block_size() {
        let p = DiskPattern::new(7);
        let mut whole = vec![0; 64 * SECTOR];
        p.fill(4096, &mut whole);
        let mut pieces = vec![0; 64 * SECTOR];
        for (n, chunk) in pieces.chunks_mut(3 * SECTOR).enumerate() {
            p.fill(4096 + (n * 3 * SECTOR) as u64, chunk);
        }
        assert_eq!(whole, pieces);
        assert_eq!(p.first_mismatch(4096, &whole), None);
    }

    #[test]
    fn catches_wrong_place_wrong_seed_corruption_and_zeroes() {
        let p = DiskPattern::new(1);
        let mut buf = vec![0; 8 * SECTOR];
        p.fill(0, &mut buf);
        // The same data read back from another offset.
        assert_eq!(p.first_mismatch(SECTOR as u64 * 8, &buf), Some(4096));
        // Another seed.
        assert_eq!(DiskPattern::new(2).first_mismatch(0, &buf), Some(0));
        // One flipped bit in the body of the fourth sector.
        let mut bad = buf.clone();
        bad[3 * SECTOR + 300] ^= 1;
        assert_eq!(p.first_mismatch(0, &bad), Some(3 * SECTOR as u64));
        // A sector that was never written.
        let mut bad = buf.clone();
        bad[5 * SECTOR..6 * SECTOR].fill(0);
        assert_eq!(p.first_mismatch(0, &bad), Some(5 * SECTOR as u64));
        // Two sectors swapped: the bodies alone would not differ 128
        // sectors apart, the headers do.
        let mut far = vec![0; 129 * SECTOR];
        p.fill(0, &mut far);
        let (a, b) = far.split_at_mut(128 * SECTOR);
        a[..SECTOR].swap_with_slice(&mut b[..SECTOR]);
        assert_eq!(p.first_mismatch(0, &far), Some(0));
    }
}
