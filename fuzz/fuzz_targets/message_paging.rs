#![no_main]
//! See `confab::fuzzing::message_paging` for the contract this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::message_paging(data));
