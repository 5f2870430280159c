//! The metrics endpoint: `GET /metrics` (the Prometheus text format) and
//! `GET /health` (200 while serving, 503 while draining).
//!
//! ```no_run
//! use redstone::engine::Engine;
//! use redstone::metrics::{http, ServerMetrics};
//!
//! # async fn run() -> std::io::Result<()> {
//! let metrics = ServerMetrics::new(Engine::new(1 << 30));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! http::serve(listener, metrics, std::future::pending()).await
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::ServerMetrics;

/// The content type of [`ServerMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Connections served at once; one more is closed unanswered. Scrapers and
/// health checks need a handful.
pub const MAX_CONNECTIONS: usize = 32;

/// How long one connection may stay open, from accept to close: one
/// request and its answer (no keep-alive), however slowly it is sent.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/health` on `listener` until `shutdown`
/// completes: at most [`MAX_CONNECTIONS`] at once, each for at most
/// [`CONNECTION_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    metrics: ServerMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(health))
        .with_state(metrics);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue; // dropped: closed unanswered
        };
        let service = TowerToHyperService::new(app.clone());
        // Ends by itself within the timeout, even after shutdown.
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

async fn scrape(State(metrics): State<ServerMetrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
}

async fn health(State(metrics): State<ServerMetrics>) -> impl IntoResponse {
    if metrics.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}
