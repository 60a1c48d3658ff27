//! `vusb-probe disk` against a scratch file: O_DIRECT on the disk file
//! system of /var/tmp (tmpfs may refuse O_DIRECT), and --no-direct.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::run;
use vusb_bench::probe::disk_pattern::{DiskPattern, SECTOR};

const MIB: u64 = 1 << 20;

fn scratch(mib: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("vusb-probe-disk")
        .tempdir_in("/var/tmp")
        .expect("cannot make a scratch directory in /var/tmp");
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(mib * MIB))
        .expect("cannot make the scratch file");
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

fn disk(op: &str, path: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["disk", op, "--device", path];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn write_then_read_back_with_o_direct() {
    let (_dir, path) = scratch(4);
    let w = disk(
        "write",
        &path,
        &["--mib", "4", "--block-kib", "256", "--seed", "9"],
    );
    assert_eq!(w.code, 0, "{}", w.stderr);
    let j = w.json.unwrap();
    assert_eq!(j["probe"], "disk");
    assert_eq!(j["op"], "write");
    assert_eq!(j["direct"], true);
    assert_eq!(j["bytes"], 4 * MIB);
    assert_eq!(j["block_bytes"], 256 * 1024);
    assert!(j["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["fsync_seconds"].as_f64().unwrap() <= j["seconds"].as_f64().unwrap());
    assert!(j["seconds"].as_f64().unwrap() <= j["wall_seconds"].as_f64().unwrap());
    assert!(j.get("mismatched_blocks").is_none());

    // The file holds the pattern, at the right places.
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0; 3 * SECTOR];
    file.read_exact_at(&mut buf, 3 * MIB + 1024).unwrap();
    assert_eq!(
        DiskPattern::new(9).first_mismatch(3 * MIB + 1024, &buf),
        None
    );

    // Read back with another block size: the pattern does not depend on it.
    let r = disk(
        "read",
        &path,
        &["--mib", "4", "--block-kib", "64", "--seed", "9"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json.unwrap();
    assert_eq!(j["op"], "read");
    assert_eq!(j["mismatched_blocks"], 0);
    assert!(j["first_mismatch_offset"].is_null());
    assert_eq!(j["bytes"], 4 * MIB);
    assert!(j.get("fsync_seconds").is_none());
}

#[test]
fn corrupted_or_foreign_data_fails_the_read() {
    let (_dir, path) = scratch(2);
    assert_eq!(
        disk("write", &path, &["--mib", "2", "--block-kib", "128"]).code,
        0
    );
    // One flipped byte in the second MiB (its 700th byte).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, MIB + 700).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], MIB + 700).unwrap();
    file.sync_all().unwrap();

    let r = disk("read", &path, &["--mib", "2", "--block-kib", "128"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("check failed"), "{}", r.stderr);
    let j = r.json.unwrap();
    assert_eq!(j["mismatched_blocks"], 1);
    assert_eq!(j["first_mismatch_offset"], MIB + 512);

    // Another seed's data is wrong everywhere.
    let r = disk(
        "read",
        &path,
        &["--mib", "2", "--block-kib", "128", "--seed", "2"],
    );
    assert_eq!(r.code, 3);
    assert_eq!(r.json.unwrap()["mismatched_blocks"], 16);
}

#[test]
fn without_o_direct_it_goes_through_the_page_cache() {
    // /dev/shm is tmpfs, where O_DIRECT may or may not be refused.
    let dir = tempfile::Builder::new()
        .prefix("vusb-probe-disk")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(MIB).unwrap();
    let path = path.to_str().unwrap();
    let w = disk("write", path, &["--mib", "1", "--no-direct"]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    assert_eq!(w.json.unwrap()["direct"], false);
    let r = disk("read", path, &["--mib", "1", "--no-direct"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json.unwrap()["mismatched_blocks"], 0);
}

#[test]
fn a_missing_or_small_device_is_an_error_and_nothing_is_created() {
    let (dir, path) = scratch(1);
    let r = disk("write", &path, &["--mib", "2"]);
    assert_eq!(r.code, 1);
    assert!(r.json.is_none());
    assert!(r.stderr.contains("fewer than"), "{}", r.stderr);

    let missing = dir.path().join("sdz");
    let r = disk("write", missing.to_str().unwrap(), &["--mib", "1"]);
    assert_eq!(r.code, 1);
    assert!(r.json.is_none());
    assert!(r.stderr.contains("cannot open"), "{}", r.stderr);
    assert!(!missing.exists());

    // Block sizes that are not whole sectors cannot happen (KiB), and a
    // zero block size is refused by the argument parser.
    assert_eq!(
        disk("read", &path, &["--mib", "1", "--block-kib", "0"]).code,
        2
    );
}
