//! `vusb-keeper`: see `vusb-keeper --help` and `vusb_backend::keeper`.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tracing::info;
use vusb_backend::keeper::proxy;

/// Holds QEMU's vhost-user connection to a vusb-backend, so that the
/// backend can be restarted (upgraded, or after a crash) while the guest
/// runs: QEMU connects to the keeper's socket, the keeper to the
/// backend's, and a restarted backend is brought back to where QEMU left
/// its device. The guest's driver then resets the device, and its USB
/// devices come back.
#[derive(Debug, Parser)]
#[command(name = "vusb-keeper", version)]
struct Args {
    /// The socket to create and listen on for QEMU (`-chardev
    /// socket,path=…`), instead of the backend's.
    #[arg(long, value_name = "PATH")]
    socket_path: PathBuf,

    /// The socket vusb-backend listens on (its `--socket-path`). It may
    /// come and go; the keeper waits for it.
    #[arg(long, value_name = "PATH")]
    backend: PathBuf,
}

fn main() {
    vusb_backend::init_logging();
    let args = Args::parse();
    if args.socket_path == args.backend {
        eprintln!("error: --socket-path and --backend name the same socket");
        std::process::exit(2);
    }
    if let Err(e) = run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    if let Some(dir) = args.socket_path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    // A socket left by an earlier keeper would make bind fail.
    let _ = std::fs::remove_file(&args.socket_path);
    let listener = UnixListener::bind(&args.socket_path)
        .with_context(|| format!("listening on {}", args.socket_path.display()))?;
    info!(
        socket = %args.socket_path.display(),
        backend = %args.backend.display(),
        "keeping vhost-user connections for the backend"
    );
    proxy::serve_forever(&listener, &args.backend).context("accepting a front-end")
}
