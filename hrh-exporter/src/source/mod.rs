//! Where exported devices come from.

pub mod libusb;
pub mod simulated;
