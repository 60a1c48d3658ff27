//! Management ("op") messages: device list and import.
//!
//! Layouts from `tools/usb/usbip/src/usbip_network.h`: an 8-byte
//! `op_common` header (version, code, status), then a body that depends on
//! the code. A server answers a failed import with the header alone.

use bytes::{Buf, BufMut, BytesMut};

use crate::wire::{put_text_field, text_field, Reader};
use crate::{limits, ProtoError, USBIP_VERSION};

/// Size of `struct op_common`.
const OP_HEADER_LEN: usize = 8;
/// Size of the `path` field of `struct usbip_usb_device`.
pub const PATH_SIZE: usize = 256;
/// Size of the `busid` field (`SYSFS_BUS_ID_SIZE`).
pub const BUSID_SIZE: usize = 32;
/// Size of `struct usbip_usb_device` on the wire.
pub const DEVICE_INFO_LEN: usize = PATH_SIZE + BUSID_SIZE + 12 + 12;
/// Size of `struct usbip_usb_interface` on the wire.
const INTERFACE_INFO_LEN: usize = 4;

/// Op codes (`OP_REQUEST | OP_x` and `OP_REPLY | OP_x`).
pub mod op_code {
    pub const REQ_DEVLIST: u16 = 0x8005;
    pub const REP_DEVLIST: u16 = 0x0005;
    pub const REQ_IMPORT: u16 = 0x8003;
    pub const REP_IMPORT: u16 = 0x0003;
}

/// Status values of `op_common.status` (`ST_*` in usbip_common.h of the tools).
pub mod op_status {
    pub const OK: u32 = 0;
    /// The device is not available (e.g. already imported).
    pub const NA: u32 = 1;
    /// The device is busy (exported already).
    pub const DEV_BUSY: u32 = 2;
    /// The device is in an error state.
    pub const DEV_ERR: u32 = 3;
    /// No device with that bus id.
    pub const NODEV: u32 = 4;
    /// Any other error.
    pub const ERROR: u32 = 5;
}

/// One exported device, as `struct usbip_usb_device` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// The sysfs path on the server (informational).
    pub path: String,
    /// The bus id clients name the device by, e.g. `1-1.3`.
    pub busid: String,
    pub busnum: u32,
    pub devnum: u32,
    /// One of [`crate::speed`].
    pub speed: u32,
    pub id_vendor: u16,
    pub id_product: u16,
    pub bcd_device: u16,
    pub device_class: u8,
    pub device_subclass: u8,
    pub device_protocol: u8,
    pub configuration_value: u8,
    pub num_configurations: u8,
    pub num_interfaces: u8,
}

/// One interface of an exported device, as `struct usbip_usb_interface`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceInfo {
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
}

/// A request from client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRequest {
    /// `OP_REQ_DEVLIST`: list the exportable devices.
    DevList,
    /// `OP_REQ_IMPORT`: attach the device with this bus id.
    Import { busid: String },
}

/// A reply from server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpReply {
    /// `OP_REP_DEVLIST`: the devices with their interfaces.
    DevList {
        status: u32,
        devices: Vec<(DeviceInfo, Vec<InterfaceInfo>)>,
    },
    /// `OP_REP_IMPORT`: on success (`status == 0`) the device; otherwise
    /// nothing follows the header.
    Import {
        status: u32,
        device: Option<DeviceInfo>,
    },
}

fn put_header(dst: &mut impl BufMut, code: u16, status: u32) {
    dst.put_u16(USBIP_VERSION);
    dst.put_u16(code);
    dst.put_u32(status);
}

/// Reads and checks `op_common`, without consuming.
fn peek_header(src: &[u8]) -> Result<Option<(u16, u32)>, ProtoError> {
    if src.len() < OP_HEADER_LEN {
        return Ok(None);
    }
    let mut r = Reader::new(src);
    let version = r.u16();
    let code = r.u16();
    let status = r.u32();
    if version != USBIP_VERSION {
        return Err(ProtoError::Version(version));
    }
    Ok(Some((code, status)))
}

