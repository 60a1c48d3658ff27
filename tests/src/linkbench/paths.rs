//! The five ways of reaching the HRH's devices, brought up one at a time against one HRH
//! guest, and taken down again so that the next one finds the devices as they were.
//!
//! ```text
//!  local          the HRH guest uses its own gadgets (no tunnel, no link)
//!  stock          usbipd + usbip-host ─ link ─ usbip attach + vhci-hcd in a client guest
//!  ours-virtio    hrh-exporter ─ link ─ vusb-backend ─ vhost-user ─ virtio_usb_hcd
//!  ours-usbredir  hrh-exporter ─ link ─ vusb-backend ─ usbredir ─ QEMU usb-redir (xHCI)
//!  mixed          usbipd + usbip-host ─ link ─ vusb-backend ─ vhost-user ─ virtio_usb_hcd
//! ```
//!
//! The client guest of `stock` reaches the HRH through its own user-mode network and the
//! host, as vusb-backend does from the host; `ours-usbredir` runs Debian's QEMU 7.2, the
//! virtio paths the chroot's QEMU 11 (vhost-user-test-device).

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::backend::Backend;
use crate::guest::{Guest, GuestConfig};
use crate::hrh::{client_config, find_device, Hrh, HrhDevice, Server, COMMON_FUNCTIONS};
use crate::remote::{Remote, SERVE_FUNCTION};
use crate::vhome_guest::vhome_config;

/// Booting a guest under TCG on a loaded machine.
const BOOT: Duration = Duration::from_secs(240);
/// A few shell commands.
const STEP: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    Local,
    Stock,
    OursVirtio,
    OursUsbredir,
    Mixed,
}

impl PathKind {
    pub const ALL: [PathKind; 5] = [
        PathKind::Local,
        PathKind::Stock,
        PathKind::OursVirtio,
        PathKind::OursUsbredir,
        PathKind::Mixed,
    ];

    /// Its name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Local => "local",
            PathKind::Stock => "stock",
            PathKind::OursVirtio => "ours-virtio",
            PathKind::OursUsbredir => "ours-usbredir",
            PathKind::Mixed => "mixed",
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// One line on what it is, for the report.
    pub fn about(self) -> &'static str {
        match self {
            PathKind::Local => "the HRH guest's own gadgets, no tunnel",
            PathKind::Stock => "usbipd + usbip-host → usbip attach, vhci-hcd in the guest",
            PathKind::OursVirtio => "hrh-exporter → vusb-backend → virtio_usb_hcd (vhost-user)",
            PathKind::OursUsbredir => "hrh-exporter → vusb-backend → QEMU usb-redir on xHCI",
            PathKind::Mixed => "usbipd + usbip-host → vusb-backend → virtio_usb_hcd",
        }
    }

    /// Whether it crosses the link (all but `local`).
    pub fn tunnelled(self) -> bool {
        self != PathKind::Local
    }

    /// The USB/IP server the HRH runs for it.
    fn server(self) -> Option<Server> {
        match self {
            PathKind::Local => None,
            PathKind::Stock | PathKind::Mixed => Some(Server::Usbipd),
            PathKind::OursVirtio | PathKind::OursUsbredir => Some(Server::HrhExporter),
        }
    }
}

/// The HRH devices the workloads use.
#[derive(Debug, Clone)]
pub struct Devices {
    pub acm: HrhDevice,
    pub storage: HrhDevice,
    pub hid: HrhDevice,
}

impl Devices {
    pub fn find(devices: &[HrhDevice]) -> Result<Self> {
        Ok(Self {
            acm: find_device(devices, "acm")?.clone(),
            storage: find_device(devices, "storage")?.clone(),
            hid: find_device(devices, "hid")?.clone(),
        })
    }

    fn all(&self) -> [&HrhDevice; 3] {
        [&self.acm, &self.storage, &self.hid]
    }
}

/// A path that is up.
#[derive(Debug)]
pub struct Attached {
    pub kind: PathKind,
    /// The guest the workloads run in; `None`: the HRH itself.
    pub guest: Option<Remote>,
    /// Kept until the path is taken down.
    backends: Vec<Backend>,
}

