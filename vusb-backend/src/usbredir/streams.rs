//! Interrupt and bulk receiving: on QEMU's start_interrupt_receiving or
//! start_bulk_receiving this side keeps IN transfers outstanding on the
//! endpoint and turns each completion into an interrupt_packet or a
//! buffered_bulk_packet, resubmitting it, until QEMU stops the stream.
//!
//! Following usbredirhost: the start and the stop are answered with a
//! receiving status carrying their id; the packets are numbered from 0 per
//! stream, and again from 0 once a stall has been cleared (QEMU looks at
//! the endpoint, not the id); a stall is cleared with
//! CLEAR_FEATURE(ENDPOINT_HALT) and the stream restarted, without telling
//! QEMU; and a stream that stops for any reason but QEMU's stop is
//! reported with status stall.

use bytes::Bytes;
use tracing::warn;
use usbredir_proto::{ep_type, status, Body, BufferedBulkPacket, InterruptPacket};

use super::session::{send, Session};
use super::transfers::{in_data, standard, Pending};
use super::{redir_status, Action};
use crate::transfer::{Completion, Status, Transfer, TransferKind};

/// Interrupt IN transfers kept outstanding unless the session is told
/// otherwise ([`Session::with_interrupt_transfers`]): the endpoint is
/// polled again while a completion is still on its way back over the
/// network. usbredirhost keeps 5 (`INTERRUPT_TRANSFER_COUNT`), which a
/// device reporting every 8 ms outruns on a link with a round trip beyond
/// 40 ms; the vhost-user path's prefetch depth is the default here too.
pub(super) const INTERRUPT_TRANSFERS: u8 = crate::prefetch::DEFAULT_DEPTH;
/// The most transfers a bulk receiving stream may ask for (usbredirhost's
/// `MAX_TRANSFER_COUNT`).
const MAX_TRANSFERS: u8 = 16;
/// Failed transfers in a row after which a stream is given up and reported
/// stalled. usbredirhost resubmits for ever; over a network, a device that
/// fails every transfer at once would keep both connections busy for
/// nothing.
const MAX_STREAM_ERRORS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamKind {
    Interrupt,
    /// The fields of start_bulk_receiving (unused in a stop).
    Bulk {
        stream_id: u32,
        bytes_per_transfer: u32,
        transfers: u8,
    },
}

impl StreamKind {
    fn name(self) -> &'static str {
        match self {
            StreamKind::Interrupt => "interrupt receiving",
            StreamKind::Bulk { .. } => "bulk receiving",
        }
    }

    /// The receiving status packet for this kind of stream.
    fn status(self, endpoint: u8, status: u8) -> Body {
        match self {
            StreamKind::Interrupt => Body::InterruptReceivingStatus { status, endpoint },
            StreamKind::Bulk { stream_id, .. } => Body::BulkReceivingStatus {
                stream_id,
                endpoint,
                status,
            },
        }
    }
}

/// One endpoint being received.
#[derive(Debug)]
pub(super) struct Stream {
    kind: StreamKind,
    /// Bytes per transfer.
    length: u32,
    /// Transfers kept outstanding.
    count: u8,
    /// Its transfers on the device.
    tags: Vec<u64>,
    /// The CLEAR_FEATURE(ENDPOINT_HALT) under way after a stall.
    clearing: Option<u64>,
    /// The number of the next packet.
    next_id: u64,
    /// Failed transfers in a row.
    errors: u32,
}

impl Session {
    pub(super) fn start_stream(
        &mut self,
        id: u64,
        endpoint: u8,
        kind: StreamKind,
        out: &mut Vec<Action>,
    ) {
        let (length, count) = match self.check_stream(endpoint, kind) {
            Ok(sizes) => sizes,
            Err((status, why)) => {
                if let Some(why) = why {
                    self.complain(&why);
                }
                send(out, id, kind.status(endpoint, status));
                return;
            }
        };
        let stream = Stream {
            kind,
            length,
            count,
            tags: Vec::new(),
            clearing: None,
            next_id: 0,
            errors: 0,
        };
        self.streams.insert(endpoint, stream);
        for _ in 0..count {
            self.submit_stream_transfer(endpoint, out);
        }
        send(out, id, kind.status(endpoint, status::SUCCESS));
    }

