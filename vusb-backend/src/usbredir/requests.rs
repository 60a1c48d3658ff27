//! QEMU's data packets (control, bulk, interrupt OUT): each one transfer,
//! answered by a packet of the same type and id; cancel_data_packet; and
//! the answers of requests that fail without reaching the device.

use bytes::Bytes;
use tracing::{debug, warn};
use usbredir_proto::{ep_type, status, Body, ControlPacket};

use super::configuration::NO_ALT;
use super::session::{send, Session};
use super::transfers::standard;
use super::transfers::{in_data, is_in, Change, GuestKind, GuestRequest, Pending};
use super::{redir_status, Action};
use crate::transfer::{Completion, Transfer, TransferKind};

impl Session {
    /// A control, bulk or interrupt packet from QEMU.
    pub(super) fn on_data_packet(&mut self, id: u64, body: Body, out: &mut Vec<Action>) {
        let (kind, out_data) = match body {
            Body::Control(mut p) => {
                let data = std::mem::take(&mut p.data);
                let change = match (p.requesttype, p.request) {
                    (standard::TO_DEVICE, standard::SET_CONFIGURATION) => {
                        Some(Change::Configuration(p.value as u8))
                    }
                    (standard::TO_INTERFACE, standard::SET_INTERFACE) => Some(Change::AltSetting {
                        interface: p.index as u8,
                        alt: p.value as u8,
                    }),
                    _ => None,
                };
                (GuestKind::Control { packet: p, change }, data)
            }
            Body::Bulk(mut p) => {
                let data = std::mem::take(&mut p.data);
                (GuestKind::Bulk(p), data)
            }
            Body::Interrupt(mut p) => {
                let data = std::mem::take(&mut p.data);
                (GuestKind::Interrupt(p), data)
            }
            _ => unreachable!("only data packets come here"),
        };
        let Some(port) = self.device().map(|d| d.port) else {
            // As usbredirhost answers while no device is there: the guest
            // has not seen the device_disconnect yet.
            let reply = self.failure(&kind, status::IOERROR);
            send(out, id, reply);
            return;
        };
        if let Err(why) = self.check_request(id, &kind, &out_data) {
            self.complain(&why);
            let reply = self.failure(&kind, status::INVAL);
            send(out, id, reply);
            return;
        }
        let layout = self.device().expect("checked above").layout();
        let mut transfer = match &kind {
            GuestKind::Control { packet: p, .. } => Transfer {
                setup: standard::setup(p.requesttype, p.request, p.value, p.index, p.length),
                ..Transfer::new(0, port, p.endpoint, TransferKind::Control, p.length.into())
            },
            GuestKind::Bulk(p) => Transfer::new(0, port, p.endpoint, TransferKind::Bulk, p.length),
            GuestKind::Interrupt(p) => Transfer {
                interval: layout.interval(p.endpoint).into(),
                ..Transfer::new(
                    0,
                    port,
                    p.endpoint,
                    TransferKind::Interrupt,
                    p.length.into(),
                )
            },
            _ => unreachable!("data packets only"),
        };
        transfer.out_data = out_data;
        if let GuestKind::Control {
            change: Some(change),
            ..
        } = &kind
        {
            self.quiesce(*change, out);
        }
        transfer.id = self
            .inflight
            .insert(Pending::Guest(GuestRequest { id, kind }));
        out.push(Action::Submit(transfer));
    }

    /// Whether a data packet can go to the device: a fresh id, and an
    /// endpoint of the right type in the current configuration. One that
    /// is not is answered with status inval, as usbredirhost answers a
    /// packet for an endpoint of the wrong type, rather than ending the
    /// connection: QEMU passes on what the guest's driver asks for without
    /// checking it against the endpoints.
    fn check_request(&self, id: u64, kind: &GuestKind, out_data: &Bytes) -> Result<(), String> {
        if kind.keyed() && self.inflight.has_id(id) {
            return Err(format!("{} with id {id}, which is in flight", kind.name()));
        }
        let layout = self.device().expect("only with a device").layout();
        let (endpoint, wanted) = match kind {
            GuestKind::Control { packet: p, .. } => {
                if is_in(p.endpoint) != is_in(p.requesttype) {
                    return Err(format!(
                        "control_packet on endpoint {:#04x} with bmRequestType {:#04x}: directions differ",
                        p.endpoint, p.requesttype
                    ));
                }
                (p.endpoint, ep_type::CONTROL)
            }
            GuestKind::Bulk(p) => {
                if p.stream_id != 0 {
                    return Err(format!(
                        "bulk_packet for stream {}, without bulk streams",
                        p.stream_id
                    ));
                }
                (p.endpoint, ep_type::BULK)
            }
            GuestKind::Interrupt(p) => {
                let max = layout.max_packet_size(p.endpoint);
                if layout.ep_type(p.endpoint) == ep_type::INTERRUPT && out_data.len() > max.into() {
                    return Err(format!(
                        "interrupt_packet of {} bytes for endpoint {:#04x}, whose packets hold {max}",
                        out_data.len(),
                        p.endpoint
                    ));
                }
                (p.endpoint, ep_type::INTERRUPT)
            }
            _ => unreachable!("data packets only"),
        };
        if layout.ep_type(endpoint) != wanted {
            return Err(format!(
                "{} for endpoint {endpoint:#04x}, which the current configuration does not have as such",
                kind.name()
            ));
        }
        Ok(())
    }

