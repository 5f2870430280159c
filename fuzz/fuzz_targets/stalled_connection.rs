#![no_main]
//! See `redstone::fuzzing::stalled_connection` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| redstone::fuzzing::stalled_connection(data));
