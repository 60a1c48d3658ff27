//! The device model driven with virtio-queue's mock queues and a recording
//! twin of the devices: what the guest puts in chains reaches the devices,
//! what the devices answer lands in the right bytes, and broken chains or
//! answers are refused without writing outside the chain.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};
use vusb_backend::transfer::{
    Completion, IsoPacket, IsoResult, PortEvent, PortLayout, Ports, Speed, Status, Transfer,
    TransferKind, Upcall,
};
use vusb_backend::virtio_usb::wire::{
    self, CtrlReq, XferReq, XferResp, CONTROL_QUEUE, EVENT_QUEUE, REQUEST_QUEUE,
};
use vusb_backend::virtio_usb::{Controller, Limits, Used};

const MEM_SIZE: usize = 4 << 20;
/// Where the test buffers start; below is the mock queue's rings.
const BUF: u64 = 0x10_0000;
/// What untouched guest memory holds.
const FILL: u8 = 0xa5;

#[derive(Debug, Default)]
struct Recorder {
    submitted: Mutex<Vec<Transfer>>,
    cancelled: Mutex<Vec<(u8, u64)>>,
    resets: Mutex<Vec<(u8, u64)>>,
}

impl Ports for Recorder {
    fn submit(&self, t: Transfer) {
        self.submitted.lock().unwrap().push(t);
    }
    fn cancel(&self, port: u8, id: u64) {
        self.cancelled.lock().unwrap().push((port, id));
    }
    fn reset_port(&self, port: u8, token: u64) {
        self.resets.lock().unwrap().push((port, token));
    }
}

struct Bench {
    mem: GuestMemoryMmap,
    ports: Arc<Recorder>,
    ctl: Controller,
    /// (driver's id, tag the devices got), in submission order.
    driver_ids: Mutex<Vec<(u64, u64)>>,
}

fn bench() -> Bench {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&vec![FILL; MEM_SIZE - BUF as usize], GuestAddress(BUF))
        .unwrap();
    let ports = Arc::new(Recorder::default());
    let ctl = Controller::new(
        ports.clone(),
        PortLayout::for_devices(2),
        Limits {
            max_transfer: 1 << 20,
            max_iso_packets: 8,
            iso: true,
        },
    );
    Bench {
        mem,
        ports,
        ctl,
        driver_ids: Mutex::new(Vec::new()),
    }
}

fn readable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

fn writable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

impl Bench {
    fn request(&mut self, descs: &[RawDescriptor]) -> Option<Used> {
        let q = MockSplitQueue::new(&self.mem, 256);
        let chain = q.build_desc_chain(descs).unwrap();
        let before = self.submitted().len();
        let used = self.ctl.on_request(chain);
        if let Some(t) = self.submitted().get(before) {
            let head = SplitDescriptor::from(descs[0]);
            let id = XferReq::parse(&self.get(head.addr().0, 40).try_into().unwrap()).id;
            self.driver_ids.lock().unwrap().push((id, t.id));
        }
        used
    }

    fn control(&mut self, descs: &[RawDescriptor]) -> Option<Used> {
        let q = MockSplitQueue::new(&self.mem, 256);
        let chain = q.build_desc_chain(descs).unwrap();
        self.ctl.on_control(chain)
    }

    fn event_buffer(&mut self, addr: u64) -> Vec<Used> {
        let q = MockSplitQueue::new(&self.mem, 256);
        let chain = q.build_desc_chain(&[writable(addr, 8)]).unwrap();
        self.ctl.on_event_buffer(chain)
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    fn untouched(&self, addr: u64, len: usize) -> bool {
        self.get(addr, len).iter().all(|&b| b == FILL)
    }

    /// Delivers `u`, translating the driver's id in a completion into the
    /// tag the devices were given.
    fn upcall(&mut self, u: Upcall) -> Vec<Used> {
        let u = match u {
            Upcall::Completed(mut c) => {
                c.id = self.tag_of(c.id);
                Upcall::Completed(c)
            }
            other => other,
        };
        self.ctl.on_upcall(&self.mem, u)
    }

    /// The tag the devices got for the driver's request `id` (the latest).
    fn tag_of(&self, id: u64) -> u64 {
        *self
            .driver_ids
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(driver, _)| *driver == id)
            .map(|(_, tag)| tag)
            .unwrap_or(&u64::MAX)
    }

