//! The session: its state, the hellos, and the dispatch of what comes from
//! QEMU and from the device.

use std::collections::BTreeMap;

use tracing::{debug, info, warn};
use usbredir_proto::{packet_type, status, Body, Cap, Caps, Hello, Packet};

use super::device::{Device, Probe};
use super::iso::IsoStream;
use super::streams::{Stream, StreamKind};
use super::transfers::{GuestKind, InFlight, Pending};
use super::{Action, VERSION};
use crate::transfer::{Completion, Port, PortEvent, Status, Upcall};

/// Where the device is, as far as the session knows.
#[derive(Debug)]
pub(super) enum DeviceState {
    Absent,
    /// Connected; its descriptors are being read.
    Probing(Probe),
    /// Read; QEMU has it while `Session::announced` is set.
    Ready(Box<Device>),
    /// Connected, but not offered: its descriptors could not be read, or a
    /// reset failed. It is offered again when it reconnects.
    Unusable(Port),
}

/// One usbredir connection carrying one device (see the module
/// documentation).
#[derive(Debug)]
pub struct Session {
    /// What this side announces.
    pub(super) ours: Caps,
    /// What both sides have: empty until QEMU's hello.
    pub(super) caps: Caps,
    pub(super) hello_sent: bool,
    pub(super) hello_seen: bool,
    pub(super) closed: bool,
    pub(super) device: DeviceState,
    /// QEMU has the device: device_connect went out and no
    /// device_disconnect since. Requests are served only then.
    pub(super) announced: bool,
    /// device_disconnect went out and QEMU will acknowledge it; nothing is
    /// announced until it has.
    pub(super) awaiting_ack: bool,
    pub(super) inflight: InFlight,
    /// Receiving streams, by endpoint.
    pub(super) streams: BTreeMap<u8, Stream>,
    /// Isochronous streams, by endpoint.
    pub(super) iso: BTreeMap<u8, IsoStream>,
    /// The port reset under way, if any.
    pub(super) reset_token: Option<u64>,
    pub(super) next_token: u64,
    pub(super) complaints: u64,
    /// Interrupt IN transfers each interrupt receiving stream keeps
    /// outstanding.
    pub(super) interrupt_transfers: u8,
}

impl Session {
    /// A session announcing `caps` (see [`super::DEFAULT_CAPS`]), less bulk
    /// streams, which this side cannot provide.
    pub fn new(caps: Caps) -> Self {
        Self {
            ours: caps.without(Cap::BulkStreams),
            caps: Caps::empty(),
            hello_sent: false,
            hello_seen: false,
            closed: false,
            device: DeviceState::Absent,
            announced: false,
            awaiting_ack: false,
            inflight: InFlight::new(),
            streams: BTreeMap::new(),
            iso: BTreeMap::new(),
            reset_token: None,
            next_token: 1,
            complaints: 0,
            interrupt_transfers: super::streams::INTERRUPT_TRANSFERS,
        }
    }

    /// Keeps `n` interrupt IN transfers outstanding per interrupt receiving
    /// stream (at least one: QEMU waits for the packets the stream sends).
    pub fn with_interrupt_transfers(mut self, n: u8) -> Self {
        self.interrupt_transfers = n.max(1);
        self
    }

    /// This side's hello, the first thing to send on the connection (with
    /// [`Caps::empty()`], as every hello travels). Should the caller hand in
    /// anything before taking it, the first answer starts with it instead.
    pub fn start(&mut self) -> Packet {
        self.hello_sent = true;
        Packet::new(0, Body::Hello(Hello::new(VERSION, self.ours)))
    }

    /// The negotiated capabilities, for decoding the next packet from QEMU
    /// and encoding what is sent: empty until QEMU's hello has arrived.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The port of the device, while one is connected. It is the port its
    /// `Connected` event named: the USB/IP client puts a SuperSpeed device
    /// on a port of the USB 3 hub.
    pub fn port(&self) -> Option<Port> {
        match &self.device {
            DeviceState::Absent => None,
            DeviceState::Probing(p) => Some(p.port),
            DeviceState::Ready(d) => Some(d.port),
            DeviceState::Unusable(port) => Some(*port),
        }
    }

    /// Whether QEMU has the device.
    pub fn announced(&self) -> bool {
        self.announced
    }

    /// Guest requests waiting for the device.
    pub fn in_flight(&self) -> usize {
        self.inflight.guest_requests()
    }

