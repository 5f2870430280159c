//! The fast path's server side: the accept loop and its limits.
//!
//! - `handler`: one connection (read, apply, respond).
//! - `budget`: the byte budgets for queued responses and payloads being
//!   received.
//!
//! Shutdown and connection tracking use tokio-util's tools for exactly
//! this: one [`CancellationToken`] for the door, a child token per
//! connection, and a [`TaskTracker`] that the door waits on, within the
//! grace period, for connections to finish their current request.

mod budget;
mod deadline;
mod handler;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::local::leases::{ConnLeases, Leases};
use super::local::{fds, Limits, Local, LocalListener};
use super::stream::write_frames;
use super::wire::{Opcode, ProtocolError, Status, MIN_VERSION};
use crate::engine::Engine;
use crate::metrics::{Door, ServerMetrics};

/// Serves one fast-path connection over any byte stream (an in-memory
/// pipe, say) until the peer closes it or breaks the protocol. It has no
/// shutdown signal and no connection limit; the fuzz targets drive the
/// handler through it.
#[cfg(feature = "fuzzing")]
pub async fn serve_io<R, W>(reader: R, writer: W, engine: Engine, config: Arc<FastConfig>)
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(shared_budgets(&config));
    // Nothing ever cancels this token.
    let stop = CancellationToken::new();
    let metrics = ServerMetrics::new(engine.clone());
    let recorder = Arc::new(handler::recorder(&metrics, Door::Fast));
    let serving = handler::Serving {
        engine,
        config,
        shared,
        stop,
        recorder,
    };
    handler::serve_connection(reader, writer, serving, None).await;
}

/// Limits and timeouts of the fast path. Every one is a `server` flag.
#[derive(Debug, Clone)]
pub struct FastConfig {
    /// The largest rkyv header accepted, in bytes.
    pub max_header: u32,
    /// The largest payload (tensor) accepted, in bytes. A claim above it is
    /// refused before any of it is read, and the connection closed.
    pub max_payload: u64,
    /// Connections served at once; one more is answered `Busy` and closed.
    pub max_connections: usize,
    /// Responses queued per connection before the server stops reading
    /// that connection's requests (backpressure).
    pub max_in_flight: usize,
    /// A connection that sends nothing for this long is closed, and so is
    /// one whose frame takes longer than this to arrive.
    pub idle_timeout: Duration,
    /// A connection whose socket accepts no byte of its responses for this
    /// long (a client that stopped reading), or delivers no byte of a PUT's
    /// payload, is closed and its queued responses dropped.
    pub write_timeout: Duration,
    /// Bytes of responses queued per connection before the server stops
    /// reading its requests. One response larger than this is still sent,
    /// alone.
    pub max_queued_bytes: u64,
    /// Bytes of responses queued over all connections; past it, every
    /// connection with something to send waits.
    pub max_queued_total: u64,
    /// Bytes of PUT payloads being received at once, over all connections.
    /// A PUT waits for room before its payload is allocated; the largest
    /// payload accepted is the smaller of this and `max_payload`.
    pub max_ingress: u64,
}

impl FastConfig {
    /// Defaults for a cache with a budget of `memory_limit` bytes: the
    /// largest tensor is the whole budget.
    pub fn for_budget(memory_limit: u64) -> FastConfig {
        FastConfig {
            max_header: 64 * 1024,
            max_payload: memory_limit,
            max_connections: 1024,
            max_in_flight: 128,
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            max_queued_bytes: 64 << 20,
            max_queued_total: 1 << 30,
            max_ingress: memory_limit,
        }
    }
}

/// The server-wide budgets for `config`.
fn shared_budgets(config: &FastConfig) -> budget::Shared {
    budget::Shared {
        queued: budget::Budget::new(config.max_queued_total),
        ingress: budget::Budget::new(config.max_ingress),
    }
}

/// Where a fast-path server accepts connections: TCP, or the local door's
/// Unix socket.
#[derive(Debug)]
pub(crate) enum Listener {
    /// The TCP fast path.
    Tcp(TcpListener),
    /// The local door.
    Local(LocalListener),
}

