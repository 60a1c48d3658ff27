//! A newer QEMU than the host's, for the tests that need one (`vhost-user-test-device-pci`
//! appeared in QEMU 10.2; Debian 12 ships 7.2). It lives in a Debian trixie chroot with QEMU
//! from trixie-backports, built and cached machine-wide by `guest-images/build-qemu-chroot.sh`,
//! and runs through `scripts/qemu-chroot.sh`, which makes the paths on its command line work
//! unchanged inside the chroot.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use vusb_vm_tests::qemu_chroot::{qemu_chroot_command, shared_memory_args};
//! use vusb_vm_tests::GuestConfig;
//!
//! let config = GuestConfig::new("name", "echo hello")
//!     .qemu_command(qemu_chroot_command()?)
//!     .memory_mib(512)
//!     .qemu_args(shared_memory_args(512));
//! # let _ = config;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};

use crate::util::{run_build_script, workspace_root};

/// The oldest QEMU with `vhost-user-test-device-pci`.
pub const MIN_VERSION: (u32, u32) = (10, 2);

/// The command that runs the chroot's `qemu-system-x86_64`, for
/// [`GuestConfig::qemu_command`](crate::GuestConfig::qemu_command). Builds the chroot first
/// (once per test process; the script returns at once when its cache is up to date, and a lock
/// inside it serialises concurrent builds).
pub fn qemu_chroot_command() -> Result<Vec<OsString>> {
    ensure_chroot()?;
    Ok(vec![workspace_root()
        .join("scripts/qemu-chroot.sh")
        .into_os_string()])
}

/// QEMU arguments that give the guest `mib` MiB of shareable memory, the layout a vhost-user
/// backend needs to map the guest's memory: a memfd backend bound to the only NUMA node. `-m`
/// must name the same size ([`GuestConfig::memory_mib`](crate::GuestConfig::memory_mib)).
pub fn shared_memory_args(mib: u32) -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        "-numa".into(),
        "node,memdev=mem".into(),
    ]
}

/// Runs `guest-images/build-qemu-chroot.sh` once per process.
pub fn ensure_chroot() -> Result<()> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn build() -> Result<()> {
    run_build_script(
        "guest-images/build-qemu-chroot.sh",
        &[],
        "Building the chroot needs root and a Debian mirror",
    )
}

/// The `(major, minor)` of a `qemu-system-x86_64 --version` output.
pub fn parse_version(output: &str) -> Option<(u32, u32)> {
    let rest = output.split("version ").nth(1)?;
    let mut numbers = rest.split(|c: char| !c.is_ascii_digit());
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1~bpo13+1)\nCopyright …"
            ),
            Some((11, 1))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some((7, 2))
        );
        assert_eq!(parse_version("no version here"), None);
    }

    #[test]
    fn shared_memory_names_one_size() {
        let args = shared_memory_args(512);
        assert_eq!(args[1], "memory-backend-memfd,id=mem,size=512M,share=on");
        assert_eq!(args[3], "node,memdev=mem");
    }
}
