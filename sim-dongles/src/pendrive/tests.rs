//! The pendrive driven through the [`Function`] trait, the way the engine
//! does, with command block wrappers as Linux's usb-storage builds them.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use tempfile::NamedTempFile;

use super::*;

/// An 8 MiB image: 16384 blocks, last LBA 0x3FFF.
const IMAGE_BLOCKS: u64 = 16384;

fn image() -> NamedTempFile {
    let f = NamedTempFile::new().unwrap();
    f.as_file()
        .set_len(IMAGE_BLOCKS * BLOCK_SIZE as u64)
        .unwrap();
    f
}

fn pendrive(img: &NamedTempFile) -> Pendrive {
    Pendrive::open(img.path()).unwrap()
}

/// A CBW: tag, dCBWDataTransferLength, direction, LUN 0, the CDB.
fn cbw(tag: u32, len: u32, dir_in: bool, cdb: &[u8]) -> [u8; 31] {
    let mut c = [0u8; 31];
    c[0..4].copy_from_slice(&[0x55, 0x53, 0x42, 0x43]);
    c[4..8].copy_from_slice(&tag.to_le_bytes());
    c[8..12].copy_from_slice(&len.to_le_bytes());
    c[12] = if dir_in { 0x80 } else { 0x00 };
    c[14] = cdb.len() as u8;
    c[15..15 + cdb.len()].copy_from_slice(cdb);
    c
}

/// The 13-byte CSW the device must send.
fn csw_bytes(tag: u32, residue: u32, status: u8) -> Vec<u8> {
    let mut c = vec![0x55, 0x53, 0x42, 0x53];
    c.extend_from_slice(&tag.to_le_bytes());
    c.extend_from_slice(&residue.to_le_bytes());
    c.push(status);
    c
}

fn data_in(p: &mut Pendrive, max_len: usize) -> Vec<u8> {
    match p.data_in(1, max_len) {
        InResponse::Data(d) => {
            assert!(
                d.len() <= max_len,
                "{} bytes for a {max_len}-byte request",
                d.len()
            );
            d
        }
        other => panic!("expected data, got {other:?}"),
    }
}

/// Reads the CSW (as Linux does, a 13-byte request) and checks that
/// nothing follows it.
fn read_csw(p: &mut Pendrive) -> Vec<u8> {
    let c = data_in(p, 13);
    assert_eq!(p.data_in(1, 13), InResponse::Nak, "data after the CSW");
    c
}

/// Runs a data-in command in one request of the host's length.
fn command_in(p: &mut Pendrive, tag: u32, len: u32, cdb: &[u8]) -> (Vec<u8>, Vec<u8>) {
    p.data_out(2, &cbw(tag, len, true, cdb)).unwrap();
    let data = data_in(p, len as usize);
    (data, read_csw(p))
}

/// REQUEST SENSE as usb-storage's auto-sense sends it (18 bytes); returns
/// (sense key, ASC, ASCQ).
fn request_sense(p: &mut Pendrive) -> (u8, u8, u8) {
    let (d, csw) = command_in(p, 0x5e5e, 18, &[0x03, 0, 0, 0, 18, 0]);
    assert_eq!(csw, csw_bytes(0x5e5e, 0, 0));
    assert_eq!(d.len(), 18);
    assert_eq!(d[0], 0x70, "fixed format, current error");
    assert_eq!(d[7], 10, "additional sense length");
    (d[2], d[12], d[13])
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

/// Bytes that differ from block to block and within a block.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i / 512) as u8 ^ seed)
        .collect()
}

fn write_blocks(p: &mut Pendrive, tag: u32, lba: u32, data: &[u8]) {
    let blocks = (data.len() / BLOCK_SIZE) as u16;
    p.data_out(
        2,
        &cbw(tag, data.len() as u32, false, &write10(lba, blocks)),
    )
    .unwrap();
    p.data_out(2, data).unwrap();
    assert_eq!(read_csw(p), csw_bytes(tag, 0, 0));
}

fn read_blocks(p: &mut Pendrive, tag: u32, lba: u32, blocks: u16) -> Vec<u8> {
    let len = u32::from(blocks) * BLOCK_SIZE as u32;
    let (d, csw) = command_in(p, tag, len, &read10(lba, blocks));
    assert_eq!(csw, csw_bytes(tag, 0, 0));
    d
}

