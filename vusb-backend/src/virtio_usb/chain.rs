//! A descriptor chain taken apart: where its device-readable bytes lie and
//! where its device-writable bytes lie, each as one byte stream (the spec lets
//! the driver split a message across descriptors any way it likes).
//!
//! Every address is checked against guest memory when the chain is collected,
//! and every later access stays inside the segments collected here, so
//! nothing outside the chain is ever read or written.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// One descriptor's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain cannot be used at all (it gets a used length of 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor {addr:#x}+{len} lies outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
}

/// A collected chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

impl Chain {
    /// Walks `chain`, checking every descriptor. On error, also returns the
    /// head index so the chain can be given back.
    pub fn collect<M>(chain: DescriptorChain<M>) -> Result<Self, (u16, ChainError)>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mem = chain.memory();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut checks = Vec::new();
        for desc in chain.clone() {
            let segment = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                writable.push(segment);
            } else if !writable.is_empty() {
                return Err((head, ChainError::ReadableAfterWritable));
            } else {
                readable.push(segment);
            }
            checks.push((segment, desc.is_write_only()));
        }
        for (s, write) in checks {
            let access = if write {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if s.len > 0 && !mem.check_range(s.addr, s.len as usize, access) {
                return Err((
                    head,
                    ChainError::OutsideMemory {
                        addr: s.addr.0,
                        len: s.len,
                    },
                ));
            }
        }
        Ok(Self {
            head,
            readable,
            writable,
        })
    }

    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Reads `buf.len()` bytes of the readable stream from `offset`.
    pub fn read(
        &self,
        mem: &(impl GuestMemory + ?Sized),
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let mut done = 0;
        for (addr, len) in pieces(&self.readable, offset, buf.len() as u64)? {
            mem.read_slice(&mut buf[done..done + len], addr)
                .map_err(|e| Error::Memory(e.to_string()))?;
            done += len;
        }
        Ok(())
    }

    /// Writes `data` into the writable stream at `offset`.
    pub fn write(
        &self,
        mem: &(impl GuestMemory + ?Sized),
        offset: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let mut done = 0;
        for (addr, len) in pieces(&self.writable, offset, data.len() as u64)? {
            mem.write_slice(&data[done..done + len], addr)
                .map_err(|e| Error::Memory(e.to_string()))?;
            done += len;
        }
        Ok(())
    }
}

/// A failed access to a collected chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("access of {len} bytes at {offset} past the end of the chain ({available} bytes)")]
    OutOfChain {
        offset: u64,
        len: u64,
        available: u64,
    },
    #[error("guest memory: {0}")]
    Memory(String),
}

/// The guest ranges that hold `len` bytes from `offset` of the stream made of
/// `segments`.
fn pieces(
    segments: &[Segment],
    offset: u64,
    len: u64,
) -> Result<Vec<(GuestAddress, usize)>, Error> {
    let available: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    if offset.checked_add(len).is_none_or(|end| end > available) {
        return Err(Error::OutOfChain {
            offset,
            len,
            available,
        });
    }
    let mut out = Vec::new();
    let mut skip = offset;
    let mut left = len;
    for s in segments {
        if left == 0 {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(left);
        // In range: collect() checked the whole segment against guest memory.
        out.push((GuestAddress(s.addr.0 + skip), take as usize));
        left -= take;
        skip = 0;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(lens: &[u32]) -> Vec<Segment> {
        let mut addr = 0x1000;
        lens.iter()
            .map(|&len| {
                let s = Segment {
                    addr: GuestAddress(addr),
                    len,
                };
                addr += 0x1000;
                s
            })
            .collect()
    }

    #[test]
    fn pieces_span_descriptors() {
        let s = segs(&[4, 0, 10, 6]);
        assert_eq!(
            pieces(&s, 2, 10).unwrap(),
            vec![(GuestAddress(0x1002), 2), (GuestAddress(0x3000), 8)]
        );
        assert_eq!(pieces(&s, 14, 6).unwrap(), vec![(GuestAddress(0x4000), 6)]);
        assert_eq!(pieces(&s, 20, 0).unwrap(), vec![]);
    }

    #[test]
    fn pieces_never_leave_the_chain() {
        let s = segs(&[4, 10]);
        assert!(matches!(pieces(&s, 10, 5), Err(Error::OutOfChain { .. })));
        assert!(matches!(
            pieces(&s, u64::MAX, 2),
            Err(Error::OutOfChain { .. })
        ));
    }
}
