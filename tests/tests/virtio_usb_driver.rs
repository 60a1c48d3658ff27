//! The guest's own virtio-usb host controller driver (`guest-images/virtio-usb-hcd`) end to
//! end: simulated dongles exported by `hrh-exporter` on the host, imported by `vusb-backend`,
//! presented to a QEMU guest as the virtio-usb device of `docs/virtio-usb.md`, and driven
//! there by `virtio_usb_hcd` with the guest's ordinary class drivers (cdc_acm, usb-storage)
//! on top. The guest has no USB/IP client in the path: vhci-hcd is loaded by the image's
//! /init but never attaches anything, and every test checks that the devices hang off the
//! virtio device in sysfs.
//!
//! Every test fails when the guest's console shows an oops, a BUG, a WARNING or a call trace.
//!
//! Run with `cargo build --workspace && cargo nextest run -p vusb-vm-tests --run-ignored only
//! -E 'test(/virtio_usb_driver/)'` (or through scripts/test.sh).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vusb_vm_tests::vhome_guest::{check_console, vhome_config};
use vusb_vm_tests::{
    image_head_sha256, log_dir, pendrive_image, wait_until, workspace_binary, Backend, Exporter,
    Guest,
};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);

const MIB: u64 = 1024 * 1024;

/// The simulated dongles' USB IDs (hrh-exporter's `--simulate` kinds).
const SENSOR_ID: &str = "1209:0001";
const PENDRIVE_ID: &str = "1209:0002";
const LOOPBACK_ID: &str = "1209:0003";

/// The exporter's and the backend's view of one simulated dongle.
enum Dongle<'a> {
    Sensor,
    Pendrive(&'a Path),
    Loopback,
}

impl Dongle<'_> {
    fn simulate_arg(&self) -> String {
        match self {
            Dongle::Sensor => "sensor".into(),
            Dongle::Pendrive(image) => format!("pendrive={}", image.display()),
            Dongle::Loopback => "loopback".into(),
        }
    }
}

/// The host side: an exporter with `dongles` (bus ids 1-1, 1-2, … in order) and a backend
/// importing all of them (device N on root-hub port N).
struct Host {
    exporter: Exporter,
    backend: Backend,
}

