//! The generator's checks against a server that misbehaves on purpose: a
//! benchmark must fail loudly rather than report numbers for bad data.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use usbip_proto::{
    CmdMessage, DeviceInfo, Direction, OpReply, OpRequest, RetMessage, RetSubmit, UrbHeader,
};
use vusb_bench::client::{Client, LoadSpec, Stop};
use vusb_bench::pattern::Pattern;
use vusb_bench::stats::Dir;

const TIMEOUT: Duration = Duration::from_secs(10);

/// How the fake device answers bulk transfers.
#[derive(Clone, Copy)]
enum Fault {
    /// Flip one byte of the IN stream at this offset.
    CorruptAt(u64),
    /// Answer every bulk URB one byte short.
    Short,
}

/// A one-connection USB/IP server whose source sends the loopback pattern
/// with `fault` applied.
async fn fake_server(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while OpRequest::decode(&mut buf).unwrap().is_none() {
            s.read_buf(&mut buf).await.unwrap();
        }
        let mut out = BytesMut::new();
        OpReply::Import {
            status: 0,
            device: Some(DeviceInfo {
                busid: "1-1".into(),
                busnum: 1,
                devnum: 2,
                ..DeviceInfo::default()
            }),
        }
        .encode(&mut out)
        .unwrap();
        s.write_all(&out).await.unwrap();
        serve_urbs(s, buf, fault).await;
    });
    addr
}

async fn serve_urbs(mut s: TcpStream, mut buf: BytesMut, fault: Fault) {
    let pattern = Pattern::new();
    let mut offset = 0u64;
    loop {
        let Some(CmdMessage::Submit(cmd)) = CmdMessage::decode(&mut buf).unwrap() else {
            if s.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
            continue;
        };
        let len = cmd.transfer_buffer_length;
        let (actual, data) = match (cmd.header.ep, cmd.header.direction) {
            (0, _) => (0, Bytes::new()),
            (_, Direction::In) => {
                let mut data = pattern.fill(offset, len as usize);
                if let Fault::CorruptAt(at) = fault {
                    if (offset..offset + u64::from(len)).contains(&at) {
                        data[(at - offset) as usize] ^= 0x55;
                    }
                }
                offset += u64::from(len);
                if let Fault::Short = fault {
                    data.pop();
                }
                (data.len() as u32, Bytes::from(data))
            }
            (_, Direction::Out) => match fault {
                Fault::Short => (len - 1, Bytes::new()),
                Fault::CorruptAt(_) => (len, Bytes::new()),
            },
        };
        let mut out = BytesMut::new();
        RetMessage::Submit(RetSubmit {
            header: UrbHeader {
                seqnum: cmd.header.seqnum,
                ..UrbHeader::default()
            },
            actual_length: actual,
            data,
            ..RetSubmit::default()
        })
        .encode(&mut out)
        .unwrap();
        s.write_all(&out).await.unwrap();
    }
}

fn spec(dir: Dir, verify: bool) -> LoadSpec {
    LoadSpec {
        dir,
        size: 4096,
        depth: 4,
        warmup: Duration::ZERO,
        stop: Stop::Urbs(100),
        verify,
    }
}

#[tokio::test]
async fn one_wrong_byte_in_the_in_stream_fails_the_run() {
    let at = 3 * 4096 + 1234;
    let addr = fake_server(Fault::CorruptAt(at)).await;
    let mut client = Client::import(addr, "1-1", (1, 2), TIMEOUT).await.unwrap();
    let err = client.run(spec(Dir::In, true)).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!("stream offset {at}")),
        "{err:#}"
    );
}

#[tokio::test]
async fn without_verification_the_same_stream_passes() {
    let addr = fake_server(Fault::CorruptAt(10)).await;
    let mut client = Client::import(addr, "1-1", (1, 2), TIMEOUT).await.unwrap();
    let m = client.run(spec(Dir::In, false)).await.unwrap();
    assert!(!m.verified);
}

#[tokio::test]
async fn short_transfers_fail_the_run_in_both_directions() {
    for dir in [Dir::In, Dir::Out] {
        let addr = fake_server(Fault::Short).await;
        let mut client = Client::import(addr, "1-1", (1, 2), TIMEOUT).await.unwrap();
        let err = client.run(spec(dir, false)).await.unwrap_err();
        assert!(err.to_string().contains("moved only"), "{dir}: {err:#}");
    }
}
