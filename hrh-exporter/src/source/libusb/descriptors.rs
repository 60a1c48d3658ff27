//! USB descriptors as the exporter needs them, parsed from raw bytes
//! without trusting them, and the USB/IP identity built from them.
//!
//! Nothing here touches a device: the callers read the bytes (from sysfs,
//! as Linux's usbip-host reports them) or convert libusb's parsed
//! descriptors into the same types.

use std::collections::HashMap;

use usbip_proto::{limits, DeviceInfo, InterfaceInfo};

use crate::device::DeviceIdentity;

const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;

/// bDeviceClass of a hub.
pub const CLASS_HUB: u8 = 9;

/// Endpoint transfer types (bmAttributes bits 1..0), as libusb numbers them.
pub mod transfer_type {
    pub const CONTROL: u8 = 0;
    pub const ISOCHRONOUS: u8 = 1;
    pub const BULK: u8 = 2;
    pub const INTERRUPT: u8 = 3;
}

/// Where a device sits: its bus, address and the hub ports leading to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub busnum: u8,
    pub devnum: u8,
    /// Port numbers from the root hub down; empty for a root hub.
    pub ports: Vec<u8>,
}

impl Location {
    /// The Linux bus id (the device's sysfs name): `<bus>-<port>.<port>…`,
    /// e.g. `1-1.3` for port 3 of a hub on port 1 of bus 1. A root hub,
    /// which has no ports, is `usb<bus>`.
    pub fn busid(&self) -> String {
        if self.ports.is_empty() {
            return format!("usb{}", self.busnum);
        }
        let ports: Vec<String> = self.ports.iter().map(u8::to_string).collect();
        format!("{}-{}", self.busnum, ports.join("."))
    }
}

/// The fields of a device descriptor the exporter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceDescriptor {
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub bcd_device: u16,
    pub i_manufacturer: u8,
    pub i_product: u8,
    pub i_serial: u8,
    pub num_configurations: u8,
}

impl DeviceDescriptor {
    /// Parses the 18-byte device descriptor at the start of `raw`.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let d = raw.get(..18)?;
        if d[1] != DT_DEVICE {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([d[i], d[i + 1]]);
        Some(Self {
            class: d[4],
            subclass: d[5],
            protocol: d[6],
            vendor_id: u16_at(8),
            product_id: u16_at(10),
            bcd_device: u16_at(12),
            i_manufacturer: d[14],
            i_product: d[15],
            i_serial: d[16],
            num_configurations: d[17],
        })
    }
}

/// One endpoint of an alternate setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// bEndpointAddress, direction bit included.
    pub address: u8,
    /// One of [`transfer_type`].
    pub transfer_type: u8,
}

/// One alternate setting of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AltSetting {
    pub interface: u8,
    pub alt: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub endpoints: Vec<Endpoint>,
}

/// A configuration: its value and every alternate setting of its
/// interfaces, in descriptor order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Configuration {
    pub value: u8,
    pub settings: Vec<AltSetting>,
}