impl Host {
    fn start(name: &str, dongles: &[Dongle<'_>]) -> Result<Host> {
        Self::launch(name, dongles, false)
    }

    /// The same with the backend behind `vusb-keeper`, so that it can be restarted.
    fn start_kept(name: &str, dongles: &[Dongle<'_>]) -> Result<Host> {
        Self::launch(name, dongles, true)
    }

    fn launch(name: &str, dongles: &[Dongle<'_>], kept: bool) -> Result<Host> {
        let exporter_args = dongles
            .iter()
            .flat_map(|d| ["--simulate".to_owned(), d.simulate_arg()]);
        let exporter = Exporter::spawn(name, exporter_args)?;
        let backend_args: Vec<String> = (1..=dongles.len())
            .flat_map(|i| {
                [
                    "--device".to_owned(),
                    exporter.device_url(&format!("1-{i}")),
                ]
            })
            .collect();
        let backend = if kept {
            Backend::spawn_kept(name, backend_args)?
        } else {
            Backend::spawn(name, backend_args)?
        };
        Ok(Host { exporter, backend })
    }

    /// Boots a guest attached to the backend that runs `script` after the helpers.
    fn boot(&self, name: &str, script: &str, env: &[(&str, String)]) -> Result<Guest> {
        let mut config = vhome_config(name, &self.backend, script)?;
        for (key, value) in env {
            config = config.env(key, value);
        }
        Guest::boot(config)
    }
}

/// Waits for the script's exit, checks its code and the console.
fn finish(guest: &mut Guest) -> Result<()> {
    let code = guest.wait_exit(Duration::from_secs(30))?;
    check_console(guest)?;
    if code != 0 {
        bail!("the guest's script failed with exit code {code}");
    }
    Ok(())
}

fn assert_enumerated(guest: &Guest, ids: &[&str]) {
    let lines = guest.markers("ENUMERATED");
    for id in ids {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{id} "))),
            "{id} did not enumerate behind the virtio-usb controller: {lines:#?}"
        );
    }
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn virtio_usb_driver_sensor_streams_readings_and_echoes() -> Result<()> {
    let name = "virtio_usb_driver_sensor_streams_readings_and_echoes";
    // Two devices, so that a second port is exercised too.
    let host = Host::start(name, &[Dongle::Sensor, Dongle::Loopback])?;
    let script = r#"
        load_hcd
        enumerated 1209 0001
        enumerated 1209 0003
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        # Nothing open: the controller must leave the vCPU alone. Root-hub status URBs
        # complete in the high-priority softirq; a port reporting a change the hub driver
        # never clears has them complete tens of thousands of times a second.
        hi_softirqs() { awk '/HI:/ { print $2 }' /proc/softirqs; }
        before=$(hi_softirqs)
        sleep 2
        echo "IDLE-HI-SOFTIRQS=$(( $(hi_softirqs) - before ))"
        echo "ACM-DRIVER=$(basename "$(readlink /sys/class/tty/ttyACM0/device/driver)")"
        # Raw and without echo, or the line discipline would send the readings back.
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        cat /dev/ttyACM0 >/tmp/acm.out &
        cat_pid=$!
        sleep 1
        token="echo-$(cat /proc/sys/kernel/random/uuid)"
        printf '%s\n' "$token" >/dev/ttyACM0 || fail "writing to /dev/ttyACM0 failed"
        readings() { grep -cE 'reading [0-9]+: -?[0-9]+(\.[0-9]+)? C' /tmp/acm.out; }
        done_reading() { [ "$(readings)" -ge 3 ] && grep -q "$token" /tmp/acm.out; }
        wait_for 15 done_reading
        echo "READINGS=$(readings)"
        if grep -q "$token" /tmp/acm.out; then echo ECHOED=yes; else echo ECHOED=no; fi
        tr -d '\r' </tmp/acm.out | head -n 20 | sed 's/^/ACM: /'
        # Closing the tty kills cdc_acm's pending reads, which the device holds: they come
        # back only through a CANCEL. A lost unlink would leave cat stuck in close().
        kill "$cat_pid"
        cat_gone() { ! kill -0 "$cat_pid" 2>/dev/null; }
        wait_for 15 cat_gone || fail "cat did not exit: closing /dev/ttyACM0 hangs"
        echo CLOSED
        # And the port still works afterwards.
        timeout 10 head -n 2 /dev/ttyACM0 >/tmp/acm2.out
        grep -q 'reading' /tmp/acm2.out && echo REOPENED=yes
        echo SENSOR-DONE
    "#;
    let mut guest = host.boot(name, script, &[])?;
    guest.wait_for_line("SENSOR-DONE", BOOT)?;
    finish(&mut guest)?;

    assert_enumerated(&guest, &[SENSOR_ID, LOOPBACK_ID]);
    assert_eq!(guest.marker("ACM-DRIVER").as_deref(), Some("cdc_acm"));
    let idle_softirqs: u64 = guest
        .marker("IDLE-HI-SOFTIRQS")
        .context("no IDLE-HI-SOFTIRQS marker")?
        .parse()?;
    assert!(
        idle_softirqs < 500,
        "{idle_softirqs} high-priority softirqs in 2 idle seconds: the root hubs are polled in a loop"
    );
    let readings: u32 = guest
        .marker("READINGS")
        .context("no READINGS marker")?
        .parse()?;
    assert!(readings >= 3, "only {readings} readings within ~15 s");
    assert_eq!(
        guest.marker("ECHOED").as_deref(),
        Some("yes"),
        "the line written to /dev/ttyACM0 did not come back"
    );
    assert!(
        guest.test_lines().iter().any(|l| l == "CLOSED"),
        "closing /dev/ttyACM0 did not finish"
    );
    assert_eq!(
        guest.marker("REOPENED").as_deref(),
        Some("yes"),
        "no readings after reopening /dev/ttyACM0"
    );
    // The pending reads went back through controlq CANCELs (the driver's debug messages).
    let log = std::fs::read_to_string(guest.log_path())?;
    assert!(
        log.contains("cancelling request"),
        "closing the tty sent no CANCEL"
    );
    drop(host);
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn virtio_usb_driver_pendrive_write_read_back() -> Result<()> {
    const DATA_MIB: u64 = 16;
    let name = "virtio_usb_driver_pendrive_write_read_back";
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 64 * MIB)?;
    let host = Host::start(name, &[Dongle::Pendrive(&image)])?;
    let script = r#"
        dd if=/dev/urandom of=/tmp/data bs=1M count="$DATA_MIB" 2>/dev/null || fail "no random data"
        want=$(sha256sum /tmp/data | cut -d' ' -f1)
        load_hcd
        enumerated 1209 0002
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not appear"
        echo "SDA-SECTORS=$(cat /sys/block/sda/size)"
        echo "DISK-DRIVER=$(basename "$(readlink "$(readlink -f /sys/block/sda/device)/../../../driver")")"
        dd if=/tmp/data of=/dev/sda bs=1M conv=fsync 2>/dev/null || fail "writing /dev/sda failed"
        echo 3 >/proc/sys/vm/drop_caches
        got=$(dd if=/dev/sda bs=1M count="$DATA_MIB" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
        echo "DATA-SHA256=$want"
        echo "READBACK-SHA256=$got"
        [ "$want" = "$got" ] || fail "data read back from /dev/sda differs from what was written"
        echo PENDRIVE-DONE
    "#;
    let started = Instant::now();
    let mut guest = host.boot(name, script, &[("DATA_MIB", DATA_MIB.to_string())])?;
    guest.wait_for_line("SDA-SECTORS=", BOOT)?;
    guest.wait_for_line("PENDRIVE-DONE", Duration::from_secs(120))?;
    finish(&mut guest)?;
    guest.note(&format!(
        "boot to done took {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    assert_enumerated(&guest, &[PENDRIVE_ID]);
    assert_eq!(guest.marker("DISK-DRIVER").as_deref(), Some("usb-storage"));
    assert_eq!(
        guest.marker("SDA-SECTORS").as_deref(),
        Some((64 * MIB / 512).to_string().as_str()),
        "the guest sees a disk of the wrong size"
    );
    // What the guest wrote reached the image on the host.
    let guest_hash = guest
        .marker("DATA-SHA256")
        .context("no DATA-SHA256 marker")?;
    assert_eq!(
        image_head_sha256(&image, DATA_MIB * MIB)?,
        guest_hash,
        "the image's first {DATA_MIB} MiB are not what the guest wrote"
    );
    drop(host);
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn virtio_usb_driver_exporter_loss_unplugs_and_its_return_replugs() -> Result<()> {
    let name = "virtio_usb_driver_exporter_loss_unplugs_and_its_return_replugs";
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 256 * MIB)?;
    let dongles = [Dongle::Sensor, Dongle::Pendrive(&image)];
    let mut host = Host::start(name, &dongles)?;
    let script = r#"
        load_hcd
        enumerated 1209 0001
        enumerated 1209 0002
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not appear"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        cat /dev/ttyACM0 >/dev/null 2>&1 &
        before=$(sectors_read sda)
        dd if=/dev/sda of=/dev/null bs=64k iflag=direct >/tmp/dd.log 2>&1 &
        dd_pid=$!
        flowing() { [ $(($(sectors_read sda) - before)) -ge 1024 ]; }
        wait_for 30 flowing || fail "dd did not read 512 KiB within 30 s"
        kill -0 "$dd_pid" 2>/dev/null || fail "dd ended before the exporter went away"
        echo DD-RUNNING
        dd_ended() { ! kill -0 "$dd_pid" 2>/dev/null; }
        wait_for 60 dd_ended || fail "dd still running 60 s after the exporter went away"
        echo DD-ENDED
        wait_for 30 no_usb_device 1209 0001 || fail "the sensor is still there"
        wait_for 30 no_usb_device 1209 0002 || fail "the pendrive is still there"
        wait_for 10 sh -c '! test -e /dev/sda' || fail "/dev/sda is still there"
        wait_for 10 sh -c '! test -e /dev/ttyACM0' || fail "/dev/ttyACM0 is still there"
        # With nothing plugged in, the root hub suspends; a CONNECT has to wake it up.
        rh=$(ls -d /sys/bus/virtio/devices/virtio*/usb* | head -n1)
        rh_suspended() { [ "$(cat "$rh/power/runtime_status")" = suspended ]; }
        if wait_for 10 rh_suspended; then echo RH-SUSPENDED=yes; else echo RH-SUSPENDED=no; fi
        echo DEVICES-GONE
        # The exporter comes back at the same address; the backend imports the devices
        # again and they come back as new ones.
        enumerated 1209 0001
        enumerated 1209 0002
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not come back"
        dd if=/dev/sda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null ||
            fail "cannot read /dev/sda after the replug"
        echo REPLUGGED
        # Empty or not, the controller goes away at once.
        timeout 30 rmmod virtio_usb_hcd || fail "rmmod virtio_usb_hcd failed"
        echo RMMOD-DONE
    "#;
    let mut guest = host.boot(name, script, &[])?;
    guest.wait_for_line("DD-RUNNING", BOOT)?;
    let port = host.exporter.port();
    host.exporter.kill()?;
    guest.note("hrh-exporter killed with SIGKILL");
    let killed_at = Instant::now();
    guest.wait_for_line("DEVICES-GONE", Duration::from_secs(90))?;
    let elapsed = killed_at.elapsed();
    let _exporter = restart_exporter(name, port, &dongles)?;
    guest.note("hrh-exporter started again on the same port");
    guest.wait_for_line("REPLUGGED", Duration::from_secs(90))?;
    guest.wait_for_line("RMMOD-DONE", Duration::from_secs(40))?;
    finish(&mut guest)?;

    let enumerated = guest.markers("ENUMERATED");
    for id in [SENSOR_ID, PENDRIVE_ID] {
        let times = enumerated
            .iter()
            .filter(|l| l.starts_with(&format!("{id} ")))
            .count();
        assert_eq!(
            times, 2,
            "{id} did not enumerate before and after: {enumerated:#?}"
        );
    }
    assert_eq!(
        guest.marker("RH-SUSPENDED").as_deref(),
        Some("yes"),
        "the idle root hub did not suspend, so waking it up went untested"
    );
    // Removal plus the guest's own waits; generous for TCG.
    if elapsed > Duration::from_secs(60) {
        bail!("the guest needed {elapsed:?} after the exporter died to drop its devices");
    }
    let log = host.backend.log()?;
    assert!(
        log.contains("connection lost"),
        "the backend did not notice the exporter going away:\n{log}"
    );
    Ok(())
}

/// A paused and resumed VM (QEMU's `stop` and `cont`, as `virsh suspend`/`resume` do): QEMU
/// stops the vhost-user rings and starts them again where they were, and the backend, which
/// dropped its requests when they stopped, finds them resumed past 0. It tells the driver
/// (docs/virtio-usb.md §7.1), which gives back what was in flight and resets the device.
/// Nothing hangs, nothing oopses, and the disk and the sensor work again.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn virtio_usb_driver_recovers_from_a_vm_pause() -> Result<()> {
    let name = "virtio_usb_driver_recovers_from_a_vm_pause";
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 256 * MIB)?;
    let mut host = Host::start(name, &[Dongle::Sensor, Dongle::Pendrive(&image)])?;
    let monitor_dir = tempfile::Builder::new().prefix("vusb-qmp-").tempdir()?;
    let monitor = monitor_dir.path().join("qmp.sock");
    let monitor_args = [
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", monitor.display()),
    ];
    recover_with_traffic_running(name, &mut host, &monitor_args, |guest, _| {
        qmp(&monitor, "stop")?;
        guest.note("VM stopped (QMP stop)");
        std::thread::sleep(Duration::from_secs(2));
        qmp(&monitor, "cont")?;
        guest.note("VM resumed (QMP cont)");
        Ok(())
    })
}

/// The backend killed (as a crash would) and started again while the guest reads the disk
/// and the sensor. QEMU is connected to vusb-keeper, which brings the new backend to where
/// QEMU left the device; the new backend finds the rings further on than that, and tells the
/// driver (§7.1), which resets the device. QEMU never sees a disconnection (its generic
/// vhost-user device cannot reconnect), the guest lives on, and the disk and the sensor work
/// again.
#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn virtio_usb_driver_survives_a_backend_restart() -> Result<()> {
    let name = "virtio_usb_driver_survives_a_backend_restart";
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 256 * MIB)?;
    let mut host = Host::start_kept(name, &[Dongle::Sensor, Dongle::Pendrive(&image)])?;
    recover_with_traffic_running(name, &mut host, &[], |guest, host| {
        host.backend.restart()?;
        guest.note("backend killed and started again");
        Ok(())
    })?;
    let again = host.backend.restarted_log(1)?;
    assert!(
        again.contains("asking it to reset the device"),
        "the restarted backend did not ask for a reset:\n{again}"
    );
    let keeper = host.backend.keeper_log()?.unwrap_or_default();
    assert!(
        keeper.contains("brought back to the front-end's setup"),
        "the keeper did not restore the backend:\n{keeper}"
    );
    Ok(())
}

/// Boots a guest reading the pendrive and the sensor, runs `disrupt` while the data flows, and
/// checks the driver recovers through RESTARTED: what was in flight fails, the device is reset,
/// and the disk and the sensor work again, with no watchdog reset.
fn recover_with_traffic_running(
    name: &str,
    host: &mut Host,
    qemu_args: &[String],
    disrupt: impl FnOnce(&mut Guest, &mut Host) -> Result<()>,
) -> Result<()> {
    let script = r#"
        load_hcd
        enumerated 1209 0001
        enumerated 1209 0002
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not appear"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        cat /dev/ttyACM0 >/dev/null 2>&1 &
        before=$(sectors_read sda)
        dd if=/dev/sda of=/dev/null bs=64k iflag=direct >/tmp/dd.log 2>&1 &
        dd_pid=$!
        flowing() { [ $(($(sectors_read sda) - before)) -ge 1024 ]; }
        wait_for 30 flowing || fail "dd did not read 512 KiB within 30 s"
        echo DISRUPT
        reset_done() { dmesg | grep -q "device reset; its devices come back"; }
        wait_for 120 reset_done || fail "the driver did not reset the device"
        echo DEVICE-RESET
        dd_ended() { ! kill -0 "$dd_pid" 2>/dev/null; }
        wait_for 60 dd_ended || fail "dd still hangs after the device reset"
        enumerated 1209 0001
        enumerated 1209 0002
        disk() { ls /sys/block | grep '^sd' | head -n1; }
        wait_for 60 sh -c 'ls /sys/block | grep -q "^sd"' || fail "no disk came back"
        dd if=/dev/$(disk) of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null ||
            fail "cannot read the disk after the device reset"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not come back"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        reading=$(timeout 10 head -n 1 /dev/ttyACM0)
        [ -n "$reading" ] || fail "no reading from the sensor after the device reset"
        echo "READING=$reading"
        echo BACK
    "#;
    let config = vhome_config(name, &host.backend, script)?.qemu_args(qemu_args.iter().cloned());
    let mut guest = Guest::boot(config)?;
    guest.wait_for_line("DISRUPT", BOOT)?;
    disrupt(&mut guest, host)?;
    guest.wait_for_line("DEVICE-RESET", Duration::from_secs(150))?;
    guest.wait_for_line("BACK", Duration::from_secs(180))?;
    finish(&mut guest)?;

    let log = std::fs::read_to_string(guest.log_path())?;
    assert!(
        log.contains("the device restarted and lost its transfers"),
        "the driver did not hear RESTARTED from the backend"
    );
    assert!(
        !log.contains("unanswered for 15 s"),
        "the driver recovered through its watchdog, not through RESTARTED"
    );
    Ok(())
}

/// Runs one QMP command on the QEMU monitor at `socket` and waits for its answer.
fn qmp(socket: &Path, command: &str) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to QEMU's monitor {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, r#"{{"execute":"{cmd}"}}"#)?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("QEMU closed its monitor during {cmd}");
            }
            if line.contains("\"error\"") {
                bail!("QMP {cmd}: {line}");
            }
            // Events come in between; the answer is the line with "return".
            if line.contains("\"return\"") {
                break;
            }
        }
    }
    Ok(())
}

