//! The command line.

use clap::{Parser, ValueEnum};
use redstone::size::parse_size;
use redstone::tensor::codec::Compression;
use redstone::tensor::synthetic::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Target {
    /// Redstone's fast path (binary frames over TCP; `tcp` is the old
    /// name).
    #[value(alias = "tcp")]
    Fast,
    /// Redstone's local door (`server --uds PATH`): the fast path over a
    /// Unix socket, large tensors shared through memory. `--addr` is the
    /// socket's path (default /tmp/redstone.sock).
    Uds,
    /// Redstone's gRPC API.
    Grpc,
    /// A Redis server (SET / GET).
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Op {
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
    /// One pass: read keys 0..K once each, checking only their length:
    /// one-pass read throughput (e.g. from a disk tier, which promotes a
    /// tensor to RAM on its second read), without `check`'s cost of
    /// regenerating the expected bytes.
    Scan,
}

/// Closed-loop load generator: N workers, each with D requests in flight,
/// for a fixed duration; prints throughput and latency percentiles.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "fast")]
    pub(crate) target: Target,
    /// The server's address. Default: 127.0.0.1 and 50052 (fast), 50051
    /// (grpc) or 6379 (redis).
    #[arg(long)]
    pub(crate) addr: Option<String>,
    /// The operation.
    #[arg(long, value_enum, default_value = "get")]
    pub(crate) op: Op,
    /// Value size: bytes or a size such as 3KiB, 1MiB.
    #[arg(long, default_value = "3KiB", value_parser = parse_size)]
    pub(crate) size: u64,
    /// Closed-loop workers.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Connections the workers share (Redis: one per worker, always).
    /// Default: one per worker.
    #[arg(long)]
    pub(crate) connections: Option<usize>,
    /// Requests each worker keeps in flight. Redis: that many commands per
    /// write. fast get: one GET_MANY of that many keys. Otherwise: that
    /// many concurrent requests per worker.
    #[arg(long, default_value_t = 1)]
    pub(crate) pipeline: usize,
    /// Seconds to measure, after a one-second warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Distinct keys read. Default: as many as fit in 512 MiB, at most 1000.
    #[arg(long)]
    pub(crate) keys: Option<u64>,
    /// Check every value read byte for byte; mismatches count as errors.
    #[arg(long)]
    pub(crate) verify: bool,
    /// fast only: read into a buffer each worker reuses
    /// (`FastClient::get_into`) instead of a fresh allocation per get.
    #[arg(long)]
    pub(crate) into: bool,
    /// End with one line of JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Cluster mode: the nodes' fast-path addresses, comma-separated
    /// (`a:50052,b:50052,c:50052`), `dns:NAME:PORT` (every address NAME
    /// resolves to), or the path of a cluster TOML file.
    #[arg(long)]
    pub(crate) nodes: Option<String>,
    /// Cluster mode: copies of each tensor (default min(3, nodes)).
    #[arg(long)]
    pub(crate) replicas: Option<usize>,
    /// Cluster mode: replicas that must acknowledge a put (default R).
    #[arg(long)]
    pub(crate) write_quorum: Option<usize>,
    /// A key read but no longer cached (evicted) is not an error: for
    /// mixed runs against a budget smaller than the keys written.
    #[arg(long)]
    pub(crate) allow_misses: bool,
    /// Soak: also open this many fast-path connections that pipeline GETs
    /// and never read, for the whole run.
    #[arg(long, default_value_t = 0)]
    pub(crate) stall: usize,
    /// Soak: sample this server process's resident memory every second
    /// (and `memory_used`, from the server), and report the peaks.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    /// fill/check: keys are PREFIX:0 … PREFIX:K-1.
    #[arg(long, default_value = "bench")]
    pub(crate) key_prefix: String,
    /// What the values look like: `bytes` (u8, a short repeating
    /// pattern), `relu` (f32 activations, half zeros), `normal` (f32
    /// embeddings), `bf16` (weights), `int8` (quantized weights). The size
    /// is rounded down to whole elements.
    #[arg(long, default_value = "bytes")]
    pub(crate) data: Kind,
    /// fast and cluster: compress puts (`lz4`: zero masks, byte shuffle,
    /// LZ4; kept only where it saves 10 %), the prefill's too.
    #[arg(long, default_value = "none")]
    pub(crate) compress: Compression,
    /// fast and cluster: give the client an L1 cache of this many bytes
    /// (e.g. 256MiB).
    #[arg(long, value_parser = parse_size)]
    pub(crate) l1: Option<u64>,
    /// uds only: keep up to this many bytes of mappings after their
    /// tensors are dropped, for the next gets of the same tensors
    /// (`FastClientOptions::keep_mapped`; e.g. 1GiB). Default: none.
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub(crate) keep_mapped: u64,
    /// fast only: one more worker, on the first connection's client (a
    /// clone, sharing its connection), loops plain gets of one tensor of
    /// this size (e.g. 64MiB) for the whole run; the measured op's figures
    /// show what that stream does to them (head-of-line blocking).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub(crate) background_get: Option<u64>,
}
