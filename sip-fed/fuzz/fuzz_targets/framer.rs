//! Fuzz the SIP stream framer: arbitrary bytes must never panic, chunking must not change the
//! result, and every parsed message must re-parse from its `to_bytes()` to an equal message.
//! The oracle lives in the crate (`msg::check_framer_invariants`) so the unit tests run it too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fedgate_sip::msg::check_framer_invariants(data);
});