impl Configuration {
    /// Parses a full configuration descriptor (header, interfaces,
    /// endpoints and whatever class descriptors lie between). Parsing stops
    /// at the first malformed descriptor; what came before is kept.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() < 9 || raw[1] != DT_CONFIG || raw[0] < 9 {
            return None;
        }
        let total = usize::from(u16::from_le_bytes([raw[2], raw[3]])).min(raw.len());
        let mut config = Configuration {
            value: raw[5],
            settings: Vec::new(),
        };
        let mut rest = raw.get(usize::from(raw[0])..total).unwrap_or_default();
        while rest.len() >= 2 {
            let len = usize::from(rest[0]);
            if len < 2 || len > rest.len() {
                break;
            }
            let (d, tail) = rest.split_at(len);
            match d[1] {
                DT_INTERFACE if len >= 9 => config.settings.push(AltSetting {
                    interface: d[2],
                    alt: d[3],
                    class: d[5],
                    subclass: d[6],
                    protocol: d[7],
                    endpoints: Vec::new(),
                }),
                DT_ENDPOINT if len >= 7 => {
                    // An endpoint before any interface belongs to nothing.
                    if let Some(setting) = config.settings.last_mut() {
                        setting.endpoints.push(Endpoint {
                            address: d[2],
                            transfer_type: d[3] & 3,
                        });
                    }
                }
                _ => {}
            }
            rest = tail;
        }
        Some(config)
    }

    /// The interface numbers, each once, in descriptor order.
    pub fn interface_numbers(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for s in &self.settings {
            if !out.contains(&s.interface) {
                out.push(s.interface);
            }
        }
        out
    }

    /// The class triple of each interface's alternate setting 0, as the
    /// USB/IP device list shows them (at most what the protocol allows).
    pub fn interface_infos(&self) -> Vec<InterfaceInfo> {
        self.interface_numbers()
            .into_iter()
            .filter_map(|n| {
                // An interface without an alternate setting 0 is malformed;
                // its first setting stands in for it.
                let settings = || self.settings.iter().filter(move |s| s.interface == n);
                let s = settings()
                    .find(|s| s.alt == 0)
                    .or_else(|| settings().next())?;
                Some(InterfaceInfo {
                    class: s.class,
                    subclass: s.subclass,
                    protocol: s.protocol,
                })
            })
            .take(usize::from(limits::MAX_INTERFACES))
            .collect()
    }

    /// Transfer type of every endpoint reachable with the given alternate
    /// settings (interfaces not in `alts` are at setting 0).
    pub fn endpoint_types(&self, alts: &HashMap<u8, u8>) -> HashMap<u8, u8> {
        self.settings
            .iter()
            .filter(|s| alts.get(&s.interface).copied().unwrap_or(0) == s.alt)
            .flat_map(|s| &s.endpoints)
            .map(|e| (e.address, e.transfer_type))
            .collect()
    }
}

/// Splits the contents of a sysfs `descriptors` file (the device
/// descriptor followed by every configuration descriptor, each
/// `wTotalLength` long) into the device descriptor and the configurations.
pub fn split_sysfs_descriptors(raw: &[u8]) -> Option<(DeviceDescriptor, Vec<Configuration>)> {
    let device = DeviceDescriptor::parse(raw)?;
    let mut configs = Vec::new();
    let mut rest = raw.get(usize::from(raw[0]).max(18)..).unwrap_or_default();
    while rest.len() >= 9 && rest[1] == DT_CONFIG {
        let total = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        if total < 9 {
            break;
        }
        let (one, tail) = rest.split_at(total.min(rest.len()));
        configs.extend(Configuration::parse(one));
        rest = tail;
    }
    Some((device, configs))
}

/// The device-list entry, as Linux's usbip-host reports it from sysfs:
/// `active` is the active configuration (`None` when unconfigured).
pub fn build_identity(
    path: String,
    location: &Location,
    speed: u32,
    device: &DeviceDescriptor,
    active: Option<&Configuration>,
) -> DeviceIdentity {
    let interfaces = active
        .map(Configuration::interface_infos)
        .unwrap_or_default();
    DeviceIdentity {
        info: DeviceInfo {
            path,
            busid: location.busid(),
            busnum: u32::from(location.busnum),
            devnum: u32::from(location.devnum),
            speed,
            id_vendor: device.vendor_id,
            id_product: device.product_id,
            bcd_device: device.bcd_device,
            device_class: device.class,
            device_subclass: device.subclass,
            device_protocol: device.protocol,
            configuration_value: active.map_or(0, |c| c.value),
            num_configurations: device.num_configurations,
            num_interfaces: interfaces.len() as u8,
        },
        interfaces,
    }
}

#[cfg(test)]
mod tests {
    use hex_literal::hex;

    use super::*;

