//! The 8-byte USB control setup packet.
//!
//! USB/IP carries it verbatim inside CMD_SUBMIT, so unlike every other field
//! of the protocol it is little-endian on the wire.

/// A USB control request's setup stage (USB 2.0 §9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetupPacket {
    /// bmRequestType: direction (bit 7), type (bits 6..5), recipient (bits 4..0).
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: the data stage's length.
    pub length: u16,
}

/// bRequest values of the standard requests (USB 2.0 table 9-4).
pub mod request {
    pub const GET_STATUS: u8 = 0x00;
    pub const CLEAR_FEATURE: u8 = 0x01;
    pub const SET_FEATURE: u8 = 0x03;
    pub const SET_ADDRESS: u8 = 0x05;
    pub const GET_DESCRIPTOR: u8 = 0x06;
    pub const SET_DESCRIPTOR: u8 = 0x07;
    pub const GET_CONFIGURATION: u8 = 0x08;
    pub const SET_CONFIGURATION: u8 = 0x09;
    pub const GET_INTERFACE: u8 = 0x0a;
    pub const SET_INTERFACE: u8 = 0x0b;
}

/// The type bits of bmRequestType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    Standard,
    Class,
    Vendor,
    Reserved,
}

/// The recipient bits of bmRequestType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    Device,
    Interface,
    Endpoint,
    Other,
    Reserved(u8),
}

/// Feature selectors (USB 2.0 table 9-6; hub class 11.24.2).
pub mod feature {
    pub const ENDPOINT_HALT: u16 = 0;
    pub const DEVICE_REMOTE_WAKEUP: u16 = 1;
    /// Hub port feature used by a port reset (recipient "other").
    pub const PORT_RESET: u16 = 4;
}

impl SetupPacket {
    /// Size on the wire.
    pub const LEN: usize = 8;

    /// Parses the wire form (little-endian).
    pub fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// The wire form (little-endian).
    pub fn to_bytes(&self) -> [u8; 8] {
        let v = self.value.to_le_bytes();
        let i = self.index.to_le_bytes();
        let l = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            v[0],
            v[1],
            i[0],
            i[1],
            l[0],
            l[1],
        ]
    }

    /// True for a device-to-host request (an IN data stage).
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }

    pub fn request_kind(&self) -> RequestType {
        match (self.request_type >> 5) & 3 {
            0 => RequestType::Standard,
            1 => RequestType::Class,
            2 => RequestType::Vendor,
            _ => RequestType::Reserved,
        }
    }

    pub fn recipient(&self) -> Recipient {
        match self.request_type & 0x1f {
            0 => Recipient::Device,
            1 => Recipient::Interface,
            2 => Recipient::Endpoint,
            3 => Recipient::Other,
            r => Recipient::Reserved(r),
        }
    }

    /// True for a standard request with this bRequest.
    pub fn is_standard(&self, request: u8) -> bool {
        self.request_kind() == RequestType::Standard && self.request == request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_device_descriptor_round_trips() {
        // GET_DESCRIPTOR(DEVICE), 18 bytes, as usb_get_device_descriptor() sends it.
        let wire = [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00];
        let s = SetupPacket::from_bytes(wire);
        assert_eq!(s.value, 0x0100);
        assert_eq!(s.length, 18);
        assert!(s.is_in());
        assert!(s.is_standard(request::GET_DESCRIPTOR));
        assert_eq!(s.recipient(), Recipient::Device);
        assert_eq!(s.to_bytes(), wire);
    }
}
