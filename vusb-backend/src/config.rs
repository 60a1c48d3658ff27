//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::remote::RemoteDevice;
use crate::transfer::MAX_PORTS_PER_HUB;

/// Smallest `max_transfer` the spec allows a device to announce.
const MIN_MAX_TRANSFER: u32 = 64 << 10;

/// Imports devices from USB/IP servers (hrh-exporter or any usbipd) and
/// presents them to a QEMU guest as a virtio-usb host controller over
/// vhost-user.
#[derive(Debug, Parser)]
#[command(name = "vusb-backend", version)]
pub struct Args {
    /// The Unix socket to create and listen on; QEMU connects to it with
    /// `-chardev socket,path=…`. One front-end at a time, across
    /// reconnects.
    #[arg(long, value_name = "PATH", required_unless_present = "listen")]
    pub socket_path: Option<PathBuf>,

    /// With `--frontend usbredir`, listen on TCP at ADDR:PORT instead of a
    /// Unix socket, for a QEMU on another machine (`-chardev
    /// socket,host=…,port=…,reconnect=1`). usbredir has no authentication:
    /// listen only where QEMU alone can reach.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "socket_path")]
    pub listen: Option<SocketAddr>,

    /// A device to import: `tcp://HOST[:PORT]/BUSID` or
    /// `tcp://HOST[:PORT]/VID:PID` (hex). Repeat for more devices (up to
    /// 15); device N takes root-hub port N (USB 2.0) or the N-th USB 3 port.
    #[arg(long = "device", value_name = "URL", required = true)]
    pub devices: Vec<RemoteDevice>,

    /// Largest transfer the guest may submit, in bytes (at least 65536,
    /// at most 16 MiB).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_MAX_TRANSFER)..=i64::from(usbip_proto::limits::MAX_TRANSFER_LEN)))]
    pub max_transfer: u32,

    /// Refuse isochronous transfers (do not offer VIRTIO_USB_F_ISO).
    #[arg(long)]
    pub no_iso: bool,

    /// Interrupt IN transfers kept outstanding on each endpoint the guest
    /// polls, so that a device's reports do not wait a network round trip
    /// each (see `vusb_backend::prefetch`); 0 passes the guest's transfers
    /// through one for one. With `--frontend usbredir`, the transfers each
    /// of QEMU's interrupt receiving streams keeps outstanding (0 counts as
    /// 1: a stream needs one).
    #[arg(long, default_value_t = crate::prefetch::DEFAULT_DEPTH, value_name = "N",
          value_parser = clap::value_parser!(u8).range(0..=16))]
    pub interrupt_prefetch: u8,

    /// What QEMU attaches: `vhost-user`, a virtio-usb controller for the
    /// guest's virtio_usb_hcd driver (any number of devices), or
    /// `usbredir`, one device for QEMU's `usb-redir` on an emulated USB
    /// controller (no guest driver; exactly one `--device`).
    #[arg(long, value_enum, default_value_t = Frontend::VhostUser)]
    pub frontend: Frontend,
}

/// The front-ends vusb-backend can present devices through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Frontend {
    VhostUser,
    Usbredir,
}

impl Args {
    /// Checks what clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_some() && self.frontend != Frontend::Usbredir {
            return Err(
                "--listen is for --frontend usbredir; vhost-user needs --socket-path".into(),
            );
        }
        if self.frontend == Frontend::Usbredir && self.devices.len() != 1 {
            return Err(format!(
                "--frontend usbredir serves one device per socket; {} given",
                self.devices.len()
            ));
        }
        if self.devices.len() > usize::from(MAX_PORTS_PER_HUB) {
            return Err(format!(
                "{} devices given; one controller takes at most {MAX_PORTS_PER_HUB}",
                self.devices.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        let args =
            Args::try_parse_from(std::iter::once("vusb-backend").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.validate()?;
        Ok(args)
    }

    #[test]
    fn usbredir_takes_exactly_one_device() {
        let one = parse(&[
            "--frontend",
            "usbredir",
            "--socket-path",
            "/run/vusb/r.sock",
            "--device",
            "tcp://hrh/1-1",
        ])
        .unwrap();
        assert_eq!(one.frontend, Frontend::Usbredir);
        let two = parse(&[
            "--frontend",
            "usbredir",
            "--socket-path",
            "/run/vusb/r.sock",
            "--device",
            "tcp://hrh/1-1",
            "--device",
            "tcp://hrh/1-2",
        ]);
        assert!(two.unwrap_err().contains("one device per socket"));
        let tcp = parse(&[
            "--frontend",
            "usbredir",
            "--listen",
            "127.0.0.1:4000",
            "--device",
            "tcp://hrh/1-1",
        ])
        .unwrap();
        assert_eq!(tcp.listen, Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(tcp.socket_path, None);
        assert!(parse(&[
            "--frontend",
            "usb",
            "--socket-path",
            "x",
            "--device",
            "tcp://h/1-1"
        ])
        .is_err());
    }

    #[test]
    fn the_documented_command_line_parses() {
        let a = parse(&[
            "--socket-path",
            "/run/vusb/guest1.sock",
            "--device",
            "tcp://hrh:3240/1-1",
            "--device",
            "tcp://hrh/1209:0001",
        ])
        .unwrap();
        assert_eq!(a.devices.len(), 2);
        assert_eq!(a.max_transfer, 1 << 20);
        assert!(!a.no_iso);
        assert_eq!(a.interrupt_prefetch, 8);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let e = parse(&["--socket-path", "/s"]).unwrap_err();
        assert!(e.contains("--device"), "{e}");
        let e = parse(&["--device", "tcp://h/1-1"]).unwrap_err();
        assert!(e.contains("--socket-path"), "{e}");
        let e = parse(&["--listen", "127.0.0.1:4000", "--device", "tcp://h/1-1"]).unwrap_err();
        assert!(e.contains("--listen is for --frontend usbredir"), "{e}");
        let both = [
            "--frontend",
            "usbredir",
            "--listen",
            "127.0.0.1:4000",
            "--socket-path",
            "/s",
            "--device",
            "tcp://h/1-1",
        ];
        assert!(parse(&both).unwrap_err().contains("cannot be used with"));
        let e = parse(&["--listen", "hrh:4000", "--device", "tcp://h/1-1"]).unwrap_err();
        assert!(e.contains("--listen"), "{e}");
        let e = parse(&["--socket-path", "/s", "--device", "hrh/1-1"]).unwrap_err();
        assert!(e.contains("tcp://"), "{e}");
        let e = parse(&[
            "--socket-path",
            "/s",
            "--device",
            "tcp://h/1-1",
            "--max-transfer",
            "512",
        ])
        .unwrap_err();
        assert!(e.contains("max-transfer"), "{e}");
        let many: Vec<String> = (1..=16).map(|i| format!("tcp://h/1-{i}")).collect();
        let mut args = vec!["--socket-path", "/s"];
        for d in &many {
            args.extend(["--device", d]);
        }
        let e = parse(&args).unwrap_err();
        assert!(e.contains("at most 15"), "{e}");
    }
}
