#![no_main]
//! See `confab::fuzzing::socket_event` for the contract this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::socket_event(data));
