//! A usbredir front-end: one remote USB device offered to QEMU's
//! `usb-redir` device over a usbredir connection, with this side as the
//! protocol's *usb-host* and QEMU as its *usb-guest*.
//!
//! [`Session`] is the connection's state without I/O, in the style of the
//! virtio-usb controller: the caller decodes packets from QEMU with
//! `usbredir_proto` and hands them to [`Session::on_packet`], hands the
//! device's [`Upcall`](crate::transfer::Upcall)s to [`Session::on_upcall`],
//! and carries out the [`Action`]s that come back: packets to send to
//! QEMU, transfers to submit to or cancel on the device (a [`Ports`]
//! implementation such as the USB/IP client), port resets, or the end of
//! the connection.
//!
//! * `session`: the hellos and the dispatch of what arrives from QEMU and
//!   from the device;
//! * `lifecycle`: reading, announcing, withdrawing and resetting the device;
//! * `requests`: QEMU's data packets as transfers, their answers, cancels;
//! * `configuration`: set/get_configuration and set/get_alt_setting;
//! * `streams`: interrupt and bulk receiving, where this side polls an IN
//!   endpoint on the guest's behalf;
//! * `iso`: isochronous streams, kept going by this side in both
//!   directions;
//! * `device`, `descriptors`: reading the device's descriptors and turning
//!   them into interface_info and ep_info;
//! * `transfers`: what is in flight on the device, by tag.
//!
//! # The caller's part
//!
//! * Send [`Session::start`]'s hello first.
//! * Decode each packet from QEMU with [`Session::caps`] as they are at
//!   that moment (they change when QEMU's hello has been handed in), and
//!   encode each [`Action::Send`] with them as they are once the call that
//!   returned it has returned.
//! * One session per connection and one device per session, behind a
//!   [`Ports`] of its own: the session takes whatever port the device's
//!   `Connected` event names (the USB/IP client puts a SuperSpeed device on
//!   a USB 3 port), and tags its transfers itself.
//!
//! # Behaviour, as QEMU and usbredirhost have it
//!
//! QEMU's `hw/usb/redirect.c` is the peer; usbredir's own host side
//! (`usbredirhost.c`) is the reference for what QEMU has been tested
//! against, and is followed where the protocol document is silent or
//! disagrees with it:
//!
//! * The device is announced as interface_info, ep_info, device_connect, in
//!   that order (usbredirhost's; the protocol document names ep_info
//!   first), and only after QEMU's hello: QEMU rejects a device whose
//!   device_connect comes without interface info. Its descriptors are read
//!   from it beforehand (see `device`).
//! * After a successful set_configuration or set_alt_setting, interface_info
//!   and ep_info go out before the status, so QEMU has the new endpoints
//!   when the guest starts using them.
//! * A reset is answered with nothing: the protocol has no reset status; a
//!   reset that fails ends in device_disconnect.
//! * cancel_data_packet is answered at once with the cancelled packet,
//!   status cancelled, and the id is free again; whatever the device says
//!   later about that transfer is dropped.
//! * Ids must be unique among the requests in flight, except for interrupt
//!   OUT, which QEMU reports done at once and whose ids it may reuse early.
//! * When the device goes, every request still waiting is answered with
//!   status cancelled, then device_disconnect is sent; with the
//!   device_disconnect_ack capability a new device is announced only once
//!   QEMU has acknowledged it.
//! * Receiving streams number their packets from 0, again from 0 after a
//!   stall was cleared, and report a stream that stopped for any reason but
//!   the guest's stop with status stall. Unlike usbredirhost, a stream whose
//!   transfers keep failing is stopped (see `streams`).
//!
//! # Gaps
//!
//! * Bulk streams are not offered (USB/IP carries no stream ids). QEMU
//!   rejects the device when its guest asks for streams anyway
//!   (`usbredir_alloc_streams()`), as a guest's UAS driver would for a UAS
//!   disk; such disks need a guest that uses them as plain mass storage.
//! * The guest's device filter (filter_filter) is not checked here; QEMU
//!   applies it itself and sends filter_reject, after which the device is
//!   not offered again on that connection until it reconnects.
//! * Descriptors are read once, when the device connects; a device that
//!   changes them across a reset (firmware updates) keeps its old ones
//!   until it reconnects.
//!
//! [`Ports`]: crate::transfer::Ports

mod configuration;
mod descriptors;
mod device;
mod iso;
mod lifecycle;
mod requests;
pub mod serve;
mod session;
mod streams;
mod transfers;

#[cfg(test)]
mod tests;

pub use session::Session;

use usbredir_proto::{speed, status, Cap, Caps, Packet};

use crate::transfer::{Port, Speed, Status, Transfer};

