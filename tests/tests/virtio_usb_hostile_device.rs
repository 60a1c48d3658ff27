//! The guest driver against a device that breaks the virtio-usb specification
//! (docs/virtio-usb.md; issue: bad input from the device). `vusb-hostile` is vusb-backend's
//! device with one deliberate fault, importing real simulated dongles from hrh-exporter. In
//! every case the driver refuses what is wrong, logs it, keeps the rest working, unloads
//! cleanly, and the guest kernel reports no trouble.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only -E
//! 'binary(virtio_usb_hostile_device)'` (or through scripts/test.sh).

use std::time::Duration;

use anyhow::{bail, Result};
use vusb_vm_tests::vhome_guest::{check_console, vhome_config};
use vusb_vm_tests::{Backend, Exporter, Guest};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);

/// Boots a guest attached to `vusb-hostile FAULT` importing `dongles` from an exporter, runs
/// `script`, and checks that the console shows each of `expected` and no kernel trouble.
fn against(
    name: &str,
    fault: &str,
    dongles: &[&str],
    script: &str,
    expected: &[&str],
) -> Result<()> {
    let exporter = Exporter::spawn(name, dongles.iter().flat_map(|d| ["--simulate", *d]))?;
    let devices: Vec<String> = (1..=dongles.len())
        .flat_map(|i| {
            [
                "--device".to_owned(),
                exporter.device_url(&format!("1-{i}")),
            ]
        })
        .collect();
    let backend = Backend::spawn_hostile(name, fault, devices)?;
    let script = format!("{script}\necho HOSTILE-DONE\n");
    let mut guest = Guest::boot(vhome_config(name, &backend, &script)?)?;
    guest.wait_for_line("HOSTILE-DONE", BOOT + Duration::from_secs(120))?;
    let code = guest.wait_exit(Duration::from_secs(30))?;
    check_console(&guest)?;
    if code != 0 {
        bail!("the guest's script failed with exit code {code}");
    }
    let log = std::fs::read_to_string(guest.log_path())?;
    for e in expected {
        assert!(log.contains(e), "the console never said {e:?}");
    }
    Ok(())
}

/// Loads the driver, leaves it `settle` seconds with the device, and unloads it.
fn load_and_unload(settle: u32) -> String {
    format!(
        r#"
        load_hcd
        sleep {settle}
        timeout 60 rmmod virtio_usb_hcd || fail "rmmod virtio_usb_hcd failed or hung"
        "#
    )
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn a_device_with_another_magic_is_refused() -> Result<()> {
    let script = r#"
        load_hcd
        sleep 1
        ls /sys/bus/virtio/drivers/virtio_usb_hcd | grep -q '^virtio' &&
            fail "the driver bound a device with another magic"
        grep -qs virtio_usb_hcd /sys/bus/usb/devices/usb*/manufacturer &&
            fail "a virtio-usb bus appeared"
        rmmod virtio_usb_hcd || fail "rmmod failed"
    "#;
    against(
        "hostile_magic",
        "magic",
        &["sensor"],
        script,
        &["not a virtio-usb device: magic 76555358"],
    )
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn a_device_of_another_major_version_is_refused() -> Result<()> {
    let script = r#"
        load_hcd
        sleep 1
        ls /sys/bus/virtio/drivers/virtio_usb_hcd | grep -q '^virtio' &&
            fail "the driver bound a device of version 2"
        rmmod virtio_usb_hcd || fail "rmmod failed"
    "#;
    against(
        "hostile_version",
        "version",
        &["sensor"],
        script,
        &["virtio-usb version 2.0, this driver speaks 1.x"],
    )
}

/// The device announces one port and reports a device on a second: that event is refused,
/// and the device on the real port works.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn an_event_for_a_port_that_does_not_exist_is_ignored() -> Result<()> {
    let script = r#"
        load_hcd
        enumerated 1209 0001
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        reading=$(timeout 10 head -n 1 /dev/ttyACM0)
        [ -n "$reading" ] || fail "no reading from the sensor on the real port"
        echo "READING=$reading"
        has_usb_device 1209 0003 && fail "the device on the phantom port appeared"
        timeout 60 rmmod virtio_usb_hcd || fail "rmmod failed or hung"
    "#;
    against(
        "hostile_phantom_port",
        "phantom-port",
        &["sensor", "loopback"],
        script,
        &["event 1 for port 2, which does not exist"],
    )
}

/// Every transfer comes back claiming more than its buffer: each is refused (the URB fails),
/// the device never enumerates, and nothing is written past a buffer.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn responses_longer_than_the_buffer_are_refused() -> Result<()> {
    against(
        "hostile_overlong",
        "overlong",
        &["sensor"],
        &format!(
            "{}\nhas_usb_device 1209 0001 && fail \"a device enumerated from overlong answers\"\n",
            load_and_unload(15)
        ),
        &["bytes transferred of", "device returned"],
    )
}

/// Transfers are never answered, nor their cancels: the driver's watchdog gives them back and
/// resets the device instead of letting usb-core's error handling wait forever, and the driver
/// still unloads.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn a_device_that_never_answers_is_reset_and_unloads() -> Result<()> {
    against(
        "hostile_silent",
        "silent",
        &["sensor"],
        &load_and_unload(30),
        &["cancelled transfers unanswered for 15 s: resetting the device"],
    )
}
