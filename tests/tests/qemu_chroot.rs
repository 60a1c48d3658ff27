//! The newer QEMU of the trixie chroot (`guest-images/build-qemu-chroot.sh`, run through
//! `scripts/qemu-chroot.sh`): it has the device the vhost-user tests attach their backend
//! through, and it boots the test guest with the shared guest memory vhost-user needs.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` (or through
//! scripts/test.sh). Building the chroot the first time needs root and a Debian mirror.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vusb_vm_tests::qemu_chroot::{
    parse_version, qemu_chroot_command, shared_memory_args, MIN_VERSION,
};
use vusb_vm_tests::{Guest, GuestConfig};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);

const GUEST_MIB: u32 = 512;

/// Runs the chroot's QEMU with `args` (no guest) and returns its stdout.
fn run_qemu(args: &[&str]) -> Result<String> {
    let command = qemu_chroot_command()?;
    let output = Command::new(&command[0])
        .args(&command[1..])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", command[0]))?;
    if !output.status.success() {
        bail!(
            "{:?} {args:?} failed ({}): {}",
            command[0],
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn chroot_qemu_is_new_enough_for_vhost_user_test_device() -> Result<()> {
    let version = run_qemu(&["--version"])?;
    let parsed = parse_version(&version);
    assert!(
        parsed.is_some_and(|v| v >= MIN_VERSION),
        "the chroot's QEMU is older than {MIN_VERSION:?}: {version}"
    );

    // `-device help` lists devices as `name "…", bus …`.
    let devices = run_qemu(&["-device", "help"])?;
    assert!(
        devices.contains("name \"vhost-user-test-device-pci\""),
        "no vhost-user-test-device-pci in the chroot QEMU's device list:\n{devices}"
    );
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn chroot_qemu_boots_the_test_guest_with_shared_memory() -> Result<()> {
    // The one NUMA node holds all of the memfd-backed memory.
    let script = r#"
        echo "CHROOT-KERNEL=$(uname -r)"
        mem_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
        echo "MEM-KIB=$mem_kib"
        [ "$mem_kib" -gt $((400 * 1024)) ] || fail "only $mem_kib KiB of memory"
        [ -d /sys/devices/system/node/node0 ] || fail "no NUMA node 0"
        [ ! -d /sys/devices/system/node/node1 ] || fail "more than one NUMA node"
        ip addr show eth0 | grep -q 'inet 10.0.2.15/24' || fail "eth0 has no address"
        echo CHROOT-BOOT-OK
    "#;
    let name = "chroot_qemu_boots_the_test_guest_with_shared_memory";
    let config = GuestConfig::new(name, script)
        .qemu_command(qemu_chroot_command()?)
        .memory_mib(GUEST_MIB)
        .qemu_args(shared_memory_args(GUEST_MIB));
    let started = Instant::now();
    let mut guest = Guest::boot(config)?;
    guest.wait_for_line("CHROOT-BOOT-OK", BOOT)?;
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);
    guest.note(&format!(
        "boot to exit marker took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
