//! Real kernel USB devices through the whole virtio-usb path: configfs gadgets in an HRH guest,
//! exported once by Debian's stock `usbipd` + usbip-host and once by `hrh-exporter`, imported
//! by `vusb-backend` on the host and used in a vHOME guest through its virtio-usb driver by
//! the guest's own class drivers. No USB/IP client runs in the vHOME guest.
//!
//! ```text
//!  HRH guest                               host                  vHOME guest
//!  gadgets ─ usbipd | hrh-exporter ◄─ hostfwd ◄─ vusb-backend ◄─ vhost-user ─ virtio_usb_hcd
//!                                                                            cdc_acm, usb-storage,
//!                                                                            usbhid
//! ```
//!
//! Both servers go through the same scenario: the three gadgets enumerate behind the
//! virtio-usb controller with their class drivers bound, serial lines cross both ways, 8 MiB
//! written to the disk reach the gadget in whole transfers (scatter-gather, not a URB per
//! page), come back and sit in the gadget's backing file, HID reports cross both
//! ways, and unplugging the serial gadget in the HRH removes it from the vHOME guest while
//! the disk keeps working. What the vHOME guest sees must be the same for both servers.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vusb_vm_tests::vhome_guest::{boot_vhome, check_console};
use vusb_vm_tests::{find_device, Backend, Hrh, HrhConfig, HrhDevice, Output, Remote, Server};

/// Two TCG guests boot at once on a small machine.
const BOOT: Duration = Duration::from_secs(180);
/// An ordinary step (a few shell commands).
const STEP: Duration = Duration::from_secs(60);
/// How much data the storage step writes and reads back.
const STORAGE_MIB: u32 = 8;
/// The block layer's largest segment: no URB exceeds it when the USB core splits a
/// scatter-gather transfer.
const SEGMENT: u64 = 64 << 10;

/// What the vHOME guest saw of one server, for comparing the two.
#[derive(Debug, PartialEq)]
struct Seen {
    /// Per device: speed, configuration, descriptor hash and interfaces with their drivers.
    described: Vec<Vec<String>>,
}

#[test]
#[ignore = "boots QEMU guests; run with --ignored"]
fn virtio_usb_real_devices_from_stock_usbipd() -> Result<()> {
    scenario("virtio-real-usbipd", Server::Usbipd).map(|_| ())
}

#[test]
#[ignore = "boots QEMU guests; run with --ignored"]
fn virtio_usb_real_devices_from_hrh_exporter_match_stock_usbipd() -> Result<()> {
    let ours = scenario("virtio-real-exporter", Server::HrhExporter)?;
    let stock = scenario("virtio-real-usbipd-again", Server::Usbipd)?;
    assert_eq!(
        ours, stock,
        "the vHOME guest sees the devices differently through hrh-exporter and usbipd"
    );
    Ok(())
}

fn scenario(name: &str, server: Server) -> Result<Seen> {
    let mut config = HrhConfig::new(&format!("{name}-hrh")).storage_mib(16);
    if server == Server::HrhExporter {
        config = config.with_exporter();
    }
    let mut hrh = Hrh::boot(config)?;
    let devices = hrh.wait_ready(BOOT)?;
    let acm = find_device(&devices, "acm")?.clone();
    let storage = find_device(&devices, "storage")?.clone();
    let hid = find_device(&devices, "hid")?.clone();
    hrh.start_server(server)?;

    let url = |busid: &str| format!("tcp://127.0.0.1:{}/{busid}", hrh.port());
    let backend = Backend::spawn(
        &format!("{name}-backend"),
        [
            "--device".to_owned(),
            url(&acm.busid),
            "--device".to_owned(),
            url(&storage.busid),
            "--device".to_owned(),
            url(&hid.busid),
        ],
    )?;
    let mut vhome = boot_vhome(&format!("{name}-vhome"), &backend)?;
    vhome.wait_ready(BOOT)?;

    let mut described = Vec::new();
    for d in [&acm, &storage, &hid] {
        let (vid, pid) = d.id.split_once(':').context("id")?;
        vhome.check(&format!("enumerated {vid} {pid}"), STEP)?;
        vhome.check(&format!("wait_for 60 bound {vid} {pid}"), STEP)?;
        let out = vhome.check(&format!("describe {}", d.id), STEP)?;
        described.push(out.lines.clone());
    }
    let drivers = described.concat().join("\n");
    for driver in ["driver=cdc_acm", "driver=usb-storage", "driver=usbhid"] {
        ensure!(
            drivers.contains(driver),
            "{driver} is not bound:\n{drivers}"
        );
    }

    serial_both_ways(&mut hrh, &mut vhome)?;
    storage_round_trip(&mut hrh, &mut vhome)?;
    hid_both_ways(&mut hrh, &mut vhome)?;
    unplug_serial(&mut hrh, &mut vhome, &acm)?;

    check_console(vhome.guest()).context("the vHOME guest's console")?;
    let log = backend.log()?;
    ensure!(!log.contains("panicked"), "vusb-backend panicked:\n{log}");
    hrh.stop_server()?;
    ensure!(hrh.finish(STEP)? == 0, "the HRH's script failed");
    ensure!(vhome.finish(STEP)? == 0, "the vHOME guest's script failed");
    Ok(Seen { described })
}

