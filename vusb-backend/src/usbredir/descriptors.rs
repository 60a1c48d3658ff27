//! The device's standard descriptors, as read from it over USB/IP, and what
//! usbredir makes of them: interface_info and ep_info for the active
//! configuration and alternate settings.
//!
//! Descriptors come from a remote device and are not trusted: every length
//! is checked, and a configuration descriptor is read as far as it is well
//! formed (as Linux's `usb_parse_configuration()` does) rather than refused
//! for a broken tail.

use usbredir_proto::{
    ep_index, ep_type, Caps, EpInfo, InterfaceInfo, MAX_ENDPOINTS, MAX_INTERFACES,
};

use crate::transfer::Speed;

const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;

/// Length of a device descriptor.
pub const DEVICE_LEN: u16 = 18;
/// Length of a configuration descriptor without what follows it.
pub const CONFIG_HEADER_LEN: u16 = 9;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("{what} descriptor of {len} bytes, needs {need}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{what} descriptor has type {found}, not {expected}")]
    WrongType {
        what: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("configuration {value} has {count} interfaces; usbredir carries at most 32")]
    TooManyInterfaces { value: u8, count: usize },
}

fn check(bytes: &[u8], what: &'static str, need: usize, ty: u8) -> Result<(), DescriptorError> {
    // The shorter of what arrived and what the descriptor says it holds.
    let len = bytes
        .len()
        .min(bytes.first().map_or(0, |&b| usize::from(b)));
    if len < need {
        return Err(DescriptorError::Short { what, len, need });
    }
    if bytes[1] != ty {
        return Err(DescriptorError::WrongType {
            what,
            found: bytes[1],
            expected: ty,
        });
    }
    Ok(())
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The fields of the device descriptor that usbredir and the session use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescriptor {
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    /// bcdDevice.
    pub device_version: u16,
    pub num_configurations: u8,
}

impl DeviceDescriptor {
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        check(bytes, "device", usize::from(DEVICE_LEN), DT_DEVICE)?;
        Ok(Self {
            class: bytes[4],
            subclass: bytes[5],
            protocol: bytes[6],
            vendor_id: le16(bytes, 8),
            product_id: le16(bytes, 10),
            device_version: le16(bytes, 12),
            num_configurations: bytes[17],
        })
    }
}

/// The first 9 bytes of a configuration descriptor: enough to know how
/// much to read for the whole of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigHeader {
    pub total_length: u16,
    pub value: u8,
}

impl ConfigHeader {
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        check(
            bytes,
            "configuration",
            usize::from(CONFIG_HEADER_LEN),
            DT_CONFIG,
        )?;
        Ok(Self {
            total_length: le16(bytes, 2),
            value: bytes[5],
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: u8,
    pub attributes: u8,
    /// wMaxPacketSize as in the descriptor (size and, at high speed,
    /// additional transactions).
    pub max_packet_size: u16,
    pub interval: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltSetting {
    pub alt: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub number: u8,
    /// In the order the descriptor lists them.
    pub alt_settings: Vec<AltSetting>,
}

impl Interface {
    pub fn alt_setting(&self, alt: u8) -> Option<&AltSetting> {
        self.alt_settings.iter().find(|a| a.alt == alt)
    }
}

/// One configuration: its interfaces in the order the descriptor lists
/// them, which is the order interface_info gives them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub value: u8,
    pub interfaces: Vec<Interface>,
}

impl Configuration {
    /// Parses a whole configuration descriptor (wTotalLength bytes, or
    /// fewer if the device sent fewer).
    pub fn parse(bytes: &[u8]) -> Result<Self, DescriptorError> {
        let header = ConfigHeader::parse(bytes)?;
        let end = bytes.len().min(usize::from(header.total_length));
        let mut config = Configuration {
            value: header.value,
            interfaces: Vec::new(),
        };
        // The interface and alternate setting the next endpoints belong to.
        let mut current: Option<(usize, usize)> = None;
        let mut at = usize::from(bytes[0]);
        while at + 2 <= end {
            let len = usize::from(bytes[at]);
            if len < 2 || at + len > end {
                // A broken descriptor: everything before it still stands.
                break;
            }
            let d = &bytes[at..at + len];
            match d[1] {
                DT_INTERFACE if len >= 9 => {
                    let alt = AltSetting {
                        alt: d[3],
                        class: d[5],
                        subclass: d[6],
                        protocol: d[7],
                        endpoints: Vec::new(),
                    };
                    let i = match config.interfaces.iter().position(|i| i.number == d[2]) {
                        Some(i) => i,
                        None => {
                            config.interfaces.push(Interface {
                                number: d[2],
                                alt_settings: Vec::new(),
                            });
                            config.interfaces.len() - 1
                        }
                    };
                    config.interfaces[i].alt_settings.push(alt);
                    current = Some((i, config.interfaces[i].alt_settings.len() - 1));
                }
                // Endpoint 0 is the default control pipe of every device; a
                // descriptor claiming it is nonsense and would hide it.
                DT_ENDPOINT if len >= 7 && d[2] & 0x0f != 0 => {
                    if let Some((i, a)) = current {
                        config.interfaces[i].alt_settings[a]
                            .endpoints
                            .push(Endpoint {
                                address: d[2],
                                attributes: d[3],
                                max_packet_size: le16(d, 4),
                                interval: d[6],
                            });
                    }
                }
                _ => {}
            }
            at += len;
        }
        if config.interfaces.len() > MAX_INTERFACES {
            return Err(DescriptorError::TooManyInterfaces {
                value: config.value,
                count: config.interfaces.len(),
            });
        }
        Ok(config)
    }

    /// Index of interface `number` in [`Configuration::interfaces`].
    pub fn interface_index(&self, number: u8) -> Option<usize> {
        self.interfaces.iter().position(|i| i.number == number)
    }
}

/// The endpoints and interfaces usbredir announces: those of a
/// configuration with one alternate setting chosen per interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub interfaces: InterfaceInfo,
    /// Indexed by [`ep_index`], as in ep_info.
    pub ep_type: [u8; MAX_ENDPOINTS],
    pub interval: [u8; MAX_ENDPOINTS],
    pub interface: [u8; MAX_ENDPOINTS],
    /// In bytes.
    pub max_packet_size: [u16; MAX_ENDPOINTS],
}

impl Layout {
    /// An unconfigured device: no interfaces, only the default control
    /// pipe.
    pub fn unconfigured() -> Self {
        let mut ep_type = [ep_type::INVALID; MAX_ENDPOINTS];
        ep_type[ep_index(0x00)] = ep_type::CONTROL;
        ep_type[ep_index(0x80)] = ep_type::CONTROL;
        Self {
            interfaces: InterfaceInfo::default(),
            ep_type,
            interval: [0; MAX_ENDPOINTS],
            interface: [0; MAX_ENDPOINTS],
            // usbredirhost leaves endpoint 0's size at 0 too: the guest
            // learns it from the device descriptor.
            max_packet_size: [0; MAX_ENDPOINTS],
        }
    }

