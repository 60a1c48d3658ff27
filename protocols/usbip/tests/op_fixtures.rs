//! Management ("op") messages against literal wire bytes.
//!
//! Layouts: `struct op_common`, `op_import_request`, `op_devlist_reply` in
//! `tools/usb/usbip/src/usbip_network.h`; `struct usbip_usb_device` (312
//! bytes) and `struct usbip_usb_interface` (4 bytes) in
//! `tools/usb/usbip/libsrc/usbip_common.h`; offsets cross-checked with the
//! tables of `Documentation/usb/usbip_protocol.rst`. Only the integers of
//! `usbip_usb_device` are byte-swapped (`usbip_net_pack_usb_device()` in
//! `usbip_network.c`); the one-byte fields and texts go as they are.

mod common;

use bytes::BytesMut;
use common::{cat, decode_bytewise, nul_padded};
use hex_literal::hex;
use usbip_proto::{
    op_code, op_status, speed, DeviceInfo, InterfaceInfo, OpReply, OpRequest, BUSID_SIZE,
    DEVICE_INFO_LEN, PATH_SIZE, USBIP_VERSION,
};

/// `struct op_common` of `OP_REQ_DEVLIST` as `usbip list -r` sends it; the
/// empty `op_devlist_request` adds nothing.
const REQ_DEVLIST: [u8; 8] = hex!(
    "0111"     // version 1.1.1
    "8005"     // code OP_REQUEST | OP_DEVLIST
    "00000000" // status: unused in requests
);

/// A CDC-ACM board (an Arduino Uno) on a full-speed port, as usbipd lists it.
fn acm_device() -> (Vec<u8>, DeviceInfo, Vec<InterfaceInfo>) {
    let wire = cat(&[
        // struct usbip_usb_device
        &nul_padded::<PATH_SIZE>(b"/sys/devices/pci0000:00/0000:00:1d.1/usb3/3-2"), // path[256]
        &nul_padded::<BUSID_SIZE>(b"3-2"),                                          // busid[32]
        &hex!(
            "00000003" // busnum
            "00000002" // devnum
            "00000002" // speed: USB_SPEED_FULL
            "2341"     // idVendor
            "0043"     // idProduct
            "0001"     // bcdDevice
            "02"       // bDeviceClass: communications
            "00"       // bDeviceSubClass
            "00"       // bDeviceProtocol
            "01"       // bConfigurationValue
            "01"       // bNumConfigurations
            "02"       // bNumInterfaces
        ),
        // struct usbip_usb_interface, bNumInterfaces times
        &hex!("02" "02" "01" "00"), // CDC ACM, AT commands, padding
        &hex!("0a" "00" "00" "00"), // CDC data, padding
    ]);
    let info = DeviceInfo {
        path: "/sys/devices/pci0000:00/0000:00:1d.1/usb3/3-2".into(),
        busid: "3-2".into(),
        busnum: 3,
        devnum: 2,
        speed: speed::FULL,
        id_vendor: 0x2341,
        id_product: 0x0043,
        bcd_device: 0x0001,
        device_class: 0x02,
        device_subclass: 0,
        device_protocol: 0,
        configuration_value: 1,
        num_configurations: 1,
        num_interfaces: 2,
    };
    let ifaces = vec![
        InterfaceInfo {
            class: 0x02,
            subclass: 0x02,
            protocol: 0x01,
        },
        InterfaceInfo {
            class: 0x0a,
            subclass: 0,
            protocol: 0,
        },
    ];
    (wire, info, ifaces)
}