impl OpRequest {
    /// Decodes one request from the front of `src`, consuming it.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Self>, ProtoError> {
        let Some((code, _status)) = peek_header(src)? else {
            return Ok(None);
        };
        match code {
            op_code::REQ_DEVLIST => {
                src.advance(OP_HEADER_LEN);
                Ok(Some(OpRequest::DevList))
            }
            op_code::REQ_IMPORT => {
                if src.len() < OP_HEADER_LEN + BUSID_SIZE {
                    return Ok(None);
                }
                let busid = text_field(&src[OP_HEADER_LEN..][..BUSID_SIZE], "busid")?;
                src.advance(OP_HEADER_LEN + BUSID_SIZE);
                Ok(Some(OpRequest::Import { busid }))
            }
            other => Err(ProtoError::UnknownOpCode(other)),
        }
    }

    /// Appends the wire form to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<(), ProtoError> {
        match self {
            OpRequest::DevList => put_header(dst, op_code::REQ_DEVLIST, 0),
            OpRequest::Import { busid } => {
                check_text(busid, BUSID_SIZE, "busid")?;
                put_header(dst, op_code::REQ_IMPORT, 0);
                put_text_field(dst, busid, BUSID_SIZE, "busid")?;
            }
        }
        Ok(())
    }
}

fn check_text(text: &str, size: usize, field: &'static str) -> Result<(), ProtoError> {
    if text.len() >= size || text.as_bytes().contains(&0) {
        return Err(ProtoError::TooLong {
            field,
            len: text.len(),
            max: size - 1,
        });
    }
    Ok(())
}

impl DeviceInfo {
    fn check(&self) -> Result<(), ProtoError> {
        check_text(&self.path, PATH_SIZE, "path")?;
        check_text(&self.busid, BUSID_SIZE, "busid")
    }

    fn encode(&self, dst: &mut impl BufMut) -> Result<(), ProtoError> {
        put_text_field(dst, &self.path, PATH_SIZE, "path")?;
        put_text_field(dst, &self.busid, BUSID_SIZE, "busid")?;
        dst.put_u32(self.busnum);
        dst.put_u32(self.devnum);
        dst.put_u32(self.speed);
        dst.put_u16(self.id_vendor);
        dst.put_u16(self.id_product);
        dst.put_u16(self.bcd_device);
        dst.put_u8(self.device_class);
        dst.put_u8(self.device_subclass);
        dst.put_u8(self.device_protocol);
        dst.put_u8(self.configuration_value);
        dst.put_u8(self.num_configurations);
        dst.put_u8(self.num_interfaces);
        Ok(())
    }

    /// Parses exactly [`DEVICE_INFO_LEN`] bytes.
    fn parse(raw: &[u8]) -> Result<Self, ProtoError> {
        let path = text_field(&raw[..PATH_SIZE], "path")?;
        let busid = text_field(&raw[PATH_SIZE..PATH_SIZE + BUSID_SIZE], "busid")?;
        let mut r = Reader::new(&raw[PATH_SIZE + BUSID_SIZE..]);
        Ok(DeviceInfo {
            path,
            busid,
            busnum: r.u32(),
            devnum: r.u32(),
            speed: r.u32(),
            id_vendor: r.u16(),
            id_product: r.u16(),
            bcd_device: r.u16(),
            device_class: r.u8(),
            device_subclass: r.u8(),
            device_protocol: r.u8(),
            configuration_value: r.u8(),
            num_configurations: r.u8(),
            num_interfaces: r.u8(),
        })
    }
}

