//! Isochronous streams: on QEMU's start_iso_stream this side keeps
//! `no_urbs` transfers of `pkts_per_urb` packets each going on the
//! endpoint, as usbredirhost does with its URBs.
//!
//! * IN: the transfers are submitted at once, and each packet of each
//!   completion goes to QEMU as one iso_packet, numbered from 0 (QEMU looks
//!   at the endpoint, not the id); the transfer is resubmitted.
//! * OUT: QEMU's iso_packets are queued, and nothing is submitted until
//!   half of the stream's buffers are full (the protocol's pre-fill), then
//!   whole transfers as long as there are packets for them. Should the
//!   queue run dry, it fills again before the next submission; should it
//!   outgrow every buffer (the device is not keeping up), the oldest
//!   packets are dropped, as sound or video would skip.
//! * A stream that ends for any reason but QEMU's stop is reported with
//!   iso_stream_status stall, as the protocol asks. A failed packet of an
//!   OUT stream cannot be reported (QEMU has long moved on); a stream whose
//!   transfers keep failing as a whole is stopped.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};
use usbredir_proto::{ep_type, status, Body, IsoPacket};

use super::session::{send, Session};
use super::transfers::{place, Pending};
use super::{redir_status, Action};
use crate::transfer::{self, xfer_flags, Completion, Status, Transfer, TransferKind};

/// usbredirhost's limits (`MAX_ISO_PACKETS_PER_TRANSFER`,
/// `MAX_ISO_TRANSFER_COUNT`), which QEMU stays within.
const MAX_PACKETS_PER_TRANSFER: u8 = 32;
const MAX_TRANSFERS: u8 = 16;
/// Transfers failed as a whole, in a row, after which the stream stops.
const MAX_ERRORS: u32 = 8;

/// One isochronous endpoint being streamed.
#[derive(Debug)]
pub(super) struct IsoStream {
    packets_per_transfer: u32,
    transfers: u32,
    /// The endpoint's packet size in bytes (all transactions of a
    /// microframe).
    packet_len: u32,
    /// Its transfers on the device.
    tags: Vec<u64>,
    /// OUT: QEMU's packets not submitted yet.
    queued: VecDeque<Bytes>,
    /// OUT: waiting for the queue to fill before submitting.
    filling: bool,
    /// IN: the number of the next packet.
    next_id: u64,
    errors: u32,
    /// OUT: packets dropped because the queue was full.
    dropped: u64,
}

impl IsoStream {
    /// Packets an OUT stream holds at most: what all its transfers take.
    fn capacity(&self) -> usize {
        (self.packets_per_transfer * self.transfers) as usize
    }
}

impl Session {
    pub(super) fn start_iso_stream(
        &mut self,
        id: u64,
        endpoint: u8,
        packets_per_transfer: u8,
        transfers: u8,
        out: &mut Vec<Action>,
    ) {
        let packet_len = match self.check_iso_stream(endpoint, packets_per_transfer, transfers) {
            Ok(len) => len,
            Err((status, why)) => {
                if let Some(why) = why {
                    self.complain(&format!("start_iso_stream on {endpoint:#04x}: {why}"));
                }
                send(out, id, Body::IsoStreamStatus { status, endpoint });
                return;
            }
        };
        let stream = IsoStream {
            packets_per_transfer: packets_per_transfer.into(),
            transfers: transfers.into(),
            packet_len,
            tags: Vec::new(),
            queued: VecDeque::new(),
            filling: true,
            next_id: 0,
            errors: 0,
            dropped: 0,
        };
        debug!(
            endpoint,
            packets_per_transfer, transfers, packet_len, "isochronous stream started"
        );
        self.iso.insert(endpoint, stream);
        if transfer_is_in(endpoint) {
            for _ in 0..transfers {
                self.submit_iso_in(endpoint, out);
            }
        }
        let status = status::SUCCESS;
        send(out, id, Body::IsoStreamStatus { status, endpoint });
    }

    /// The endpoint's packet size for a stream QEMU asks to start, or the
    /// status to refuse it with (and a complaint, if QEMU is at fault).
    fn check_iso_stream(
        &self,
        endpoint: u8,
        packets_per_transfer: u8,
        transfers: u8,
    ) -> Result<u32, (u8, Option<String>)> {
        let Some(device) = self.device() else {
            // As usbredirhost answers while it has no device.
            return Err((status::STALL, None));
        };
        let layout = device.layout();
        if layout.ep_type(endpoint) != ep_type::ISO {
            let why = "not an isochronous endpoint in the current configuration";
            return Err((status::STALL, Some(why.into())));
        }
        let packet_len = u32::from(layout.max_packet_size(endpoint));
        if packet_len == 0 {
            let why = "the endpoint's packets hold 0 bytes (alternate setting 0?)";
            return Err((status::STALL, Some(why.into())));
        }
        if !(1..=MAX_PACKETS_PER_TRANSFER).contains(&packets_per_transfer)
            || !(1..=MAX_TRANSFERS).contains(&transfers)
        {
            let why = format!("{transfers} transfers of {packets_per_transfer} packets");
            return Err((status::INVAL, Some(why)));
        }
        if self.iso.contains_key(&endpoint) {
            return Err((status::INVAL, Some("already started".into())));
        }
        Ok(packet_len)
    }

