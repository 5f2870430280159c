//! `server`: runs a Redstone cache.
//!
//! `server` alone listens on 127.0.0.1:50051 with a 1 GiB budget, and
//! serves metrics on 127.0.0.1:9464. The original positional form
//! `server ADDR CACHE_SIZE` still works; `--config FILE` reads the same
//! settings from a TOML file (flags win).

mod file;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use redstone::disk::DiskConfig;
use redstone::fast::local::LocalConfig;
use redstone::fast::FastConfig;
use redstone::grpc::GrpcConfig;
use redstone::server::{Config, Server};
use redstone::size::parse_size;
use tracing_subscriber::EnvFilter;

/// Redstone: an in-memory tensor cache.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug: one line per
/// request) for more detail.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Read settings from this TOML file: the flags' long names as keys
    /// (`cache-size = "10GiB"`, `max-connections = 4096`, `addr = …`).
    /// Flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Where to serve `/metrics` (Prometheus) and `/health`; `off` serves
    /// neither.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    metrics: Listen,

    /// Log format: `text` for people, `json` (one object per line) for log
    /// shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Address of the gRPC API (port 0 picks a free port).
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:50051")]
    addr: SocketAddr,

    /// Memory budget for cached tensors: bytes, or a size like 512MiB, 10GiB.
    #[arg(value_name = "CACHE_SIZE", default_value = "1GiB", value_parser = parse_size)]
    cache_size: u64,

    /// Address of the fast path (binary frames over TCP). Default: the
    /// gRPC host, port 50052. Port 0 picks a free port. (`--tcp` is the
    /// old name.)
    #[arg(long, value_name = "ADDR", alias = "tcp")]
    fast: Option<SocketAddr>,

    /// Largest tensor accepted on the fast path (capped at CACHE_SIZE).
    /// Default: CACHE_SIZE.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_tensor: Option<u64>,

    /// Largest fast-path frame header (keys, metadata).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    max_header: u64,

    /// Fast-path connections served at once; more are refused with Busy.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,

    /// Responses queued per fast-path connection before the server stops
    /// reading its requests (backpressure on clients that do not read).
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_in_flight: usize,

    /// Seconds a connection (either door) may stay silent, or take to send
    /// one frame (fast path) or complete one request (gRPC), before it is
    /// closed.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,

    /// Seconds a fast-path connection's socket may accept none of its
    /// responses, or deliver none of a PUT's payload, before the connection
    /// is closed and its queue dropped.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    write_timeout: u64,

    /// Bytes of responses queued per fast-path connection before the server
    /// stops reading its requests (one larger response still goes, alone).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_queued_bytes: u64,

    /// Bytes of fast-path responses queued over all connections.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    max_queued_total: u64,

    /// Bytes of fast-path PUT payloads being received at once, over all
    /// connections; a PUT waits for room before its payload is allocated.
    /// Default: CACHE_SIZE.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_ingress: Option<u64>,

    /// gRPC connections served at once; more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    grpc_max_connections: usize,

    /// gRPC requests (HTTP/2 streams) in flight per connection; more wait.
    #[arg(long, value_name = "N", default_value_t = 128)]
    grpc_max_streams: u32,

    /// Seconds a delete is remembered, so that a cluster's read repair or
    /// late write begun before it cannot bring the tensor back (0: none).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    tombstone_ttl: u64,

    /// Seconds a shutdown (SIGINT, SIGTERM) waits for in-flight requests
    /// (and then as long again for `--persist-on-shutdown`).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    shutdown_grace: u64,

    /// A directory for the disk tier: tensors evicted from RAM are written
    /// there instead of dropped, and a server started on it again serves
    /// what it holds. Off by default. Needs --disk-size.
    #[arg(long, value_name = "DIR", requires = "disk_size")]
    disk_dir: Option<std::path::PathBuf>,

    /// The most the disk tier's files occupy (as the file system counts
    /// them): e.g. 100GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "disk_dir")]
    disk_size: Option<u64>,

    /// Bytes of evicted tensors waiting to be written to disk; more are
    /// dropped (and counted). Taken out of CACHE_SIZE, at most a quarter
    /// of it.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    disk_queue: u64,

    /// On SIGINT/SIGTERM, write the tensors in RAM to the disk tier before
    /// exiting, so that a restart comes back with them.
    #[arg(long, requires = "disk_dir")]
    persist_on_shutdown: bool,

    /// Open the local door on this Unix socket path: clients on this host
    /// connect with `unix:PATH` and share large tensors through memory
    /// instead of copying them (Linux). Off by default.
    #[arg(long, value_name = "PATH")]
    uds: Option<std::path::PathBuf>,

    /// The local door's socket permissions, in octal: 600 lets only this
    /// user connect, 660 its group too.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    uds_mode: u32,

    /// The most bytes of stored tensors local clients may have mapped at
    /// once (pages a mapping keeps alive after eviction are outside
    /// CACHE_SIZE). Default: CACHE_SIZE.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_leased: Option<u64>,
}

