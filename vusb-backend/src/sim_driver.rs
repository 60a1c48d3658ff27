//! A simulated guest driver: speaks virtio-usb to a vhost-user backend from
//! an ordinary process, the way the guest's host controller driver does
//! through QEMU. Guest memory is a memfd shared with the backend; the three
//! split virtqueues live in it. Tests use it to drive the real daemon over
//! its socket without QEMU, and the benchmarks to time the backend alone.
//!
//! It is deliberately simple: each request takes one readable and one
//! writable descriptor from a fixed slot of guest memory, and every
//! submission kicks.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::{virtio_config, virtio_ring};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::transfer::IsoPacket;
use crate::virtio_usb::wire::{
    self, CtrlReq, XferReq, XferResp, CONFIG_LEN, CONTROL_QUEUE, CTRL_REQ_LEN, CTRL_RESP_LEN,
    EVENT_LEN, EVENT_QUEUE, ISO_DESC_LEN, NUM_QUEUES, REQUEST_QUEUE, XFER_RESP_LEN,
};

const VRING_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
const VRING_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
/// Each ring gets this much room at the start of guest memory.
const RING_AREA: u64 = 0x10000;

/// How to size the simulated guest.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Entries per virtqueue (a power of two, at most 1024).
    pub queue_size: u16,
    /// Guest memory per request slot: header, iso descriptors, data both
    /// ways and the response must fit.
    pub slot_size: u32,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX`, as Linux guests do.
    pub event_idx: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_size: 256,
            slot_size: 160 << 10,
            event_idx: false,
        }
    }
}

/// One split virtqueue, driver side.
#[derive(Debug)]
struct Ring {
    base: u64,
    size: u16,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
}

impl Ring {
    fn desc(&self, i: u16) -> GuestAddress {
        GuestAddress(self.base + 16 * u64::from(i))
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(self.size)
    }
    fn used(&self) -> u64 {
        // 4-byte aligned after the avail ring (flags, idx, ring, used_event).
        (self.avail() + 6 + 2 * u64::from(self.size) + 3) & !3
    }
}

/// A transfer's outcome as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub id: u64,
    pub resp: XferResp,
    /// The whole IN buffer (`length` bytes; untouched bytes as they were).
    pub data: Vec<u8>,
    /// `(actual_length, status)` per isochronous packet.
    pub iso_results: Vec<(u32, u32)>,
    /// The used length the device reported.
    pub used_len: u32,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    slot: usize,
    data_len: u32,
    iso: u32,
    writable_at: u64,
}

/// The driver.
pub struct SimDriver {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    rings: Vec<Ring>,
    options: Options,
    slots_base: u64,
    free_slots: Vec<usize>,
    /// By head descriptor of `requestq`.
    pending: Vec<Option<Pending>>,
    /// Control chains by head: the slot they use.
    control_slots: Vec<Option<usize>>,
    events_base: u64,
}

impl std::fmt::Debug for SimDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDriver")
            .field("rings", &self.rings)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SimDriver {
    /// Connects to the backend at `socket` and brings the device up the
    /// way QEMU and a driver do: features, memory table, rings, then
    /// `eventq` stocked with buffers.
    pub fn connect(socket: &Path, options: Options) -> Result<Self> {
        let size = options.queue_size;
        if !size.is_power_of_two() || size > 1024 {
            bail!("queue size {size} is not a power of two up to 1024");
        }
        let slots = usize::from(size) / 2;
        let events_base = RING_AREA * NUM_QUEUES as u64;
        let slots_base = events_base + u64::from(size) * EVENT_LEN as u64;
        let mem_size = slots_base + slots as u64 * u64::from(options.slot_size);
        let mem_size = (mem_size + 0xfff) & !0xfff;

        // SAFETY: memfd_create with a valid NUL-terminated name; the
        // returned descriptor is checked and then owned by the File.
        let fd = unsafe { libc::memfd_create(c"vusb-sim-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(mem_size)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            mem_size as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| anyhow!("mapping guest memory: {e:?}"))?;
        let mut rings = Vec::new();
        for q in 0..NUM_QUEUES {
            rings.push(Ring {
                base: RING_AREA * q as u64,
                size,
                free: (0..size).rev().collect(),
                avail_idx: 0,
                last_used: 0,
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
            });
        }
        let frontend = attach(socket, &mem, &rings, options, [0; NUM_QUEUES])?;
        let mut driver = Self {
            frontend,
            mem,
            rings,
            options,
            slots_base,
            free_slots: (0..slots).rev().collect(),
            pending: vec![None; usize::from(size)],
            control_slots: vec![None; usize::from(size)],
            events_base,
        };
        for i in 0..size {
            let addr = driver.events_base + u64::from(i) * EVENT_LEN as u64;
            driver.add_chain(EVENT_QUEUE, &[(addr, EVENT_LEN as u32, true)])?;
        }
        driver.kick(EVENT_QUEUE)?;
        Ok(driver)
    }

    /// Stops every ring the way QEMU does when the guest resets the device
    /// (`GET_VRING_BASE`), and returns where each ring stopped.
    pub fn stop_rings(&mut self) -> Result<Vec<u32>> {
        (0..NUM_QUEUES)
            .map(|q| Ok(self.frontend.get_vring_base(q)?))
            .collect()
    }

    /// Resets the device the way a guest driver does through QEMU: the
    /// rings stop, the driver forgets its requests and sets up fresh rings
    /// (zeroed, starting at 0) on the same connection, and stocks `eventq`
    /// again.
    pub fn reset_device(&mut self) -> Result<()> {
        self.stop_rings()?;
        let size = self.options.queue_size;
        for ring in &mut self.rings {
            let zeros = vec![0u8; RING_AREA as usize];
            self.mem.write_slice(&zeros, GuestAddress(ring.base))?;
            ring.free = (0..size).rev().collect();
            ring.avail_idx = 0;
            ring.last_used = 0;
        }
        let slots = self.pending.len() / 2;
        self.free_slots = (0..slots).rev().collect();
        self.pending = vec![None; usize::from(size)];
        self.control_slots = vec![None; usize::from(size)];
        let host = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| anyhow!("{e:?}"))? as u64;
        start_rings(&mut self.frontend, host, &self.rings, [0; NUM_QUEUES])?;
        for i in 0..size {
            let addr = self.events_base + u64::from(i) * EVENT_LEN as u64;
            self.add_chain(EVENT_QUEUE, &[(addr, EVENT_LEN as u32, true)])?;
        }
        self.kick(EVENT_QUEUE)
    }

    /// Pauses and resumes the VM, the way QEMU's `stop` and `cont` do:
    /// every ring stopped (`GET_VRING_BASE`), then started again on the same
    /// connection where the backend said it stopped.
    pub fn pause_and_resume(&mut self) -> Result<()> {
        let stopped = self.stop_rings()?;
        let mut bases = [0; NUM_QUEUES];
        for (q, base) in stopped.into_iter().enumerate() {
            bases[q] = u16::try_from(base).context("ring base beyond 16 bits")?;
        }
        let host = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| anyhow!("{e:?}"))? as u64;
        start_rings(&mut self.frontend, host, &self.rings, bases)
    }

    /// Connects again, the way QEMU does when its back-end restarted: same
    /// guest memory, each ring resuming from its used index (the requests
    /// the old back-end never finished stay on the rings).
    pub fn reconnect(&mut self, socket: &Path) -> Result<()> {
        let mut bases = [0; NUM_QUEUES];
        for (q, ring) in self.rings.iter().enumerate() {
            bases[q] = self.mem.read_obj(GuestAddress(ring.used() + 2))?;
        }
        // The back-end serves one front-end at a time: hang up first.
        // SAFETY: shutdown on the connection's own descriptor, which stays
        // open (and owned by the old Frontend) until it is replaced.
        unsafe { libc::shutdown(self.frontend.as_raw_fd(), libc::SHUT_RDWR) };
        self.frontend = attach(socket, &self.mem, &self.rings, self.options, bases)?;
        Ok(())
    }

    /// Kicks `queue` without adding anything to it.
    pub fn kick_queue(&mut self, queue: u16) -> Result<()> {
        self.kick(queue)
    }

    /// The device's configuration space.
    pub fn config(&mut self) -> Result<[u8; CONFIG_LEN]> {
        let (_, data) = self.frontend.get_config(
            0,
            CONFIG_LEN as u32,
            VhostUserConfigFlags::empty(),
            &[0u8; CONFIG_LEN],
        )?;
        data.try_into()
            .map_err(|d: Vec<u8>| anyhow!("config of {} bytes", d.len()))
    }

    /// Guest memory, for tests that place their own buffers.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Submits a transfer; OUT data follows the iso descriptors. Returns
    /// the head descriptor.
    pub fn submit(&mut self, req: &XferReq, iso: &[IsoPacket], out: &[u8]) -> Result<u16> {
        let slot = self
            .free_slots
            .pop()
            .ok_or_else(|| anyhow!("no free slot"))?;
        let base = self.slot_addr(slot);
        let mut readable = req.to_bytes().to_vec();
        for p in iso {
            readable.extend(wire::iso_packet_bytes(p));
        }
        readable.extend_from_slice(out);
        let data_len = if req.is_in() { req.length } else { 0 };
        let writable_len =
            u64::from(data_len) + iso.len() as u64 * ISO_DESC_LEN as u64 + XFER_RESP_LEN as u64;
        let writable_at = (base + readable.len() as u64 + 63) & !63;
        if writable_at + writable_len > base + u64::from(self.options.slot_size) {
            self.free_slots.push(slot);
            bail!(
                "request does not fit a {}-byte slot",
                self.options.slot_size
            );
        }
        self.mem.write_slice(&readable, GuestAddress(base))?;
        let head = self.add_chain(
            REQUEST_QUEUE,
            &[
                (base, readable.len() as u32, false),
                (writable_at, writable_len as u32, true),
            ],
        )?;
        self.pending[usize::from(head)] = Some(Pending {
            id: req.id,
            slot,
            data_len,
            iso: iso.len() as u32,
            writable_at,
        });
        self.kick(REQUEST_QUEUE)?;
        Ok(head)
    }

    /// Waits for the next completed transfer.
    pub fn wait_transfer(&mut self, timeout: Duration) -> Result<Done> {
        let (head, used_len) = self.wait_used(REQUEST_QUEUE, timeout)?;
        let p = self.pending[usize::from(head)]
            .take()
            .ok_or_else(|| anyhow!("device completed chain {head}, which is not in flight"))?;
        self.free_slots.push(p.slot);
        let mut data = vec![0u8; p.data_len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(p.writable_at))?;
        let mut iso_results = Vec::new();
        let mut at = p.writable_at + u64::from(p.data_len);
        for _ in 0..p.iso {
            let mut b = [0u8; ISO_DESC_LEN];
            self.mem.read_slice(&mut b, GuestAddress(at))?;
            iso_results.push((
                u32::from_le_bytes(b[0..4].try_into().unwrap()),
                u32::from_le_bytes(b[4..8].try_into().unwrap()),
            ));
            at += ISO_DESC_LEN as u64;
        }
        let mut resp = [0u8; XFER_RESP_LEN];
        self.mem.read_slice(&mut resp, GuestAddress(at))?;
        Ok(Done {
            id: p.id,
            resp: XferResp::parse(&resp),
            data,
            iso_results,
            used_len,
        })
    }

    /// Sends a control request (CANCEL, PORT_RESET) without waiting.
    pub fn send_control(&mut self, req: &CtrlReq) -> Result<u16> {
        let slot = self
            .free_slots
            .pop()
            .ok_or_else(|| anyhow!("no free slot"))?;
        let base = self.slot_addr(slot);
        self.mem.write_slice(&req.to_bytes(), GuestAddress(base))?;
        let head = self.add_chain(
            CONTROL_QUEUE,
            &[
                (base, CTRL_REQ_LEN as u32, false),
                (base + 64, CTRL_RESP_LEN as u32, true),
            ],
        )?;
        self.control_slots[usize::from(head)] = Some(slot);
        self.kick(CONTROL_QUEUE)?;
        Ok(head)
    }

    /// Waits for the next control response: `(status, speed)`.
    pub fn wait_control(&mut self, timeout: Duration) -> Result<(u32, u8)> {
        let (head, _) = self.wait_used(CONTROL_QUEUE, timeout)?;
        let slot = self.control_slots[usize::from(head)]
            .take()
            .ok_or_else(|| anyhow!("control chain {head} not in flight"))?;
        self.free_slots.push(slot);
        let base = self.slot_addr(slot);
        let mut b = [0u8; CTRL_RESP_LEN];
        self.mem.read_slice(&mut b, GuestAddress(base + 64))?;
        Ok((u32::from_le_bytes(b[0..4].try_into().unwrap()), b[4]))
    }

    /// Waits for the next port event: `(type, port, speed)`; the buffer is
    /// put back at once.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<(u32, u8, u8)> {
        let (head, _) = self.wait_used(EVENT_QUEUE, timeout)?;
        let addr = self.events_base + u64::from(head) * EVENT_LEN as u64;
        let mut b = [0u8; EVENT_LEN];
        self.mem.read_slice(&mut b, GuestAddress(addr))?;
        // The freed descriptor is the one just used, at the same address.
        self.add_chain(EVENT_QUEUE, &[(addr, EVENT_LEN as u32, true)])?;
        self.kick(EVENT_QUEUE)?;
        Ok((u32::from_le_bytes(b[0..4].try_into().unwrap()), b[4], b[5]))
    }

    /// Makes an arbitrary chain available on `queue`: `(addr, len,
    /// device-writable)` per descriptor. For tests of broken chains.
    pub fn raw_chain(&mut self, queue: u16, descs: &[(u64, u32, bool)]) -> Result<u16> {
        let head = self.add_chain(queue, descs)?;
        self.kick(queue)?;
        Ok(head)
    }

    /// Waits for `queue` to give back a chain: `(head, used length)`. For
    /// tests of broken chains; the chain's descriptors are recycled.
    pub fn wait_raw(&mut self, queue: u16, timeout: Duration) -> Result<(u16, u32)> {
        self.wait_used(queue, timeout)
    }

    /// A free slot of guest memory for tests that build their own chains:
    /// `(addr, len)`. Give it back with [`SimDriver::put_scratch`].
    pub fn take_scratch(&mut self) -> Result<(u64, u32)> {
        let slot = self
            .free_slots
            .pop()
            .ok_or_else(|| anyhow!("no free slot"))?;
        let base = self.slot_addr(slot);
        Ok((base, self.options.slot_size))
    }

    pub fn put_scratch(&mut self, addr: u64) {
        let slot = (addr - self.slots_base) / u64::from(self.options.slot_size);
        self.free_slots.push(slot as usize);
    }

    /// The size of guest memory: addresses from here on lie outside it.
    pub fn memory_size(&self) -> u64 {
        self.mem.last_addr().0 + 1
    }

    /// Where request slot `slot` starts in guest memory.
    fn slot_addr(&self, slot: usize) -> u64 {
        self.slots_base + slot as u64 * u64::from(self.options.slot_size)
    }

    fn add_chain(&mut self, queue: u16, descs: &[(u64, u32, bool)]) -> Result<u16> {
        let ring = &mut self.rings[usize::from(queue)];
        if ring.free.len() < descs.len() {
            bail!("queue {queue} is full");
        }
        let indices: Vec<u16> = (0..descs.len())
            .map(|_| ring.free.pop().expect("checked"))
            .collect();
        for (n, &(addr, len, write)) in descs.iter().enumerate() {
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            let next = indices.get(n + 1).copied().unwrap_or(0);
            if n + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&d, ring.desc(indices[n]))?;
        }
        let head = indices[0];
        let slot = ring.avail() + 4 + 2 * u64::from(ring.avail_idx % ring.size);
        self.mem.write_obj(head.to_le(), GuestAddress(slot))?;
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem
            .write_obj(ring.avail_idx.to_le(), GuestAddress(ring.avail() + 2))?;
        Ok(head)
    }

    fn kick(&self, queue: u16) -> Result<()> {
        self.rings[usize::from(queue)].kick.write(1)?;
        Ok(())
    }

    fn wait_used(&mut self, queue: u16, timeout: Duration) -> Result<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let ring = &self.rings[usize::from(queue)];
            if self.options.event_idx {
                // used_event: notify once the entry we wait for is used.
                let used_event = ring.avail() + 4 + 2 * u64::from(ring.size);
                self.mem
                    .write_obj(ring.last_used.to_le(), GuestAddress(used_event))?;
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            }
            let used_idx: u16 = self.mem.read_obj(GuestAddress(ring.used() + 2))?;
            if used_idx != ring.last_used {
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                let elem = ring.used() + 4 + 8 * u64::from(ring.last_used % ring.size);
                let id: u32 = self.mem.read_obj(GuestAddress(elem))?;
                let len: u32 = self.mem.read_obj(GuestAddress(elem + 4))?;
                let head = u16::try_from(id)
                    .ok()
                    .filter(|h| *h < ring.size)
                    .ok_or_else(|| anyhow!("device used descriptor {id}"))?;
                self.recycle(queue, head)?;
                self.rings[usize::from(queue)].last_used =
                    self.rings[usize::from(queue)].last_used.wrapping_add(1);
                return Ok((head, len));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("queue {queue}: nothing used within {timeout:?}");
            }
            let mut pfd = libc::pollfd {
                fd: ring.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            let _ = ring.call.read();
        }
    }

    /// Puts the descriptors of the chain at `head` back on the free list.
    fn recycle(&mut self, queue: u16, head: u16) -> Result<()> {
        let ring = &mut self.rings[usize::from(queue)];
        let mut i = head;
        for _ in 0..ring.size {
            ring.free.push(i);
            let flags: u16 = self.mem.read_obj(GuestAddress(ring.desc(i).0 + 12))?;
            if flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            i = self.mem.read_obj(GuestAddress(ring.desc(i).0 + 14))?;
        }
        bail!("descriptor chain at {head} loops")
    }
}

