//! A SCSI direct-access block device (SBC-3 / SPC-4 subset) over a
//! [`BlockStorage`].
//!
//! The command set is what Linux's sd and usb-storage, and the usual
//! partitioning and file-system tools, send to a USB flash drive. Anything
//! else ends in CHECK CONDITION with ILLEGAL REQUEST / INVALID COMMAND
//! OPERATION CODE, which hosts treat as "not supported" and work around.
//! Storage errors become MEDIUM ERROR sense data, never a panic.

use std::io;

use tracing::warn;

use super::bot::{CheckCondition, Plan, Target};

/// Size of one logical block, in bytes.
pub const BLOCK_SIZE: usize = 512;

/// Longest READ or WRITE accepted, in blocks. It matches the transport's
/// limit on one command's data (16 MiB).
const MAX_TRANSFER_BLOCKS: u64 = (16 << 20) / BLOCK_SIZE as u64;

/// The medium behind a simulated disk: a fixed number of 512-byte blocks,
/// addressed by byte offset.
///
/// The SCSI layer checks every range against [`BlockStorage::block_count`]
/// before calling [`read_at`](BlockStorage::read_at) or
/// [`write_at`](BlockStorage::write_at), but offsets and lengths need not be
/// block-aligned: the host's data arrives in USB requests of any size and is
/// passed on as it comes.
pub trait BlockStorage: Send {
    /// Capacity in [`BLOCK_SIZE`] blocks (at least 1, constant).
    fn block_count(&self) -> u64;

    /// Fills `buf` with the bytes starting at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Stores `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Makes every write so far durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// Fixed-format sense data: sense key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sense {
    pub(crate) key: u8,
    pub(crate) asc: u8,
    pub(crate) ascq: u8,
}

impl Sense {
    const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self { key, asc, ascq }
    }
    pub(crate) const NO_SENSE: Sense = Sense::new(0x00, 0x00, 0x00);
    pub(crate) const UNRECOVERED_READ_ERROR: Sense = Sense::new(0x03, 0x11, 0x00);
    pub(crate) const WRITE_ERROR: Sense = Sense::new(0x03, 0x0c, 0x00);
    pub(crate) const INTERNAL_TARGET_FAILURE: Sense = Sense::new(0x04, 0x44, 0x00);
    pub(crate) const INVALID_OPCODE: Sense = Sense::new(0x05, 0x20, 0x00);
    pub(crate) const LBA_OUT_OF_RANGE: Sense = Sense::new(0x05, 0x21, 0x00);
    pub(crate) const INVALID_FIELD_IN_CDB: Sense = Sense::new(0x05, 0x24, 0x00);
    pub(crate) const LUN_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x25, 0x00);
    pub(crate) const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x39, 0x00);

    /// The 18-byte fixed-format sense data (SPC-4 §4.5.3).
    fn fixed(self) -> [u8; 18] {
        let mut d = [0u8; 18];
        d[0] = 0x70; // current error, fixed format
        d[2] = self.key;
        d[7] = 10; // additional sense length
        d[12] = self.asc;
        d[13] = self.ascq;
        d
    }
}

/// Operation codes understood.
mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_FORMAT_CAPACITIES: u8 = 0x23;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const VERIFY_10: u8 = 0x2f;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// SERVICE ACTION IN(16) service action.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

const VENDOR: &[u8; 8] = b"vUSB    ";
const PRODUCT: &[u8; 16] = b"Sim pendrive    ";
const REVISION: &[u8; 4] = b"1.00";

/// The command in progress, as far as its data phase goes.
#[derive(Debug)]
enum Active {
    Idle,
    /// A generated response (INQUIRY, MODE SENSE …).
    Response {
        data: Vec<u8>,
        pos: usize,
    },
    /// READ: bytes `offset..end` of the medium.
    Read {
        offset: u64,
        end: u64,
    },
    /// WRITE: bytes `offset..end` of the medium; `fua` forces them to the
    /// medium before the command completes.
    Write {
        offset: u64,
        end: u64,
        fua: bool,
    },
}

/// One logical unit: a removable direct-access device.
pub(crate) struct ScsiDisk {
    storage: Box<dyn BlockStorage>,
    serial: String,
    sense: Sense,
    active: Active,
}