    /// cancel_data_packet: answered at once with the cancelled packet, as
    /// usbredirhost does, so the id is free for QEMU to reuse; the device's
    /// own answer, whenever it comes, is dropped.
    pub(super) fn on_cancel(&mut self, id: u64, out: &mut Vec<Action>) {
        let Some(tag) = self.inflight.tag_of(id) else {
            // Answered before the cancel arrived: not an error.
            debug!(id, "cancel_data_packet for a packet not in flight");
            return;
        };
        if let Some(Pending::Guest(req)) = self.inflight.get(tag) {
            if req.kind.data_endpoint().is_none() {
                let why = format!("cancel_data_packet names {} {id}", req.kind.name());
                self.complain(&why);
                return;
            }
        }
        let Some(Pending::Guest(req)) = self.inflight.take(tag) else {
            unreachable!("ids map to guest requests");
        };
        let reply = self.failure(&req.kind, status::CANCELLED);
        send(out, id, reply);
        if let Some(port) = self.port() {
            out.push(Action::Cancel { port, tag });
        }
    }

    /// The device answered a guest request.
    pub(super) fn finish_guest(
        &mut self,
        req: GuestRequest,
        c: &Completion,
        out: &mut Vec<Action>,
    ) {
        let GuestRequest { id, kind } = req;
        let st = redir_status(c.status);
        let ok = st == status::SUCCESS;
        let reply = match &kind {
            GuestKind::Control { packet: p, change } => {
                let in_ = is_in(p.endpoint);
                match self.transferred(c, p.length.into(), in_) {
                    Ok((length, data)) => {
                        if ok {
                            if let Some(change) = change {
                                self.apply(*change, out);
                            }
                        }
                        Body::Control(ControlPacket {
                            status: st,
                            length: length as u16,
                            data,
                            ..p.clone()
                        })
                    }
                    Err(()) => self.failure(&kind, status::IOERROR),
                }
            }
            GuestKind::Bulk(p) => match self.transferred(c, p.length, is_in(p.endpoint)) {
                Ok((length, data)) => Body::Bulk(usbredir_proto::BulkPacket {
                    status: st,
                    length,
                    data,
                    ..p.clone()
                }),
                Err(()) => self.failure(&kind, status::IOERROR),
            },
            GuestKind::Interrupt(p) => match self.transferred(c, p.length.into(), false) {
                Ok((length, _)) => Body::Interrupt(usbredir_proto::InterruptPacket {
                    status: st,
                    length: length as u16,
                    data: Bytes::new(),
                    ..p.clone()
                }),
                Err(()) => self.failure(&kind, status::IOERROR),
            },
            _ => self.finish_config(&kind, c, out),
        };
        send(out, id, reply);
    }

    /// The length and IN data to report for a completed data packet that
    /// asked for `requested` bytes, or `Err` if the device's answer does
    /// not fit the request.
    fn transferred(&self, c: &Completion, requested: u32, is_in: bool) -> Result<(u32, Bytes), ()> {
        let checked = if is_in {
            in_data(c, requested).map(|d| (d.len() as u32, d))
        } else if c.actual_length > requested {
            Err("more sent than requested")
        } else {
            Ok((c.actual_length, Bytes::new()))
        };
        checked.map_err(|why| warn!(tag = c.id, "the device answered inconsistently: {why}"))
    }

    /// The answer to a request that fails with `status` without data.
    pub(super) fn failure(&self, kind: &GuestKind, status: u8) -> Body {
        match kind {
            GuestKind::Control { packet, .. } => Body::Control(ControlPacket {
                status,
                length: 0,
                data: Bytes::new(),
                ..packet.clone()
            }),
            GuestKind::Bulk(p) => Body::Bulk(usbredir_proto::BulkPacket {
                status,
                length: 0,
                data: Bytes::new(),
                ..p.clone()
            }),
            GuestKind::Interrupt(p) => Body::Interrupt(usbredir_proto::InterruptPacket {
                status,
                length: 0,
                data: Bytes::new(),
                ..p.clone()
            }),
            GuestKind::SetConfiguration(_) | GuestKind::GetConfiguration => {
                Body::ConfigurationStatus {
                    status,
                    configuration: self.device().map_or(0, |d| d.active()),
                }
            }
            GuestKind::SetAltSetting { interface, .. } | GuestKind::GetAltSetting { interface } => {
                Body::AltSettingStatus {
                    status,
                    interface: *interface,
                    alt: self
                        .device()
                        .and_then(|d| d.alt_setting(*interface))
                        .unwrap_or(NO_ALT),
                }
            }
        }
    }
}