/// Starts `hrh-exporter` again on `port`, where a killed one listened; the harness's
/// [`Exporter`] always picks a new port. Killed when dropped.
fn restart_exporter(name: &str, port: u16, dongles: &[Dongle<'_>]) -> Result<ChildGuard> {
    let log_path = log_dir()?.join(format!("{name}.exporter-again.log"));
    let log = File::create(&log_path)?;
    let child = Command::new(workspace_binary("hrh-exporter")?)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(
            dongles
                .iter()
                .flat_map(|d| ["--simulate".to_owned(), d.simulate_arg()]),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting hrh-exporter again")?;
    let guard = ChildGuard(child);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if !wait_until(Duration::from_secs(15), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    }) {
        bail!(
            "hrh-exporter did not listen on {addr} again; see {}",
            log_path.display()
        );
    }
    Ok(guard)
}

/// A child process killed and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn virtio_usb_driver_unloads_with_traffic_running_and_reloads() -> Result<()> {
    let name = "virtio_usb_driver_unloads_with_traffic_running_and_reloads";
    let dir = tempfile::tempdir()?;
    let image = pendrive_image(dir.path(), 256 * MIB)?;
    let host = Host::start(name, &[Dongle::Sensor, Dongle::Pendrive(&image)])?;
    let script = r#"
        load_hcd
        enumerated 1209 0001
        enumerated 1209 0002
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not appear"
        wait_for 30 test -c /dev/ttyACM0 || fail "/dev/ttyACM0 did not appear"
        stty -F /dev/ttyACM0 raw -echo || fail "stty failed"
        # An interrupt-style read that never ends on its own, and bulk reads.
        cat /dev/ttyACM0 >/dev/null 2>&1 &
        cat_pid=$!
        before=$(sectors_read sda)
        dd if=/dev/sda of=/dev/null bs=64k iflag=direct >/tmp/dd.log 2>&1 &
        dd_pid=$!
        flowing() { [ $(($(sectors_read sda) - before)) -ge 1024 ]; }
        wait_for 30 flowing || fail "dd did not read 512 KiB within 30 s"
        kill -0 "$dd_pid" 2>/dev/null || fail "dd ended before the unload"
        echo UNLOADING
        timeout 60 rmmod virtio_usb_hcd
        echo "RMMOD-RC=$?"
        dd_ended() { ! kill -0 "$dd_pid" 2>/dev/null; }
        wait_for 30 dd_ended || fail "dd still running 30 s after the unload"
        kill "$cat_pid" 2>/dev/null
        no_usb_device 1209 0001 || fail "the sensor outlived its controller"
        no_usb_device 1209 0002 || fail "the pendrive outlived its controller"
        [ -e /sys/bus/virtio/drivers/virtio_usb_hcd ] && fail "the driver is still registered"
        echo UNLOADED
        # The device re-announces its devices to the next driver (spec section 7).
        load_hcd
        enumerated 1209 0002
        wait_for 45 test -b /dev/sda || fail "/dev/sda did not come back"
        dd if=/dev/sda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null ||
            fail "cannot read /dev/sda after reloading"
        echo RELOADED
    "#;
    let mut guest = host.boot(name, script, &[])?;
    guest.wait_for_line("UNLOADING", BOOT)?;
    guest.wait_for_line("UNLOADED", Duration::from_secs(100))?;
    guest.wait_for_line("RELOADED", Duration::from_secs(90))?;
    finish(&mut guest)?;

    assert_eq!(
        guest.marker("RMMOD-RC").as_deref(),
        Some("0"),
        "rmmod failed or hung with transfers in flight"
    );
    // Two enumerations of the pendrive: before the unload and after the reload.
    let pendrives = guest
        .markers("ENUMERATED")
        .into_iter()
        .filter(|l| l.starts_with(PENDRIVE_ID))
        .count();
    assert_eq!(pendrives, 2, "the pendrive did not enumerate twice");
    // The unload happened with transfers in flight, which removal gave back.
    let log = std::fs::read_to_string(guest.log_path())?;
    let given_back: Vec<u32> = log
        .lines()
        .filter_map(|l| l.split("giving back ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        given_back.first().is_some_and(|&n| n > 0),
        "the unload found no transfers in flight to give back: {given_back:?}"
    );
    drop(host);
    Ok(())
}
