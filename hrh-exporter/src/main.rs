use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hrh_exporter::config::{Args, Command, Config};
use hrh_exporter::device::UsbDevice;
use hrh_exporter::registry::Registry;
use hrh_exporter::server;
use hrh_exporter::source::libusb::{self, FoundDevice, LibusbSource};
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
    let args = Args::parse();
    let result = match args.command {
        Some(Command::List) => list(),
        None => run(args),
    };
    if let Err(e) = result {
        eprintln!("hrh-exporter: {e:#}");
        std::process::exit(1);
    }
}

/// `hrh-exporter list`: what `--device` can select.
fn list() -> anyhow::Result<()> {
    let source = LibusbSource::new().context("cannot use libusb")?;
    let devices = source.scan().context("cannot list USB devices")?;
    if devices.is_empty() {
        println!("no exportable USB devices");
        return Ok(());
    }
    println!(
        "{:<12} {:<9} {:<6} {:<5} DEVICE",
        "BUSID", "VID:PID", "SPEED", "CLASS"
    );
    for d in &devices {
        println!(
            "{:<12} {:04x}:{:04x} {:<6} {:02x}    {}",
            d.busid,
            d.vendor_id,
            d.product_id,
            speed_name(d.speed),
            d.class,
            describe(d)
        );
    }
    Ok(())
}

fn describe(d: &FoundDevice) -> String {
    let mut text = [d.manufacturer.as_deref(), d.product.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        text = "(no strings)".into();
    }
    if let Some(serial) = &d.serial {
        text.push_str(&format!(" [{serial}]"));
    }
    text
}

fn speed_name(speed: u32) -> &'static str {
    use usbip_proto::speed;
    match speed {
        speed::LOW => "low",
        speed::FULL => "full",
        speed::HIGH => "high",
        speed::SUPER => "super",
        speed::SUPER_PLUS => "super+",
        _ => "?",
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
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
    let runtime = runtime()?;
    // Devices opened from here on complete their transfers on the runtime.
    let _runtime_context = runtime.enter();
    // Real devices come and go; the watcher keeps the registry current
    // for as long as it lives.
    let _watcher = if config.devices.is_empty() {
        None
    } else {
        let source = Arc::new(LibusbSource::new().context("cannot use libusb")?);
        Some(libusb::watch(
            source,
            config.devices.clone(),
            registry.clone(),
            config.scan_interval,
        ))
    };
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

/// The async runtime: every connection and libusb's event handling on one
/// thread where the gateway has one CPU, worker threads where it has more.
/// With one CPU a worker thread only adds hand-offs to every URB: the
/// scheduler's bookkeeping, waking the worker from the thread that accepts,
/// run on an emulated or embedded CPU where each costs.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        // The process's name in `top`, `perf` and schedstat, not tokio's.
        .thread_name("hrh-exporter")
        .build()
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