    fn submitted(&self) -> Vec<Transfer> {
        self.ports.submitted.lock().unwrap().clone()
    }
}

fn get_descriptor(id: u64, port: u8) -> XferReq {
    XferReq::control(id, port, [0x80, 6, 0, 1, 0, 0, 18, 0])
}

fn bulk(id: u64, endpoint: u8, length: u32) -> XferReq {
    XferReq::bulk(id, 1, endpoint, length)
}

/// The readable part of an isochronous IN request on port 1, endpoint 0x81: the header, then
/// one descriptor per `(offset, length)` packet.
fn iso_in_request(id: u64, length: u32, packets: &[(u32, u32)]) -> Vec<u8> {
    let req = XferReq {
        kind: TransferKind::Isochronous as u8,
        num_iso_packets: packets.len() as u32,
        length,
        ..bulk(id, 0x81, 0)
    };
    let mut bytes = req.to_bytes().to_vec();
    for &(offset, length) in packets {
        bytes.extend(wire::iso_packet_bytes(&IsoPacket { offset, length }));
    }
    bytes
}

fn done(id: u64, status: Status, data: &[u8]) -> Upcall {
    Upcall::Completed(Completion {
        actual_length: data.len() as u32,
        in_data: if data.is_empty() {
            vec![]
        } else {
            vec![(0, Bytes::copy_from_slice(data))]
        },
        ..Completion::failed(1, id, status)
    })
}

const DEVICE_DESCRIPTOR: [u8; 18] = [
    0x12, 1, 0, 2, 0, 0, 0, 0x40, 0x09, 0x12, 1, 0, 0, 1, 1, 2, 3, 1,
];

#[test]
fn control_in_reaches_the_device_and_its_answer_lands_in_the_buffer() {
    let mut b = bench();
    let req = get_descriptor(7, 1);
    b.put(BUF, &req.to_bytes());
    // Data and response split across three descriptors, as a driver may.
    let used = b.request(&[
        readable(BUF, 40),
        writable(BUF + 0x100, 10),
        writable(BUF + 0x200, 8),
        writable(BUF + 0x300, 16),
    ]);
    assert_eq!(used, None, "answered before the device did");
    let sent = b.submitted();
    assert_eq!(sent.len(), 1);
    assert_eq!(b.tag_of(7), sent[0].id);
    assert_eq!(sent[0].kind, TransferKind::Control);
    assert_eq!(sent[0].setup, req.setup);
    assert!(sent[0].is_in() && sent[0].out_data.is_empty());

    let used = b.upcall(done(7, Status::Ok, &DEVICE_DESCRIPTOR));
    assert_eq!(
        used,
        vec![Used {
            queue: REQUEST_QUEUE,
            head: 0,
            len: 34
        }]
    );
    let mut data = b.get(BUF + 0x100, 10);
    data.extend(b.get(BUF + 0x200, 8));
    assert_eq!(data, DEVICE_DESCRIPTOR);
    let resp = XferResp::parse(&b.get(BUF + 0x300, 16));
    assert_eq!((resp.status, resp.actual_length), (0, 18));
    assert!(b.untouched(BUF + 0x100 + 10, 0x100 - 10));
    // A second completion for the same id is not a second answer.
    assert!(b.upcall(done(7, Status::Ok, &DEVICE_DESCRIPTOR)).is_empty());
}