/// Permission bits in octal (`600`, `0660`).
fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{text}: expected octal permission bits such as 600 or 660"
        )),
    }
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(try_from = "String")]
struct Listen(Option<SocketAddr>);

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(text: String) -> Result<Listen, String> {
        parse_listen(&text)
    }
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|e| format!("{e}: expected host:port or `off`"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let mut args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if let Some(path) = args.config.clone() {
        if let Err(e) = file::apply(&path, &mut args, &matches) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    init_logs(args.log_format);
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(serve(args)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

async fn serve(args: Args) -> ExitCode {
    if args.cache_size == 0 {
        tracing::error!("CACHE_SIZE must be more than 0 bytes");
        return ExitCode::FAILURE;
    }
    let Ok(max_header) = u32::try_from(args.max_header) else {
        tracing::error!("--max-header must be below 4 GiB");
        return ExitCode::FAILURE;
    };
    let config = Config {
        grpc_addr: args.addr,
        fast_addr: args
            .fast
            .unwrap_or_else(|| SocketAddr::new(args.addr.ip(), 50052)),
        metrics_addr: args.metrics.0,
        memory_limit: args.cache_size,
        fast: FastConfig {
            max_header,
            max_payload: args.max_tensor.unwrap_or(args.cache_size),
            max_connections: args.max_connections.max(1),
            max_in_flight: args.max_in_flight.max(1),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            write_timeout: Duration::from_secs(args.write_timeout.max(1)),
            max_queued_bytes: args.max_queued_bytes,
            max_queued_total: args.max_queued_total,
            max_ingress: args.max_ingress.unwrap_or(args.cache_size),
        },
        grpc: GrpcConfig {
            max_connections: args.grpc_max_connections.max(1),
            max_concurrent_streams: args.grpc_max_streams.max(1),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        },
        tombstone_ttl: Duration::from_secs(args.tombstone_ttl),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        disk: args
            .disk_dir
            .clone()
            .zip(args.disk_size)
            .map(|(dir, size)| DiskConfig {
                queue: args.disk_queue,
                ..DiskConfig::new(dir, size)
            }),
        persist_on_shutdown: args.persist_on_shutdown,
        local: args.uds.clone().map(|path| LocalConfig {
            mode: args.uds_mode,
            ..LocalConfig::new(path, args.max_leased.unwrap_or(args.cache_size))
        }),
    };
    let server = match Server::bind(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = server
        .metrics_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        grpc = %server.grpc_addr(),
        fast = %server.fast_addr(),
        metrics = %metrics,
        budget_bytes = args.cache_size,
        max_tensor_bytes = args.max_tensor.unwrap_or(args.cache_size).min(args.cache_size),
        max_connections = args.max_connections,
        grpc_max_connections = args.grpc_max_connections,
        max_queued_total_bytes = args.max_queued_total,
        max_ingress_bytes = args.max_ingress.unwrap_or(args.cache_size),
        idle_timeout_s = args.idle_timeout,
        disk_dir = args.disk_dir.as_ref().map(|d| d.display().to_string()),
        disk_size_bytes = args.disk_size,
        uds = args.uds.as_ref().map(|p| p.display().to_string()),
        "Redstone is listening"
    );
    match server.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
