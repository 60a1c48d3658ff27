//! The contract between the simulated-device engine and one simulated dongle.
//!
//! A [`Function`] is the firmware of a simulated USB device: it owns its
//! descriptors and the state behind its endpoints, and knows nothing of URBs,
//! threads, sockets or USB/IP. The engine ([`crate::engine`]) answers the standard
//! control requests itself, keeps the endpoint halt state, queues IN requests
//! until the function has data (a NAK, in USB terms) and calls [`Function::tick`]
//! when a timer the function asked for expires.

use std::time::Instant;

use usbip_proto::SetupPacket;

/// The endpoint answered with a STALL handshake.
///
/// For a data endpoint the engine marks the endpoint halted: every following
/// transfer fails with `-EPIPE` until the host sends
/// CLEAR_FEATURE(ENDPOINT_HALT). For a control request only that request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall;

/// What an IN endpoint answers when the host polls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InResponse {
    /// Data for the host (at most the requested length; shorter is a short packet).
    Data(Vec<u8>),
    /// Nothing to send yet: the engine keeps the request queued and asks again
    /// after the next event (an OUT transfer, a control request or a tick).
    Nak,
    /// The endpoint halts.
    Stall,
}

/// USB descriptors of a simulated device, as raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct Descriptors {
    /// The 18-byte device descriptor.
    pub device: [u8; 18],
    /// The full configuration descriptor (configuration, interfaces, endpoints,
    /// class-specific descriptors), `wTotalLength` bytes long. One configuration,
    /// value 1.
    pub configuration: Vec<u8>,
    /// String descriptors by index (index 0, the language list, is built by the
    /// engine: US English only).
    pub strings: Vec<(u8, String)>,
}

/// The firmware of one simulated USB device.
///
/// Every method is called from the device's own engine thread, one at a time,
/// so implementations need no locking. Methods may block briefly (the pendrive
/// reads and writes its image file) but must never wait for the host.
pub trait Function: Send + 'static {
    /// The device's descriptors; called once when the device is created.
    fn descriptors(&self) -> Descriptors;

    /// A class or vendor control request (standard requests never reach here,
    /// except SET_INTERFACE through [`Function::set_interface`]).
    /// `data_out` holds the data stage of a host-to-device request; for a
    /// device-to-host request the answer must not exceed `setup.length`.
    fn control(&mut self, setup: &SetupPacket, data_out: &[u8]) -> Result<Vec<u8>, Stall>;

    /// Data the host sends to OUT endpoint `ep` (address without the direction
    /// bit, 1..=15). Bulk and interrupt alike.
    fn data_out(&mut self, ep: u8, data: &[u8]) -> Result<(), Stall>;

    /// The host polls IN endpoint `ep` (address without the direction bit) for
    /// at most `max_len` bytes.
    fn data_in(&mut self, ep: u8, max_len: usize) -> InResponse;

    /// SET_CONFIGURATION: 0 deconfigures, 1 selects the only configuration.
    /// The engine resets all endpoints' halt state around this call.
    fn set_configuration(&mut self, _value: u8) {}

    /// SET_INTERFACE. The default accepts alternate setting 0 only.
    fn set_interface(&mut self, _interface: u8, alt: u8) -> Result<(), Stall> {
        if alt == 0 {
            Ok(())
        } else {
            Err(Stall)
        }
    }

    /// CLEAR_FEATURE(ENDPOINT_HALT) on endpoint address `ep_address` (with
    /// the direction bit). The engine has already cleared its halt flag.
    fn clear_halt(&mut self, _ep_address: u8) {}

    /// A port reset: the device returns to its power-on state (the engine then
    /// behaves as if unconfigured).
    fn reset(&mut self) {}

    /// Called when the deadline last returned by `tick` has passed (and once
    /// right after creation). Returns the next deadline, if the function
    /// wants one: the sensor uses it to produce a reading every second.
    fn tick(&mut self, _now: Instant) -> Option<Instant> {
        None
    }
}
