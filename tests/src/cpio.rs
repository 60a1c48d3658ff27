//! A writer for "newc" cpio archives, the format the kernel unpacks into its initramfs.
//!
//! Each test's files (its `/test.sh` and anything else it needs) travel as a second, small,
//! uncompressed archive appended to the cached initramfs; the kernel unpacks concatenated
//! archives one after the other, later files overriding earlier ones.

use std::collections::BTreeSet;

/// Builds an archive in memory.
#[derive(Debug, Default)]
pub struct CpioArchive {
    buf: Vec<u8>,
    dirs: BTreeSet<String>,
    next_ino: u32,
}

const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

impl CpioArchive {
    pub fn new() -> Self {
        Self {
            next_ino: 0x7000_0000,
            ..Self::default()
        }
    }

    /// Adds a regular file at `path` (absolute or relative to the archive root) with the given
    /// permission bits. Missing parent directories are added first: the kernel does not create
    /// them by itself.
    pub fn add_file(&mut self, path: &str, contents: &[u8], mode: u32) {
        let path = normalize(path);
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if self.dirs.insert(parent.clone()) {
                self.entry(&parent.clone(), S_IFDIR | 0o755, 2, &[]);
            }
        }
        self.entry(&path, S_IFREG | (mode & 0o7777), 1, contents);
    }

    /// Ends the archive and returns its bytes (a multiple of 4 long).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        self.next_ino += 1;
        let name_size = u32::try_from(name.len() + 1).expect("cpio name too long");
        let file_size = u32::try_from(data.len()).expect("cpio member larger than 4 GiB");
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            file_size,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            name_size,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

fn normalize(path: &str) -> String {
    let path = path.trim_start_matches('/');
    assert!(
        !path.is_empty()
            && !path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".."),
        "bad path for a cpio member: {path:?}"
    );
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, data) of each member, checking the layout rules on the way.
    fn parse(mut buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let total = buf.len();
        let mut out = Vec::new();
        loop {
            let offset = total - buf.len();
            assert_eq!(offset % 4, 0, "header not 4-byte aligned");
            assert_eq!(&buf[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, file_size, name_size) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&buf[110..110 + name_size - 1]).unwrap();
            assert_eq!(buf[110 + name_size - 1], 0);
            let data_start = (110 + name_size).next_multiple_of(4);
            let data = buf[data_start..data_start + file_size].to_vec();
            if name == "TRAILER!!!" {
                assert_eq!(buf.len(), data_start, "bytes after the trailer");
                return out;
            }
            out.push((name.to_owned(), mode as u32, data));
            buf = &buf[(data_start + file_size).next_multiple_of(4)..];
        }
    }

    #[test]
    fn files_and_their_parent_directories_round_trip() {
        let mut archive = CpioArchive::new();
        archive.add_file("/test.sh", b"echo hi\n", 0o755);
        archive.add_file("etc/vusb/a.conf", b"x", 0o644);
        archive.add_file("/etc/vusb/b.conf", b"", 0o600);
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        let members = parse(&bytes);
        let names: Vec<_> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "test.sh",
                "etc",
                "etc/vusb",
                "etc/vusb/a.conf",
                "etc/vusb/b.conf"
            ]
        );
        assert_eq!(members[0].1, S_IFREG | 0o755);
        assert_eq!(members[0].2, b"echo hi\n");
        assert_eq!(members[1].1, S_IFDIR | 0o755);
        assert_eq!(members[4].1, S_IFREG | 0o600);
    }

    #[test]
    #[should_panic(expected = "bad path")]
    fn parent_references_are_refused() {
        CpioArchive::new().add_file("/etc/../x", b"", 0o644);
    }
}
