//! Control packets (types 0-27): their type-specific headers, and the two
//! that carry data, hello (capability words) and filter_filter (a string).

use bytes::BufMut;

use crate::packet_type as t;
use crate::wire::{check_text, nul_terminated, put_padded, Reader};
use crate::{limits, Body, Cap, Caps, ProtoError, ENDPOINT_DIR_IN};

/// Size of hello's `version` field.
pub const VERSION_LEN: usize = 64;
/// Entries in interface_info's arrays; `interface_count` is at most this.
pub const MAX_INTERFACES: usize = 32;
/// Entries in ep_info's arrays: OUT endpoints 0-15, then IN endpoints 0-15.
pub const MAX_ENDPOINTS: usize = 32;

/// The first packet each side sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// Free-form, for logs only; QEMU sends `qemu usb-redir guest <version>`.
    /// At most 63 bytes: it travels NUL-terminated in 64.
    pub version: String,
    /// The capability words as sent; every capability defined so far is in
    /// the first. A peer may send more words (a later protocol version) or
    /// none (before 0.3.2).
    pub cap_words: Vec<u32>,
}

impl Hello {
    /// A hello announcing `caps` in one word, as usbredirparser sends it.
    pub fn new(version: impl Into<String>, caps: Caps) -> Self {
        Self {
            version: version.into(),
            cap_words: vec![caps.bits()],
        }
    }

    /// The capabilities announced (those of the first word).
    pub fn caps(&self) -> Caps {
        Caps::from_bits(self.cap_words.first().copied().unwrap_or(0))
    }
}

/// `usb_redir_device_connect_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceConnect {
    /// One of [`crate::speed`].
    pub speed: u8,
    pub device_class: u8,
    pub device_subclass: u8,
    pub device_protocol: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    /// bcdDevice; on the wire exactly when [`Cap::ConnectDeviceVersion`] is
    /// negotiated (QEMU then needs it to apply a device filter).
    pub device_version_bcd: Option<u16>,
}

/// `usb_redir_interface_info_header`: entries past `interface_count` are
/// unused but travel anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceInfo {
    pub interface_count: u32,
    /// bInterfaceNumber of each interface.
    pub interface: [u8; MAX_INTERFACES],
    pub interface_class: [u8; MAX_INTERFACES],
    pub interface_subclass: [u8; MAX_INTERFACES],
    pub interface_protocol: [u8; MAX_INTERFACES],
}

/// `usb_redir_ep_info_header`, indexed by [`crate::ep_index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpInfo {
    /// `type`: one of [`crate::ep_type`].
    pub ep_type: [u8; MAX_ENDPOINTS],
    pub interval: [u8; MAX_ENDPOINTS],
    /// bInterfaceNumber the endpoint belongs to.
    pub interface: [u8; MAX_ENDPOINTS],
    /// In bytes (not wMaxPacketSize's encoding); on the wire when
    /// [`Cap::EpInfoMaxPacketSize`] or [`Cap::BulkStreams`] is negotiated.
    pub max_packet_size: Option<[u16; MAX_ENDPOINTS]>,
    /// On the wire when [`Cap::BulkStreams`] is negotiated.
    pub max_streams: Option<[u32; MAX_ENDPOINTS]>,
}

fn has_max_packet_size(caps: Caps) -> bool {
    // usbredirparser sizes ep_info by bulk streams first, and the full header
    // has both fields.
    caps.has(Cap::BulkStreams) || caps.has(Cap::EpInfoMaxPacketSize)
}

pub(crate) fn ep_info_len(caps: Caps) -> usize {
    let mut len = 3 * MAX_ENDPOINTS;
    if has_max_packet_size(caps) {
        len += 2 * MAX_ENDPOINTS;
    }
    if caps.has(Cap::BulkStreams) {
        len += 4 * MAX_ENDPOINTS;
    }
    len
}

