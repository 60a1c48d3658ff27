//! The vHOME guest: a test guest with `vusb-backend` attached over vhost-user and the
//! repository's virtio-usb host controller driver (`guest-images/virtio-usb-hcd`), which the
//! test initramfs carries as `/opt/virtio-usb-hcd/virtio_usb_hcd.ko`. It needs the chroot's
//! QEMU ([`qemu_chroot`](crate::qemu_chroot)) for `vhost-user-test-device-pci`.

use anyhow::{bail, Context, Result};

use crate::backend::Backend;
use crate::guest::{Guest, GuestConfig};
use crate::hrh::{CLIENT_FUNCTIONS, COMMON_FUNCTIONS};
use crate::qemu_chroot::{qemu_chroot_command, shared_memory_args};
use crate::remote::{Remote, SERVE_FUNCTION};

/// Guest memory of a vHOME guest, all of it shared with the backend.
pub const VHOME_MIB: u32 = 512;

/// Shell functions for guests with the driver (busybox sh).
pub const DRIVER_FUNCTIONS: &str = r#"
HCD_KO=/opt/virtio-usb-hcd/virtio_usb_hcd.ko

load_hcd() {
    # Its debug messages (port events and resets) go to the console log.
    insmod "$HCD_KO" dyndbg=+p || fail "insmod $HCD_KO failed"
    [ -e /sys/bus/virtio/drivers/virtio_usb_hcd ] || fail "virtio_usb_hcd registered no driver"
}

# usb_device VID PID: the sysfs directory of the USB device with these IDs.
usb_device() {
    for _d in /sys/bus/usb/devices/*; do
        [ -f "$_d/idVendor" ] || continue
        if [ "$(cat "$_d/idVendor")" = "$1" ] && [ "$(cat "$_d/idProduct")" = "$2" ]; then
            echo "$_d"
            return 0
        fi
    done
    return 1
}

has_usb_device() { usb_device "$1" "$2" >/dev/null; }
no_usb_device() { ! has_usb_device "$1" "$2"; }

# enumerated VID PID: waits for the device, checks that it is behind the virtio-usb
# controller (…/virtioN/usbM/… in sysfs) and prints it as ENUMERATED=VID:PID speed=… .
enumerated() {
    wait_for 45 has_usb_device "$1" "$2" || fail "no USB device $1:$2 appeared"
    _d=$(usb_device "$1" "$2")
    _path=$(readlink -f "$_d")
    echo "$_path" | grep -q '/virtio[0-9]*/usb[0-9]*/' ||
        fail "$1:$2 is at $_path, not behind the virtio-usb controller"
    echo "ENUMERATED=$1:$2 speed=$(cat "$_d/speed") path=$_path"
}

# bound VID PID: every interface of the device has its driver (class drivers bind a moment
# after the device is configured, once their modules are loaded).
bound() {
    _d=$(usb_device "$1" "$2") || return 1
    for _i in "$_d"/*:*; do
        [ -e "$_i/driver" ] || return 1
    done
}

# sectors_read DISK: sectors read from /dev/DISK so far.
sectors_read() { awk '{ print $3 }' "/sys/block/$1/stat"; }
"#;

/// Kernel console lines of a guest log that mean the kernel hit a bug.
pub fn kernel_trouble(log: &str) -> Vec<&str> {
    const SIGNS: [&str; 5] = ["Oops", "BUG", "WARNING", "Call Trace", "general protection"];
    log.lines()
        .filter(|line| line.contains("| ") && line.contains(" console "))
        .filter(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .collect()
}

/// Fails when the guest's console shows signs of a kernel bug.
pub fn check_console(guest: &Guest) -> Result<()> {
    let log = std::fs::read_to_string(guest.log_path()).context("reading the guest log")?;
    let trouble = kernel_trouble(&log);
    if !trouble.is_empty() {
        bail!("the guest kernel reported trouble:\n{}", trouble.join("\n"));
    }
    Ok(())
}

/// The configuration of a vHOME guest attached to `backend`, running `script` after the
/// shell functions of [`COMMON_FUNCTIONS`] and [`DRIVER_FUNCTIONS`].
pub fn vhome_config(name: &str, backend: &Backend, script: &str) -> Result<GuestConfig> {
    Ok(GuestConfig::new(
        name,
        &format!("{COMMON_FUNCTIONS}\n{DRIVER_FUNCTIONS}\n{script}"),
    )
    .qemu_command(qemu_chroot_command()?)
    .memory_mib(VHOME_MIB)
    .qemu_args(shared_memory_args(VHOME_MIB))
    .qemu_args(backend.qemu_args("vusb0"))
    // The driver's debug messages, which load_hcd enables, reach the console.
    .kernel_arg("loglevel=8"))
}

/// Boots a vHOME guest attached to `backend` that loads the driver and then serves commands
/// ([`Remote`]) with the client guest's vocabulary ([`CLIENT_FUNCTIONS`]) besides. Returns at
/// once; wait with [`Remote::wait_ready`].
pub fn boot_vhome(name: &str, backend: &Backend) -> Result<Remote> {
    let script = format!("{CLIENT_FUNCTIONS}\n{SERVE_FUNCTION}\nload_hcd\nvusb_serve\n");
    Ok(Remote::new(Guest::boot(vhome_config(
        name, backend, &script,
    )?)?))
}
