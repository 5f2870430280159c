//! Compression of synthetic tensors that stand for real ones
//! ([`synthetic::Kind`]): shuffle + LZ4 compress and decompress speed per
//! core (throughput in raw bytes), and the ratio each kind reaches
//! (printed before its group).
//!
//! `cargo bench --bench compress`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redstone::tensor::codec;
use redstone::tensor::synthetic::Kind;

const SIZE: usize = 16 << 20;

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("compress");
    group.throughput(Throughput::Bytes(SIZE as u64));
    for kind in Kind::ALL {
        let raw = kind.tensor(SIZE, 1);
        match codec::compress(&raw) {
            Some(packed) => eprintln!(
                "{}: ratio {:.2} ({} of {} bytes)",
                kind.name(),
                SIZE as f64 / packed.data().len() as f64,
                packed.data().len(),
                SIZE
            ),
            None => eprintln!("{}: does not compress by {}", kind.name(), codec::MIN_RATIO),
        }
        group.bench_with_input(BenchmarkId::from_parameter(kind.name()), &raw, |b, raw| {
            b.iter(|| codec::compress(black_box(raw)))
        });
    }
    group.finish();
}

fn decompress(c: &mut Criterion) {
    let mut group = c.benchmark_group("decompress");
    group.throughput(Throughput::Bytes(SIZE as u64));
    for kind in Kind::ALL {
        let raw = kind.tensor(SIZE, 1);
        let Some(packed) = codec::compress(&raw) else {
            continue;
        };
        // Into a buffer reused across iterations, as `get_into` decodes.
        let mut out = vec![0u8; SIZE];
        group.bench_with_input(
            BenchmarkId::from_parameter(kind.name()),
            &packed,
            |b, packed| {
                b.iter(|| codec::decode_into(packed.meta(), black_box(packed.data()), &mut out))
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = compress, decompress
}
criterion_main!(benches);