    /// `config` with alternate setting `alts[i]` on its `i`-th interface
    /// (0 where `alts` is short or names a setting the interface lacks).
    pub fn of(config: &Configuration, alts: &[u8], speed: Speed) -> Self {
        let mut layout = Self::unconfigured();
        let info = &mut layout.interfaces;
        info.interface_count = config.interfaces.len() as u32;
        for (i, iface) in config.interfaces.iter().enumerate() {
            let want = alts.get(i).copied().unwrap_or(0);
            let Some(alt) = iface
                .alt_setting(want)
                .or_else(|| iface.alt_settings.first())
            else {
                continue;
            };
            info.interface[i] = iface.number;
            info.interface_class[i] = alt.class;
            info.interface_subclass[i] = alt.subclass;
            info.interface_protocol[i] = alt.protocol;
            for ep in &alt.endpoints {
                let at = ep_index(ep.address);
                let kind = ep.attributes & 0x03;
                layout.ep_type[at] = kind;
                // QEMU refuses a device with an interrupt or isochronous
                // endpoint of interval 0; Linux reads 0 as the smallest
                // valid value, and so does this.
                layout.interval[at] = if ep.interval == 0 && kind != ep_type::BULK {
                    1
                } else {
                    ep.interval
                };
                layout.interface[at] = iface.number;
                layout.max_packet_size[at] = max_packet_bytes(ep.max_packet_size, kind, speed);
            }
        }
        layout
    }

    pub fn ep_type(&self, endpoint: u8) -> u8 {
        self.ep_type[ep_index(endpoint)]
    }

    pub fn max_packet_size(&self, endpoint: u8) -> u16 {
        self.max_packet_size[ep_index(endpoint)]
    }

    pub fn interval(&self, endpoint: u8) -> u8 {
        self.interval[ep_index(endpoint)]
    }

    /// The endpoint addresses (other than endpoint 0) that belong to
    /// interface `number`.
    pub fn endpoints_of(&self, number: u8) -> impl Iterator<Item = u8> + '_ {
        (0..MAX_ENDPOINTS).filter_map(move |i| {
            let address = (((i & 0x10) << 3) | (i & 0x0f)) as u8;
            let used = self.ep_type[i] != ep_type::INVALID && address & 0x0f != 0;
            (used && self.interface[i] == number).then_some(address)
        })
    }

