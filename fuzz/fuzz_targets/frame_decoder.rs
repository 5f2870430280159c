#![no_main]
//! See `redstone::fuzzing::frame_decoder` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| redstone::fuzzing::frame_decoder(data));
