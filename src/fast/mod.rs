//! The fast path's server side: the accept loop and its limits.
//!
//! - `handler`: one connection (read, apply, respond).
//!
//! The protocol is in [`protocol`](crate::protocol), the byte-stream
//! plumbing in [`connection`](crate::connection).

mod handler;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::connection::write_frames;
use crate::engine::Engine;
use crate::protocol::{Opcode, ProtocolError, Status};

pub(crate) use handler::serve_connection;

/// Serves one fast-path connection over any byte stream (a socket's two
/// halves, an in-memory pipe) until the peer closes it or breaks the
/// protocol. The accept loop uses the same handler; this entry point has no
/// shutdown signal and no connection limit.
pub async fn serve_io<R, W>(reader: R, writer: W, engine: Engine, config: Arc<FastConfig>)
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The sender lives as long as the connection: nothing ever stops it.
    let (_never, shutdown) = watch::channel(false);
    serve_connection(reader, writer, engine, config, shutdown).await;
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
        }
    }
}

/// Accepts fast-path connections until `shutdown` turns true, then waits
/// up to `grace` for open connections to finish their current request.
pub(crate) async fn serve(
    listener: TcpListener,
    engine: Engine,
    config: FastConfig,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stream.set_nodelay(true).ok();
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let (engine, config, shutdown) = (engine.clone(), Arc::clone(&config), shutdown.clone());
        tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            serve_connection(reader, writer, engine, config, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    // Every permit back means every connection has finished.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("fast-path connections still open after the grace period");
    }
}

/// Tells a connection over the limit why it is closed.
async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    let err = ProtocolError::new(Status::Busy, 0, "the server is at its connection limit");
    let frame = handler::error_frame(Opcode::Ping, &err);
    let _ = tokio::time::timeout(Duration::from_secs(1), write_frames(&mut stream, [frame])).await;
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = shutdown.wait_for(|stop| *stop).await.map(drop);
}
