//! Running the workspace's `vusb-backend` on the host and attaching it to a guest.
//!
//! The backend imports USB/IP devices and serves them to QEMU over vhost-user as the
//! virtio-usb device of `docs/virtio-usb.md`. QEMU attaches it with
//! `vhost-user-test-device-pci`, which needs the chroot's QEMU
//! ([`qemu_chroot`](crate::qemu_chroot)) and shared guest memory
//! ([`shared_memory_args`](crate::qemu_chroot::shared_memory_args)):
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use vusb_vm_tests::qemu_chroot::{qemu_chroot_command, shared_memory_args};
//! use vusb_vm_tests::{Backend, Exporter, GuestConfig};
//!
//! let exporter = Exporter::spawn("name", ["--simulate", "sensor"])?;
//! let backend = Backend::spawn("name", ["--device", &exporter.device_url("1-1")])?;
//! let config = GuestConfig::new("name", "ls /sys/bus/virtio/devices")
//!     .qemu_command(qemu_chroot_command()?)
//!     .memory_mib(512)
//!     .qemu_args(shared_memory_args(512))
//!     .qemu_args(backend.qemu_args("vusb0"));
//! # let _ = config;
//! # Ok(())
//! # }
//! ```

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::host_daemon::HostDaemon;

/// The virtio device ID the backend presents by default (docs/virtio-usb.md §1.1).
pub const VIRTIO_USB_ID: u16 = 21;

/// Its virtqueues: requestq, controlq, eventq (§3).
pub const VIRTIO_USB_QUEUES: u32 = 3;

/// The size of its configuration space (§2).
pub const VIRTIO_USB_CONFIG_SIZE: u32 = 24;

/// The PCI device ID a modern (virtio 1.x) PCI transport gives it: 0x1040 + the device ID.
pub const VIRTIO_USB_PCI_DEVICE: u16 = 0x1040 + VIRTIO_USB_ID;

/// A running `vusb-backend` listening on a vhost-user socket of its own. Killed when dropped;
/// its log is then printed to stderr, which the test runner shows when the test failed.
#[derive(Debug)]
pub struct Backend {
    daemon: HostDaemon,
    /// The socket QEMU connects to: the backend's, or its keeper's.
    socket: PathBuf,
    /// The socket the backend listens on.
    backend_socket: PathBuf,
    /// `vusb-keeper`, holding QEMU's connection across backend restarts.
    keeper: Option<HostDaemon>,
    program: &'static str,
    name: String,
    args: Vec<OsString>,
    restarts: u32,
    _socket_dir: tempfile::TempDir,
}

