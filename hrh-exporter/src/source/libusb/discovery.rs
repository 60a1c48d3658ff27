//! Finding devices: enumeration, bus ids, strings, descriptors, and the
//! selectors that pick which devices to export.
//!
//! Every scan uses a fresh libusb context. libusb enumerates a context's
//! devices once and then keeps the list current only from udev's hot-plug
//! events; where udevd does not run (small gateways, the test guests) a
//! long-lived context would never see a device plugged in later. A device
//! opened for export gets a context of its own (see `handle`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusb::{ffi, Context, UsbContext};
use tracing::debug;
use usbip_proto::speed;

use super::descriptors::{
    split_sysfs_descriptors, AltSetting, Configuration, DeviceDescriptor, Endpoint, Location,
    CLASS_HUB,
};
use super::handle::LibusbDevice;
use super::LibusbError;

/// Where Linux shows USB devices by bus id.
const SYSFS_USB_DEVICES: &str = "/sys/bus/usb/devices";

/// How long reading a string descriptor from a device may take.
const STRING_TIMEOUT: Duration = Duration::from_millis(500);

/// A USB device present on the machine.
#[derive(Debug, Clone)]
pub struct FoundDevice {
    /// Linux's name for it (`1-1.3`: bus 1, port 3 of the hub on port 1).
    pub busid: String,
    pub busnum: u8,
    /// Its address on the bus; a replugged device gets a new one.
    pub devnum: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    /// One of [`usbip_proto::speed`].
    pub speed: u32,
    /// bDeviceClass (0: see the interfaces).
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    /// The sysfs path usbip-host reports: the device's directory, resolved.
    pub(super) path: String,
    pub(super) location: Location,
    pub(super) descriptor: DeviceDescriptor,
    pub(super) device: rusb::Device<Context>,
}

impl FoundDevice {
    /// True if `selector` picks this device.
    pub fn matches(&self, selector: &Selector) -> bool {
        match selector {
            Selector::BusId(busid) => *busid == self.busid,
            Selector::VidPid(vid, pid) => (*vid, *pid) == (self.vendor_id, self.product_id),
        }
    }
}

/// Enumerates USB devices and opens them for export.
#[derive(Debug)]
pub struct LibusbSource {
    /// Keeps libusb's process-wide state (its hot-plug monitor thread on
    /// Linux) alive between scans instead of rebuilding it for each.
    _context: Context,
    /// Strings read from devices, where sysfs does not show them, so that
    /// a poll does not ask every device again.
    strings: Mutex<HashMap<StringsKey, Strings>>,
}

type StringsKey = (u8, u8, u16, u16);

#[derive(Debug, Clone, Default)]
struct Strings {
    manufacturer: Option<String>,
    product: Option<String>,
    serial: Option<String>,
}

impl LibusbSource {
    /// A source whose devices can be listed and opened.
    pub fn new() -> Result<Self, LibusbError> {
        Ok(Self {
            _context: Context::new().map_err(LibusbError::Init)?,
            strings: Mutex::new(HashMap::new()),
        })
    }