    /// QEMU's stop: answered with success, also when nothing was running
    /// (but not once the device is withdrawn).
    pub(super) fn stop_iso_stream(&mut self, id: u64, endpoint: u8, out: &mut Vec<Action>) {
        self.end_iso_stream(endpoint, None, out);
        if self.announced {
            let status = status::SUCCESS;
            send(out, id, Body::IsoStreamStatus { status, endpoint });
        }
    }

    /// Ends a stream: cancels its transfers and drops its queue; with
    /// `notify`, QEMU hears of it with that status.
    pub(super) fn end_iso_stream(
        &mut self,
        endpoint: u8,
        notify: Option<u8>,
        out: &mut Vec<Action>,
    ) {
        let Some(stream) = self.iso.remove(&endpoint) else {
            return;
        };
        if stream.dropped > 0 {
            warn!(
                endpoint,
                dropped = stream.dropped,
                "isochronous OUT packets dropped while the device was not keeping up"
            );
        }
        let port = self.port();
        for tag in stream.tags {
            self.inflight.take(tag);
            if let Some(port) = port {
                out.push(Action::Cancel { port, tag });
            }
        }
        if let (Some(status), true) = (notify, self.announced) {
            send(out, 0, Body::IsoStreamStatus { status, endpoint });
        }
    }

    /// An iso_packet from QEMU, for an OUT stream.
    pub(super) fn on_iso_packet(&mut self, p: IsoPacket, out: &mut Vec<Action>) {
        let endpoint = p.endpoint;
        if transfer_is_in(endpoint) {
            self.complain(&format!("iso_packet to IN endpoint {endpoint:#04x}"));
            return;
        }
        let Some(stream) = self.iso.get_mut(&endpoint) else {
            // In flight when QEMU stopped the stream, or the device went.
            debug!(endpoint, "iso_packet without a stream, dropped");
            return;
        };
        if p.data.len() > stream.packet_len as usize {
            let why = format!(
                "{}-byte iso_packet for endpoint {endpoint:#04x} of {} bytes",
                p.data.len(),
                stream.packet_len
            );
            self.complain(&why);
            return;
        }
        if stream.queued.len() >= stream.capacity() {
            stream.queued.pop_front();
            stream.dropped += 1;
        }
        stream.queued.push_back(p.data);
        self.submit_iso_out(endpoint, out);
    }

    /// Submits whole transfers from an OUT stream's queue, once it has
    /// filled, while there are transfers free.
    fn submit_iso_out(&mut self, endpoint: u8, out: &mut Vec<Action>) {
        let Some(port) = self.device().map(|d| d.port) else {
            return;
        };
        let interval = self.interval_of(endpoint);
        loop {
            let Some(stream) = self.iso.get_mut(&endpoint) else {
                return;
            };
            let n = stream.packets_per_transfer as usize;
            if stream.filling {
                if stream.queued.len() < stream.capacity() / 2 {
                    return;
                }
                stream.filling = false;
            }
            if stream.tags.len() >= stream.transfers as usize || stream.queued.len() < n {
                if stream.tags.is_empty() {
                    // Ran dry: fill again rather than trickle.
                    stream.filling = true;
                }
                return;
            }
            let mut data = BytesMut::new();
            let mut packets = Vec::with_capacity(n);
            for packet in stream.queued.drain(..n) {
                packets.push(transfer::IsoPacket {
                    offset: data.len() as u32,
                    length: packet.len() as u32,
                });
                data.extend_from_slice(&packet);
            }
            let length = data.len() as u32;
            let transfer = Transfer {
                interval,
                iso_packets: packets,
                out_data: data.freeze(),
                ..Transfer::new(0, port, endpoint, TransferKind::Isochronous, length)
            };
            self.submit_iso(transfer, out);
        }
    }

