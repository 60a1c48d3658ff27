//! RET_SUBMIT / RET_UNLINK as a client decodes them. The first input byte
//! plays the client's memory of its requests (direction, unknown seqnum, and
//! optionally the whole request from the next 8 bytes), see `check_ret`.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The same properties the stable test `tests/roundtrip_random.rs` runs.
#[path = "../../tests/common/property.rs"]
mod property;

fuzz_target!(|data: &[u8]| {
    property::check_ret(data);
});
