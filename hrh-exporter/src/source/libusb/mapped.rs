//! Transfer buffers that usbfs uses in place.
//!
//! An URB submitted through usbfs normally has its buffer copied: the
//! kernel allocates one of its own (in 16 KiB pieces when the controller
//! takes scatter-gather lists), copies OUT data into it at submission and
//! IN data out of it when the URB is reaped. Memory mapped from the
//! device's usbfs file (`libusb_dev_mem_alloc`, Linux 4.6 and later) *is*
//! a kernel buffer: an URB whose buffer lies inside such a mapping is
//! submitted with neither allocation nor copy. usbip-host, inside the
//! kernel, receives straight into its URB's buffer; this is the nearest a
//! user-space server comes to that.
//!
//! A mapping costs a system call, a kernel allocation and page table
//! entries, so a buffer that comes back is kept for the next URB of its
//! size class. usbfs counts mapped memory against `usbfs_memory_mb` (16 MiB
//! for the whole system by default), as it counts every URB's buffer, so a
//! device keeps at most [`BUDGET`] mapped, and only while it is imported
//! (see [`MappedPool::release_idle`]). Beyond that, or where the kernel
//! refuses a mapping, URBs use ordinary memory, as they always did.

use std::ffi::c_int;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use rusb::ffi::libusb_device_handle;
use tracing::{info, warn};

/// Where mapped memory comes from: a device's usbfs file, or the heap in
/// tests.
pub trait Mapper: Send + Sync {
    /// `len` bytes that URBs of this device can use in place, or `None`
    /// if the kernel will not map them.
    fn map(&self, len: usize) -> Option<NonNull<u8>>;

    /// Gives a mapping back.
    ///
    /// # Safety
    ///
    /// `ptr` and `len` come from one call of [`Mapper::map`] on this
    /// mapper, and nothing uses that memory any more.
    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize);
}

// In libusb since 1.0.21; the `libusb1-sys` bindings leave them out.
extern "system" {
    fn libusb_dev_mem_alloc(dev_handle: *mut libusb_device_handle, length: usize) -> *mut u8;
    fn libusb_dev_mem_free(
        dev_handle: *mut libusb_device_handle,
        buffer: *mut u8,
        length: usize,
    ) -> c_int;
}

/// Mappings of a device's usbfs file, through libusb.
pub struct UsbfsMapper {
    handle: NonNull<libusb_device_handle>,
}

// SAFETY: libusb's device handles may be used from any thread, and mapping
// and unmapping touch no state of the handle but its file descriptor.
unsafe impl Send for UsbfsMapper {}
// SAFETY: as for `Send`; the calls need no exclusive access.
unsafe impl Sync for UsbfsMapper {}

impl UsbfsMapper {
    /// # Safety
    ///
    /// `handle` stays open for as long as the mapper and every mapping it
    /// made exist: the pool holding it must be dropped before the handle
    /// is closed.
    pub unsafe fn new(handle: NonNull<libusb_device_handle>) -> Self {
        Self { handle }
    }
}

impl Mapper for UsbfsMapper {
    fn map(&self, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: the handle is open (see `new`); a null result is a refusal.
        NonNull::new(unsafe { libusb_dev_mem_alloc(self.handle.as_ptr(), len) })
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: the handle is open (see `new`), and the caller passes a
        // mapping this handle made, used by nobody any more.
        let rc = unsafe { libusb_dev_mem_free(self.handle.as_ptr(), ptr.as_ptr(), len) };
        if rc != 0 {
            warn!("cannot unmap a usbfs transfer buffer: libusb error {rc}");
        }
    }
}

/// The smallest size class: a page, the unit of a mapping anyway.
const SMALLEST: usize = 4096;
/// Size classes, doubling from [`SMALLEST`].
const CLASSES: usize = 9;
/// The largest buffer the pool hands out (1 MiB); larger URBs are rare
/// and use ordinary memory.
pub const LARGEST: usize = SMALLEST << (CLASSES - 1);
/// Mapped memory a device may hold, in use and kept for reuse together:
/// sixteen URBs of a USB 2 pendrive's 120 KiB.
pub const BUDGET: usize = 2 << 20;

/// Mapped buffers of one device, kept by size class for reuse.
pub struct MappedPool {
    mapper: Box<dyn Mapper>,
    /// For log lines: the device's bus id.
    name: String,
    state: Mutex<State>,
}

struct State {
    /// Mappings not in use, by size class.
    idle: [Vec<Region>; CLASSES],
    /// Bytes mapped, in use or idle.
    mapped: usize,
    /// The kernel refused a mapping: ordinary memory from then on.
    refused: bool,
}