    /// The transfer size and count for a stream QEMU asks to start, or the
    /// status to refuse it with (and a complaint, if QEMU is at fault).
    fn check_stream(
        &self,
        endpoint: u8,
        kind: StreamKind,
    ) -> Result<(u32, u8), (u8, Option<String>)> {
        let Some(device) = self.device() else {
            return Err((status::STALL, None));
        };
        let layout = device.layout();
        let wanted = match kind {
            StreamKind::Interrupt => ep_type::INTERRUPT,
            StreamKind::Bulk { .. } => ep_type::BULK,
        };
        let refuse = |status, why: String| {
            let why = format!("{} on endpoint {endpoint:#04x}: {why}", kind.name());
            Err((status, Some(why)))
        };
        if layout.ep_type(endpoint) != wanted {
            return refuse(
                status::STALL,
                "not such an endpoint in the current configuration".into(),
            );
        }
        let max_packet = u32::from(layout.max_packet_size(endpoint));
        if max_packet == 0 {
            return refuse(status::STALL, "the endpoint's packets hold 0 bytes".into());
        }
        if self.streams.contains_key(&endpoint) {
            return refuse(status::INVAL, "already started".into());
        }
        match kind {
            StreamKind::Interrupt => Ok((max_packet, self.interrupt_transfers)),
            StreamKind::Bulk {
                stream_id,
                bytes_per_transfer,
                transfers,
            } => {
                if stream_id != 0 {
                    return refuse(
                        status::STALL,
                        format!("stream {stream_id} without bulk streams"),
                    );
                }
                if bytes_per_transfer == 0 || bytes_per_transfer % max_packet != 0 {
                    let why = format!(
                        "{bytes_per_transfer} bytes per transfer is not a multiple of {max_packet}"
                    );
                    return refuse(status::STALL, why);
                }
                if transfers == 0 || transfers > MAX_TRANSFERS {
                    return refuse(status::STALL, format!("{transfers} transfers"));
                }
                Ok((bytes_per_transfer, transfers))
            }
        }
    }

    /// QEMU's stop: answered with success, also when nothing was running,
    /// as usbredirhost answers (but not once the device is withdrawn).
    pub(super) fn stop_stream(
        &mut self,
        id: u64,
        endpoint: u8,
        kind: StreamKind,
        out: &mut Vec<Action>,
    ) {
        match self.streams.get(&endpoint) {
            Some(s) if std::mem::discriminant(&s.kind) == std::mem::discriminant(&kind) => {
                self.end_stream(endpoint, None, out);
            }
            Some(s) => {
                let why = format!(
                    "stop of {} on endpoint {endpoint:#04x}, which runs {}",
                    kind.name(),
                    s.kind.name()
                );
                self.complain(&why);
            }
            None => {}
        }
        if self.announced {
            send(out, id, kind.status(endpoint, status::SUCCESS));
        }
    }

    /// Ends the streams (receiving and isochronous) on the endpoints `pick`
    /// chooses; with `notify`, QEMU hears of each with status stall.
    pub(super) fn stop_streams(
        &mut self,
        pick: impl Fn(u8) -> bool,
        notify: bool,
        out: &mut Vec<Action>,
    ) {
        let notify = notify.then_some(status::STALL);
        let endpoints: Vec<u8> = self.streams.keys().copied().filter(|&e| pick(e)).collect();
        for endpoint in endpoints {
            self.end_stream(endpoint, notify, out);
        }
        let endpoints: Vec<u8> = self.iso.keys().copied().filter(|&e| pick(e)).collect();
        for endpoint in endpoints {
            self.end_iso_stream(endpoint, notify, out);
        }
    }

    /// Ends a stream: cancels its transfers and, with `notify`, sends its
    /// receiving status.
    fn end_stream(&mut self, endpoint: u8, notify: Option<u8>, out: &mut Vec<Action>) {
        let Some(stream) = self.streams.remove(&endpoint) else {
            return;
        };
        let port = self.port();
        for tag in stream.tags.iter().copied().chain(stream.clearing) {
            self.inflight.take(tag);
            if let Some(port) = port {
                out.push(Action::Cancel { port, tag });
            }
        }
        if let (Some(status), true) = (notify, self.announced) {
            send(out, 0, stream.kind.status(endpoint, status));
        }
    }

    fn submit_stream_transfer(&mut self, endpoint: u8, out: &mut Vec<Action>) {
        let Some(device) = self.device() else {
            return;
        };
        let port = device.port;
        let interval = device.layout().interval(endpoint);
        let Some(stream) = self.streams.get(&endpoint) else {
            return;
        };
        let (kind, length) = match stream.kind {
            StreamKind::Interrupt => (TransferKind::Interrupt, stream.length),
            StreamKind::Bulk { .. } => (TransferKind::Bulk, stream.length),
        };
        let tag = self.inflight.insert(Pending::Stream { endpoint });
        self.streams
            .get_mut(&endpoint)
            .expect("looked up above")
            .tags
            .push(tag);
        out.push(Action::Submit(Transfer {
            interval: interval.into(),
            ..Transfer::new(tag, port, endpoint, kind, length)
        }));
    }