    /// How many times QEMU broke the protocol or asked for something the
    /// device does not have.
    pub fn complaints(&self) -> u64 {
        self.complaints
    }

    /// A packet decoded from QEMU (sender `Guest`).
    pub fn on_packet(&mut self, packet: Packet) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        self.greet(&mut out);
        let Packet { id, body } = packet;
        if !self.hello_seen {
            match body {
                Body::Hello(h) => self.on_hello(&h, &mut out),
                other => {
                    let why = format!(
                        "{} before the hello",
                        packet_type::name(other.packet_type())
                    );
                    self.close(why, &mut out);
                }
            }
            return out;
        }
        match body {
            Body::Hello(_) => self.complain("a second hello, ignored"),
            Body::Reset => self.reset(&mut out),
            Body::SetConfiguration { configuration } => {
                self.on_config_request(id, GuestKind::SetConfiguration(configuration), &mut out)
            }
            Body::GetConfiguration => {
                self.on_config_request(id, GuestKind::GetConfiguration, &mut out)
            }
            Body::SetAltSetting { interface, alt } => {
                self.on_config_request(id, GuestKind::SetAltSetting { interface, alt }, &mut out)
            }
            Body::GetAltSetting { interface } => {
                self.on_config_request(id, GuestKind::GetAltSetting { interface }, &mut out)
            }
            Body::StartIsoStream {
                endpoint,
                pkts_per_urb,
                no_urbs,
            } => self.start_iso_stream(id, endpoint, pkts_per_urb, no_urbs, &mut out),
            Body::StopIsoStream { endpoint } => self.stop_iso_stream(id, endpoint, &mut out),
            Body::Iso(p) => self.on_iso_packet(p, &mut out),
            Body::StartInterruptReceiving { endpoint } => {
                self.start_stream(id, endpoint, StreamKind::Interrupt, &mut out)
            }
            Body::StopInterruptReceiving { endpoint } => {
                self.stop_stream(id, endpoint, StreamKind::Interrupt, &mut out)
            }
            Body::StartBulkReceiving {
                stream_id,
                bytes_per_transfer,
                endpoint,
                no_transfers,
            } => {
                if self.needs(Cap::BulkReceiving, "start_bulk_receiving", &mut out) {
                    let kind = StreamKind::Bulk {
                        stream_id,
                        bytes_per_transfer,
                        transfers: no_transfers,
                    };
                    self.start_stream(id, endpoint, kind, &mut out);
                }
            }
            Body::StopBulkReceiving {
                stream_id,
                endpoint,
            } => {
                if self.needs(Cap::BulkReceiving, "stop_bulk_receiving", &mut out) {
                    let kind = StreamKind::Bulk {
                        stream_id,
                        bytes_per_transfer: 0,
                        transfers: 0,
                    };
                    self.stop_stream(id, endpoint, kind, &mut out);
                }
            }
            Body::AllocBulkStreams {
                endpoints,
                no_streams,
            } => {
                self.complain("alloc_bulk_streams without the bulk_streams capability");
                let status = status::IOERROR;
                let body = Body::BulkStreamsStatus {
                    endpoints,
                    no_streams,
                    status,
                };
                send(&mut out, id, body);
            }
            Body::FreeBulkStreams { endpoints } => {
                self.complain("free_bulk_streams without the bulk_streams capability");
                let status = status::IOERROR;
                let body = Body::BulkStreamsStatus {
                    endpoints,
                    no_streams: 0,
                    status,
                };
                send(&mut out, id, body);
            }
            Body::CancelDataPacket => self.on_cancel(id, &mut out),
            Body::FilterReject => {
                if self.needs_ours(Cap::Filter, "filter_reject", &mut out) {
                    self.on_reject(&mut out);
                }
            }
            Body::FilterFilter { rules } => {
                if self.needs_ours(Cap::Filter, "filter_filter", &mut out) {
                    debug!(%rules, "QEMU's device filter (applied by QEMU)");
                }
            }
            Body::DeviceDisconnectAck => {
                if self.needs_ours(Cap::DeviceDisconnectAck, "device_disconnect_ack", &mut out) {
                    if self.awaiting_ack {
                        self.awaiting_ack = false;
                        self.announce(&mut out);
                    } else {
                        self.complain("device_disconnect_ack without a device_disconnect");
                    }
                }
            }
            body @ (Body::Control(_) | Body::Bulk(_) | Body::Interrupt(_)) => {
                self.on_data_packet(id, body, &mut out)
            }
            other => {
                let why = format!(
                    "{} is never sent by the usb-guest",
                    packet_type::name(other.packet_type())
                );
                self.close(why, &mut out);
            }
        }
        out
    }

    /// What the device reported.
    pub fn on_upcall(&mut self, upcall: Upcall) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        self.greet(&mut out);
        match upcall {
            Upcall::Completed(c) => self.on_completion(c, &mut out),
            Upcall::Event(PortEvent::Connected { port, speed }) => {
                if !matches!(self.device, DeviceState::Absent) {
                    warn!(
                        port,
                        "a device connected while one was still there; dropping the old one"
                    );
                    self.withdraw(&mut out);
                }
                let (probe, read) = Probe::start(port, speed);
                self.device = DeviceState::Probing(probe);
                self.submit_read(port, read, &mut out);
            }
            Upcall::Event(PortEvent::Disconnected { port }) => {
                if self.port() == Some(port) {
                    info!(port, "the device is gone");
                    self.withdraw(&mut out);
                    self.device = DeviceState::Absent;
                } else {
                    debug!(port, "disconnect of a port without our device, ignored");
                }
            }
            Upcall::ResetDone { token, status, .. } => {
                if self.reset_token != Some(token) {
                    debug!(token, "reset outcome for a reset no longer wanted");
                } else {
                    self.reset_token = None;
                    if status != Status::Ok {
                        // The protocol has no reset status: a device that
                        // does not come back from a reset is disconnected.
                        warn!(?status, "the device did not come back from a reset");
                        self.withdraw(&mut out);
                        if let Some(port) = self.port() {
                            self.device = DeviceState::Unusable(port);
                        }
                    }
                }
            }
        }
        out
    }

    fn on_completion(&mut self, c: Completion, out: &mut Vec<Action>) {
        let tag = c.id;
        match self.inflight.take(tag) {
            None => debug!(tag, status = ?c.status, "completion of a transfer no longer wanted"),
            Some(Pending::Guest(req)) => self.finish_guest(req, &c, out),
            Some(Pending::Probe) => self.on_probe_completion(&c, out),
            Some(Pending::Stream { endpoint }) => self.on_stream_completion(endpoint, tag, &c, out),
            Some(Pending::ClearHalt { endpoint }) => self.on_clear_halt(endpoint, tag, &c, out),
            Some(Pending::Iso { endpoint }) => self.on_iso_completion(endpoint, tag, &c, out),
        }
    }

    /// Whether the negotiated capabilities have `cap`, which QEMU's packet
    /// needs; closes the connection if not.
    fn needs(&mut self, cap: Cap, what: &str, out: &mut Vec<Action>) -> bool {
        if self.caps.has(cap) {
            return true;
        }
        self.close(format!("{what} without the {cap:?} capability"), out);
        false
    }

    /// Whether this side announced `cap`, which QEMU's packet needs
    /// (usbredirparser refuses such a packet unless its receiver announced
    /// the capability); closes the connection if not.
    fn needs_ours(&mut self, cap: Cap, what: &str, out: &mut Vec<Action>) -> bool {
        if self.ours.has(cap) {
            return true;
        }
        self.close(format!("{what} without our {cap:?} capability"), out);
        false
    }

    fn close(&mut self, why: String, out: &mut Vec<Action>) {
        self.complaints += 1;
        self.closed = true;
        out.push(Action::Close(why));
    }

    /// Logs QEMU's mistake; one that keeps making them is logged less
    /// often so it cannot flood the log.
    pub(super) fn complain(&mut self, what: &str) {
        self.complaints += 1;
        if self.complaints <= 20 || self.complaints.is_multiple_of(1000) {
            warn!(count = self.complaints, "bad packet from QEMU: {what}");
        }
    }

    /// An id for a packet this side numbers itself (receiving streams),
    /// within what the header carries.
    pub(super) fn own_id(&self, n: u64) -> u64 {
        if self.caps.has(Cap::Ids64) {
            n
        } else {
            n & u64::from(u32::MAX)
        }
    }
}

pub(super) fn send(out: &mut Vec<Action>, id: u64, body: Body) {
    out.push(Action::Send(Packet::new(id, body)));
}
