#![no_main]
//! See `confab::fuzzing::sync_token` for the contract this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::sync_token(data));
