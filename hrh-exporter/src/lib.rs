//! hrh-exporter: a USB/IP server that exports the Home Radio Head's dongles,
//! real or simulated, to stock USB/IP clients and to vusb-backend.

pub mod config;
pub mod connection;
pub mod device;
pub mod registry;
pub mod server;
pub mod session;
pub mod source;
