//! `vusb-backend` importing real kernel USB devices from Debian's stock `usbipd` + usbip-host,
//! with no guest driver in the way: the test drives the virtio-usb device itself through the
//! simulated guest driver of `vusb_backend::sim_driver`, so every byte it checks crossed
//! vhost-user, the backend's USB/IP client, the stock server and a real USB device.
//!
//! ```text
//!  HRH guest (tests/src/hrh.rs)                      host
//!  configfs gadgets on dummy_hcd ── usbipd ◄─ hostfwd ◄─ vusb-backend ◄─ vhost-user ◄─ SimDriver
//! ```
//!
//! The three gadgets are imported at once, one by VID:PID (resolved through usbipd's device
//! list) and two by bus id: each must enumerate, move data both ways through its own class
//! protocol (CDC-ACM serial lines, SCSI over bulk-only transport, HID reports), take a cancel
//! and a port reset as usbip-host implements them (CMD_UNLINK, the reset request it handles
//! itself), and an unplug in the HRH must reach the driver as a disconnect while the other
//! devices keep working, then come back as a new connect once plugged in and bound again.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use vusb_backend::sim_driver::{Done, Options, SimDriver};
use vusb_backend::transfer::{Speed, Status, TransferKind};
use vusb_backend::virtio_usb::wire::{
    CtrlReq, XferReq, CTRL_CANCEL, CTRL_PORT_RESET, EVT_CONNECT, EVT_DISCONNECT,
};
use vusb_vm_tests::{find_device, Backend, Hrh, HrhConfig, HrhDevice, Server};

/// A TCG guest boots in 10–20 s alone; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(180);
/// An ordinary step in the HRH (a few shell commands).
const STEP: Duration = Duration::from_secs(60);
/// One transfer: each is a round trip into a TCG guest.
const TRANSFER: Duration = Duration::from_secs(30);
/// The backend reconnects with a backoff of at most 5 s, and an import over hostfwd into a
/// TCG guest takes a few seconds more.
const RECONNECT: Duration = Duration::from_secs(60);

/// How much the storage step writes through SCSI WRITE(10) and reads back.
const STORAGE_BYTES: usize = 1 << 20;
/// The bulk transfers the storage step splits its data stages into.
const STORAGE_CHUNK: usize = 64 << 10;
const BLOCK: usize = 512;

#[test]
#[ignore = "boots a QEMU guest; run with --ignored"]
fn vusb_backend_imports_from_stock_usbipd() -> Result<()> {
    let mut hrh = Hrh::boot(HrhConfig::new("backend-stock-usbipd-hrh"))?;
    let devices = hrh.wait_ready(BOOT)?;
    let acm = find_device(&devices, "acm")?;
    let storage = find_device(&devices, "storage")?;
    let hid = find_device(&devices, "hid")?;
    hrh.start_server(Server::Usbipd)?;

    // The storage gadget by VID:PID, the others by bus id: both ways of naming a device
    // must work against usbipd's device list.
    let url = |what: &str| format!("tcp://127.0.0.1:{}/{what}", hrh.port());
    let backend = Backend::spawn(
        "backend-stock-usbipd",
        [
            "--device".to_owned(),
            url(&acm.busid),
            "--device".to_owned(),
            url(&storage.id),
            "--device".to_owned(),
            url(&hid.busid),
        ],
    )?;
    let mut d = SimDriver::connect(backend.socket_path(), Options::default())
        .context("connecting the simulated driver to vusb-backend")?;
    // Ports follow the order of --device (docs/virtio-usb.md §6): 1, 2 and 3 on the USB 2
    // root hub, since dummy_hcd's devices are high speed.
    let (acm_port, storage_port, hid_port) = (1, 2, 3);

    let connected = wait_connects(&mut d, 3, RECONNECT)?;
    let high = Speed::High as u8;
    ensure!(
        connected == BTreeMap::from([(acm_port, high), (storage_port, high), (hid_port, high)]),
        "CONNECT events (port → speed) {connected:?}, expected ports 1–3 at high speed"
    );

    let mut ids = Ids::default();
    let mut usb = Usb {
        d: &mut d,
        ids: &mut ids,
    };
    let acm_eps = usb.enumerate(acm_port, &acm.id)?;
    let storage_eps = usb.enumerate(storage_port, &storage.id)?;
    let hid_eps = usb.enumerate(hid_port, &hid.id)?;

    serial_both_ways(&mut usb, &mut hrh, acm_port, &acm_eps)?;
    storage_write_read(&mut usb, &mut hrh, storage_port, &storage_eps)?;
    hid_reports_and_cancel(&mut usb, &mut hrh, hid_port, &hid_eps)?;
    port_reset(&mut usb, acm_port, &acm.id)?;
    unplug_and_replug(&mut usb, &mut hrh, acm_port, acm, storage_port, &storage.id)?;

    let log = backend.log()?;
    ensure!(
        !log.contains("panicked"),
        "vusb-backend panicked; its log:\n{log}"
    );
    hrh.stop_server()?;
    ensure!(
        hrh.finish(STEP)? == 0,
        "the HRH's script failed at shutdown"
    );
    Ok(())
}

