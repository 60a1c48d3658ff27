//! `disk write|read`: sequential throughput of a block device (the
//! pendrive), past the page cache with O_DIRECT, with every byte read
//! back checked against what the write put there.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::aligned::{AlignedBuf, DIRECT_IO_ALIGN};
use super::disk_pattern::{DiskPattern, SECTOR};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskOp {
    /// Write the pattern, then fsync.
    Write,
    /// Read and check the pattern.
    Read,
}

#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub op: DiskOp,
    pub device: PathBuf,
    /// Bytes to move, from offset 0.
    pub bytes: u64,
    /// Bytes per read or write call.
    pub block: usize,
    pub seed: u64,
    /// O_DIRECT; without it the page cache is flushed around the run
    /// instead (for file systems that refuse O_DIRECT).
    pub direct: bool,
}

/// What differs between the two operations.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpResult {
    Write {
        /// The closing fsync, included in `seconds`.
        fsync_seconds: f64,
    },
    Read {
        /// Blocks with at least one wrong sector; anything but 0 fails.
        mismatched_blocks: u64,
        /// Byte offset of the first wrong sector.
        first_mismatch_offset: Option<u64>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskResult {
    pub probe: &'static str,
    #[serde(flatten)]
    pub op: OpResult,
    pub device: String,
    pub direct: bool,
    pub seed: u64,
    pub block_bytes: usize,
    pub bytes: u64,
    /// Time inside the read/write calls (and the fsync): the device's
    /// time. Making and checking the data is left out, since TCG guests
    /// are slow at it and the device idles meanwhile.
    pub seconds: f64,
    /// The whole run, data making and checking included.
    pub wall_seconds: f64,
    /// `bytes / seconds / 10^6`.
    pub mb_per_s: f64,
}

impl DiskResult {
    /// Why the run counts as failed, if it does.
    pub fn failure(&self) -> Option<String> {
        match self.op {
            OpResult::Read {
                mismatched_blocks: n @ 1..,
                first_mismatch_offset,
            } => Some(format!(
                "{n} block(s) read back wrong, the first wrong sector at byte {}",
                first_mismatch_offset.unwrap_or_default()
            )),
            _ => None,
        }
    }
}

fn open(spec: &DiskSpec) -> Result<File> {
    let mut options = OpenOptions::new();
    // Never create: a mistyped device name must fail, not fill a file
    // in /dev (RAM) and report its speed.
    options
        .read(spec.op == DiskOp::Read)
        .write(spec.op == DiskOp::Write);
    if spec.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(&spec.device).with_context(|| {
        if spec.direct {
            format!(
                "cannot open {} with O_DIRECT (where the file system refuses O_DIRECT, \
                 --no-direct goes through the page cache instead)",
                spec.device.display()
            )
        } else {
            format!("cannot open {}", spec.device.display())
        }
    })
}

/// Drops the device's pages from the page cache (without O_DIRECT, so a
/// read comes from the device and not from memory).
fn drop_cache(file: &File, bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(bytes).unwrap_or(libc::off_t::MAX);
    // SAFETY: posix_fadvise on an open descriptor takes no pointer.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, len, libc::POSIX_FADV_DONTNEED) };
    match rc {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

fn io_context(spec: &DiskSpec, what: &str, offset: u64) -> String {
    let hint = if spec.direct {
        " (O_DIRECT needs the block size to be a multiple of the device's logical block size)"
    } else {
        ""
    };
    format!(
        "{what} {} at byte {offset} failed{hint}",
        spec.device.display()
    )
}

pub fn run(spec: &DiskSpec) -> Result<DiskResult> {
    if spec.block == 0 || !spec.block.is_multiple_of(SECTOR) {
        bail!("the block size must be a positive multiple of {SECTOR} bytes");
    }
    if !spec.bytes.is_multiple_of(SECTOR as u64) {
        bail!("the size must be a multiple of {SECTOR} bytes");
    }
    let mut file = open(spec)?;
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("cannot find the size of {}", spec.device.display()))?;
    if size < spec.bytes {
        bail!(
            "{} holds {size} bytes, fewer than the {} to move",
            spec.device.display(),
            spec.bytes
        );
    }
    let pattern = DiskPattern::new(spec.seed);
    let mut buf = AlignedBuf::zeroed(spec.block, DIRECT_IO_ALIGN);
    let started = Instant::now();
    let mut in_io = Duration::ZERO;
    let mut offset = 0u64;
    let op = match spec.op {
        DiskOp::Write => {
            while offset < spec.bytes {
                let len = spec.block.min((spec.bytes - offset) as usize);
                pattern.fill(offset, &mut buf[..len]);
                let t = Instant::now();
                file.write_all_at(&buf[..len], offset)
                    .with_context(|| io_context(spec, "writing", offset))?;
                in_io += t.elapsed();
                offset += len as u64;
            }
            let t = Instant::now();
            file.sync_all()
                .with_context(|| format!("fsync of {} failed", spec.device.display()))?;
            let fsync = t.elapsed();
            in_io += fsync;
            OpResult::Write {
                fsync_seconds: fsync.as_secs_f64(),
            }
        }
        DiskOp::Read => {
            if !spec.direct {
                drop_cache(&file, spec.bytes).context("cannot drop the page cache")?;
            }
            let mut mismatched_blocks = 0;
            let mut first_mismatch_offset = None;
            while offset < spec.bytes {
                let len = spec.block.min((spec.bytes - offset) as usize);
                let t = Instant::now();
                file.read_exact_at(&mut buf[..len], offset)
                    .with_context(|| io_context(spec, "reading", offset))?;
                in_io += t.elapsed();
                if let Some(bad) = pattern.first_mismatch(offset, &buf[..len]) {
                    mismatched_blocks += 1;
                    first_mismatch_offset.get_or_insert(bad);
                }
                offset += len as u64;
            }
            OpResult::Read {
                mismatched_blocks,
                first_mismatch_offset,
            }
        }
    };
    let seconds = in_io.as_secs_f64();
    Ok(DiskResult {
        probe: "disk",
        op,
        device: spec.device.display().to_string(),
        direct: spec.direct,
        seed: spec.seed,
        block_bytes: spec.block,
        bytes: spec.bytes,
        seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
        mb_per_s: if seconds > 0.0 {
            spec.bytes as f64 / seconds / 1e6
        } else {
            0.0
        },
    })
}
