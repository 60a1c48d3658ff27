//! Reading a newly connected device's descriptors ([`Probe`]), and what is
//! known of it once they are read ([`Device`]).
//!
//! usbredir announces a device by its ids, class, interfaces and
//! endpoints, which only its descriptors tell; a `Connected` event carries
//! just its speed. So they are read from the device itself with standard
//! control requests, in this order: the device descriptor (18 bytes);
//! GET_CONFIGURATION, for the active configuration (the first one if the
//! device does not answer); then for each configuration the first 9 bytes
//! of its descriptor and then all wTotalLength of it. Every configuration
//! is kept, so that a later SET_CONFIGURATION needs no further reads.

use tracing::{debug, warn};
use usbredir_proto::{Caps, DeviceConnect};

use super::descriptors::{
    ConfigHeader, Configuration, DeviceDescriptor, Layout, CONFIG_HEADER_LEN, DEVICE_LEN,
};
use super::transfers::standard;
use crate::transfer::{Port, Speed, Status};

const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;

/// Configurations read at most. Devices with more than one are rare; the
/// protocol allows 255, which a hostile device could use to keep the probe
/// going for a long time.
const MAX_CONFIGURATIONS: u8 = 8;

/// A control IN request on endpoint 0 for the probe to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub setup: [u8; 8],
    pub length: u16,
}

impl Read {
    fn standard(request: u8, value: u16, length: u16) -> Self {
        Self {
            setup: standard::setup(standard::FROM_DEVICE, request, value, 0, length),
            length,
        }
    }

