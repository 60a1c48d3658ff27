//! `vusb-backend` attached to a guest over vhost-user: the guest finds the virtio-usb device
//! of `docs/virtio-usb.md` on its PCI bus and reads back its identity and configuration
//! space, with no virtio-usb driver of its own.
//!
//! The kernel's virtio_pci binds any virtio PCI device and registers it on the virtio bus,
//! but without a driver for the device ID nothing exposes its configuration space. The guest
//! reads it the way a driver would find it: the virtio vendor-specific PCI capabilities
//! (virtio 1.x §4.1.4) say which BAR holds the device-specific configuration and where,
//! and busybox `devmem` reads it from there, once virtio_pci has let go of the device (the
//! kernel keeps `/dev/mem` off ranges a driver holds).
//!
//! As a control, the same reader reads the configuration of the guest's virtio NIC, whose
//! first six bytes are the MAC address its driver reported.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vusb_vm_tests::backend::{VIRTIO_USB_CONFIG_SIZE, VIRTIO_USB_ID, VIRTIO_USB_PCI_DEVICE};
use vusb_vm_tests::qemu_chroot::{qemu_chroot_command, shared_memory_args};
use vusb_vm_tests::{wait_until, Backend, Exporter, Guest, GuestConfig};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);

const GUEST_MIB: u32 = 512;

/// The PCI vendor ID of virtio devices.
const VIRTIO_VENDOR: &str = "0x1af4";

/// `VIRTIO_USB_F_ISO`: the device accepts isochronous transfers (§1.2).
const VIRTIO_USB_F_ISO: u32 = 0;

/// `VIRTIO_F_VERSION_1`, which a virtio-usb device must offer (§1.2).
const VIRTIO_F_VERSION_1: u32 = 32;

/// Shell functions that find a virtio PCI device's structures and read them (busybox sh).
const VIRTIO_PCI_FUNCTIONS: &str = r#"
# pci_byte DEV OFFSET: a byte of the PCI configuration space of DEV (a sysfs directory).
pci_byte() { od -An -tu1 -j "$2" -N1 "$1/config" | tr -d ' '; }

# pci_le32 DEV OFFSET: a little-endian 32-bit field of it.
pci_le32() {
    echo $(( $(pci_byte "$1" "$2") | $(pci_byte "$1" $(($2 + 1))) << 8 |
        $(pci_byte "$1" $(($2 + 2))) << 16 | $(pci_byte "$1" $(($2 + 3))) << 24 ))
}

