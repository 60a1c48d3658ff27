//! Throughput of the URB codec: CMD_SUBMIT and RET_SUBMIT, encoded and
//! decoded, with no payload, a 512-byte payload (a high-speed bulk packet)
//! and a 64 KiB payload (a typical bulk URB).
//!
//! Throughput is in wire bytes (48-byte header plus payload); messages per
//! second are the inverse of the time per iteration. Decoding hands out the
//! payload as a slice of the receive buffer without copying it, so decode
//! throughput grows with the payload while encode pays one copy.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use usbip_proto::{
    CmdMessage, CmdSubmit, Direction, RetMessage, RetSubmit, SubmitInfo, UrbHeader, URB_HEADER_LEN,
};

const PAYLOADS: [usize; 3] = [0, 512, 64 * 1024];

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A bulk OUT submission carrying `len` bytes.
fn cmd_submit(len: usize) -> CmdMessage {
    CmdMessage::Submit(CmdSubmit {
        header: UrbHeader {
            seqnum: 0x1234,
            devid: 0x0001_0002,
            direction: Direction::Out,
            ep: 2,
        },
        transfer_buffer_length: len as u32,
        data: payload(len),
        ..CmdSubmit::default()
    })
}

/// The reply to a bulk IN request, carrying `len` bytes.
fn ret_submit(len: usize) -> RetMessage {
    RetMessage::Submit(RetSubmit {
        header: UrbHeader {
            seqnum: 0x1234,
            ..UrbHeader::default()
        },
        actual_length: len as u32,
        data: payload(len),
        ..RetSubmit::default()
    })
}

fn wire(encode: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    buf
}

/// Fresh copies of an encoded message for each decode, made outside the
/// timed part, as a receive buffer would hold it. Large inputs are made
/// one at a time so that they stay few in memory.
fn batch_size(len: usize) -> BatchSize {
    if len > 4096 {
        BatchSize::LargeInput
    } else {
        BatchSize::SmallInput
    }
}

fn cmd_submit_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("cmd_submit");
    for len in PAYLOADS {
        let msg = cmd_submit(len);
        group.throughput(Throughput::Bytes((URB_HEADER_LEN + len) as u64));
        // A reused buffer, as a connection's send buffer is.
        let mut out = BytesMut::with_capacity(URB_HEADER_LEN + len);
        group.bench_function(format!("encode/{len}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&msg).encode(&mut out).unwrap();
                black_box(out.len())
            })
        });
        let bytes = wire(|buf| msg.encode(buf).unwrap());
        group.bench_function(format!("decode/{len}"), |b| {
            b.iter_batched(
                || bytes.clone(),
                // The emptied buffer is returned with the message so that
                // freeing it is not timed either.
                |mut buf| (CmdMessage::decode(&mut buf).unwrap().unwrap(), buf),
                batch_size(len),
            )
        });
    }
    group.finish();
}

fn ret_submit_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("ret_submit");
    for len in PAYLOADS {
        let msg = ret_submit(len);
        let request = SubmitInfo {
            direction: Direction::In,
            transfer_buffer_length: len as u32,
            number_of_packets: 0,
        };
        group.throughput(Throughput::Bytes((URB_HEADER_LEN + len) as u64));
        let mut out = BytesMut::with_capacity(URB_HEADER_LEN + len);
        group.bench_function(format!("encode/{len}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&msg).encode(&mut out).unwrap();
                black_box(out.len())
            })
        });
        let bytes = wire(|buf| msg.encode(buf).unwrap());
        group.bench_function(format!("decode/{len}"), |b| {
            b.iter_batched(
                || bytes.clone(),
                |mut buf| {
                    let msg = RetMessage::decode_with(&mut buf, |_| Some(request))
                        .unwrap()
                        .unwrap();
                    (msg, buf)
                },
                batch_size(len),
            )
        });
    }
    group.finish();
}

criterion_group!(benches, cmd_submit_benches, ret_submit_benches);
criterion_main!(benches);
