//! vusb-backend's usbredir front-end with Debian 12's own QEMU (7.2): the remote dongle on an
//! emulated xHCI controller through `usb-redir`, a stock guest kernel, no driver of ours.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only -E
//! 'binary(usbredir_frontend)'` (or through scripts/test.sh).

use std::time::Duration;

use anyhow::{bail, Result};
use vusb_vm_tests::hrh::{
    check_tone_reached, find_device, wav_sample_signs, CLIENT_FUNCTIONS, COMMON_FUNCTIONS,
    QEMU_AUDIO_ID,
};
use vusb_vm_tests::vhome_guest::check_console;
use vusb_vm_tests::{
    image_head_sha256, pendrive_image, Backend, Exporter, Guest, GuestConfig, Hrh, HrhConfig,
    Server,
};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);

const FUNCTIONS: &str = r#"
# usb_device VID PID: the sysfs directory of the USB device with these IDs.
usb_device() {
    for _d in /sys/bus/usb/devices/*; do
        [ -f "$_d/idVendor" ] || continue
        [ "$(cat "$_d/idVendor")" = "$1" ] && [ "$(cat "$_d/idProduct")" = "$2" ] &&
            { echo "$_d"; return 0; }
    done
    return 1
}
has_usb_device() { usb_device "$1" "$2" >/dev/null; }
# The stock xHCI driver; the guest's init loads drivers only for hot-plugged devices.
modprobe xhci-pci || fail "modprobe xhci-pci failed"
"#;

/// Boots a stock guest with the backend's device on an emulated xHCI, runs `script` (after
/// the helpers) until it prints `DONE`, and checks its exit and the console.
fn run_guest(
    name: &str,
    backend: &mut Backend,
    script: &str,
    during: impl FnOnce(&mut Guest, &mut Backend) -> Result<()>,
) -> Result<Guest> {
    let script = format!("{COMMON_FUNCTIONS}\n{FUNCTIONS}\n{script}\necho DONE\n");
    let config = GuestConfig::new(name, &script)
        .memory_mib(512)
        .qemu_args(backend.usbredir_qemu_args("redir0"));
    let mut guest = Guest::boot(config)?;
    during(&mut guest, backend)?;
    guest.wait_for_line("DONE", BOOT + Duration::from_secs(120))?;
    let code = guest.wait_exit(Duration::from_secs(30))?;
    check_console(&guest)?;
    if code != 0 {
        bail!("the guest's script failed with exit code {code}");
    }
    Ok(guest)
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn usbredir_sensor_reads_on_an_emulated_xhci() -> Result<()> {
    let name = "usbredir_sensor_reads_on_an_emulated_xhci";
    let exporter = Exporter::spawn(name, ["--simulate", "sensor"])?;
    let mut backend = Backend::spawn_usbredir(name, ["--device", &exporter.device_url("1-1")])?;
    let script = r#"
        wait_for 60 has_usb_device 1209 0001 || fail "the sensor did not appear"
        d=$(usb_device 1209 0001)
        grep -q xhci-hcd "/sys/bus/usb/devices/usb$(cat "$d/busnum")/manufacturer" ||
            fail "the sensor is not on the emulated xHCI"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        reading=$(timeout 10 head -n 1 /dev/ttyACM0)
        [ -n "$reading" ] || fail "no reading from the sensor"
        echo "READING=$reading"
    "#;
    let guest = run_guest(name, &mut backend, script, |_, _| Ok(()))?;
    let reading = guest.marker("READING").unwrap_or_default();
    assert!(
        reading.contains(" C"),
        "not a temperature reading: {reading:?}"
    );
    Ok(())
}

/// Bulk transfers both ways: 4 MiB written to the pendrive and read back, the same bytes in
/// the image on the exporter's side.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn usbredir_pendrive_write_read_back() -> Result<()> {
    let name = "usbredir_pendrive_write_read_back";
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 64 << 20)?;
    let exporter = Exporter::spawn(
        name,
        [
            "--simulate".to_owned(),
            format!("pendrive={}", image.display()),
        ],
    )?;
    let mut backend = Backend::spawn_usbredir(name, ["--device", &exporter.device_url("1-1")])?;
    let script = r#"
        wait_for 60 has_usb_device 1209 0002 || fail "the pendrive did not appear"
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not appear"
        dd if=/dev/urandom of=/tmp/data bs=64k count=64 2>/dev/null
        dd if=/tmp/data of=/dev/sda bs=64k oflag=direct conv=fsync 2>/dev/null || fail "write failed"
        dd if=/dev/sda of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null || fail "read failed"
        sum=$(sha256sum </tmp/data | cut -d' ' -f1)
        [ "$sum" = "$(sha256sum </tmp/back | cut -d' ' -f1)" ] || fail "read back other bytes"
        echo "SHA=$sum"
    "#;
    let guest = run_guest(name, &mut backend, script, |_, _| Ok(()))?;
    let on_disk = image_head_sha256(&image, 4 << 20)?;
    assert_eq!(guest.marker("SHA").as_deref(), Some(on_disk.as_str()));
    Ok(())
}

/// The backend killed and started again: QEMU's chardev reconnects, the device goes from the
/// guest and comes back as a new one, and reads again.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn usbredir_device_comes_back_after_a_backend_restart() -> Result<()> {
    let name = "usbredir_device_comes_back_after_a_backend_restart";
    let exporter = Exporter::spawn(name, ["--simulate", "sensor"])?;
    let mut backend = Backend::spawn_usbredir(name, ["--device", &exporter.device_url("1-1")])?;
    let script = r#"
        wait_for 60 has_usb_device 1209 0001 || fail "the sensor did not appear"
        before=$(cat "$(usb_device 1209 0001)/devnum")
        echo RESTART-BACKEND
        renumbered() { d=$(usb_device 1209 0001) && [ "$(cat "$d/devnum")" != "$before" ]; }
        wait_for 60 renumbered || fail "the sensor did not come back as a new device"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not come back"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        reading=$(timeout 10 head -n 1 /dev/ttyACM0)
        [ -n "$reading" ] || fail "no reading after the restart"
        echo "READING=$reading"
    "#;
    run_guest(name, &mut backend, script, |guest, backend| {
        guest.wait_for_line("RESTART-BACKEND", BOOT)?;
        backend.restart()?;
        guest.note("backend killed and started again");
        Ok(())
    })?;
    Ok(())
}

/// Isochronous OUT end to end: a real USB audio device (QEMU's usb-audio in the HRH guest,
/// exported by hrh-exporter through libusb) plays a tone from the stock guest's
/// snd-usb-audio, and the tone reaches the WAV file the HRH's QEMU writes.
#[test]
#[ignore = "boots QEMU guests; run via scripts/test.sh"]
fn usbredir_audio_plays_on_the_hrh_device() -> Result<()> {
    const SECONDS: u32 = 2;
    let name = "usbredir_audio_plays_on_the_hrh_device";
    let mut hrh = Hrh::boot(HrhConfig::new(name).with_exporter())?;
    let devices = hrh.wait_ready(BOOT)?;
    let audio = find_device(&devices, "audio")?.clone();
    hrh.start_server(Server::HrhExporter)?;
    let url = format!("tcp://127.0.0.1:{}/{}", hrh.port(), audio.busid);
    let mut backend = Backend::spawn_usbredir(name, ["--device", &url])?;
    let (vid, pid) = QEMU_AUDIO_ID.split_once(':').expect("vid:pid");
    let script = format!(
        r#"
        {CLIENT_FUNCTIONS}
        wait_for 60 has_usb_device {vid} {pid} || fail "the audio device did not appear"
        modprobe snd-pcm-oss || fail "modprobe snd-pcm-oss failed"
        wait_for 30 test -c /dev/dsp || fail "/dev/dsp did not appear"
        audio_play {SECONDS} 300
    "#
    );
    let guest = run_guest(name, &mut backend, &script, |_, _| Ok(()))?;
    assert_eq!(
        guest.marker("AUDIO-RC").as_deref(),
        Some("0"),
        "playing failed"
    );
    let wav = hrh.wav_path().to_path_buf();
    assert_eq!(
        hrh.finish(Duration::from_secs(60))?,
        0,
        "the HRH's script failed"
    );
    let (positive, _) = wav_sample_signs(&wav)?;
    check_tone_reached(positive, SECONDS, "usbredir")
}
