//! set/get_configuration and set/get_alt_setting: each one standard
//! request on endpoint 0, answered by configuration_status or
//! alt_setting_status with the request's id. A successful set sends the
//! new interface_info and ep_info first, as the protocol requires.

use tracing::warn;
use usbredir_proto::{status, Body};

use super::lifecycle::send_layout;
use super::redir_status;
use super::session::{send, Session};
use super::transfers::standard::{
    setup, FROM_DEVICE, FROM_INTERFACE, GET_CONFIGURATION, GET_INTERFACE, SET_CONFIGURATION,
    SET_INTERFACE, TO_DEVICE, TO_INTERFACE,
};
use super::transfers::{in_data, Change, GuestKind, GuestRequest, Pending};
use super::Action;
use crate::transfer::{Completion, Transfer, TransferKind};

/// alt_setting_status's `alt` when there is none to report, as
/// usbredirhost sends it.
pub(super) const NO_ALT: u8 = 0xff;

impl Session {
    /// set/get_configuration and set/get_alt_setting: standard requests on
    /// endpoint 0. What the device does not have is refused without asking
    /// it. The gets go to the device as well (usbredirhost answers them
    /// from its own state), so the guest gets the device's own answer, as
    /// it would with the device plugged in directly.
    pub(super) fn on_config_request(&mut self, id: u64, kind: GuestKind, out: &mut Vec<Action>) {
        let Some(device) = self.device() else {
            let reply = self.failure(&kind, status::IOERROR);
            send(out, id, reply);
            return;
        };
        let port = device.port;
        let refusal = if self.inflight.has_id(id) {
            Some(format!("{} with id {id}, which is in flight", kind.name()))
        } else {
            match kind {
                GuestKind::SetConfiguration(value) if !device.has_configuration(value) => Some(
                    format!("set_configuration {value}, which the device does not have"),
                ),
                GuestKind::SetAltSetting { interface, alt }
                    if !device.has_alt_setting(interface, alt) =>
                {
                    Some(format!(
                        "set_alt_setting {alt} on interface {interface}, which the configuration does not have"
                    ))
                }
                GuestKind::GetAltSetting { interface }
                    if device.interface_index(interface).is_none() =>
                {
                    Some(format!(
                        "get_alt_setting on interface {interface}, which the configuration does not have"
                    ))
                }
                _ => None,
            }
        };
        if let Some(why) = refusal {
            self.complain(&why);
            let reply = self.failure(&kind, status::INVAL);
            send(out, id, reply);
            return;
        }
        let (setup, length) = match kind {
            GuestKind::SetConfiguration(value) => {
                self.quiesce(Change::Configuration(value), out);
                (setup(TO_DEVICE, SET_CONFIGURATION, value.into(), 0, 0), 0)
            }
            GuestKind::GetConfiguration => (setup(FROM_DEVICE, GET_CONFIGURATION, 0, 0, 1), 1),
            GuestKind::SetAltSetting { interface, alt } => {
                self.quiesce(Change::AltSetting { interface, alt }, out);
                let s = setup(TO_INTERFACE, SET_INTERFACE, alt.into(), interface.into(), 0);
                (s, 0)
            }
            GuestKind::GetAltSetting { interface } => (
                setup(FROM_INTERFACE, GET_INTERFACE, 0, interface.into(), 1),
                1,
            ),
            _ => unreachable!("configuration requests only"),
        };
        let endpoint = setup[0] & 0x80;
        let tag = self
            .inflight
            .insert(Pending::Guest(GuestRequest { id, kind }));
        out.push(Action::Submit(Transfer {
            setup,
            ..Transfer::new(tag, port, endpoint, TransferKind::Control, length)
        }));
    }

    /// Before a change of configuration or alternate setting: what runs on
    /// the endpoints it replaces is stopped, as usbredirhost does (QEMU has
    /// stopped its streams already; requests still in flight are cancelled
    /// on the device and answered when it has given them back).
    pub(super) fn quiesce(&mut self, change: Change, out: &mut Vec<Action>) {
        let Some(device) = self.device() else {
            return;
        };
        let port = device.port;
        let affected: Vec<u8> = match change {
            Change::Configuration(_) => Vec::new(),
            Change::AltSetting { interface, .. } => {
                device.layout().endpoints_of(interface).collect()
            }
        };
        let all = matches!(change, Change::Configuration(_));
        let hit = |endpoint: u8| all || affected.contains(&endpoint);
        self.stop_streams(hit, false, out);
        let tags = self.inflight.tags_where(|p| match p {
            Pending::Guest(r) => r.kind.data_endpoint().is_some_and(hit),
            _ => false,
        });
        for tag in tags {
            out.push(Action::Cancel { port, tag });
        }
    }

    /// A configuration or alternate setting took effect: QEMU gets the new
    /// interfaces and endpoints before the request's answer.
    pub(super) fn apply(&mut self, change: Change, out: &mut Vec<Action>) {
        let caps = self.caps;
        let Some(device) = self.device_mut() else {
            return;
        };
        match change {
            Change::Configuration(value) => {
                if !device.has_configuration(value) {
                    warn!(
                        value,
                        "the device took a configuration it does not describe"
                    );
                }
                device.set_configuration(value);
            }
            Change::AltSetting { interface, alt } => {
                if !device.has_alt_setting(interface, alt) {
                    warn!(
                        interface,
                        alt, "the device took an alternate setting it does not describe"
                    );
                }
                device.set_alt_setting(interface, alt);
            }
        }
        send_layout(out, device, caps);
    }

    /// The device answered a configuration request: the status packet,
    /// after the new interfaces and endpoints if it changed them.
    pub(super) fn finish_config(
        &mut self,
        kind: &GuestKind,
        c: &Completion,
        out: &mut Vec<Action>,
    ) -> Body {
        let st = redir_status(c.status);
        let ok = st == status::SUCCESS;
        match kind {
            GuestKind::SetConfiguration(value) => {
                if ok {
                    self.apply(Change::Configuration(*value), out);
                    Body::ConfigurationStatus {
                        status: st,
                        configuration: *value,
                    }
                } else {
                    self.failure(kind, st)
                }
            }
            GuestKind::SetAltSetting { interface, alt } => {
                if ok {
                    let change = Change::AltSetting {
                        interface: *interface,
                        alt: *alt,
                    };
                    self.apply(change, out);
                    Body::AltSettingStatus {
                        status: st,
                        interface: *interface,
                        alt: *alt,
                    }
                } else {
                    self.failure(kind, st)
                }
            }
            GuestKind::GetConfiguration => match one_byte(c, ok) {
                Some(configuration) => Body::ConfigurationStatus {
                    status: st,
                    configuration,
                },
                None => self.failure(kind, if ok { status::IOERROR } else { st }),
            },
            GuestKind::GetAltSetting { interface } => match one_byte(c, ok) {
                Some(alt) => Body::AltSettingStatus {
                    status: st,
                    interface: *interface,
                    alt,
                },
                None => Body::AltSettingStatus {
                    status: if ok { status::IOERROR } else { st },
                    interface: *interface,
                    alt: NO_ALT,
                },
            },
            _ => unreachable!("configuration requests only"),
        }
    }
}

/// The single byte a GET_CONFIGURATION or GET_INTERFACE returns.
fn one_byte(c: &Completion, ok: bool) -> Option<u8> {
    match in_data(c, 1) {
        Ok(d) if ok && d.len() == 1 => Some(d[0]),
        _ => None,
    }
}