/// What the session asks of its caller, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to QEMU, encoded with [`Session::caps`] as they are
    /// once the call that returned it has returned.
    Send(Packet),
    /// Submit this transfer to the device ([`Ports::submit`]); its id is the
    /// session's tag, which the completion carries back.
    ///
    /// [`Ports::submit`]: crate::transfer::Ports::submit
    Submit(Transfer),
    /// Cancel the transfer with this tag ([`Ports::cancel`]).
    ///
    /// [`Ports::cancel`]: crate::transfer::Ports::cancel
    Cancel { port: Port, tag: u64 },
    /// Reset the device ([`Ports::reset_port`]).
    ///
    /// [`Ports::reset_port`]: crate::transfer::Ports::reset_port
    ResetPort { port: Port, token: u64 },
    /// End this connection, for the reason given (to be logged): QEMU broke
    /// the protocol. Nothing more is
    /// done after this; the caller drops the session and the device's
    /// import with it.
    Close(String),
}

/// What this side announces unless told otherwise: everything QEMU sets
/// for itself (`usbredir_create_parser()`) and needs from a host before it
/// attaches a device to an xHCI port (`usbredir_do_attach()`: 64-bit ids,
/// 32-bit bulk lengths, ep_info's max_packet_size), plus
/// device_disconnect_ack, which usbredirparser announces for QEMU. Bulk
/// streams are left out: USB/IP cannot carry them.
pub const DEFAULT_CAPS: Caps = Caps::empty()
    .with(Cap::ConnectDeviceVersion)
    .with(Cap::Filter)
    .with(Cap::DeviceDisconnectAck)
    .with(Cap::EpInfoMaxPacketSize)
    .with(Cap::Ids64)
    .with(Cap::BulkLength32)
    .with(Cap::BulkReceiving);

/// The version string of this side's hello.
pub const VERSION: &str = concat!("vusb-backend usb-host ", env!("CARGO_PKG_VERSION"));

/// The usbredir status for a transfer's outcome.
///
/// QEMU turns every status but success, stall and babble into an I/O error
/// for the guest, so the finer distinctions are for logs; they follow how
/// usbredirhost maps libusb's outcomes.
pub fn redir_status(s: Status) -> u8 {
    match s {
        // Short only comes with a short-not-ok flag, which usbredir has no
        // way to ask for; the length tells the guest how much came.
        Status::Ok | Status::Short => status::SUCCESS,
        Status::Stall => status::STALL,
        // Shutdown: a reset or reconfiguration ended the transfer, which
        // usbredirhost reports as cancelled too.
        Status::Cancelled | Status::Shutdown => status::CANCELLED,
        Status::Timeout => status::TIMEOUT,
        Status::Overflow => status::BABBLE,
        Status::Invalid => status::INVAL,
        Status::NoDevice | Status::Protocol | Status::IsoPartial | Status::NotFound => {
            status::IOERROR
        }
    }
}

/// device_connect's speed. QEMU has nothing faster than SuperSpeed, and
/// takes an unknown speed for full speed.
pub fn redir_speed(s: Speed) -> u8 {
    match s {
        Speed::Low => speed::LOW,
        Speed::Full => speed::FULL,
        Speed::High => speed::HIGH,
        Speed::Super | Speed::SuperPlus => speed::SUPER,
        // As usbredirhost reports speeds libusb does not name.
        Speed::Wireless => speed::UNKNOWN,
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn statuses_map_to_usbredir_codes() {
        let cases = [
            (Status::Ok, status::SUCCESS),
            (Status::Short, status::SUCCESS),
            (Status::Stall, status::STALL),
            (Status::Cancelled, status::CANCELLED),
            (Status::Shutdown, status::CANCELLED),
            (Status::NoDevice, status::IOERROR),
            (Status::Protocol, status::IOERROR),
            (Status::Overflow, status::BABBLE),
            (Status::Timeout, status::TIMEOUT),
            (Status::Invalid, status::INVAL),
            (Status::IsoPartial, status::IOERROR),
            (Status::NotFound, status::IOERROR),
        ];
        for (s, code) in cases {
            assert_eq!(redir_status(s), code, "{s:?}");
        }
    }

    #[test]
    fn speeds_map_to_usbredir_speeds() {
        assert_eq!(redir_speed(Speed::Low), speed::LOW);
        assert_eq!(redir_speed(Speed::Full), speed::FULL);
        assert_eq!(redir_speed(Speed::High), speed::HIGH);
        assert_eq!(redir_speed(Speed::Super), speed::SUPER);
        assert_eq!(redir_speed(Speed::SuperPlus), speed::SUPER);
        assert_eq!(redir_speed(Speed::Wireless), speed::UNKNOWN);
    }

    #[test]
    fn default_caps_are_what_qemu_needs_for_xhci() {
        for cap in [Cap::EpInfoMaxPacketSize, Cap::BulkLength32, Cap::Ids64] {
            assert!(DEFAULT_CAPS.has(cap));
        }
        assert!(!DEFAULT_CAPS.has(Cap::BulkStreams));
        assert_eq!(DEFAULT_CAPS.bits(), 0xfe);
        assert!(VERSION.len() < usbredir_proto::VERSION_LEN);
    }
}
