#![no_main]
//! See `redstone::fuzzing::header` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| redstone::fuzzing::header(data));
