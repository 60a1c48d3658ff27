//! Running the workspace's `hrh-exporter` (the USB/IP server) on the host.

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::host_daemon::HostDaemon;
use crate::util::{free_port, target_dir};

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

/// A running `hrh-exporter` listening on 127.0.0.1 on a port of its own. Killed when dropped;
/// its log is then printed to stderr.
#[derive(Debug)]
pub struct Exporter {
    daemon: HostDaemon,
    port: u16,
}

impl Exporter {
    /// Starts `hrh-exporter --listen 127.0.0.1:<free port> <args>` and waits until the port
    /// accepts connections. Its output goes to `<target>/vm-test-logs/<name>.exporter.log`.
    pub fn spawn<I, S>(name: &str, args: I) -> Result<Exporter>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let port = free_port()?;
        let listen: [OsString; 2] = ["--listen".into(), format!("127.0.0.1:{port}").into()];
        let args = listen
            .into_iter()
            .chain(args.into_iter().map(|a| a.as_ref().to_owned()));
        let mut daemon = HostDaemon::spawn("hrh-exporter", name, "exporter", args)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        daemon.wait_ready(&format!("does not accept connections on {addr}"), || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })?;
        Ok(Exporter { daemon, port })
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
        self.daemon.log_path()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Kills it with SIGKILL, as a crash or power loss would, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.daemon.kill()
    }
}

/// An image for `hrh-exporter --simulate pendrive=IMAGE`: `dir/pendrive.img`, `size` bytes of
/// zeros (sparse, so large ones cost no disk).
pub fn pendrive_image(dir: &Path, size: u64) -> Result<PathBuf> {
    let path = dir.join("pendrive.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// The SHA-256, in lowercase hex as `sha256sum` prints it, of the first `len` bytes of the
/// image at `path`: what a guest wrote there, seen from the host.
pub fn image_head_sha256(path: &Path, len: u64) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;

    let mut head = vec![0u8; usize::try_from(len)?];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("reading {len} bytes of {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&head)))
}
