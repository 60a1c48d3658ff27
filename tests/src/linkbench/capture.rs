//! Where a transaction's time goes, from a capture of the HRH's network interface.
//!
//! With `vusb-linkbench --capture`, QEMU records every packet of the HRH guest's NIC with the
//! host's clock (`filter-dump` on its user-mode netdev). This module reassembles the USB/IP
//! connections in the capture, finds each workload's transactions in the window the
//! workload ran, and splits every transaction in two at the HRH's NIC:
//!
//! * **HRH**: from the last byte of the request in (a serial or HID message out to the
//!   device, a SCSI command block) to the first byte of the answer out (the echo, the SCSI
//!   status). The emulated link's delay, which netem adds inside the HRH, the HRH's network
//!   stack, the USB/IP server and the gadget;
//! * **ISP**: from that answer to the next request in. QEMU's user-mode network, the
//!   USB/IP client (vusb-backend or the guest's vhci-hcd), the guest and its workload.
//!
//! Paths with the same client and different servers (ours-virtio and mixed) then differ
//! only in the HRH's part, and that difference is the servers' own.
//!
//! Only USB/IP connections (the HRH's port 3240) are read: usbredirect's are not. QEMU
//! stamps the packets with its own clock; knocks on the HRH at the start of every workload
//! tie it to the host's, in which the workloads' windows are kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Result};
use serde::Serialize;

use super::report::Cell;
use crate::hrh::MARK_PORT;

/// The HRH's USB/IP port, inside its guest.
const USBIP_PORT: u16 = crate::hrh::HRH_GUEST_PORT;

/// How far apart the offsets of a capture's knocks from their windows may be, in seconds.
const MAX_OFFSET_SPREAD: f64 = 1.0;

/// The workloads whose transactions are split, and what starts and ends one.
const SPLIT_WORKLOADS: [(&str, Rule); 4] = [
    ("serial-back-to-back", Rule::Echo),
    ("hid-ping", Rule::Echo),
    ("disk-write", Rule::Scsi),
    ("disk-read", Rule::Scsi),
];

/// What makes a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Data out to the device, then the first data back from it, both on endpoints other
    /// than 0 (so that the serial line's set-up requests are not taken for messages).
    Echo,
    /// A mass-storage command block wrapper ("USBC") out, then its status ("USBS") back.
    Scsi,
}

/// One workload of one cell, split.
#[derive(Debug, Clone, Serialize)]
pub struct Split {
    pub path: &'static str,
    pub link: Option<&'static str>,
    pub workload: &'static str,
    /// Transactions found (on the connection with the most of them in the window).
    pub transactions: usize,
    /// The HRH's part of each transaction, in microseconds.
    pub hrh_us: Stats,
    /// The ISP's part, from an answer to the next request.
    pub isp_us: Stats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub p50: f64,
    pub mean: f64,
    pub sum: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let sum: f64 = v.iter().sum();
        Self {
            p50: v[v.len() / 2],
            mean: sum / v.len() as f64,
            sum,
        }
    }
}

/// Whether the cells handed to [`split`] are all the run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// Every cell: the capture holds a knock for each of their workloads, no more.
    All,
    /// The cells a stopped run saved: the capture may hold knocks for workloads after them.
    Saved,
}

/// Splits the transactions of every cell's workloads found in the pcap file `pcap`.
pub fn split(pcap: &[u8], cells: &[Cell], which: Cells) -> Result<Vec<Split>> {
    let frames = packets(pcap)?;
    let offset = clock_offset(&frames, cells, which)?;
    let connections = connections(&frames);
    let messages: Vec<Vec<Message>> = connections.iter().map(Connection::messages).collect();
    let mut splits = Vec::new();
    for cell in cells {
        for (workload, rule) in SPLIT_WORKLOADS {
            let Some(&[from, to]) = cell.windows.get(workload) else {
                continue;
            };
            let best = messages
                .iter()
                .map(|m| transactions(m, rule, from + offset, to + offset))
                .max_by_key(Vec::len)
                .unwrap_or_default();
            if best.is_empty() {
                continue;
            }
            let hrh = best.iter().map(|t| t.hrh_us).collect();
            let isp = best.iter().filter_map(|t| t.isp_us).collect();
            splits.push(Split {
                path: cell.path.name(),
                link: cell.link,
                workload,
                transactions: best.len(),
                hrh_us: Stats::of(hrh),
                isp_us: Stats::of(isp),
            });
        }
    }
    Ok(splits)
}

