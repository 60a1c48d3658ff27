//! The load generator against the real exporter and its loopback dongle,
//! in-process: short runs in both directions, data and counts verified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hrh_exporter::registry::Registry;
use hrh_exporter::server;
use hrh_exporter::source::simulated::{SimKind, SimulatedDevice};
use tokio::net::TcpListener;
use vusb_bench::client::{Client, LoadSpec, Stop};
use vusb_bench::stats::Dir;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn exporter() -> SocketAddr {
    let registry = Registry::new();
    registry.add(Arc::new(
        SimulatedDevice::new(&SimKind::Loopback, 1).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, registry));
    addr
}

fn spec(dir: Dir, size: u32, depth: usize, urbs: u64) -> LoadSpec {
    LoadSpec {
        dir,
        size,
        depth,
        warmup: Duration::ZERO,
        stop: Stop::Urbs(urbs),
        verify: true,
    }
}

#[tokio::test]
async fn runs_verify_data_and_counts_in_both_directions() {
    let addr = exporter().await;
    let mut client = Client::import(addr, "1-1", (1, 2), TIMEOUT).await.unwrap();
    client.watch_server(std::process::id()).unwrap();
    // Odd sizes move the pattern's phase between URBs; one connection for
    // all runs checks that the stream offset carries over.
    for (dir, size, depth) in [
        (Dir::In, 1000, 1),
        (Dir::In, 65536, 8),
        (Dir::Out, 513, 4),
        (Dir::Out, 65536, 8),
        (Dir::In, 64, 32),
    ] {
        let m = client.run(spec(dir, size, depth, 200)).await.unwrap();
        assert!(m.urbs >= 200, "{m:?}");
        assert!(m.verified, "{m:?}");
        assert!(m.mb_per_sec() > 0.0 && m.latency.p50 <= m.latency.max);
        assert!(m.cpu.server.is_some_and(|t| t > Duration::ZERO), "{m:?}");
    }
}

#[tokio::test]
async fn a_stalling_endpoint_is_an_error_not_a_result() {
    let addr = exporter().await;
    // Endpoint 5 does not exist on the loopback: its URBs stall.
    let mut client = Client::import(addr, "1-1", (5, 2), TIMEOUT).await.unwrap();
    let err = client.run(spec(Dir::In, 512, 2, 10)).await.unwrap_err();
    assert!(
        err.to_string().contains("failed with status -32"),
        "{err:#}"
    );
}

#[tokio::test]
async fn importing_an_unknown_bus_id_fails_clearly() {
    let addr = exporter().await;
    let err = Client::import(addr, "9-9", (1, 2), TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused to export 9-9"), "{err:#}");
}