/// The checks usbredirparser makes on a control packet's fields
/// (`usbredirparser_verify_type_header()`), for decoding and encoding alike.
fn check_fields(body: &Body) -> Result<(), ProtoError> {
    let in_only = |packet_type: u32, endpoint: u8| {
        if endpoint & ENDPOINT_DIR_IN == 0 {
            return Err(ProtoError::NotInEndpoint {
                packet_type,
                endpoint,
            });
        }
        Ok(())
    };
    match *body {
        Body::InterfaceInfo(ref i) if i.interface_count > MAX_INTERFACES as u32 => {
            Err(ProtoError::InterfaceCount(i.interface_count))
        }
        Body::StartInterruptReceiving { endpoint }
        | Body::StopInterruptReceiving { endpoint }
        | Body::InterruptReceivingStatus { endpoint, .. }
        | Body::StopBulkReceiving { endpoint, .. }
        | Body::BulkReceivingStatus { endpoint, .. } => in_only(body.packet_type(), endpoint),
        Body::StartBulkReceiving {
            bytes_per_transfer,
            endpoint,
            ..
        } => {
            if bytes_per_transfer > limits::MAX_BULK_TRANSFER_LEN {
                return Err(ProtoError::TransferLength {
                    length: bytes_per_transfer,
                    max: limits::MAX_BULK_TRANSFER_LEN,
                });
            }
            in_only(t::START_BULK_RECEIVING, endpoint)
        }
        _ => Ok(()),
    }
}

/// Decodes the type-specific header `raw` (whose length `layout()` gave),
/// followed by `data_len` bytes not read yet. Hello and filter_filter come
/// back without their data.
pub(crate) fn decode(
    packet_type: u32,
    raw: &[u8],
    data_len: usize,
    caps: Caps,
) -> Result<Body, ProtoError> {
    let mut r = Reader::new(raw);
    let body = match packet_type {
        t::HELLO => {
            let version = nul_terminated(&r.bytes::<VERSION_LEN>(), "version")?;
            if !data_len.is_multiple_of(4) {
                return Err(ProtoError::CapsLength(data_len));
            }
            Body::Hello(Hello {
                version,
                cap_words: Vec::new(),
            })
        }
        t::DEVICE_CONNECT => Body::DeviceConnect(DeviceConnect {
            speed: r.u8(),
            device_class: r.u8(),
            device_subclass: r.u8(),
            device_protocol: r.u8(),
            vendor_id: r.u16(),
            product_id: r.u16(),
            device_version_bcd: caps.has(Cap::ConnectDeviceVersion).then(|| r.u16()),
        }),
        t::DEVICE_DISCONNECT => Body::DeviceDisconnect,
        t::RESET => Body::Reset,
        t::INTERFACE_INFO => Body::InterfaceInfo(InterfaceInfo {
            interface_count: r.u32(),
            interface: r.bytes(),
            interface_class: r.bytes(),
            interface_subclass: r.bytes(),
            interface_protocol: r.bytes(),
        }),
        t::EP_INFO => Body::EpInfo(Box::new(EpInfo {
            ep_type: r.bytes(),
            interval: r.bytes(),
            interface: r.bytes(),
            max_packet_size: has_max_packet_size(caps).then(|| r.u16s()),
            max_streams: caps.has(Cap::BulkStreams).then(|| r.u32s()),
        })),
        t::SET_CONFIGURATION => Body::SetConfiguration {
            configuration: r.u8(),
        },
        t::GET_CONFIGURATION => Body::GetConfiguration,
        t::CONFIGURATION_STATUS => Body::ConfigurationStatus {
            status: r.u8(),
            configuration: r.u8(),
        },
        t::SET_ALT_SETTING => Body::SetAltSetting {
            interface: r.u8(),
            alt: r.u8(),
        },
        t::GET_ALT_SETTING => Body::GetAltSetting { interface: r.u8() },
        t::ALT_SETTING_STATUS => Body::AltSettingStatus {
            status: r.u8(),
            interface: r.u8(),
            alt: r.u8(),
        },
        t::START_ISO_STREAM => Body::StartIsoStream {
            endpoint: r.u8(),
            pkts_per_urb: r.u8(),
            no_urbs: r.u8(),
        },
        t::STOP_ISO_STREAM => Body::StopIsoStream { endpoint: r.u8() },
        t::ISO_STREAM_STATUS => Body::IsoStreamStatus {
            status: r.u8(),
            endpoint: r.u8(),
        },
        t::START_INTERRUPT_RECEIVING => Body::StartInterruptReceiving { endpoint: r.u8() },
        t::STOP_INTERRUPT_RECEIVING => Body::StopInterruptReceiving { endpoint: r.u8() },
        t::INTERRUPT_RECEIVING_STATUS => Body::InterruptReceivingStatus {
            status: r.u8(),
            endpoint: r.u8(),
        },
        t::ALLOC_BULK_STREAMS => Body::AllocBulkStreams {
            endpoints: r.u32(),
            no_streams: r.u32(),
        },
        t::FREE_BULK_STREAMS => Body::FreeBulkStreams { endpoints: r.u32() },
        t::BULK_STREAMS_STATUS => Body::BulkStreamsStatus {
            endpoints: r.u32(),
            no_streams: r.u32(),
            status: r.u8(),
        },
        t::CANCEL_DATA_PACKET => Body::CancelDataPacket,
        t::FILTER_REJECT => Body::FilterReject,
        t::FILTER_FILTER => {
            // At least the terminating NUL.
            if data_len == 0 {
                return Err(ProtoError::Text { field: "filter" });
            }
            Body::FilterFilter {
                rules: String::new(),
            }
        }
        t::DEVICE_DISCONNECT_ACK => Body::DeviceDisconnectAck,
        t::START_BULK_RECEIVING => Body::StartBulkReceiving {
            stream_id: r.u32(),
            bytes_per_transfer: r.u32(),
            endpoint: r.u8(),
            no_transfers: r.u8(),
        },
        t::STOP_BULK_RECEIVING => Body::StopBulkReceiving {
            stream_id: r.u32(),
            endpoint: r.u8(),
        },
        t::BULK_RECEIVING_STATUS => Body::BulkReceivingStatus {
            stream_id: r.u32(),
            endpoint: r.u8(),
            status: r.u8(),
        },
        other => return Err(ProtoError::UnknownType(other)),
    };
    check_fields(&body)?;
    Ok(body)
}

