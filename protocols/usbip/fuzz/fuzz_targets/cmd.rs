//! CMD_SUBMIT / CMD_UNLINK as a server decodes them: whatever decodes must
//! re-encode to the same bytes (padding aside) and decode to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The same properties the stable test `tests/roundtrip_random.rs` runs.
#[path = "../../tests/common/property.rs"]
mod property;

fuzz_target!(|data: &[u8]| {
    property::check_cmd(data);
});
