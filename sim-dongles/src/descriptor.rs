//! Builders for the standard USB descriptors the simulated dongles share.

/// Vendor id of every simulated dongle (pid.codes, the open-source vendor id).
pub const VENDOR_ID: u16 = 0x1209;

/// Transfer types in an endpoint's bmAttributes.
#[derive(Debug, Clone, Copy)]
pub enum EndpointType {
    Bulk = 2,
    Interrupt = 3,
}

/// The 18-byte device descriptor of a USB 2.0 high-speed device with one
/// configuration and string indices 1 (manufacturer), 2 (product), 3 (serial).
pub fn device(class: [u8; 3], product_id: u16, bcd_device: u16) -> [u8; 18] {
    let [v0, v1] = VENDOR_ID.to_le_bytes();
    let [p0, p1] = product_id.to_le_bytes();
    let [d0, d1] = bcd_device.to_le_bytes();
    [
        18, 1, 0x00, 0x02, class[0], class[1], class[2], 64, v0, v1, p0, p1, d0, d1, 1, 2, 3, 1,
    ]
}

/// An interface descriptor.
pub fn interface(number: u8, endpoints: u8, class: [u8; 3]) -> Vec<u8> {
    vec![9, 4, number, 0, endpoints, class[0], class[1], class[2], 0]
}

/// An endpoint descriptor.
pub fn endpoint(address: u8, kind: EndpointType, max_packet: u16, interval: u8) -> Vec<u8> {
    let [m0, m1] = max_packet.to_le_bytes();
    vec![7, 5, address, kind as u8, m0, m1, interval]
}

/// A configuration descriptor (value 1, bus powered, 100 mA) wrapping the
/// interface, class and endpoint descriptors in `body`.
pub fn configuration(interfaces: u8, body: &[&[u8]]) -> Vec<u8> {
    let total: usize = 9 + body.iter().map(|b| b.len()).sum::<usize>();
    let [t0, t1] = (total as u16).to_le_bytes();
    let mut out = vec![9, 2, t0, t1, interfaces, 1, 0, 0x80, 50];
    for part in body {
        out.extend_from_slice(part);
    }
    out
}

/// The three strings every simulated dongle has.
pub fn strings(product: &str, serial: &str) -> Vec<(u8, String)> {
    vec![
        (1, "vUSB".to_owned()),
        (2, product.to_owned()),
        (3, serial.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_total_length_covers_every_descriptor() {
        let iface = interface(0, 1, [0xff, 0, 0]);
        let ep = endpoint(0x81, EndpointType::Bulk, 512, 0);
        let c = configuration(1, &[&iface, &ep]);
        assert_eq!(usize::from(u16::from_le_bytes([c[2], c[3]])), c.len());
        assert_eq!(c.len(), 9 + 9 + 7);
    }
}