impl OpReply {
    /// Appends the wire form to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<(), ProtoError> {
        match self {
            OpReply::DevList { status, devices } => {
                // A failed list is the header alone (see decode), so it
                // cannot carry devices.
                if *status != op_status::OK {
                    if !devices.is_empty() {
                        return Err(ProtoError::Inconsistent(
                            "a failed device list carries devices",
                        ));
                    }
                    put_header(dst, op_code::REP_DEVLIST, *status);
                    return Ok(());
                }
                if devices.len() > limits::MAX_DEVICES as usize {
                    return Err(ProtoError::DeviceCount(devices.len() as u32));
                }
                for (dev, ifaces) in devices {
                    dev.check()?;
                    if ifaces.len() != usize::from(dev.num_interfaces) {
                        return Err(ProtoError::Inconsistent(
                            "interface list length differs from num_interfaces",
                        ));
                    }
                }
                put_header(dst, op_code::REP_DEVLIST, *status);
                dst.put_u32(devices.len() as u32);
                for (dev, ifaces) in devices {
                    dev.encode(dst)?;
                    for i in ifaces {
                        dst.put_slice(&[i.class, i.subclass, i.protocol, 0]);
                    }
                }
            }
            OpReply::Import { status, device } => {
                // The device follows exactly when the status is OK; anything
                // else would leave the client waiting for, or misreading, the
                // 312-byte record.
                match (*status == op_status::OK, device) {
                    (true, Some(dev)) => {
                        dev.check()?;
                        put_header(dst, op_code::REP_IMPORT, *status);
                        dev.encode(dst)?;
                    }
                    (false, None) => put_header(dst, op_code::REP_IMPORT, *status),
                    (true, None) => {
                        return Err(ProtoError::Inconsistent(
                            "a successful import reply lacks the device",
                        ))
                    }
                    (false, Some(_)) => {
                        return Err(ProtoError::Inconsistent(
                            "a failed import reply carries a device",
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes the reply to a request with code `request` (a client knows
    /// what it asked), consuming it from `src`.
    pub fn decode(src: &mut BytesMut, request: u16) -> Result<Option<Self>, ProtoError> {
        let Some((code, status)) = peek_header(src)? else {
            return Ok(None);
        };
        let expected = match request {
            op_code::REQ_DEVLIST => op_code::REP_DEVLIST,
            op_code::REQ_IMPORT => op_code::REP_IMPORT,
            other => return Err(ProtoError::UnknownOpCode(other)),
        };
        if code != expected {
            return Err(ProtoError::UnexpectedOpCode {
                expected,
                found: code,
            });
        }
        let body = &src[OP_HEADER_LEN..];
        if code == op_code::REP_IMPORT {
            if status != op_status::OK {
                src.advance(OP_HEADER_LEN);
                return Ok(Some(OpReply::Import {
                    status,
                    device: None,
                }));
            }
            if body.len() < DEVICE_INFO_LEN {
                return Ok(None);
            }
            let device = DeviceInfo::parse(&body[..DEVICE_INFO_LEN])?;
            src.advance(OP_HEADER_LEN + DEVICE_INFO_LEN);
            return Ok(Some(OpReply::Import {
                status,
                device: Some(device),
            }));
        }
        // A failed device list is the header alone: Linux's usbip client
        // stops reading at a non-OK status (usbip_net_recv_op_common()), so
        // a server has nothing to gain by sending more, and usbipd itself
        // always answers OK.
        if status != op_status::OK {
            src.advance(OP_HEADER_LEN);
            return Ok(Some(OpReply::DevList {
                status,
                devices: Vec::new(),
            }));
        }
        if body.len() < 4 {
            return Ok(None);
        }
        let count = Reader::new(body).u32();
        if count > limits::MAX_DEVICES {
            return Err(ProtoError::DeviceCount(count));
        }
        // Find the end first, without allocating: a list arriving in small
        // pieces is re-examined on every call, and must not be parsed (nor
        // its strings allocated) each time.
        let mut end = 4;
        for _ in 0..count {
            if body.len() < end + DEVICE_INFO_LEN {
                return Ok(None);
            }
            let n = usize::from(body[end + DEVICE_INFO_LEN - 1]);
            end += DEVICE_INFO_LEN + n * INTERFACE_INFO_LEN;
        }
        if body.len() < end {
            return Ok(None);
        }
        let mut pos = 4;
        let mut devices = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let dev = DeviceInfo::parse(&body[pos..pos + DEVICE_INFO_LEN])?;
            pos += DEVICE_INFO_LEN;
            let n = usize::from(dev.num_interfaces);
            let ifaces = body[pos..pos + n * INTERFACE_INFO_LEN]
                .chunks_exact(INTERFACE_INFO_LEN)
                .map(|c| InterfaceInfo {
                    class: c[0],
                    subclass: c[1],
                    protocol: c[2],
                })
                .collect();
            pos += n * INTERFACE_INFO_LEN;
            devices.push((dev, ifaces));
        }
        src.advance(OP_HEADER_LEN + pos);
        Ok(Some(OpReply::DevList { status, devices }))
    }
}
