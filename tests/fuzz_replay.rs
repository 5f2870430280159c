//! Replays every saved fuzz input — the seed corpora and any crash
//! artifacts kept as regressions — through the fuzz targets' entry points,
//! so CI covers them on a stable toolchain without libFuzzer.

use std::fs;
use std::path::Path;

use redstone::fuzzing;

/// A fuzz target's entry point.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 7] = [
    ("frame_decoder", fuzzing::frame_decoder),
    ("header", fuzzing::header),
    ("connection", fuzzing::connection),
    ("grpc_meta", fuzzing::grpc_meta),
    ("roundtrip", fuzzing::roundtrip),
    ("stalled_connection", fuzzing::stalled_connection),
    ("packed", fuzzing::packed),
];

fn replay(kind: &str, target: &str, run: Target) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_file() {
            let input = fs::read(&path).unwrap();
            eprintln!("replaying {}", path.display());
            run(&input);
            count += 1;
        }
    }
    count
}

#[test]
fn every_corpus_and_regression_input_passes() {
    for (target, run) in TARGETS {
        let seeds = replay("corpus", target, run);
        assert!(
            seeds > 0,
            "fuzz/corpus/{target} has no inputs: run `cargo run --example fuzz_seeds`"
        );
        replay("artifacts", target, run);
        replay("regressions", target, run);
    }
}

/// Inputs that once broke an entry point, kept inline as well.
#[test]
fn known_tricky_inputs() {
    for (_, run) in TARGETS {
        run(&[]);
        run(&[0xff; 64]);
        run(b"RSTN\x01\x03\x00\x00");
    }
}
