//! The guest driver builds, warning-free, against the 6.12 kernel Debian ships (Debian 13's
//! kernel series, packaged for Debian 12 in bookworm-backports), besides the 6.1 kernel the
//! test guests boot. Run with the VM tests (`--run-ignored only`), as it may install a
//! headers package.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use vusb_vm_tests::workspace_root;

/// The newest `linux-headers-6.12.*-amd64` installed, else the newest apt knows of.
fn kernel_6_12() -> Result<String> {
    let plain = |name: &str| {
        name.strip_prefix("linux-headers-")
            .filter(|k| k.starts_with("6.12.") && k.ends_with("-amd64"))
            .filter(|k| !k.ends_with("-cloud-amd64") && !k.ends_with("-rt-amd64"))
            .map(str::to_owned)
    };
    let newest = |mut ks: Vec<String>| {
        // 6.12.107+deb12-amd64: order by the patch level.
        ks.sort_by_key(|k| {
            k.split(['.', '+'])
                .nth(2)
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        });
        ks.pop()
    };
    let installed: Vec<String> = std::fs::read_dir("/usr/src")
        .map(|d| {
            d.flatten()
                .filter_map(|e| plain(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(k) = newest(installed) {
        return Ok(k);
    }
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", r"^linux-headers-6\.12\..*-amd64$"])
        .output()
        .context("running apt-cache")?;
    let known: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().and_then(plain))
        .collect();
    newest(known).context(
        "no linux-headers-6.12.*-amd64 installed or known to apt (enable bookworm-backports)",
    )
}

#[test]
#[ignore = "builds a kernel module, may install headers; run via scripts/test.sh"]
fn the_driver_builds_against_debians_6_12_kernel() -> Result<()> {
    let kernel = kernel_6_12()?;
    let out_dir = tempfile::tempdir()?;
    let script = workspace_root().join("guest-images/build-virtio-usb-hcd.sh");
    let out = Command::new(&script)
        .arg(&kernel)
        .arg(out_dir.path())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "the driver does not build against {kernel}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let module = out_dir.path().join("virtio_usb_hcd.ko");
    let info = Command::new("modinfo")
        .args(["-F", "vermagic"])
        .arg(&module)
        .output()?;
    let vermagic = String::from_utf8_lossy(&info.stdout);
    assert!(
        vermagic.starts_with(&kernel),
        "{} was built for {vermagic}, not {kernel}",
        Path::new(&module).display()
    );
    Ok(())
}
