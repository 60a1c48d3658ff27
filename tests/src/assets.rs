//! The guest kernel and base initramfs, built by `guest-images/build-test-initramfs.sh`.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};

use crate::util::{run_build_script, target_dir};

/// Paths of the cached guest assets.
#[derive(Debug, Clone)]
pub struct GuestAssets {
    /// Kernel image (a copy of Debian's vmlinuz).
    pub kernel: PathBuf,
    /// gzip'd newc initramfs whose `/init` runs `/test.sh`.
    pub initramfs: PathBuf,
}

/// The cache directory: `$VUSB_GUEST_IMAGES_DIR`, else `<target>/guest-images`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("VUSB_GUEST_IMAGES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => target_dir().join("guest-images"),
    }
}

/// Returns the guest assets, running the build script first. The script compares a hash of its
/// inputs with the cache's stamp and returns at once when nothing changed, so it runs once per
/// test process; a lock inside it serialises concurrent builds.
pub fn guest_assets() -> Result<&'static GuestAssets> {
    static ASSETS: OnceLock<std::result::Result<GuestAssets, String>> = OnceLock::new();
    ASSETS
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn build() -> Result<GuestAssets> {
    const SCRIPT: &str = "guest-images/build-test-initramfs.sh";
    let dir = cache_dir();
    run_build_script(
        SCRIPT,
        &[&dir],
        "It needs root and Debian's packages (it installs missing ones with apt-get)",
    )?;
    let assets = GuestAssets {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
    };
    for path in [&assets.kernel, &assets.initramfs] {
        if !path.is_file() {
            bail!("{SCRIPT} succeeded but {} is missing", path.display());
        }
    }
    Ok(assets)
}
