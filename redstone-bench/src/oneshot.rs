//! `--op fill` and `--op check`: one pass over keys `PREFIX:0 … PREFIX:K-1`,
//! to load a deployment and later verify it (after a restart, a failover,
//! an upgrade). The content of each key is derived from the key itself, so
//! `check` needs nothing but the same arguments. `--op scan` reads the same
//! keys once each and checks only their length.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use redstone::client::ClientError;
use redstone::cluster::placement::score;
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

use crate::args::{Args, Op};
use crate::conn::Conn;
use crate::percentiles;

/// The bytes stored under `key`: a xorshift stream seeded by the key.
pub fn content(key: &str, size: usize) -> Bytes {
    let mut x = score("redstone-bench", key) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

#[derive(Default)]
struct Counts {
    written: AtomicU64,
    found: AtomicU64,
    missing: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(
    args: &Args,
    conn: Conn,
    size: usize,
    concurrency: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let keys = args.keys.unwrap_or(1000);
    let meta = TensorMeta::new(DType::U8, vec![size as u64], StorageLayout::RowMajor)?;
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency as u64 {
        let (conn, meta, counts) = (conn.clone(), meta.clone(), Arc::clone(&counts));
        let (prefix, op) = (args.key_prefix.clone(), args.op);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut first_error = None;
            let mut i = w;
            while i < keys {
                let key = format!("{prefix}:{i}");
                let expected = match op {
                    Op::Scan => Bytes::new(),
                    _ => content(&key, size),
                };
                let t0 = Instant::now();
                let outcome = if op == Op::Fill {
                    let tensor = Tensor::new(meta.clone(), expected).expect("sized to meta");
                    match conn.put(&key, tensor).await {
                        // A key already there counts as written; `check`
                        // tells whether it holds the right bytes.
                        Ok(()) | Err(ClientError::AlreadyExists(_)) => Ok(&counts.written),
                        Err(e) => Err(e),
                    }
                } else {
                    match conn.get(&key).await {
                        Ok(Some(t)) if op == Op::Scan && t.meta() == &meta => Ok(&counts.found),
                        Ok(Some(t)) if t.data() == &expected && t.meta() == &meta => {
                            Ok(&counts.found)
                        }
                        Ok(Some(_)) => Ok(&counts.corrupt),
                        Ok(None) => Ok(&counts.missing),
                        Err(e) => Err(e),
                    }
                };
                match outcome {
                    Ok(counter) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        latencies.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                    }
                    Err(e) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("{key}: {e}"));
                    }
                }
                i += concurrency as u64;
            }
            (latencies, first_error)
        }));
    }
    let mut latencies = Vec::new();
    let mut first_error = None;
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        first_error = first_error.or(e);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (written, found, missing, corrupt, errors) = (
        get(&counts.written),
        get(&counts.found),
        get(&counts.missing),
        get(&counts.corrupt),
        get(&counts.errors),
    );
    let ops = latencies.len() as f64;
    let (p50, p99, p999) = percentiles(&mut latencies);
    let ops_per_sec = ops / elapsed;
    let mb_per_sec = ops_per_sec * size as f64 / 1e6;
    let op = match args.op {
        Op::Fill => "fill",
        Op::Scan => "scan",
        _ => "check",
    };
    // The target's counters after the pass (summed over a cluster's nodes).
    let server = match conn.stats().await {
        Ok(s) => format!(
            ",\"entries\":{},\"memory_used\":{},\"memory_limit\":{},\"evictions\":{}",
            s.entries, s.memory_used, s.memory_limit, s.evictions
        ),
        Err(_) => String::new(),
    };
    println!(
        "{op} {keys} keys of {size} bytes: written {written}, found {found}, missing {missing}, corrupt {corrupt}, \
         errors {errors}; {ops_per_sec:.0} ops/s, {mb_per_sec:.1} MB/s, p50 {p50:.1} us, p99 {p99:.1} us"
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    if args.json {
        println!(
            "{{\"op\":\"{op}\",\"keys\":{keys},\"size\":{size},\"written\":{written},\"found\":{found},\
             \"missing\":{missing},\"corrupt\":{corrupt},\"errors\":{errors},\"duration_s\":{elapsed:.3},\
             \"ops_per_sec\":{ops_per_sec:.1},\"mb_per_sec\":{mb_per_sec:.2},\"p50_us\":{p50:.1},\
             \"p99_us\":{p99:.1},\"p999_us\":{p999:.1}{server}}}"
        );
    }
    if errors > 0 || corrupt > 0 || (op == "check" && missing > 0) {
        return Err(format!("{op} found problems").into());
    }
    Ok(())
}