/// Completes hello and filter_filter with their data.
pub(crate) fn fill(body: Body, data: &[u8]) -> Result<Body, ProtoError> {
    Ok(match body {
        Body::Hello(hello) => Body::Hello(Hello {
            cap_words: data
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect(),
            ..hello
        }),
        Body::FilterFilter { .. } => {
            // One NUL, at the end: usbredirparser checks the last byte, and
            // its rule parser would stop at an earlier one.
            let rules = nul_terminated(data, "filter")?;
            if rules.len() + 1 != data.len() {
                return Err(ProtoError::Text { field: "filter" });
            }
            Body::FilterFilter { rules }
        }
        other => other,
    })
}

/// Checks a control packet to encode; returns the length of its data.
pub(crate) fn check(body: &Body, caps: Caps) -> Result<usize, ProtoError> {
    check_fields(body)?;
    let data_len = match body {
        Body::Hello(h) => {
            check_text(&h.version, VERSION_LEN - 1, "version")?;
            h.cap_words.len().saturating_mul(4)
        }
        Body::FilterFilter { rules } => {
            check_text(rules, limits::MAX_PACKET_LEN as usize - 1, "filter")?;
            rules.len() + 1
        }
        Body::DeviceConnect(d) => {
            if d.device_version_bcd.is_some() != caps.has(Cap::ConnectDeviceVersion) {
                return Err(ProtoError::CapMismatch {
                    field: "device_version_bcd",
                    cap: Cap::ConnectDeviceVersion,
                });
            }
            0
        }
        Body::EpInfo(e) => {
            if e.max_packet_size.is_some() != has_max_packet_size(caps) {
                return Err(ProtoError::CapMismatch {
                    field: "max_packet_size",
                    cap: Cap::EpInfoMaxPacketSize,
                });
            }
            if e.max_streams.is_some() != caps.has(Cap::BulkStreams) {
                return Err(ProtoError::CapMismatch {
                    field: "max_streams",
                    cap: Cap::BulkStreams,
                });
            }
            0
        }
        _ => 0,
    };
    Ok(data_len)
}

