//! vusb-backend: the ISP-side daemon that imports devices from USB/IP servers
//! and presents them to a QEMU guest as a virtio-usb host controller over
//! vhost-user (`docs/virtio-usb.md`).
//!
//! * [`transfer`]: the vocabulary between the device model and the devices;
//! * [`virtio_usb`]: the device model — the spec's layouts, descriptor
//!   chains, the controller's state — with no vhost plumbing;
//! * [`usbip_client`]: the USB/IP client engine that imports each device;
//! * [`usbredir`]: the usbredir front-end for QEMU's `usb-redir`, no I/O;
//! * [`vhost`]: the vhost-user backend gluing vrings to the model;
//! * [`remote`], [`config`]: naming devices and the command line;
//! * [`keeper`]: `vusb-keeper`, which holds QEMU's connection across
//!   back-end restarts.

pub mod config;
pub mod daemon;
pub mod keeper;
pub mod poll;
pub mod prefetch;
pub mod remote;
pub mod sim_driver;
pub mod transfer;
pub mod upcalls;
pub mod usbip_client;
pub mod usbredir;
pub mod vhost_user;
pub mod virtio_usb;

/// Logs to stderr at `RUST_LOG` (default `info`), in colour only on a
/// terminal: the daemons' logs usually end up in journald or a file.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
