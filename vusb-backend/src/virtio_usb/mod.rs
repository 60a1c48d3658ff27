//! The virtio-usb device model (`docs/virtio-usb.md`), apart from any vhost
//! plumbing: byte layouts ([`wire`]), descriptor chains ([`chain`]),
//! request validation ([`request`]) and the controller's state
//! ([`controller`]).

pub mod chain;
pub mod controller;
pub mod request;
pub mod wire;

pub use controller::{Controller, Used};
pub use request::Limits;