/// The start of one mapping; its length follows from its size class.
struct Region(NonNull<u8>);

// SAFETY: a region is plain memory owned by whoever holds it (the pool's
// idle list or one `MappedBuf`); nothing about it is tied to a thread.
unsafe impl Send for Region {}

fn class_size(class: usize) -> usize {
    SMALLEST << class
}

/// The smallest class that holds `len` bytes, if any.
fn class_of(len: usize) -> Option<usize> {
    if len == 0 || len > LARGEST {
        return None;
    }
    let pages = len.div_ceil(SMALLEST);
    Some(pages.next_power_of_two().trailing_zeros() as usize)
}

impl MappedPool {
    pub fn new(name: impl Into<String>, mapper: Box<dyn Mapper>) -> Arc<Self> {
        Arc::new(Self {
            mapper,
            name: name.into(),
            state: Mutex::new(State {
                idle: Default::default(),
                mapped: 0,
                refused: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mapped buffer of `len` bytes (its earlier contents undefined), or
    /// `None` when the URB should use ordinary memory.
    pub fn take(self: &Arc<Self>, len: usize) -> Option<MappedBuf> {
        let class = class_of(len)?;
        let size = class_size(class);
        let mut st = self.lock();
        let region = match st.idle[class].pop() {
            Some(region) => region,
            None => {
                if st.refused || !self.make_room(&mut st, size) {
                    return None;
                }
                let Some(ptr) = self.mapper.map(size) else {
                    st.refused = true;
                    info!(
                        "{}: usbfs does not map transfer buffers; URB data is copied",
                        self.name
                    );
                    return None;
                };
                st.mapped += size;
                Region(ptr)
            }
        };
        Some(MappedBuf {
            pool: Arc::clone(self),
            region,
            class,
            len,
        })
    }

    /// Unmaps idle buffers of other sizes until `size` more fits the
    /// budget. False if it cannot.
    fn make_room(&self, st: &mut State, size: usize) -> bool {
        while st.mapped + size > BUDGET {
            let Some(class) = (0..CLASSES).rev().find(|&c| !st.idle[c].is_empty()) else {
                return false;
            };
            if let Some(region) = st.idle[class].pop() {
                self.unmap(st, region, class);
            }
        }
        true
    }

    fn unmap(&self, st: &mut State, region: Region, class: usize) {
        let size = class_size(class);
        // SAFETY: every region came from `map` with its class's size, and
        // an idle one is used by nobody.
        unsafe { self.mapper.unmap(region.0, size) };
        st.mapped -= size;
    }

    /// Unmaps every buffer not in use: the device's importer has gone, and
    /// the memory counts against every other usbfs user's. The next
    /// importer tries mapping again, even if the kernel refused before
    /// (`usbfs_memory_mb` is shared and may have room again).
    pub fn release_idle(&self) {
        let mut st = self.lock();
        st.refused = false;
        for class in 0..CLASSES {
            while let Some(region) = st.idle[class].pop() {
                self.unmap(&mut st, region, class);
            }
        }
    }

    /// Bytes mapped, in use or idle.
    #[cfg(test)]
    fn mapped(&self) -> usize {
        self.lock().mapped
    }

    fn give_back(&self, region: Region, class: usize) {
        self.lock().idle[class].push(region);
    }
}

impl Drop for MappedPool {
    fn drop(&mut self) {
        self.release_idle();
    }
}

/// A mapped transfer buffer of `len` bytes; back to its pool when dropped.
pub struct MappedBuf {
    pool: Arc<MappedPool>,
    region: Region,
    class: usize,
    len: usize,
}

impl MappedBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Where libusb and the kernel read and write the transfer.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.region.0.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the region is valid for its class's size, at least `len`
        // bytes, and stays mapped while this buffer holds it. Mapped
        // memory is initialised (the kernel clears a mapping it hands out;
        // the test mapper allocates zeroed). Nothing writes to it while
        // this borrow lives: the kernel only writes during a transfer, and
        // a transfer's buffer is read only after it completed.
        unsafe { std::slice::from_raw_parts(self.region.0.as_ptr(), self.len) }
    }

    /// Fills the buffer with `data`, which must be `len` bytes.
    pub fn copy_from(&mut self, data: &[u8]) {
        assert_eq!(data.len(), self.len, "data must fill the buffer");
        // SAFETY: as in `as_slice`, `len` bytes are ours to write, and
        // `data` cannot overlap a mapping only this buffer holds.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_mut_ptr(), self.len) };
    }
}

impl std::fmt::Debug for MappedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedBuf")
            .field("len", &self.len)
            .field("class_size", &class_size(self.class))
            .finish()
    }
}

impl Drop for MappedBuf {
    fn drop(&mut self) {
        // The region is ours alone; the pool gets the only handle to it.
        self.pool.give_back(Region(self.region.0), self.class);
    }
}

/// The heap standing in for a device's usbfs file.
#[cfg(test)]
pub mod test_mapper {
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts what it maps.
    #[derive(Clone, Default)]
    pub struct HeapMapper {
        pub maps: Arc<AtomicUsize>,
        pub unmaps: Arc<AtomicUsize>,
        pub refuse: bool,
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, SMALLEST).unwrap()
    }

