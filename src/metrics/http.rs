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

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::ServerMetrics;

/// The content type of [`ServerMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Serves `/metrics` and `/health` on `listener` until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    metrics: ServerMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(health))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
