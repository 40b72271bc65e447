#![no_main]
//! See `confab::fuzzing::import_line` for the contract this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab::fuzzing::import_line(data));
