//! The byte layouts of `docs/virtio-usb.md`: little-endian, packed. Pure
//! functions from bytes to values and back; nothing here touches guest memory.

use crate::transfer::{IsoPacket, IsoResult, Port, Speed, Status, TransferKind};

/// Virtqueue indices (§3).
pub const REQUEST_QUEUE: u16 = 0;
pub const CONTROL_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;
pub const NUM_QUEUES: usize = 3;

/// Device feature bits (§1.2).
pub const F_ISO: u64 = 1 << 0;
pub const F_USB3: u64 = 1 << 1;

/// The configuration space's magic and the dialect version spoken here (§2).
pub const MAGIC: [u8; 4] = *b"vUSB";
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
pub const CONFIG_LEN: usize = 24;

pub const XFER_REQ_LEN: usize = 40;
pub const XFER_RESP_LEN: usize = 16;
pub const ISO_DESC_LEN: usize = 8;
pub const CTRL_REQ_LEN: usize = 16;
pub const CTRL_RESP_LEN: usize = 8;
pub const EVENT_LEN: usize = 8;

/// `VIRTIO_USB_CTRL_*` (§5).
pub const CTRL_CANCEL: u32 = 1;
pub const CTRL_PORT_RESET: u32 = 2;

/// `VIRTIO_USB_EVT_*` (§6).
pub const EVT_CONNECT: u32 = 1;
pub const EVT_DISCONNECT: u32 = 2;
pub const EVT_RESTARTED: u32 = 3;

/// The configuration space (§2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub usb2_ports: u8,
    pub usb3_ports: u8,
    pub max_requests: u16,
    pub max_transfer: u32,
    pub max_iso_packets: u16,
}

impl Config {
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        b[6..8].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        b[8] = self.usb2_ports;
        b[9] = self.usb3_ports;
        b[10..12].copy_from_slice(&self.max_requests.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_transfer.to_le_bytes());
        b[16..18].copy_from_slice(&self.max_iso_packets.to_le_bytes());
        b
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `struct virtio_usb_xfer_req`, as the driver wrote it (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XferReq {
    pub id: u64,
    pub port: Port,
    pub endpoint: u8,
    /// Raw: may be an unknown type.
    pub kind: u8,
    pub flags: u32,
    pub length: u32,
    pub interval: u32,
    pub start_frame: u32,
    pub num_iso_packets: u32,
    pub setup: [u8; 8],
}

impl XferReq {
    /// A bulk transfer on `endpoint` (bit 7 set for IN) with no flags.
    pub fn bulk(id: u64, port: Port, endpoint: u8, length: u32) -> Self {
        Self {
            id,
            port,
            endpoint,
            kind: TransferKind::Bulk as u8,
            flags: 0,
            length,
            interval: 0,
            start_frame: 0,
            num_iso_packets: 0,
            setup: [0; 8],
        }
    }

    /// The control transfer `setup` describes: its direction and length
    /// come from the setup packet, as the spec requires (§4).
    pub fn control(id: u64, port: Port, setup: [u8; 8]) -> Self {
        Self {
            endpoint: setup[0] & 0x80,
            kind: TransferKind::Control as u8,
            length: u32::from(u16::from_le_bytes([setup[6], setup[7]])),
            setup,
            ..Self::bulk(id, port, 0, 0)
        }
    }

    pub fn parse(b: &[u8; XFER_REQ_LEN]) -> Self {
        Self {
            id: le64(b, 0),
            port: b[8],
            endpoint: b[9],
            kind: b[10],
            flags: le32(b, 12),
            length: le32(b, 16),
            interval: le32(b, 20),
            start_frame: le32(b, 24),
            num_iso_packets: le32(b, 28),
            setup: b[32..40].try_into().expect("8 bytes"),
        }
    }

    pub fn to_bytes(&self) -> [u8; XFER_REQ_LEN] {
        let mut b = [0u8; XFER_REQ_LEN];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8] = self.port;
        b[9] = self.endpoint;
        b[10] = self.kind;
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..20].copy_from_slice(&self.length.to_le_bytes());
        b[20..24].copy_from_slice(&self.interval.to_le_bytes());
        b[24..28].copy_from_slice(&self.start_frame.to_le_bytes());
        b[28..32].copy_from_slice(&self.num_iso_packets.to_le_bytes());
        b[32..40].copy_from_slice(&self.setup);
        b
    }

    pub fn transfer_kind(&self) -> Option<TransferKind> {
        TransferKind::from_wire(self.kind)
    }

    pub fn is_in(&self) -> bool {
        self.endpoint & 0x80 != 0
    }
}

pub fn parse_iso_packet(b: &[u8]) -> IsoPacket {
    IsoPacket {
        offset: le32(b, 0),
        length: le32(b, 4),
    }
}

pub fn iso_packet_bytes(p: &IsoPacket) -> [u8; ISO_DESC_LEN] {
    let mut b = [0u8; ISO_DESC_LEN];
    b[0..4].copy_from_slice(&p.offset.to_le_bytes());
    b[4..8].copy_from_slice(&p.length.to_le_bytes());
    b
}

