//! A simulated USB flash drive: USB Mass Storage, Bulk-Only Transport, SCSI
//! transparent command set, backed by a disk image file.
//!
//! The layers are kept apart so that each can be tested without the others:
//! the Bulk-Only Transport state machine, the SCSI block device, and
//! [`BlockStorage`], the only place that touches the medium (an image file
//! here, memory in tests). Writes go straight to the
//! image with positioned I/O, so they are in the file as soon as the WRITE
//! command completes.

mod bot;
mod scsi;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use usbip_proto::SetupPacket;

use crate::descriptor::{self, EndpointType};
use crate::function::{Descriptors, Function, InResponse, Stall};

use bot::{BulkOnly, InAnswer};
use scsi::ScsiDisk;

pub use scsi::{BlockStorage, BLOCK_SIZE};

/// USB product id of the pendrive (under the shared vendor id 0x1209).
pub const PRODUCT_ID: u16 = 0x0002;

/// Bulk IN endpoint number (address 0x81).
const EP_IN: u8 = 1;
/// Bulk OUT endpoint number (address 0x02).
const EP_OUT: u8 = 2;

/// Class-specific requests of the Bulk-Only Transport (BOT §3).
const REQ_MASS_STORAGE_RESET: u8 = 0xff;
const REQ_GET_MAX_LUN: u8 = 0xfe;
/// bmRequestType of a class request to an interface, host-to-device.
const CLASS_INTERFACE_OUT: u8 = 0x21;
/// bmRequestType of a class request to an interface, device-to-host.
const CLASS_INTERFACE_IN: u8 = 0xa1;

/// Why an image cannot back a pendrive.
#[derive(Debug, thiserror::Error)]
pub enum PendriveError {
    /// The image file does not exist.
    #[error("pendrive image {} does not exist", path.display())]
    NotFound {
        /// The image's path as given.
        path: PathBuf,
    },
    /// The image is empty: a disk needs at least one block.
    #[error("pendrive image {} is empty", path.display())]
    Empty {
        /// The image's path as given.
        path: PathBuf,
    },
    /// The image's size is not a whole number of 512-byte blocks.
    #[error(
        "pendrive image {} is {size} bytes long, not a multiple of {BLOCK_SIZE}",
        path.display()
    )]
    NotBlockAligned {
        /// The image's path as given.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Opening or sizing the image failed.
    #[error("pendrive image {}: {source}", path.display())]
    Io {
        /// The image's path as given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A disk image file as a [`BlockStorage`].
#[derive(Debug)]
struct ImageFile {
    file: File,
    blocks: u64,
}

impl BlockStorage for ImageFile {
    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A simulated USB 2.0 high-speed flash drive (VID 0x1209, PID 0x0002):
/// one logical unit of [`BLOCK_SIZE`]-byte blocks, read-write.
pub struct Pendrive {
    bot: BulkOnly<ScsiDisk>,
    serial: String,
    blocks: u64,
}

impl std::fmt::Debug for Pendrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pendrive")
            .field("serial", &self.serial)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl Pendrive {
    /// Opens the image at `path` read-write. Its size must be a non-zero
    /// multiple of [`BLOCK_SIZE`]; a regular file or a block device will do.
    ///
    /// Nothing stops two pendrives, or another program, from using the same
    /// image at once; the file system on it would not survive that.
    pub fn open(path: &Path) -> Result<Pendrive, PendriveError> {
        let io_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                PendriveError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                PendriveError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error)?;
        // Seeking to the end sizes block devices too, whose metadata says 0.
        let size = file.seek(SeekFrom::End(0)).map_err(io_error)?;
        if size == 0 {
            return Err(PendriveError::Empty {
                path: path.to_owned(),
            });
        }
        if size % BLOCK_SIZE as u64 != 0 {
            return Err(PendriveError::NotBlockAligned {
                path: path.to_owned(),
                size,
            });
        }
        let serial = serial_for(path, size);
        let blocks = size / BLOCK_SIZE as u64;
        Ok(Self::with_storage(ImageFile { file, blocks }, &serial))
    }

    /// A pendrive over any medium, e.g. memory for a benchmark.
    ///
    /// `serial` becomes the USB serial number string and the SCSI unit
    /// serial number; the Bulk-Only Transport wants at least 12 upper-case
    /// hexadecimal digits there.
    pub fn with_storage(storage: impl BlockStorage + 'static, serial: &str) -> Pendrive {
        let blocks = storage.block_count();
        Pendrive {
            bot: BulkOnly::new(ScsiDisk::new(Box::new(storage), serial)),
            serial: serial.to_owned(),
            blocks,
        }
    }

    /// The USB serial number string.
    pub fn serial_number(&self) -> &str {
        &self.serial
    }

    /// Capacity in [`BLOCK_SIZE`]-byte blocks.
    pub fn block_count(&self) -> u64 {
        self.blocks
    }
}

/// A stable serial number for an image: 16 hex digits of an FNV-1a hash of
/// its absolute path and size, so the same image shows up as the same disk
/// in the guest across restarts while different images differ.
fn serial_for(path: &Path, size: u64) -> String {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in absolute
        .as_os_str()
        .as_bytes()
        .iter()
        .chain(&size.to_le_bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016X}")
}

impl Function for Pendrive {
    fn descriptors(&self) -> Descriptors {
        // Mass storage, SCSI transparent command set, Bulk-Only Transport.
        let class = [0x08, 0x06, 0x50];
        let interface = descriptor::interface(0, 2, class);
        let ep_in = descriptor::endpoint(0x80 | EP_IN, EndpointType::Bulk, 512, 0);
        let ep_out = descriptor::endpoint(EP_OUT, EndpointType::Bulk, 512, 0);
        Descriptors {
            device: descriptor::device([0, 0, 0], PRODUCT_ID, 0x0100),
            configuration: descriptor::configuration(1, &[&interface, &ep_in, &ep_out]),
            strings: descriptor::strings("Simulated pendrive", &self.serial),
        }
    }

    fn control(&mut self, setup: &SetupPacket, _data_out: &[u8]) -> Result<Vec<u8>, Stall> {
        // Both requests address interface 0 with wValue 0 (BOT §3.1, §3.2).
        if setup.value != 0 || setup.index != 0 {
            return Err(Stall);
        }
        match (setup.request_type, setup.request) {
            (CLASS_INTERFACE_OUT, REQ_MASS_STORAGE_RESET) if setup.length == 0 => {
                self.bot.reset();
                Ok(Vec::new())
            }
            // One logical unit: the highest LUN is 0.
            (CLASS_INTERFACE_IN, REQ_GET_MAX_LUN) if setup.length >= 1 => Ok(vec![0]),
            _ => Err(Stall),
        }
    }

    fn data_out(&mut self, ep: u8, data: &[u8]) -> Result<(), Stall> {
        if ep != EP_OUT {
            return Err(Stall);
        }
        self.bot.data_out(data).map_err(|_| Stall)
    }

    fn data_in(&mut self, ep: u8, max_len: usize) -> InResponse {
        if ep != EP_IN {
            return InResponse::Stall;
        }
        match self.bot.data_in(max_len) {
            InAnswer::Data(d) => InResponse::Data(d),
            InAnswer::Nak => InResponse::Nak,
            InAnswer::Stall => InResponse::Stall,
        }
    }

    fn set_configuration(&mut self, _value: u8) {
        // The endpoints start over, and so does the transport.
        self.bot.reset();
    }

    fn reset(&mut self) {
        self.bot.reset();
    }
}

#[cfg(test)]
mod tests;
