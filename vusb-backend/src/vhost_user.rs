//! The vhost-user plumbing: vrings in, [`Controller`] calls, used rings out.
//! Everything virtio-usb specific lives in [`crate::virtio_usb`].

use std::io;
use std::sync::Arc;

use tracing::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::upcalls::UpcallReceiver;
use crate::virtio_usb::wire::{
    CONTROL_QUEUE, EVENT_QUEUE, F_ISO, F_USB3, NUM_QUEUES, REQUEST_QUEUE,
};
use crate::virtio_usb::{Controller, Used};

/// The epoll token of the upcall eventfd: the numbers up to `NUM_QUEUES`
/// belong to the vrings and the library's exit event.
pub const UPCALL_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Largest queue the driver may set up.
const MAX_QUEUE_SIZE: usize = 1024;

/// One virtio-usb controller as a vhost-user backend.
pub struct VusbBackend {
    controller: Controller,
    upcalls: UpcallReceiver,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
    iso_offered: bool,
    /// Per ring: whether its starting point was checked since it started.
    ring_checked: [bool; NUM_QUEUES],
    /// The rings, as last handed to [`Self::handle_event`]: stopping one
    /// needs to reach the others.
    vrings: Vec<VringRwLock>,
}

impl std::fmt::Debug for VusbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VusbBackend")
            .field("controller", &self.controller)
            .field("event_idx", &self.event_idx)
            .field("ring_checked", &self.ring_checked)
            .finish_non_exhaustive()
    }
}

impl VusbBackend {
    pub fn new(controller: Controller, upcalls: UpcallReceiver) -> Self {
        Self {
            controller,
            upcalls,
            mem: None,
            event_idx: false,
            iso_offered: true,
            ring_checked: [false; NUM_QUEUES],
            vrings: Vec::new(),
        }
    }

    /// Whether to offer `VIRTIO_USB_F_ISO`.
    pub fn set_iso_offered(&mut self, offered: bool) {
        self.iso_offered = offered;
        self.controller.set_iso(false);
    }

    /// The eventfd to register with the worker's epoll as [`UPCALL_EVENT`].
    pub fn upcall_fd(&self) -> std::os::fd::RawFd {
        self.upcalls.fd()
    }

    /// The front-end went away: its guest memory and chains are gone.
    pub fn disconnected(&mut self) {
        self.controller.reset();
        self.mem = None;
        self.event_idx = false;
        self.ring_checked = [false; NUM_QUEUES];
        // Each front-end gets rings of its own.
        self.vrings.clear();
    }

    /// A driver's rings start at 0. One that starts further on was running
    /// before we were (we were restarted and QEMU reconnected, resuming
    /// from the used index) or before its rings were stopped: either way
    /// the chains it has out are beyond what we know (§7.1).
    ///
    /// So does one whose used index in guest memory is not where we were
    /// told to start: its state was handed to us from an earlier back-end
    /// (vusb-keeper replays the front-end's setup to a restarted one). The
    /// used index is the truth then; the chains after it are the driver's
    /// to reset, except the `eventq` buffers, which are always used in
    /// order and so are exactly the ones after it.
    fn check_ring_start(&mut self, vring: &VringRwLock, queue: u16) {
        let checked = &mut self.ring_checked[usize::from(queue)];
        if *checked {
            return;
        }
        *checked = true;
        let start = vring.get_ref().get_queue().next_avail();
        let used = vring.queue_used_idx().unwrap_or(start);
        if used != start {
            vring.set_queue_next_used(used);
            vring.set_queue_next_avail(used);
        }
        if (start != 0 || used != start) && !self.controller.halted() {
            warn!(
                queue,
                start, used, "the driver's rings were running before this device state: asking it to reset the device"
            );
            self.controller.lost_driver_state();
        }
    }

    /// Puts the `eventq` buffers taken but not yet used back on the ring:
    /// once the rings stop, the driver expects the device to resume at the
    /// avail index it reports, and a buffer taken from before that index is
    /// never offered again. Events use buffers in order, so the unused ones
    /// are always the last ones taken.
    fn return_event_buffers(&mut self) {
        let unused = self.controller.forget_event_buffers();
        if unused == 0 {
            return;
        }
        let Some(vring) = self.vrings.get(usize::from(EVENT_QUEUE)) else {
            return;
        };
        let next = vring.queue_next_avail();
        debug!(unused, next, "eventq buffers returned to the ring");
        vring.set_queue_next_avail(next.wrapping_sub(unused));
    }

