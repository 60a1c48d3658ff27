//! The virtio-usb controller: what the device does with each chain the guest
//! makes available and with each [`Upcall`] from the devices behind its
//! ports. It owns no queue and no thread: the caller pops chains, hands them
//! in, and puts the [`Used`] entries it gets back on the used rings.

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::sync::Arc;

use tracing::{debug, trace, warn};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use super::chain::Chain;
use super::request::{self, Limits, WritableLayout};
use super::wire::{self, Config, CtrlReq, XferResp, CONTROL_QUEUE, CTRL_REQ_LEN, EVENT_LEN};
use super::wire::{CTRL_CANCEL, CTRL_PORT_RESET, CTRL_RESP_LEN, EVENT_QUEUE, REQUEST_QUEUE};
use super::wire::{ISO_DESC_LEN, XFER_RESP_LEN};
use crate::transfer::{
    Completion, IsoPacket, IsoResult, Port, PortEvent, PortLayout, Ports, Speed, Status, Transfer,
    Upcall,
};

/// A chain given back to the driver: put `head` on queue `queue`'s used ring
/// with length `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub queue: u16,
    pub head: u16,
    pub len: u32,
}

/// A transfer the devices are working on.
#[derive(Debug)]
struct InFlight {
    /// The driver's id; the devices know the transfer by its tag.
    id: u64,
    chain: Chain,
    port: Port,
    layout: WritableLayout,
    iso_packets: Vec<IsoPacket>,
}