pub fn iso_result_bytes(r: &IsoResult) -> [u8; ISO_DESC_LEN] {
    let mut b = [0u8; ISO_DESC_LEN];
    b[0..4].copy_from_slice(&r.actual_length.to_le_bytes());
    b[4..8].copy_from_slice(&(r.status as u32).to_le_bytes());
    b
}

/// `struct virtio_usb_xfer_resp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XferResp {
    pub status: u32,
    pub actual_length: u32,
    pub start_frame: u32,
    pub error_count: u32,
}

impl XferResp {
    pub fn failed(status: Status) -> Self {
        Self {
            status: status as u32,
            actual_length: 0,
            start_frame: 0,
            error_count: 0,
        }
    }

    pub fn to_bytes(&self) -> [u8; XFER_RESP_LEN] {
        let mut b = [0u8; XFER_RESP_LEN];
        b[0..4].copy_from_slice(&self.status.to_le_bytes());
        b[4..8].copy_from_slice(&self.actual_length.to_le_bytes());
        b[8..12].copy_from_slice(&self.start_frame.to_le_bytes());
        b[12..16].copy_from_slice(&self.error_count.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> Self {
        Self {
            status: le32(b, 0),
            actual_length: le32(b, 4),
            start_frame: le32(b, 8),
            error_count: le32(b, 12),
        }
    }
}

/// `struct virtio_usb_ctrl_req`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlReq {
    pub code: u32,
    pub port: Port,
    pub id: u64,
}

impl CtrlReq {
    pub fn parse(b: &[u8; CTRL_REQ_LEN]) -> Self {
        Self {
            code: le32(b, 0),
            port: b[4],
            id: le64(b, 8),
        }
    }

    pub fn to_bytes(&self) -> [u8; CTRL_REQ_LEN] {
        let mut b = [0u8; CTRL_REQ_LEN];
        b[0..4].copy_from_slice(&self.code.to_le_bytes());
        b[4] = self.port;
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b
    }
}

/// `struct virtio_usb_ctrl_resp`.
pub fn ctrl_resp_bytes(status: Status, speed: Option<Speed>) -> [u8; CTRL_RESP_LEN] {
    let mut b = [0u8; CTRL_RESP_LEN];
    b[0..4].copy_from_slice(&(status as u32).to_le_bytes());
    b[4] = speed.map_or(0, |s| s as u8);
    b
}

/// The `RESTARTED` event (§7.1): port 0, no speed.
pub fn restarted_event_bytes() -> [u8; EVENT_LEN] {
    let mut b = [0u8; EVENT_LEN];
    b[0..4].copy_from_slice(&EVT_RESTARTED.to_le_bytes());
    b
}

/// `struct virtio_usb_event`.
pub fn event_bytes(event: &crate::transfer::PortEvent) -> [u8; EVENT_LEN] {
    use crate::transfer::PortEvent;
    let (kind, port, speed) = match *event {
        PortEvent::Connected { port, speed } => (EVT_CONNECT, port, speed as u8),
        PortEvent::Disconnected { port } => (EVT_DISCONNECT, port, 0),
    };
    let mut b = [0u8; EVENT_LEN];
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    b[4] = port;
    b[5] = speed;
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::PortEvent;

    #[test]
    fn config_matches_the_spec_table() {
        let c = Config {
            usb2_ports: 2,
            usb3_ports: 2,
            max_requests: 0,
            max_transfer: 1 << 20,
            max_iso_packets: 1024,
        };
        let b = c.to_bytes();
        assert_eq!(&b[..4], b"vUSB");
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[8..10], &[2, 2]);
        assert_eq!(&b[12..16], &[0, 0, 0x10, 0]);
        assert_eq!(&b[16..18], &[0, 4]);
        assert_eq!(&b[18..], &[0; 6]);
    }

    #[test]
    fn xfer_req_round_trips_the_spec_example() {
        // §9: GET_DESCRIPTOR(DEVICE) on port 2.
        let req = XferReq::control(7, 2, [0x80, 6, 0, 1, 0, 0, 0x12, 0]);
        assert_eq!((req.endpoint, req.kind, req.length), (0x80, 0, 18));
        let b = req.to_bytes();
        assert_eq!(&b[..12], &[7, 0, 0, 0, 0, 0, 0, 0, 2, 0x80, 0, 0]);
        assert_eq!(&b[16..20], &[18, 0, 0, 0]);
        assert_eq!(XferReq::parse(&b), req);
    }

    #[test]
    fn responses_and_events_are_little_endian() {
        let r = XferResp {
            status: 1,
            actual_length: 0x0102,
            start_frame: 3,
            error_count: 4,
        };
        assert_eq!(
            r.to_bytes(),
            [1, 0, 0, 0, 2, 1, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]
        );
        assert_eq!(XferResp::parse(&r.to_bytes()), r);
        let e = event_bytes(&PortEvent::Connected {
            port: 3,
            speed: Speed::High,
        });
        assert_eq!(e, [1, 0, 0, 0, 3, 3, 0, 0]);
        assert_eq!(
            ctrl_resp_bytes(Status::NotFound, None),
            [11, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
