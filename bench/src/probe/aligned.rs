//! A zeroed byte buffer at a chosen alignment: O_DIRECT transfers need
//! their memory aligned to the device's logical block size, which a `Vec`
//! does not promise.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment that satisfies every block device: 4 KiB, the largest logical
/// block size in use (and the page size).
pub const DIRECT_IO_ALIGN: usize = 4096;

#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two).
    pub fn zeroed(len: usize, align: usize) -> Self {
        // A zero-size allocation is not allowed; one byte stands in for it.
        let layout = Layout::from_size_align(len.max(1), align)
            .expect("alignment is a power of two and the size fits");
        // SAFETY: the layout's size is at least one byte.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, len, layout }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to an allocation of at least `len` bytes,
        // all initialised (zeroed at allocation), owned by `self` and
        // alive for as long as the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and the mutable borrow of `self` makes
        // this the only reference to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this very layout and
        // is freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_aligned_zeroed_and_writable() {
        for (len, align) in [(0, 4096), (1, 512), (1 << 20, 4096), (12345, 64)] {
            let mut b = AlignedBuf::zeroed(len, align);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % align, 0, "len {len} align {align}");
            assert!(b.iter().all(|&x| x == 0));
            b.iter_mut().for_each(|x| *x = 0xa5);
            assert!(b.iter().all(|&x| x == 0xa5));
        }
    }
}