/// An accepted connection.
enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Local(tokio::net::UnixStream, Arc<Leases>, Arc<Limits>),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
            Listener::Local(l) => l
                .listener
                .accept()
                .await
                .map(|(s, _)| Accepted::Local(s, Arc::clone(&l.leases), Arc::clone(&l.limits))),
        }
    }

    fn door(&self) -> Door {
        match self {
            Listener::Tcp(_) => Door::Fast,
            Listener::Local(_) => Door::Local,
        }
    }
}

/// The server-wide byte budgets (`--max-queued-total`, `--max-ingress`):
/// one set per server, shared by the TCP fast path and the local door.
#[derive(Debug, Clone)]
pub(crate) struct Budgets(Arc<budget::Shared>);

impl Budgets {
    /// The budgets `config` sets, exposed through `metrics`.
    pub(crate) fn new(config: &FastConfig, metrics: &ServerMetrics) -> Budgets {
        let shared = Arc::new(shared_budgets(config));
        let watched = Arc::clone(&shared);
        metrics.watch_fast_budgets(move || (watched.queued.used(), watched.ingress.used()));
        Budgets(shared)
    }
}

/// Accepts fast-path connections until `shutdown` is cancelled, then waits
/// up to `grace` for open connections to finish their current request.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    listener: Listener,
    engine: Engine,
    config: FastConfig,
    budgets: Budgets,
    shutdown: CancellationToken,
    grace: Duration,
    metrics: ServerMetrics,
) {
    let config = Arc::new(config);
    let shared = budgets.0;
    let door = listener.door();
    if let Listener::Local(local) = &listener {
        let leases = Arc::clone(&local.leases);
        metrics.watch_leases(move || leases.bytes());
    }
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let connections = TaskTracker::new();
    let recorder = Arc::new(handler::recorder(&metrics, door));
    // Cancelled once the grace period is over: connections still open then
    // (a request waiting for room, a writer draining to a slow reader) are
    // dropped, their writers aborted, so nothing outlives the server.
    let kill = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.refused(door, "busy");
            match accepted {
                Accepted::Tcp(stream, peer) => {
                    tracing::warn!(%peer, "connection limit reached; refusing");
                    tokio::spawn(refuse_busy(stream))
                }
                Accepted::Local(stream, ..) => {
                    tracing::warn!("local door: connection limit reached; refusing");
                    tokio::spawn(refuse_busy(stream))
                }
            };
            continue;
        };
        let serving = handler::Serving {
            engine: engine.clone(),
            config: Arc::clone(&config),
            shared: Arc::clone(&shared),
            stop: shutdown.child_token(),
            recorder: Arc::clone(&recorder),
        };
        let kill = kill.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let open = metrics.connection(door);
            let served = async {
                match accepted {
                    Accepted::Tcp(stream, _) => {
                        stream.set_nodelay(true).ok();
                        let (reader, writer) = stream.into_split();
                        let (reader, writer) =
                            (metrics.counted(door, reader), metrics.counted(door, writer));
                        handler::serve_connection(reader, writer, serving, None).await;
                    }
                    Accepted::Local(stream, leases, limits) => {
                        let budget = Arc::clone(&limits.unclaimed);
                        let (reader, writer, inbox, outbox) = fds::split(stream, budget);
                        let (reader, writer) =
                            (metrics.counted(door, reader), metrics.counted(door, writer));
                        let local = Local {
                            limits,
                            inbox,
                            outbox,
                            leases: ConnLeases::new(leases),
                        };
                        handler::serve_connection(reader, writer, serving, Some(local)).await;
                    }
                }
            };
            tokio::select! {
                () = served => {}
                () = kill.cancelled() => {}
            }
            drop((permit, open));
        });
    }
    if let Listener::Local(local) = &listener {
        // The socket file goes with the door, if the path still names the
        // socket this door bound (not one a newer server put there).
        if super::local::identity(&local.path) == Some(local.identity) {
            let _ = std::fs::remove_file(&local.path);
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("fast-path connections still open after the grace period; closing them");
        kill.cancel();
        connections.wait().await;
    }
}

/// Tells a connection over the limit why it is closed.
async fn refuse_busy(mut stream: impl tokio::io::AsyncWrite + Unpin) {
    let err = ProtocolError::new(Status::Busy, 0, "the server is at its connection limit");
    let Ok(frame) = handler::error_frame(MIN_VERSION, Opcode::Ping, &err) else {
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write_frames(&mut stream, [frame])).await;
}