    /// A CDC-ACM + mass-storage composite as Linux's g_multi/configfs
    /// gadgets describe it: IAD, two CDC interfaces, one MSC interface.
    const DEVICE: [u8; 18] = hex!("12 01 00 02 ef 02 01 40 09 12 01 00 19 05 01 02 03 01");
    const CONFIG: &[u8] = &hex!(
        "09 02 62 00 03 01 00 80 fa"
        "08 0b 00 02 02 02 01 00"
        "09 04 00 00 01 02 02 01 00"
        "05 24 00 10 01"
        "05 24 01 00 01"
        "04 24 02 02"
        "05 24 06 00 01"
        "07 05 83 03 0a 00 09"
        "09 04 01 00 02 0a 00 00 00"
        "07 05 81 02 00 02 00"
        "07 05 02 02 00 02 00"
        "09 04 02 00 02 08 06 50 00"
        "07 05 84 02 00 02 00"
        "07 05 03 02 00 02 01"
    );

    fn location() -> Location {
        Location {
            busnum: 3,
            devnum: 7,
            ports: vec![1, 4],
        }
    }

    #[test]
    fn busid_is_bus_dash_dotted_ports() {
        assert_eq!(location().busid(), "3-1.4");
        let one = Location {
            busnum: 1,
            devnum: 2,
            ports: vec![1],
        };
        assert_eq!(one.busid(), "1-1");
        let deep = Location {
            busnum: 12,
            devnum: 99,
            ports: vec![2, 3, 10, 1, 7],
        };
        assert_eq!(deep.busid(), "12-2.3.10.1.7");
        let root = Location {
            busnum: 2,
            devnum: 1,
            ports: vec![],
        };
        assert_eq!(root.busid(), "usb2");
    }

    #[test]
    fn identity_from_a_composite_gadget() {
        let device = DeviceDescriptor::parse(&DEVICE).unwrap();
        let config = Configuration::parse(CONFIG).unwrap();
        let id = build_identity(
            "/sys/devices/platform/dummy_hcd.0/usb3/3-1/3-1.4".into(),
            &location(),
            usbip_proto::speed::HIGH,
            &device,
            Some(&config),
        );
        let i = &id.info;
        assert_eq!(i.busid, "3-1.4");
        assert_eq!((i.busnum, i.devnum, i.speed), (3, 7, 3));
        assert_eq!(
            (i.id_vendor, i.id_product, i.bcd_device),
            (0x1209, 0x0001, 0x0519)
        );
        assert_eq!(
            (i.device_class, i.device_subclass, i.device_protocol),
            (0xef, 2, 1)
        );
        assert_eq!((i.configuration_value, i.num_configurations), (1, 1));
        assert_eq!(i.num_interfaces, 3);
        let classes: Vec<(u8, u8, u8)> = id
            .interfaces
            .iter()
            .map(|f| (f.class, f.subclass, f.protocol))
            .collect();
        assert_eq!(classes, vec![(2, 2, 1), (0x0a, 0, 0), (8, 6, 0x50)]);
        assert_eq!(id.devid(), (3 << 16) | 7);
    }

    #[test]
    fn unconfigured_device_has_no_interfaces() {
        let device = DeviceDescriptor::parse(&DEVICE).unwrap();
        let id = build_identity("p".into(), &location(), 2, &device, None);
        assert_eq!(
            (id.info.configuration_value, id.info.num_interfaces),
            (0, 0)
        );
        assert!(id.interfaces.is_empty());
    }

