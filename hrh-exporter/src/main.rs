use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hrh_exporter::config::{Args, Config};
use hrh_exporter::device::UsbDevice;
use hrh_exporter::registry::Registry;
use hrh_exporter::server;
use hrh_exporter::source::simulated::SimulatedDevice;
use tracing::info;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("hrh-exporter: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let registry = Registry::new();
    for (i, kind) in config.simulated.iter().enumerate() {
        let device = SimulatedDevice::new(kind, i as u32 + 1)
            .with_context(|| format!("cannot create simulated {kind:?}"))?;
        let id = device.identity();
        info!(
            "exporting {} {:04x}:{:04x} ({kind:?})",
            id.info.busid, id.info.id_vendor, id.info.id_product
        );
        registry.add(Arc::new(device));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        info!("serving USB/IP on {}", listener.local_addr()?);
        tokio::select! {
            r = server::serve(listener, registry) => r.context("server failed"),
            _ = shutdown_signal() => {
                info!("shutting down");
                Ok(())
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
