//! `vusb-keeper`: holds QEMU's vhost-user connection while the back-end
//! behind it is restarted.
//!
//! QEMU's generic vhost-user device cannot reconnect to a back-end: once
//! its connection drops, the device is dead, and the guest resetting it
//! aborts QEMU. The keeper sits between the two. QEMU connects to the
//! keeper, the keeper to vusb-backend, and every message passes through;
//! the data path (guest memory, kick and call eventfds) goes straight from
//! QEMU to the back-end. When the back-end goes away the keeper connects to
//! its successor and replays the front-end's setup ([`journal`]); the new
//! back-end finds the rings further on than it was told (their used index
//! in guest memory) and asks the driver to reset the device
//! (docs/virtio-usb.md §7.1).
//!
//! * [`message`]: the vhost-user framing, no I/O;
//! * [`journal`]: the setup in force, no I/O;
//! * [`proxy`]: the sockets.

pub mod journal;
pub mod message;
pub mod proxy;