    #[test]
    fn endpoint_types_follow_the_alternate_settings() {
        let mut raw = CONFIG.to_vec();
        // Interface 1 gains an alternate setting 1 with an isochronous IN
        // endpoint 0x85 (wTotalLength grows by 16).
        raw.extend_from_slice(&hex!("09 04 01 01 01 0a 00 00 00  07 05 85 05 00 01 01"));
        let total = raw.len() as u16;
        raw[2..4].copy_from_slice(&total.to_le_bytes());
        let config = Configuration::parse(&raw).unwrap();
        assert_eq!(config.interface_numbers(), vec![0, 1, 2]);
        // Still three interfaces, each shown by its setting 0.
        assert_eq!(config.interface_infos().len(), 3);

        let at_zero = config.endpoint_types(&HashMap::new());
        assert_eq!(at_zero.get(&0x83), Some(&transfer_type::INTERRUPT));
        assert_eq!(at_zero.get(&0x81), Some(&transfer_type::BULK));
        assert_eq!(at_zero.get(&0x85), None);

        let alt1 = config.endpoint_types(&HashMap::from([(1, 1)]));
        assert_eq!(alt1.get(&0x85), Some(&transfer_type::ISOCHRONOUS));
        assert_eq!(alt1.get(&0x81), None);
        assert_eq!(alt1.get(&0x84), Some(&transfer_type::BULK));
    }

    #[test]
    fn sysfs_descriptors_file_is_split_into_its_configurations() {
        let mut raw = DEVICE.to_vec();
        raw.extend_from_slice(CONFIG);
        // A second, minimal configuration (value 2, no interfaces).
        raw.extend_from_slice(&hex!("09 02 09 00 00 02 00 80 32"));
        let (device, configs) = split_sysfs_descriptors(&raw).unwrap();
        assert_eq!(device.vendor_id, 0x1209);
        assert_eq!(configs.len(), 2);
        assert_eq!((configs[0].value, configs[1].value), (1, 2));
        assert!(configs[1].settings.is_empty());
    }

    #[test]
    fn malformed_descriptors_never_panic() {
        assert_eq!(DeviceDescriptor::parse(&DEVICE[..17]), None);
        assert_eq!(DeviceDescriptor::parse(&[0; 18]), None);
        assert_eq!(Configuration::parse(&[]), None);
        assert_eq!(
            Configuration::parse(&hex!("09 04 00 00 00 00 00 00 00")),
            None
        );
        // wTotalLength beyond the data, a zero-length descriptor in the
        // middle, an endpoint before any interface, short descriptors.
        let weird = hex!(
            "09 02 ff ff 01 01 00 80 32"
            "07 05 81 02 40 00 00"
            "09 04 00 00 01 ff 00 00 00"
            "03 05 82"
            "00 00 00"
        );
        let config = Configuration::parse(&weird).unwrap();
        assert_eq!(config.settings.len(), 1);
        assert!(config.settings[0].endpoints.is_empty());
        // Every truncation of a valid blob parses to something or nothing.
        let mut raw = DEVICE.to_vec();
        raw.extend_from_slice(CONFIG);
        for n in 0..raw.len() {
            let _ = split_sysfs_descriptors(&raw[..n]);
            let _ = Configuration::parse(&CONFIG[..n.min(CONFIG.len())]);
        }
        // A bogus bLength on the device descriptor and a config header
        // claiming less than its own size.
        let mut odd = DEVICE.to_vec();
        odd[0] = 0xff;
        odd.extend_from_slice(&hex!("09 02 03 00 01 01 00 80 32"));
        let (_, configs) = split_sysfs_descriptors(&odd).unwrap();
        assert!(configs.is_empty());
    }

    #[test]
    fn interface_list_is_capped_at_the_protocol_limit() {
        let mut raw = hex!("09 02 00 00 40 01 00 80 32").to_vec();
        for n in 0..64u8 {
            raw.extend_from_slice(&[9, 4, n, 0, 0, 0xff, 0, 0, 0]);
        }
        let total = raw.len() as u16;
        raw[2..4].copy_from_slice(&total.to_le_bytes());
        let config = Configuration::parse(&raw).unwrap();
        assert_eq!(config.interface_numbers().len(), 64);
        assert_eq!(
            config.interface_infos().len(),
            usize::from(limits::MAX_INTERFACES)
        );
    }
}
