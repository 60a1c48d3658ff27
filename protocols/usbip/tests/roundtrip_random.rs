//! The fuzz targets' properties (`common/property.rs`) over a few thousand
//! deterministic pseudo-random inputs, so that every `cargo test` exercises
//! them without cargo-fuzz: random valid messages (which must round-trip),
//! the same with a few bytes flipped, and plain noise with a plausible
//! header.

mod common;

use bytes::{Bytes, BytesMut};
use common::property::{check_cmd, check_op, check_ret};
use common::{cat, decode_bytewise};
use usbip_proto::{
    op_status, CmdMessage, CmdSubmit, CmdUnlink, DeviceInfo, Direction, InterfaceInfo, IsoPacket,
    OpReply, OpRequest, RetMessage, RetSubmit, RetUnlink, SetupPacket, SubmitInfo, UrbHeader,
    NON_ISO_PACKETS, URB_HEADER_LEN,
};

/// xorshift64*: tiny, deterministic, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn text(&mut self, max: usize) -> String {
        let n = self.below(max as u64 + 1) as usize;
        (0..n)
            .map(|_| char::from(b"0123456789-./:abcdefusb"[self.below(23) as usize]))
            .collect()
    }
    fn direction(&mut self) -> Direction {
        if self.chance(2) {
            Direction::In
        } else {
            Direction::Out
        }
    }
}

const ITERATIONS: usize = 3000;

/// Isochronous packets laid out in a buffer of `len` bytes (possibly none).
fn gen_packets(rng: &mut Rng, len: u32) -> Vec<IsoPacket> {
    let n = rng.below(6) as u32;
    let mut packets = Vec::new();
    let mut offset = 0;
    for _ in 0..n {
        let room = len - offset;
        let length = rng.below(u64::from(room) + 1) as u32;
        packets.push(IsoPacket {
            offset,
            length,
            actual_length: 0,
            status: if rng.chance(2) { 0 } else { -18 },
        });
        offset += length;
    }
    packets
}

fn gen_cmd(rng: &mut Rng) -> CmdMessage {
    let header = UrbHeader {
        seqnum: rng.u32(),
        devid: rng.u32(),
        direction: rng.direction(),
        ep: rng.below(16) as u32,
    };
    if rng.chance(4) {
        return CmdMessage::Unlink(CmdUnlink {
            header,
            unlink_seqnum: rng.u32(),
        });
    }
    let len = rng.below(80) as u32;
    let iso_packets = if rng.chance(3) {
        gen_packets(rng, len)
    } else {
        vec![]
    };
    let number_of_packets = if iso_packets.is_empty() {
        [0, NON_ISO_PACKETS][rng.below(2) as usize]
    } else {
        iso_packets.len() as u32
    };
    let data = match header.direction {
        Direction::Out => Bytes::from(rng.bytes(len as usize)),
        Direction::In => Bytes::new(),
    };
    let setup = rng.bytes(8);
    CmdMessage::Submit(CmdSubmit {
        header,
        transfer_flags: rng.u32(),
        transfer_buffer_length: len,
        start_frame: rng.u32() as i32,
        number_of_packets,
        interval: rng.u32() as i32,
        setup: SetupPacket::from_bytes(setup.try_into().unwrap()),
        data,
        iso_packets,
    })
}

/// A reply together with the request it answers.
fn gen_ret(rng: &mut Rng) -> (RetMessage, SubmitInfo) {
    let direction = rng.direction();
    let header = UrbHeader {
        seqnum: rng.u32(),
        ..Default::default()
    };
    let len = rng.below(80) as u32;
    if rng.chance(4) {
        let info = SubmitInfo {
            direction,
            transfer_buffer_length: len,
            number_of_packets: 0,
        };
        let status = [0, -104][rng.below(2) as usize];
        return (RetMessage::Unlink(RetUnlink { header, status }), info);
    }
    let mut iso_packets = if rng.chance(3) {
        gen_packets(rng, len)
    } else {
        vec![]
    };
    let actual_length = if iso_packets.is_empty() {
        rng.below(u64::from(len) + 1) as u32
    } else {
        for p in &mut iso_packets {
            p.actual_length = rng.below(u64::from(p.length) + 1) as u32;
            p.status = 0;
        }
        iso_packets.iter().map(|p| p.actual_length).sum()
    };
    let number_of_packets = if iso_packets.is_empty() {
        [0, NON_ISO_PACKETS][rng.below(2) as usize]
    } else {
        iso_packets.len() as u32
    };
    let data = match direction {
        Direction::In => Bytes::from(rng.bytes(actual_length as usize)),
        Direction::Out => Bytes::new(),
    };
    let info = SubmitInfo {
        direction,
        transfer_buffer_length: len,
        number_of_packets,
    };
    let msg = RetMessage::Submit(RetSubmit {
        header,
        status: [0, -32, -71, -104][rng.below(4) as usize],
        actual_length,
        start_frame: rng.u32() as i32,
        number_of_packets,
        error_count: rng.below(3) as i32,
        data,
        iso_packets,
    });
    (msg, info)
}