    /// Every USB device present except hubs (root hubs included) and
    /// devices imported from another machine through Linux's USB/IP client
    /// (exporting those again would only loop them back), by bus id.
    /// Strings are best effort.
    pub fn scan(&self) -> Result<Vec<FoundDevice>, LibusbError> {
        let context = Context::new().map_err(LibusbError::Init)?;
        let list = context.devices().map_err(LibusbError::Enumerate)?;
        let mut found = Vec::new();
        for device in list.iter() {
            let Some(descriptor) = device_descriptor(&device) else {
                continue;
            };
            if descriptor.class == CLASS_HUB {
                continue;
            }
            let ports = match device.port_numbers() {
                Ok(ports) if !ports.is_empty() => ports,
                _ => continue,
            };
            let location = Location {
                busnum: device.bus_number(),
                devnum: device.address(),
                ports,
            };
            if behind_vhci(location.busnum) {
                continue;
            }
            let busid = location.busid();
            let link = sysfs_dir(&busid);
            let path = std::fs::canonicalize(&link).unwrap_or(link);
            let strings = self.strings(&busid, &location, &descriptor, &device);
            found.push(FoundDevice {
                busnum: location.busnum,
                devnum: location.devnum,
                vendor_id: descriptor.vendor_id,
                product_id: descriptor.product_id,
                manufacturer: strings.manufacturer,
                product: strings.product,
                serial: strings.serial,
                speed: usbip_speed(device.speed()),
                class: descriptor.class,
                subclass: descriptor.subclass,
                protocol: descriptor.protocol,
                busid,
                path: path.to_string_lossy().into_owned(),
                location,
                descriptor,
                device,
            });
        }
        let present: HashSet<StringsKey> = found.iter().map(strings_key).collect();
        self.lock_strings().retain(|key, _| present.contains(key));
        found.sort_by(|a, b| {
            (a.location.busnum, &a.location.ports).cmp(&(b.location.busnum, &b.location.ports))
        });
        Ok(found)
    }

    /// Opens a device for export. Nothing is claimed until it is imported.
    pub fn open(&self, found: &FoundDevice) -> Result<Arc<LibusbDevice>, LibusbError> {
        LibusbDevice::open(found)
    }

    fn lock_strings(&self) -> std::sync::MutexGuard<'_, HashMap<StringsKey, Strings>> {
        self.strings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn strings(
        &self,
        busid: &str,
        location: &Location,
        descriptor: &DeviceDescriptor,
        device: &rusb::Device<Context>,
    ) -> Strings {
        let dir = sysfs_dir(busid);
        if dir.is_dir() {
            // What the kernel read at enumeration: no need to ask the device.
            return Strings {
                manufacturer: sysfs_attr(&dir, "manufacturer"),
                product: sysfs_attr(&dir, "product"),
                serial: sysfs_attr(&dir, "serial"),
            };
        }
        let key = (
            location.busnum,
            location.devnum,
            descriptor.vendor_id,
            descriptor.product_id,
        );
        if let Some(strings) = self.lock_strings().get(&key) {
            return strings.clone();
        }
        let strings = read_strings(device, descriptor);
        self.lock_strings().insert(key, strings.clone());
        strings
    }
}

fn strings_key(f: &FoundDevice) -> StringsKey {
    (f.busnum, f.devnum, f.vendor_id, f.product_id)
}

/// Asks the device for its strings (first language).
fn read_strings(device: &rusb::Device<Context>, d: &DeviceDescriptor) -> Strings {
    if d.i_manufacturer == 0 && d.i_product == 0 && d.i_serial == 0 {
        return Strings::default();
    }
    let Ok(handle) = device.open() else {
        return Strings::default();
    };
    let read = |index: u8| -> Option<String> {
        if index == 0 {
            return None;
        }
        let language = *handle.read_languages(STRING_TIMEOUT).ok()?.first()?;
        handle
            .read_string_descriptor(language, index, STRING_TIMEOUT)
            .ok()
            .filter(|s| !s.is_empty())
    };
    Strings {
        manufacturer: read(d.i_manufacturer),
        product: read(d.i_product),
        serial: read(d.i_serial),
    }
}

/// Bus id and address of every USB device sysfs shows, sorted.
pub type Fingerprint = Vec<(String, String)>;

/// What sysfs shows of the USB devices present: each device's bus id and
/// address, in order. A device plugged in, unplugged or replugged (a new
/// address) changes it. Reading it costs a directory listing and a small
/// file per device, where a scan (a fresh libusb context enumerating every
/// device) costs hundreds of milliseconds of CPU on a small gateway.
/// `None` where sysfs cannot be read.
pub fn sysfs_fingerprint() -> Option<Fingerprint> {
    sysfs_fingerprint_in(Path::new(SYSFS_USB_DEVICES))
}

