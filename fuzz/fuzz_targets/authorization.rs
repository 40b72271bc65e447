#![no_main]
//! See `confab::fuzzing::authorization` for the contract this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::authorization(data));