fn gen_device(rng: &mut Rng) -> (DeviceInfo, Vec<InterfaceInfo>) {
    let num_interfaces = rng.below(5) as u8;
    let dev = DeviceInfo {
        path: rng.text(255),
        busid: rng.text(31),
        busnum: rng.u32(),
        devnum: rng.u32(),
        speed: rng.below(7) as u32,
        id_vendor: rng.u32() as u16,
        id_product: rng.u32() as u16,
        bcd_device: rng.u32() as u16,
        device_class: rng.u32() as u8,
        device_subclass: rng.u32() as u8,
        device_protocol: rng.u32() as u8,
        configuration_value: rng.u32() as u8,
        num_configurations: rng.u32() as u8,
        num_interfaces,
    };
    let ifaces = (0..num_interfaces)
        .map(|_| InterfaceInfo {
            class: rng.u32() as u8,
            subclass: rng.u32() as u8,
            protocol: rng.u32() as u8,
        })
        .collect();
    (dev, ifaces)
}

/// Flips 1 to 4 random bytes.
fn mutate(rng: &mut Rng, wire: &mut [u8]) {
    if wire.is_empty() {
        return;
    }
    for _ in 0..=rng.below(4) {
        let i = rng.below(wire.len() as u64) as usize;
        wire[i] = if rng.chance(2) {
            rng.next() as u8
        } else {
            wire[i] ^ (1 << rng.below(8))
        };
    }
}

/// The oracle-selecting prefix `check_ret` expects for this request.
fn ret_prefix(info: &SubmitInfo, whole_request: bool, known: bool) -> Vec<u8> {
    let mut sel = u8::from(info.direction == Direction::In);
    if !known {
        sel |= 2;
    }
    if !whole_request {
        return vec![sel];
    }
    cat(&[
        &[sel | 4],
        &info.transfer_buffer_length.to_be_bytes(),
        &info.number_of_packets.to_be_bytes(),
    ])
}

#[test]
fn cmd_messages_round_trip() {
    let mut rng = Rng(0x5eed_0001);
    for i in 0..ITERATIONS {
        let msg = gen_cmd(&mut rng);
        let mut wire = BytesMut::new();
        msg.encode(&mut wire).expect("generated message encodes");
        let decoded = if i % 10 == 0 {
            decode_bytewise(&wire, CmdMessage::decode)
        } else {
            CmdMessage::decode(&mut wire.clone()).unwrap().unwrap()
        };
        assert_eq!(decoded, msg);
        assert!(check_cmd(&wire));
        // Exactly what is left of the header, then of the message.
        for k in 0..=wire.len() {
            let left = if k < URB_HEADER_LEN {
                URB_HEADER_LEN - k
            } else {
                wire.len() - k
            };
            assert_eq!(
                CmdMessage::missing(&wire[..k]),
                left,
                "{k} bytes of {msg:?}"
            );
        }
        let mut bad = wire.to_vec();
        mutate(&mut rng, &mut bad);
        check_cmd(&bad);
    }
}