/// Waits for `count` CONNECT events; returns port → speed.
fn wait_connects(d: &mut SimDriver, count: usize, timeout: Duration) -> Result<BTreeMap<u8, u8>> {
    let deadline = Instant::now() + timeout;
    let mut connected = BTreeMap::new();
    while connected.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let (kind, port, speed) = d
            .wait_event(left)
            .with_context(|| format!("waiting for CONNECT events; so far {connected:?}"))?;
        match kind {
            EVT_CONNECT => {
                connected.insert(port, speed);
            }
            other => bail!("unexpected event {other} on port {port} while waiting for CONNECTs"),
        }
    }
    Ok(connected)
}

/// Request ids: unique over the whole test, as a driver's would be.
#[derive(Default)]
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The IN data of a completed transfer; a device claiming more than was asked is an error.
fn in_data(done: &Done) -> Result<Vec<u8>> {
    let n = done.resp.actual_length as usize;
    ensure!(
        n <= done.data.len(),
        "request {} completed with {n} bytes of a {}-byte buffer",
        done.id,
        done.data.len()
    );
    Ok(done.data[..n].to_vec())
}

/// The endpoints of one interface class that a test needs.
#[derive(Debug, Default, Clone)]
struct Endpoints {
    /// By interface class: (endpoint address, transfer type bits) in descriptor order.
    by_class: BTreeMap<u8, Vec<(u8, u8)>>,
    /// The first interface number of each class.
    interface: BTreeMap<u8, u8>,
}

impl Endpoints {
    /// Walks a configuration descriptor set.
    fn parse(config: &[u8]) -> Result<Endpoints> {
        let mut eps = Endpoints::default();
        let mut class = None;
        let mut at = 0;
        while at + 2 <= config.len() {
            let len = usize::from(config[at]);
            ensure!(
                len >= 2 && at + len <= config.len(),
                "malformed descriptor at {at}"
            );
            let desc = &config[at..at + len];
            match desc[1] {
                4 if len >= 9 => {
                    class = Some(desc[5]);
                    eps.interface.entry(desc[5]).or_insert(desc[2]);
                }
                5 if len >= 7 => {
                    if let Some(c) = class {
                        eps.by_class
                            .entry(c)
                            .or_default()
                            .push((desc[2], desc[3] & 3));
                    }
                }
                _ => {}
            }
            at += len;
        }
        Ok(eps)
    }

    /// The endpoint of `class` with this direction (0x80 IN, 0 OUT) and transfer type.
    fn find(&self, class: u8, dir_in: bool, ty: u8) -> Result<u8> {
        self.by_class
            .get(&class)
            .and_then(|eps| {
                eps.iter()
                    .find(|(addr, t)| (addr & 0x80 != 0) == dir_in && *t == ty)
                    .map(|(addr, _)| *addr)
            })
            .with_context(|| {
                format!(
                    "no {} endpoint of type {ty} in class {class:#04x}: {self:?}",
                    if dir_in { "IN" } else { "OUT" }
                )
            })
    }
}