impl std::fmt::Debug for ScsiDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiDisk")
            .field("blocks", &self.storage.block_count())
            .field("serial", &self.serial)
            .field("sense", &self.sense)
            .field("active", &self.active)
            .finish()
    }
}

impl ScsiDisk {
    /// A disk over `storage`; `serial` appears in the unit serial number
    /// and device identification VPD pages.
    pub(crate) fn new(storage: Box<dyn BlockStorage>, serial: &str) -> Self {
        Self {
            storage,
            serial: serial.to_owned(),
            sense: Sense::NO_SENSE,
            active: Active::Idle,
        }
    }

    fn blocks(&self) -> u64 {
        self.storage.block_count()
    }

    /// Runs a command up to its data phase.
    fn execute(&mut self, cdb: &[u8]) -> Result<Plan, Sense> {
        match cdb[0] {
            op::TEST_UNIT_READY | op::START_STOP_UNIT | op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                // The medium is always present and can't be ejected: a
                // stop or eject request is acknowledged and ignored, as
                // most flash drives do.
                need(cdb, 6)?;
                Ok(Plan::NoData(Ok(())))
            }
            op::REQUEST_SENSE => {
                let cdb = need(cdb, 6)?;
                // Reporting the sense data consumes it.
                let sense = std::mem::replace(&mut self.sense, Sense::NO_SENSE);
                Ok(self.respond(sense.fixed().to_vec(), usize::from(cdb[4])))
            }
            op::INQUIRY => self.inquiry(need(cdb, 6)?),
            op::MODE_SENSE_6 => self.mode_sense(need(cdb, 6)?, false),
            op::MODE_SENSE_10 => self.mode_sense(need(cdb, 10)?, true),
            op::READ_CAPACITY_10 => {
                need(cdb, 10)?;
                // 0xFFFFFFFF tells the host to use READ CAPACITY(16).
                let last = u32::try_from(self.blocks() - 1).unwrap_or(u32::MAX);
                let mut d = Vec::with_capacity(8);
                d.extend_from_slice(&last.to_be_bytes());
                d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                Ok(self.respond(d, 8))
            }
            op::SERVICE_ACTION_IN_16 => {
                let cdb = need(cdb, 16)?;
                if cdb[1] & 0x1f != op::SA_READ_CAPACITY_16 {
                    return Err(Sense::INVALID_FIELD_IN_CDB);
                }
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&(self.blocks() - 1).to_be_bytes());
                d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                Ok(self.respond(d, be32(&cdb[10..14]) as usize))
            }
            op::READ_FORMAT_CAPACITIES => {
                let cdb = need(cdb, 10)?;
                let blocks = u32::try_from(self.blocks()).unwrap_or(u32::MAX);
                let mut d = vec![0, 0, 0, 8];
                d.extend_from_slice(&blocks.to_be_bytes());
                // Descriptor type 2: formatted media, then the block length.
                d.extend_from_slice(&[0x02, 0x00, 0x02, 0x00]);
                Ok(self.respond(d, usize::from(be16(&cdb[7..9]))))
            }
            op::REPORT_LUNS => {
                let cdb = need(cdb, 12)?;
                let mut d = vec![0u8; 16];
                d[3] = 8; // one LUN, number 0
                Ok(self.respond(d, be32(&cdb[6..10]) as usize))
            }
            op::READ_6 | op::WRITE_6 => {
                let cdb = need(cdb, 6)?;
                let lba = u64::from(cdb[1] & 0x1f) << 16 | u64::from(be16(&cdb[2..4]));
                // In the 6-byte commands a length of 0 means 256 blocks.
                let blocks = match cdb[4] {
                    0 => 256,
                    n => u64::from(n),
                };
                self.transfer(cdb[0] == op::WRITE_6, lba, blocks, false)
            }
            op::READ_10 | op::WRITE_10 => {
                let cdb = need(cdb, 10)?;
                let lba = u64::from(be32(&cdb[2..6]));
                let blocks = u64::from(be16(&cdb[7..9]));
                self.transfer(cdb[0] == op::WRITE_10, lba, blocks, cdb[1] & 0x08 != 0)
            }
            op::READ_16 | op::WRITE_16 => {
                let cdb = need(cdb, 16)?;
                let lba = be64(&cdb[2..10]);
                let blocks = u64::from(be32(&cdb[10..14]));
                self.transfer(cdb[0] == op::WRITE_16, lba, blocks, cdb[1] & 0x08 != 0)
            }
            op::VERIFY_10 => {
                let cdb = need(cdb, 10)?;
                // With BYTCHK the host would send data to compare; nobody
                // does that to a flash drive.
                if cdb[1] & 0x06 != 0 {
                    return Err(Sense::INVALID_FIELD_IN_CDB);
                }
                self.check_range(u64::from(be32(&cdb[2..6])), u64::from(be16(&cdb[7..9])))?;
                Ok(Plan::NoData(Ok(())))
            }
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
                need(
                    cdb,
                    if cdb[0] == op::SYNCHRONIZE_CACHE_10 {
                        10
                    } else {
                        16
                    },
                )?;
                self.storage.flush().map_err(|e| {
                    warn!(error = %e, "pendrive: flushing the image failed");
                    Sense::WRITE_ERROR
                })?;
                Ok(Plan::NoData(Ok(())))
            }
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    /// Queues a generated response, cut to the allocation length.
    fn respond(&mut self, mut data: Vec<u8>, alloc: usize) -> Plan {
        data.truncate(alloc);
        let len = data.len();
        self.active = Active::Response { data, pos: 0 };
        Plan::In(len)
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        // A zero-length transfer is fine anywhere on the medium, but not
        // past its end (SBC-3 §5.11).
        match lba.checked_add(blocks) {
            Some(end) if lba < self.blocks() && end <= self.blocks() => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn transfer(&mut self, write: bool, lba: u64, blocks: u64, fua: bool) -> Result<Plan, Sense> {
        self.check_range(lba, blocks)?;
        if blocks > MAX_TRANSFER_BLOCKS {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let offset = lba * BLOCK_SIZE as u64;
        let len = blocks * BLOCK_SIZE as u64;
        let end = offset + len;
        // MAX_TRANSFER_BLOCKS keeps `len` far below usize::MAX.
        let len = len as usize;
        if write {
            self.active = Active::Write { offset, end, fua };
            Ok(Plan::Out(len))
        } else {
            self.active = Active::Read { offset, end };
            Ok(Plan::In(len))
        }
    }

    fn inquiry(&mut self, cdb: &[u8]) -> Result<Plan, Sense> {
        let (evpd, page) = (cdb[1] & 0x01 != 0, cdb[2]);
        let alloc = usize::from(be16(&cdb[3..5]));
        // CMDDT (obsolete) or a page code without EVPD.
        if cdb[1] & 0x02 != 0 || (!evpd && page != 0) {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let data = if !evpd {
            let mut d = vec![0u8; 36];
            d[0] = 0x00; // connected direct-access block device
            d[1] = 0x80; // RMB: removable medium, as flash drives report
            d[2] = 0x06; // SPC-4
            d[3] = 0x02; // response data format 2
            d[4] = 36 - 5; // additional length
            d[8..16].copy_from_slice(VENDOR);
            d[16..32].copy_from_slice(PRODUCT);
            d[32..36].copy_from_slice(REVISION);
            d
        } else {
            let body = match page {
                // Supported VPD pages.
                0x00 => vec![0x00, 0x80, 0x83],
                // Unit serial number.
                0x80 => self.serial.as_bytes().to_vec(),
                // Device identification: one T10 vendor ID designator
                // (vendor + serial), ASCII, associated with the unit.
                0x83 => {
                    let mut id = VENDOR.to_vec();
                    id.extend_from_slice(self.serial.as_bytes());
                    id.truncate(255);
                    let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
                    d.extend_from_slice(&id);
                    d
                }
                _ => return Err(Sense::INVALID_FIELD_IN_CDB),
            };
            let mut d = vec![0x00, page];
            d.extend_from_slice(&(body.len() as u16).to_be_bytes());
            d.extend_from_slice(&body);
            d
        };
        Ok(self.respond(data, alloc))
    }

    fn mode_sense(&mut self, cdb: &[u8], ten: bool) -> Result<Plan, Sense> {
        let dbd = cdb[1] & 0x08 != 0;
        let (control, page, subpage) = (cdb[2] >> 6, cdb[2] & 0x3f, cdb[3]);
        let alloc = if ten {
            usize::from(be16(&cdb[7..9]))
        } else {
            usize::from(cdb[4])
        };
        if control == 3 {
            return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED);
        }
        let pages = match (page, subpage) {
            // Caching: no write cache (every WRITE reaches the image before
            // it completes), read cache allowed. Nothing is changeable, so
            // the "changeable values" form is the same all-zero page.
            (0x08, 0x00) | (0x3f, 0x00) | (0x3f, 0xff) => {
                let mut p = vec![0u8; 20];
                p[0] = 0x08;
                p[1] = 0x12;
                p
            }
            _ => return Err(Sense::INVALID_FIELD_IN_CDB),
        };
        let descriptor = if dbd {
            Vec::new()
        } else {
            // Short block descriptor: block count (saturated) and length.
            let blocks = u32::try_from(self.blocks())
                .unwrap_or(u32::MAX)
                .min(0xff_ffff);
            let mut d = blocks.to_be_bytes().to_vec();
            d[0] = 0; // density code
            d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
            d
        };
        // Device-specific parameter 0: WP clear, no DPOFUA.
        let mut d = if ten {
            let total = 8 + descriptor.len() + pages.len();
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
            h[6..8].copy_from_slice(&(descriptor.len() as u16).to_be_bytes());
            h
        } else {
            let total = 4 + descriptor.len() + pages.len();
            vec![(total - 1) as u8, 0, 0, descriptor.len() as u8]
        };
        d.extend_from_slice(&descriptor);
        d.extend_from_slice(&pages);
        Ok(self.respond(d, alloc))
    }

    /// Ends the command in progress with CHECK CONDITION and `sense`.
    fn fail(&mut self, sense: Sense) -> CheckCondition {
        self.active = Active::Idle;
        self.sense = sense;
        CheckCondition
    }
}

impl Target for ScsiDisk {
    fn start(&mut self, lun: u8, cdb: &[u8]) -> Plan {
        self.active = Active::Idle;
        let opcode = cdb.first().copied().unwrap_or(0xff);
        // Sense data describes the last command; every new command but
        // REQUEST SENSE itself starts afresh.
        if opcode != op::REQUEST_SENSE {
            self.sense = Sense::NO_SENSE;
        }
        if lun != 0 {
            return Plan::NoData(Err(self.fail(Sense::LUN_NOT_SUPPORTED)));
        }
        if cdb.is_empty() {
            return Plan::NoData(Err(self.fail(Sense::INVALID_OPCODE)));
        }
        match self.execute(cdb) {
            Ok(plan) => plan,
            Err(sense) => {
                tracing::debug!(opcode, ?sense, "pendrive: command failed");
                Plan::NoData(Err(self.fail(sense)))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), CheckCondition> {
        let result = match &mut self.active {
            Active::Response { data, pos } => match data.get(*pos..*pos + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    *pos += buf.len();
                    Ok(())
                }
                None => Err(Sense::INTERNAL_TARGET_FAILURE),
            },
            Active::Read { offset, end } => {
                let len = buf.len() as u64;
                if *end - *offset < len {
                    Err(Sense::INTERNAL_TARGET_FAILURE)
                } else {
                    match self.storage.read_at(*offset, buf) {
                        Ok(()) => {
                            *offset += len;
                            Ok(())
                        }
                        Err(e) => {
                            warn!(offset = *offset, error = %e, "pendrive: reading the image failed");
                            Err(Sense::UNRECOVERED_READ_ERROR)
                        }
                    }
                }
            }
            Active::Idle | Active::Write { .. } => Err(Sense::INTERNAL_TARGET_FAILURE),
        };
        result.map_err(|sense| self.fail(sense))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), CheckCondition> {
        let result = match &mut self.active {
            Active::Write { offset, end, fua } => {
                let len = data.len() as u64;
                if *end - *offset < len {
                    Err(Sense::INTERNAL_TARGET_FAILURE)
                } else {
                    let written = self.storage.write_at(*offset, data).and_then(|()| {
                        *offset += len;
                        if *fua && *offset == *end {
                            self.storage.flush()
                        } else {
                            Ok(())
                        }
                    });
                    written.map_err(|e| {
                        warn!(offset = *offset, error = %e, "pendrive: writing the image failed");
                        Sense::WRITE_ERROR
                    })
                }
            }
            Active::Idle | Active::Response { .. } | Active::Read { .. } => {
                Err(Sense::INTERNAL_TARGET_FAILURE)
            }
        };
        result.map_err(|sense| self.fail(sense))
    }

    fn refuse(&mut self) {
        self.fail(Sense::INVALID_FIELD_IN_CDB);
    }

    fn abort(&mut self) {
        self.active = Active::Idle;
    }
}

/// The CDB if it has at least `len` bytes: a host that sends a shorter
/// command block than the operation code needs gets INVALID FIELD IN CDB.
fn need(cdb: &[u8], len: usize) -> Result<&[u8], Sense> {
    if cdb.len() >= len {
        Ok(cdb)
    } else {
        Err(Sense::INVALID_FIELD_IN_CDB)
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A zero-filled medium that counts flushes.
    #[derive(Debug, Default)]
    struct Counting {
        flushes: Arc<AtomicUsize>,
    }

    impl BlockStorage for Counting {
        fn block_count(&self) -> u64 {
            1024
        }
        fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn disk() -> (ScsiDisk, Arc<AtomicUsize>) {
        let storage = Counting::default();
        let flushes = storage.flushes.clone();
        (ScsiDisk::new(Box::new(storage), "0123456789AB"), flushes)
    }

    #[test]
    fn read_6_length_zero_means_256_blocks() {
        let (mut d, _) = disk();
        assert_eq!(d.start(0, &[0x08, 0, 0, 0, 0, 0]), Plan::In(256 * 512));
        assert_eq!(d.start(0, &[0x08, 0, 0, 0, 3, 0]), Plan::In(3 * 512));
        // 21-bit LBA: 0x1F_FFFF is past the end of a 1024-block disk.
        let plan = d.start(0, &[0x0a, 0x1f, 0xff, 0xff, 1, 0]);
        assert_eq!(plan, Plan::NoData(Err(CheckCondition)));
        assert_eq!(d.sense, Sense::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn zero_length_transfers_check_the_lba() {
        let (mut d, _) = disk();
        let read = |lba: u32| {
            let l = lba.to_be_bytes();
            [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 0, 0]
        };
        assert_eq!(d.start(0, &read(1023)), Plan::In(0));
        assert_eq!(d.start(0, &read(1024)), Plan::NoData(Err(CheckCondition)));
        assert_eq!(d.sense, Sense::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn a_command_block_shorter_than_its_opcode_needs_is_refused() {
        let (mut d, _) = disk();
        // READ(10) cut to six bytes.
        let plan = d.start(0, &[0x28, 0, 0, 0, 0, 0]);
        assert_eq!(plan, Plan::NoData(Err(CheckCondition)));
        assert_eq!(d.sense, Sense::INVALID_FIELD_IN_CDB);
        // Longer than needed is fine (some hosts always send 12 or 16).
        assert_eq!(d.start(0, &[0x00; 16]), Plan::NoData(Ok(())));
    }

    #[test]
    fn fua_write_reaches_the_medium_before_completing() {
        let (mut d, flushes) = disk();
        assert_eq!(
            d.start(0, &[0x2a, 0x08, 0, 0, 0, 0, 0, 0, 2, 0]),
            Plan::Out(1024)
        );
        d.write(&[0; 1000]).unwrap();
        assert_eq!(flushes.load(Ordering::Relaxed), 0);
        d.write(&[0; 24]).unwrap();
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
        // Without FUA no flush.
        d.start(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        d.write(&[0; 512]).unwrap();
        assert_eq!(flushes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn data_beyond_the_plan_is_an_internal_failure_not_a_panic() {
        let (mut d, _) = disk();
        assert_eq!(d.start(0, &[0x12, 0, 0, 0, 36, 0]), Plan::In(36));
        let mut buf = [0u8; 37];
        assert_eq!(d.read(&mut buf), Err(CheckCondition));
        assert_eq!(d.sense, Sense::INTERNAL_TARGET_FAILURE);
        assert_eq!(d.write(&[0; 4]), Err(CheckCondition));
        d.start(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let mut buf = [0u8; 513];
        assert_eq!(d.read(&mut buf), Err(CheckCondition));
    }
}
