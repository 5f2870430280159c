//! The gRPC door's limits: connections at once, and how long one may stay
//! silent. tonic has no connection limit of its own, so connections are
//! accepted here, each holding a permit for its life, and handed to tonic
//! as a stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{Counted, Door, OpenConnection, ServerMetrics};

/// Limits of the gRPC door. Every one is a `server` flag.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Connections served at once; one more is closed at once, unanswered
    /// (HTTP/2 has no way to say "busy" before its handshake).
    pub max_connections: usize,
    /// HTTP/2 streams (requests) in flight per connection; more wait.
    pub max_concurrent_streams: u32,
    /// A connection that moves no byte for this long is closed; a request
    /// that takes longer than this (a body trickling in, say) fails.
    pub idle_timeout: Duration,
}

impl Default for GrpcConfig {
    fn default() -> GrpcConfig {
        GrpcConfig {
            max_connections: 1024,
            max_concurrent_streams: 128,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Accepts connections from `listener` up to the limit, for tonic. The
/// accept task ends, closing the listener, when tonic drops the stream.
pub(crate) fn incoming(
    listener: TcpListener,
    config: &GrpcConfig,
    metrics: ServerMetrics,
) -> ReceiverStream<io::Result<Limited>> {
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let idle = config.idle_timeout;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("gRPC accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                tracing::warn!(%peer, "gRPC connection limit reached; refusing");
                metrics.refused(Door::Grpc, "busy");
                continue;
            };
            stream.set_nodelay(true).ok();
            let limited = Limited {
                io: metrics.counted(Door::Grpc, stream),
                _permit: permit,
                _open: metrics.connection(Door::Grpc),
                metrics: metrics.clone(),
                idle,
                deadline: Box::pin(tokio::time::sleep(idle)),
            };
            if tx.send(Ok(limited)).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A connection that holds its permit, counts its bytes, and closes itself
/// when idle.
#[derive(Debug)]
pub(crate) struct Limited {
    io: Counted<TcpStream>,
    _permit: OwnedSemaphorePermit,
    /// Counts the connection as open while it lives.
    _open: OpenConnection,
    metrics: ServerMetrics,
    idle: Duration,
    /// Reset whenever a byte moves either way.
    deadline: Pin<Box<Sleep>>,
}

impl Limited {
    fn touch(&mut self) {
        // An idle limit too long to add to now (`--idle-timeout` of
        // `u64::MAX` seconds) is a deadline that never comes, as for
        // `tokio::time::sleep`.
        let now = Instant::now();
        let due = now
            .checked_add(self.idle)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.deadline.as_mut().reset(due);
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.get_ref().connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // hyper always has a read waiting: that is where silence is
            // noticed.
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.metrics.refused(Door::Grpc, "idle");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the gRPC connection was idle past the idle timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