    fn submit_iso_in(&mut self, endpoint: u8, out: &mut Vec<Action>) {
        let Some(port) = self.device().map(|d| d.port) else {
            return;
        };
        let interval = self.interval_of(endpoint);
        let Some(stream) = self.iso.get(&endpoint) else {
            return;
        };
        let (n, len) = (stream.packets_per_transfer, stream.packet_len);
        let packets = (0..n)
            .map(|i| transfer::IsoPacket {
                offset: i * len,
                length: len,
            })
            .collect();
        let transfer = Transfer {
            interval,
            iso_packets: packets,
            ..Transfer::new(0, port, endpoint, TransferKind::Isochronous, n * len)
        };
        self.submit_iso(transfer, out);
    }

    /// Tags one of a stream's transfers and submits it, scheduled as soon as possible (the
    /// stream keeps its own pace; there is no frame to aim at).
    fn submit_iso(&mut self, mut transfer: Transfer, out: &mut Vec<Action>) {
        let endpoint = transfer.endpoint;
        let Some(stream) = self.iso.get_mut(&endpoint) else {
            return;
        };
        let tag = self.inflight.insert(Pending::Iso { endpoint });
        stream.tags.push(tag);
        transfer.id = tag;
        transfer.flags = xfer_flags::ISO_ASAP;
        out.push(Action::Submit(transfer));
    }

    fn interval_of(&self, endpoint: u8) -> u32 {
        self.device()
            .map_or(1, |d| d.layout().interval(endpoint).into())
    }

    pub(super) fn on_iso_completion(
        &mut self,
        endpoint: u8,
        tag: u64,
        c: &Completion,
        out: &mut Vec<Action>,
    ) {
        let Some(stream) = self.iso.get_mut(&endpoint) else {
            return;
        };
        let Some(at) = stream.tags.iter().position(|&t| t == tag) else {
            return;
        };
        stream.tags.remove(at);
        match c.status {
            // Isochronous transfers report their packets' fates one by one.
            Status::Ok | Status::Short | Status::IsoPartial => {}
            // The device is going; its disconnect tells QEMU.
            Status::NoDevice => return self.end_iso_stream(endpoint, None, out),
            Status::Cancelled | Status::Shutdown => {
                return self.end_iso_stream(endpoint, Some(status::STALL), out)
            }
            other => {
                stream.errors += 1;
                if stream.errors >= MAX_ERRORS {
                    warn!(endpoint, status = ?other, "isochronous transfers keep failing; stopping the stream");
                    return self.end_iso_stream(endpoint, Some(status::STALL), out);
                }
                debug!(endpoint, status = ?other, "isochronous transfer failed");
                return self.resume_iso(endpoint, out);
            }
        }
        stream.errors = 0;
        if transfer_is_in(endpoint) {
            match in_packets(c, stream.packets_per_transfer, stream.packet_len) {
                Ok(packets) => {
                    for (status, data) in packets {
                        self.iso_packet_to_qemu(endpoint, status, data, out);
                    }
                }
                Err(why) => {
                    warn!(endpoint, "the device answered inconsistently: {why}");
                    self.iso_packet_to_qemu(endpoint, status::IOERROR, Bytes::new(), out);
                }
            }
        }
        self.resume_iso(endpoint, out);
    }

    /// Keeps the stream going after one of its transfers came back.
    fn resume_iso(&mut self, endpoint: u8, out: &mut Vec<Action>) {
        if transfer_is_in(endpoint) {
            self.submit_iso_in(endpoint, out);
        } else {
            self.submit_iso_out(endpoint, out);
        }
    }

    fn iso_packet_to_qemu(&mut self, endpoint: u8, status: u8, data: Bytes, out: &mut Vec<Action>) {
        let Some(stream) = self.iso.get_mut(&endpoint) else {
            return;
        };
        let n = stream.next_id;
        stream.next_id += 1;
        let id = self.own_id(n);
        let body = Body::Iso(IsoPacket {
            endpoint,
            status,
            // At most 3 × 1024 bytes: checked against the packet size.
            length: data.len() as u16,
            data,
        });
        send(out, id, body);
    }
}

fn transfer_is_in(endpoint: u8) -> bool {
    super::transfers::is_in(endpoint)
}

/// The packets of an IN completion, each with its usbredir status and its
/// data, or why the completion does not fit the request (`count` packets
/// of `len` bytes at offsets `i * len`). The device is behind a network
/// and is not trusted to stay within the request.
fn in_packets(c: &Completion, count: u32, len: u32) -> Result<Vec<(u8, Bytes)>, &'static str> {
    if c.iso_results.len() != count as usize {
        return Err("another number of packets than requested");
    }
    if c.iso_results.iter().any(|r| r.actual_length > len) {
        return Err("a packet longer than the endpoint's");
    }
    let buf = place(&c.in_data, (count * len) as usize).ok_or("IN data beyond the request")?;
    Ok(c.iso_results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let start = i * len as usize;
            let data = buf.slice(start..start + r.actual_length as usize);
            (redir_status(r.status), data)
        })
        .collect())
}