/// The splits as a markdown table, milliseconds.
pub fn markdown(splits: &[Split]) -> String {
    let mut s = String::from(
        "Each transaction split at the HRH's network interface (vusb-linkbench --capture): \
         the HRH's part (link, HRH kernel, USB/IP server, gadget) from the request's last \
         byte in to the answer's first byte out, the ISP's part from that answer to the next \
         request. p50 and mean in ms; for the pendrive, the totals in s.\n\n\
         | link | path | workload | n | HRH p50 | ISP p50 | HRH mean | ISP mean | HRH total | ISP total |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for x in splits {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            x.link.unwrap_or("–"),
            x.path,
            x.workload,
            x.transactions,
            x.hrh_us.p50 / 1e3,
            x.isp_us.p50 / 1e3,
            x.hrh_us.mean / 1e3,
            x.isp_us.mean / 1e3,
            x.hrh_us.sum / 1e6,
            x.isp_us.sum / 1e6,
        ));
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Transaction {
    hrh_us: f64,
    isp_us: Option<f64>,
}

/// The transactions of one connection's messages that start inside `[from, to]`.
fn transactions(messages: &[Message], rule: Rule, from: f64, to: f64) -> Vec<Transaction> {
    let mut found: Vec<Transaction> = Vec::new();
    let mut request: Option<f64> = None;
    let mut last_answer: Option<f64> = None;
    for m in messages.iter().filter(|m| m.t >= from && m.t <= to) {
        let fits = |signature: &[u8]| match rule {
            Rule::Echo => m.endpoint != 0,
            Rule::Scsi => m.head.starts_with(signature),
        };
        let starts = m.kind == Kind::Submit && !m.is_in && m.data_len > 0 && fits(b"USBC");
        let ends = m.kind == Kind::Reply && m.is_in && m.data_len > 0 && fits(b"USBS");
        if starts && request.is_none() {
            if let (Some(answer), Some(prev)) = (last_answer.take(), found.last_mut()) {
                prev.isp_us = Some((m.t - answer) * 1e6);
            }
            request = Some(m.t);
        } else if ends {
            if let Some(start) = request.take() {
                found.push(Transaction {
                    hrh_us: (m.t - start) * 1e6,
                    isp_us: None,
                });
                last_answer = Some(m.t);
            }
        }
    }
    found
}

/// The capture's clock minus the host's. Each workload's window starts with a knock on the
/// HRH's [`MARK_PORT`] ([`crate::hrh::Hrh::mark`]); the capture holds the knocks' SYNs in
/// the same order. The median of the differences: a knock whose SYN QEMU sent late does
/// not move it. Knocks beyond the windows are those of a cell a stopped run did not save;
/// they come last.
fn clock_offset(frames: &[Frame], cells: &[Cell], which: Cells) -> Result<f64> {
    let mut knockers = HashSet::new();
    let knocks: Vec<f64> = frames
        .iter()
        .filter_map(|&(t, frame)| {
            let seg = segment(frame)?;
            // A SYN sent again (lost on the link) is the same knock.
            (seg.syn && seg.dst.1 == MARK_PORT && knockers.insert(seg.src)).then_some(t)
        })
        .collect();
    let mut starts: Vec<f64> = cells
        .iter()
        .flat_map(|c| c.windows.values().map(|w| w[0]))
        .collect();
    starts.sort_by(f64::total_cmp);
    let paired = match which {
        Cells::All => knocks.len() == starts.len(),
        Cells::Saved => knocks.len() >= starts.len(),
    };
    if starts.is_empty() || !paired {
        bail!(
            "the capture holds {} knocks on port {MARK_PORT} for {} workloads; \
             its clock cannot be tied to the host's",
            knocks.len(),
            starts.len()
        );
    }
    let mut differences: Vec<f64> = knocks.iter().zip(&starts).map(|(k, s)| k - s).collect();
    differences.sort_by(f64::total_cmp);
    // The two clocks drift apart by far less than this over a run; knocks paired with the
    // wrong windows land whole workloads apart.
    let spread = differences[differences.len() - 1] - differences[0];
    if spread > MAX_OFFSET_SPREAD {
        bail!(
            "the knocks on port {MARK_PORT} do not pair up with the workloads' windows: \
             their offsets spread over {spread:.1} s"
        );
    }
    Ok(differences[differences.len() / 2])
}