/// Writes the type-specific header and data of a checked control packet.
pub(crate) fn encode(body: &Body, dst: &mut impl BufMut) {
    match body {
        Body::Hello(h) => {
            put_padded(dst, &h.version, VERSION_LEN);
            for &w in &h.cap_words {
                dst.put_u32_le(w);
            }
        }
        Body::DeviceConnect(d) => {
            dst.put_slice(&[
                d.speed,
                d.device_class,
                d.device_subclass,
                d.device_protocol,
            ]);
            dst.put_u16_le(d.vendor_id);
            dst.put_u16_le(d.product_id);
            if let Some(bcd) = d.device_version_bcd {
                dst.put_u16_le(bcd);
            }
        }
        Body::InterfaceInfo(i) => {
            dst.put_u32_le(i.interface_count);
            dst.put_slice(&i.interface);
            dst.put_slice(&i.interface_class);
            dst.put_slice(&i.interface_subclass);
            dst.put_slice(&i.interface_protocol);
        }
        Body::EpInfo(e) => {
            dst.put_slice(&e.ep_type);
            dst.put_slice(&e.interval);
            dst.put_slice(&e.interface);
            for &m in e.max_packet_size.iter().flatten() {
                dst.put_u16_le(m);
            }
            for &s in e.max_streams.iter().flatten() {
                dst.put_u32_le(s);
            }
        }
        &Body::SetConfiguration { configuration } => dst.put_u8(configuration),
        &Body::ConfigurationStatus {
            status,
            configuration,
        } => dst.put_slice(&[status, configuration]),
        &Body::SetAltSetting { interface, alt } => dst.put_slice(&[interface, alt]),
        &Body::GetAltSetting { interface } => dst.put_u8(interface),
        &Body::AltSettingStatus {
            status,
            interface,
            alt,
        } => dst.put_slice(&[status, interface, alt]),
        &Body::StartIsoStream {
            endpoint,
            pkts_per_urb,
            no_urbs,
        } => dst.put_slice(&[endpoint, pkts_per_urb, no_urbs]),
        &Body::StopIsoStream { endpoint }
        | &Body::StartInterruptReceiving { endpoint }
        | &Body::StopInterruptReceiving { endpoint } => dst.put_u8(endpoint),
        &Body::IsoStreamStatus { status, endpoint }
        | &Body::InterruptReceivingStatus { status, endpoint } => {
            dst.put_slice(&[status, endpoint])
        }
        &Body::AllocBulkStreams {
            endpoints,
            no_streams,
        } => {
            dst.put_u32_le(endpoints);
            dst.put_u32_le(no_streams);
        }
        &Body::FreeBulkStreams { endpoints } => dst.put_u32_le(endpoints),
        &Body::BulkStreamsStatus {
            endpoints,
            no_streams,
            status,
        } => {
            dst.put_u32_le(endpoints);
            dst.put_u32_le(no_streams);
            dst.put_u8(status);
        }
        Body::FilterFilter { rules } => super::put_c_string(dst, rules),
        &Body::StartBulkReceiving {
            stream_id,
            bytes_per_transfer,
            endpoint,
            no_transfers,
        } => {
            dst.put_u32_le(stream_id);
            dst.put_u32_le(bytes_per_transfer);
            dst.put_slice(&[endpoint, no_transfers]);
        }
        &Body::StopBulkReceiving {
            stream_id,
            endpoint,
        } => {
            dst.put_u32_le(stream_id);
            dst.put_u8(endpoint);
        }
        &Body::BulkReceivingStatus {
            stream_id,
            endpoint,
            status,
        } => {
            dst.put_u32_le(stream_id);
            dst.put_slice(&[endpoint, status]);
        }
        Body::DeviceDisconnect
        | Body::Reset
        | Body::GetConfiguration
        | Body::CancelDataPacket
        | Body::FilterReject
        | Body::DeviceDisconnectAck => {}
        Body::Control(_)
        | Body::Bulk(_)
        | Body::Iso(_)
        | Body::Interrupt(_)
        | Body::BufferedBulk(_) => unreachable!("data packets are encoded by data.rs"),
    }
}
