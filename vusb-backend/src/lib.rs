//! vusb-backend: the ISP-side daemon that imports USB/IP devices and presents
//! them to a QEMU guest (vhost-user virtio-usb and usbredir front-ends).
//!
//! Nothing is implemented yet; the crate holds the place the daemon will
//! take in the workspace.