// ---- pcap, Ethernet, IPv4, TCP ----

/// A captured frame: its time (s since the epoch) and its bytes.
type Frame<'a> = (f64, &'a [u8]);

/// The frames of a classic pcap file with Ethernet frames (what QEMU's filter-dump writes).
fn packets(pcap: &[u8]) -> Result<Vec<Frame<'_>>> {
    if pcap.len() < 24 {
        bail!("not a pcap file: {} bytes", pcap.len());
    }
    let magic = u32::from_le_bytes(pcap[0..4].try_into().unwrap());
    let (little, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        _ => bail!("not a pcap file: magic {magic:#010x}"),
    };
    let u32_at = |b: &[u8], i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let link_type = u32_at(pcap, 20);
    if link_type != 1 {
        bail!("pcap link type {link_type}, expected Ethernet (1)");
    }
    let mut frames = Vec::new();
    let mut at = 24;
    // A record cut short (QEMU still writing, or killed) ends the file.
    while at + 16 <= pcap.len() {
        let seconds = f64::from(u32_at(pcap, at));
        let fraction = f64::from(u32_at(pcap, at + 4));
        let len = u32_at(pcap, at + 8) as usize;
        let Some(data) = pcap.get(at + 16..at + 16 + len) else {
            break;
        };
        let t = seconds + fraction / if nanos { 1e9 } else { 1e6 };
        frames.push((t, data));
        at += 16 + len;
    }
    Ok(frames)
}

/// The TCP part of an Ethernet frame, if it carries IPv4 and TCP.
#[derive(Debug)]
struct Segment<'a> {
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    syn: bool,
    payload: &'a [u8],
}

fn segment(frame: &[u8]) -> Option<Segment<'_>> {
    let be16 = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    if frame.len() < 14 || be16(frame, 12) != 0x0800 {
        return None;
    }
    let ip = &frame[14..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    // The IP length, not the frame's: Ethernet pads short frames.
    let total = usize::from(be16(ip, 2)).min(ip.len());
    let tcp = ip.get(header..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    Some(Segment {
        src: (ip[12..16].try_into().ok()?, be16(tcp, 0)),
        dst: (ip[16..20].try_into().ok()?, be16(tcp, 2)),
        seq: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
        syn: tcp[13] & 0x02 != 0,
        payload: tcp.get(data_offset..)?,
    })
}

/// One direction of a TCP connection, put back in order.
#[derive(Debug, Default)]
struct Stream {
    /// The sequence number of the next byte expected; unknown until the SYN was seen.
    next: Option<u32>,
    data: Vec<u8>,
    /// Where each in-order piece starts in `data`, and when it was seen.
    pieces: Vec<(usize, f64)>,
    /// Segments ahead of a gap, by sequence number.
    ahead: BTreeMap<u32, (f64, Vec<u8>)>,
}

impl Stream {
    fn push(&mut self, t: f64, seg: &Segment) {
        if seg.syn {
            self.next = Some(seg.seq.wrapping_add(1));
            return;
        }
        // A connection that began before the capture is not read.
        if self.next.is_none() || seg.payload.is_empty() {
            return;
        }
        self.ahead.insert(seg.seq, (t, seg.payload.to_vec()));
        while let Some(next) = self.next {
            let Some(seq) = self
                .ahead
                .keys()
                .copied()
                .find(|&s| (s.wrapping_sub(next) as i32) <= 0)
            else {
                break;
            };
            let (seen, bytes) = self.ahead.remove(&seq).unwrap();
            // A retransmission may repeat bytes already taken.
            let skip = next.wrapping_sub(seq) as usize;
            if skip < bytes.len() {
                // Bytes after a gap are there for the reader once the gap is filled.
                self.pieces.push((self.data.len(), seen.max(t)));
                self.data.extend_from_slice(&bytes[skip..]);
                self.next = Some(next.wrapping_add((bytes.len() - skip) as u32));
            }
        }
    }

    /// When the byte at `offset` was seen.
    fn time_of(&self, offset: usize) -> f64 {
        let i = self.pieces.partition_point(|&(start, _)| start <= offset);
        self.pieces[i.saturating_sub(1)].1
    }
}

/// A USB/IP connection to the HRH.
#[derive(Debug, Default)]
struct Connection {
    to_server: Stream,
    from_server: Stream,
}

/// The USB/IP connections in the frames, in the order they were opened.
fn connections(frames: &[Frame]) -> Vec<Connection> {
    let mut by_client: HashMap<([u8; 4], u16), usize> = HashMap::new();
    let mut all: Vec<Connection> = Vec::new();
    for &(t, frame) in frames {
        let Some(seg) = segment(frame) else { continue };
        let (client, to_server) = if seg.dst.1 == USBIP_PORT {
            (seg.src, true)
        } else if seg.src.1 == USBIP_PORT {
            (seg.dst, false)
        } else {
            continue;
        };
        // A client's SYN opens a new connection, also on a reused client port.
        if to_server && seg.syn {
            by_client.insert(client, all.len());
            all.push(Connection::default());
        }
        let Some(&i) = by_client.get(&client) else {
            continue;
        };
        let c = &mut all[i];
        if to_server {
            c.to_server.push(t, &seg);
        } else {
            c.from_server.push(t, &seg);
        }
    }
    all
}

// ---- USB/IP ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Submit,
    Reply,
}

