//! The measurements of `vusb-probe`, the tool that runs inside the test
//! guests at both ends of a USB tunnel: disk throughput, serial and HID
//! round trips, and a periodic HID report stream, and a process that only
//! wakes up. Each one returns a result that serialises to one JSON object.

pub mod aligned;
pub mod disk;
pub mod disk_pattern;
pub mod echo;
pub mod hid;
pub mod ping;
pub mod serial;
pub mod sink;
pub mod stream;
pub mod sys;
pub mod ticker;
pub mod tty;

/// Exit status of a run that measured and printed its result, but whose
/// check failed (data read back wrong, no echo at all, no report at all).
/// Errors that stop a run before it has a result exit with 1, usage
/// errors with 2.
pub const EXIT_CHECK_FAILED: i32 = 3;
