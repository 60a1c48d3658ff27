//! `vusb-backend`: see `vusb-backend --help` and docs/virtio-usb.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::info;
use vusb_backend::config::{Args, Frontend};
use vusb_backend::prefetch::Prefetch;
use vusb_backend::transfer::{PortLayout, Ports, UpcallSink};
use vusb_backend::usbip_client::UsbipClient;
use vusb_backend::usbredir::serve::{serve_forever, Listen};
use vusb_backend::vhost_user::VusbBackend;
use vusb_backend::virtio_usb::{Controller, Limits};
use vusb_backend::{daemon, upcalls};

fn main() {
    vusb_backend::init_logging();
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    // Before any thread exists, so every thread inherits the mask and the
    // signals reach only the waiter below.
    let signals = termination_signals();
    block(&signals).context("blocking termination signals")?;

    if let Some(dir) = args.socket_path.as_deref().and_then(Path::parent) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let socket = args.socket_path.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || exit_on_signal(&signals, socket))
        .context("starting the signal thread")?;

    if args.frontend == Frontend::Usbredir {
        let at = match (args.listen, args.socket_path) {
            (Some(addr), _) => Listen::Tcp(addr),
            (None, Some(path)) => Listen::Unix(path),
            (None, None) => unreachable!("clap requires --socket-path or --listen"),
        };
        return serve_forever(&args.devices[0], &at, args.interrupt_prefetch);
    }
    let Some(socket) = args.socket_path else {
        unreachable!("validate() requires --socket-path for vhost-user")
    };
    let layout = PortLayout::for_devices(args.devices.len());
    let (sender, receiver) = upcalls::channel().context("creating the upcall channel")?;
    for (i, d) in args.devices.iter().enumerate() {
        info!(
            device = %d,
            usb2_port = layout.port_for(i, vusb_backend::transfer::Speed::High),
            usb3_port = layout.port_for(i, vusb_backend::transfer::Speed::Super),
            "importing"
        );
    }
    let ports: Arc<dyn Ports> = if args.interrupt_prefetch == 0 {
        let sink: Arc<dyn UpcallSink> = sender;
        Arc::new(
            UsbipClient::start(args.devices.clone(), layout, sink)
                .context("starting the USB/IP client")?,
        )
    } else {
        // The layer sits between the controller and the client both ways.
        let prefetch = Prefetch::new(args.interrupt_prefetch.into(), sender);
        let sink: Arc<dyn UpcallSink> = prefetch.clone();
        let client = UsbipClient::start(args.devices.clone(), layout, sink)
            .context("starting the USB/IP client")?;
        prefetch.set_ports(Arc::new(client));
        prefetch
    };
    let limits = Limits {
        max_transfer: args.max_transfer,
        max_iso_packets: if args.no_iso {
            0
        } else {
            usbip_proto::limits::MAX_ISO_PACKETS
        },
        iso: !args.no_iso,
    };
    let mut backend = VusbBackend::new(Controller::new(ports, layout, limits), receiver);
    backend.set_iso_offered(!args.no_iso);
    daemon::serve_forever(backend, &socket)
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own; zeroed memory
    // is a valid starting value for sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

fn block(set: &libc::sigset_t) -> std::io::Result<()> {
    // SAFETY: the set is initialised and the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP, removes the socket (if a Unix one)
/// and exits.
fn exit_on_signal(set: &libc::sigset_t, socket: Option<PathBuf>) {
    let mut signal = 0;
    // SAFETY: the set is initialised; sigwait writes the signal number into
    // our local.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    if rc == 0 {
        info!(signal, "exiting");
    }
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    std::process::exit(0);
}
