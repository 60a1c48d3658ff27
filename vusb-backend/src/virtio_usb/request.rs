//! Turning a `requestq` chain into a [`Transfer`], checking everything the
//! spec requires (§4, §4.2) before anything is allocated or sent.

use bytes::Bytes;
use vm_memory::GuestMemory;

use super::chain::Chain;
use super::wire::{self, XferReq, ISO_DESC_LEN, XFER_REQ_LEN, XFER_RESP_LEN};
use crate::transfer::{xfer_flags, PortLayout, Transfer, TransferKind};

/// What the device accepts, as announced in its configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_transfer: u32,
    pub max_iso_packets: u32,
    /// `VIRTIO_USB_F_ISO` was negotiated.
    pub iso: bool,
}

/// Where a transfer's parts lie in its chain's writable stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritableLayout {
    /// IN data, from offset 0.
    pub data_len: u32,
    pub iso_results_at: u64,
    pub response_at: u64,
}

impl WritableLayout {
    fn new(is_in: bool, length: u32, iso_packets: u64) -> Self {
        let data_len = if is_in { length } else { 0 };
        let iso_results_at = u64::from(data_len);
        Self {
            data_len,
            iso_results_at,
            response_at: iso_results_at + iso_packets * ISO_DESC_LEN as u64,
        }
    }

    pub fn of(req: &XferReq) -> Self {
        Self::new(req.is_in(), req.length, req.num_iso_packets.into())
    }

    pub fn of_transfer(t: &Transfer) -> Self {
        Self::new(t.is_in(), t.length, t.iso_packets.len() as u64)
    }

    pub fn total(&self) -> u64 {
        self.response_at + XFER_RESP_LEN as u64
    }
}

/// Parses and validates the transfer in `chain`; `Err` explains what is
/// wrong for the log.
pub fn parse(
    chain: &Chain,
    mem: &(impl GuestMemory + ?Sized),
    ports: &PortLayout,
    limits: &Limits,
) -> Result<Transfer, String> {
    let readable = chain.readable_len();
    if readable < XFER_REQ_LEN as u64 {
        return Err(format!(
            "request header is {readable} bytes, not {XFER_REQ_LEN}"
        ));
    }
    let mut header = [0u8; XFER_REQ_LEN];
    chain.read(mem, 0, &mut header).map_err(|e| e.to_string())?;
    let req = XferReq::parse(&header);
    check_header(&req, ports, limits)?;

    let iso_len = u64::from(req.num_iso_packets) * ISO_DESC_LEN as u64;
    let out_len = if req.is_in() {
        0
    } else {
        u64::from(req.length)
    };
    let want_readable = XFER_REQ_LEN as u64 + iso_len + out_len;
    if readable != want_readable {
        return Err(format!(
            "device-readable part is {readable} bytes, the request needs {want_readable}"
        ));
    }
    let want_writable = WritableLayout::of(&req).total();
    let writable = chain.writable_len();
    if writable != want_writable {
        return Err(format!(
            "device-writable part is {writable} bytes, the request needs {want_writable}"
        ));
    }

    let mut iso_bytes = vec![0u8; iso_len as usize];
    chain
        .read(mem, XFER_REQ_LEN as u64, &mut iso_bytes)
        .map_err(|e| e.to_string())?;
    let iso_packets: Vec<_> = iso_bytes
        .chunks_exact(ISO_DESC_LEN)
        .map(wire::parse_iso_packet)
        .collect();
    for (i, p) in iso_packets.iter().enumerate() {
        let end = u64::from(p.offset) + u64::from(p.length);
        if end > u64::from(req.length) {
            return Err(format!(
                "isochronous packet {i} ({}+{}) lies outside the {}-byte buffer",
                p.offset, p.length, req.length
            ));
        }
    }

    let mut out = vec![0u8; out_len as usize];
    chain
        .read(mem, XFER_REQ_LEN as u64 + iso_len, &mut out)
        .map_err(|e| e.to_string())?;

    Ok(Transfer {
        id: req.id,
        port: req.port,
        endpoint: req.endpoint,
        kind: req.transfer_kind().expect("checked"),
        flags: req.flags,
        length: req.length,
        interval: req.interval,
        start_frame: req.start_frame,
        setup: req.setup,
        iso_packets,
        out_data: Bytes::from(out),
    })
}

fn check_header(req: &XferReq, ports: &PortLayout, limits: &Limits) -> Result<(), String> {
    let kind = req
        .transfer_kind()
        .ok_or_else(|| format!("unknown transfer type {}", req.kind))?;
    if !ports.exists(req.port) {
        return Err(format!("port {} does not exist", req.port));
    }
    if req.endpoint & 0x70 != 0 {
        return Err(format!("bad endpoint address {:#04x}", req.endpoint));
    }
    if req.flags & !xfer_flags::ALL != 0 {
        return Err(format!("unknown flags {:#x}", req.flags));
    }
    if req.length > limits.max_transfer {
        return Err(format!(
            "length {} exceeds max_transfer {}",
            req.length, limits.max_transfer
        ));
    }
    let number = req.endpoint & 0x0f;
    match kind {
        TransferKind::Control => {
            if number != 0 {
                return Err(format!("control transfer to endpoint {number}"));
            }
            let w_length = u16::from_le_bytes([req.setup[6], req.setup[7]]);
            if u32::from(w_length) != req.length {
                return Err(format!(
                    "control length {} differs from wLength {w_length}",
                    req.length
                ));
            }
            let setup_in = req.setup[0] & 0x80 != 0;
            if w_length > 0 && setup_in != req.is_in() {
                return Err("control direction differs from bmRequestType".into());
            }
        }
        _ if number == 0 => {
            return Err(format!("{kind:?} transfer to endpoint 0"));
        }
        _ => {}
    }
    if kind == TransferKind::Isochronous {
        if !limits.iso {
            return Err("isochronous transfer without VIRTIO_USB_F_ISO".into());
        }
        if req.num_iso_packets == 0 || req.num_iso_packets > limits.max_iso_packets {
            return Err(format!(
                "{} isochronous packets (1..={} allowed)",
                req.num_iso_packets, limits.max_iso_packets
            ));
        }
    } else if req.num_iso_packets != 0 {
        return Err(format!(
            "{} isochronous packets on a {kind:?} transfer",
            req.num_iso_packets
        ));
    }
    Ok(())
}
