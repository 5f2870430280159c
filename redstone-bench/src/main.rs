//! `redstone-bench`: a closed-loop load generator for Redstone's fast path,
//! its gRPC API, and Redis, through one harness.
//!
//! Every figure in the README comes from this tool; see `--help`.

mod args;
mod conn;
mod oneshot;
mod resp;
mod soak;
mod workers;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;

use args::{Args, Op, Target};
use conn::{cluster_from, prefill, Conn};
use redstone::client::{ClientError, FastClient, FastClientOptions, L1Options, RemoteCacheClient};
use redstone::tensor::codec::Compression;
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use workers::{batch_worker, redis_worker, store_worker, Ctx, Tally};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value stored under key number `i`: a shared base buffer with the
/// key's number stamped in front, so a value swapped between keys fails
/// verification.
fn value_for(base: &[u8], i: u64) -> Bytes {
    let mut v = base.to_vec();
    let stamp = i.to_le_bytes();
    let n = stamp.len().min(v.len());
    v[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(v)
}

/// Keys name their value size, so runs of different sizes never read each
/// other's values.
fn key_for(size: usize, i: u64) -> String {
    format!("bench:{size}:{i}")
}

async fn run(mut args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // The local door is the fast path at a `unix:` address.
    if args.target == Target::Uds {
        let path = args
            .addr
            .take()
            .unwrap_or_else(|| "/tmp/redstone.sock".into());
        args.addr = Some(format!("unix:{path}"));
        if args.stall > 0 {
            return Err("--stall drives the TCP fast path".into());
        }
    }
    let width = args.data.dtype().width() as u64;
    let meta = TensorMeta::new(
        args.data.dtype(),
        vec![args.size / width],
        StorageLayout::RowMajor,
    )?;
    let size = usize::try_from(meta.byte_size())?;
    if args.target == Target::Redis && (args.compress != Compression::None || args.l1.is_some()) {
        return Err("--compress and --l1 drive Redstone's fast path or a cluster".into());
    }
    if args.target == Target::Grpc && args.nodes.is_none() && args.compress != Compression::None {
        return Err("the gRPC API has no compression: use --target fast".into());
    }
    let fast_options = FastClientOptions {
        l1: args.l1.map(L1Options::new),
        keep_mapped: args.keep_mapped,
        ..FastClientOptions::default()
    };
    let addr = args.addr.clone().unwrap_or_else(|| {
        let port = match args.target {
            Target::Fast | Target::Uds => 50052,
            Target::Grpc => 50051,
            Target::Redis => 6379,
        };
        format!("127.0.0.1:{port}")
    });
    let keys = args
        .keys
        .unwrap_or_else(|| ((512u64 << 20) / args.size.max(1)).clamp(1, 1000));
    let concurrency = args.concurrency.max(1);
    let pipeline = args.pipeline.max(1);
    let connections = match args.target {
        Target::Redis => concurrency,
        _ => args
            .connections
            .unwrap_or(concurrency)
            .clamp(1, concurrency),
    };
    let base: Vec<u8> = args.data.tensor(size, 1).data().to_vec();
    let values: Arc<Vec<Bytes>> = Arc::new(if args.op == Op::Put && !args.verify {
        Vec::new()
    } else {
        (0..keys).map(|i| value_for(&base, i)).collect()
    });
    let base = Bytes::from(base);
    eprintln!(
        "{:?} {:?} size={size} keys={keys} concurrency={concurrency} connections={connections} pipeline={pipeline} duration={}s data={} compress={:?} l1={:?}",
        args.target, args.op, args.duration, args.data.name(), args.compress, args.l1
    );

    let run_id = std::process::id();
    let make_ctx = |w: usize| Ctx {
        op: args.op,
        verify: args.verify,
        into: args.into,
        size,
        meta: meta.clone(),
        compression: args.compress,
        keys,
        values: Arc::clone(&values),
        base: base.clone(),
        prefix: format!("bench:w{run_id}:{w}:"),
        allow_misses: args.allow_misses,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    // Asked for the server's memory_used (and its L1's counters) at the end.
    let mut first: Option<Conn> = None;
    let cluster = match &args.nodes {
        Some(nodes) => Some(cluster_from(&args, nodes)?),
        None => None,
    };
    if matches!(args.op, Op::Fill | Op::Check | Op::Scan) {
        let conn = match (&cluster, args.target) {
            (Some(c), _) => Conn::Cluster(c.clone()),
            (None, Target::Fast | Target::Uds) => {
                Conn::Fast(FastClient::connect(addr.as_str()).await?)
            }
            (None, Target::Grpc) => Conn::Grpc(RemoteCacheClient::connect(addr.as_str()).await?),
            (None, Target::Redis) => {
                return Err(
                    "fill, check and scan drive Redstone (fast, grpc or --nodes), not Redis".into(),
                )
            }
        };
        return oneshot::run(&args, conn, size, concurrency).await;
    }
    match args.target {
        _ if cluster.is_some() || args.target != Target::Redis => {
            let mut conns = Vec::new();
            for _ in 0..connections {
                conns.push(match (&cluster, args.target) {
                    (Some(c), _) => Conn::Cluster(c.clone()),
                    (None, Target::Fast | Target::Uds) => Conn::Fast(
                        FastClient::connect_with(addr.as_str(), fast_options.clone()).await?,
                    ),
                    (None, _) => Conn::Grpc(RemoteCacheClient::connect(addr.as_str()).await?),
                });
            }
            if args.op != Op::Put {
                prefill(&conns[0], &values, &meta, args.compress).await?;
            }
            first = Some(conns[0].clone());
            // On the fast path a pipelined read is a batch: one GET_MANY of
            // `pipeline` keys per worker, like Redis' pipelined GETs.
            let batch = matches!(args.target, Target::Fast | Target::Uds)
                && args.op == Op::Get
                && pipeline > 1
                && !args.into;
            let tasks = if batch {
                concurrency
            } else {
                concurrency * pipeline
            };
            for w in 0..tasks {
                let conn = conns[w % connections].clone();
                let ctx = make_ctx(w);
                let (stop, measuring) = (Arc::clone(&stop), Arc::clone(&measuring));
                workers.push(match (batch, conn) {
                    (true, Conn::Fast(client)) => tokio::spawn(async move {
                        batch_worker(client, ctx, pipeline, w as u64, stop, measuring).await
                    }),
                    (_, conn) => tokio::spawn(async move {
                        store_worker(conn, ctx, w as u64, stop, measuring).await
                    }),
                });
            }
        }
        _ => {
            if args.op != Op::Put {
                let mut conn = resp::Resp::connect(&addr).await?;
                for (i, v) in values.iter().enumerate() {
                    let mut out = Vec::new();
                    resp::Resp::set(&mut out, &key_for(size, i as u64), v);
                    conn.send(&mut out).await?;
                    conn.read().await?;
                }
            }
            for w in 0..concurrency {
                let conn = resp::Resp::connect(&addr).await?;
                let ctx = make_ctx(w);
                let (stop, measuring) = (Arc::clone(&stop), Arc::clone(&measuring));
                workers.push(tokio::spawn(async move {
                    redis_worker(conn, ctx, pipeline, w as u64, stop, measuring).await
                }));
            }
        }
    }

    let background = match (args.background_get, &first) {
        (None, _) => None,
        (Some(bytes), Some(Conn::Fast(client))) => Some(
            background_gets(
                client.clone(),
                bytes,
                Arc::clone(&stop),
                Arc::clone(&measuring),
            )
            .await?,
        ),
        (Some(_), _) => return Err("--background-get drives the fast path's gets and puts".into()),
    };
    let stalled = match (args.stall, args.target) {
        (0, _) => Vec::new(),
        (n, Target::Fast) => soak::stallers(&addr, n, keys, size).await?,
        _ => return Err("--stall drives the fast path".into()),
    };
    let sampler = match (args.server_pid, args.target) {
        (None, _) | (_, Target::Redis) => None,
        (pid, Target::Fast | Target::Uds) => {
            let conn = Conn::Fast(FastClient::connect(addr.as_str()).await?);
            Some(soak::sample(pid, conn, Arc::clone(&stop)))
        }
        (pid, Target::Grpc) => {
            let conn = Conn::Grpc(RemoteCacheClient::connect(addr.as_str()).await?);
            Some(soak::sample(pid, conn, Arc::clone(&stop)))
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();

    let peaks = match sampler {
        Some(sampler) => Some(sampler.await?),
        None => None,
    };
    drop(stalled);
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.latencies_ns.extend(t.latencies_ns);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let shape = Shape {
        size,
        concurrency,
        connections,
        pipeline,
    };
    let mut extra = String::new();
    if let Some(background) = background {
        let bytes = background.await??;
        let mb_per_sec = bytes as f64 / elapsed / 1e6;
        eprintln!("background gets: {mb_per_sec:.1} MB/s");
        extra += &format!(",\"background_mb_per_sec\":{mb_per_sec:.2}");
    }
    if let Some(conn) = &first {
        // What the run's values hold in the server(s): `memory_used`.
        let stats = conn.stats().await?;
        extra += &format!(",\"stored_bytes\":{}", stats.memory_used);
        if let Some(l1) = conn.l1_stats() {
            extra += &format!(
                ",\"l1_hits\":{},\"l1_misses\":{},\"l1_bytes\":{},\"l1_evictions\":{}",
                l1.hits, l1.misses, l1.bytes, l1.evictions
            );
            eprintln!(
                "L1 (first connection's): {} hits, {} misses, {} bytes, {} evictions",
                l1.hits, l1.misses, l1.bytes, l1.evictions
            );
        }
    }
    report(&args, &shape, elapsed, all, peaks, &extra);
    Ok(())
}

/// Stores one tensor of `bytes` and loops plain gets of it on `client`
/// until `stop`; the task returns the bytes got while `measuring`.
async fn background_gets(
    client: FastClient,
    bytes: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<Result<u64, ClientError>>, ClientError> {
    let key = format!("bench:background:{bytes}");
    let meta = TensorMeta::new(DType::U8, vec![bytes], StorageLayout::RowMajor)?;
    let data = Bytes::from(vec![0x5Au8; bytes as usize]);
    match client.put(&key, meta, data).await {
        Ok(()) | Err(ClientError::AlreadyExists(_)) => {}
        Err(e) => return Err(e),
    }
    Ok(tokio::spawn(async move {
        let mut got = 0;
        while !stop.load(Ordering::Relaxed) {
            let tensor = client.get(&key).await?;
            if measuring.load(Ordering::Relaxed) {
                got += tensor.map_or(0, |t| t.data().len() as u64);
            }
        }
        Ok(got)
    }))
}

/// Latency percentiles in µs: p50, p99, p999.
fn percentiles(latencies_ns: &mut [u32]) -> (f64, f64, f64) {
    latencies_ns.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies_ns.is_empty() {
            return 0.0;
        }
        let idx =
            ((p * latencies_ns.len() as f64).ceil() as usize).clamp(1, latencies_ns.len()) - 1;
        latencies_ns[idx] as f64 / 1000.0
    };
    (pct(0.50), pct(0.99), pct(0.999))
}

/// What a run was: its value size and parallelism.
struct Shape {
    size: usize,
    concurrency: usize,
    connections: usize,
    pipeline: usize,
}

fn report(
    args: &Args,
    shape: &Shape,
    elapsed: f64,
    mut all: Tally,
    peaks: Option<soak::Peaks>,
    extra: &str,
) {
    let &Shape {
        size,
        concurrency,
        connections,
        pipeline,
    } = shape;
    let ops = all.latencies_ns.len() as f64;
    let (p50, p99, p999) = percentiles(&mut all.latencies_ns);
    let ops_per_sec = ops / elapsed;
    let mb_per_sec = ops_per_sec * size as f64 / 1e6;
    let target = format!("{:?}", args.target).to_lowercase();
    let op = format!("{:?}", args.op).to_lowercase();
    println!(
        "{target} {op} size={size} concurrency={concurrency} connections={connections} pipeline={pipeline}: \
         {ops_per_sec:.0} ops/s, {mb_per_sec:.1} MB/s, p50 {p50:.1} us, p99 {p99:.1} us, p999 {p999:.1} us, errors {}",
        all.errors
    );
    if let Some(e) = &all.first_error {
        eprintln!("first error: {e}");
    }
    let soak = peaks.map_or(String::new(), |p| {
        format!(
            ",\"rss_max_bytes\":{},\"memory_used_max\":{},\"memory_limit\":{}",
            p.rss_bytes, p.memory_used, p.memory_limit
        )
    });
    if args.json {
        println!(
            "{{\"target\":\"{target}\",\"op\":\"{op}\",\"size\":{size},\"concurrency\":{concurrency},\
             \"connections\":{connections},\"pipeline\":{pipeline},\"duration_s\":{elapsed:.3},\
             \"ops\":{ops},\"ops_per_sec\":{ops_per_sec:.1},\"mb_per_sec\":{mb_per_sec:.2},\
             \"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\"p999_us\":{p999:.1},\"errors\":{}{soak}\
             ,\"data\":\"{}\",\"compress\":\"{}\"{extra}}}",
            all.errors,
            args.data.name(),
            if args.compress == Compression::None { "none" } else { "lz4" },
        );
    }
}
