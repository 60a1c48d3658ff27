//! A USB device as sysfs describes it, in the form USB/IP's device list takes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use usbip_proto::{speed, DeviceInfo, InterfaceInfo};

const DEVICES: &str = "/sys/bus/usb/devices";

/// The device with bus id `busid` (`3-1`), with its interfaces.
pub fn describe(busid: &str) -> Result<(DeviceInfo, Vec<InterfaceInfo>)> {
    if busid.is_empty() || busid.contains('/') || busid.contains(':') {
        bail!("{busid:?} is not a USB bus id");
    }
    let dir = Path::new(DEVICES).join(busid);
    let read = |name: &str| -> Result<String> {
        let path = dir.join(name);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    };
    let dec = |name: &str| -> Result<u32> {
        read(name)?
            .parse()
            .with_context(|| format!("{busid}/{name} is not a number"))
    };
    let hex = |name: &str| -> Result<u32> {
        u32::from_str_radix(&read(name)?, 16)
            .with_context(|| format!("{busid}/{name} is not a hexadecimal number"))
    };
    let info = DeviceInfo {
        path: dir
            .canonicalize()
            .unwrap_or(dir.clone())
            .display()
            .to_string(),
        busid: busid.to_owned(),
        busnum: dec("busnum")?,
        devnum: dec("devnum")?,
        speed: speed_code(&read("speed")?),
        id_vendor: hex("idVendor")? as u16,
        id_product: hex("idProduct")? as u16,
        bcd_device: hex("bcdDevice")? as u16,
        device_class: hex("bDeviceClass")? as u8,
        device_subclass: hex("bDeviceSubClass")? as u8,
        device_protocol: hex("bDeviceProtocol")? as u8,
        // Empty while unconfigured.
        configuration_value: read("bConfigurationValue")?.parse().unwrap_or(0),
        num_configurations: dec("bNumConfigurations")? as u8,
        num_interfaces: read("bNumInterfaces")?.trim().parse().unwrap_or(0),
    };
    let mut interfaces = Vec::new();
    for number in 0..info.num_interfaces {
        let dir = interface_dir(busid, info.configuration_value, number);
        let byte = |name: &str| -> Result<u8> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            u8::from_str_radix(text.trim(), 16)
                .with_context(|| format!("{} is not a hexadecimal byte", path.display()))
        };
        interfaces.push(InterfaceInfo {
            class: byte("bInterfaceClass")?,
            subclass: byte("bInterfaceSubClass")?,
            protocol: byte("bInterfaceProtocol")?,
        });
    }
    Ok((info, interfaces))
}

fn interface_dir(busid: &str, configuration: u8, number: u8) -> PathBuf {
    Path::new(DEVICES).join(format!("{busid}:{configuration}.{number}"))
}

/// sysfs's speed (Mbit/s) as USB/IP's code.
fn speed_code(mbits: &str) -> u32 {
    match mbits {
        "1.5" => speed::LOW,
        "12" => speed::FULL,
        "480" => speed::HIGH,
        "5000" => speed::SUPER,
        "10000" | "20000" => speed::SUPER_PLUS,
        _ => speed::UNKNOWN,
    }
}

/// The transfer type (usbfs's URB type) of each endpoint of the device's interfaces in
/// `configuration`, by endpoint address; isochronous endpoints are left out.
pub fn endpoint_types(busid: &str, configuration: u8) -> Result<HashMap<u8, u8>> {
    let mut types = HashMap::new();
    let prefix = format!("{busid}:{configuration}.");
    for entry in std::fs::read_dir(DEVICES).context("reading the USB devices in sysfs")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for ep in std::fs::read_dir(entry.path())? {
            let ep = ep?;
            let name = ep.file_name().to_string_lossy().into_owned();
            let Some(address) = name.strip_prefix("ep_") else {
                continue;
            };
            let Ok(address) = u8::from_str_radix(address, 16) else {
                continue;
            };
            let kind = std::fs::read_to_string(ep.path().join("type")).unwrap_or_default();
            let kind = match kind.trim() {
                "Bulk" => usbfs::TYPE_BULK,
                "Interrupt" => usbfs::TYPE_INTERRUPT,
                _ => continue,
            };
            types.insert(address, kind);
        }
    }
    Ok(types)
}

/// The usbfs node of a device.
pub fn usbfs_path(info: &DeviceInfo) -> PathBuf {
    PathBuf::from(format!(
        "/dev/bus/usb/{:03}/{:03}",
        info.busnum, info.devnum
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds() {
        assert_eq!(speed_code("480"), speed::HIGH);
        assert_eq!(speed_code("1.5"), speed::LOW);
        assert_eq!(speed_code("7"), speed::UNKNOWN);
    }

    #[test]
    fn bus_ids_that_would_leave_the_devices_folder_are_refused() {
        for bad in ["", "../x", "1-1:1.0"] {
            assert!(describe(bad).is_err(), "{bad}");
        }
    }
}
