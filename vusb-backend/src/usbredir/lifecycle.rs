//! The device's life as QEMU sees it: read when it connects, announced
//! once QEMU's hello is in (and any device_disconnect acknowledged),
//! withdrawn when it goes or cannot be used any more, and reset on QEMU's
//! request.

use tracing::{debug, info, warn};
use usbredir_proto::{status, Body, Cap, Caps, Hello};

use super::device::{Device, Next, Read};
use super::session::{send, DeviceState, Session};
use super::transfers::{in_data, Pending};
use super::Action;
use crate::transfer::{Completion, Port, Transfer, TransferKind};

impl Session {
    /// A descriptor read of the probe came back: read on, or offer the
    /// device (a withdrawn probe's reads were dropped with it, so there is
    /// a probe to advance).
    pub(super) fn on_probe_completion(&mut self, c: &Completion, out: &mut Vec<Action>) {
        let DeviceState::Probing(probe) = &mut self.device else {
            return;
        };
        let port = probe.port;
        let next = match in_data(c, u32::from(u16::MAX)) {
            Ok(data) => probe.advance(c.status, &data),
            Err(why) => Next::Failed(format!("a descriptor read: {why}")),
        };
        match next {
            Next::Read(read) => self.submit_read(port, read, out),
            Next::Done(device) => {
                let d = &device.descriptor;
                info!(
                    port,
                    speed = ?device.speed,
                    "device {:04x}:{:04x} ready, configuration {}",
                    d.vendor_id,
                    d.product_id,
                    device.active()
                );
                self.device = DeviceState::Ready(device);
                self.announce(out);
            }
            Next::Failed(why) => {
                warn!(port, "cannot offer the device: {why}");
                self.device = DeviceState::Unusable(port);
            }
        }
    }

    /// Sends one of the probe's reads to the device.
    pub(super) fn submit_read(&mut self, port: Port, read: Read, out: &mut Vec<Action>) {
        let tag = self.inflight.insert(Pending::Probe);
        out.push(Action::Submit(Transfer {
            setup: read.setup,
            ..Transfer::new(
                tag,
                port,
                0x80,
                TransferKind::Control,
                u32::from(read.length),
            )
        }));
    }

    /// The device as QEMU knows it, while it does.
    pub(super) fn device(&self) -> Option<&Device> {
        match &self.device {
            DeviceState::Ready(d) if self.announced => Some(d),
            _ => None,
        }
    }

    /// [`Session::device`], to change its configuration.
    pub(super) fn device_mut(&mut self) -> Option<&mut Device> {
        match &mut self.device {
            DeviceState::Ready(d) if self.announced => Some(d),
            _ => None,
        }
    }

    /// QEMU's hello: the capabilities are settled, and a device that was
    /// read already can be announced.
    pub(super) fn on_hello(&mut self, hello: &Hello, out: &mut Vec<Action>) {
        self.hello_seen = true;
        self.caps = Caps::negotiate(self.ours, hello.caps());
        info!(peer = %hello.version, caps = ?self.caps, "usbredir hello");
        self.announce(out);
    }

    /// Sends this side's hello if the caller has not taken it yet.
    pub(super) fn greet(&mut self, out: &mut Vec<Action>) {
        if !self.hello_sent {
            let hello = self.start();
            out.push(Action::Send(hello));
        }
    }

    /// Offers the device to QEMU if it is known and QEMU is ready for it.
    pub(super) fn announce(&mut self, out: &mut Vec<Action>) {
        if !self.hello_seen || self.awaiting_ack || self.announced {
            return;
        }
        let DeviceState::Ready(d) = &self.device else {
            return;
        };
        let connect = d.device_connect(self.caps);
        // QEMU refuses a device_connect that comes without interface info
        // (`usbredir_check_filter()`), so the layout goes first.
        send_layout(out, d, self.caps);
        send(out, 0, Body::DeviceConnect(connect));
        self.announced = true;
    }

    /// The guest must stop using the device (it is gone, or cannot be used
    /// any more): stop the streams, answer every request still waiting
    /// with status cancelled, stop the probe, and tell QEMU.
    pub(super) fn withdraw(&mut self, out: &mut Vec<Action>) {
        self.stop_streams(|_| true, false, out);
        let port = self.port();
        for tag in self.inflight.tags_where(|_| true) {
            if let Some(Pending::Guest(req)) = self.inflight.take(tag) {
                let reply = self.failure(&req.kind, status::CANCELLED);
                send(out, req.id, reply);
            }
            if let Some(port) = port {
                out.push(Action::Cancel { port, tag });
            }
        }
        self.reset_token = None;
        // After the answers: once QEMU has seen the disconnect it drops any
        // answer that comes (`usbredir_is_cancelled()`).
        if self.announced {
            send(out, 0, Body::DeviceDisconnect);
            self.announced = false;
            self.awaiting_ack = self.caps.has(Cap::DeviceDisconnectAck);
        }
    }

    /// QEMU refused the device: its `filter` rejected it, or the
    /// controller cannot take it (QEMU sends filter_reject for both, having
    /// dropped the device itself). The connection stays open, but the
    /// device is not offered again on it until it reconnects on the USB/IP
    /// side: hanging up would only have QEMU reconnect and refuse it again,
    /// once a second.
    pub(super) fn on_reject(&mut self, out: &mut Vec<Action>) {
        let Some(device) = self.device() else {
            debug!("filter_reject without a device, ignored");
            return;
        };
        let c = device.device_connect(self.caps);
        warn!(
            device = %format_args!("{:04x}:{:04x}", c.vendor_id, c.product_id),
            class = c.device_class,
            "QEMU refused the device (its usb-redir filter, or a device its USB controller \
             cannot take); not offering it again until it reconnects"
        );
        self.withdraw(out);
        if let Some(port) = self.port() {
            self.device = DeviceState::Unusable(port);
        }
    }

    /// QEMU's reset: stop the streams (telling QEMU, which restarts them
    /// afterwards), then reset the port. Requests in flight are failed by
    /// the device with `Shutdown`, answered as cancelled. Nothing is sent
    /// back for the reset itself.
    pub(super) fn reset(&mut self, out: &mut Vec<Action>) {
        let Some(port) = self.device().map(|d| d.port) else {
            debug!("reset without a device, ignored");
            return;
        };
        if self.reset_token.is_some() {
            debug!("reset while one is under way, ignored");
            return;
        }
        self.stop_streams(|_| true, true, out);
        let token = self.next_token;
        self.next_token += 1;
        self.reset_token = Some(token);
        out.push(Action::ResetPort { port, token });
    }
}

/// interface_info then ep_info, as usbredirhost sends them.
pub(super) fn send_layout(out: &mut Vec<Action>, d: &Device, caps: Caps) {
    let layout = d.layout();
    send(out, 0, Body::InterfaceInfo(layout.interfaces));
    send(out, 0, Body::EpInfo(Box::new(layout.ep_info(caps))));
}
