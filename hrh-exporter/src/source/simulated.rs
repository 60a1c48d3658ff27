//! Simulated dongles (`sim-dongles`) as exportable devices.

use std::path::PathBuf;

use bytes::Bytes;
use sim_dongles::loopback::Loopback;
use sim_dongles::pendrive::Pendrive;
use sim_dongles::sensor::Sensor;
use sim_dongles::{Completion, Function, SimDevice, Transfer, TransferStatus};
use usbip_proto::{errno, speed, DeviceInfo, InterfaceInfo};

use crate::device::{DeviceEvent, DeviceIdentity, EventSink, Urb, UrbResult, UsbDevice};

/// Which simulated dongle to create (`--simulate KIND[=ARG]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimKind {
    Sensor,
    Pendrive(PathBuf),
    Loopback,
}

impl SimKind {
    fn name(&self) -> &'static str {
        match self {
            SimKind::Sensor => "sensor",
            SimKind::Pendrive(_) => "pendrive",
            SimKind::Loopback => "loopback",
        }
    }
}

impl std::str::FromStr for SimKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            None if s == "sensor" => Ok(SimKind::Sensor),
            None if s == "loopback" => Ok(SimKind::Loopback),
            None if s == "pendrive" => {
                Err("pendrive needs a backing image: --simulate pendrive=PATH".into())
            }
            Some(("pendrive", path)) if !path.is_empty() => {
                Ok(SimKind::Pendrive(PathBuf::from(path)))
            }
            Some((kind @ ("sensor" | "loopback"), _)) => {
                Err(format!("{kind} takes no argument: --simulate {kind}"))
            }
            _ => Err(format!(
                "unknown simulated dongle {s:?}: expected sensor, pendrive=PATH or loopback"
            )),
        }
    }
}

/// A simulated dongle exported on bus 1 as port `port` (bus id `1-<port>`).
#[derive(Debug)]
pub struct SimulatedDevice {
    engine: SimDevice,
    identity: DeviceIdentity,
}

impl SimulatedDevice {
    /// Creates the dongle; `port` counts from 1.
    pub fn new(kind: &SimKind, port: u32) -> anyhow::Result<Self> {
        let function: Box<dyn Function> = match kind {
            SimKind::Sensor => Box::new(Sensor::new()),
            SimKind::Loopback => Box::new(Loopback::new()),
            SimKind::Pendrive(path) => Box::new(Pendrive::open(path)?),
        };
        let engine = SimDevice::spawn(&format!("{}-{port}", kind.name()), function)?;
        let identity = identity(&engine, port);
        Ok(Self { engine, identity })
    }
}

/// Builds the device-list entry from the descriptors, as usbip-host reads
/// it from sysfs.
fn identity(engine: &SimDevice, port: u32) -> DeviceIdentity {
    let d = &engine.descriptors().device;
    let config = &engine.descriptors().configuration;
    let busid = format!("1-{port}");
    let interfaces = config_interfaces(config);
    DeviceIdentity {
        info: DeviceInfo {
            path: format!("/sys/devices/platform/vusb-sim/usb1/{busid}"),
            busid,
            busnum: 1,
            devnum: port + 1,
            speed: speed::HIGH,
            id_vendor: u16::from_le_bytes([d[8], d[9]]),
            id_product: u16::from_le_bytes([d[10], d[11]]),
            bcd_device: u16::from_le_bytes([d[12], d[13]]),
            device_class: d[4],
            device_subclass: d[5],
            device_protocol: d[6],
            // usbip-host reports the active configuration; an exported
            // device has been configured by its host driver already.
            configuration_value: config.get(5).copied().unwrap_or(1),
            num_configurations: d[17],
            num_interfaces: interfaces.len() as u8,
        },
        interfaces,
    }
}

/// The interface descriptors (alternate setting 0) of a configuration.
fn config_interfaces(config: &[u8]) -> Vec<InterfaceInfo> {
    let mut out = Vec::new();
    let mut rest = config;
    while rest.len() >= 2 && rest[0] >= 2 && usize::from(rest[0]) <= rest.len() {
        let (desc, tail) = rest.split_at(usize::from(rest[0]));
        if desc[1] == 4 && desc.len() >= 9 && desc[3] == 0 {
            out.push(InterfaceInfo {
                class: desc[5],
                subclass: desc[6],
                protocol: desc[7],
            });
        }
        rest = tail;
    }
    out
}

fn status_errno(status: TransferStatus) -> i32 {
    match status {
        TransferStatus::Completed => 0,
        TransferStatus::Stalled => -errno::EPIPE,
        TransferStatus::Cancelled => -errno::ECONNRESET,
        TransferStatus::Shutdown => -errno::ESHUTDOWN,
    }
}

impl UsbDevice for SimulatedDevice {
    fn identity(&self) -> DeviceIdentity {
        self.identity.clone()
    }

    fn attach(&self, events: EventSink) {
        self.engine.attach(Box::new(move |c: Completion| {
            let result = UrbResult {
                seqnum: c.id as u32,
                status: status_errno(c.status),
                actual_length: c.actual_length as u32,
                data: Bytes::from(c.data),
                iso_packets: Vec::new(),
            };
            events(DeviceEvent::Completed(result));
        }));
    }

    fn submit(&self, urb: Urb) {
        // The simulated dongles have no isochronous endpoints: such an URB
        // addresses an endpoint that does not exist and stalls.
        self.engine.submit(Transfer {
            id: u64::from(urb.seqnum),
            endpoint: urb.endpoint,
            setup: urb.setup,
            data: urb.data.to_vec(),
            max_len: urb.buffer_len as usize,
        });
    }

    fn cancel(&self, seqnum: u32) {
        self.engine.cancel(u64::from(seqnum));
    }

    fn detach(&self) {
        self.engine.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_command_line_forms() {
        assert_eq!("sensor".parse(), Ok(SimKind::Sensor));
        assert_eq!("loopback".parse(), Ok(SimKind::Loopback));
        assert_eq!(
            "pendrive=/tmp/a.img".parse(),
            Ok(SimKind::Pendrive("/tmp/a.img".into()))
        );
        let err = "pendrive".parse::<SimKind>().unwrap_err();
        assert!(err.contains("pendrive=PATH"), "{err}");
        let err = "webcam".parse::<SimKind>().unwrap_err();
        assert!(err.contains("unknown simulated dongle"), "{err}");
        assert!("sensor=1".parse::<SimKind>().is_err());
    }

    #[test]
    fn sensor_identity_matches_its_descriptors() {
        let dev = SimulatedDevice::new(&SimKind::Sensor, 1).unwrap();
        let id = dev.identity();
        assert_eq!(id.info.busid, "1-1");
        assert_eq!((id.info.id_vendor, id.info.id_product), (0x1209, 0x0001));
        assert_eq!(id.info.num_interfaces, 2);
        assert_eq!(id.interfaces[0].class, 0x02);
        assert_eq!(id.interfaces[1].class, 0x0a);
        assert_eq!(id.devid(), (1 << 16) | 2);
    }
}