impl Backend {
    /// Starts `vusb-backend --socket-path <socket> <args>` and waits until it listens on the
    /// socket. Its output goes to `<target>/vm-test-logs/<name>.backend.log`.
    pub fn spawn<I, S>(name: &str, args: I) -> Result<Backend>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start(name, "vusb-backend", &[], args, false)
    }

    /// `vusb-hostile FAULT` instead: vusb-backend's device with a deliberate fault (see
    /// `tests/src/bin/vusb-hostile.rs`), for the driver's bad-input tests.
    pub fn spawn_hostile<I, S>(name: &str, fault: &str, args: I) -> Result<Backend>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start(name, "vusb-hostile", &[fault], args, false)
    }

    /// `vusb-backend --frontend usbredir` for one device: QEMU attaches it with `usb-redir`
    /// ([`Backend::usbredir_qemu_args`]).
    pub fn spawn_usbredir<I, S>(name: &str, args: I) -> Result<Backend>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start(
            name,
            "vusb-backend",
            &["--frontend", "usbredir"],
            args,
            false,
        )
    }

    /// The same behind `vusb-keeper`: QEMU connects to the keeper, which holds the connection
    /// while the backend is restarted ([`Backend::restart`]). The keeper's log goes to
    /// `<name>.keeper.log`.
    pub fn spawn_kept<I, S>(name: &str, args: I) -> Result<Backend>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start(name, "vusb-backend", &[], args, true)
    }

    fn start<I, S>(
        name: &str,
        program: &'static str,
        leading: &[&str],
        args: I,
        kept: bool,
    ) -> Result<Backend>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        // A short directory of its own: socket paths are limited to 107 bytes, and QEMU's
        // option syntax gives commas a meaning.
        let socket_dir = tempfile::Builder::new()
            .prefix("vusb-backend-")
            .tempdir()
            .context("creating a directory for the vhost-user socket")?;
        let socket = socket_dir.path().join("vusb.sock");
        if socket.to_string_lossy().contains(',') {
            bail!("the socket path {} contains a comma", socket.display());
        }
        let backend_socket = if kept {
            socket_dir.path().join("backend.sock")
        } else {
            socket.clone()
        };
        let args: Vec<OsString> = leading
            .iter()
            .map(OsString::from)
            .chain(["--socket-path".into(), backend_socket.clone().into()])
            .chain(args.into_iter().map(|a| a.as_ref().to_owned()))
            .collect();
        let daemon = launch(program, name, "backend", &args, &backend_socket)?;
        let keeper = if kept {
            let keeper_args: [OsString; 4] = [
                "--socket-path".into(),
                socket.clone().into(),
                "--backend".into(),
                backend_socket.clone().into(),
            ];
            let mut keeper = HostDaemon::spawn("vusb-keeper", name, "keeper", keeper_args)?;
            keeper.wait_ready(&format!("does not listen on {}", socket.display()), || {
                is_listening(&socket)
            })?;
            Some(keeper)
        } else {
            None
        };
        Ok(Backend {
            daemon,
            socket,
            backend_socket,
            keeper,
            program,
            name: name.to_owned(),
            args,
            restarts: 0,
            _socket_dir: socket_dir,
        })
    }

    /// Kills the backend with SIGKILL, as a crash would, and starts it again with the same
    /// arguments; its log goes to `<name>.backend-again-<n>.log`. Without a keeper QEMU loses
    /// the device for good.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.kill()?;
        // The dead backend's socket would take connections nobody accepts.
        let _ = std::fs::remove_file(&self.backend_socket);
        self.restarts += 1;
        let suffix = format!("backend-again-{}", self.restarts);
        self.daemon = launch(
            self.program,
            &self.name,
            &suffix,
            &self.args,
            &self.backend_socket,
        )?;
        Ok(())
    }

    /// The log of the backend started by the `n`-th [`Backend::restart`].
    pub fn restarted_log(&self, n: u32) -> Result<String> {
        let path = crate::util::log_dir()?.join(format!("{}.backend-again-{n}.log", self.name));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// What the keeper has logged so far, if there is one.
    pub fn keeper_log(&self) -> Result<Option<String>> {
        self.keeper.as_ref().map(HostDaemon::log).transpose()
    }

    /// The vhost-user socket it listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// QEMU arguments that attach this backend to a guest (see [`vhost_user_usb_args`]).
    pub fn qemu_args(&self, id: &str) -> Vec<String> {
        vhost_user_usb_args(id, &self.socket)
    }

    /// QEMU arguments that put the usbredir backend's device on an emulated xHCI controller:
    /// `qemu-xhci` and `usb-redir` on a chardev that reconnects when the backend restarts.
    pub fn usbredir_qemu_args(&self, id: &str) -> Vec<String> {
        vec![
            "-device".into(),
            format!("qemu-xhci,id={id}-xhci"),
            "-chardev".into(),
            format!("socket,id={id},path={},reconnect=1", self.socket.display()),
            "-device".into(),
            format!("usb-redir,chardev={id},bus={id}-xhci.0"),
        ]
    }

    pub fn log_path(&self) -> &Path {
        self.daemon.log_path()
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> Result<String> {
        self.daemon.log()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.daemon.kill()
    }
}

/// Starts the backend and waits until it listens on `socket`.
fn launch(
    program: &'static str,
    name: &str,
    log_suffix: &str,
    args: &[OsString],
    socket: &Path,
) -> Result<HostDaemon> {
    let mut daemon = HostDaemon::spawn(program, name, log_suffix, args)?;
    // QEMU connects once, at start-up, and gives up at once when nobody listens; probing with
    // a connection of our own is no option either, as the backend would take it for QEMU's.
    // The kernel's table of Unix sockets tells without touching it.
    daemon.wait_ready(&format!("does not listen on {}", socket.display()), || {
        is_listening(socket)
    })?;
    Ok(daemon)
}

/// QEMU arguments that attach the vhost-user backend listening on `socket` as a virtio-usb
/// device (docs/virtio-usb.md §10). `id` names its chardev and must be unique within one
/// QEMU. The guest's memory must be shareable:
/// [`shared_memory_args`](crate::qemu_chroot::shared_memory_args).
pub fn vhost_user_usb_args(id: &str, socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id={id},path={}", socket.display()),
        "-device".into(),
        format!(
            "vhost-user-test-device-pci,chardev={id},virtio-id={VIRTIO_USB_ID},\
             num_vqs={VIRTIO_USB_QUEUES},config_size={VIRTIO_USB_CONFIG_SIZE}"
        ),
    ]
}

/// Whether a Unix socket bound to `path` is listening, from `/proc/net/unix`.
fn is_listening(path: &Path) -> Result<bool> {
    let table = std::fs::read_to_string("/proc/net/unix").context("reading /proc/net/unix")?;
    Ok(listening_in_table(&table, path))
}

/// Whether `table` (the format of `/proc/net/unix`) has a listening socket bound to `path`.
fn listening_in_table(table: &str, path: &Path) -> bool {
    // Lines: "Num RefCount Protocol Flags Type St Inode Path"; the flag __SO_ACCEPTCON
    // (0x10000) marks a socket that listen() was called on.
    const ACCEPTCON: u32 = 0x1_0000;
    // The path is the rest of the line, spaces and all.
    let suffix = format!(" {}", path.to_string_lossy());
    table.lines().skip(1).any(|line| {
        line.ends_with(&suffix)
            && line
                .split_whitespace()
                .nth(3)
                .and_then(|flags| u32::from_str_radix(flags, 16).ok())
                .is_some_and(|flags| flags & ACCEPTCON != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_args_name_the_socket_and_the_device_layout() {
        let args = vhost_user_usb_args("vusb0", Path::new("/tmp/x/vusb.sock"));
        assert_eq!(
            args,
            [
                "-chardev",
                "socket,id=vusb0,path=/tmp/x/vusb.sock",
                "-device",
                "vhost-user-test-device-pci,chardev=vusb0,virtio-id=21,num_vqs=3,config_size=24",
            ]
        );
        assert_eq!(VIRTIO_USB_PCI_DEVICE, 0x1055);
    }

    #[test]
    fn only_listening_sockets_count() {
        let table = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /tmp/a/vusb.sock
0000000000000000: 00000002 00000000 00000000 0001 01 1002 /tmp/b/vusb.sock
0000000000000000: 00000003 00000000 00000000 0001 03 1003
0000000000000000: 00000002 00000000 00010000 0001 01 1004 /x/tmp/c/vusb.sock
";
        assert!(listening_in_table(table, Path::new("/tmp/a/vusb.sock")));
        assert!(!listening_in_table(table, Path::new("/tmp/b/vusb.sock")));
        assert!(!listening_in_table(table, Path::new("/tmp/c/vusb.sock")));
    }
}