/// A CMD_SUBMIT as it arrived complete, or a RET_SUBMIT as it began to leave.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    t: f64,
    kind: Kind,
    is_in: bool,
    endpoint: u8,
    /// The data it carries.
    data_len: usize,
    /// The first bytes of that data.
    head: Vec<u8>,
}

const VERSION: [u8; 2] = [0x01, 0x11];
const OP_REQ_IMPORT: u16 = 0x8003;
const OP_REP_IMPORT: u16 = 0x0003;
const OP_REQ_IMPORT_LEN: usize = 8 + 32;
const OP_REP_IMPORT_LEN: usize = 8 + 312;
const HEADER_LEN: usize = 48;
const CMD_SUBMIT: u32 = 1;
const CMD_UNLINK: u32 = 2;
const RET_SUBMIT: u32 = 3;
const RET_UNLINK: u32 = 4;

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
}

/// Isochronous descriptors after a PDU's data (non-isochronous URBs say 0 or 0xffffffff).
fn iso_len(packets: u32) -> usize {
    if packets == 0 || packets == u32::MAX {
        0
    } else {
        packets as usize * 16
    }
}

impl Connection {
    /// The URBs of an imported device's connection, in time order; none for a device list.
    fn messages(&self) -> Vec<Message> {
        let up = &self.to_server.data;
        let down = &self.from_server.data;
        let op = |b: &[u8], code: u16| {
            b.len() >= 8 && b[0..2] == VERSION && b[2..4] == code.to_be_bytes()
        };
        if !op(up, OP_REQ_IMPORT) || !op(down, OP_REP_IMPORT) || be32(down, 4) != 0 {
            return Vec::new();
        }
        let mut messages = Vec::new();
        // Servers may zero direction and endpoint in replies: the request's count.
        let mut request_of = HashMap::new();
        let mut at = OP_REQ_IMPORT_LEN;
        while at + HEADER_LEN <= up.len() {
            let h = &up[at..];
            let len = match be32(h, 0) {
                CMD_SUBMIT => {
                    let is_in = be32(h, 12) == 1;
                    let endpoint = (be32(h, 16) & 0x0f) as u8;
                    let data_len = if is_in { 0 } else { be32(h, 24) as usize };
                    let len = HEADER_LEN + data_len + iso_len(be32(h, 32));
                    if at + len > up.len() {
                        break;
                    }
                    request_of.insert(be32(h, 4), (is_in, endpoint));
                    messages.push(Message {
                        t: self.to_server.time_of(at + len - 1),
                        kind: Kind::Submit,
                        is_in,
                        endpoint,
                        data_len,
                        head: h[HEADER_LEN..HEADER_LEN + data_len.min(4)].to_vec(),
                    });
                    len
                }
                CMD_UNLINK => HEADER_LEN,
                _ => break,
            };
            at += len;
        }
        let mut at = OP_REP_IMPORT_LEN;
        while at + HEADER_LEN <= down.len() {
            let h = &down[at..];
            let len = match be32(h, 0) {
                RET_SUBMIT => {
                    let (is_in, endpoint) =
                        request_of.get(&be32(h, 4)).copied().unwrap_or((false, 0));
                    let data_len = if is_in { be32(h, 24) as usize } else { 0 };
                    let len = HEADER_LEN + data_len + iso_len(be32(h, 32));
                    if at + len > down.len() {
                        break;
                    }
                    messages.push(Message {
                        t: self.from_server.time_of(at),
                        kind: Kind::Reply,
                        is_in,
                        endpoint,
                        data_len,
                        head: h[HEADER_LEN..HEADER_LEN + data_len.min(4)].to_vec(),
                    });
                    len
                }
                RET_UNLINK => HEADER_LEN,
                _ => break,
            };
            at += len;
        }
        messages.sort_by(|a, b| a.t.total_cmp(&b.t));
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linkbench::PathKind;

    const CLIENT: ([u8; 4], u16) = ([10, 0, 2, 2], 40000);
    const SERVER: ([u8; 4], u16) = ([10, 0, 2, 15], USBIP_PORT);

    /// A pcap file of the given frames, little-endian with microseconds.
    fn pcap(frames: &[(f64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 4, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (t, f) in frames {
            record(&mut out, *t, f);
        }
        out
    }

    fn record(pcap: &mut Vec<u8>, t: f64, frame: &[u8]) {
        pcap.extend_from_slice(&(t.trunc() as u32).to_le_bytes());
        pcap.extend_from_slice(&((t.fract() * 1e6).round() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(frame);
    }

    fn tcp_frame(
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        seq: u32,
        syn: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = 20 + 20 + payload.len();
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0]);
        ip.extend_from_slice(&src.0);
        ip.extend_from_slice(&dst.0);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f.push(5 << 4);
        f.push(if syn { 0x02 } else { 0x10 });
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(payload);
        f
    }

    fn header(command: u32, seqnum: u32, is_in: bool, words: [u32; 5]) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [command, seqnum, 0, u32::from(is_in), 1] {
            h.extend_from_slice(&w.to_be_bytes());
        }
        for w in words {
            h.extend_from_slice(&w.to_be_bytes());
        }
        h.extend_from_slice(&[0; 8]);
        h
    }

    fn submit(seqnum: u32, is_in: bool, data: &[u8], len: u32) -> Vec<u8> {
        let mut m = header(CMD_SUBMIT, seqnum, is_in, [0, len, 0, 0, 0]);
        m.extend_from_slice(data);
        m
    }

    /// Replies zero the direction, as stock servers do.
    fn reply(seqnum: u32, data: &[u8]) -> Vec<u8> {
        let mut m = header(RET_SUBMIT, seqnum, false, [0, data.len() as u32, 0, 0, 0]);
        m.extend_from_slice(data);
        m
    }

    /// A connection importing a device, then `exchange`: (time, to the server, bytes), each
    /// one segment.
    fn capture(exchange: &[(f64, bool, Vec<u8>)]) -> Vec<u8> {
        capture_after(OP_REQ_IMPORT, exchange)
    }

    /// The same after the request `op` (and a reply of the import's length).
    fn capture_after(op: u16, exchange: &[(f64, bool, Vec<u8>)]) -> Vec<u8> {
        let mut frames = vec![
            (1.0, tcp_frame(CLIENT, SERVER, 99, true, &[])),
            (1.0, tcp_frame(SERVER, CLIENT, 499, true, &[])),
        ];
        let mut req = vec![0x01, 0x11, (op >> 8) as u8, op as u8, 0, 0, 0, 0];
        req.resize(OP_REQ_IMPORT_LEN, 0);
        let mut rep = vec![0x01, 0x11, 0x00, 0x03, 0, 0, 0, 0];
        rep.resize(OP_REP_IMPORT_LEN, 0);
        let (mut up, mut down) = (100u32, 500u32);
        frames.push((1.1, tcp_frame(CLIENT, SERVER, up, false, &req)));
        up += req.len() as u32;
        frames.push((1.2, tcp_frame(SERVER, CLIENT, down, false, &rep)));
        down += rep.len() as u32;
        for (t, to_server, bytes) in exchange {
            if *to_server {
                frames.push((*t, tcp_frame(CLIENT, SERVER, up, false, bytes)));
                up += bytes.len() as u32;
            } else {
                frames.push((*t, tcp_frame(SERVER, CLIENT, down, false, bytes)));
                down += bytes.len() as u32;
            }
        }
        pcap(&frames)
    }

    fn messages_of(pcap: &[u8]) -> Vec<Message> {
        let conns = connections(&packets(pcap).unwrap());
        assert_eq!(conns.len(), 1);
        conns[0].messages()
    }

    #[test]
    fn an_echo_splits_into_the_hrh_part_and_the_time_to_the_next_request() {
        let pcap = capture(&[
            (2.000, true, submit(1, true, &[], 64)),
            (2.010, true, submit(2, false, b"ping", 4)),
            (2.013, false, reply(2, &[])),
            (2.014, false, reply(1, b"ping")),
            (2.020, true, submit(3, false, b"pong", 4)),
            (2.022, false, reply(3, &[])),
        ]);
        let m = messages_of(&pcap);
        assert_eq!(m.len(), 6);
        let t = transactions(&m, Rule::Echo, 2.0, 3.0);
        // The second request's answer never came: one transaction.
        assert_eq!(t.len(), 1);
        assert!((t[0].hrh_us - 4000.0).abs() < 1.0, "{t:?}");
        assert!((t[0].isp_us.unwrap() - 6000.0).abs() < 1.0, "{t:?}");
        // Outside the window, nothing.
        assert!(transactions(&m, Rule::Echo, 3.0, 4.0).is_empty());
    }

    #[test]
    fn a_scsi_transaction_runs_from_its_command_block_to_its_status() {
        let mut cbw = b"USBC".to_vec();
        cbw.resize(31, 0);
        let mut csw = b"USBS".to_vec();
        csw.resize(13, 0);
        let pcap = capture(&[
            (2.000, true, submit(1, false, &cbw, 31)),
            (2.001, false, reply(1, &[])),
            (2.001, true, submit(2, true, &[], 4096)),
            (2.005, false, reply(2, &[7; 4096])),
            (2.005, true, submit(3, true, &[], 13)),
            (2.006, false, reply(3, &csw)),
            (2.009, true, submit(4, false, &cbw, 31)),
        ]);
        let m = messages_of(&pcap);
        // The 4096 bytes of data are an answer with data, but not a status.
        let t = transactions(&m, Rule::Scsi, 2.0, 3.0);
        assert_eq!(t.len(), 1);
        assert!((t[0].hrh_us - 6000.0).abs() < 1.0, "{t:?}");
        assert!((t[0].isp_us.unwrap() - 3000.0).abs() < 1.0, "{t:?}");
    }

    #[test]
    fn a_message_across_segments_arrives_with_its_last_byte_and_order_is_restored() {
        let msg = submit(1, false, &[5; 100], 100);
        let (a, b) = msg.split_at(60);
        let mut pcap = capture(&[]);
        // Out of order: the second half first, then the first, then a repeat of the first.
        let up = 100 + OP_REQ_IMPORT_LEN as u32;
        for (t, seq, part) in [(3.0, up + 60, b), (3.5, up, a), (3.6, up, a)] {
            record(&mut pcap, t, &tcp_frame(CLIENT, SERVER, seq, false, part));
        }
        let conns = connections(&packets(&pcap).unwrap());
        assert_eq!(conns[0].to_server.data.len(), OP_REQ_IMPORT_LEN + msg.len());
        let m = conns[0].messages();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].data_len, 100);
        assert!((m[0].t - 3.5).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn knocks_tie_the_capture_clock_to_the_windows() {
        // The capture's clock runs 0.4 s ahead of the host's; the workload ran from host
        // time 1.6 to 1.7, so its messages are at 2.0 to 2.1 in the capture.
        let exchange = [
            (2.00, true, submit(1, false, b"ping", 4)),
            (2.01, false, reply(1, &[])),
            (2.02, true, submit(2, true, &[], 64)),
            (2.03, false, reply(2, b"ping")),
            (2.04, true, submit(3, false, b"pong", 4)),
        ];
        let mut pcap = capture(&exchange);
        let knock = |port| {
            tcp_frame(
                ([10, 0, 2, 2], port),
                ([10, 0, 2, 15], MARK_PORT),
                7,
                true,
                &[],
            )
        };
        // The first knock's SYN came twice (a retransmission): one knock.
        for (t, port) in [(1.5, 50001), (1.9, 50002), (2.5, 50002), (2.6, 50003)] {
            record(&mut pcap, t, &knock(port));
        }
        let cell = |windows: &[(&'static str, [f64; 2])]| Cell {
            path: PathKind::OursVirtio,
            link: Some("lan"),
            results: BTreeMap::new(),
            errors: BTreeMap::new(),
            windows: windows.iter().copied().collect(),
            hrh_cpu: BTreeMap::new(),
            traces: BTreeMap::new(),
            seconds: 0.0,
        };
        let cells = [
            cell(&[("disk-read", [1.1, 1.5])]),
            cell(&[
                ("serial-back-to-back", [1.6, 1.7]),
                ("hid-ping", [2.2, 2.3]),
            ]),
        ];
        let splits = split(&pcap, &cells, Cells::All).unwrap();
        assert_eq!(splits.len(), 1, "{splits:?}");
        assert_eq!(splits[0].workload, "serial-back-to-back");
        assert_eq!(splits[0].transactions, 1);
        assert!((splits[0].hrh_us.p50 - 30_000.0).abs() < 1.0, "{splits:?}");
        assert!((splits[0].isp_us.p50 - 10_000.0).abs() < 1.0, "{splits:?}");

        // A run stopped inside a cell it did not save: its knocks come last and are left,
        // but only for the cells a stopped run saved.
        let mut stopped = pcap.clone();
        record(&mut stopped, 3.0, &knock(50004));
        let again = split(&stopped, &cells, Cells::Saved).unwrap();
        assert_eq!(again.len(), 1, "{again:?}");
        assert!((again[0].hrh_us.p50 - 30_000.0).abs() < 1.0, "{again:?}");
        assert!(split(&stopped, &cells, Cells::All).is_err());

        // A knock missing: no guessing.
        let e = split(&capture(&exchange), &cells, Cells::All).unwrap_err();
        assert!(
            e.to_string().contains("0 knocks on port 9 for 3 workloads"),
            "{e}"
        );

        // A stray knock shifts every pairing after it onto another workload: refused.
        let spaced = [cell(&[
            ("disk-write", [10.0, 19.0]),
            ("disk-read", [20.0, 29.0]),
            ("hid-ping", [30.0, 31.0]),
        ])];
        let mut stray = capture(&exchange);
        for (t, port) in [(10.4, 50001), (15.0, 50009), (20.4, 50002), (30.4, 50003)] {
            record(&mut stray, t, &knock(port));
        }
        let e = split(&stray, &spaced, Cells::Saved).unwrap_err();
        assert!(e.to_string().contains("do not pair up"), "{e}");
    }

    #[test]
    fn a_device_list_or_a_truncated_file_yields_no_transactions_and_no_panic() {
        let exchange = [
            (2.0, true, submit(1, false, b"ping", 4)),
            (2.1, false, reply(1, &[])),
        ];
        assert_eq!(messages_of(&capture(&exchange)).len(), 2);
        // The same bytes after a device list request are not URBs.
        assert!(messages_of(&capture_after(0x8005, &exchange)).is_empty());
        // The last record cut short: the reply is gone, the request stays.
        let mut pcap = capture(&exchange);
        pcap.truncate(pcap.len() - 10);
        assert_eq!(messages_of(&pcap).len(), 1);
        assert!(packets(b"not a capture at all....").is_err());
    }
}
