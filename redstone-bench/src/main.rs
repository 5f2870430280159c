//! `redstone-bench`: a closed-loop load generator for Redstone's fast path,
//! its gRPC API, and Redis, through one harness.
//!
//! Every figure in the README comes from this tool; see `--help`.

mod oneshot;
mod resp;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use redstone::client::{ClientError, FastClient, RemoteCacheClient, TensorStore};
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::size::parse_size;
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// Redstone's fast path (binary frames over TCP; `tcp` is the old
    /// name).
    #[value(alias = "tcp")]
    Fast,
    /// Redstone's gRPC API.
    Grpc,
    /// A Redis server (SET / GET).
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    /// Reads of keys written before the run.
    Get,
    /// Writes of fresh keys (the cache evicts as it fills).
    Put,
    /// 80% gets, 20% puts.
    Mixed,
    /// One pass: write keys 0..K once each, content derived from the key.
    Fill,
    /// One pass: read keys 0..K once each and verify them against `fill`.
    Check,
}

/// Closed-loop load generator: N workers, each with D requests in flight,
/// for a fixed duration; prints throughput and latency percentiles.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "fast")]
    target: Target,
    /// The server's address. Default: 127.0.0.1 and 50052 (fast), 50051
    /// (grpc) or 6379 (redis).
    #[arg(long)]
    addr: Option<String>,
    /// The operation.
    #[arg(long, value_enum, default_value = "get")]
    op: Op,
    /// Value size: bytes or a size such as 3KiB, 1MiB.
    #[arg(long, default_value = "3KiB", value_parser = parse_size)]
    size: u64,
    /// Closed-loop workers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Connections the workers share (Redis: one per worker, always).
    /// Default: one per worker.
    #[arg(long)]
    connections: Option<usize>,
    /// Requests each worker keeps in flight. Redis: that many commands per
    /// write. fast get: one GET_MANY of that many keys. Otherwise: that
    /// many concurrent requests per worker.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Seconds to measure, after a one-second warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Distinct keys read. Default: as many as fit in 512 MiB, at most 1000.
    #[arg(long)]
    keys: Option<u64>,
    /// Check every value read byte for byte; mismatches count as errors.
    #[arg(long)]
    verify: bool,
    /// fast only: read into a buffer each worker reuses
    /// (`FastClient::get_into`) instead of a fresh allocation per get.
    #[arg(long)]
    into: bool,
    /// End with one line of JSON.
    #[arg(long)]
    json: bool,
    /// Cluster mode: the nodes' fast-path addresses, comma-separated
    /// (`a:50052,b:50052,c:50052`), or the path of a cluster TOML file.
    #[arg(long)]
    nodes: Option<String>,
    /// Cluster mode: copies of each tensor (default min(3, nodes)).
    #[arg(long)]
    replicas: Option<usize>,
    /// Cluster mode: replicas that must acknowledge a put (default R).
    #[arg(long)]
    write_quorum: Option<usize>,
    /// fill/check: keys are PREFIX:0 … PREFIX:K-1.
    #[arg(long, default_value = "bench")]
    key_prefix: String,
}

/// One connection to the target.
#[derive(Clone)]
enum Conn {
    Fast(FastClient),
    Grpc(RemoteCacheClient),
    Cluster(ClusterClient),
}

/// The cluster client described by `--nodes` (a list or a TOML file),
/// `--replicas` and `--write-quorum`.
fn cluster_from(args: &Args, nodes: &str) -> Result<ClusterClient, Box<dyn std::error::Error>> {
    let mut config = if std::path::Path::new(nodes).is_file() {
        ClusterConfig::load(std::path::Path::new(nodes))?
    } else {
        ClusterConfig::new(ClusterConfig::parse_nodes(nodes)?)
    };
    if let Some(r) = args.replicas {
        config.replicas = r;
        config.write_quorum = r;
    }
    if let Some(w) = args.write_quorum {
        config.write_quorum = w;
    }
    Ok(ClusterClient::new(config)?)
}

