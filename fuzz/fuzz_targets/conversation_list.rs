#![no_main]
//! See `confab::fuzzing::conversation_list` for the contract this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::conversation_list(data));