/// A composite gadget (ACM + mass storage) behind dummy_hcd at high speed,
/// the test bed's "real" device.
fn gadget_device() -> (Vec<u8>, DeviceInfo, Vec<InterfaceInfo>) {
    let wire = cat(&[
        &nul_padded::<PATH_SIZE>(b"/sys/devices/platform/dummy_hcd.0/usb1/1-1"),
        &nul_padded::<BUSID_SIZE>(b"1-1"),
        &hex!(
            "00000001" // busnum
            "00000002" // devnum
            "00000003" // speed: USB_SPEED_HIGH
            "1d6b"     // idVendor: Linux Foundation
            "0104"     // idProduct: multifunction composite gadget
            "0100"     // bcdDevice
            "ef"       // bDeviceClass: miscellaneous
            "02"       // bDeviceSubClass: common class
            "01"       // bDeviceProtocol: interface association
            "01"       // bConfigurationValue
            "01"       // bNumConfigurations
            "03"       // bNumInterfaces
        ),
        &hex!("02" "02" "01" "00"), // CDC ACM
        &hex!("0a" "00" "00" "00"), // CDC data
        &hex!("08" "06" "50" "00"), // mass storage, SCSI, bulk-only
    ]);
    let info = DeviceInfo {
        path: "/sys/devices/platform/dummy_hcd.0/usb1/1-1".into(),
        busid: "1-1".into(),
        busnum: 1,
        devnum: 2,
        speed: speed::HIGH,
        id_vendor: 0x1d6b,
        id_product: 0x0104,
        bcd_device: 0x0100,
        device_class: 0xef,
        device_subclass: 0x02,
        device_protocol: 0x01,
        configuration_value: 1,
        num_configurations: 1,
        num_interfaces: 3,
    };
    let ifaces = vec![
        InterfaceInfo {
            class: 0x02,
            subclass: 0x02,
            protocol: 0x01,
        },
        InterfaceInfo {
            class: 0x0a,
            subclass: 0,
            protocol: 0,
        },
        InterfaceInfo {
            class: 0x08,
            subclass: 0x06,
            protocol: 0x50,
        },
    ];
    (wire, info, ifaces)
}

fn encode_req(m: &OpRequest) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode(&mut out).expect("encodes");
    out.to_vec()
}

fn encode_rep(m: &OpReply) -> Vec<u8> {
    let mut out = BytesMut::new();
    m.encode(&mut out).expect("encodes");
    out.to_vec()
}

#[test]
fn constants_match_linux() {
    assert_eq!(USBIP_VERSION, 0x0111);
    assert_eq!(PATH_SIZE, 256); // SYSFS_PATH_MAX
    assert_eq!(BUSID_SIZE, 32); // SYSFS_BUS_ID_SIZE
    assert_eq!(DEVICE_INFO_LEN, 312); // 0x138, sizeof(struct usbip_usb_device)
    assert_eq!(op_code::REQ_DEVLIST, 0x8005);
    assert_eq!(op_code::REP_DEVLIST, 0x0005);
    assert_eq!(op_code::REQ_IMPORT, 0x8003);
    assert_eq!(op_code::REP_IMPORT, 0x0003);
    // ST_* of tools/usb/usbip/libsrc/usbip_common.h
    assert_eq!(
        [
            op_status::OK,
            op_status::NA,
            op_status::DEV_BUSY,
            op_status::DEV_ERR,
            op_status::NODEV,
            op_status::ERROR
        ],
        [0, 1, 2, 3, 4, 5]
    );
    // enum usb_device_speed
    assert_eq!(
        [
            speed::UNKNOWN,
            speed::LOW,
            speed::FULL,
            speed::HIGH,
            speed::WIRELESS,
            speed::SUPER,
            speed::SUPER_PLUS
        ],
        [0, 1, 2, 3, 4, 5, 6]
    );
    assert_eq!(acm_device().0.len(), DEVICE_INFO_LEN + 2 * 4);
}

#[test]
fn req_devlist() {
    let msg = decode_bytewise(&REQ_DEVLIST, OpRequest::decode);
    assert_eq!(msg, OpRequest::DevList);
    assert_eq!(encode_req(&msg), REQ_DEVLIST);
}

#[test]
fn rep_devlist_two_devices() {
    let (acm, acm_info, acm_ifaces) = acm_device();
    let (gadget, gadget_info, gadget_ifaces) = gadget_device();
    let wire = cat(&[
        &hex!(
            "0111"     // op_common.version
            "0005"     // op_common.code: OP_REPLY | OP_DEVLIST
            "00000000" // op_common.status: ST_OK
            "00000002" // op_devlist_reply.ndev
        ),
        // op_devlist_reply_extra, ndev times
        &acm,
        &gadget,
    ]);
    // Documentation/usb/usbip_protocol.rst: device i starts at
    // 0xC + i*0x138 + (interfaces so far)*4.
    assert_eq!(wire.len(), 0xc + 2 * 0x138 + (2 + 3) * 4);
    assert_eq!(&wire[0xc + 0x138 + 2 * 4..][..4], b"/sys");

    let msg = decode_bytewise(&wire, |b| OpReply::decode(b, op_code::REQ_DEVLIST));
    assert_eq!(
        msg,
        OpReply::DevList {
            status: op_status::OK,
            devices: vec![(acm_info, acm_ifaces), (gadget_info, gadget_ifaces)],
        }
    );
    assert_eq!(encode_rep(&msg), wire);
}

