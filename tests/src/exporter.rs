//! Running the workspace's `hrh-exporter` (the USB/IP server) on the host.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{free_port, log_dir, tail_lines, target_dir};

/// How long the exporter gets to accept connections after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Directory holding the workspace's binaries: `$VUSB_BIN_DIR`, else `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("VUSB_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => target_dir().join("debug"),
    }
}

/// Path of a workspace binary, or an error that says how to build it.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --workspace` first (or point VUSB_BIN_DIR at the \
             directory holding {name})",
            path.display()
        );
    }
    Ok(path)
}

/// A running `hrh-exporter` listening on 127.0.0.1 on a port of its own. Killed when dropped.
#[derive(Debug)]
pub struct Exporter {
    child: Child,
    port: u16,
    log_path: PathBuf,
    killed: bool,
}

impl Exporter {
    /// Starts `hrh-exporter --listen 127.0.0.1:<free port> <args>` and waits until the port
    /// accepts connections. Its output goes to `<target>/vm-test-logs/<name>.exporter.log`.
    pub fn spawn<I, S>(name: &str, args: I) -> Result<Exporter>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let binary = workspace_binary("hrh-exporter")?;
        let port = free_port()?;
        let log_path = log_dir()?.join(format!("{name}.exporter.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Plain text: the log is read in files, not on a terminal.
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut exporter = Exporter {
            child,
            port,
            log_path,
            killed: false,
        };
        exporter.wait_listening()?;
        Ok(exporter)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(self.failure(&format!("exited ({status}) while starting")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "does not accept connections on {addr} after {STARTUP_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How `vusb-backend --device` names the exported device `busid` of this exporter.
    pub fn device_url(&self, busid: &str) -> String {
        format!("tcp://127.0.0.1:{}/{busid}", self.port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it with SIGKILL, as a crash or power loss would, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.killed = true;
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("killing hrh-exporter")?;
        }
        self.child.wait().context("reaping hrh-exporter")?;
        Ok(())
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "hrh-exporter {what}\nlog: {}\nlast lines:\n{}",
            self.log_path.display(),
            tail_lines(&self.log_path, 30)
        )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // An exporter that died on its own during a test is worth a line in the report.
        let died = !self.killed && !self.is_running();
        let _ = self.kill();
        eprintln!(
            "---- hrh-exporter{}: log {} (last 30 lines) ----\n{}\n---- end of hrh-exporter ----",
            if died { " (had exited by itself!)" } else { "" },
            self.log_path.display(),
            tail_lines(&self.log_path, 30)
        );
    }
}