fn serial_both_ways(hrh: &mut Hrh, vhome: &mut Remote) -> Result<()> {
    hrh.remote().check("serial_listen", STEP)?;
    vhome.check("serial_listen", STEP)?;
    vhome.check("serial_send to-the-hrh", STEP)?;
    hrh.remote()
        .check("serial_expect to-the-hrh 20", STEP)
        .context("a line written in the vHOME guest did not reach the gadget")?;
    hrh.remote().check("serial_send to-the-vhome", STEP)?;
    vhome
        .check("serial_expect to-the-vhome 20", STEP)
        .context("a line written by the gadget did not reach the vHOME guest")?;
    Ok(())
}

fn storage_round_trip(hrh: &mut Hrh, vhome: &mut Remote) -> Result<()> {
    hrh.remote().check("usbmon_start", STEP)?;
    let out = vhome.check(
        &format!("storage_roundtrip {STORAGE_MIB}"),
        Duration::from_secs(180),
    )?;
    let urbs = hrh.remote().check("usbmon_bulk_out", STEP)?;
    whole_transfers(&urbs)?;
    let written = out.required("WRITTEN-SHA256")?.to_owned();
    let read = out.required("READBACK-SHA256")?;
    ensure!(written == read, "read back {read}, wrote {written}");
    let image = hrh
        .remote()
        .check(&format!("storage_sha256 {STORAGE_MIB}"), STEP)?;
    let image = image.required("IMAGE-SHA256")?;
    ensure!(
        image == written,
        "the gadget's backing file holds {image}, the vHOME guest wrote {written}"
    );
    Ok(())
}

/// usb-storage hands the controller each write as one scatter-gather URB (120 KiB at high
/// speed), which must reach the gadget whole: split into one URB per segment, as the USB core
/// does for a controller without scatter-gather, no URB could exceed the block layer's 64 KiB
/// segments, and each page would cost a round trip to the HRH.
fn whole_transfers(urbs: &Output) -> Result<()> {
    let number = |key: &str| -> Result<u64> {
        let value = urbs.required(key)?;
        value.parse().with_context(|| format!("{key}={value}"))
    };
    let (count, bytes, max) = (
        number("BULK-OUT-URBS")?,
        number("BULK-OUT-BYTES")?,
        number("BULK-OUT-MAX")?,
    );
    let written = u64::from(STORAGE_MIB) << 20;
    ensure!(
        bytes >= written,
        "the gadget was given {bytes} bytes in bulk OUT URBs, the vHOME guest wrote {written}"
    );
    ensure!(
        max > SEGMENT && bytes / count > SEGMENT,
        "the vHOME guest's writes reached the gadget in {count} URBs averaging {} bytes, \
         the largest {max}: split at the block layer's {SEGMENT}-byte segments",
        bytes / count
    );
    eprintln!(
        "the gadget was written in {count} URBs averaging {} bytes, the largest {max}",
        bytes / count
    );
    Ok(())
}

fn hid_both_ways(hrh: &mut Hrh, vhome: &mut Remote) -> Result<()> {
    vhome.check("hid_listen", STEP)?;
    hrh.remote().check("hid_send 1122334455667788", STEP)?;
    let out = vhome.check("hid_received 20", STEP)?;
    ensure!(
        out.required("HID-RECEIVED")? == "1122334455667788",
        "the vHOME guest received {}",
        out.text()
    );
    hrh.remote().check("hid_listen", STEP)?;
    vhome.check("hid_send 8877665544332211", STEP)?;
    let out = hrh.remote().check("hid_received 20", STEP)?;
    ensure!(
        out.required("HID-RECEIVED")? == "8877665544332211",
        "the gadget received {}",
        out.text()
    );
    Ok(())
}

fn unplug_serial(hrh: &mut Hrh, vhome: &mut Remote, acm: &HrhDevice) -> Result<()> {
    let (vid, pid) = acm.id.split_once(':').context("id")?;
    hrh.remote().check("sh /hrh-gadgets.sh down acm", STEP)?;
    vhome
        .check(&format!("wait_for 60 no_usb_device {vid} {pid}"), STEP)
        .context("the unplugged serial gadget stayed in the vHOME guest")?;
    vhome.check("wait_for 20 test ! -e /dev/ttyACM0", STEP)?;
    // The disk, on its own connection, carries on.
    vhome.check(
        "dd if=/dev/sda of=/dev/null bs=64k count=16 iflag=direct",
        STEP,
    )?;
    Ok(())
}