const CLASS_CDC_DATA: u8 = 0x0a;
const CLASS_CDC: u8 = 0x02;
const CLASS_MASS_STORAGE: u8 = 0x08;
const CLASS_HID: u8 = 0x03;
const EP_BULK: u8 = 2;
const EP_INTERRUPT: u8 = 3;

/// The simulated driver with the test's request ids.
struct Usb<'a> {
    d: &'a mut SimDriver,
    ids: &'a mut Ids,
}

impl Usb<'_> {
    /// Submits one request and waits for its completion (nothing else may be in flight).
    fn transfer(&mut self, req: XferReq, out: &[u8]) -> Result<Done> {
        self.d.submit(&req, &[], out)?;
        let done = self
            .d
            .wait_transfer(TRANSFER)
            .with_context(|| format!("waiting for request {} ({req:?})", req.id))?;
        ensure!(
            done.id == req.id,
            "completion of {} while waiting for {}",
            done.id,
            req.id
        );
        Ok(done)
    }

    /// A control transfer that must succeed; returns the IN data received.
    fn control(&mut self, port: u8, setup: [u8; 8], out: &[u8]) -> Result<Vec<u8>> {
        let req = XferReq::control(self.ids.next(), port, setup);
        let done = self.transfer(req, out)?;
        ensure!(
            done.resp.status == Status::Ok as u32,
            "control {setup:02x?} on port {port}: status {}",
            done.resp.status
        );
        in_data(&done)
    }

    fn bulk(&mut self, port: u8, ep: u8, length: u32, out: &[u8]) -> Result<Done> {
        let req = XferReq::bulk(self.ids.next(), port, ep, length);
        self.transfer(req, out)
    }

    /// A bulk transfer that must move all of `out` (OUT) or return data (IN).
    fn bulk_ok(&mut self, port: u8, ep: u8, length: u32, out: &[u8]) -> Result<Vec<u8>> {
        let done = self.bulk(port, ep, length, out)?;
        ensure!(
            done.resp.status == Status::Ok as u32,
            "bulk on port {port} ep {ep:#04x}: status {}",
            done.resp.status
        );
        if ep & 0x80 == 0 {
            ensure!(
                done.resp.actual_length == length,
                "bulk OUT on port {port} ep {ep:#04x} sent {} of {length} bytes",
                done.resp.actual_length
            );
            return Ok(Vec::new());
        }
        in_data(&done)
    }

    /// Reads the device descriptor (must be `vid:pid`) and the configuration, and sets
    /// configuration 1 as a driver would after SET_ADDRESS (which never reaches a device).
    fn enumerate(&mut self, port: u8, id: &str) -> Result<Endpoints> {
        self.expect_device(port, id)?;
        let head = self.control(port, [0x80, 6, 0, 2, 0, 0, 9, 0], &[])?;
        ensure!(
            head.len() == 9,
            "short configuration descriptor {head:02x?}"
        );
        let total = u16::from_le_bytes([head[2], head[3]]);
        let [lo, hi] = total.to_le_bytes();
        let config = self.control(port, [0x80, 6, 0, 2, 0, 0, lo, hi], &[])?;
        ensure!(
            config.len() == usize::from(total),
            "configuration descriptor of {} bytes, wTotalLength {total}",
            config.len()
        );
        // usbip-host handles SET_CONFIGURATION itself (usb_set_configuration), not as a
        // plain control transfer.
        self.control(port, [0, 9, 1, 0, 0, 0, 0, 0], &[])?;
        Endpoints::parse(&config)
    }

    fn expect_device(&mut self, port: u8, id: &str) -> Result<()> {
        let desc = self.control(port, [0x80, 6, 0, 1, 0, 0, 18, 0], &[])?;
        ensure!(
            desc.len() == 18 && desc[1] == 1,
            "device descriptor {desc:02x?}"
        );
        let got = format!(
            "{:04x}:{:04x}",
            u16::from_le_bytes([desc[8], desc[9]]),
            u16::from_le_bytes([desc[10], desc[11]])
        );
        ensure!(got == id, "port {port} holds {got}, expected {id}");
        Ok(())
    }
}