#[test]
fn out_data_split_across_descriptors_is_sent_whole() {
    let mut b = bench();
    let req = bulk(1, 0x02, 8);
    let mut head = req.to_bytes().to_vec();
    head.extend([1, 2, 3]);
    b.put(BUF, &head);
    b.put(BUF + 0x100, &[4, 5, 6, 7, 8]);
    assert_eq!(
        b.request(&[
            readable(BUF, 43),
            readable(BUF + 0x100, 5),
            writable(BUF + 0x200, 16)
        ]),
        None
    );
    assert_eq!(&b.submitted()[0].out_data[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    let used = b.upcall(Upcall::Completed(Completion {
        actual_length: 8,
        ..Completion::failed(1, 1, Status::Ok)
    }));
    assert_eq!(used[0].len, 16);
    assert_eq!(XferResp::parse(&b.get(BUF + 0x200, 16)).actual_length, 8);
}

/// Chains that break §4.2 are answered INVALID in their last 16 writable
/// bytes, never reach the devices, and nothing else is written.
#[test]
fn malformed_requests_are_invalid_and_never_sent() {
    let cases: Vec<(&str, XferReq, Vec<RawDescriptor>)> = vec![
        (
            "short header",
            bulk(1, 0x81, 0),
            vec![readable(BUF, 39), writable(BUF + 0x200, 16)],
        ),
        (
            "writable part shorter than the IN buffer",
            bulk(1, 0x81, 64),
            vec![readable(BUF, 40), writable(BUF + 0x200, 32)],
        ),
        (
            "writable part longer than the IN buffer",
            bulk(1, 0x81, 64),
            vec![readable(BUF, 40), writable(BUF + 0x200, 96)],
        ),
        (
            "OUT data missing",
            bulk(1, 0x02, 64),
            vec![readable(BUF, 40), writable(BUF + 0x200, 16)],
        ),
        (
            "port that does not exist",
            XferReq {
                port: 5,
                ..bulk(1, 0x81, 0)
            },
            vec![readable(BUF, 40), writable(BUF + 0x200, 16)],
        ),
        (
            "port 0",
            XferReq {
                port: 0,
                ..bulk(1, 0x81, 0)
            },
            vec![readable(BUF, 40), writable(BUF + 0x200, 16)],
        ),
        (
            "unknown type",
            XferReq {
                kind: 9,
                ..bulk(1, 0x81, 0)
            },
            vec![readable(BUF, 40), writable(BUF + 0x200, 16)],
        ),
        (
            "length beyond max_transfer",
            bulk(1, 0x02, 2 << 20),
            vec![readable(BUF, 40), writable(BUF + 0x200, 16)],
        ),
        (
            "control wLength differs from length",
            XferReq {
                length: 17,
                ..get_descriptor(1, 1)
            },
            vec![readable(BUF, 40), writable(BUF + 0x200, 33)],
        ),
        (
            "control direction differs from bmRequestType",
            XferReq {
                endpoint: 0,
                ..get_descriptor(1, 1)
            },
            vec![readable(BUF, 58), writable(BUF + 0x200, 16)],
        ),
        (
            "bulk on endpoint 0",
            bulk(1, 0x80, 0),
            vec![readable(BUF, 40), writable(BUF + 0x200, 16)],
        ),
        (
            "iso packets on a bulk transfer",
            XferReq {
                num_iso_packets: 1,
                ..bulk(1, 0x81, 0)
            },
            vec![readable(BUF, 48), writable(BUF + 0x200, 24)],
        ),
        (
            "too many iso packets",
            XferReq {
                kind: 1,
                num_iso_packets: 9,
                ..bulk(1, 0x81, 0)
            },
            vec![readable(BUF, 40 + 72), writable(BUF + 0x200, 72 + 16)],
        ),
    ];
    for (what, req, descs) in cases {
        let mut b = bench();
        b.put(BUF, &req.to_bytes());
        let used = b
            .request(&descs)
            .unwrap_or_else(|| panic!("{what}: not answered"));
        let wlen: u32 = descs
            .iter()
            .map(|d| SplitDescriptor::from(*d))
            .filter(|d| d.is_write_only())
            .map(|d| d.len())
            .sum();
        assert_eq!(used.len, wlen, "{what}");
        let resp = XferResp::parse(&b.get(BUF + 0x200 + u64::from(wlen) - 16, 16));
        assert_eq!(resp.status, Status::Invalid as u32, "{what}");
        assert!(
            b.untouched(BUF + 0x200, wlen as usize - 16),
            "{what}: wrote before the response"
        );
        assert!(b.submitted().is_empty(), "{what}: reached the device");
    }
}

#[test]
fn iso_packets_outside_the_buffer_are_invalid() {
    let mut b = bench();
    let head = iso_in_request(1, 64, &[(0, 32), (40, 32)]);
    b.put(BUF, &head);
    let used = b
        .request(&[readable(BUF, 56), writable(BUF + 0x200, 64 + 16 + 16)])
        .unwrap();
    assert_eq!(
        XferResp::parse(&b.get(BUF + 0x200 + 80, 16)).status,
        Status::Invalid as u32
    );
    assert_eq!(used.len, 96);
    assert!(b.submitted().is_empty());
}

#[test]
fn chains_that_cannot_be_answered_are_returned_untouched() {
    // Readable after writable, and a buffer past the end of guest memory.
    let mut b = bench();
    b.put(BUF, &bulk(1, 0x81, 0).to_bytes());
    let used = b
        .request(&[writable(BUF + 0x200, 16), readable(BUF, 40)])
        .unwrap();
    assert_eq!(used.len, 0);
    assert!(b.untouched(BUF + 0x200, 16));

    let used = b
        .request(&[readable(BUF, 40), writable(MEM_SIZE as u64 - 8, 16)])
        .unwrap();
    assert_eq!(used.len, 0);
    assert!(b.untouched(MEM_SIZE as u64 - 8, 8));
    let used = b
        .request(&[readable(u64::MAX - 8, 40), writable(BUF + 0x200, 16)])
        .unwrap();
    assert_eq!(used.len, 0);
    assert!(b.untouched(BUF + 0x200, 16));
    // Too small to hold a response: given back with nothing written.
    let used = b
        .request(&[readable(BUF, 39), writable(BUF + 0x200, 8)])
        .unwrap();
    assert_eq!(used.len, 0);
    assert!(b.untouched(BUF + 0x200, 8));
    assert!(b.submitted().is_empty());
}

#[test]
fn duplicate_ids_in_flight_are_invalid() {
    let mut b = bench();
    b.put(BUF, &bulk(5, 0x81, 0).to_bytes());
    assert_eq!(
        b.request(&[readable(BUF, 40), writable(BUF + 0x200, 16)]),
        None
    );
    let used = b
        .request(&[readable(BUF, 40), writable(BUF + 0x300, 16)])
        .unwrap();
    assert_eq!(
        XferResp::parse(&b.get(BUF + 0x300, 16)).status,
        Status::Invalid as u32
    );
    assert_eq!(used.len, 16);
    assert_eq!(b.submitted().len(), 1);
}

/// Devices are untrusted: an answer that does not fit its request fails the
/// request and writes nothing of its data.
#[test]
fn inconsistent_device_answers_fail_with_protocol() {
    let mut b = bench();
    b.put(BUF, &bulk(1, 0x81, 8).to_bytes());
    b.request(&[readable(BUF, 40), writable(BUF + 0x200, 8 + 16)]);
    let used = b.upcall(done(1, Status::Ok, &[1; 9]));
    assert_eq!(used.len(), 1);
    let resp = XferResp::parse(&b.get(BUF + 0x208, 16));
    assert_eq!(resp.status, Status::Protocol as u32);
    assert_eq!(resp.actual_length, 0);
    assert!(b.untouched(BUF + 0x200, 8));
}

#[test]
fn iso_in_data_lands_at_each_packet_offset() {
    let mut b = bench();
    let head = iso_in_request(3, 64, &[(0, 32), (32, 32)]);
    b.put(BUF, &head);
    assert_eq!(
        b.request(&[readable(BUF, 56), writable(BUF + 0x200, 64 + 16 + 16)]),
        None
    );
    let sent = &b.submitted()[0];
    assert_eq!(sent.iso_packets.len(), 2);
    let used = b.upcall(Upcall::Completed(Completion {
        actual_length: 30,
        iso_results: vec![
            IsoResult {
                actual_length: 10,
                status: Status::Ok,
            },
            IsoResult {
                actual_length: 20,
                status: Status::Ok,
            },
        ],
        in_data: vec![
            (0, Bytes::from(vec![1; 10])),
            (32, Bytes::from(vec![2; 20])),
        ],
        ..Completion::failed(1, 3, Status::Ok)
    }));
    assert_eq!(used[0].len, 96);
    assert_eq!(b.get(BUF + 0x200, 10), vec![1; 10]);
    assert!(b.untouched(BUF + 0x20a, 22));
    assert_eq!(b.get(BUF + 0x220, 20), vec![2; 20]);
    assert_eq!(b.get(BUF + 0x240, 8), [10, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(b.get(BUF + 0x248, 8), [20, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(XferResp::parse(&b.get(BUF + 0x250, 16)).actual_length, 30);
}

#[test]
fn cancel_answers_found_or_not_found() {
    let mut b = bench();
    b.put(BUF, &bulk(9, 0x81, 0).to_bytes());
    b.request(&[readable(BUF, 40), writable(BUF + 0x200, 16)]);
    for (id, want) in [(9, Status::Ok), (10, Status::NotFound)] {
        b.put(
            BUF + 0x400,
            &CtrlReq {
                code: wire::CTRL_CANCEL,
                port: 1,
                id,
            }
            .to_bytes(),
        );
        let used = b
            .control(&[readable(BUF + 0x400, 16), writable(BUF + 0x500, 8)])
            .unwrap();
        assert_eq!((used.queue, used.len), (CONTROL_QUEUE, 8));
        assert_eq!(b.get(BUF + 0x500, 4), (want as u32).to_le_bytes());
    }
    assert_eq!(*b.ports.cancelled.lock().unwrap(), vec![(1, b.tag_of(9))]);
    // The cancelled request still completes, once.
    assert_eq!(b.upcall(done(9, Status::Cancelled, &[])).len(), 1);
    assert_eq!(
        XferResp::parse(&b.get(BUF + 0x200, 16)).status,
        Status::Cancelled as u32
    );
}

#[test]
fn port_reset_waits_for_the_device_and_reports_its_speed() {
    let mut b = bench();
    b.put(
        BUF,
        &CtrlReq {
            code: wire::CTRL_PORT_RESET,
            port: 2,
            id: 0,
        }
        .to_bytes(),
    );
    assert_eq!(
        b.control(&[readable(BUF, 16), writable(BUF + 0x100, 8)]),
        None
    );
    let (port, token) = b.ports.resets.lock().unwrap()[0];
    assert_eq!(port, 2);
    let used = b.upcall(Upcall::ResetDone {
        port,
        token,
        status: Status::Ok,
        speed: Some(Speed::High),
    });
    assert_eq!(used[0].queue, CONTROL_QUEUE);
    assert_eq!(b.get(BUF + 0x100, 5), [0, 0, 0, 0, Speed::High as u8]);
}

#[test]
fn bad_control_requests_are_invalid() {
    let mut b = bench();
    for (what, req, descs) in [
        (
            "unknown code",
            CtrlReq {
                code: 77,
                port: 1,
                id: 0,
            },
            vec![readable(BUF, 16), writable(BUF + 0x100, 8)],
        ),
        (
            "missing port",
            CtrlReq {
                code: wire::CTRL_PORT_RESET,
                port: 9,
                id: 0,
            },
            vec![readable(BUF, 16), writable(BUF + 0x100, 8)],
        ),
        (
            "short",
            CtrlReq {
                code: wire::CTRL_CANCEL,
                port: 1,
                id: 0,
            },
            vec![readable(BUF, 12), writable(BUF + 0x100, 8)],
        ),
    ] {
        b.put(BUF, &req.to_bytes());
        b.put(BUF + 0x100, &[FILL; 8]);
        let used = b.control(&descs).unwrap();
        assert_eq!(used.len, 8, "{what}");
        assert_eq!(
            b.get(BUF + 0x100, 4),
            (Status::Invalid as u32).to_le_bytes(),
            "{what}"
        );
    }
    assert!(b.ports.resets.lock().unwrap().is_empty());
}

#[test]
fn events_wait_for_buffers_and_are_announced_again_after_reset() {
    let mut b = bench();
    let connect = PortEvent::Connected {
        port: 3,
        speed: Speed::Super,
    };
    assert!(b.upcall(Upcall::Event(connect)).is_empty());
    let used = b.event_buffer(BUF);
    assert_eq!(
        used,
        vec![Used {
            queue: EVENT_QUEUE,
            head: 0,
            len: 8
        }]
    );
    assert_eq!(b.get(BUF, 8), wire::event_bytes(&connect));
    // A stocked buffer takes the next event at once.
    assert!(b.event_buffer(BUF + 0x10).is_empty());
    let gone = PortEvent::Disconnected { port: 3 };
    assert_eq!(b.upcall(Upcall::Event(gone)).len(), 1);
    assert_eq!(b.get(BUF + 0x10, 8), wire::event_bytes(&gone));

    // After a reset the attached devices are announced again.
    let back = PortEvent::Connected {
        port: 1,
        speed: Speed::High,
    };
    b.upcall(Upcall::Event(back));
    b.ctl.reset();
    assert_eq!(b.event_buffer(BUF + 0x20).len(), 1);
    assert_eq!(b.get(BUF + 0x20, 8), wire::event_bytes(&back));
    assert!(b.event_buffer(BUF + 0x30).is_empty(), "port 3 came back");
}

#[test]
fn reset_cancels_the_devices_work_and_drops_its_answers() {
    let mut b = bench();
    b.put(BUF, &bulk(4, 0x81, 0).to_bytes());
    b.request(&[readable(BUF, 40), writable(BUF + 0x200, 16)]);
    b.ctl.reset();
    let old_tag = b.tag_of(4);
    assert_eq!(*b.ports.cancelled.lock().unwrap(), vec![(1, b.tag_of(4))]);
    assert!(b.upcall(done(4, Status::Cancelled, &[])).is_empty());
    assert!(b.untouched(BUF + 0x200, 16));

    // The driver reuses id 4 after the reset; the abandoned request's late
    // answer must not complete the new one.
    b.request(&[readable(BUF, 40), writable(BUF + 0x300, 16)]);
    assert_ne!(b.tag_of(4), old_tag);
    let late = Upcall::Completed(Completion::failed(1, old_tag, Status::Cancelled));
    assert!(b.ctl.on_upcall(&b.mem, late).is_empty());
    assert!(b.untouched(BUF + 0x300, 16));
    assert_eq!(b.upcall(done(4, Status::Ok, &[])).len(), 1);
}

#[test]
fn a_failed_iso_request_without_packet_results_gets_one_per_packet() {
    let mut b = bench();
    let head = iso_in_request(3, 64, &[(0, 32), (32, 32)]);
    b.put(BUF, &head);
    b.request(&[readable(BUF, 56), writable(BUF + 0x200, 96)]);
    b.upcall(Upcall::Completed(Completion::failed(
        1,
        3,
        Status::NoDevice,
    )));
    let no_device = (Status::NoDevice as u32).to_le_bytes();
    assert_eq!(&b.get(BUF + 0x240, 8)[4..], &no_device);
    assert_eq!(&b.get(BUF + 0x248, 8)[4..], &no_device);
    assert_eq!(
        XferResp::parse(&b.get(BUF + 0x250, 16)).status,
        Status::NoDevice as u32
    );
}

#[test]
fn lost_driver_state_sends_restarted_first_and_serves_nothing_until_reset() {
    let mut b = bench();
    let connect = PortEvent::Connected {
        port: 1,
        speed: Speed::High,
    };
    b.upcall(Upcall::Event(connect));
    assert_eq!(b.event_buffer(BUF + 0x400).len(), 1);
    b.put(BUF + 0x100, &get_descriptor(7, 1).to_bytes());
    let chain = [readable(BUF + 0x100, 40), writable(BUF + 0x200, 18 + 16)];
    assert!(b.request(&chain).is_none());
    assert_eq!(b.submitted().len(), 1);

    b.ctl.lost_driver_state();
    assert!(b.ctl.halted());
    assert_eq!(
        b.ports.cancelled.lock().unwrap().len(),
        1,
        "the devices' work on the lost request was not cancelled"
    );
    // A port event meanwhile waits for the reset's announcement.
    let gone = PortEvent::Disconnected { port: 1 };
    assert!(b.upcall(Upcall::Event(gone)).is_empty());
    assert_eq!(b.event_buffer(BUF + 0x410).len(), 1);
    assert_eq!(b.get(BUF + 0x410, 8), wire::restarted_event_bytes());
    assert!(
        b.event_buffer(BUF + 0x420).is_empty(),
        "only RESTARTED goes out"
    );
    // Chains that reach the controller anyway are not served.
    b.put(BUF + 0x100, &get_descriptor(8, 1).to_bytes());
    assert!(b.request(&chain).is_none());
    assert_eq!(b.submitted().len(), 1, "a request went to the devices");

    b.ctl.reset();
    assert!(!b.ctl.halted());
    assert!(
        b.event_buffer(BUF + 0x430).is_empty(),
        "the unplugged device was announced"
    );
}
