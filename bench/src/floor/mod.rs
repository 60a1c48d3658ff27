//! The least a USB/IP server in user space can do per URB: a yardstick for hrh-exporter,
//! measured next to it and to usbip-host by `vusb-urbbench` (docs/link-benchmarks.md).
//!
//! Not a server to deploy. It is built the way Linux's usbip-host is, moved to user
//! space: per connection one thread receives commands and submits their URBs to usbfs,
//! another waits in usbfs for the next completion (`USBDEVFS_REAPURB` blocks) and sends
//! its reply. No event loop, no `poll`, no library between it and usbfs: per URB one
//! receive, one submit, one reap and one send, and two threads woken, as in usbip-host.
//!
//! What it leaves out or keeps simple, because a measurement does not need more:
//! - devices with a driver bound on the gateway: it claims interfaces, it takes them from
//!   no driver;
//! - cancelling is usbip-host's, without its races' finer points: a CMD_UNLINK discards its
//!   URB in usbfs; if usbfs cancelled it the client gets RET_UNLINK with `-ECONNRESET` and no
//!   RET_SUBMIT, if it completed first the client gets both (the RET_UNLINK with 0);
//! - SET_CONFIGURATION and SET_INTERFACE are answered without asking the device (the
//!   gateway configured it);
//! - isochronous URBs;
//! - more than one connection at a time.

mod sysfs;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use usbip_proto::{
    op_status, transfer_flags, CmdMessage, CmdSubmit, Direction, OpReply, OpRequest, ProtoError,
    RetMessage, RetSubmit, RetUnlink, UrbHeader,
};

use usbfs::RawUrb;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Linux's `URB_ZERO_PACKET`, which usbfs spells differently.
const URB_ZERO_PACKET: u32 = 0x0040;

/// `usbfs-floor --listen ADDR --device BUSID...`: serves until killed.
pub fn main() -> Result<()> {
    let (listen, busids) = parse_args(std::env::args().skip(1))?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!(
        "usbfs-floor: serving {} on {}",
        busids.join(" "),
        listener.local_addr()?
    );
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = serve(stream, &busids) {
                    eprintln!("usbfs-floor: connection ended: {e:#}");
                }
            }
            Err(e) => eprintln!("usbfs-floor: accept failed: {e}"),
        }
    }
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, Vec<String>)> {
    let mut listen = None;
    let mut busids = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--device" => busids.push(value()?),
            _ => bail!(
                "unknown argument {arg:?} (usage: usbfs-floor --listen ADDR --device BUSID...)"
            ),
        }
    }
    let listen = listen.context("--listen ADDR is required")?;
    if busids.is_empty() {
        bail!("at least one --device BUSID is required");
    }
    Ok((listen, busids))
}

/// One connection: a device list, or an import and its URBs.
fn serve(mut stream: TcpStream, busids: &[String]) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = vec![0; READ_CHUNK];
    let Some(request) = read_message(&mut stream, &mut buf, &mut chunk, OpRequest::decode)? else {
        return Ok(());
    };
    let mut out = BytesMut::new();
    match request {
        OpRequest::DevList => {
            let devices = busids
                .iter()
                .filter_map(|b| sysfs::describe(b).ok())
                .collect();
            OpReply::DevList {
                status: op_status::OK,
                devices,
            }
            .encode(&mut out)?;
            stream.write_all(&out)?;
            Ok(())
        }
        OpRequest::Import { busid } => {
            let device = if busids.contains(&busid) {
                Device::open(&busid)
            } else {
                Err(anyhow::anyhow!("{busid} is not exported"))
            };
            let device = match device {
                Ok(device) => device,
                Err(e) => {
                    OpReply::Import {
                        status: op_status::NODEV,
                        device: None,
                    }
                    .encode(&mut out)?;
                    stream.write_all(&out)?;
                    return Err(e.context(format!("import of {busid} refused")));
                }
            };
            OpReply::Import {
                status: op_status::OK,
                device: Some(device.info.clone()),
            }
            .encode(&mut out)?;
            stream.write_all(&out)?;
            eprintln!("usbfs-floor: imported {busid}");
            let result = run_urbs(stream, buf, chunk, &device);
            device.release();
            eprintln!("usbfs-floor: released {busid}");
            result
        }
    }
}

