//! The guest driver builds, warning-free, against Debian 13's own kernel headers (in the
//! trixie chroot, with trixie's compiler) and against the 6.12 kernel Debian 12 also ships
//! (linux-6.12 in bookworm's security updates), besides the 6.1 kernel the test guests boot.
//! Run with the VM tests (`--run-ignored only`), as they may install headers packages.

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
        "no linux-headers-6.12.*-amd64 installed or known to apt (apt-get update, with bookworm-security in apt's sources)",
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

#[test]
#[ignore = "builds a kernel module in the trixie chroot; run via scripts/test.sh"]
fn the_driver_builds_against_debian_13s_kernel_headers() -> Result<()> {
    let out_dir = tempfile::tempdir()?;
    let script = workspace_root().join("guest-images/build-virtio-usb-hcd-debian13.sh");
    let out = Command::new(&script)
        .arg(out_dir.path())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "the driver does not build against Debian 13's headers:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kernel = std::fs::read_to_string(out_dir.path().join("kernel"))?;
    let kernel = kernel.trim();
    assert!(
        kernel.starts_with("6.12.") && kernel.ends_with("+deb13-amd64"),
        "built for {kernel}, not a Debian 13 kernel"
    );
    let info = Command::new("modinfo")
        .args(["-F", "vermagic"])
        .arg(out_dir.path().join("virtio_usb_hcd.ko"))
        .output()?;
    let vermagic = String::from_utf8_lossy(&info.stdout);
    assert!(
        vermagic.starts_with(kernel),
        "vermagic {vermagic}, kernel {kernel}"
    );
    Ok(())
}
