//! The workspace's binaries as guest files: each with the shared libraries it links, so that
//! it runs in the busybox initramfs of any test guest.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::exporter::workspace_binary;

/// The workspace binary `name` as `/usr/bin/<name>` in a guest, with the shared libraries
/// `ldd` names (the loader too, so that they match), as (path in the guest, contents). The
/// binary is stripped of its debug information when `objcopy` is at hand: the archive is held
/// in guest memory.
pub fn workspace_binary_files(name: &str) -> Result<Vec<(String, Vec<u8>)>> {
    binary_files(&workspace_binary(name)?, name)
}

/// A program of the host (`perf`, say) as `/usr/bin/<its name>` in a guest, with its shared
/// libraries, as [`workspace_binary_files`] does. The guest runs Debian's kernel and the
/// host Debian's user space, so the host's tools for that kernel work there.
pub fn host_binary_files(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} names no program", path.display()))?;
    binary_files(path, name)
}

fn binary_files(binary: &Path, name: &str) -> Result<Vec<(String, Vec<u8>)>> {
    binary_files_at(binary, &format!("/usr/bin/{name}"))
}

/// The program at `binary` as `guest_path` in a guest, with its shared libraries, as
/// [`workspace_binary_files`] does: another build of a workspace binary next to the usual
/// one, say.
pub fn binary_files_at(binary: &Path, guest_path: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let stripped = tempfile::NamedTempFile::new()?;
    let contents = match Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(stripped.path())
        .status()
    {
        Ok(status) if status.success() => std::fs::read(stripped.path())?,
        _ => std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?,
    };
    files.push((guest_path.to_owned(), contents));

    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (package libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout))? {
        let contents = std::fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        files.push((lib, contents));
    }
    Ok(files)
}

/// The library paths in `ldd` output: "name => /path (addr)" and, for the loader,
/// "/path (addr)". A library ldd cannot find is an error, not a guest that fails later.
fn ldd_paths(output: &str) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            let path = rest.split_whitespace().next().unwrap_or("");
            if path.starts_with('/') {
                paths.push(path.to_owned());
            } else if !name.starts_with("linux-vdso") {
                return Err(anyhow!("ldd cannot find {name}: {line}"));
            }
        } else if line.starts_with('/') {
            paths.push(line.split_whitespace().next().unwrap_or(line).to_owned());
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibusb-1.0.so.0 => /lib/x86_64-linux-gnu/libusb-1.0.so.0 (0x00007f01)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            ldd_paths(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libusb-1.0.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(ldd_paths("\tlibudev.so.1 => not found\n").is_err());
    }
}