#[test]
fn ret_messages_round_trip() {
    let mut rng = Rng(0x5eed_0002);
    for i in 0..ITERATIONS {
        let (msg, info) = gen_ret(&mut rng);
        let mut wire = BytesMut::new();
        msg.encode_for(&info, &mut wire)
            .expect("generated message encodes");
        let decoded = if i % 10 == 0 {
            decode_bytewise(&wire, |b| RetMessage::decode_with(b, |_| Some(info)))
        } else {
            RetMessage::decode_with(&mut wire.clone(), |_| Some(info))
                .unwrap()
                .unwrap()
        };
        assert_eq!(decoded, msg);
        for whole in [false, true] {
            assert!(check_ret(&cat(&[&ret_prefix(&info, whole, true), &wire])));
        }
        let mut bad = cat(&[&ret_prefix(&info, rng.chance(2), !rng.chance(8)), &wire]);
        mutate(&mut rng, &mut bad);
        check_ret(&bad);
    }
}

#[test]
fn op_messages_round_trip() {
    let mut rng = Rng(0x5eed_0003);
    for i in 0..ITERATIONS / 3 {
        let request = match rng.below(2) {
            0 => OpRequest::DevList,
            _ => OpRequest::Import {
                busid: rng.text(31),
            },
        };
        let status = if rng.chance(4) {
            rng.below(6) as u32
        } else {
            op_status::OK
        };
        let ok = status == op_status::OK;
        let (reply, sel) = if rng.chance(2) {
            let n = if ok { rng.below(4) } else { 0 };
            let devices = (0..n).map(|_| gen_device(&mut rng)).collect();
            (OpReply::DevList { status, devices }, 0)
        } else {
            let device = ok.then(|| gen_device(&mut rng).0);
            (OpReply::Import { status, device }, 1)
        };

        let mut wire = BytesMut::new();
        request.encode(&mut wire).unwrap();
        let back = if i % 10 == 0 {
            decode_bytewise(&wire, OpRequest::decode)
        } else {
            OpRequest::decode(&mut wire.clone()).unwrap().unwrap()
        };
        assert_eq!(back, request);
        assert!(check_op(&cat(&[&[0], &wire])));

        let code = [
            usbip_proto::op_code::REQ_DEVLIST,
            usbip_proto::op_code::REQ_IMPORT,
        ][sel as usize];
        let mut wire = BytesMut::new();
        reply.encode(&mut wire).unwrap();
        let back = if i % 10 == 0 {
            decode_bytewise(&wire, |b| OpReply::decode(b, code))
        } else {
            OpReply::decode(&mut wire.clone(), code).unwrap().unwrap()
        };
        assert_eq!(back, reply);
        let mut input = cat(&[&[sel], &wire]);
        assert!(check_op(&input));
        mutate(&mut rng, &mut input[1..]);
        check_op(&input);
    }
}

#[test]
fn noise_with_plausible_headers() {
    let mut rng = Rng(0x5eed_0004);
    let (mut cmds, mut rets, mut ops) = (0, 0, 0);
    for _ in 0..ITERATIONS {
        let len = rng.below(200) as usize;
        let mut input = rng.bytes(len);
        // Mostly steer the fields that gate everything else into range, so
        // the noise reaches the body checks.
        if len >= 49 && !rng.chance(4) {
            input[1..4].copy_from_slice(&[0, 0, 0]);
            input[4] = [1, 2, 3, 4][rng.below(4) as usize];
            input[13..16].copy_from_slice(&[0, 0, 0]);
            input[16] = rng.below(2) as u8;
            input[17..20].copy_from_slice(&[0, 0, 0]);
            input[20] = rng.below(16) as u8;
            for field in [25, 33] {
                // transfer/actual length and number_of_packets: small
                input[field..field + 3].copy_from_slice(&[0, 0, 0]);
                input[field + 3] %= 8;
            }
        }
        cmds += usize::from(check_cmd(input.get(1..).unwrap_or_default()));
        rets += usize::from(check_ret(&input));
        if len >= 9 && rng.chance(2) {
            input[1..3].copy_from_slice(&[0x01, 0x11]);
            input[3] = [0x80, 0x00][rng.below(2) as usize];
            input[4] = [3, 5][rng.below(2) as usize];
        }
        ops += usize::from(check_op(&input));
    }
    // The noise must reach past the header checks often enough to matter.
    eprintln!("noise decoded: {cmds} CMD, {rets} RET, {ops} op of {ITERATIONS}");
    assert!(cmds > ITERATIONS / 20, "only {cmds} CMD inputs decoded");
    assert!(rets > ITERATIONS / 20, "only {rets} RET inputs decoded");
    assert!(ops > ITERATIONS / 50, "only {ops} op inputs decoded");
}