    /// ep_info with the fields the negotiated capabilities put on the wire.
    pub fn ep_info(&self, caps: Caps) -> EpInfo {
        use usbredir_proto::Cap;
        let sizes = caps.has(Cap::EpInfoMaxPacketSize) || caps.has(Cap::BulkStreams);
        EpInfo {
            ep_type: self.ep_type,
            interval: self.interval,
            interface: self.interface,
            max_packet_size: sizes.then_some(self.max_packet_size),
            // USB/IP carries no stream ids: no endpoint offers streams.
            max_streams: caps.has(Cap::BulkStreams).then_some([0; MAX_ENDPOINTS]),
        }
    }
}

/// wMaxPacketSize in bytes, as usbredirhost computes it: the size field,
/// times the transactions per microframe for high-speed isochronous
/// endpoints (the only ones for which the guest's scheduling needs them).
fn max_packet_bytes(w_max_packet_size: u16, kind: u8, speed: Speed) -> u16 {
    let size = w_max_packet_size & 0x7ff;
    let mult = match (w_max_packet_size >> 11) & 3 {
        1 => 2,
        2 => 3,
        _ => 1,
    };
    if speed == Speed::High && kind == ep_type::ISO {
        size * mult
    } else {
        size
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use usbredir_proto::Cap;

    /// A CDC-ACM-like device: a communications interface with an interrupt
    /// IN endpoint (and an interrupt OUT one), a data interface with bulk IN
    /// and OUT, and (only in its alternate setting 1) isochronous IN and OUT
    /// endpoints.
    pub const DEVICE: [u8; 18] = [
        18, 1, 0x00, 0x02, 0x02, 0x00, 0x00, 64, 0x34, 0x12, 0x78, 0x56, 0x01, 0x02, 1, 2, 3, 1,
    ];

    pub fn config() -> Vec<u8> {
        let mut c = vec![9, 2, 0, 0, 2, 1, 0, 0x80, 50];
        // Interface 0: CDC control, interrupt IN, and an interrupt OUT
        // such devices do not have, for the tests of interrupt OUT.
        c.extend([9, 4, 0, 0, 2, 0x02, 0x02, 0x01, 0]);
        // A class-specific descriptor, to be skipped.
        c.extend([5, 0x24, 0x00, 0x10, 0x01]);
        c.extend([7, 5, 0x83, 0x03, 16, 0, 10]);
        c.extend([7, 5, 0x03, 0x03, 8, 0, 10]);
        // Interface 1: CDC data, bulk IN and OUT.
        c.extend([9, 4, 1, 0, 2, 0x0a, 0x00, 0x00, 0]);
        c.extend([7, 5, 0x81, 0x02, 0x00, 0x02, 0]);
        c.extend([7, 5, 0x02, 0x02, 0x00, 0x02, 0]);
        // Interface 1, alternate setting 1: adds an isochronous IN endpoint
        // (high bandwidth: 2 transactions of 512 bytes) and an isochronous
        // OUT one of 192 bytes.
        c.extend([9, 4, 1, 1, 4, 0x0a, 0x00, 0x00, 0]);
        c.extend([7, 5, 0x81, 0x02, 0x00, 0x02, 0]);
        c.extend([7, 5, 0x02, 0x02, 0x00, 0x02, 0]);
        c.extend([7, 5, 0x84, 0x05, 0x00, 0x0a, 1]);
        c.extend([7, 5, 0x05, 0x05, 0xc0, 0x00, 4]);
        let total = c.len() as u16;
        c[2..4].copy_from_slice(&total.to_le_bytes());
        c
    }

    #[test]
    fn the_device_descriptor_gives_ids_class_and_version() {
        let d = DeviceDescriptor::parse(&DEVICE).unwrap();
        assert_eq!(
            (d.vendor_id, d.product_id, d.device_version),
            (0x1234, 0x5678, 0x0201)
        );
        assert_eq!((d.class, d.subclass, d.protocol), (2, 0, 0));
        assert_eq!(d.num_configurations, 1);
        assert!(matches!(
            DeviceDescriptor::parse(&DEVICE[..17]),
            Err(DescriptorError::Short { .. })
        ));
        let mut wrong = DEVICE;
        wrong[1] = 2;
        assert!(matches!(
            DeviceDescriptor::parse(&wrong),
            Err(DescriptorError::WrongType { found: 2, .. })
        ));
    }

    #[test]
    fn a_configuration_parses_into_interfaces_alt_settings_and_endpoints() {
        let bytes = config();
        let h = ConfigHeader::parse(&bytes[..9]).unwrap();
        assert_eq!((h.total_length as usize, h.value), (bytes.len(), 1));
        let c = Configuration::parse(&bytes).unwrap();
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[0].alt_settings[0].endpoints.len(), 2);
        assert_eq!(c.interfaces[1].alt_settings.len(), 2);
        assert_eq!(c.interfaces[1].alt_setting(1).unwrap().endpoints.len(), 4);
        assert_eq!(c.interface_index(1), Some(1));
        assert_eq!(c.interface_index(7), None);
    }

    #[test]
    fn a_broken_tail_keeps_what_came_before_it() {
        let mut bytes = config();
        // Zero the length of the second alternate setting's descriptor.
        let at = bytes.len() - 9 - 4 * 7;
        assert_eq!(bytes[at..at + 2], [9, 4]);
        bytes[at] = 0;
        let c = Configuration::parse(&bytes).unwrap();
        assert_eq!(c.interfaces[1].alt_settings.len(), 1);
        // A descriptor running past the end is dropped the same way.
        let c = Configuration::parse(&config()[..config().len() - 3]).unwrap();
        assert_eq!(c.interfaces[1].alt_setting(1).unwrap().endpoints.len(), 3);
    }

    #[test]
    fn more_than_32_interfaces_is_refused() {
        let mut c = vec![9, 2, 0, 0, 33, 1, 0, 0x80, 50];
        for n in 0..33 {
            c.extend([9, 4, n, 0, 0, 0xff, 0, 0, 0]);
        }
        let total = c.len() as u16;
        c[2..4].copy_from_slice(&total.to_le_bytes());
        assert!(matches!(
            Configuration::parse(&c),
            Err(DescriptorError::TooManyInterfaces { count: 33, .. })
        ));
    }

    #[test]
    fn the_layout_follows_the_alt_settings() {
        let c = Configuration::parse(&config()).unwrap();
        let l = Layout::of(&c, &[0, 0], Speed::High);
        assert_eq!(l.interfaces.interface_count, 2);
        assert_eq!(l.interfaces.interface[..2], [0, 1]);
        assert_eq!(l.interfaces.interface_class[..2], [2, 0x0a]);
        assert_eq!(l.interfaces.interface_subclass[..2], [2, 0]);
        assert_eq!(l.interfaces.interface_protocol[..2], [1, 0]);
        assert_eq!(l.ep_type(0x00), ep_type::CONTROL);
        assert_eq!(l.ep_type(0x80), ep_type::CONTROL);
        assert_eq!(l.ep_type(0x83), ep_type::INTERRUPT);
        assert_eq!((l.interval(0x83), l.max_packet_size(0x83)), (10, 16));
        assert_eq!(l.ep_type(0x81), ep_type::BULK);
        assert_eq!(l.ep_type(0x02), ep_type::BULK);
        assert_eq!(l.max_packet_size(0x02), 512);
        assert_eq!(l.ep_type(0x84), ep_type::INVALID);
        assert_eq!(l.ep_type(0x03), ep_type::INTERRUPT);
        assert_eq!(l.ep_type(0x04), ep_type::INVALID);
        assert_eq!(l.endpoints_of(1).collect::<Vec<_>>(), [0x02, 0x81]);
        assert_eq!(l.endpoints_of(0).collect::<Vec<_>>(), [0x03, 0x83]);

        let alt1 = Layout::of(&c, &[0, 1], Speed::High);
        assert_eq!(alt1.ep_type(0x84), ep_type::ISO);
        assert_eq!(alt1.max_packet_size(0x84), 1024);
        assert_eq!(alt1.interface[ep_index(0x84)], 1);
        // At full speed the transactions bits do not count.
        assert_eq!(
            Layout::of(&c, &[0, 1], Speed::Full).max_packet_size(0x84),
            512
        );
        // A setting the interface lacks falls back to its first.
        assert_eq!(Layout::of(&c, &[0, 9], Speed::High), l);
    }

    #[test]
    fn ep_info_carries_sizes_only_with_the_capability() {
        let c = Configuration::parse(&config()).unwrap();
        let l = Layout::of(&c, &[], Speed::High);
        let e = l.ep_info(Caps::empty());
        assert_eq!((e.max_packet_size, e.max_streams), (None, None));
        let e = l.ep_info(Caps::of(&[Cap::EpInfoMaxPacketSize]));
        assert_eq!(e.max_packet_size.unwrap()[ep_index(0x81)], 512);
        assert_eq!(e.max_streams, None);
        let e = l.ep_info(Caps::of(&[Cap::EpInfoMaxPacketSize, Cap::BulkStreams]));
        assert_eq!(e.max_streams, Some([0; MAX_ENDPOINTS]));
    }

    #[test]
    fn interval_zero_on_a_periodic_endpoint_becomes_one() {
        let mut bytes = config();
        let at = bytes.iter().position(|&b| b == 0x83).unwrap();
        bytes[at + 4] = 0;
        let c = Configuration::parse(&bytes).unwrap();
        assert_eq!(Layout::of(&c, &[], Speed::Full).interval(0x83), 1);
        assert_eq!(Layout::of(&c, &[], Speed::Full).interval(0x81), 0);
    }
}