/// The vhost-user handshake QEMU does when it (re)connects to a back-end:
/// features, memory table, then each ring starting at `bases`.
fn attach(
    socket: &Path,
    mem: &GuestMemoryMmap,
    rings: &[Ring],
    options: Options,
    bases: [u16; NUM_QUEUES],
) -> Result<Frontend> {
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| anyhow!("{e:?}"))? as u64;
    let region = mem.find_region(GuestAddress(0)).expect("one region");
    let handle = region
        .file_offset()
        .expect("file-backed")
        .file()
        .as_raw_fd();
    let mem_size = region.len();

    let mut frontend =
        Frontend::connect(socket, NUM_QUEUES as u64).context("connecting to the backend")?;
    frontend.set_owner()?;
    let features = frontend.get_features()?;
    if features & (1 << virtio_config::VIRTIO_F_VERSION_1) == 0 {
        bail!("backend does not offer VIRTIO_F_VERSION_1");
    }
    let event_idx = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    if options.event_idx {
        if features & event_idx == 0 {
            bail!("backend does not offer VIRTIO_RING_F_EVENT_IDX");
        }
        frontend.set_features(features)?;
    } else {
        frontend.set_features(features & !event_idx)?;
    }
    let protocol = frontend.get_protocol_features()?;
    frontend.set_protocol_features(
        protocol & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
    )?;
    frontend.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: mem_size,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: handle,
    }])?;
    start_rings(&mut frontend, host, rings, bases)?;
    Ok(frontend)
}

/// Hands the rings to the backend, each starting at `bases[q]`, and kicks
/// them as QEMU does.
fn start_rings(
    frontend: &mut Frontend,
    host: u64,
    rings: &[Ring],
    bases: [u16; NUM_QUEUES],
) -> Result<()> {
    for (q, ring) in rings.iter().enumerate() {
        frontend.set_vring_num(q, ring.size)?;
        frontend.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: ring.size,
                queue_size: ring.size,
                flags: 0,
                desc_table_addr: host + ring.base,
                used_ring_addr: host + ring.used(),
                avail_ring_addr: host + ring.avail(),
                log_addr: None,
            },
        )?;
        frontend.set_vring_base(q, bases[q])?;
        frontend.set_vring_call(q, &ring.call)?;
        frontend.set_vring_kick(q, &ring.kick)?;
        frontend.set_vring_enable(q, true)?;
        // QEMU starts every ring with its notifier signalled.
        ring.kick.write(1)?;
    }
    Ok(())
}
