//! The engine in-process: put and get latency by size, get throughput on
//! one and two threads, and put throughput while evicting; the last three
//! also over a disk tier (`…/disk`: the same RAM tier, its evictions
//! written to a directory under the system's temp dir).
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redstone::disk::{DiskConfig, DiskTier};
use redstone::engine::{Engine, MAX_TOMBSTONES, TOMBSTONE_TTL};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

fn tensor(size: usize) -> Tensor {
    let meta = TensorMeta::new(DType::U8, vec![size as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, Bytes::from(vec![1u8; size])).unwrap()
}

/// Put: a fresh key each time, payload shared (the engine never copies a
/// payload, so this is the cost of indexing, accounting and eviction).
/// The budget holds 64 tensors, so the steady state evicts one per put.
fn put_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/put");
    for (name, size) in [
        ("3KiB", 3 << 10),
        ("50KiB", 50 << 10),
        ("1MiB", 1 << 20),
        ("10MiB", 10 << 20),
    ] {
        let t = tensor(size);
        let engine = Engine::new(64 * Engine::charge("k-00000000", t.meta()));
        let n = AtomicU64::new(0);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let key = format!("k-{:08}", n.fetch_add(1, Ordering::Relaxed));
                engine.put(&key, t.clone()).unwrap();
            })
        });
    }
    group.finish();
}

/// An engine with a RAM tier of `budget` bytes, over a disk tier if `disk`.
fn engine(budget: u64, disk: bool) -> Engine {
    if !disk {
        return Engine::new(budget);
    }
    let dir = std::env::temp_dir().join(format!("redstone-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = DiskConfig {
        queue: 16 << 20,
        ..DiskConfig::new(&dir, 8 << 30)
    };
    let tier = DiskTier::open(&cfg).expect("a disk tier in the temp dir");
    Engine::with_disk(budget + cfg.queue, TOMBSTONE_TTL, MAX_TOMBSTONES, tier)
}

fn filled_over(size: usize, keys: usize, disk: bool) -> (Engine, Vec<String>) {
    let t = tensor(size);
    let budget = (keys as u64 + 1) * Engine::charge("key-0000000", t.meta());
    let engine = engine(budget, disk);
    let names: Vec<String> = (0..keys).map(|i| format!("key-{i:07}")).collect();
    for k in &names {
        engine.put(k, t.clone()).unwrap();
    }
    (engine, names)
}

fn get_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/get");
    for (name, size, disk) in [
        ("3KiB", 3 << 10, false),
        ("1MiB", 1 << 20, false),
        ("3KiB/disk", 3 << 10, true),
    ] {
        let (engine, keys) = filled_over(size, 1000, disk);
        let mut i = 0;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(engine.get(&keys[i]).unwrap());
            })
        });
    }
    group.finish();
}

/// Gets per second from one thread and from two: the LRU bookkeeping on a
/// get must not serialize readers. Each thread reads its own sequence of
/// 10,000 keys in a 3 KiB cache of 100,000.
fn get_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/get_throughput");
    for (threads, disk) in [(1usize, false), (2, false), (2, true)] {
        let (engine, keys) = filled_over(3 << 10, 100_000, disk);
        let name = if disk { "threads/disk" } else { "threads" };
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(BenchmarkId::new(name, threads), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (engine, keys) = (&engine, &keys);
                        s.spawn(move || {
                            let mut i = t * 37_337;
                            for _ in 0..iters {
                                i = (i + 7919) % keys.len();
                                black_box(engine.get(&keys[i]).unwrap());
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// Puts into a full cache: every put evicts (over a disk tier: and hands
/// the evicted tensor to its writer, or drops it when the queue is full).
fn put_while_evicting(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine/put_full");
    for (name, disk) in [("3KiB", false), ("3KiB/disk", true)] {
        let (engine, _) = filled_over(3 << 10, 10_000, disk);
        let t = tensor(3 << 10);
        let n = AtomicU64::new(0);
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = format!("new-{:08}", n.fetch_add(1, Ordering::Relaxed));
                engine.put(&key, t.clone()).unwrap();
            })
        });
        assert!(engine.stats().evictions > 0);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = put_latency, get_latency, get_throughput, put_while_evicting
}
criterion_main!(benches);