    fn process_queue(&mut self, vrings: &[VringRwLock], queue: u16) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let vring = &vrings[usize::from(queue)];
        loop {
            // A kick can race with QEMU stopping the ring (the guest reset
            // the device). A stopped ring yields no chains, yet its avail
            // index may still be ahead of ours: without this check the loop
            // below would spin, holding the backend, and QEMU's next message
            // would never be answered.
            if !vring.get_ref().get_queue().ready() {
                debug!(queue, "kick on a stopped ring ignored");
                return Ok(());
            }
            let was_halted = self.controller.halted();
            self.check_ring_start(vring, queue);
            if self.controller.halted() && queue != EVENT_QUEUE {
                if !was_halted {
                    // RESTARTED goes out on a buffer the driver stocked.
                    self.process_queue(vrings, EVENT_QUEUE)?;
                }
                // Left on the ring: the driver's reset discards them.
                return Ok(());
            }
            if self.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let mut used = Vec::new();
            let mut popped = 0;
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(atomic.memory());
                let Some(chain) = chain else { break };
                popped += 1;
                match queue {
                    REQUEST_QUEUE => used.extend(self.controller.on_request(chain)),
                    CONTROL_QUEUE => used.extend(self.controller.on_control(chain)),
                    _ => used.extend(self.controller.on_event_buffer(chain)),
                }
            }
            give_back(vrings, &used, self.event_idx);
            // Nothing taken yet more announced: an avail index the queue
            // refuses (further ahead than the ring is long). Looping would
            // spin on it; the driver's next kick brings us back.
            if popped == 0
                || !self.event_idx
                || !vring.enable_notification().map_err(io::Error::other)?
            {
                return Ok(());
            }
        }
    }

    fn process_upcalls(&mut self, vrings: &[VringRwLock]) {
        let upcalls = self.upcalls.drain();
        if upcalls.is_empty() {
            return;
        }
        // Without a front-end there is no memory, and no chain to write to:
        // the controller only records port events.
        let mem = self
            .mem
            .as_ref()
            .map(|m| m.memory().into_inner())
            .unwrap_or_default();
        let mut used = Vec::new();
        for upcall in upcalls {
            used.extend(self.controller.on_upcall(&*mem, upcall));
        }
        if self.mem.is_some() {
            give_back(vrings, &used, self.event_idx);
        }
    }
}

/// Puts `used` on the used rings and notifies the driver where needed.
fn give_back(vrings: &[VringRwLock], used: &[Used], event_idx: bool) {
    let mut touched = [false; NUM_QUEUES];
    for u in used {
        let vring = &vrings[usize::from(u.queue)];
        // A stopped ring's memory may already be the guest's again.
        if !vring.get_ref().get_queue().ready() {
            debug!(
                queue = u.queue,
                head = u.head,
                "dropping a used entry for a stopped ring"
            );
            continue;
        }
        if let Err(e) = vring.add_used(u.head, u.len) {
            warn!(queue = u.queue, "add_used: {e}");
        }
        touched[usize::from(u.queue)] = true;
    }
    for (queue, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
        let vring = &vrings[queue];
        let notify = !event_idx || vring.needs_notification().unwrap_or(true);
        if notify {
            if let Err(e) = vring.signal_used_queue() {
                warn!(queue, "signalling the driver: {e}");
            }
        }
    }
}