fn setup(request_type: u8, request: u8, length: u16) -> SetupPacket {
    SetupPacket {
        request_type,
        request,
        value: 0,
        index: 0,
        length,
    }
}

const MASS_STORAGE_RESET: (u8, u8) = (0x21, 0xff);

fn mass_storage_reset(p: &mut Pendrive) {
    let (t, r) = MASS_STORAGE_RESET;
    assert_eq!(p.control(&setup(t, r, 0), &[]), Ok(Vec::new()));
    p.clear_halt(0x81);
    p.clear_halt(0x02);
}

/// Memory as a medium, shared with the test so it can look inside.
#[derive(Debug, Clone)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl BlockStorage for Memory {
    fn block_count(&self) -> u64 {
        (self.0.lock().unwrap().len() / BLOCK_SIZE) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let m = self.0.lock().unwrap();
        buf.copy_from_slice(&m[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut m = self.0.lock().unwrap();
        m[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A medium whose every access fails.
#[derive(Debug)]
struct Broken;

impl BlockStorage for Broken {
    fn block_count(&self) -> u64 {
        64
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("bad sector"))
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("bad sector"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("bad sector"))
    }
}

#[test]
fn descriptors_describe_a_bulk_only_scsi_flash_drive() {
    let img = image();
    let p = pendrive(&img);
    let d = p.descriptors();
    assert_eq!(
        d.device,
        [
            18, 0x01, 0x00, 0x02, // USB 2.0
            0x00, 0x00, 0x00, 64, // class per interface, EP0 64 bytes
            0x09, 0x12, 0x02, 0x00, // 1209:0002
            0x00, 0x01, 1, 2, 3, 1, // bcdDevice 1.00, strings, one configuration
        ]
    );
    assert_eq!(
        d.configuration,
        vec![
            9, 0x02, 32, 0, 1, 1, 0, 0x80, 50, // one interface, bus powered, 100 mA
            9, 0x04, 0, 0, 2, 0x08, 0x06, 0x50, 0, // mass storage, SCSI, BOT
            7, 0x05, 0x81, 0x02, 0x00, 0x02, 0, // bulk IN, 512
            7, 0x05, 0x02, 0x02, 0x00, 0x02, 0, // bulk OUT, 512
        ]
    );
    let string = |i| d.strings.iter().find(|s| s.0 == i).map(|s| s.1.clone());
    assert_eq!(string(1).as_deref(), Some("vUSB"));
    assert_eq!(string(2).as_deref(), Some("Simulated pendrive"));
    let serial = string(3).unwrap();
    assert_eq!(serial, p.serial_number());
    assert!(serial.len() >= 12 && serial.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!serial.chars().any(|c| c.is_ascii_lowercase()));
    // Stable for the same image, different for another one.
    assert_eq!(pendrive(&img).serial_number(), serial);
    assert_ne!(pendrive(&image()).serial_number(), serial);
    assert_eq!(p.block_count(), IMAGE_BLOCKS);
}

#[test]
fn class_requests() {
    let img = image();
    let mut p = pendrive(&img);
    // Get Max LUN, as usb-storage sends it.
    assert_eq!(p.control(&setup(0xa1, 0xfe, 1), &[]), Ok(vec![0]));
    let (t, r) = MASS_STORAGE_RESET;
    assert_eq!(p.control(&setup(t, r, 0), &[]), Ok(Vec::new()));
    // Wrong interface, wrong direction, unknown request: stall.
    let mut wrong_interface = setup(0xa1, 0xfe, 1);
    wrong_interface.index = 1;
    assert_eq!(p.control(&wrong_interface, &[]), Err(Stall));
    assert_eq!(p.control(&setup(0x21, 0xfe, 1), &[1]), Err(Stall));
    assert_eq!(p.control(&setup(0xa1, 0xff, 0), &[]), Err(Stall));
    assert_eq!(p.control(&setup(0x21, 0x00, 0), &[]), Err(Stall));
    assert_eq!(p.control(&setup(0xc0, 0x01, 4), &[]), Err(Stall));
}

#[test]
fn nothing_to_read_before_a_command() {
    let img = image();
    let mut p = pendrive(&img);
    assert_eq!(p.data_in(1, 512), InResponse::Nak);
    assert_eq!(p.data_in(1, 13), InResponse::Nak);
    // Endpoints the pendrive doesn't have.
    assert_eq!(p.data_in(2, 512), InResponse::Stall);
    assert_eq!(p.data_out(1, &[0; 31]), Err(Stall));
}

#[test]
fn inquiry_as_linux_sends_it() {
    let img = image();
    let mut p = pendrive(&img);
    #[rustfmt::skip]
    let cbw = [
        0x55, 0x53, 0x42, 0x43, // dCBWSignature "USBC"
        0x01, 0x00, 0x00, 0x00, // dCBWTag
        0x24, 0x00, 0x00, 0x00, // dCBWDataTransferLength 36
        0x80,                   // bmCBWFlags: data in
        0x00,                   // bCBWLUN
        0x06,                   // bCBWCBLength
        0x12, 0x00, 0x00, 0x00, 0x24, 0x00, // INQUIRY, allocation length 36
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    p.data_out(2, &cbw).unwrap();
    let d = data_in(&mut p, 36);
    assert_eq!(d.len(), 36);
    assert_eq!(d[0], 0x00, "direct-access block device");
    assert_eq!(d[1], 0x80, "removable");
    assert_eq!(d[3] & 0x0f, 2, "response data format");
    assert_eq!(usize::from(d[4]) + 5, 36, "additional length");
    assert_eq!(&d[8..16], b"vUSB    ");
    assert_eq!(&d[16..32], b"Sim pendrive    ");
    assert_eq!(
        read_csw(&mut p),
        [0x55, 0x53, 0x42, 0x53, 0x01, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0x00]
    );
}

#[test]
fn read_capacity_10_as_linux_sends_it() {
    let img = image();
    let mut p = pendrive(&img);
    #[rustfmt::skip]
    let cbw = [
        0x55, 0x53, 0x42, 0x43,
        0x02, 0x00, 0x00, 0x00, // tag 2
        0x08, 0x00, 0x00, 0x00, // 8 bytes
        0x80, 0x00, 0x0a,       // in, LUN 0, 10-byte CDB
        0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, // READ CAPACITY(10)
        0, 0, 0, 0, 0, 0,
    ];
    p.data_out(2, &cbw).unwrap();
    // Last LBA 16383, block length 512.
    assert_eq!(
        data_in(&mut p, 8),
        [0x00, 0x00, 0x3f, 0xff, 0x00, 0x00, 0x02, 0x00]
    );
    assert_eq!(
        read_csw(&mut p),
        [0x55, 0x53, 0x42, 0x53, 0x02, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0x00]
    );
}

#[test]
fn read_capacity_16() {
    let img = image();
    let mut p = pendrive(&img);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let (d, csw) = command_in(&mut p, 5, 32, &cdb);
    assert_eq!(csw, csw_bytes(5, 0, 0));
    assert_eq!(d.len(), 32);
    assert_eq!(d[0..8], (IMAGE_BLOCKS - 1).to_be_bytes());
    assert_eq!(d[8..12], [0, 0, 2, 0]);
    // Another service action of the same opcode is not supported.
    cdb[1] = 0x11;
    p.data_out(2, &cbw(6, 32, true, &cdb)).unwrap();
    assert_eq!(p.data_in(1, 32), InResponse::Stall);
    p.clear_halt(0x81);
    assert_eq!(read_csw(&mut p), csw_bytes(6, 32, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x24, 0x00));
}

#[test]
fn write_10_split_over_out_requests_lands_in_the_image() {
    let img = image();
    let mut p = pendrive(&img);
    #[rustfmt::skip]
    let cbw = [
        0x55, 0x53, 0x42, 0x43,
        0x03, 0x00, 0x00, 0x00, // tag 3
        0x00, 0x10, 0x00, 0x00, // 4096 bytes
        0x00, 0x00, 0x0a,       // out, LUN 0, 10-byte CDB
        0x2a, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x08, 0x00, // WRITE(10) LBA 16, 8 blocks
        0, 0, 0, 0, 0, 0,
    ];
    p.data_out(2, &cbw).unwrap();
    let data = pattern(4096, 0xa5);
    // Chunks that don't respect block boundaries; the CSW read the host may
    // have queued waits until the data is in.
    let mut at = 0;
    for n in [1000, 3000, 95, 1] {
        assert_eq!(p.data_in(1, 13), InResponse::Nak);
        p.data_out(2, &data[at..at + n]).unwrap();
        at += n;
    }
    assert_eq!(
        read_csw(&mut p),
        [0x55, 0x53, 0x42, 0x53, 0x03, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0x00]
    );
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(&file[16 * 512..24 * 512], &data[..]);
    assert!(file[..16 * 512].iter().all(|&b| b == 0));
    assert!(file[24 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn read_10_split_over_in_requests_of_odd_sizes() {
    let mut img = image();
    let data = pattern(4096, 0x3c);
    {
        use std::io::{Seek as _, SeekFrom};
        let f = img.as_file_mut();
        f.seek(SeekFrom::Start(100 * 512)).unwrap();
        f.write_all(&data).unwrap();
    }
    let mut p = pendrive(&img);
    #[rustfmt::skip]
    let cbw = [
        0x55, 0x53, 0x42, 0x43,
        0x04, 0x00, 0x00, 0x00, // tag 4
        0x00, 0x10, 0x00, 0x00, // 4096 bytes
        0x80, 0x00, 0x0a,       // in, LUN 0, 10-byte CDB
        0x28, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x08, 0x00, // READ(10) LBA 100, 8 blocks
        0, 0, 0, 0, 0, 0,
    ];
    p.data_out(2, &cbw).unwrap();
    let mut got = Vec::new();
    for (n, expect) in [(1, 1), (511, 511), (1000, 1000), (7, 7), (4096, 2577)] {
        let chunk = data_in(&mut p, n);
        assert_eq!(chunk.len(), expect);
        got.extend(chunk);
    }
    assert_eq!(got, data);
    assert_eq!(
        read_csw(&mut p),
        [0x55, 0x53, 0x42, 0x53, 0x04, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0x00]
    );
}

#[test]
fn writes_persist_across_reopening_the_image() {
    let img = image();
    let data = pattern(64 * 512, 0x77);
    {
        let mut p = pendrive(&img);
        write_blocks(&mut p, 10, 1000, &data);
        // SYNCHRONIZE CACHE(10) succeeds on a file.
        p.data_out(2, &cbw(11, 0, false, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
            .unwrap();
        assert_eq!(read_csw(&mut p), csw_bytes(11, 0, 0));
    }
    let mut p = pendrive(&img);
    assert_eq!(read_blocks(&mut p, 12, 1000, 64), data);
    assert_eq!(read_blocks(&mut p, 13, 999, 1), vec![0; 512]);
}

#[test]
fn a_megabyte_in_one_request_each_way() {
    let img = image();
    let mut p = pendrive(&img);
    let data = pattern(1 << 20, 0x01);
    write_blocks(&mut p, 1, IMAGE_BLOCKS as u32 - 2048, &data);
    assert_eq!(
        read_blocks(&mut p, 2, IMAGE_BLOCKS as u32 - 2048, 2048),
        data
    );
}

#[test]
fn unsupported_opcode_fails_and_request_sense_explains_once() {
    let img = image();
    let mut p = pendrive(&img);
    // GET EVENT STATUS NOTIFICATION, which only optical drives support.
    let cdb = [0x4a, 0x01, 0, 0, 0x10, 0, 0, 0, 8, 0];
    p.data_out(2, &cbw(7, 8, true, &cdb)).unwrap();
    // The host expected data: the IN pipe stalls, then the CSW says failed.
    assert_eq!(p.data_in(1, 8), InResponse::Stall);
    p.clear_halt(0x81);
    assert_eq!(read_csw(&mut p), csw_bytes(7, 8, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x20, 0x00));
    // Reading the sense data cleared it.
    assert_eq!(request_sense(&mut p), (0x00, 0x00, 0x00));

    // Without a data phase the CSW comes straight away.
    p.data_out(2, &cbw(8, 0, false, &[0xff, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(8, 0, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x20, 0x00));

    // A successful command clears old sense data too.
    p.data_out(2, &cbw(9, 0, false, &[0xff, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(9, 0, 1));
    p.data_out(2, &cbw(10, 0, false, &[0x00, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(10, 0, 0));
    assert_eq!(request_sense(&mut p), (0x00, 0x00, 0x00));
}

#[test]
fn out_of_range_lba() {
    let img = image();
    let mut p = pendrive(&img);
    let last = IMAGE_BLOCKS as u32 - 1;
    // The last block reads fine.
    assert_eq!(read_blocks(&mut p, 1, last, 1), vec![0; 512]);
    // Two blocks from the last one run off the end.
    p.data_out(2, &cbw(2, 1024, true, &read10(last, 2)))
        .unwrap();
    assert_eq!(p.data_in(1, 1024), InResponse::Stall);
    p.clear_halt(0x81);
    assert_eq!(read_csw(&mut p), csw_bytes(2, 1024, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x21, 0x00));

    // A write past the end: the host's data is swallowed, nothing written.
    p.data_out(2, &cbw(3, 1024, false, &write10(last, 2)))
        .unwrap();
    p.data_out(2, &[0xee; 1024]).unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(3, 1024, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x21, 0x00));
    assert!(std::fs::read(img.path()).unwrap().iter().all(|&b| b == 0));

    // READ(16) whose LBA + length overflows 64 bits.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    cdb[13] = 2;
    p.data_out(2, &cbw(4, 1024, true, &cdb)).unwrap();
    assert_eq!(p.data_in(1, 1024), InResponse::Stall);
    assert_eq!(read_csw(&mut p), csw_bytes(4, 1024, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x21, 0x00));

    // VERIFY(10) checks the range too.
    let verify = [0x2f, 0, 0, 0, 0x40, 0, 0, 0, 1, 0];
    p.data_out(2, &cbw(5, 0, false, &verify)).unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(5, 0, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x21, 0x00));
}

#[test]
fn bad_cbw_stalls_both_pipes_until_reset_recovery() {
    let img = image();
    let mut p = pendrive(&img);
    let tur = cbw(1, 0, false, &[0, 0, 0, 0, 0, 0]);
    let mut bad_signature = tur;
    bad_signature[3] = 0x44;
    for bad in [
        &bad_signature[..],
        &tur[..30],
        &[tur.as_slice(), &[0]].concat()[..],
    ] {
        assert_eq!(p.data_out(2, bad), Err(Stall));
        assert_eq!(p.data_in(1, 13), InResponse::Stall);
        // Clearing the halts alone is not enough (BOT §6.6.1).
        p.clear_halt(0x81);
        p.clear_halt(0x02);
        assert_eq!(p.data_out(2, &tur), Err(Stall));
        assert_eq!(p.data_in(1, 13), InResponse::Stall);
        mass_storage_reset(&mut p);
        p.data_out(2, &tur).unwrap();
        assert_eq!(read_csw(&mut p), csw_bytes(1, 0, 0));
    }
    // A port reset recovers as well.
    assert_eq!(p.data_out(2, &bad_signature), Err(Stall));
    p.reset();
    p.data_out(2, &tur).unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(1, 0, 0));
}

#[test]
fn short_data_is_a_short_transfer_with_residue() {
    let img = image();
    let mut p = pendrive(&img);
    // INQUIRY with room for 96 bytes: 36 come, the residue says 60 didn't.
    let (d, csw) = command_in(&mut p, 0x100, 96, &[0x12, 0, 0, 0, 96, 0]);
    assert_eq!(d.len(), 36);
    assert_eq!(csw, csw_bytes(0x100, 60, 0));
    // REQUEST SENSE with the 96-byte buffer of usb-storage's "sane sense".
    let (d, csw) = command_in(&mut p, 0x101, 96, &[0x03, 0, 0, 0, 96, 0]);
    assert_eq!(d.len(), 18);
    assert_eq!(csw, csw_bytes(0x101, 78, 0));
    // READ of 1 block into a 2-block transfer, read in 512-byte requests:
    // the host's request is filled, so a zero-length packet ends the data.
    p.data_out(2, &cbw(0x102, 1024, true, &read10(0, 1)))
        .unwrap();
    assert_eq!(data_in(&mut p, 512).len(), 512);
    assert_eq!(data_in(&mut p, 512), Vec::<u8>::new());
    assert_eq!(read_csw(&mut p), csw_bytes(0x102, 512, 0));
}

#[test]
fn host_expecting_less_than_the_command_is_a_phase_error() {
    let img = image();
    let mut p = pendrive(&img);
    // READ(10) of 2 blocks into a 1-block transfer.
    p.data_out(2, &cbw(1, 512, true, &read10(0, 2))).unwrap();
    assert_eq!(data_in(&mut p, 512).len(), 512);
    assert_eq!(read_csw(&mut p), csw_bytes(1, 0, 2));
    // TEST UNIT READY announced with a data phase is fine (no data).
    p.data_out(2, &cbw(2, 8, true, &[0, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(data_in(&mut p, 8), Vec::<u8>::new());
    assert_eq!(read_csw(&mut p), csw_bytes(2, 8, 0));
}

#[test]
fn transfer_length_over_the_limit_is_refused() {
    let img = NamedTempFile::new().unwrap();
    img.as_file().set_len(32 << 20).unwrap();
    let mut p = pendrive(&img);
    let len = 16 << 20;
    p.data_out(2, &cbw(1, len + 512, true, &read10(0, 32769)))
        .unwrap();
    assert_eq!(p.data_in(1, 1 << 20), InResponse::Stall);
    assert_eq!(read_csw(&mut p), csw_bytes(1, len + 512, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x24, 0x00));
    // Right at the limit is fine (READ(10) can't say more than 65535 blocks).
    p.data_out(2, &cbw(2, len, true, &read10(0, 32768)))
        .unwrap();
    assert_eq!(data_in(&mut p, len as usize).len(), len as usize);
    assert_eq!(read_csw(&mut p), csw_bytes(2, 0, 0));
}

#[test]
fn other_luns_are_not_supported() {
    let img = image();
    let mut p = pendrive(&img);
    let mut c = cbw(1, 0, false, &[0, 0, 0, 0, 0, 0]);
    c[13] = 1;
    p.data_out(2, &c).unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(1, 0, 1));
    assert_eq!(request_sense(&mut p), (0x05, 0x25, 0x00));
}

#[test]
fn mode_sense_6_all_pages_as_linux_asks() {
    let img = image();
    let mut p = pendrive(&img);
    // sd's write-protect probe with usb-storage's 192-byte length.
    let (d, csw) = command_in(&mut p, 1, 192, &[0x1a, 0, 0x3f, 0, 192, 0]);
    assert_eq!(csw, csw_bytes(1, 192 - d.len() as u32, 0));
    assert_eq!(usize::from(d[0]) + 1, d.len(), "mode data length");
    assert_eq!(d[2] & 0x80, 0, "write protect clear");
    assert_eq!(d[3], 8, "one short block descriptor");
    assert_eq!(d[4..12], [0, 0, 0x40, 0, 0, 0, 2, 0]);
    assert_eq!(d[12], 0x08, "caching page");
    assert_eq!(usize::from(d[13]) + 2, d.len() - 12);
    assert_eq!(
        d[14] & 0x04,
        0,
        "no write cache: every WRITE is in the image"
    );

    // The 4-byte header only, as sd asks first when 192 bytes is too much.
    let (d, _) = command_in(&mut p, 2, 4, &[0x1a, 0, 0x3f, 0, 4, 0]);
    assert_eq!(d, [31, 0, 0, 8]);
    // Caching page alone, no block descriptor.
    let (d, csw) = command_in(&mut p, 3, 24, &[0x1a, 0x08, 0x08, 0, 24, 0]);
    assert_eq!(csw, csw_bytes(3, 0, 0));
    assert_eq!(d.len(), 24);
    assert_eq!(d[0..4], [23, 0, 0, 0]);
    assert_eq!(d[4..6], [0x08, 0x12]);
}

#[test]
fn mode_sense_10() {
    let img = image();
    let mut p = pendrive(&img);
    let cdb = [0x5a, 0, 0x08, 0, 0, 0, 0, 0, 255, 0];
    let (d, csw) = command_in(&mut p, 1, 255, &cdb);
    assert_eq!(d.len(), 8 + 8 + 20);
    assert_eq!(csw, csw_bytes(1, 255 - 36, 0));
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
    assert_eq!(d[3] & 0x80, 0, "write protect clear");
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 8);
    assert_eq!(d[16], 0x08);
    // Unknown page, saved values: CHECK CONDITION.
    for (cdb, sense) in [
        ([0x5a, 0, 0x1c, 0, 0, 0, 0, 0, 255, 0], (0x05, 0x24, 0x00)),
        ([0x5a, 0, 0xc8, 0, 0, 0, 0, 0, 255, 0], (0x05, 0x39, 0x00)),
    ] {
        p.data_out(2, &cbw(2, 255, true, &cdb)).unwrap();
        assert_eq!(p.data_in(1, 255), InResponse::Stall);
        assert_eq!(read_csw(&mut p), csw_bytes(2, 255, 1));
        assert_eq!(request_sense(&mut p), sense);
    }
}

#[test]
fn inquiry_vital_product_data() {
    let img = image();
    let mut p = pendrive(&img);
    let serial = p.serial_number().to_owned();
    let (d, _) = command_in(&mut p, 1, 255, &[0x12, 1, 0x00, 0, 255, 0]);
    assert_eq!(d, [0, 0x00, 0, 3, 0x00, 0x80, 0x83]);
    let (d, _) = command_in(&mut p, 2, 255, &[0x12, 1, 0x80, 0, 255, 0]);
    assert_eq!(&d[..4], [0, 0x80, 0, serial.len() as u8]);
    assert_eq!(&d[4..], serial.as_bytes());
    let (d, _) = command_in(&mut p, 3, 255, &[0x12, 1, 0x83, 0, 255, 0]);
    assert_eq!(&d[..2], [0, 0x83]);
    assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len() - 4);
    assert_eq!(d[4..8], [0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
    assert_eq!(&d[8..16], b"vUSB    ");
    assert_eq!(&d[16..], serial.as_bytes());
    // Pages not there, and a page code without EVPD.
    for cdb in [[0x12, 1, 0xb0, 0, 255, 0], [0x12, 0, 0x80, 0, 255, 0]] {
        p.data_out(2, &cbw(4, 255, true, &cdb)).unwrap();
        assert_eq!(p.data_in(1, 255), InResponse::Stall);
        assert_eq!(read_csw(&mut p), csw_bytes(4, 255, 1));
        assert_eq!(request_sense(&mut p), (0x05, 0x24, 0x00));
    }
}

#[test]
fn housekeeping_commands_succeed() {
    let img = image();
    let mut p = pendrive(&img);
    let no_data: [&[u8]; 5] = [
        &[0x00, 0, 0, 0, 0, 0],             // TEST UNIT READY
        &[0x1e, 0, 0, 0, 1, 0],             // PREVENT MEDIUM REMOVAL
        &[0x1b, 0, 0, 0, 1, 0],             // START STOP UNIT (start)
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], // SYNCHRONIZE CACHE(10)
        &[0x2f, 0, 0, 0, 0, 0, 0, 0, 8, 0], // VERIFY(10)
    ];
    for (tag, cdb) in (1..).zip(no_data) {
        p.data_out(2, &cbw(tag, 0, false, cdb)).unwrap();
        assert_eq!(read_csw(&mut p), csw_bytes(tag, 0, 0), "{cdb:02x?}");
    }
    // READ FORMAT CAPACITIES with the 252 bytes Windows and udisks use.
    let (d, csw) = command_in(&mut p, 10, 252, &[0x23, 0, 0, 0, 0, 0, 0, 0, 252, 0]);
    assert_eq!(csw, csw_bytes(10, 252 - 12, 0));
    assert_eq!(d, [0, 0, 0, 8, 0, 0, 0x40, 0, 0x02, 0, 2, 0]);
    // REPORT LUNS: LUN 0 only.
    let (d, csw) = command_in(&mut p, 11, 16, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
    assert_eq!(csw, csw_bytes(11, 0, 0));
    assert_eq!(d, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn write_16_and_read_16() {
    let img = image();
    let mut p = pendrive(&img);
    let data = pattern(2048, 0x42);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[9] = 0x20; // LBA 32
    cdb[13] = 4;
    p.data_out(2, &cbw(1, 2048, false, &cdb)).unwrap();
    p.data_out(2, &data).unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(1, 0, 0));
    cdb[0] = 0x88;
    let (d, csw) = command_in(&mut p, 2, 2048, &cdb);
    assert_eq!(csw, csw_bytes(2, 0, 0));
    assert_eq!(d, data);
    assert_eq!(read_blocks(&mut p, 3, 32, 4), data);
}

#[test]
fn storage_errors_are_medium_errors() {
    let mut p = Pendrive::with_storage(Broken, "0123456789AB");
    p.data_out(2, &cbw(1, 512, true, &read10(0, 1))).unwrap();
    assert_eq!(p.data_in(1, 512), InResponse::Stall);
    assert_eq!(read_csw(&mut p), csw_bytes(1, 512, 1));
    assert_eq!(request_sense(&mut p), (0x03, 0x11, 0x00));

    p.data_out(2, &cbw(2, 512, false, &write10(0, 1))).unwrap();
    p.data_out(2, &[0; 512]).unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(2, 512, 1));
    assert_eq!(request_sense(&mut p), (0x03, 0x0c, 0x00));

    p.data_out(2, &cbw(3, 0, false, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(read_csw(&mut p), csw_bytes(3, 0, 1));
    assert_eq!(request_sense(&mut p), (0x03, 0x0c, 0x00));
}

#[test]
fn an_image_truncated_under_the_pendrive_is_a_medium_error() {
    let img = image();
    let mut p = pendrive(&img);
    img.as_file().set_len(512).unwrap();
    p.data_out(2, &cbw(1, 1024, true, &read10(4, 2))).unwrap();
    assert_eq!(p.data_in(1, 1024), InResponse::Stall);
    assert_eq!(read_csw(&mut p), csw_bytes(1, 1024, 1));
    assert_eq!(request_sense(&mut p), (0x03, 0x11, 0x00));
}

#[test]
fn reset_abandons_a_command_in_flight() {
    let img = image();
    let mut p = pendrive(&img);
    p.data_out(2, &cbw(1, 4096, true, &read10(0, 8))).unwrap();
    assert_eq!(data_in(&mut p, 512).len(), 512);
    mass_storage_reset(&mut p);
    assert_eq!(p.data_in(1, 512), InResponse::Nak);
    p.data_out(2, &cbw(2, 4096, false, &write10(0, 8))).unwrap();
    p.data_out(2, &[1; 1000]).unwrap();
    p.set_configuration(1);
    assert_eq!(p.data_in(1, 13), InResponse::Nak);
    assert_eq!(read_blocks(&mut p, 3, 8, 1), vec![0; 512]);
}

#[test]
fn open_rejects_unusable_images() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let err = Pendrive::open(&missing).unwrap_err();
    assert!(matches!(err, PendriveError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.img"), "{err}");

    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let err = Pendrive::open(&empty).unwrap_err();
    assert!(matches!(err, PendriveError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.img"), "{err}");

    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, vec![0; 1000]).unwrap();
    let err = Pendrive::open(&odd).unwrap_err();
    assert!(
        matches!(err, PendriveError::NotBlockAligned { size: 1000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("odd.img"), "{err}");
    assert!(err.to_string().contains("1000"), "{err}");

    let err = Pendrive::open(dir.path()).unwrap_err();
    assert!(matches!(err, PendriveError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*dir.path().to_string_lossy()),
        "{err}"
    );
}

/// A deterministic xorshift generator for the robustness test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn arbitrary_host_traffic_never_panics() {
    let medium = Memory(Arc::new(Mutex::new(vec![0; 128 * 512])));
    let mut p = Pendrive::with_storage(medium.clone(), "00112233445566");
    let opcodes = [
        0x00, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x23, 0x25, 0x28, 0x2a, 0x2f, 0x35, 0x5a,
        0x88, 0x8a, 0x91, 0x9e, 0xa0, 0x4a, 0xff,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..50_000 {
        match rng.below(8) {
            0 | 1 => {
                // A well-formed CBW with a random command block.
                let cdb_len = 1 + rng.below(16) as usize;
                let mut cdb = rng.bytes(cdb_len);
                cdb[0] = opcodes[rng.below(opcodes.len() as u64) as usize];
                if rng.below(2) == 0 {
                    // Small LBAs and lengths, so some commands succeed.
                    for b in cdb.iter_mut().skip(1) {
                        *b &= 0x03;
                    }
                }
                let len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(70_000) as u32,
                    2 => 512 * rng.below(20) as u32,
                    _ => rng.next() as u32,
                };
                let mut c = cbw(rng.next() as u32, len, rng.below(2) == 0, &cdb);
                if rng.below(20) == 0 {
                    c[13] = rng.next() as u8;
                }
                let _ = p.data_out(2, &c);
            }
            2 => {
                let len = rng.below(2000) as usize;
                let data = rng.bytes(len);
                let _ = p.data_out(2, &data);
            }
            3..=5 => {
                let max_len = match rng.below(3) {
                    0 => rng.below(20) as usize,
                    1 => rng.below(5000) as usize,
                    _ => 13,
                };
                if let InResponse::Data(d) = p.data_in(1, max_len) {
                    assert!(d.len() <= max_len);
                }
            }
            6 => {
                let s = SetupPacket::from_bytes(rng.bytes(8).try_into().unwrap());
                if let Ok(d) = p.control(&s, &[]) {
                    assert!(d.len() <= usize::from(s.length));
                }
            }
            _ => match rng.below(4) {
                0 => p.clear_halt(0x81),
                1 => p.clear_halt(0x02),
                2 => mass_storage_reset(&mut p),
                _ => p.reset(),
            },
        }
    }
    assert_eq!(medium.block_count(), 128);
}
