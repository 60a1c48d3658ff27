//! Any packet, decoded under the capabilities and from the sender the first
//! two input bytes pick (see `check_packet`): whatever decodes must
//! re-encode to the same bytes and decode to the same packet.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The same properties the stable test `tests/roundtrip_random.rs` runs.
#[path = "../../tests/common/property.rs"]
mod property;

fuzz_target!(|data: &[u8]| {
    property::check_packet(data);
});
