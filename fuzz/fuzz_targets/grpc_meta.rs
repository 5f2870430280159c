#![no_main]
//! See `redstone::fuzzing::grpc_meta` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| redstone::fuzzing::grpc_meta(data));