/// What a worker measured.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

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

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let size = usize::try_from(args.size)?;
    let addr = args.addr.clone().unwrap_or_else(|| {
        let port = match args.target {
            Target::Fast => 50052,
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
    let base: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect();
    let values: Arc<Vec<Bytes>> = Arc::new(if args.op == Op::Put && !args.verify {
        Vec::new()
    } else {
        (0..keys).map(|i| value_for(&base, i)).collect()
    });
    let base = Bytes::from(base);
    eprintln!(
        "{:?} {:?} size={size} keys={keys} concurrency={concurrency} connections={connections} pipeline={pipeline} duration={}s",
        args.target, args.op, args.duration
    );

    let run_id = std::process::id();
    let make_ctx = |w: usize| Ctx {
        op: args.op,
        verify: args.verify,
        into: args.into,
        size,
        keys,
        values: Arc::clone(&values),
        base: base.clone(),
        prefix: format!("bench:w{run_id}:{w}:"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let cluster = match &args.nodes {
        Some(nodes) => Some(cluster_from(&args, nodes)?),
        None => None,
    };
    if matches!(args.op, Op::Fill | Op::Check) {
        let conn = match (&cluster, args.target) {
            (Some(c), _) => Conn::Cluster(c.clone()),
            (None, Target::Fast) => Conn::Fast(FastClient::connect(addr.as_str()).await?),
            (None, Target::Grpc) => Conn::Grpc(RemoteCacheClient::connect(addr.as_str()).await?),
            (None, Target::Redis) => {
                return Err(
                    "fill and check drive Redstone (fast, grpc or --nodes), not Redis".into(),
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
                    (None, Target::Fast) => Conn::Fast(FastClient::connect(addr.as_str()).await?),
                    (None, _) => Conn::Grpc(RemoteCacheClient::connect(addr.as_str()).await?),
                });
            }
            if args.op != Op::Put {
                prefill(&conns[0], &values, size).await?;
            }
            // On the fast path a pipelined read is a batch: one GET_MANY of
            // `pipeline` keys per worker, like Redis' pipelined GETs.
            let batch =
                args.target == Target::Fast && args.op == Op::Get && pipeline > 1 && !args.into;
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

    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();

    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.latencies_ns.extend(t.latencies_ns);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    report(
        &args,
        size,
        concurrency,
        connections,
        pipeline,
        elapsed,
        all,
    );
    Ok(())
}

/// Writes every key read by the run, ignoring keys already there.
async fn prefill(conn: &Conn, values: &[Bytes], size: usize) -> Result<(), ClientError> {
    let meta = TensorMeta::new(DType::U8, vec![size as u64], StorageLayout::RowMajor)?;
    for (i, v) in values.iter().enumerate() {
        let tensor = Tensor::new(meta.clone(), v.clone())?;
        match conn.put(&key_for(size, i as u64), tensor).await {
            Ok(()) | Err(ClientError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Conn {
    async fn put(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        match self {
            Conn::Fast(c) => TensorStore::put_tensor(c, key, tensor).await,
            Conn::Grpc(c) => TensorStore::put_tensor(c, key, tensor).await,
            Conn::Cluster(c) => TensorStore::put_tensor(c, key, tensor).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        match self {
            Conn::Fast(c) => TensorStore::get(c, key).await,
            Conn::Grpc(c) => TensorStore::get(c, key).await,
            Conn::Cluster(c) => TensorStore::get(c, key).await,
        }
    }

    async fn stats(&self) -> Result<redstone::stats::Stats, ClientError> {
        match self {
            Conn::Fast(c) => TensorStore::stats(c).await,
            Conn::Grpc(c) => TensorStore::stats(c).await,
            Conn::Cluster(c) => TensorStore::stats(c).await,
        }
    }

    /// Reads into `buf` where the transport can (fast), else gets and copies.
    async fn get_into(&self, key: &str, buf: &mut [u8]) -> Result<bool, ClientError> {
        match self {
            Conn::Fast(c) => Ok(c.get_into(key, buf).await?.is_some()),
            Conn::Grpc(_) | Conn::Cluster(_) => match self.get(key).await? {
                Some(t) if t.data().len() == buf.len() => {
                    buf.copy_from_slice(t.data());
                    Ok(true)
                }
                Some(_) => Err(ClientError::Protocol("size differs".into())),
                None => Ok(false),
            },
        }
    }
}

/// What every worker needs to know.
struct Ctx {
    op: Op,
    verify: bool,
    into: bool,
    size: usize,
    keys: u64,
    values: Arc<Vec<Bytes>>,
    base: Bytes,
    /// Keys this worker puts start with this, so workers never collide.
    prefix: String,
}

/// A tiny xorshift, so key choice costs nothing measurable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Ctx {
    /// Judges a value read for key `i`: missing is an error, and so is a
    /// wrong value when verifying.
    fn check_read(&self, i: u64, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) if self.verify && v != &self.values[i as usize][..] => {
                Err(format!("key {i}: value differs"))
            }
            Some(_) => Ok(()),
            None => Err(format!("key {i}: missing (evicted? use fewer --keys)")),
        }
    }

    /// Whether the next operation is a put.
    fn is_put(&self, rng: &mut Rng) -> bool {
        match self.op {
            Op::Get => false,
            Op::Put => true,
            Op::Mixed => rng.next().is_multiple_of(5),
            Op::Fill | Op::Check => unreachable!("one-shot operations have their own loop"),
        }
    }
}

async fn store_worker(
    conn: Conn,
    ctx: Ctx,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let meta = TensorMeta::new(DType::U8, vec![ctx.size as u64], StorageLayout::RowMajor)
        .expect("u8 vector meta");
    let mut seq = 0u64;
    let mut buf = if ctx.into {
        vec![0u8; ctx.size]
    } else {
        Vec::new()
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = if ctx.is_put(&mut rng) {
            seq += 1;
            let tensor = Tensor::new(meta.clone(), ctx.base.clone()).expect("sized to meta");
            conn.put(&format!("{}{seq}", ctx.prefix), tensor)
                .await
                .map_err(|e| e.to_string())
        } else if ctx.into {
            let i = rng.next() % ctx.keys;
            match conn.get_into(&key_for(ctx.size, i), &mut buf).await {
                Ok(found) => ctx.check_read(i, found.then_some(&buf[..])),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let i = rng.next() % ctx.keys;
            match conn.get(&key_for(ctx.size, i)).await {
                Ok(t) => ctx.check_read(i, t.as_ref().map(|t| &t.data()[..])),
                Err(e) => Err(e.to_string()),
            }
        };
        if measuring.load(Ordering::Relaxed) {
            record(&mut tally, started, outcome);
        }
    }
    tally
}

async fn batch_worker(
    client: FastClient,
    ctx: Ctx,
    pipeline: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let mut picks = Vec::with_capacity(pipeline);
    let mut keys = Vec::with_capacity(pipeline);
    while !stop.load(Ordering::Relaxed) {
        picks.clear();
        keys.clear();
        for _ in 0..pipeline {
            let i = rng.next() % ctx.keys;
            picks.push(i);
            keys.push(key_for(ctx.size, i));
        }
        let started = Instant::now();
        let result = client.get_many(&keys).await;
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Err(e) => {
                for _ in 0..pipeline {
                    tally.error(e.to_string());
                }
            }
            Ok(tensors) => {
                for (i, t) in picks.iter().zip(tensors) {
                    let outcome = ctx.check_read(*i, t.as_ref().map(|t| &t.data()[..]));
                    record(&mut tally, started, outcome);
                }
            }
        }
    }
    tally
}

async fn redis_worker(
    mut conn: resp::Resp,
    ctx: Ctx,
    pipeline: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let mut out = Vec::new();
    let mut sent: Vec<Option<u64>> = Vec::with_capacity(pipeline);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        sent.clear();
        for _ in 0..pipeline {
            if ctx.is_put(&mut rng) {
                seq += 1;
                resp::Resp::set(&mut out, &format!("{}{seq}", ctx.prefix), &ctx.base);
                sent.push(None);
            } else {
                let i = rng.next() % ctx.keys;
                resp::Resp::get(&mut out, &key_for(ctx.size, i));
                sent.push(Some(i));
            }
        }
        if let Err(e) = conn.send(&mut out).await {
            tally.error(e.to_string());
            return tally;
        }
        for key in sent.iter() {
            let outcome = match (conn.read().await, key) {
                (Err(e), _) => {
                    tally.error(e.to_string());
                    return tally;
                }
                (Ok(resp::Reply::Bulk(v)), Some(i)) => ctx.check_read(*i, Some(&v[..])),
                (Ok(resp::Reply::Nil), Some(i)) => ctx.check_read(*i, None),
                (Ok(_), _) => Ok(()),
            };
            if measuring.load(Ordering::Relaxed) {
                record(&mut tally, started, outcome);
            }
        }
    }
    tally
}

fn record(tally: &mut Tally, started: Instant, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => {
            let ns = started.elapsed().as_nanos().min(u32::MAX as u128) as u32;
            tally.latencies_ns.push(ns);
        }
        Err(e) => tally.error(e),
    }
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

fn report(
    args: &Args,
    size: usize,
    concurrency: usize,
    connections: usize,
    pipeline: usize,
    elapsed: f64,
    mut all: Tally,
) {
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
    if args.json {
        println!(
            "{{\"target\":\"{target}\",\"op\":\"{op}\",\"size\":{size},\"concurrency\":{concurrency},\
             \"connections\":{connections},\"pipeline\":{pipeline},\"duration_s\":{elapsed:.3},\
             \"ops\":{ops},\"ops_per_sec\":{ops_per_sec:.1},\"mb_per_sec\":{mb_per_sec:.2},\
             \"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\"p999_us\":{p999:.1},\"errors\":{}}}",
            all.errors
        );
    }
}