/// The device model of `docs/virtio-usb.md`.
pub struct Controller {
    ports: Arc<dyn Ports>,
    layout: PortLayout,
    limits: Limits,
    /// By tag: the devices see a tag of ours instead of the driver's id,
    /// so a late answer to a request a reset abandoned can never be taken
    /// for a new request that reuses its id.
    in_flight: HashMap<u64, InFlight>,
    /// Driver id to tag.
    tags: HashMap<u64, u64>,
    next_tag: u64,
    /// PORT_RESET chains waiting for [`Upcall::ResetDone`], by token.
    resets: HashMap<u64, Chain>,
    next_token: u64,
    /// The speed of the device on each port (index 0 unused).
    attached: Vec<Option<Speed>>,
    /// Events not yet delivered, oldest first.
    events: VecDeque<PortEvent>,
    /// `eventq` buffers the driver stocked, waiting for events.
    event_buffers: VecDeque<Chain>,
    /// The driver's rings outlived our state of them (§7.1): nothing on
    /// `requestq` or `controlq` is served until the driver resets us.
    halted: bool,
    /// `RESTARTED` is still to be delivered.
    restart_pending: bool,
    complaints: u64,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("layout", &self.layout)
            .field("in_flight", &self.in_flight.len())
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Controller {
    pub fn new(ports: Arc<dyn Ports>, layout: PortLayout, limits: Limits) -> Self {
        Self {
            ports,
            layout,
            limits,
            in_flight: HashMap::new(),
            tags: HashMap::new(),
            next_tag: 1,
            resets: HashMap::new(),
            next_token: 1,
            attached: vec![None; usize::from(layout.total()) + 1],
            events: VecDeque::new(),
            event_buffers: VecDeque::new(),
            halted: false,
            restart_pending: false,
            complaints: 0,
        }
    }

    pub fn config(&self) -> Config {
        Config {
            usb2_ports: self.layout.usb2_ports,
            usb3_ports: self.layout.usb3_ports,
            max_requests: 0,
            max_transfer: self.limits.max_transfer,
            max_iso_packets: self.limits.max_iso_packets as u16,
        }
    }

    /// Whether the driver accepted `VIRTIO_USB_F_ISO`.
    pub fn set_iso(&mut self, enabled: bool) {
        self.limits.iso = enabled;
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A virtio reset or a new front-end: forget every chain without
    /// completing it (the driver has given up on them), stop the devices'
    /// work on them, and announce the attached devices again (§7).
    pub fn reset(&mut self) {
        self.abandon_requests();
        self.event_buffers.clear();
        self.events.clear();
        self.halted = false;
        self.restart_pending = false;
        for (port, speed) in self.attached.iter().enumerate() {
            if let Some(speed) = *speed {
                self.events.push_back(PortEvent::Connected {
                    port: port as Port,
                    speed,
                });
            }
        }
    }

    /// The driver's rings resume where a device state we no longer have
    /// left them (this process restarted, or the rings were stopped and
    /// started again): which of the chains on them were already used, and
    /// reused since, cannot be known. Serve none of them; tell the driver
    /// to reset us (§7.1).
    pub fn lost_driver_state(&mut self) {
        if self.halted {
            return;
        }
        self.abandon_requests();
        self.events.clear();
        self.halted = true;
        self.restart_pending = true;
    }

    /// Forgets every transfer and PORT_RESET chain without completing it,
    /// and stops the devices' work on the transfers.
    fn abandon_requests(&mut self) {
        for (tag, t) in self.in_flight.drain() {
            self.ports.cancel(t.port, tag);
        }
        self.tags.clear();
        self.resets.clear();
    }

    /// Drops the `eventq` buffers waiting for events and says how many there
    /// were; the caller puts them back on the ring.
    pub fn forget_event_buffers(&mut self) -> u16 {
        let n = self.event_buffers.len();
        self.event_buffers.clear();
        // A ring holds at most 32768 chains.
        n as u16
    }

    /// Whether `requestq` and `controlq` wait for the driver's reset.
    pub fn halted(&self) -> bool {
        self.halted
    }

    /// A chain from `requestq`.
    pub fn on_request<M>(&mut self, chain: DescriptorChain<M>) -> Option<Used>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        if self.halted {
            // Possibly a chain the driver already had back (§7.1).
            return None;
        }
        let mem = chain.memory();
        let chain = match self.collect(REQUEST_QUEUE, chain.clone()) {
            Ok(chain) => chain,
            Err(unusable) => return Some(unusable),
        };
        let transfer = match request::parse(&chain, mem, &self.layout, &self.limits) {
            Ok(t) => t,
            Err(why) => return self.reject(mem, REQUEST_QUEUE, chain, XFER_RESP_LEN, &why),
        };
        if self.tags.contains_key(&transfer.id) {
            let why = format!("request id {:#x} is already in flight", transfer.id);
            return self.reject(mem, REQUEST_QUEUE, chain, XFER_RESP_LEN, &why);
        }
        let layout = WritableLayout::of_transfer(&transfer);
        let tag = self.next_tag;
        self.next_tag += 1;
        trace!(
            id = transfer.id,
            tag,
            port = transfer.port,
            endpoint = transfer.endpoint,
            length = transfer.length,
            "request"
        );
        self.tags.insert(transfer.id, tag);
        self.in_flight.insert(
            tag,
            InFlight {
                id: transfer.id,
                chain,
                port: transfer.port,
                layout,
                iso_packets: transfer.iso_packets.clone(),
            },
        );
        self.ports.submit(Transfer {
            id: tag,
            ..transfer
        });
        None
    }

    /// A chain from `controlq`.
    pub fn on_control<M>(&mut self, chain: DescriptorChain<M>) -> Option<Used>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        if self.halted {
            // Possibly a chain the driver already had back (§7.1).
            return None;
        }
        let mem = chain.memory();
        let chain = match self.collect(CONTROL_QUEUE, chain.clone()) {
            Ok(chain) => chain,
            Err(unusable) => return Some(unusable),
        };
        if chain.readable_len() != CTRL_REQ_LEN as u64
            || chain.writable_len() != CTRL_RESP_LEN as u64
        {
            let why = format!(
                "control chain has {}+{} bytes, not {CTRL_REQ_LEN}+{CTRL_RESP_LEN}",
                chain.readable_len(),
                chain.writable_len()
            );
            return self.reject(mem, CONTROL_QUEUE, chain, CTRL_RESP_LEN, &why);
        }
        let mut bytes = [0u8; CTRL_REQ_LEN];
        if let Err(e) = chain.read(mem, 0, &mut bytes) {
            return self.reject(mem, CONTROL_QUEUE, chain, CTRL_RESP_LEN, &e.to_string());
        }
        let req = CtrlReq::parse(&bytes);
        if !self.layout.exists(req.port) {
            let why = format!(
                "control request for port {}, which does not exist",
                req.port
            );
            return self.reject(mem, CONTROL_QUEUE, chain, CTRL_RESP_LEN, &why);
        }
        match req.code {
            CTRL_CANCEL => {
                let tag = self
                    .tags
                    .get(&req.id)
                    .copied()
                    .filter(|tag| self.in_flight[tag].port == req.port);
                let status = if let Some(tag) = tag {
                    self.ports.cancel(req.port, tag);
                    Status::Ok
                } else {
                    Status::NotFound
                };
                debug!(port = req.port, id = req.id, ?status, "cancel");
                Some(self.finish_control(mem, chain, status, None))
            }
            CTRL_PORT_RESET => {
                debug!(port = req.port, "port reset");
                let token = self.next_token;
                self.next_token += 1;
                self.resets.insert(token, chain);
                self.ports.reset_port(req.port, token);
                None
            }
            code => {
                let why = format!("unknown control code {code}");
                self.reject(mem, CONTROL_QUEUE, chain, CTRL_RESP_LEN, &why)
            }
        }
    }

