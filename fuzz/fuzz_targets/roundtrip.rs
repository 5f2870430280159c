#![no_main]
//! See `redstone::fuzzing::roundtrip` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| redstone::fuzzing::roundtrip(data));