    impl Mapper for HeapMapper {
        fn map(&self, len: usize) -> Option<NonNull<u8>> {
            if self.refuse {
                return None;
            }
            self.maps.fetch_add(1, Ordering::Relaxed);
            // SAFETY: a non-zero size (class sizes start at a page).
            NonNull::new(unsafe { alloc_zeroed(layout(len)) })
        }

        unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize) {
            self.unmaps.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the caller passes back what `map` allocated.
            unsafe { dealloc(ptr.as_ptr(), layout(len)) };
        }
    }

    /// A pool of heap memory.
    pub fn heap_pool() -> Arc<MappedPool> {
        MappedPool::new("test", Box::new(HeapMapper::default()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::test_mapper::HeapMapper;
    use super::*;

    fn pool() -> (Arc<MappedPool>, HeapMapper) {
        let mapper = HeapMapper::default();
        (MappedPool::new("1-1", Box::new(mapper.clone())), mapper)
    }

    #[test]
    fn sizes_round_up_to_a_class() {
        assert_eq!(class_of(0), None);
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(4096), Some(0));
        assert_eq!(class_of(4097), Some(1));
        assert_eq!(class_of(120 * 1024), Some(5));
        assert_eq!(class_size(5), 128 * 1024);
        assert_eq!(class_of(LARGEST), Some(CLASSES - 1));
        assert_eq!(class_of(LARGEST + 1), None);
    }

    #[test]
    fn a_buffer_that_comes_back_is_used_again() {
        let (pool, mapper) = pool();
        let mut a = pool.take(100).unwrap();
        assert_eq!(a.len(), 100);
        a.copy_from(&[7; 100]);
        assert_eq!(a.as_slice(), &[7; 100]);
        let first = a.as_mut_ptr();
        drop(a);
        let mut b = pool.take(3000).unwrap();
        assert_eq!(b.as_mut_ptr(), first);
        assert_eq!(b.len(), 3000);
        // A second one at the same time needs its own mapping.
        let c = pool.take(10).unwrap();
        assert_eq!(mapper.maps.load(Ordering::Relaxed), 2);
        assert_eq!(pool.mapped(), 2 * SMALLEST);
        drop((b, c));
        pool.release_idle();
        assert_eq!(pool.mapped(), 0);
        assert_eq!(mapper.unmaps.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_budget_holds_and_idle_buffers_make_room() {
        let (pool, _mapper) = pool();
        let big: Vec<_> = (0..BUDGET / LARGEST)
            .map(|_| pool.take(LARGEST).unwrap())
            .collect();
        // Everything mapped is in use: ordinary memory for the next URB.
        assert!(pool.take(1).is_none());
        drop(big);
        // Idle 1 MiB buffers are unmapped to make room for small ones.
        let small = pool.take(1).unwrap();
        assert!(pool.mapped() <= BUDGET);
        assert_eq!(pool.mapped(), LARGEST + SMALLEST);
        drop(small);
    }

    #[test]
    fn zero_and_oversized_lengths_and_a_refusing_kernel_use_ordinary_memory() {
        let (pool, _) = pool();
        assert!(pool.take(0).is_none());
        assert!(pool.take(LARGEST + 1).is_none());
        let refusing = HeapMapper {
            refuse: true,
            ..HeapMapper::default()
        };
        let pool = MappedPool::new("1-1", Box::new(refusing.clone()));
        assert!(pool.take(10).is_none());
        assert!(pool.lock().refused);
        assert_eq!(pool.mapped(), 0);
    }

    #[test]
    fn dropping_the_pool_unmaps_what_it_keeps() {
        let (pool, mapper) = pool();
        drop(pool.take(10).unwrap());
        drop(pool.take(50_000).unwrap());
        drop(pool);
        assert_eq!(mapper.maps.load(Ordering::Relaxed), 2);
        assert_eq!(mapper.unmaps.load(Ordering::Relaxed), 2);
    }
}