/// Reads until `decode` yields a message; `None` when the peer closed between messages.
/// `chunk` is where each read lands before it joins `buf`.
fn read_message<T>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    chunk: &mut [u8],
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, ProtoError>,
) -> Result<Option<T>> {
    loop {
        if let Some(msg) = decode(buf)? {
            return Ok(Some(msg));
        }
        let n = stream.read(chunk)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("connection closed in the middle of a message");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An imported device: its usbfs file, interfaces claimed.
struct Device {
    info: usbip_proto::DeviceInfo,
    fd: Arc<OwnedFd>,
    interfaces: u32,
    /// The transfer type of each endpoint address but the default pipe's.
    endpoint_types: HashMap<u8, u8>,
}

impl Device {
    fn open(busid: &str) -> Result<Self> {
        let (info, _) = sysfs::describe(busid)?;
        let path = sysfs::usbfs_path(&info);
        let fd = Arc::new(
            usbfs::open_path(&path).with_context(|| format!("opening {}", path.display()))?,
        );
        let interfaces = u32::from(info.num_interfaces);
        for number in 0..interfaces {
            usbfs::claim_interface(fd.as_fd(), number)
                .with_context(|| format!("claiming interface {number} of {busid}"))?;
        }
        let endpoint_types = sysfs::endpoint_types(busid, info.configuration_value)?;
        Ok(Self {
            info,
            fd,
            interfaces,
            endpoint_types,
        })
    }

    fn release(&self) {
        for number in 0..self.interfaces {
            let _ = usbfs::release_interface(self.fd.as_fd(), number);
        }
    }
}

/// An URB in the kernel's hands: the kernel's structure first, so that the pointer usbfs
/// hands back on reaping is this.
#[repr(C)]
struct Urb {
    raw: RawUrb,
    buffer: Vec<u8>,
    seqnum: u32,
    number_of_packets: u32,
    direction: Direction,
    /// Where the data starts in `buffer` (after a control transfer's setup packet).
    data_offset: usize,
    /// The marker that tells the reaping thread the connection is over.
    last: bool,
}

impl Urb {
    fn new(kind: u8, endpoint: u8, flags: u32, buffer: Vec<u8>) -> Box<Self> {
        let mut urb = Box::new(Urb {
            raw: RawUrb::new(kind, endpoint, flags, buffer.len() as i32),
            buffer,
            seqnum: 0,
            number_of_packets: 0,
            direction: Direction::Out,
            data_offset: 0,
            last: false,
        });
        // The vector's heap block stays put when the box moves.
        urb.raw.buffer = urb.buffer.as_mut_ptr();
        urb
    }
}

/// What both threads of a connection share.
struct Shared {
    fd: Arc<OwnedFd>,
    writer: Mutex<TcpStream>,
    /// The URBs in the kernel's hands by seqnum: where each is, and the seqnum of a
    /// CMD_UNLINK waiting for its outcome.
    in_flight: Mutex<HashMap<u32, InFlight>>,
    /// The socket failed: the reaping thread reaps but answers no more.
    broken: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    urb: usize,
    unlink: Option<u32>,
}

impl Shared {
    fn send(&self, reply: RetMessage) -> Result<()> {
        let mut out = BytesMut::with_capacity(64);
        reply.encode(&mut out)?;
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.write_all(&out)?;
        Ok(())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u32, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `urb` to usbfs (the marker too, under seqnum 0, which clients never use).
    fn submit(&self, urb: Box<Urb>) -> std::io::Result<()> {
        let seqnum = urb.seqnum;
        let ptr = Box::into_raw(urb);
        self.in_flight().insert(
            seqnum,
            InFlight {
                urb: ptr as usize,
                unlink: None,
            },
        );
        // SAFETY: `ptr` is a live box, unmoved, until the reaping thread takes it back
        // with Box::from_raw after the kernel hands it over; the kernel writes only into
        // the RawUrb at its start and into its buffer.
        let submitted = unsafe { usbfs::submit(self.fd.as_fd(), ptr.cast::<RawUrb>()) };
        if let Err(e) = submitted {
            self.in_flight().remove(&seqnum);
            // SAFETY: the kernel refused it, so nobody else holds it.
            drop(unsafe { Box::from_raw(ptr) });
            return Err(e);
        }
        Ok(())
    }
}

fn run_urbs(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut chunk: Vec<u8>,
    device: &Device,
) -> Result<()> {
    let shared = Arc::new(Shared {
        fd: Arc::clone(&device.fd),
        writer: Mutex::new(stream.try_clone()?),
        in_flight: Mutex::new(HashMap::new()),
        broken: AtomicBool::new(false),
    });
    let reaper = std::thread::spawn({
        let shared = Arc::clone(&shared);
        move || reap_loop(&shared)
    });
    let result = receive_loop(&mut stream, &mut buf, &mut chunk, &shared, device);

    // Cancel what is left, then send the marker through usbfs: the reaping thread ends
    // once it has reaped both.
    shared.broken.store(true, Ordering::Release);
    for urb in shared.in_flight().values() {
        usbfs::discard(shared.fd.as_fd(), urb.urb as *mut RawUrb);
    }
    // GET_STATUS of the device: answered by every device.
    let get_status = vec![0x80, 0x00, 0, 0, 0, 0, 2, 0, 0, 0];
    let mut marker = Urb::new(usbfs::TYPE_CONTROL, 0, 0, get_status);
    marker.last = true;
    if shared.submit(marker).is_ok() {
        let _ = reaper.join();
    } else {
        eprintln!("usbfs-floor: cannot stop the reaping thread; it stays");
    }
    result
}

fn receive_loop(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    chunk: &mut [u8],
    shared: &Shared,
    device: &Device,
) -> Result<()> {
    while let Some(msg) = read_message(stream, buf, chunk, CmdMessage::decode)? {
        match msg {
            CmdMessage::Submit(c) => submit(shared, device, c)?,
            CmdMessage::Unlink(u) => {
                let target = {
                    let mut in_flight = shared.in_flight();
                    match in_flight.get_mut(&u.unlink_seqnum) {
                        Some(urb) if urb.unlink.is_none() => {
                            urb.unlink = Some(u.header.seqnum);
                            Some(urb.urb)
                        }
                        _ => None,
                    }
                };
                match target {
                    // The reaping thread answers, when usbfs hands the URB back.
                    Some(urb) => usbfs::discard(shared.fd.as_fd(), urb as *mut RawUrb),
                    // Answered already (or never seen): nothing to cancel.
                    None => shared.send(ret_unlink(u.header.seqnum, 0))?,
                }
            }
        }
    }
    Ok(())
}

fn submit(shared: &Shared, device: &Device, c: CmdSubmit) -> Result<()> {
    let seqnum = c.header.seqnum;
    if seqnum == 0 || shared.in_flight().contains_key(&seqnum) {
        bail!("seqnum {seqnum} is 0 or already in flight");
    }
    let is_in = c.header.direction == Direction::In;
    let endpoint = c.header.ep as u8 | if is_in { 0x80 } else { 0 };
    let length = c.transfer_buffer_length as usize;
    let (kind, buffer, data_offset) = if c.header.ep == 0 {
        let setup = c.setup;
        // SET_CONFIGURATION to the device, SET_INTERFACE to an interface.
        let chooses = (setup.request_type, setup.request) == (0x00, 9)
            || (setup.request_type, setup.request) == (0x01, 11);
        if chooses {
            return shared.send(ret_submit(&c, 0, 0, Bytes::new()));
        }
        let mut buffer = setup.to_bytes().to_vec();
        if is_in {
            buffer.resize(8 + length, 0);
        } else {
            buffer.extend_from_slice(&c.data);
        }
        (usbfs::TYPE_CONTROL, buffer, 8)
    } else {
        let kind = match device.endpoint_types.get(&endpoint) {
            Some(&kind) => kind,
            None => return shared.send(ret_submit(&c, -libc::EPIPE, 0, Bytes::new())),
        };
        let buffer = if is_in {
            vec![0; length]
        } else {
            c.data.to_vec()
        };
        (kind, buffer, 0)
    };
    let mut flags = 0;
    if is_in && c.transfer_flags & transfer_flags::SHORT_NOT_OK != 0 {
        flags |= usbfs::FLAG_SHORT_NOT_OK;
    }
    if !is_in && c.transfer_flags & URB_ZERO_PACKET != 0 {
        flags |= usbfs::FLAG_ZERO_PACKET;
    }
    let mut urb = Urb::new(kind, endpoint, flags, buffer);
    urb.seqnum = c.header.seqnum;
    urb.number_of_packets = c.number_of_packets;
    urb.direction = c.header.direction;
    urb.data_offset = data_offset;
    if let Err(e) = shared.submit(urb) {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        return shared.send(ret_submit(&c, -errno, 0, Bytes::new()));
    }
    Ok(())
}

/// Reaps completions and sends their replies until the marker and every URB are back.
fn reap_loop(shared: &Shared) {
    let mut ending = false;
    loop {
        let raw = match usbfs::reap(shared.fd.as_fd()) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("usbfs-floor: reaping failed: {e}");
                return;
            }
        };
        // SAFETY: every URB submitted is a leaked Box<Urb> whose first field is the
        // RawUrb; the kernel hands each back exactly once.
        let urb = unsafe { Box::from_raw(raw.cast::<Urb>()) };
        let (unlink, left) = {
            let mut in_flight = shared.in_flight();
            let unlink = in_flight.remove(&urb.seqnum).and_then(|u| u.unlink);
            (unlink, in_flight.len())
        };
        if urb.last {
            ending = true;
        } else if !shared.broken.load(Ordering::Acquire) {
            if let Err(e) = answer(shared, &urb, unlink) {
                eprintln!("usbfs-floor: sending a reply failed: {e:#}");
                // The receiving thread sees the connection end and sends the marker.
                shared.broken.store(true, Ordering::Release);
                let writer = shared.writer.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writer.shutdown(std::net::Shutdown::Both);
            }
        }
        if ending && left == 0 {
            return;
        }
    }
}

/// The replies for a reaped URB, as usbip-host gives them.
fn answer(shared: &Shared, urb: &Urb, unlink: Option<u32>) -> Result<()> {
    let cancelled = matches!(-urb.raw.status, libc::ECONNRESET | libc::ENOENT);
    if let (Some(unlink), true) = (unlink, cancelled) {
        return shared.send(ret_unlink(unlink, -libc::ECONNRESET));
    }
    let actual = urb.raw.actual_length.max(0) as usize;
    let (data, actual_length) = match urb.direction {
        Direction::In => {
            let start = urb.data_offset;
            let end = (start + actual).min(urb.buffer.len());
            let data = Bytes::copy_from_slice(&urb.buffer[start..end]);
            let len = data.len();
            (data, len)
        }
        Direction::Out => (Bytes::new(), actual),
    };
    shared.send(RetMessage::Submit(RetSubmit {
        header: reply_header(urb.seqnum),
        status: urb.raw.status,
        actual_length: actual_length as u32,
        start_frame: 0,
        number_of_packets: urb.number_of_packets,
        error_count: 0,
        data,
        iso_packets: Vec::new(),
    }))?;
    if let Some(unlink) = unlink {
        shared.send(ret_unlink(unlink, 0))?;
    }
    Ok(())
}

fn ret_unlink(seqnum: u32, status: i32) -> RetMessage {
    RetMessage::Unlink(RetUnlink {
        header: reply_header(seqnum),
        status,
    })
}

fn ret_submit(c: &CmdSubmit, status: i32, actual_length: u32, data: Bytes) -> RetMessage {
    RetMessage::Submit(RetSubmit {
        header: reply_header(c.header.seqnum),
        status,
        actual_length,
        start_frame: 0,
        number_of_packets: c.number_of_packets,
        error_count: 0,
        data,
        iso_packets: Vec::new(),
    })
}

fn reply_header(seqnum: u32) -> UrbHeader {
    UrbHeader {
        seqnum,
        ..UrbHeader::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn arguments() {
        let (listen, busids) = parse_args(args(&[
            "--listen",
            "0.0.0.0:3240",
            "--device",
            "1-1",
            "--device",
            "2-1",
        ]))
        .unwrap();
        assert_eq!(listen.port(), 3240);
        assert_eq!(busids, ["1-1", "2-1"]);
        assert!(parse_args(args(&["--device", "1-1"])).is_err());
        assert!(parse_args(args(&["--listen", "0.0.0.0:1"])).is_err());
        assert!(parse_args(args(&["--listen"])).is_err());
        assert!(parse_args(args(&["--verbose"])).is_err());
    }

    #[test]
    fn the_kernels_structure_comes_first() {
        let urb = Urb::new(usbfs::TYPE_BULK, 0x81, 0, vec![0; 16]);
        let ptr: *const Urb = &*urb;
        assert_eq!(ptr.cast::<RawUrb>(), &urb.raw as *const RawUrb);
        assert_eq!(urb.raw.buffer.cast_const(), urb.buffer.as_ptr());
        assert_eq!(urb.raw.buffer_length, 16);
    }
}
