//! End to end over loopback: one client, one request at a time, against a
//! server in the same process (its own runtime), through the fast path and
//! through gRPC. Client and server share the machine's cores.
//!
//! `cargo bench --bench end_to_end`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redstone::client::{FastClient, RemoteCacheClient, TensorStore};
use redstone::server::{Config, Server};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

const SIZES: [(&str, usize); 4] = [
    ("3KiB", 3 << 10),
    ("1MiB", 1 << 20),
    ("16MiB", 16 << 20),
    ("64MiB", 64 << 20),
];

fn tensor(size: usize) -> Tensor {
    let meta = TensorMeta::new(DType::U8, vec![size as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, vec![7u8; size]).unwrap()
}

fn bench_store<S: TensorStore>(
    c: &mut Criterion,
    name: &str,
    client_rt: &tokio::runtime::Runtime,
    store: S,
) {
    let mut group = c.benchmark_group(format!("e2e/{name}"));
    let n = AtomicU64::new(0);
    for (label, size) in SIZES {
        let t = tensor(size);
        let key = format!("{name}/{label}");
        client_rt
            .block_on(store.put_tensor(&key, t.clone()))
            .unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 16 << 20 {
            group.sample_size(10);
        }
        group.bench_function(BenchmarkId::new("get", label), |b| {
            b.iter_custom(|iters| {
                client_rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        assert!(store.get(&key).await.unwrap().is_some());
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(BenchmarkId::new("put", label), |b| {
            b.iter_custom(|iters| {
                client_rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let k = format!("{key}/{}", n.fetch_add(1, Ordering::Relaxed));
                        store.put_tensor(&k, t.clone()).await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = server_rt.block_on(async {
        let config = Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            fast_addr: "127.0.0.1:0".parse().unwrap(),
            memory_limit: 2 << 30,
            ..Config::default()
        };
        Server::bind(config).await.unwrap().spawn()
    });
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fast = client_rt
        .block_on(FastClient::connect(server.fast_addr()))
        .unwrap();
    bench_store(c, "fast", &client_rt, fast);
    let grpc = client_rt
        .block_on(RemoteCacheClient::connect(server.grpc_addr().to_string()))
        .unwrap();
    bench_store(c, "grpc", &client_rt, grpc);
    server_rt.block_on(server.shutdown()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = end_to_end
}
criterion_main!(benches);
