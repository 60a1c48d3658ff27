//! Real USB devices, exported through libusb as Linux's usbip-host would
//! export them.
//!
//! * [`LibusbSource`] lists devices ([`LibusbSource::scan`]) and opens them
//!   ([`LibusbSource::open`]); [`watch`] keeps the registry in step with
//!   what is plugged in.
//! * [`LibusbDevice`] is an exportable device: each URB becomes an
//!   asynchronous libusb transfer (many in flight per endpoint), cancelled
//!   on unlink; completions run on the async runtime, next to the
//!   connections (`events`). Bulk and interrupt transfers run in buffers
//!   mapped from usbfs, which the kernel uses without copying (`mapped`).
//! * SET_CONFIGURATION, SET_INTERFACE, CLEAR_FEATURE(ENDPOINT_HALT) and a
//!   port reset are not forwarded: as usbip-host does, the exporter runs
//!   the host's own operation (so the host's USB stack knows about it) and
//!   answers the URB itself.

mod descriptors;
mod discovery;
mod events;
mod handle;
mod mapped;
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
    #[error("cannot start a thread for libusb: {0}")]
    Thread(#[source] std::io::Error),
    #[error("USB devices can only be opened inside the async runtime")]
    NoRuntime,
}

fn open_hint(e: &rusb::Error) -> &'static str {
    match e {
        rusb::Error::Access => {
            " (no permission on /dev/bus/usb: run as root or grant access with a udev rule)"
        }
        _ => "",
    }
}
