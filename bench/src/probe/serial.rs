//! `serial-ping`: round trips through a serial port whose other end
//! echoes (`serial-echo` on the gadget's `/dev/ttyGS0`).
//!
//! A message of `size` bytes is printable ASCII: `#`, the sequence number
//! in ten decimal digits, filler letters that depend on the number, `\n`.
//! The `#` lets the reader find the next message after stray bytes; the
//! rest lets it check an echo byte for byte. Printable text also survives
//! a tool that looks at it in a terminal.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::ping::{self, EchoLink, PingResult, PingSpec, Reply, Unit};
use super::sys;
use super::tty::RawTty;

/// `#`, ten digits and `\n`.
pub const MIN_SIZE: usize = 12;
pub const MAX_SIZE: usize = 4096;
const DIGITS: usize = 10;

/// How long the port must be quiet before the first ping, and the most
/// time spent waiting for that.
pub const DRAIN_QUIET: Duration = Duration::from_millis(200);
pub const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// The message with sequence number `seq`, `size` bytes long.
pub fn message(seq: u32, size: usize) -> Vec<u8> {
    assert!(size >= MIN_SIZE);
    let mut m = format!("#{seq:0DIGITS$}").into_bytes();
    m.extend((0..size - MIN_SIZE).map(|i| b'a' + ((u64::from(seq) + i as u64) % 26) as u8));
    m.push(b'\n');
    m
}

/// Whether byte `b` can be at position `i` of a message of `size` bytes.
fn fits(i: usize, b: u8, size: usize) -> bool {
    match i {
        0 => b == b'#',
        1..=DIGITS => b.is_ascii_digit(),
        i if i == size - 1 => b == b'\n',
        _ => b.is_ascii_lowercase(),
    }
}

/// Splits a byte stream into echoes and garbage.
#[derive(Debug)]
pub struct Framer {
    size: usize,
    pending: Vec<u8>,
}

impl Framer {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    fn discard(&mut self, n: usize) -> Option<Reply> {
        self.pending.drain(..n);
        Some(Reply::Garbage(n as u64))
    }

    /// The next reply in what has come so far; `None`: more bytes needed.
    pub fn next_reply(&mut self) -> Option<Reply> {
        if self.pending.is_empty() {
            return None;
        }
        match self.pending.iter().position(|&b| b == b'#') {
            None => self.discard(self.pending.len()),
            Some(0) => {
                let have = self.pending.len().min(self.size);
                if !(1..have).all(|i| fits(i, self.pending[i], self.size)) {
                    // Not a message after all: skip its `#` and look again.
                    return self.discard(1);
                }
                if have < self.size {
                    return None;
                }
                let digits = std::str::from_utf8(&self.pending[1..=DIGITS]).ok()?;
                match digits.parse::<u32>() {
                    Ok(seq) if self.pending[..self.size] == message(seq, self.size)[..] => {
                        self.pending.drain(..self.size);
                        Some(Reply::Echo(seq))
                    }
                    _ => self.discard(1),
                }
            }
            Some(start) => self.discard(start),
        }
    }
}

/// A raw-mode serial port to an echoing peer.
#[derive(Debug)]
pub struct SerialLink {
    tty: RawTty,
    framer: Framer,
    size: usize,
    last_read: Instant,
}

impl SerialLink {
    pub fn new(tty: RawTty, size: usize) -> Self {
        Self {
            tty,
            framer: Framer::new(size),
            size,
            last_read: Instant::now(),
        }
    }

    /// Throws away what is waiting: in the kernel's buffer, then whatever
    /// still trickles in. Returns the bytes discarded after the flush.
    pub fn drain(&mut self) -> io::Result<u64> {
        self.tty.flush_input()?;
        ping::drain(self.tty.file(), DRAIN_QUIET, DRAIN_LIMIT, Unit::Bytes)
    }
}

impl EchoLink for SerialLink {
    fn send(&mut self, seq: u32) -> io::Result<()> {
        let m = message(seq, self.size);
        sys::write_all(
            self.tty.file(),
            &m,
            Some(Instant::now() + Duration::from_secs(5)),
        )
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<(Reply, Instant)>> {
        let mut buf = [0; 4096];
        loop {
            if let Some(reply) = self.framer.next_reply() {
                return Ok(Some((reply, self.last_read)));
            }
            if !sys::wait(self.tty.file(), libc::POLLIN, Some(deadline))? {
                return Ok(None);
            }
            match sys::try_read(self.tty.file(), &mut buf)? {
                Some(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "hang-up")),
                Some(n) => {
                    self.last_read = Instant::now();
                    self.framer.push(&buf[..n]);
                }
                None => {}
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SerialPingResult {
    pub probe: &'static str,
    pub device: String,
    pub size: usize,
    #[serde(flatten)]
    pub ping: PingResult,
}

pub fn serial_ping(tty: &Path, size: usize, spec: &PingSpec) -> Result<SerialPingResult> {
    anyhow::ensure!(
        (MIN_SIZE..=MAX_SIZE).contains(&size),
        "the message size must be {MIN_SIZE} to {MAX_SIZE} bytes"
    );
    let raw = RawTty::open(tty).with_context(|| format!("cannot open {}", tty.display()))?;
    let mut link = SerialLink::new(raw, size);
    let drained = link
        .drain()
        .with_context(|| format!("cannot drain {}", tty.display()))?;
    let ping = ping::ping(&mut link, spec, drained)
        .with_context(|| format!("ping through {} failed", tty.display()))?;
    Ok(SerialPingResult {
        probe: "serial-ping",
        device: tty.display().to_string(),
        size,
        ping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_number_and_size() {
        assert_eq!(message(42, 16), b"#0000000042qrst\n");
        assert_eq!(message(u32::MAX, 12), b"#4294967295\n");
        assert_eq!(message(7, 100).len(), 100);
    }

    #[test]
    fn framer_finds_echoes_among_garbage_and_split_reads() {
        let mut f = Framer::new(16);
        let mut stream = b"xx".to_vec();
        stream.extend(message(1, 16));
        stream.extend(b"#12#");
        stream.extend(message(2, 16));
        // An echo with one letter wrong, then a good one.
        let mut bad = message(3, 16);
        bad[13] = b'a';
        stream.extend(&bad);
        stream.extend(message(4, 16));
        let mut got = Vec::new();
        // One byte at a time: a message may end up in several reads.
        for b in &stream {
            f.push(std::slice::from_ref(b));
            while let Some(r) = f.next_reply() {
                got.push(r);
            }
        }
        let echoes: Vec<_> = got
            .iter()
            .filter_map(|r| match r {
                Reply::Echo(s) => Some(*s),
                _ => None,
            })
            .collect();
        let garbage: u64 = got
            .iter()
            .map(|r| match r {
                Reply::Garbage(n) => *n,
                _ => 0,
            })
            .sum();
        assert_eq!(echoes, [1, 2, 4]);
        assert_eq!(garbage, 2 + 4 + 16);
    }

    #[test]
    fn framer_waits_for_the_rest_of_a_message() {
        let mut f = Framer::new(16);
        f.push(&message(9, 16)[..15]);
        assert_eq!(f.next_reply(), None);
        f.push(b"\n");
        assert_eq!(f.next_reply(), Some(Reply::Echo(9)));
        assert_eq!(f.next_reply(), None);
    }
}
