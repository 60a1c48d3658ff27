//! The vHOME disk image operators boot (`guest-images/build-vhome-image.sh`), end to end: booted
//! the way operators boot it, through `scripts/vhome-qemu.sh` (with the trixie QEMU of the
//! test bed), attached to a `vusb-backend` that imports the simulated sensor from an
//! `hrh-exporter` on the host. Over ssh with the image's key, the test checks that the
//! virtio-usb driver was installed by DKMS and loaded by itself when the device appeared, that
//! the sensor enumerated behind it with cdc_acm bound and streams its readings, and that the
//! guest powers off cleanly.
//!
//! Run with `cargo build --workspace && cargo nextest run -p vusb-vm-tests --run-ignored only
//! -E 'test(/vhome_image/)'` (or through scripts/test.sh). The first build of the image takes a
//! few minutes and needs root and a Debian mirror; scripts/test.sh does it before the tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vusb_vm_tests::qemu_chroot::ensure_chroot;
use vusb_vm_tests::{
    free_port, log_dir, tail_lines, vhome_image, workspace_root, Backend, Exporter, VhomeImage,
};

/// A full systemd boot under TCG takes one to three minutes; this leaves room for a loaded
/// machine.
const BOOT: Duration = Duration::from_secs(300);

/// How long one ssh command may take.
const SSH_COMMAND: Duration = Duration::from_secs(60);

/// Guest memory, all of it shared with the backend.
const GUEST_MIB: u32 = 1024;

/// The simulated sensor's USB ID (hrh-exporter's `--simulate sensor`).
const SENSOR_ID: &str = "1209:0001";

/// The driver's DKMS module and kernel module names (guest-images/virtio-usb-hcd/dkms.conf).
const DKMS_MODULE: &str = "virtio-usb-hcd/1.0";
const KERNEL_MODULE: &str = "virtio_usb_hcd";

/// Lines on the guest's console that mean the kernel hit a bug.
const KERNEL_TROUBLE: &[&str] = &["Call Trace:", "BUG:", "Oops:", "general protection fault"];

/// QEMU started through `scripts/vhome-qemu.sh`; killed when dropped, its console log printed
/// then (the test runner shows it when the test failed).
struct Vm {
    child: Child,
    /// QEMU's stdin, held open: the serial console and monitor read from it.
    _stdin: ChildStdin,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Vm {
    fn boot(name: &str, image: &VhomeImage, socket: &Path, ssh_port: u16) -> Result<Vm> {
        let log = log_dir()?.join(format!("{name}.console.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let root = workspace_root();
        let mut cmd = Command::new("bash");
        cmd.arg(root.join("scripts/vhome-qemu.sh"))
            .arg("--disk")
            .arg(&image.disk)
            .arg("--socket")
            .arg(socket)
            .args(["--ssh-port", &ssh_port.to_string()])
            .args(["--memory", &GUEST_MIB.to_string()])
            // Software emulation unless VUSB_ACCEL says otherwise: where /dev/kvm exists, it
            // does not always run guests (nested virtualisation), and QEMU then stops dead.
            .arg("--accel")
            .arg(std::env::var("VUSB_ACCEL").unwrap_or_else(|_| "tcg".to_owned()))
            .arg("--qemu")
            .arg(root.join("scripts/qemu-chroot.sh"))
            // The image is the machine-wide cache: the guest's writes go to a temporary file.
            .args(["--", "-snapshot"])
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out);
        eprintln!("starting {cmd:?}\nconsole log: {}", log.display());
        let mut child = cmd.spawn().context("starting scripts/vhome-qemu.sh")?;
        let stdin = child.stdin.take().context("QEMU's stdin")?;
        Ok(Vm {
            child,
            _stdin: stdin,
            log,
            exited: None,
        })
    }

    /// QEMU's exit status, once it has exited.
    fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("polling QEMU")?;
        }
        Ok(self.exited)
    }