impl VhostUserBackendMut for VusbBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | if self.iso_offered { F_ISO } else { 0 }
            | F_USB3
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        self.controller.set_iso(features & F_ISO != 0);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&mut self) {
        self.controller.reset();
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.controller.config().to_bytes();
        // Past the end reads as zeros, as a PCI device's unused space does.
        let start = u64::from(offset);
        (start..start + u64::from(size))
            .map(|i| config.get(i as usize).copied().unwrap_or(0))
            .collect()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        // Before the reset below forgets them, and again on each ring: a
        // kick between two rings' stops may have taken them once more.
        self.return_event_buffers();
        // QEMU stops the rings when the driver resets the device: its chains
        // are abandoned (§7).
        if queue_index == u32::from(REQUEST_QUEUE) {
            debug!("rings stopped: resetting the controller");
            self.controller.reset();
        }
        if let Some(checked) = self.ring_checked.get_mut(queue_index as usize) {
            *checked = false;
        }
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if self.vrings.len() != vrings.len() {
            self.vrings = vrings.to_vec();
        }
        match device_event {
            REQUEST_QUEUE | CONTROL_QUEUE | EVENT_QUEUE => {
                self.process_queue(vrings, device_event)?
            }
            UPCALL_EVENT => self.process_upcalls(vrings),
            other => warn!(event = other, "unexpected epoll event"),
        }
        Ok(())
    }
}

/// What a shared, lockable backend looks like to the daemon.
pub type SharedBackend = Arc<std::sync::RwLock<VusbBackend>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_usb::wire::CONFIG_LEN;

    /// A backend whose ports accept everything and never answer.
    fn backend_without_devices(ports: usize) -> VusbBackend {
        struct NoPorts;
        impl crate::transfer::Ports for NoPorts {
            fn submit(&self, _: crate::transfer::Transfer) {}
            fn cancel(&self, _: u8, _: u64) {}
            fn reset_port(&self, _: u8, _: u64) {}
        }
        let (sink, rx) = crate::upcalls::channel().unwrap();
        drop(sink);
        let controller = Controller::new(
            Arc::new(NoPorts),
            crate::transfer::PortLayout::for_devices(ports),
            crate::virtio_usb::Limits {
                max_transfer: 1 << 20,
                max_iso_packets: 1024,
                iso: true,
            },
        );
        VusbBackend::new(controller, rx)
    }

    #[test]
    fn config_reads_are_bounded() {
        let b = backend_without_devices(2);
        assert_eq!(&b.get_config(0, 4), b"vUSB");
        assert_eq!(b.get_config(8, 2), vec![2, 2]);
        assert_eq!(b.get_config(20, 8), vec![0; 8]);
        assert_eq!(b.get_config(u32::MAX, 2), vec![0, 0]);
        assert_eq!(b.get_config(0, CONFIG_LEN as u32).len(), CONFIG_LEN);
    }

    /// A backend with EVENT_IDX on rings at 0x0/0x1000/0x2000 of 64 KiB of
    /// guest memory, ready or stopped, whose requestq's avail index says
    /// `avail`. Returns whether one kick on requestq is handled within 10 s.
    fn kick_ends(ready: bool, avail: u16, rings_checked: bool) -> bool {
        use vm_memory::{Bytes, GuestAddress};

        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let vrings: Vec<VringRwLock> = (0..NUM_QUEUES)
            .map(|_| VringRwLock::new(mem.clone(), 256).unwrap())
            .collect();
        for v in &vrings {
            v.set_queue_size(256);
            v.set_queue_info(0x0, 0x1000, 0x2000).unwrap();
            v.set_queue_event_idx(true);
            v.set_queue_ready(ready);
        }
        mem.memory().write_obj(avail, GuestAddress(0x1002)).unwrap();

        let mut b = backend_without_devices(1);
        b.update_memory(mem).unwrap();
        b.set_event_idx(true);
        b.ring_checked = [rings_checked; NUM_QUEUES];

        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = b.handle_event(REQUEST_QUEUE, EventSet::IN, &vrings, 0);
            let _ = tx.send(r.is_ok());
        });
        done.recv_timeout(std::time::Duration::from_secs(10)) == Ok(true)
    }

    /// A driver (or a stale setup) announcing more chains than the ring
    /// holds: the queue refuses to pop, and with EVENT_IDX "more work"
    /// never goes away. The kick must still end.
    #[test]
    fn an_avail_index_beyond_the_ring_does_not_spin() {
        assert!(
            kick_ends(true, 1000, true),
            "handle_event spun on a bad avail index"
        );
    }

    /// The race behind a guest that hung in its reset: QEMU stopped the
    /// ring while the guest's last chains (three) were still unread.
    #[test]
    fn a_kick_on_a_stopped_ring_returns_at_once() {
        assert!(
            kick_ends(false, 3, false),
            "handle_event spun on a stopped ring"
        );
    }
}
