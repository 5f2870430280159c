//! The fast path's codec, sans I/O: encoding and decoding a GET response
//! head and a PUT request head. Throughput is per frame of the given
//! tensor size (the payload itself is never touched by the codec).
//!
//! `cargo bench --bench codec`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redstone::fast::wire::{
    decode_request, decode_response, encode_frame, Body, Opcode, Prefix, Request, Response,
    WireMeta, FLAG_END, FLAG_RESPONSE, PREFIX_LEN,
};

const SIZES: [(&str, u64); 3] = [("3KiB", 3 << 10), ("1MiB", 1 << 20), ("64MiB", 64 << 20)];

fn meta(size: u64) -> WireMeta {
    WireMeta {
        dtype: 1,
        layout: 1,
        encoding: 0,
        shape: vec![size / 4],
    }
}

fn get_response(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/get_response");
    for (name, size) in SIZES {
        let response = Response::ok(Body::Tensor(meta(size)));
        group.throughput(Throughput::Bytes(size));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                black_box(
                    encode_frame(Opcode::Get, FLAG_RESPONSE | FLAG_END, 7, &response, size)
                        .unwrap(),
                )
            })
        });
        let frame =
            encode_frame(Opcode::Get, FLAG_RESPONSE | FLAG_END, 7, &response, size).unwrap();
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                let prefix = Prefix::parse(black_box(&frame)).unwrap().unwrap();
                black_box(decode_response(&frame[PREFIX_LEN..], prefix.request_id).unwrap())
            })
        });
    }
    group.finish();
}

fn put_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/put_request");
    for (name, size) in SIZES {
        let request = Request::Put {
            key: "embeddings:user123".into(),
            meta: meta(size),
        };
        group.throughput(Throughput::Bytes(size));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(encode_frame(Opcode::Put, 0, 7, &request, size).unwrap()))
        });
        let frame = encode_frame(Opcode::Put, 0, 7, &request, size).unwrap();
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                let prefix = Prefix::parse(black_box(&frame)).unwrap().unwrap();
                black_box(decode_request(&frame[PREFIX_LEN..], prefix.request_id).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = get_response, put_request
}
criterion_main!(benches);
