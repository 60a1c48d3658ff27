//! Simulated USB dongles for demos, tests and benchmarks.
//!
//! Each dongle is a [`Function`] (its firmware: descriptors and endpoint
//! behaviour) run by a [`SimDevice`] engine thread that plays the USB device
//! controller. Nothing here knows about USB/IP or sockets.

pub mod descriptor;
pub mod engine;
pub mod function;
pub mod loopback;
pub mod pendrive;
pub mod sensor;

pub use engine::{Completion, CompletionSink, SimDevice, Transfer, TransferStatus};
pub use function::{Descriptors, Function, InResponse, Stall};