#[test]
fn rep_devlist_empty() {
    // "If no devices are exported the message ends with the previous
    // 'number of exported devices' field."
    let wire = hex!("0111" "0005" "00000000" "00000000");
    let msg = decode_bytewise(&wire, |b| OpReply::decode(b, op_code::REQ_DEVLIST));
    assert_eq!(
        msg,
        OpReply::DevList {
            status: op_status::OK,
            devices: vec![],
        }
    );
    assert_eq!(encode_rep(&msg), wire);
}

#[test]
fn req_import() {
    let wire = cat(&[
        &hex!(
            "0111"     // op_common.version
            "8003"     // op_common.code: OP_REQUEST | OP_IMPORT
            "00000000" // op_common.status
        ),
        &nul_padded::<BUSID_SIZE>(b"1-1"), // op_import_request.busid
    ]);
    assert_eq!(wire.len(), 40);
    let msg = decode_bytewise(&wire, OpRequest::decode);
    assert_eq!(
        msg,
        OpRequest::Import {
            busid: "1-1".into()
        }
    );
    assert_eq!(encode_req(&msg), wire);
}

#[test]
fn rep_import_success() {
    let (gadget, info, _) = gadget_device();
    // op_import_reply has the device without its interfaces.
    let record = &gadget[..DEVICE_INFO_LEN];
    let wire = cat(&[
        &hex!(
            "0111"     // op_common.version
            "0003"     // op_common.code: OP_REPLY | OP_IMPORT
            "00000000" // op_common.status: ST_OK
        ),
        record, // op_import_reply.udev
    ]);
    assert_eq!(wire.len(), 8 + 0x138);
    let msg = decode_bytewise(&wire, |b| OpReply::decode(b, op_code::REQ_IMPORT));
    assert_eq!(
        msg,
        OpReply::Import {
            status: op_status::OK,
            device: Some(info),
        }
    );
    assert_eq!(encode_rep(&msg), wire);
}

#[test]
fn rep_import_failure_is_header_only() {
    // usbipd's recv_request_import() sends op_common with ST_NA and stops.
    let wire = hex!("0111" "0003" "00000001");
    let msg = decode_bytewise(&wire, |b| OpReply::decode(b, op_code::REQ_IMPORT));
    assert_eq!(
        msg,
        OpReply::Import {
            status: op_status::NA,
            device: None,
        }
    );
    assert_eq!(encode_rep(&msg), wire);
}

#[test]
fn rep_devlist_failure_is_header_only() {
    let wire = hex!("0111" "0005" "00000005");
    let msg = decode_bytewise(&wire, |b| OpReply::decode(b, op_code::REQ_DEVLIST));
    assert_eq!(
        msg,
        OpReply::DevList {
            status: op_status::ERROR,
            devices: vec![],
        }
    );
    assert_eq!(encode_rep(&msg), wire);
}

#[test]
fn bytes_after_a_text_nul_are_ignored() {
    // The protocol says unused bytes "shall be" zero; C peers that do not
    // zero their structs send garbage there, which must not matter.
    let mut wire = cat(&[
        &hex!("0111" "8003" "00000000"),
        &nul_padded::<BUSID_SIZE>(b"1-1"),
    ]);
    wire[8 + 5] = b'x';
    let msg = OpRequest::decode(&mut BytesMut::from(&wire[..]))
        .unwrap()
        .unwrap();
    assert_eq!(
        msg,
        OpRequest::Import {
            busid: "1-1".into()
        }
    );
}

#[test]
fn request_status_is_ignored() {
    // usbipd never looks at a request's status (usbip_net_recv_op_common()
    // only checks it in replies).
    let wire = hex!("0111" "8005" "12345678");
    let msg = OpRequest::decode(&mut BytesMut::from(&wire[..]))
        .unwrap()
        .unwrap();
    assert_eq!(msg, OpRequest::DevList);
}
