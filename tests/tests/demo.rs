//! The README's demo, run as a newcomer runs it: `scripts/demo.sh` must show the simulated
//! sensor's readings inside a booted guest, through hrh-exporter, vusb-backend and the
//! guest's virtio-usb driver, and must leave nothing behind when interrupted with Ctrl-C.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vusb_vm_tests::{log_dir, workspace_root};

/// The first run builds release binaries and images; later ones find them cached.
const DEMO: Duration = Duration::from_secs(900);

/// The demo with its output collected line by line as it comes.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    log: PathBuf,
}

impl Demo {
    fn start(name: &str, seconds: u32) -> Result<Demo> {
        let mut child = Command::new(workspace_root().join("scripts/demo.sh"))
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, as a shell job on a terminal has: Ctrl-C goes to the group.
            .process_group(0)
            .spawn()
            .context("starting scripts/demo.sh")?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Demo {
            child,
            lines,
            seen: Vec::new(),
            log: log_dir()?.join(format!("{name}.log")),
        })
    }

    /// Collects output until a line contains `pattern`.
    fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(pattern) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "no line with {pattern:?} within {timeout:?}; the demo printed:\n{}",
                    self.text()
                ),
            }
        }
    }

    /// Waits for the demo to exit; returns its exit code and collects the rest of its output.
    fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The readers end with the pipes.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "the demo did not exit within {timeout:?}; it printed:\n{}",
                    self.text()
                );
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.log, self.text());
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions; the group is the demo's,
            // created by this test.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

#[test]
#[ignore = "boots a QEMU guest; run with --ignored"]
fn demo_shows_the_sensor_readings_inside_the_guest() -> Result<()> {
    let mut demo = Demo::start("demo", 6)?;
    let code = demo.wait_exit(DEMO)?;
    let text = demo.text();
    ensure!(code == Some(0), "the demo exited with {code:?}:\n{text}");
    let readings = demo
        .seen
        .iter()
        .filter(|l| l.starts_with("[guest]   reading "))
        .count();
    ensure!(
        readings >= 3,
        "{readings} readings in 6 s inside the guest:\n{text}"
    );
    ensure!(
        demo.seen
            .iter()
            .any(|l| l.starts_with("[guest] USB device 1209:0001")
                && l.ends_with("(driver virtio_usb_hcd)")),
        "the guest did not list the sensor on a virtio-usb controller:\n{text}"
    );
    ensure!(
        text.contains("driver of the serial port: cdc_acm"),
        "cdc_acm did not bind the sensor:\n{text}"
    );
    Ok(())
}

/// The directory the demo works in, from its "serves it on DIR/vusb.sock" line.
fn work_dir(line: &str) -> Result<PathBuf> {
    let socket = line
        .split_whitespace()
        .find(|w| w.ends_with("/vusb.sock"))
        .with_context(|| format!("no socket path in {line:?}"))?;
    Ok(Path::new(socket)
        .parent()
        .context("socket without a directory")?
        .to_path_buf())
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
#[ignore = "boots a QEMU guest; run with --ignored"]
fn demo_leaves_nothing_behind_on_ctrl_c() -> Result<()> {
    let mut demo = Demo::start("demo-ctrl-c", 600)?;
    let line = demo.wait_for("starting hrh-exporter", DEMO)?;
    let listen = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .with_context(|| format!("no address in {line:?}"))?
        .to_owned();
    let line = demo.wait_for("serves it on", DEMO)?;
    let work = work_dir(&line)?;
    demo.wait_for("[guest]   reading ", Duration::from_secs(300))?;

    // What a terminal does on Ctrl-C: SIGINT to the foreground process group.
    // SAFETY: kill(2) has no memory-safety preconditions; the group is the demo's.
    let rc = unsafe { libc::kill(-(demo.child.id() as i32), libc::SIGINT) };
    ensure!(rc == 0, "kill(SIGINT) failed");
    let code = demo.wait_exit(Duration::from_secs(60))?;
    ensure!(
        code == Some(130),
        "exit code {code:?} after Ctrl-C:\n{}",
        demo.text()
    );

    // Everything it started is gone: QEMU and vusb-backend name the work directory on their
    // command lines, hrh-exporter its listening address. The directory is gone too.
    let needles = [work.display().to_string(), format!("--listen {listen}")];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = needles
            .iter()
            .flat_map(|n| processes_mentioning(n))
            .collect();
        if left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "still running after Ctrl-C:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(!work.exists(), "{} was left behind", work.display());
    Ok(())
}
