//! OP_REQ_* / OP_REP_* of the management phase; the first input byte picks
//! the request whose reply is decoded.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The same properties the stable test `tests/roundtrip_random.rs` runs.
#[path = "../../tests/common/property.rs"]
mod property;

fuzz_target!(|data: &[u8]| {
    property::check_op(data);
});