    fn console_tail(&self) -> String {
        format!(
            "console log {} (last lines):\n{}",
            self.log.display(),
            tail_lines(&self.log, 60)
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.exit_status(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        eprintln!(
            "---- vHOME guest: {} ----\n---- end of the console ----",
            self.console_tail()
        );
    }
}

/// Runs `command` in the guest as root over ssh with the image's key, within [`SSH_COMMAND`].
struct Ssh {
    key: PathBuf,
    port: u16,
}

impl Ssh {
    fn command(&self, command: &str, timeout: Duration) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", &timeout.as_secs().to_string(), "ssh"])
            .arg("-i")
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &self.port.to_string(),
                "root@127.0.0.1",
                command,
            ])
            .stdin(Stdio::null());
        cmd
    }

    /// The command's stdout; fails with its stderr when it fails.
    fn run(&self, command: &str) -> Result<String> {
        let output = self
            .command(command, SSH_COMMAND)
            .output()
            .context("running ssh (is openssh-client installed?)")?;
        if !output.status.success() {
            bail!(
                "`{command}` in the guest failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether a trivial command succeeds (sshd is up and takes the key).
    fn answers(&self) -> bool {
        self.command("true", Duration::from_secs(30))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Waits until the guest's sshd lets root in, failing early if QEMU exits.
fn wait_for_ssh(vm: &mut Vm, ssh: &Ssh) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if let Some(status) = vm.exit_status()? {
            bail!(
                "QEMU exited ({status}) before ssh answered\n{}",
                vm.console_tail()
            );
        }
        if ssh.answers() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > BOOT {
            bail!(
                "ssh on port {} did not let root in within {BOOT:?}\n{}",
                ssh.port,
                vm.console_tail()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs `script` in the guest every 2 s until it succeeds or `timeout` passes; returns its
/// output, or the last failure.
fn poll_guest(ssh: &Ssh, script: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match ssh.run(script) {
            Ok(out) => return Ok(out),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn vhome_image_boots_and_reads_the_sensor_through_the_dkms_driver() -> Result<()> {
    let name = "vhome_image_boots_and_reads_the_sensor_through_the_dkms_driver";
    let started = Instant::now();
    let note = |what: &str| eprintln!("[{:5.1} s] {what}", started.elapsed().as_secs_f64());
    if Command::new("ssh").arg("-V").output().is_err() {
        bail!("ssh not found: install openssh-client (scripts/install-deps.sh does)");
    }
    let image = vhome_image()?;
    ensure_chroot()?;
    note("image and QEMU chroot ready");

    let exporter = Exporter::spawn(name, ["--simulate", "sensor"])?;
    let backend = Backend::spawn(name, ["--device", &exporter.device_url("1-1")])?;
    let port = free_port()?;
    let ssh = Ssh {
        key: image.key.clone(),
        port,
    };
    let mut vm = Vm::boot(name, &image, backend.socket_path(), port)?;

    let boot = wait_for_ssh(&mut vm, &ssh)?;
    note(&format!(
        "ssh answered {:.0} s after QEMU started",
        boot.as_secs_f64()
    ));

    // The image's own identity and health.
    let kernel = ssh.run("uname -r")?.trim().to_owned();
    assert_eq!(ssh.run("hostname")?.trim(), "vhome");
    let state = ssh.run("systemctl is-system-running --wait || true")?;
    let failed = ssh.run("systemctl --failed --plain --no-legend")?;
    note(&format!("boot finished: {}", state.trim()));
    assert!(
        failed.trim().is_empty(),
        "units failed in the guest (system state {}):\n{failed}",
        state.trim()
    );

    // Installed through DKMS for the running kernel, from where DKMS puts modules.
    let status = ssh.run(&format!("dkms status -m {DKMS_MODULE} -k {kernel}"))?;
    assert!(
        status.contains(&format!("{DKMS_MODULE}, {kernel}")) && status.contains("installed"),
        "dkms does not show {DKMS_MODULE} installed for {kernel}:\n{status}"
    );
    let module_path = ssh.run(&format!("modinfo -n {KERNEL_MODULE}"))?;
    assert!(
        module_path.contains("/updates/dkms/"),
        "modprobe finds {KERNEL_MODULE} at {} rather than DKMS's directory",
        module_path.trim()
    );

    // Loaded by udev for the device (nobody ran modprobe), and bound to it.
    poll_guest(
        &ssh,
        &format!(
            "test -d /sys/module/{KERNEL_MODULE} && \
             ls -d /sys/bus/virtio/drivers/{KERNEL_MODULE}/virtio*"
        ),
        Duration::from_secs(30),
    )
    .with_context(|| format!("{KERNEL_MODULE} is not loaded and bound to a virtio device"))?;

    // The sensor behind the virtio-usb controller, with cdc_acm on its interface.
    let (vid, pid) = SENSOR_ID.split_once(':').expect("VID:PID");
    let sensor = poll_guest(
        &ssh,
        &format!(
            r#"for d in /sys/bus/usb/devices/*; do
                 [ "$(cat "$d/idVendor" 2>/dev/null):$(cat "$d/idProduct" 2>/dev/null)" = "{vid}:{pid}" ] || continue
                 path=$(readlink -f "$d")
                 echo "$path" | grep -q '/virtio[0-9]*/usb[0-9]*/' || {{ echo "$path is not behind virtio-usb" >&2; exit 1; }}
                 test -c /dev/ttyACM0 || {{ echo "no /dev/ttyACM0" >&2; exit 1; }}
                 echo "path=$path"
                 echo "tty-driver=$(basename "$(readlink /sys/class/tty/ttyACM0/device/driver)")"
                 exit 0
               done
               echo "no USB device {vid}:{pid}; lsusb says:" >&2; lsusb >&2; exit 1"#
        ),
        Duration::from_secs(60),
    )
    .context("the sensor did not enumerate in the guest")?;
    note(&format!("sensor enumerated: {}", sensor.trim()));
    assert!(
        sensor.contains("tty-driver=cdc_acm"),
        "ttyACM0 is not driven by cdc_acm: {sensor}"
    );

    // Raw and without echo, or the line discipline would send the readings back.
    let readings = ssh.run(
        "stty -F /dev/ttyACM0 raw -echo && { timeout 6 cat /dev/ttyACM0 || true; } | tr -d '\\r'",
    )?;
    let count = readings
        .lines()
        .filter(|l| l.starts_with("reading ") && l.trim_end().ends_with(" C"))
        .count();
    note(&format!("{count} readings in 6 s"));
    assert!(
        count >= 3,
        "only {count} `reading N: T C` lines from /dev/ttyACM0 in 6 s:\n{readings}"
    );

    // A clean shutdown: QEMU exits by itself, successfully.
    let _ = ssh
        .command("systemctl poweroff", SSH_COMMAND)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = vm.exit_status()? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!(
                "QEMU still runs 120 s after poweroff\n{}",
                vm.console_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    note(&format!("QEMU exited after poweroff: {status}"));
    assert!(status.success(), "QEMU exited with {status} after poweroff");

    let console = std::fs::read_to_string(&vm.log).context("reading the console log")?;
    if let Some(line) = console
        .lines()
        .find(|l| KERNEL_TROUBLE.iter().any(|t| l.contains(t)))
    {
        bail!(
            "the guest kernel reported trouble: {line}\n{}",
            vm.console_tail()
        );
    }
    Ok(())
}