    fn descriptor(kind: u8, index: u8, length: u16) -> Self {
        Self::standard(
            standard::GET_DESCRIPTOR,
            u16::from(kind) << 8 | u16::from(index),
            length,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Device,
    ActiveConfiguration,
    ConfigHeader(u8),
    Config(u8),
}

/// What the probe does next.
#[derive(Debug)]
pub enum Next {
    Read(Read),
    Done(Box<Device>),
    /// The device cannot be offered; why.
    Failed(String),
}

/// The descriptor reads of a device that has just connected, one at a time.
#[derive(Debug)]
pub struct Probe {
    pub port: Port,
    pub speed: Speed,
    step: Step,
    descriptor: Option<DeviceDescriptor>,
    /// What GET_CONFIGURATION said, if it answered.
    active: Option<u8>,
    configs: Vec<Configuration>,
}

impl Probe {
    /// Starts probing the device on `port`; returns the first read.
    pub fn start(port: Port, speed: Speed) -> (Self, Read) {
        let probe = Self {
            port,
            speed,
            step: Step::Device,
            descriptor: None,
            active: None,
            configs: Vec::new(),
        };
        (probe, Read::descriptor(DT_DEVICE, 0, DEVICE_LEN))
    }

    /// The outcome of the last read: its status and IN data.
    pub fn advance(&mut self, status: Status, data: &[u8]) -> Next {
        match self.step {
            Step::Device => {
                if status != Status::Ok {
                    return Next::Failed(format!("reading the device descriptor: {status:?}"));
                }
                match DeviceDescriptor::parse(data) {
                    Ok(d) => self.descriptor = Some(d),
                    Err(e) => return Next::Failed(e.to_string()),
                }
                self.step = Step::ActiveConfiguration;
                Next::Read(Read::standard(standard::GET_CONFIGURATION, 0, 1))
            }
            Step::ActiveConfiguration => {
                match (status, data) {
                    (Status::Ok, [value]) => self.active = Some(*value),
                    _ => debug!(port = self.port, ?status, "GET_CONFIGURATION failed"),
                }
                self.read_config(0)
            }
            Step::ConfigHeader(index) => {
                if status != Status::Ok {
                    return self.config_failed(index, format!("{status:?}"));
                }
                match ConfigHeader::parse(data) {
                    Ok(h) if h.total_length >= CONFIG_HEADER_LEN => {
                        self.step = Step::Config(index);
                        Next::Read(Read::descriptor(DT_CONFIG, index, h.total_length))
                    }
                    Ok(h) => self.config_failed(index, format!("wTotalLength {}", h.total_length)),
                    Err(e) => self.config_failed(index, e.to_string()),
                }
            }
            Step::Config(index) => {
                if status != Status::Ok {
                    return self.config_failed(index, format!("{status:?}"));
                }
                match Configuration::parse(data) {
                    Ok(c) => {
                        self.configs.push(c);
                        self.read_config(index + 1)
                    }
                    Err(e) => self.config_failed(index, e.to_string()),
                }
            }
        }
    }

    fn read_config(&mut self, index: u8) -> Next {
        let descriptor = self.descriptor.expect("read first");
        if index < descriptor.num_configurations.min(MAX_CONFIGURATIONS) {
            self.step = Step::ConfigHeader(index);
            return Next::Read(Read::descriptor(DT_CONFIG, index, CONFIG_HEADER_LEN));
        }
        if descriptor.num_configurations > MAX_CONFIGURATIONS {
            warn!(
                port = self.port,
                "the device has {} configurations; offering the first {MAX_CONFIGURATIONS}",
                descriptor.num_configurations
            );
        }
        let active = match self.active {
            Some(value) if value == 0 || self.configs.iter().any(|c| c.value == value) => value,
            Some(value) => {
                warn!(
                    port = self.port,
                    "the active configuration {value} has no descriptor; offering the device unconfigured"
                );
                0
            }
            // No answer: the configuration the device's own host most
            // likely chose, as Linux chooses the first.
            None => self.configs.first().map_or(0, |c| c.value),
        };
        Next::Done(Box::new(Device::new(
            self.port,
            self.speed,
            descriptor,
            std::mem::take(&mut self.configs),
            active,
        )))
    }

    /// The first configuration is needed; later ones are only offered if
    /// they can be read.
    fn config_failed(&mut self, index: u8, why: String) -> Next {
        if index == 0 {
            return Next::Failed(format!("reading configuration descriptor 0: {why}"));
        }
        debug!(
            port = self.port,
            index, "skipping configuration descriptor: {why}"
        );
        self.read_config(index + 1)
    }
}

/// A probed device: its descriptors and its current configuration and
/// alternate settings, which decide the endpoints usbredir announces.
#[derive(Debug)]
pub struct Device {
    pub port: Port,
    pub speed: Speed,
    pub descriptor: DeviceDescriptor,
    configs: Vec<Configuration>,
    /// bConfigurationValue of the active configuration; 0 if unconfigured.
    active: u8,
    /// The alternate setting of each interface of the active configuration.
    alts: Vec<u8>,
    layout: Layout,
}

impl Device {
    pub fn new(
        port: Port,
        speed: Speed,
        descriptor: DeviceDescriptor,
        configs: Vec<Configuration>,
        active: u8,
    ) -> Self {
        let mut d = Self {
            port,
            speed,
            descriptor,
            configs,
            active: 0,
            alts: Vec::new(),
            layout: Layout::unconfigured(),
        };
        d.set_configuration(active);
        d
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn active(&self) -> u8 {
        self.active
    }

    fn config(&self) -> Option<&Configuration> {
        self.configs.iter().find(|c| c.value == self.active)
    }

    /// Whether SET_CONFIGURATION(`value`) names a configuration the device
    /// has (0 unconfigures it).
    pub fn has_configuration(&self, value: u8) -> bool {
        value == 0 || self.configs.iter().any(|c| c.value == value)
    }

    /// The configuration became `value`: every interface is at alternate
    /// setting 0 again. Unknown values leave the device unconfigured.
    pub fn set_configuration(&mut self, value: u8) {
        self.active = if self.has_configuration(value) {
            value
        } else {
            0
        };
        let interfaces = self.config().map_or(0, |c| c.interfaces.len());
        self.alts = vec![0; interfaces];
        self.relayout();
    }

    /// The index of interface `number` in the active configuration.
    pub fn interface_index(&self, number: u8) -> Option<usize> {
        self.config()?.interface_index(number)
    }

    pub fn has_alt_setting(&self, interface: u8, alt: u8) -> bool {
        self.config()
            .and_then(|c| c.interfaces.iter().find(|i| i.number == interface))
            .is_some_and(|i| i.alt_setting(alt).is_some())
    }

    /// The current alternate setting of interface `number`, if the active
    /// configuration has it.
    pub fn alt_setting(&self, number: u8) -> Option<u8> {
        self.interface_index(number).map(|i| self.alts[i])
    }

    pub fn set_alt_setting(&mut self, interface: u8, alt: u8) {
        if let Some(i) = self.interface_index(interface) {
            if self.has_alt_setting(interface, alt) {
                self.alts[i] = alt;
                self.relayout();
            }
        }
    }

    fn relayout(&mut self) {
        self.layout = match self.config() {
            Some(c) => Layout::of(c, &self.alts, self.speed),
            None => Layout::unconfigured(),
        };
    }

    pub fn device_connect(&self, caps: Caps) -> DeviceConnect {
        let d = &self.descriptor;
        DeviceConnect {
            speed: super::redir_speed(self.speed),
            device_class: d.class,
            device_subclass: d.subclass,
            device_protocol: d.protocol,
            vendor_id: d.vendor_id,
            product_id: d.product_id,
            device_version_bcd: caps
                .has(usbredir_proto::Cap::ConnectDeviceVersion)
                .then_some(d.device_version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::descriptors::tests::{config, DEVICE};
    use super::*;

    fn run(probe: &mut Probe, answers: &[(Status, &[u8])]) -> Vec<Next> {
        answers
            .iter()
            .map(|(status, data)| probe.advance(*status, data))
            .collect()
    }

    /// The device a probe reads from the test descriptors, GET_CONFIGURATION
    /// answered with `active`.
    fn probed(speed: Speed, active: (Status, &[u8])) -> Device {
        let (mut p, _) = Probe::start(1, speed);
        let cfg = config();
        let steps = run(
            &mut p,
            &[
                (Status::Ok, &DEVICE),
                active,
                (Status::Ok, &cfg[..9]),
                (Status::Ok, &cfg),
            ],
        );
        match steps.into_iter().nth(3) {
            Some(Next::Done(d)) => *d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_probe_reads_device_active_configuration_and_each_configuration() {
        let (mut p, first) = Probe::start(2, Speed::High);
        assert_eq!(first.setup, [0x80, 6, 0, 1, 0, 0, 18, 0]);
        let cfg = config();
        let steps = run(
            &mut p,
            &[
                (Status::Ok, &DEVICE),
                (Status::Ok, &[1]),
                (Status::Ok, &cfg[..9]),
                (Status::Ok, &cfg),
            ],
        );
        let reads: Vec<[u8; 8]> = steps[..3]
            .iter()
            .map(|n| match n {
                Next::Read(r) => r.setup,
                other => panic!("{other:?}"),
            })
            .collect();
        let total = (cfg.len() as u16).to_le_bytes();
        assert_eq!(
            reads,
            [
                [0x80, 8, 0, 0, 0, 0, 1, 0],
                [0x80, 6, 0, 2, 0, 0, 9, 0],
                [0x80, 6, 0, 2, 0, 0, total[0], total[1]],
            ]
        );
        let Next::Done(d) = &steps[3] else {
            panic!("{:?}", steps[3])
        };
        assert_eq!((d.port, d.active()), (2, 1));
        assert_eq!(d.layout().interfaces.interface_count, 2);
        assert_eq!(d.alt_setting(1), Some(0));
    }

    #[test]
    fn without_get_configuration_the_first_configuration_is_taken() {
        assert_eq!(probed(Speed::Full, (Status::Stall, &[])).active(), 1);
    }

    #[test]
    fn an_unconfigured_device_is_offered_unconfigured() {
        let d = probed(Speed::Full, (Status::Ok, &[0]));
        assert_eq!(d.active(), 0);
        assert_eq!(d.layout(), &Layout::unconfigured());
        assert!(d.has_configuration(1));
        assert!(!d.has_configuration(2));
    }

    #[test]
    fn a_failed_device_descriptor_or_first_configuration_fails_the_probe() {
        let (mut p, _) = Probe::start(1, Speed::Full);
        assert!(matches!(p.advance(Status::Stall, &[]), Next::Failed(_)));
        let (mut p, _) = Probe::start(1, Speed::Full);
        let steps = run(
            &mut p,
            &[
                (Status::Ok, &DEVICE),
                (Status::Ok, &[1]),
                (Status::Ok, &[9, 2, 4, 0, 1, 1, 0, 0x80, 50]),
            ],
        );
        assert!(matches!(&steps[2], Next::Failed(why) if why.contains("wTotalLength 4")));
        let (mut p, _) = Probe::start(1, Speed::Full);
        assert!(matches!(
            p.advance(Status::Ok, &DEVICE[..8]),
            Next::Failed(_)
        ));
    }

    #[test]
    fn alt_settings_and_configurations_change_the_layout() {
        let mut d = probed(Speed::High, (Status::Ok, &[1]));
        assert!(d.has_alt_setting(1, 1));
        assert!(!d.has_alt_setting(1, 2));
        d.set_alt_setting(1, 1);
        assert_eq!(d.alt_setting(1), Some(1));
        assert_eq!(d.layout().ep_type(0x84), usbredir_proto::ep_type::ISO);
        d.set_configuration(1);
        assert_eq!(d.alt_setting(1), Some(0));
        d.set_configuration(0);
        assert_eq!(d.interface_index(0), None);
        assert_eq!(d.layout(), &Layout::unconfigured());
    }
}
