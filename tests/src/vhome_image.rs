//! The vHOME disk image operators boot: Debian 12 with the virtio-usb driver installed through
//! DKMS, built and cached machine-wide by `guest-images/build-vhome-image.sh`, booted with
//! `scripts/vhome-qemu.sh` and reached over ssh with the key the script generates.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};

use crate::util::run_build_script;

/// Where the image lives: `$VUSB_VHOME_DIR`, else `/var/cache/vusb/vhome` (the script's own
/// default, passed to it explicitly so that both agree).
pub fn image_dir() -> PathBuf {
    match std::env::var_os("VUSB_VHOME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("/var/cache/vusb/vhome"),
    }
}

/// The files of a built image.
#[derive(Debug, Clone)]
pub struct VhomeImage {
    /// The qcow2 disk. Boot it with `-snapshot` (or an overlay): it is the cache.
    pub disk: PathBuf,
    /// The private key root's `authorized_keys` in the image accepts.
    pub key: PathBuf,
}

/// Builds the image if it is missing or out of date (once per test process; the script
/// returns at once when its cache is up to date, and a lock inside it serialises concurrent
/// builds) and returns its files.
pub fn vhome_image() -> Result<VhomeImage> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let dir = image_dir();
    BUILT
        .get_or_init(|| {
            eprintln!("vHOME image: {}", dir.display());
            run_build_script(
                "guest-images/build-vhome-image.sh",
                &[&dir],
                "Building the image needs root, loop devices and a Debian mirror",
            )
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(VhomeImage {
        disk: dir.join("vhome.qcow2"),
        key: dir.join("vhome_ed25519"),
    })
}