    /// A buffer from `eventq`; returns the events it could deliver now.
    pub fn on_event_buffer<M>(&mut self, chain: DescriptorChain<M>) -> Vec<Used>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mem = chain.memory();
        let chain = match self.collect(EVENT_QUEUE, chain.clone()) {
            Ok(chain) => chain,
            Err(unusable) => return vec![unusable],
        };
        if chain.readable_len() != 0 || chain.writable_len() < EVENT_LEN as u64 {
            self.complain(&format!(
                "eventq buffer has {}+{} bytes, needs 0+{EVENT_LEN}",
                chain.readable_len(),
                chain.writable_len()
            ));
            return vec![Used {
                queue: EVENT_QUEUE,
                head: chain.head,
                len: 0,
            }];
        }
        self.event_buffers.push_back(chain);
        self.deliver_events(mem)
    }

    /// What the devices reported; returns the chains it completes.
    pub fn on_upcall(&mut self, mem: &(impl GuestMemory + ?Sized), upcall: Upcall) -> Vec<Used> {
        match upcall {
            Upcall::Completed(c) => self.complete(mem, c).into_iter().collect(),
            Upcall::Event(event) => {
                let slot = usize::from(event.port());
                if slot == 0 || slot >= self.attached.len() {
                    warn!(
                        port = event.port(),
                        "event for a port that does not exist, dropped"
                    );
                    return Vec::new();
                }
                self.attached[slot] = match event {
                    PortEvent::Connected { speed, .. } => Some(speed),
                    PortEvent::Disconnected { .. } => None,
                };
                if self.halted {
                    // The reset announces whatever is attached by then.
                    return Vec::new();
                }
                self.events.push_back(event);
                self.deliver_events(mem)
            }
            Upcall::ResetDone {
                token,
                status,
                speed,
                ..
            } => match self.resets.remove(&token) {
                Some(chain) => vec![self.finish_control(mem, chain, status, speed)],
                None => Vec::new(),
            },
        }
    }

    fn complete(&mut self, mem: &(impl GuestMemory + ?Sized), mut c: Completion) -> Option<Used> {
        let Some(t) = self.in_flight.remove(&c.id) else {
            // Completions of chains a reset dropped.
            debug!(tag = c.id, "completion for a request no longer in flight");
            return None;
        };
        self.tags.remove(&t.id);
        trace!(id = t.id, tag = c.id, status = ?c.status, actual = c.actual_length, "completed");
        // A request that failed as a whole may come without per-packet
        // results; the driver still reads one per packet.
        if c.iso_results.is_empty() && c.status != Status::Ok && c.actual_length == 0 {
            c.iso_results = vec![
                IsoResult {
                    actual_length: 0,
                    status: c.status,
                };
                t.iso_packets.len()
            ];
        }
        let resp = match check_completion(&t, &c) {
            Ok(()) => {
                if let Err(e) = write_results(mem, &t, &c) {
                    warn!(id = t.id, "writing a completion: {e}");
                }
                XferResp {
                    status: c.status as u32,
                    actual_length: c.actual_length,
                    start_frame: c.start_frame,
                    error_count: c.error_count,
                }
            }
            Err(why) => {
                warn!(
                    port = c.port,
                    id = t.id,
                    "device answered inconsistently: {why}"
                );
                XferResp::failed(Status::Protocol)
            }
        };
        if let Err(e) = t.chain.write(mem, t.layout.response_at, &resp.to_bytes()) {
            warn!(id = t.id, "writing a response: {e}");
        }
        Some(Used {
            queue: REQUEST_QUEUE,
            head: t.chain.head,
            len: t.layout.total() as u32,
        })
    }

    fn deliver_events(&mut self, mem: &(impl GuestMemory + ?Sized)) -> Vec<Used> {
        let mut used = Vec::new();
        if self.restart_pending {
            let Some(chain) = self.event_buffers.pop_front() else {
                return used;
            };
            if let Err(e) = chain.write(mem, 0, &wire::restarted_event_bytes()) {
                warn!("writing an event: {e}");
            }
            self.restart_pending = false;
            used.push(Used {
                queue: EVENT_QUEUE,
                head: chain.head,
                len: EVENT_LEN as u32,
            });
        }
        while !self.events.is_empty() && !self.event_buffers.is_empty() {
            let event = self.events.pop_front().expect("not empty");
            let chain = self.event_buffers.pop_front().expect("not empty");
            if let Err(e) = chain.write(mem, 0, &wire::event_bytes(&event)) {
                warn!("writing an event: {e}");
            }
            used.push(Used {
                queue: EVENT_QUEUE,
                head: chain.head,
                len: EVENT_LEN as u32,
            });
        }
        used
    }

    fn finish_control(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
        chain: Chain,
        status: Status,
        speed: Option<Speed>,
    ) -> Used {
        if let Err(e) = chain.write(mem, 0, &wire::ctrl_resp_bytes(status, speed)) {
            warn!("writing a control response: {e}");
        }
        Used {
            queue: CONTROL_QUEUE,
            head: chain.head,
            len: CTRL_RESP_LEN as u32,
        }
    }

    /// Collects a chain, or gives it back untouched when it cannot be used
    /// at all (§4.2).
    fn collect<M>(&mut self, queue: u16, chain: DescriptorChain<M>) -> Result<Chain, Used>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        Chain::collect(chain).map_err(|(head, e)| {
            self.complain(&format!("queue {queue} chain {head} refused: {e}"));
            Used {
                queue,
                head,
                len: 0,
            }
        })
    }

    /// Answers a chain that broke the spec with `INVALID` in the last bytes
    /// of its writable part, or with nothing if there is no room (§4.2).
    fn reject(
        &mut self,
        mem: &(impl GuestMemory + ?Sized),
        queue: u16,
        chain: Chain,
        resp_len: usize,
        why: &str,
    ) -> Option<Used> {
        self.complain(&format!("queue {queue} chain {}: {why}", chain.head));
        let writable = chain.writable_len();
        let mut len = 0;
        if writable >= resp_len as u64 && writable <= u64::from(u32::MAX) {
            let resp = if queue == REQUEST_QUEUE {
                XferResp::failed(Status::Invalid).to_bytes().to_vec()
            } else {
                wire::ctrl_resp_bytes(Status::Invalid, None).to_vec()
            };
            match chain.write(mem, writable - resp_len as u64, &resp) {
                Ok(()) => len = writable as u32,
                Err(e) => warn!("writing INVALID: {e}"),
            }
        }
        Some(Used {
            queue,
            head: chain.head,
            len,
        })
    }

    /// Logs a guest's mistake; a guest that keeps making them is logged
    /// less often so it cannot flood the log.
    fn complain(&mut self, what: &str) {
        self.complaints += 1;
        if self.complaints <= 20 || self.complaints.is_multiple_of(1000) {
            warn!(
                count = self.complaints,
                "bad request from the guest: {what}"
            );
        }
    }
}

