#![no_main]
//! See `redstone::fuzzing::packed` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| redstone::fuzzing::packed(data));
