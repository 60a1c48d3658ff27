//! Real USB devices, found and claimed through libusb and exported through
//! usbfs as Linux's usbip-host would export them.
//!
//! * [`LibusbSource`] lists devices ([`LibusbSource::scan`]) and opens them
//!   ([`LibusbSource::open`]); [`watch`] keeps the registry in step with
//!   what is plugged in.
//! * [`LibusbDevice`] is an exportable device: each URB goes straight to
//!   usbfs (many in flight per endpoint) and is cancelled on unlink; a
//!   thread per device waits in usbfs for completions and delivers them
//!   (`submission`), as usbip-host's kernel thread would. Bulk and
//!   interrupt transfers run in buffers mapped from usbfs, which the kernel
//!   uses without copying (`mapped`).
//! * SET_CONFIGURATION, SET_INTERFACE, CLEAR_FEATURE(ENDPOINT_HALT) and a
//!   port reset are not forwarded: as usbip-host does, the exporter runs
//!   the host's own operation (so the host's USB stack knows about it) and
//!   answers the URB itself.

mod descriptors;
mod discovery;
mod handle;
mod mapped;
mod submission;
mod transfer;
mod uevents;
mod watch;

pub use discovery::{usbip_speed, FoundDevice, LibusbSource, Selector};
pub use handle::LibusbDevice;
pub use watch::{watch, WatchHandle};

/// Why libusb could not be used or a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LibusbError {
    #[error("cannot initialise libusb: {0}")]
    Init(#[source] rusb::Error),
    #[error("cannot list USB devices: {0}")]
    Enumerate(#[source] rusb::Error),
    #[error("cannot open USB device {busid}: {source}{}", open_hint(.source))]
    Open { busid: String, source: rusb::Error },
    #[error("cannot open USB device {busid}: {source}{}", open_file_hint(.source))]
    OpenFile {
        busid: String,
        source: std::io::Error,
    },
    #[error("cannot start a thread for a USB device: {0}")]
    Thread(#[source] std::io::Error),
}

fn open_file_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => open_hint(&rusb::Error::Access),
        _ => "",
    }
}

fn open_hint(e: &rusb::Error) -> &'static str {
    match e {
        rusb::Error::Access => {
            " (no permission on /dev/bus/usb: run as root or grant access with a udev rule)"
        }
        _ => "",
    }
}
