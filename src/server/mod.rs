//! The server: binds the front doors over one engine, serves them, and
//! shuts them down gracefully.
//!
//! ```no_run
//! use redstone::server::{Config, Server};
//!
//! # async fn run() -> Result<(), redstone::server::ServerError> {
//! let server = Server::bind(Config::default()).await?;
//! println!("gRPC on {}, fast path on {}", server.grpc_addr(), server.fast_addr());
//! server.run(async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::disk::{DiskConfig, DiskError, DiskTier};
use crate::engine::Engine;
use crate::fast::local::{LocalConfig, LocalListener};
use crate::fast::{Budgets, FastConfig, Listener};
use crate::grpc::{GrpcConfig, GrpcService, H2_CONNECTION_WINDOW, H2_MAX_FRAME, H2_STREAM_WINDOW};
use crate::metrics::ServerMetrics;

/// Server settings. `Config::default()` is what `server` runs with no
/// arguments.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gRPC door listens. Port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Where the fast path listens. Port 0 picks a free port.
    pub fast_addr: SocketAddr,
    /// Where `/metrics` and `/health` are served; `None` serves neither
    /// (the metrics are still kept: see [`Server::metrics`]). The `server`
    /// binary's default is `127.0.0.1:9464`; this one's is `None`, so
    /// that servers embedded in tests and applications do not contend for
    /// the port.
    pub metrics_addr: Option<SocketAddr>,
    /// The cache's byte budget.
    pub memory_limit: u64,
    /// The fast path's limits. `max_payload` is capped at `memory_limit`.
    pub fast: FastConfig,
    /// The gRPC door's limits.
    pub grpc: GrpcConfig,
    /// How long a delete is remembered (see
    /// [`Engine::with_tombstones`]); zero remembers none.
    pub tombstone_ttl: Duration,
    /// How long a shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
    /// The disk tier, if any: tensors evicted from RAM are written there,
    /// and a server started on a directory an earlier one used serves what
    /// it left.
    pub disk: Option<DiskConfig>,
    /// On a graceful shutdown, write the tensors in RAM to the disk tier
    /// (taking up to another `shutdown_grace`), so that a restart comes
    /// back with them too.
    pub persist_on_shutdown: bool,
    /// The local door (a Unix socket sharing tensors through memory with
    /// clients on this host), if any. It takes the fast path's limits.
    pub local: Option<LocalConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            fast_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            metrics_addr: None,
            memory_limit: 1 << 30,
            fast: FastConfig::for_budget(1 << 30),
            grpc: GrpcConfig::default(),
            tombstone_ttl: crate::engine::TOMBSTONE_TTL,
            shutdown_grace: Duration::from_secs(10),
            disk: None,
            persist_on_shutdown: false,
            local: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The metrics endpoint's socket could not be bound.
    #[error("cannot serve metrics on {addr} (--metrics ADDR picks another address, --metrics off serves none): {source}")]
    BindMetrics {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The local door's socket could not be bound.
    #[error("cannot listen on {path} (see --uds): {source}")]
    BindLocal {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The disk tier could not be opened.
    #[error("{0} (see --disk-dir)")]
    Disk(#[from] DiskError),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("the server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A bound, not yet serving, server.
#[derive(Debug)]
pub struct Server {
    engine: Engine,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    fast: TcpListener,
    fast_addr: SocketAddr,
    http: Option<(TcpListener, SocketAddr)>,
    local: Option<LocalListener>,
    metrics: ServerMetrics,
    config: Config,
}

impl Server {
    /// Creates the engine and binds the listening sockets. Applies the
    /// process's allocator policy, which the engine's accounting assumes
    /// (see `src/alloc.rs`).
    pub async fn bind(mut config: Config) -> Result<Server, ServerError> {
        crate::alloc::apply_policy();
        config.fast.max_payload = config.fast.max_payload.min(config.memory_limit);
        // The disk tier first: its recovery may take a while, and the ports
        // should not accept connections before the server can answer them.
        let (limit, ttl, max) = (
            config.memory_limit,
            config.tombstone_ttl,
            crate::engine::MAX_TOMBSTONES,
        );
        let engine = match &config.disk {
            Some(disk) => {
                let disk = DiskConfig {
                    // At most a quarter of the budget waits for the disk.
                    queue: disk.queue.min(limit / 4),
                    ..disk.clone()
                };
                let tier = tokio::task::spawn_blocking(move || DiskTier::open(&disk)).await??;
                Engine::with_disk(limit, ttl, max, tier)
            }
            None => Engine::with_tombstones(limit, ttl, max),
        };
        let (grpc, grpc_addr) = listen(config.grpc_addr).await?;
        let (fast, fast_addr) = listen(config.fast_addr).await?;
        let http = match config.metrics_addr {
            Some(addr) => Some(listen(addr).await.map_err(|e| match e {
                ServerError::Bind { addr, source } => ServerError::BindMetrics { addr, source },
                other => other,
            })?),
            None => None,
        };
        let local =
            match &config.local {
                Some(local) => Some(crate::fast::local::bind(local).map_err(|source| {
                    ServerError::BindLocal {
                        path: local.path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        Ok(Server {
            local,
            metrics: ServerMetrics::new(engine.clone()),
            engine,
            grpc,
            grpc_addr,
            fast,
            fast_addr,
            http,
            config,
        })
    }

    /// The address the fast path listens on.
    pub fn fast_addr(&self) -> SocketAddr {
        self.fast_addr
    }

    /// The address the gRPC door listens on (with the real port if 0 was
    /// asked for).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The engine behind every door.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The address `/metrics` and `/health` are served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    /// The server's metrics (also served at [`Server::metrics_addr`]).
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish for up to `shutdown_grace`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let engine = self.engine.clone();
        let fast_stop = CancellationToken::new();
        // If this future is dropped (aborted, lost a select), the fast path
        // stops with it instead of serving on from a detached task.
        let _stop_fast_on_drop = fast_stop.clone().drop_guard();
        // One set of byte budgets for both fast-path doors.
        let budgets = Budgets::new(&self.config.fast, &self.metrics);
        let serve = |listener| {
            tokio::spawn(crate::fast::serve(
                listener,
                self.engine.clone(),
                self.config.fast.clone(),
                budgets.clone(),
                fast_stop.clone(),
                self.config.shutdown_grace,
                self.metrics.clone(),
            ))
        };
        let fast = serve(Listener::Tcp(self.fast));
        let local = self.local.map(|local| serve(Listener::Local(local)));
        // The metrics endpoint outlives the doors' grace period: `/health`
        // says 503 while they drain.
        let http_stop = CancellationToken::new();
        let _stop_http_on_drop = http_stop.clone().drop_guard();
        if let Some((listener, _)) = self.http {
            let (stop, metrics) = (http_stop.clone(), self.metrics.clone());
            tokio::spawn(async move {
                let served = crate::metrics::http::serve(listener, metrics, stop.cancelled_owned());
                if let Err(e) = served.await {
                    tracing::warn!("the metrics endpoint failed: {e}");
                }
            });
        }
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let limits = &self.config.grpc;
        let incoming = crate::grpc::incoming(self.grpc, limits, self.metrics.clone());
        let service = GrpcService::with_metrics(self.engine, self.metrics.clone());
        let grpc = tonic::transport::Server::builder()
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            // tonic's default (None) lifts hyper's own stream limit.
            .max_concurrent_streams(limits.max_concurrent_streams.max(1))
            .timeout(limits.idle_timeout)
            .layer(tower::util::MapResponseLayer::new(
                crate::grpc::oversize_request_status,
            ))
            .layer(crate::grpc::CopyFreeGet::new(service.clone()))
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(incoming, async {
                stop_rx.await.ok();
            });
        tokio::pin!(grpc);
        tokio::select! {
            result = &mut grpc => {
                fast_stop.cancel();
                return result.map_err(ServerError::from);
            }
            () = shutdown => {}
        }
        self.metrics.set_draining();
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        stop_tx.send(()).ok();
        fast_stop.cancel();
        let grpc_result = match tokio::time::timeout(self.config.shutdown_grace, grpc).await {
            Ok(result) => result.map_err(ServerError::from),
            Err(_) => {
                tracing::warn!(
                    grace = ?self.config.shutdown_grace,
                    "gRPC requests still running after the grace period; stopping anyway"
                );
                Ok(())
            }
        };
        // The fast path bounds its own wait by the same grace period.
        fast.await?;
        if let Some(local) = local {
            local.await?;
        }
        let grace = self.config.shutdown_grace;
        let persist = self.config.persist_on_shutdown;
        if engine.disk_stats().is_some() {
            tokio::task::spawn_blocking(move || settle_disk(&engine, persist, grace)).await?;
        }
        tracing::info!("stopped");
        grpc_result
    }

    /// Runs the server on a task of its own; the handle stops it. Dropping
    /// the handle stops the server too.
    pub fn spawn(self) -> ServerHandle {
        let (trigger, stopped) = oneshot::channel::<()>();
        let grpc_addr = self.grpc_addr;
        let fast_addr = self.fast_addr;
        let metrics_addr = self.metrics_addr();
        let engine = self.engine.clone();
        let task = tokio::spawn(self.run(async {
            // Either an explicit shutdown or a dropped handle.
            stopped.await.ok();
        }));
        ServerHandle {
            grpc_addr,
            fast_addr,
            metrics_addr,
            engine,
            trigger: Some(trigger),
            task,
        }
    }
}

/// A server running on a task; see [`Server::spawn`].
#[derive(Debug)]
pub struct ServerHandle {
    grpc_addr: SocketAddr,
    fast_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    engine: Engine,
    trigger: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The address of the gRPC door.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address of the fast path.
    pub fn fast_addr(&self) -> SocketAddr {
        self.fast_addr
    }

    /// The address of `/metrics` and `/health`, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops the server gracefully and waits until it has stopped.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(trigger) = self.trigger.take() {
            trigger.send(()).ok();
        }
        (&mut self.task).await?
    }
}

/// Writes what the disk tier has queued (and, with `persist`, every tensor
/// in RAM), within `grace`.
fn settle_disk(engine: &Engine, persist: bool, grace: Duration) {
    let started = std::time::Instant::now();
    if persist {
        let queued = engine.persist(started + grace);
        let held = engine.stats().entries;
        tracing::info!(
            tensors = queued,
            of = held,
            ms = started.elapsed().as_millis() as u64,
            "wrote RAM to the disk tier"
        );
    } else if !engine.flush_disk(grace) {
        tracing::warn!(
            ?grace,
            "the disk tier's queue was not written within the grace period"
        );
    }
}

async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_err = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}
