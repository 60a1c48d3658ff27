//! Harness for end-to-end tests that boot real Linux guests under QEMU.
//!
//! A guest is Debian's kernel with a busybox initramfs (built and cached by
//! `guest-images/build-test-initramfs.sh`) plus a per-test `/test.sh`. The script runs with
//! the stock Linux USB/IP client at hand and talks to daemons the test runs on the host, which
//! the guest reaches at 10.0.2.2 through QEMU user networking. The script prints marker lines
//! the test synchronises on; its exit code comes back through a final marker.
//!
//! Some tests boot two guests ([`hrh`]): one playing the Home Radio Head with real kernel USB
//! devices and a USB/IP server, one with the stock client. Their scripts serve shell commands
//! the test sends over the test channel ([`remote`]), so that the test can drive both in turn.
//!
//! `vusb-backend` reaches a guest as a virtio device over vhost-user ([`backend`]), which
//! needs the newer QEMU of [`qemu_chroot`].
//!
//! The vHOME disk image operators boot ([`vhome_image`](mod@vhome_image)) is a full Debian
//! system instead, reached over ssh.

pub mod assets;
pub mod backend;
pub mod binaries;
pub mod cpio;
pub mod exporter;
pub mod guest;
mod host_daemon;
pub mod hrh;
pub mod link;
pub mod linkbench;
pub mod qemu_chroot;
pub mod remote;
pub mod urbbench;
mod util;
pub mod vhome_guest;
pub mod vhome_image;

pub use assets::{guest_assets, GuestAssets};
pub use backend::{vhost_user_usb_args, Backend};
pub use binaries::workspace_binary_files;
pub use exporter::{image_head_sha256, pendrive_image, workspace_binary, Exporter};
pub use guest::{Guest, GuestConfig, HOST_ADDR};
pub use hrh::{boot_client, client_config, find_device, Hrh, HrhConfig, HrhDevice, Server};
pub use remote::{Output, Remote};
pub use util::{
    free_port, log_dir, set_log_tails, tail_lines, target_dir, wait_until, workspace_root,
};
pub use vhome_image::{vhome_image, VhomeImage};
