//! The stock Linux USB/IP client (`usbip` + vhci-hcd, inside a QEMU guest) against
//! `hrh-exporter` on the host, with the ordinary class drivers (cdc_acm, usb-storage) binding
//! the simulated dongles.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vusb_vm_tests::{image_head_sha256, pendrive_image, Exporter, Guest, GuestConfig};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);

const MIB: u64 = 1024 * 1024;

/// The exporter's arguments for the three simulated dongles: bus ids 1-1 (sensor),
/// 1-2 (pendrive backed by `image`), 1-3 (loopback).
fn all_dongles(image: &Path) -> Vec<String> {
    vec![
        "--simulate".into(),
        "sensor".into(),
        "--simulate".into(),
        format!("pendrive={}", image.display()),
        "--simulate".into(),
        "loopback".into(),
    ]
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn boot_smoke() -> Result<()> {
    // Also proves that every module the client and gateway roles need loads in this kernel.
    let script = r#"
        echo "SMOKE-KERNEL=$(uname -r)"
        ip addr show eth0 | grep -q 'inet 10.0.2.15/24' || fail "eth0 has no address"
        [ -d /sys/devices/platform/vhci_hcd.0 ] || fail "vhci-hcd is not loaded"
        for m in cdc-acm usb-storage sd_mod dummy_hcd libcomposite usb_f_acm \
                 usb_f_mass_storage usbip-host sch_netem; do
            modprobe "$m" || fail "modprobe $m failed"
        done
        usbip version || fail "usbip does not run"
        echo SMOKE-OK
    "#;
    let mut guest = Guest::boot(GuestConfig::new("boot_smoke", script))?;
    guest.wait_for_line("SMOKE-OK", BOOT)?;
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn list_shows_all_simulated_devices() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 64 * MIB)?;
    let exporter = Exporter::spawn("list_shows_all_simulated_devices", all_dongles(&image))?;
    let script = r#"
        usbip --tcp-port "$VUSB_PORT" list -r "$VUSB_HOST" >/tmp/list.out 2>&1
        echo "LIST-RC=$?"
        sed 's/^/LIST: /' /tmp/list.out
        echo LIST-DONE
    "#;
    let config = GuestConfig::new("list_shows_all_simulated_devices", script)
        .env("VUSB_PORT", exporter.port());
    let mut guest = Guest::boot(config)?;
    guest.wait_for_line("LIST-DONE", BOOT)?;
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);

    assert_eq!(guest.marker("LIST-RC").as_deref(), Some("0"));
    let listing: Vec<String> = guest
        .test_lines()
        .iter()
        .filter_map(|line| line.strip_prefix("LIST: ").map(str::to_owned))
        .collect();
    // usbip prints "<busid>: <vendor> : <product> (<vid>:<pid>)" for each device.
    for (busid, ids) in [
        ("1-1", "1209:0001"),
        ("1-2", "1209:0002"),
        ("1-3", "1209:0003"),
    ] {
        let found = listing.iter().any(|line| {
            line.trim_start().starts_with(&format!("{busid}:"))
                && line.contains(&format!("({ids})"))
        });
        assert!(found, "no {busid} with {ids} in the listing: {listing:#?}");
    }
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn sensor_streams_readings_and_echoes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 64 * MIB)?;
    let exporter = Exporter::spawn("sensor_streams_readings_and_echoes", all_dongles(&image))?;
    let script = r#"
        usbip_attach 1-1 || fail "usbip attach 1-1 failed"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        echo ACM-PRESENT
        # Raw and without echo, or the line discipline would send the readings back.
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        cat /dev/ttyACM0 >/tmp/acm.out &
        cat_pid=$!
        sleep 1
        token="echo-$(cat /proc/sys/kernel/random/uuid)"
        echo "ECHO-TOKEN=$token"
        printf '%s\n' "$token" >/dev/ttyACM0 || fail "writing to /dev/ttyACM0 failed"
        readings() { grep -cE 'reading [0-9]+: -?[0-9]+(\.[0-9]+)? C' /tmp/acm.out; }
        done_reading() { [ "$(readings)" -ge 3 ] && grep -q "$token" /tmp/acm.out; }
        wait_for 12 done_reading
        kill "$cat_pid"
        echo "READINGS=$(readings)"
        if grep -q "$token" /tmp/acm.out; then echo ECHOED=yes; else echo ECHOED=no; fi
        tr -d '\r' </tmp/acm.out | sed 's/^/ACM: /'
        echo SENSOR-DONE
    "#;
    let config = GuestConfig::new("sensor_streams_readings_and_echoes", script)
        .env("VUSB_PORT", exporter.port());
    let mut guest = Guest::boot(config)?;
    guest.wait_for_line("ACM-PRESENT", BOOT)?;
    guest.wait_for_line("SENSOR-DONE", Duration::from_secs(60))?;
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);

    let readings: u32 = guest
        .marker("READINGS")
        .context("no READINGS marker")?
        .parse()?;
    assert!(readings >= 3, "only {readings} readings within ~12 s");
    assert_eq!(
        guest.marker("ECHOED").as_deref(),
        Some("yes"),
        "the line written to /dev/ttyACM0 did not come back"
    );
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn pendrive_write_read_back_and_persist() -> Result<()> {
    const DATA_MIB: u64 = 16;
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 64 * MIB)?;
    let exporter = Exporter::spawn("pendrive_write_read_back_and_persist", all_dongles(&image))?;
    let script = r#"
        dd if=/dev/urandom of=/tmp/data bs=1M count="$DATA_MIB" 2>/dev/null || fail "no random data"
        want=$(sha256sum /tmp/data | cut -d' ' -f1)
        usbip_attach 1-2 || fail "usbip attach 1-2 failed"
        wait_for 30 test -b /dev/sda || fail "/dev/sda did not appear"
        echo "SDA-SECTORS=$(cat /sys/block/sda/size)"
        start=$(cut -d' ' -f1 /proc/uptime)
        dd if=/tmp/data of=/dev/sda bs=1M conv=fsync || fail "writing /dev/sda failed"
        echo "WRITE-DONE after $start .. $(cut -d' ' -f1 /proc/uptime) s uptime"
        echo 3 >/proc/sys/vm/drop_caches
        got=$(dd if=/dev/sda bs=1M count="$DATA_MIB" 2>/dev/null | sha256sum | cut -d' ' -f1)
        echo "READ-DONE at $(cut -d' ' -f1 /proc/uptime) s uptime"
        echo "DATA-SHA256=$want"
        echo "READBACK-SHA256=$got"
        [ "$want" = "$got" ] || fail "data read back from /dev/sda differs from what was written"
        port=$(usbip_port_of 1-2)
        [ -n "$port" ] || fail "usbip port does not show 1-2"
        usbip detach -p "$port" || fail "usbip detach -p $port failed"
        wait_for 30 sh -c '! test -e /dev/sda' || fail "/dev/sda still there after detach"
        echo PENDRIVE-DONE
    "#;
    let config = GuestConfig::new("pendrive_write_read_back_and_persist", script)
        .env("VUSB_PORT", exporter.port())
        .env("DATA_MIB", DATA_MIB);
    let mut guest = Guest::boot(config)?;
    guest.wait_for_line("SDA-SECTORS=", BOOT)?;
    guest.wait_for_line("PENDRIVE-DONE", Duration::from_secs(240))?;
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);

    assert_eq!(
        guest.marker("SDA-SECTORS").as_deref(),
        Some((64 * MIB / 512).to_string().as_str()),
        "the guest sees a disk of the wrong size"
    );
    let guest_hash = guest
        .marker("DATA-SHA256")
        .context("no DATA-SHA256 marker")?;
    let host_hash = image_head_sha256(&image, DATA_MIB * MIB)?;
    assert_eq!(
        host_hash, guest_hash,
        "the image's first {DATA_MIB} MiB are not what the guest wrote"
    );
    drop(exporter);
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn detach_then_attach_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 64 * MIB)?;
    let exporter = Exporter::spawn("detach_then_attach_again", all_dongles(&image))?;
    let script = r#"
        attach_both() {
            for busid in 1-1 1-2; do
                # The server may take a moment to release a device after a detach.
                wait_for 15 usbip_attach "$busid" || fail "usbip attach $busid failed"
            done
            wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
            wait_for 30 test -b /dev/sda || fail "/dev/sda did not appear"
            [ "$(usbip_ports_in_use)" -eq 2 ] || fail "usbip port does not list two devices"
            stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
            timeout 10 head -n 2 /dev/ttyACM0 | grep -q 'reading' || fail "no reading from the sensor"
            dd if=/dev/sda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "cannot read /dev/sda"
        }
        detach_both() {
            for busid in 1-1 1-2; do
                port=$(usbip_port_of "$busid")
                [ -n "$port" ] || fail "usbip port does not show $busid"
                usbip detach -p "$port" || fail "usbip detach -p $port failed"
            done
            wait_for 30 sh -c '! test -e /dev/ttyACM0' || fail "/dev/ttyACM0 still there after detach"
            wait_for 30 sh -c '! test -e /dev/sda' || fail "/dev/sda still there after detach"
            [ "$(usbip_ports_in_use)" -eq 0 ] || fail "usbip port still lists devices after detach"
        }
        attach_both
        echo ATTACHED-1
        detach_both
        echo DETACHED-1
        attach_both
        echo ATTACHED-2
        detach_both
        echo DETACHED-2
    "#;
    let config =
        GuestConfig::new("detach_then_attach_again", script).env("VUSB_PORT", exporter.port());
    let mut guest = Guest::boot(config)?;
    for marker in ["ATTACHED-1", "DETACHED-1", "ATTACHED-2", "DETACHED-2"] {
        guest.wait_for_line(marker, BOOT)?;
    }
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn killing_the_exporter_mid_transfer_frees_the_guest() -> Result<()> {
    // Large enough that the read cannot finish between the marker and the kill.
    const READ_MIB: u64 = 240;
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 256 * MIB)?;
    let mut exporter = Exporter::spawn(
        "killing_the_exporter_mid_transfer_frees_the_guest",
        all_dongles(&image),
    )?;
    let script = r#"
        usbip_attach 1-2 || fail "usbip attach 1-2 failed"
        wait_for 30 test -b /dev/sda || fail "/dev/sda did not appear"
        sectors_read() { awk '{ print $3 }' /sys/block/sda/stat; }
        before=$(sectors_read)
        dd if=/dev/sda of=/dev/null bs=1M count="$READ_MIB" iflag=direct >/tmp/dd.log 2>&1 &
        dd_pid=$!
        # Kill only once data is flowing, so that requests are in flight when it happens.
        flowing() { [ $(($(sectors_read) - before)) -ge 2048 ]; }
        wait_for 30 flowing || fail "dd did not read 1 MiB within 30 s"
        kill -0 "$dd_pid" 2>/dev/null || { cat /tmp/dd.log; fail "dd ended before the kill"; }
        echo "SECTORS-READ-BEFORE-KILL=$(($(sectors_read) - before))"
        echo DD-RUNNING
        dd_ended() { ! kill -0 "$dd_pid" 2>/dev/null; }
        wait_for 90 dd_ended || fail "dd still running 90 s after the exporter was killed"
        wait "$dd_pid"
        echo "DD-ENDED rc=$?"
        sed 's/^/DD: /' /tmp/dd.log
        if grep -q "^$READ_MIB+0 records in" /tmp/dd.log; then echo DD-COMPLETE=yes; else echo DD-COMPLETE=no; fi
        wait_for 60 sh -c '! test -e /dev/sda' || fail "/dev/sda still there"
        no_ports_in_use() { [ "$(usbip_ports_in_use)" -eq 0 ]; }
        wait_for 60 no_ports_in_use || fail "usbip port still lists the device"
        echo DEVICE-GONE
    "#;
    let config = GuestConfig::new("killing_the_exporter_mid_transfer_frees_the_guest", script)
        .env("VUSB_PORT", exporter.port())
        .env("READ_MIB", READ_MIB);
    let mut guest = Guest::boot(config)?;
    guest.wait_for_line("DD-RUNNING", BOOT)?;
    exporter.kill()?;
    guest.note("hrh-exporter killed with SIGKILL");
    let killed_at = Instant::now();
    guest.wait_for_line("DD-ENDED", Duration::from_secs(90))?;
    guest.wait_for_line("DEVICE-GONE", Duration::from_secs(90))?;
    let elapsed = killed_at.elapsed();
    assert_eq!(guest.wait_exit(Duration::from_secs(30))?, 0);

    assert_eq!(
        guest.marker("DD-COMPLETE").as_deref(),
        Some("no"),
        "dd read all {READ_MIB} MiB although the server was killed"
    );
    if elapsed > Duration::from_secs(60) {
        bail!("the guest needed {elapsed:?} after the kill to let go of the device");
    }
    Ok(())
}