# pci_find VENDOR DEVICE: the sysfs directory of the first PCI device with these IDs.
pci_find() {
    for _dev in /sys/bus/pci/devices/*; do
        if [ "$(cat "$_dev/vendor")" = "$1" ] && [ "$(cat "$_dev/device")" = "$2" ]; then
            echo "$_dev"
            return 0
        fi
    done
    return 1
}

# virtio_cap DEV CFG_TYPE: "BAR OFFSET LENGTH" from DEV's virtio capability of that type
# (1 common, 4 device-specific): a vendor-specific capability (ID 0x09) with cfg_type at +3,
# bar at +4, le32 offset at +8 and le32 length at +12.
virtio_cap() {
    # Status bit 4: there is a capability list; its head is at 0x34.
    [ $(( $(pci_byte "$1" 6) & 0x10 )) -ne 0 ] || return 1
    _ptr=$(( $(pci_byte "$1" 52) & 0xfc ))
    _hops=0
    while [ "$_ptr" -ne 0 ] && [ "$_hops" -lt 48 ]; do
        if [ "$(pci_byte "$1" "$_ptr")" -eq 9 ] &&
            [ "$(pci_byte "$1" $((_ptr + 3)))" -eq "$2" ]; then
            echo "$(pci_byte "$1" $((_ptr + 4))) $(pci_le32 "$1" $((_ptr + 8))) $(pci_le32 "$1" $((_ptr + 12)))"
            return 0
        fi
        _ptr=$(( $(pci_byte "$1" $((_ptr + 1))) & 0xfc ))
        _hops=$((_hops + 1))
    done
    return 1
}

# virtio_addr DEV CFG_TYPE: the physical address of that structure (BAR base + offset).
virtio_addr() {
    _cap=$(virtio_cap "$1" "$2") || return 1
    set -- "$1" $_cap
    # resource: one "start end flags" line per BAR, BAR 0 first.
    _base=$(sed -n "$(($2 + 1))p" "$1/resource" | cut -d' ' -f1)
    [ $((_base)) -ne 0 ] || return 1
    echo $((_base + $3))
}

# release DEV: unbinds DEV's driver. The kernel forbids /dev/mem access to ranges a driver
# has claimed (CONFIG_IO_STRICT_DEVMEM), and its sysfs resourceN files of memory BARs can
# only be mapped, under the same rule; virtio_pci claims the BARs of every virtio device.
release() {
    [ -e "$1/driver" ] || return 0
    echo "$(basename "$1")" >"$1/driver/unbind"
}

# read_bytes ADDR COUNT: COUNT bytes of physical memory as hex, one read per byte.
read_bytes() {
    _i=0
    _out=
    while [ "$_i" -lt "$2" ]; do
        _byte=$(devmem $(($1 + _i)) 8) || return 1
        _out="$_out$(printf ' %02x' "$_byte")"
        _i=$((_i + 1))
    done
    echo "${_out# }"
}

# device_features ADDR: the 64 feature bits the device offers, from its common configuration
# at ADDR (device_feature_select at +0 chooses which 32 bits device_feature at +4 shows).
device_features() {
    devmem "$1" 32 1 || return 1
    _high=$(devmem $(($1 + 4)) 32) || return 1
    devmem "$1" 32 0 || return 1
    _low=$(devmem $(($1 + 4)) 32) || return 1
    printf '0x%08x%08x\n' "$_high" "$_low"
}

# report PREFIX DEV CONFIG_LEN: prints what the guest sees of the virtio device DEV as
# PREFIX-KEY=value lines. Its driver is unbound on the way.
report() {
    _virtio=$(ls -d "$2"/virtio[0-9]* 2>/dev/null | head -n1)
    [ -n "$_virtio" ] || fail "$2 has no virtio device"
    echo "$1-VIRTIO=$(basename "$_virtio")"
    echo "$1-VIRTIO-VENDOR=$(cat "$_virtio/vendor")"
    echo "$1-VIRTIO-DEVICE=$(cat "$_virtio/device")"
    echo "$1-VIRTIO-FEATURES=$(cat "$_virtio/features")"
    if [ -e "$_virtio/driver" ]; then
        echo "$1-VIRTIO-DRIVER=$(basename "$(readlink "$_virtio/driver")")"
    else
        echo "$1-VIRTIO-DRIVER=none"
    fi
    release "$2" || fail "cannot unbind the driver of $2"
    _common=$(virtio_addr "$2" 1) || fail "$2 has no virtio common configuration"
    _device=$(virtio_addr "$2" 4) || fail "$2 has no virtio device configuration"
    _features=$(device_features "$_common") || fail "reading the features of $2 failed"
    echo "$1-DEVICE-FEATURES=$_features"
    _config=$(read_bytes "$_device" "$3") || fail "reading the configuration of $2 failed"
    echo "$1-CONFIG=$_config"
}
"#;

/// The test's script: `report`s on the device with `$TARGET_PCI_ID`, then on the NIC.
const SCRIPT: &str = r#"
target=$(pci_find 0x1af4 "$TARGET_PCI_ID") || fail "no PCI device 1af4:$TARGET_PCI_ID"
echo "TARGET-PCI=$(basename "$target")"
# The NIC's driver knows its MAC address: the control for the configuration reader.
# eth0's device is a virtio device; its parent the PCI device.
nic=$(readlink -f /sys/class/net/eth0/device/..)
[ -e "$nic/config" ] || fail "eth0 is not on PCI"
echo "NIC-MAC=$(cat /sys/class/net/eth0/address)"
report TARGET "$target" "$TARGET_CONFIG_LEN"
report NIC "$nic" 6
echo REPORT-DONE
"#;

/// What the guest reported on one device.
#[derive(Debug)]
struct Report {
    virtio_vendor: String,
    virtio_device: String,
    virtio_features: String,
    virtio_driver: String,
    device_features: u64,
    config: Vec<u8>,
}

/// The value of the test-channel line `KEY=value`.
fn marker(guest: &Guest, key: &str) -> Result<String> {
    let prefix = format!("{key}=");
    guest
        .test_lines()
        .iter()
        .find_map(|line| line.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
        .ok_or_else(|| anyhow!("the guest printed no {key}= line"))
}

fn parse_report(guest: &Guest, prefix: &str) -> Result<Report> {
    let get = |key: &str| marker(guest, &format!("{prefix}-{key}"));
    let features = get("DEVICE-FEATURES")?;
    let device_features = u64::from_str_radix(features.trim_start_matches("0x"), 16)
        .with_context(|| format!("device features {features:?}"))?;
    let config = get("CONFIG")?
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<Vec<u8>, _>>()
        .context("configuration bytes")?;
    Ok(Report {
        virtio_vendor: get("VIRTIO-VENDOR")?,
        virtio_device: get("VIRTIO-DEVICE")?,
        virtio_features: get("VIRTIO-FEATURES")?,
        virtio_driver: get("VIRTIO-DRIVER")?,
        device_features,
        config,
    })
}

/// Boots a guest with `qemu_args` whose script reports on the virtio device with PCI device
/// ID `pci_id`, reading `config_len` bytes of its configuration, and on the NIC. Checks the
/// NIC's report (the control) and returns the device's.
fn boot_and_report(
    name: &str,
    qemu_args: Vec<String>,
    pci_id: u16,
    config_len: u32,
) -> Result<(Guest, Report)> {
    let config = GuestConfig::new(name, &format!("{VIRTIO_PCI_FUNCTIONS}\n{SCRIPT}"))
        .env("TARGET_PCI_ID", format!("{pci_id:#06x}"))
        .env("TARGET_CONFIG_LEN", config_len)
        .qemu_command(qemu_chroot_command()?)
        .memory_mib(GUEST_MIB)
        .qemu_args(shared_memory_args(GUEST_MIB))
        .qemu_args(qemu_args);
    let started = Instant::now();
    let mut guest = Guest::boot(config)?;
    if let Err(e) = guest.wait_for_line("REPORT-DONE", BOOT) {
        return Err(explain_qemu_abort(&guest, e));
    }
    let code = guest.wait_exit(Duration::from_secs(30))?;
    guest.note(&format!(
        "boot to exit marker took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    if code != 0 {
        bail!("the guest's script failed with exit code {code}");
    }

    let nic = parse_report(&guest, "NIC")?;
    let mac: Vec<u8> = marker(&guest, "NIC-MAC")?
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<_, _>>()
        .context("the NIC's MAC address")?;
    assert_eq!(
        nic.config, mac,
        "the configuration reader does not read the NIC's MAC address: it is broken"
    );
    let target = parse_report(&guest, "TARGET")?;
    Ok((guest, target))
}

/// Adds a hint to `error` when QEMU aborted on the device's virtio ID: QEMU's
/// `vhost-user-test-device` names its device after the ID and asserts that the ID is one it
/// has a name for (QEMU 11.1 knows none above 45).
fn explain_qemu_abort(guest: &Guest, error: anyhow::Error) -> anyhow::Error {
    let log = std::fs::read_to_string(guest.log_path()).unwrap_or_default();
    if log.contains("virtio_id_to_name") {
        error.context(format!(
            "QEMU aborted: its vhost-user-test-device-pci refuses virtio-id={VIRTIO_USB_ID}, an ID \
             it has no name for"
        ))
    } else {
        error
    }
}

/// Little-endian u16 at `offset`.
fn le16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

/// Little-endian u32 at `offset`.
fn le32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("four bytes"))
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn guest_sees_the_virtio_usb_device_and_its_config() -> Result<()> {
    let name = "guest_sees_the_virtio_usb_device_and_its_config";
    // Two devices, so that the port counts cannot match by accident.
    let exporter = Exporter::spawn(name, ["--simulate", "sensor", "--simulate", "loopback"])?;
    let mut backend = Backend::spawn(
        name,
        [
            "--device".to_owned(),
            exporter.device_url("1-1"),
            "--device".to_owned(),
            exporter.device_url("1-2"),
        ],
    )?;
    let (_guest, usb) = boot_and_report(
        name,
        backend.qemu_args("vusb0"),
        VIRTIO_USB_PCI_DEVICE,
        VIRTIO_USB_CONFIG_SIZE,
    )?;

    assert_eq!(usb.virtio_vendor, VIRTIO_VENDOR);
    assert_eq!(usb.virtio_device, format!("{VIRTIO_USB_ID:#06x}"));
    check_features(&usb)?;
    let config = &usb.config;
    assert_eq!(config.len(), VIRTIO_USB_CONFIG_SIZE as usize);
    assert_eq!(&config[0..4], b"vUSB", "magic, in {config:02x?}");
    assert_eq!(
        (le16(config, 4), le16(config, 6)),
        (1, 0),
        "version, in {config:02x?}"
    );
    assert_eq!(
        (config[8], config[9]),
        (2, 2),
        "port counts, in {config:02x?}"
    );
    assert!(
        le32(config, 12) >= 65536,
        "max_transfer below 64 KiB, in {config:02x?}"
    );
    if usb.device_features & (1 << VIRTIO_USB_F_ISO) == 0 {
        assert_eq!(
            le16(config, 16),
            0,
            "max_iso_packets without VIRTIO_USB_F_ISO, in {config:02x?}"
        );
    }
    assert_eq!(&config[18..24], [0; 6], "reserved bytes, in {config:02x?}");

    // QEMU connects at start-up, long before the guest reads anything, so the line is there.
    let log = backend.log()?;
    assert!(
        log.contains("front-end connected"),
        "the backend did not log QEMU's connection:\n{log}"
    );
    // QEMU has exited: the backend is to wait for the next one.
    assert!(
        !wait_until(Duration::from_secs(1), || !backend.is_running()),
        "the backend exited when QEMU disconnected"
    );
    Ok(())
}

/// The sysfs `features` file shows the features a driver negotiated, as 64 characters `0`
/// and `1` (bit 0 first): none while no driver is bound. What the device offers comes from
/// its common configuration.
fn check_features(report: &Report) -> Result<()> {
    let bits = &report.virtio_features;
    if bits.len() != 64 || !bits.chars().all(|c| c == '0' || c == '1') {
        bail!("the sysfs features are not a bit string: {bits:?}");
    }
    if report.virtio_driver == "none" {
        assert!(
            !bits.contains('1'),
            "features negotiated without a driver: {bits}"
        );
    } else {
        assert_eq!(
            bits.as_bytes()[VIRTIO_F_VERSION_1 as usize],
            b'1',
            "VIRTIO_F_VERSION_1 not negotiated: {bits}"
        );
    }
    assert!(
        report.device_features & (1 << VIRTIO_F_VERSION_1) != 0,
        "the device does not offer VIRTIO_F_VERSION_1: {:#018x}",
        report.device_features
    );
    Ok(())
}