/// Where each workload finds its device, in whichever guest runs it: the pendrive is the
/// only disk, the serial port and the HID device the only ones of their kind.
pub const DISK: &str = "/dev/sda";
pub const TTY: &str = "/dev/ttyACM0";
pub const HIDRAW: &str = "/dev/hidraw0";

/// Succeeds once the class drivers have made the three device nodes.
const DEVICES_READY: &str =
    "sh -c 'test -b /dev/sda && test -c /dev/ttyACM0 && test -c /dev/hidraw0'";

/// Brings `kind` up against `hrh`, whose devices are `devices`, and waits until the guest
/// that runs the workloads has the three device nodes. `name` names the logs.
pub fn attach(kind: PathKind, hrh: &mut Hrh, devices: &Devices, name: &str) -> Result<Attached> {
    if let Some(server) = kind.server() {
        hrh.start_server(server)?;
    }
    let url = |d: &HrhDevice| format!("tcp://127.0.0.1:{}/{}", hrh.port(), d.busid);
    let mut backends = Vec::new();
    let mut guest = match kind {
        PathKind::Local => None,
        PathKind::Stock => {
            let config = with_probe(client_config(name, hrh.port()))?;
            let mut client = boot(config)?;
            for d in devices.all() {
                client.check(&format!("attach {} {}", d.busid, d.id), STEP)?;
            }
            Some(client)
        }
        PathKind::OursVirtio | PathKind::Mixed => {
            let args = devices
                .all()
                .into_iter()
                .flat_map(|d| ["--device".to_owned(), url(d)]);
            let backend = Backend::spawn(&format!("{name}-backend"), args)?;
            let script = format!("{SERVE_FUNCTION}\nload_hcd\nvusb_serve\n");
            let config = with_probe(vhome_config(name, &backend, &script)?)?;
            backends.push(backend);
            Some(boot(config)?)
        }
        PathKind::OursUsbredir => {
            let script = format!(
                "{COMMON_FUNCTIONS}\n{SERVE_FUNCTION}\n\
                 modprobe xhci-pci || fail \"modprobe xhci-pci failed\"\nvusb_serve\n"
            );
            let mut config = GuestConfig::new(name, &script).memory_mib(512);
            for (i, d) in devices.all().into_iter().enumerate() {
                let backend =
                    Backend::spawn_usbredir(&format!("{name}-backend{i}"), ["--device", &url(d)])?;
                config = config.qemu_args(backend.usbredir_qemu_args(&format!("redir{i}")));
                backends.push(backend);
            }
            Some(boot(with_probe(config)?)?)
        }
    };
    let runner = match guest.as_mut() {
        Some(g) => g,
        None => hrh.remote(),
    };
    if kind == PathKind::Local {
        runner.check("modprobe -a cdc-acm usb-storage sd_mod usbhid", STEP)?;
    }
    runner
        .check(
            &format!("wait_for 120 {DEVICES_READY}"),
            Duration::from_secs(150),
        )
        .with_context(|| format!("{}: the devices did not all appear", kind.name()))?;
    Ok(Attached {
        kind,
        guest,
        backends,
    })
}

/// Takes the path down: its guest shut down, its backends stopped, the HRH's server stopped.
pub fn detach(attached: Attached, hrh: &mut Hrh) -> Result<()> {
    let Attached {
        kind,
        guest,
        backends,
    } = attached;
    if let Some(guest) = guest {
        guest.finish(STEP)?;
    }
    drop(backends);
    if kind.server().is_some() {
        hrh.stop_server()?;
    }
    Ok(())
}

fn with_probe(config: GuestConfig) -> Result<GuestConfig> {
    config.workspace_binary("vusb-probe")
}

fn boot(config: GuestConfig) -> Result<Remote> {
    let mut remote = Remote::new(Guest::boot(config)?);
    remote.wait_ready(BOOT)?;
    Ok(remote)
}