    pub(super) fn on_stream_completion(
        &mut self,
        endpoint: u8,
        tag: u64,
        c: &Completion,
        out: &mut Vec<Action>,
    ) {
        let Some(stream) = self.streams.get_mut(&endpoint) else {
            return;
        };
        let Some(at) = stream.tags.iter().position(|&t| t == tag) else {
            return;
        };
        stream.tags.remove(at);
        let length = stream.length;
        match c.status {
            Status::Ok | Status::Short => match in_data(c, length) {
                Ok(data) => {
                    stream.errors = 0;
                    self.stream_packet(endpoint, status::SUCCESS, data, out);
                    self.submit_stream_transfer(endpoint, out);
                }
                Err(why) => {
                    warn!(endpoint, "the device answered inconsistently: {why}");
                    self.stream_error(endpoint, status::IOERROR, out);
                }
            },
            Status::Stall => self.clear_halt(endpoint, out),
            // The device is going; its disconnect tells QEMU.
            Status::NoDevice => self.end_stream(endpoint, None, out),
            Status::Cancelled | Status::Shutdown => {
                self.end_stream(endpoint, Some(status::STALL), out)
            }
            other => self.stream_error(endpoint, redir_status(other), out),
        }
    }

    /// A failed transfer: reported as an empty packet with its status and
    /// resubmitted, as usbredirhost does, unless the stream keeps failing.
    fn stream_error(&mut self, endpoint: u8, status: u8, out: &mut Vec<Action>) {
        let Some(stream) = self.streams.get_mut(&endpoint) else {
            return;
        };
        stream.errors += 1;
        if stream.errors >= MAX_STREAM_ERRORS {
            warn!(
                endpoint,
                "{} failed {} times in a row; stopping it",
                stream.kind.name(),
                stream.errors
            );
            self.end_stream(endpoint, Some(status::STALL), out);
            return;
        }
        self.stream_packet(endpoint, status, Bytes::new(), out);
        self.submit_stream_transfer(endpoint, out);
    }

    fn stream_packet(&mut self, endpoint: u8, status: u8, data: Bytes, out: &mut Vec<Action>) {
        let Some(stream) = self.streams.get_mut(&endpoint) else {
            return;
        };
        let n = stream.next_id;
        stream.next_id += 1;
        let body = match stream.kind {
            StreamKind::Interrupt => Body::Interrupt(InterruptPacket {
                endpoint,
                status,
                // An interrupt transfer is one packet, at most 3072 bytes.
                length: data.len() as u16,
                data,
            }),
            StreamKind::Bulk { stream_id, .. } => Body::BufferedBulk(BufferedBulkPacket {
                stream_id,
                length: data.len() as u32,
                endpoint,
                status,
                data,
            }),
        };
        let id = self.own_id(n);
        send(out, id, body);
    }

    /// A stalled stream: stop its other transfers and clear the halt, after
    /// which it starts again.
    fn clear_halt(&mut self, endpoint: u8, out: &mut Vec<Action>) {
        let Some(port) = self.device().map(|d| d.port) else {
            return;
        };
        let Some(stream) = self.streams.get_mut(&endpoint) else {
            return;
        };
        warn!(
            endpoint,
            "{} stalled; clearing the halt",
            stream.kind.name()
        );
        for tag in std::mem::take(&mut stream.tags) {
            self.inflight.take(tag);
            out.push(Action::Cancel { port, tag });
        }
        let tag = self.inflight.insert(Pending::ClearHalt { endpoint });
        self.streams
            .get_mut(&endpoint)
            .expect("still there")
            .clearing = Some(tag);
        out.push(Action::Submit(Transfer {
            setup: standard::setup(
                standard::TO_ENDPOINT,
                standard::CLEAR_FEATURE,
                0,
                endpoint.into(),
                0,
            ),
            ..Transfer::new(tag, port, 0x00, TransferKind::Control, 0)
        }));
    }

    pub(super) fn on_clear_halt(
        &mut self,
        endpoint: u8,
        tag: u64,
        c: &Completion,
        out: &mut Vec<Action>,
    ) {
        let Some(stream) = self.streams.get_mut(&endpoint) else {
            return;
        };
        if stream.clearing != Some(tag) {
            return;
        }
        stream.clearing = None;
        if c.status != Status::Ok {
            warn!(endpoint, status = ?c.status, "clearing the halt failed; stopping the stream");
            self.end_stream(endpoint, Some(status::STALL), out);
            return;
        }
        stream.next_id = 0;
        stream.errors = 0;
        let count = stream.count;
        for _ in 0..count {
            self.submit_stream_transfer(endpoint, out);
        }
    }
}