/// A line from the driver reaches the gadget's /dev/ttyGS0, and a line written there
/// arrives on the bulk IN endpoint.
fn serial_both_ways(usb: &mut Usb, hrh: &mut Hrh, port: u8, eps: &Endpoints) -> Result<()> {
    let out_ep = eps.find(CLASS_CDC_DATA, false, EP_BULK)?;
    let in_ep = eps.find(CLASS_CDC_DATA, true, EP_BULK)?;
    let comm = *eps.interface.get(&CLASS_CDC).context("no CDC interface")?;
    // SET_CONTROL_LINE_STATE(DTR | RTS), as cdc_acm does on open.
    usb.control(port, [0x21, 0x22, 3, 0, comm, 0, 0, 0], &[])?;
    hrh.remote().check("serial_listen", STEP)?;

    usb.bulk_ok(port, out_ep, 20, b"to-hrh-through-vusb\n")?;
    hrh.remote()
        .check("serial_expect to-hrh-through-vusb 20", STEP)
        .context("the line sent from the driver did not reach the gadget")?;

    // The IN request waits in usbip-host until the gadget has something to send.
    let id = usb.ids.next();
    usb.d
        .submit(&XferReq::bulk(id, port, in_ep, 512), &[], &[])?;
    std::thread::sleep(Duration::from_millis(500));
    hrh.remote().check("serial_send from-hrh-to-vusb", STEP)?;
    let done = usb.d.wait_transfer(TRANSFER)?;
    ensure!(
        done.id == id && done.resp.status == Status::Ok as u32,
        "{done:?}"
    );
    let got = in_data(&done)?;
    ensure!(
        got == b"from-hrh-to-vusb\n",
        "the driver read {:?}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

/// SCSI over the bulk-only transport: 1 MiB written with WRITE(10), read back with
/// READ(10), and found byte for byte in the gadget's backing file.
fn storage_write_read(usb: &mut Usb, hrh: &mut Hrh, port: u8, eps: &Endpoints) -> Result<()> {
    let out_ep = eps.find(CLASS_MASS_STORAGE, false, EP_BULK)?;
    let in_ep = eps.find(CLASS_MASS_STORAGE, true, EP_BULK)?;
    let data: Vec<u8> = (0..STORAGE_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[i % 4])
        .collect();
    let blocks = (STORAGE_BYTES / BLOCK) as u16;

    let mut bot = Bot {
        port,
        out_ep,
        in_ep,
        tag: 0x5653_0000,
    };
    bot.wait_ready(usb)?;

    let mut write = [0u8; 10];
    write[0] = 0x2a; // WRITE(10) at LBA 0
    write[7..9].copy_from_slice(&blocks.to_be_bytes());
    let tag = bot.command(usb, &write, STORAGE_BYTES as u32, false)?;
    for chunk in data.chunks(STORAGE_CHUNK) {
        usb.bulk_ok(port, out_ep, chunk.len() as u32, chunk)?;
    }
    ensure!(bot.status(usb, tag)? == 0, "WRITE(10) failed");

    let mut read = write;
    read[0] = 0x28; // READ(10)
    let tag = bot.command(usb, &read, STORAGE_BYTES as u32, true)?;
    let mut back = Vec::with_capacity(STORAGE_BYTES);
    while back.len() < STORAGE_BYTES {
        back.extend(usb.bulk_ok(port, in_ep, STORAGE_CHUNK as u32, &[])?);
    }
    ensure!(bot.status(usb, tag)? == 0, "READ(10) failed");
    ensure!(
        back == data,
        "READ(10) returned other data than WRITE(10) wrote"
    );

    let out = hrh.remote().check("storage_sha256 1", STEP)?;
    let image = out.required("IMAGE-SHA256")?;
    let expected = hex(&Sha256::digest(&data));
    ensure!(
        image == expected,
        "the HRH's backing file holds {image}, the driver wrote {expected}"
    );
    Ok(())
}

/// SCSI over the bulk-only transport, one command at a time.
struct Bot {
    port: u8,
    out_ep: u8,
    in_ep: u8,
    tag: u32,
}

impl Bot {
    /// Sends a command block; returns its tag. The data stage is the caller's.
    fn command(&mut self, usb: &mut Usb, cdb: &[u8; 10], length: u32, dir_in: bool) -> Result<u32> {
        self.tag += 1;
        usb.bulk_ok(
            self.port,
            self.out_ep,
            31,
            &cbw(self.tag, length, dir_in, cdb),
        )?;
        Ok(self.tag)
    }

    /// Reads the status wrapper of command `tag`: 0 passed, 1 failed.
    fn status(&mut self, usb: &mut Usb, tag: u32) -> Result<u8> {
        let csw = usb.bulk_ok(self.port, self.in_ep, 13, &[])?;
        ensure!(
            csw.len() == 13 && &csw[0..4] == b"USBS",
            "not a CSW: {csw:02x?}"
        );
        ensure!(
            u32::from_le_bytes(csw[4..8].try_into()?) == tag,
            "CSW of another command: {csw:02x?}"
        );
        ensure!(csw[12] <= 1, "phase error: CSW {csw:02x?}");
        Ok(csw[12])
    }

    /// TEST UNIT READY until it passes, with REQUEST SENSE after each failure, as a host
    /// does: the first command after the gadget's reset reports a unit attention.
    fn wait_ready(&mut self, usb: &mut Usb) -> Result<()> {
        for _ in 0..5 {
            let tag = self.command(usb, &[0; 10], 0, false)?;
            if self.status(usb, tag)? == 0 {
                return Ok(());
            }
            let mut sense = [0u8; 10];
            sense[0] = 0x03;
            sense[4] = 18;
            let tag = self.command(usb, &sense, 18, true)?;
            usb.bulk_ok(self.port, self.in_ep, 18, &[])?;
            self.status(usb, tag)?;
        }
        bail!("the storage device is not ready after 5 TEST UNIT READY")
    }
}

/// A bulk-only transport command block wrapper.
fn cbw(tag: u32, length: u32, dir_in: bool, cdb: &[u8; 10]) -> Vec<u8> {
    let mut b = Vec::with_capacity(31);
    b.extend_from_slice(b"USBC");
    b.extend_from_slice(&tag.to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b.push(if dir_in { 0x80 } else { 0 });
    b.push(0); // LUN
    b.push(cdb.len() as u8);
    b.extend_from_slice(cdb);
    b.resize(31, 0);
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HID reports both ways over interrupt endpoints, and a pending interrupt IN cancelled
/// through usbip-host's unlink.
fn hid_reports_and_cancel(usb: &mut Usb, hrh: &mut Hrh, port: u8, eps: &Endpoints) -> Result<()> {
    let in_ep = eps.find(CLASS_HID, true, EP_INTERRUPT)?;
    let out_ep = eps.find(CLASS_HID, false, EP_INTERRUPT)?;
    let interrupt = |id, ep, length| XferReq {
        kind: TransferKind::Interrupt as u8,
        interval: 1,
        ..XferReq::bulk(id, port, ep, length)
    };

    // Cancel: nothing to report, so the request waits at the device until cancelled.
    let id = usb.ids.next();
    usb.d.submit(&interrupt(id, in_ep, 8), &[], &[])?;
    std::thread::sleep(Duration::from_millis(500));
    usb.d.send_control(&CtrlReq {
        code: CTRL_CANCEL,
        port,
        id,
    })?;
    let (status, _) = usb.d.wait_control(TRANSFER)?;
    ensure!(
        status == Status::Ok as u32,
        "CANCEL of a pending interrupt IN answered {status}, expected OK (found)"
    );
    let done = usb.d.wait_transfer(TRANSFER)?;
    ensure!(
        done.id == id && done.resp.status == Status::Cancelled as u32,
        "the cancelled request completed with {done:?}"
    );

    // An input report the gadget sends once the host polls.
    let id = usb.ids.next();
    usb.d.submit(&interrupt(id, in_ep, 8), &[], &[])?;
    hrh.remote().check("hid_send 0102030405060708", STEP)?;
    let done = usb.d.wait_transfer(TRANSFER)?;
    ensure!(
        done.id == id && done.resp.status == Status::Ok as u32,
        "{done:?}"
    );
    ensure!(
        in_data(&done)? == [1, 2, 3, 4, 5, 6, 7, 8],
        "input report {:02x?}",
        in_data(&done)?
    );

    // An output report on the interrupt OUT endpoint.
    hrh.remote().check("hid_listen", STEP)?;
    let req = interrupt(usb.ids.next(), out_ep, 8);
    let done = usb.transfer(req, &[0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7])?;
    ensure!(
        done.resp.status == Status::Ok as u32 && done.resp.actual_length == 8,
        "{done:?}"
    );
    let out = hrh.remote().check("hid_received 20", STEP)?;
    ensure!(
        out.required("HID-RECEIVED")? == "a0a1a2a3a4a5a6a7",
        "the gadget received {}",
        out.text()
    );
    Ok(())
}

/// PORT_RESET reaches usbip-host as the reset it performs itself; the device answers
/// afterwards.
fn port_reset(usb: &mut Usb, port: u8, id: &str) -> Result<()> {
    usb.d.send_control(&CtrlReq {
        code: CTRL_PORT_RESET,
        port,
        id: 0,
    })?;
    let (status, speed) = usb.d.wait_control(TRANSFER)?;
    ensure!(
        status == Status::Ok as u32 && speed == Speed::High as u8,
        "PORT_RESET answered status {status}, speed {speed}"
    );
    usb.expect_device(port, id)
}

/// Unplugging the serial gadget in the HRH ends its import: a DISCONNECT on its port alone.
/// Plugged in and bound to usbip-host again, it comes back by itself as a CONNECT.
fn unplug_and_replug(
    usb: &mut Usb,
    hrh: &mut Hrh,
    port: u8,
    acm: &HrhDevice,
    other_port: u8,
    other_id: &str,
) -> Result<()> {
    hrh.remote().check("sh /hrh-gadgets.sh down acm", STEP)?;
    let (kind, at, _) = usb.d.wait_event(RECONNECT)?;
    ensure!(
        (kind, at) == (EVT_DISCONNECT, port),
        "after the unplug: event {kind} on port {at}, expected DISCONNECT on {port}"
    );
    // A request to the empty port fails at once; the other devices work on.
    let done = usb.bulk(port, 0x81, 64, &[])?;
    ensure!(
        done.resp.status == Status::NoDevice as u32,
        "a request to the unplugged port: {done:?}"
    );
    usb.expect_device(other_port, other_id)?;

    let out = hrh.remote().check("sh /hrh-gadgets.sh up acm", STEP)?;
    let busid = out
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("HRH-GADGET name=acm busid="))
        .and_then(|rest| rest.split_whitespace().next())
        .context("hrh-gadgets.sh up printed no bus id")?
        .to_owned();
    ensure!(
        busid == acm.busid,
        "the serial gadget came back as {busid}, was {}: the backend imports by bus id",
        acm.busid
    );
    hrh.remote()
        .check(&format!("usbip bind -b {busid}"), STEP)?;
    let connected = wait_connects(usb.d, 1, RECONNECT)?;
    ensure!(
        connected.contains_key(&port),
        "after the replug: {connected:?}"
    );
    usb.expect_device(port, &acm.id)
}