fn sysfs_fingerprint_in(dir: &Path) -> Option<Fingerprint> {
    let mut devices = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let name = entry.ok()?.file_name().to_string_lossy().into_owned();
        // Interfaces (`1-1:1.0`) come and go with their device.
        if name.contains(':') {
            continue;
        }
        // A device that vanishes between the listing and the read still
        // shows as a change.
        let devnum = sysfs_attr(&dir.join(&name), "devnum").unwrap_or_default();
        devices.push((name, devnum));
    }
    devices.sort();
    Some(devices)
}

fn sysfs_dir(busid: &str) -> PathBuf {
    Path::new(SYSFS_USB_DEVICES).join(busid)
}

/// True for a bus of Linux's USB/IP client (vhci_hcd): its devices are
/// imported from elsewhere. Told by where the bus's root hub sits in sysfs.
fn behind_vhci(busnum: u8) -> bool {
    std::fs::canonicalize(sysfs_dir(&format!("usb{busnum}"))).is_ok_and(|path| is_vhci_path(&path))
}

fn is_vhci_path(path: &Path) -> bool {
    path.components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with("vhci_hcd"))
}

fn sysfs_attr(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    let text = text.trim_end_matches('\n');
    (!text.is_empty()).then(|| text.to_owned())
}

/// The device descriptor libusb cached at enumeration (no device I/O).
fn device_descriptor(device: &rusb::Device<Context>) -> Option<DeviceDescriptor> {
    let mut d = MaybeUninit::<ffi::libusb_device_descriptor>::uninit();
    // SAFETY: the device is a live reference-counted libusb device and
    // `d` has room for the descriptor libusb copies into it.
    let rc = unsafe { ffi::libusb_get_device_descriptor(device.as_raw(), d.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: libusb filled the whole struct on success.
    let d = unsafe { d.assume_init() };
    Some(DeviceDescriptor {
        class: d.bDeviceClass,
        subclass: d.bDeviceSubClass,
        protocol: d.bDeviceProtocol,
        vendor_id: d.idVendor,
        product_id: d.idProduct,
        bcd_device: d.bcdDevice,
        i_manufacturer: d.iManufacturer,
        i_product: d.iProduct,
        i_serial: d.iSerialNumber,
        num_configurations: d.bNumConfigurations,
    })
}

/// The device's active configuration, `None` when it is unconfigured:
/// from sysfs, as usbip-host reports it, else from libusb.
pub(super) fn read_active_config(
    busid: &str,
    device: &rusb::Device<Context>,
) -> Option<Configuration> {
    let dir = sysfs_dir(busid);
    if dir.is_dir() {
        match sysfs_active_config(&dir) {
            Ok(config) => return config,
            Err(e) => debug!("{busid}: no configuration in sysfs ({e}); asking libusb"),
        }
    }
    match device.active_config_descriptor() {
        Ok(c) => Some(config_from_libusb(&c)),
        Err(rusb::Error::NotFound) => None,
        Err(e) => {
            debug!("{busid}: cannot read the active configuration: {e}");
            None
        }
    }
}

fn sysfs_active_config(dir: &Path) -> std::io::Result<Option<Configuration>> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let value = std::fs::read_to_string(dir.join("bConfigurationValue"))?;
    let value = value.trim();
    // Empty when the device is unconfigured.
    if value.is_empty() || value == "0" {
        return Ok(None);
    }
    let value: u8 = value
        .parse()
        .map_err(|_| invalid("bad bConfigurationValue"))?;
    let raw = std::fs::read(dir.join("descriptors"))?;
    let (_, configs) = split_sysfs_descriptors(&raw).ok_or_else(|| invalid("bad descriptors"))?;
    configs
        .into_iter()
        .find(|c| c.value == value)
        .map(Some)
        .ok_or_else(|| invalid("active configuration not among the descriptors"))
}

fn config_from_libusb(c: &rusb::ConfigDescriptor) -> Configuration {
    Configuration {
        value: c.number(),
        settings: c
            .interfaces()
            .flat_map(|i| i.descriptors())
            .map(|d| AltSetting {
                interface: d.interface_number(),
                alt: d.setting_number(),
                class: d.class_code(),
                subclass: d.sub_class_code(),
                protocol: d.protocol_code(),
                endpoints: d
                    .endpoint_descriptors()
                    .map(|e| Endpoint {
                        address: e.address(),
                        transfer_type: e.transfer_type() as u8,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// libusb's speed as USB/IP (Linux's `enum usb_device_speed`) numbers it.
pub fn usbip_speed(s: rusb::Speed) -> u32 {
    match s {
        rusb::Speed::Low => speed::LOW,
        rusb::Speed::Full => speed::FULL,
        rusb::Speed::High => speed::HIGH,
        rusb::Speed::Super => speed::SUPER,
        rusb::Speed::SuperPlus => speed::SUPER_PLUS,
        _ => speed::UNKNOWN,
    }
}

/// Which devices to export: `--device 1-1.3` or `--device 046d:c52b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The device at this bus id, whatever it is.
    BusId(String),
    /// Every device with this vendor and product id, wherever plugged in.
    VidPid(u16, u16),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::BusId(busid) => f.write_str(busid),
            Selector::VidPid(vid, pid) => write!(f, "{vid:04x}:{pid:04x}"),
        }
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((vid, pid)) = s.split_once(':') {
            let hex = |part: &str, what: &str| {
                if part.is_empty() || part.len() > 4 || !part.chars().all(|c| c.is_ascii_hexdigit())
                {
                    Err(format!(
                        "bad {what} id {part:?} in {s:?}: expected VID:PID as two hex \
                         numbers of up to 4 digits, like 046d:c52b"
                    ))
                } else {
                    Ok(u16::from_str_radix(part, 16).expect("checked hex digits"))
                }
            };
            return Ok(Selector::VidPid(hex(vid, "vendor")?, hex(pid, "product")?));
        }
        if s.contains('-') {
            return parse_busid(s).map(|()| Selector::BusId(s.to_owned()));
        }
        Err(format!(
            "{s:?} is neither a bus id (like 1-1.3) nor a vendor:product id (like 046d:c52b)"
        ))
    }
}

/// Checks a bus id: `BUS-PORT[.PORT…]`, numbers from 1 to 255, at most 7
/// ports deep (USB allows no more).
fn parse_busid(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "bad bus id {s:?}: {why}; expected BUS-PORT[.PORT…] like 1-1.3 \
             (see `hrh-exporter list`)"
        ))
    };
    let number = |n: &str| -> bool {
        !n.is_empty()
            && n.len() <= 3
            && n.chars().all(|c| c.is_ascii_digit())
            && matches!(n.parse::<u16>(), Ok(1..=255))
    };
    let Some((bus, ports)) = s.split_once('-') else {
        return bad("no '-'");
    };
    if !number(bus) {
        return bad("the bus must be a number from 1 to 255");
    }
    let ports: Vec<&str> = ports.split('.').collect();
    if ports.len() > 7 {
        return bad("more than 7 ports");
    }
    if !ports.iter().all(|p| number(p)) {
        return bad("ports must be numbers from 1 to 255, separated by '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_lists_devices_with_their_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let device = |name: &str, devnum: Option<&str>| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if let Some(n) = devnum {
                std::fs::write(d.join("devnum"), format!("{n}\n")).unwrap();
            }
        };
        device("usb1", Some("1"));
        device("1-1", Some("4"));
        device("1-1:1.0", None);
        let pair = |b: &str, d: &str| (b.to_owned(), d.to_owned());
        assert_eq!(
            sysfs_fingerprint_in(dir.path()),
            Some(vec![pair("1-1", "4"), pair("usb1", "1")])
        );
        // Half gone: still listed, without an address.
        std::fs::remove_file(dir.path().join("1-1/devnum")).unwrap();
        assert_eq!(
            sysfs_fingerprint_in(dir.path()),
            Some(vec![pair("1-1", ""), pair("usb1", "1")])
        );
        assert_eq!(sysfs_fingerprint_in(&dir.path().join("none")), None);
    }

    #[test]
    fn selectors_parse_bus_ids_and_vendor_product_ids() {
        assert_eq!("1-1".parse(), Ok(Selector::BusId("1-1".into())));
        assert_eq!("3-1.4.2".parse(), Ok(Selector::BusId("3-1.4.2".into())));
        assert_eq!("046d:c52b".parse(), Ok(Selector::VidPid(0x046d, 0xc52b)));
        assert_eq!("1209:1".parse(), Ok(Selector::VidPid(0x1209, 1)));
        assert_eq!("ABCD:EF01".parse(), Ok(Selector::VidPid(0xabcd, 0xef01)));
        for s in ["1-1.3", "046d:c52b", "255-255.1.2.3.4.5.6"] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Selector>().unwrap_err();
        assert!(
            err("046d:c52bx").contains("bad product id"),
            "{}",
            err("046d:c52bx")
        );
        assert!(err("zz:0001").contains("bad vendor id"));
        assert!(err(":0001").contains("like 046d:c52b"));
        assert!(err("12345:1").contains("up to 4 digits"));
        assert!(err("usb1").contains("neither a bus id"));
        assert!(err("").contains("neither a bus id"));
        assert!(err("1-").contains("ports must be numbers"));
        assert!(err("1-0").contains("ports must be numbers"));
        assert!(err("1-1..2").contains("ports must be numbers"));
        assert!(err("1-1.+2").contains("ports must be numbers"));
        assert!(err("0-1").contains("bus must be a number"));
        assert!(err("x-1").contains("bus must be a number"));
        assert!(err("1-256").contains("from 1 to 255"));
        assert!(err("1-1.2.3.4.5.6.7.8").contains("more than 7 ports"));
        assert!(err("1-1 ").contains("bad bus id"));
    }

    #[test]
    fn devices_imported_through_vhci_are_recognised() {
        assert!(is_vhci_path(Path::new(
            "/sys/devices/platform/vhci_hcd.0/usb1"
        )));
        assert!(!is_vhci_path(Path::new(
            "/sys/devices/pci0000:00/0000:00:14.0/usb1"
        )));
        assert!(!is_vhci_path(Path::new("/sys/bus/usb/devices/usb1")));
    }

    #[test]
    fn libusb_speeds_map_to_linux_speeds() {
        assert_eq!(usbip_speed(rusb::Speed::Low), 1);
        assert_eq!(usbip_speed(rusb::Speed::Full), 2);
        assert_eq!(usbip_speed(rusb::Speed::High), 3);
        assert_eq!(usbip_speed(rusb::Speed::Super), 5);
        assert_eq!(usbip_speed(rusb::Speed::SuperPlus), 6);
        assert_eq!(usbip_speed(rusb::Speed::Unknown), 0);
    }

    #[test]
    fn sysfs_configuration_is_read_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw =
            hex_literal::hex!("12 01 00 02 00 00 00 40 09 12 03 00 00 01 01 02 00 02").to_vec();
        raw.extend_from_slice(&hex_literal::hex!(
            "09 02 19 00 01 01 00 80 32  09 04 00 00 01 ff 00 00 00  07 05 81 03 08 00 01"
        ));
        raw.extend_from_slice(&hex_literal::hex!(
            "09 02 19 00 01 02 00 80 32  09 04 00 00 01 0a 00 00 00  07 05 82 02 40 00 00"
        ));
        std::fs::write(dir.path().join("descriptors"), &raw).unwrap();
        std::fs::write(dir.path().join("bConfigurationValue"), "2\n").unwrap();
        let config = sysfs_active_config(dir.path()).unwrap().unwrap();
        assert_eq!(config.value, 2);
        assert_eq!(config.settings[0].class, 0x0a);
        std::fs::write(dir.path().join("bConfigurationValue"), "\n").unwrap();
        assert_eq!(sysfs_active_config(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("bConfigurationValue"), "3\n").unwrap();
        assert!(sysfs_active_config(dir.path()).is_err());
    }
}