/// The device's answer must fit the request it answers (§4.2); the devices
/// are behind a network and are not trusted to.
fn check_completion(t: &InFlight, c: &Completion) -> Result<(), String> {
    let buffer = t.layout.data_len;
    if c.port != t.port {
        return Err(format!(
            "completion from port {} for port {}",
            c.port, t.port
        ));
    }
    for (offset, data) in &c.in_data {
        let end = u64::from(*offset) + data.len() as u64;
        if end > u64::from(buffer) {
            return Err(format!(
                "{} IN bytes at {offset} overflow the {buffer}-byte buffer",
                data.len()
            ));
        }
    }
    if t.iso_packets.is_empty() {
        if !c.iso_results.is_empty() {
            return Err("isochronous results for a non-isochronous request".into());
        }
        if buffer > 0 && c.actual_length > buffer {
            return Err(format!(
                "actual_length {} exceeds the {buffer}-byte buffer",
                c.actual_length
            ));
        }
        return Ok(());
    }
    if c.iso_results.len() != t.iso_packets.len() {
        return Err(format!(
            "{} isochronous results for {} packets",
            c.iso_results.len(),
            t.iso_packets.len()
        ));
    }
    let mut sum = 0u64;
    for (i, (r, p)) in c.iso_results.iter().zip(&t.iso_packets).enumerate() {
        if r.actual_length > p.length {
            return Err(format!(
                "packet {i}: {} bytes for a {}-byte packet",
                r.actual_length, p.length
            ));
        }
        sum += u64::from(r.actual_length);
    }
    if sum != u64::from(c.actual_length) {
        return Err(format!(
            "packets add up to {sum}, actual_length is {}",
            c.actual_length
        ));
    }
    Ok(())
}

fn write_results(
    mem: &(impl GuestMemory + ?Sized),
    t: &InFlight,
    c: &Completion,
) -> Result<(), super::chain::Error> {
    for (offset, data) in &c.in_data {
        t.chain.write(mem, u64::from(*offset), data)?;
    }
    for (i, r) in c.iso_results.iter().enumerate() {
        let at = t.layout.iso_results_at + (i * ISO_DESC_LEN) as u64;
        t.chain.write(mem, at, &wire::iso_result_bytes(r))?;
    }
    Ok(())
}
