//! `/metrics` and `/health`: known traffic through both doors, then a
//! scrape parsed by a Prometheus text parser, asserting exact values.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::{http_get, start_server_with_metrics, u8_meta, RawConn};
use prometheus_parse::{Sample, Scrape, Value};
use redstone::client::{ClientError, FastClient, RemoteCacheClient};
use redstone::fast::FastConfig;
use redstone::tensor::Tensor;

/// The samples of one scrape.
struct Metrics(Vec<Sample>);

impl Metrics {
    async fn scrape(addr: SocketAddr) -> Metrics {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Metrics(Scrape::parse(lines).expect("a valid exposition").samples)
    }

    /// The value of the sample `name` whose labels include `labels`; 0 if
    /// there is none (a counter never incremented is not exposed).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a number: {other:?}"),
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches {matching:?}"
        );
        matching.first().copied().unwrap_or(0.0)
    }

    fn requests(&self, door: &str, op: &str, status: &str) -> f64 {
        self.value(
            "redstone_requests_total",
            &[("door", door), ("op", op), ("status", status)],
        )
    }

    /// A histogram's bucket counts, by upper bound.
    fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> HashMap<String, f64> {
        let sample = self
            .0
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"));
        let Value::Histogram(buckets) = &sample.value else {
            panic!("{name} is not a histogram");
        };
        buckets
            .iter()
            .map(|b| (b.less_than.to_string(), b.count))
            .collect()
    }
}

fn tensor(n: usize, fill: u8) -> Tensor {
    Tensor::new(u8_meta(n as u64), vec![fill; n]).unwrap()
}

#[tokio::test]
async fn counters_match_the_traffic_exactly() {
    let server = start_server_with_metrics(1 << 20, FastConfig::for_budget(1 << 20)).await;
    let metrics_addr = server.metrics_addr().expect("metrics are served");
    let fast = FastClient::connect(server.fast_addr()).await.unwrap();
    let grpc = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();

    fast.put_tensor("a", tensor(4096, 1)).await.unwrap();
    assert!(matches!(
        fast.put_tensor("a", tensor(4096, 2)).await,
        Err(ClientError::AlreadyExists(_))
    ));
    for _ in 0..2 {
        assert!(fast.get("a").await.unwrap().is_some());
    }
    assert!(fast.get("missing").await.unwrap().is_none());
    assert!(fast.delete("a").await.unwrap());
    grpc.put_tensor("g", tensor(1000, 3)).await.unwrap();
    assert!(grpc.get("g").await.unwrap().is_some());
    assert!(grpc.get("missing").await.unwrap().is_none());

    let m = Metrics::scrape(metrics_addr).await;
    assert_eq!(m.requests("fast", "put", "ok"), 1.0);
    assert_eq!(m.requests("fast", "put", "already_exists"), 1.0);
    assert_eq!(m.requests("fast", "get", "ok"), 2.0);
    assert_eq!(m.requests("fast", "get", "not_found"), 1.0);
    assert_eq!(m.requests("fast", "delete", "ok"), 1.0);
    assert_eq!(m.requests("grpc", "put", "ok"), 1.0);
    assert_eq!(m.requests("grpc", "get", "ok"), 1.0);
    assert_eq!(m.requests("grpc", "get", "not_found"), 1.0);

    // The engine's own counters: hits and misses over both doors.
    assert_eq!(m.value("redstone_cache_hits_total", &[]), 3.0);
    assert_eq!(m.value("redstone_cache_misses_total", &[]), 2.0);
    assert_eq!(m.value("redstone_cache_evictions_total", &[]), 0.0);
    assert_eq!(m.value("redstone_cache_entries", &[]), 1.0);
    let stats = server.engine().stats();
    assert_eq!(
        m.value("redstone_memory_used_bytes", &[]),
        stats.memory_used as f64
    );
    assert_eq!(
        m.value("redstone_memory_budget_bytes", &[]),
        (1u64 << 20) as f64
    );

    // Three fast-path gets, each in exactly one latency bucket (and +Inf).
    let buckets = m.buckets(
        "redstone_request_duration_seconds",
        &[("door", "fast"), ("op", "get")],
    );
    assert_eq!(buckets["inf"], 3.0, "{buckets:?}");
    assert_eq!(
        m.value(
            "redstone_request_duration_seconds_count",
            &[("door", "fast"), ("op", "get")]
        ),
        3.0
    );

    // Bytes: at least the payloads that crossed each way.
    assert!(m.value("redstone_received_bytes_total", &[("door", "fast")]) > 2.0 * 4096.0);
    assert!(m.value("redstone_sent_bytes_total", &[("door", "fast")]) > 2.0 * 4096.0);
    assert!(m.value("redstone_received_bytes_total", &[("door", "grpc")]) > 1000.0);
    assert!(m.value("redstone_sent_bytes_total", &[("door", "grpc")]) > 1000.0);
    assert_eq!(
        m.value("redstone_open_connections", &[("door", "fast")]),
        1.0
    );
    assert_eq!(
        m.value("redstone_open_connections", &[("door", "grpc")]),
        1.0
    );

    // Every metric is documented.
    let (_, body) = http_get(metrics_addr, "/metrics").await;
    for line in body.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    assert_eq!(
        http_get(metrics_addr, "/health").await,
        (200, "ok\n".into())
    );
    assert_eq!(http_get(metrics_addr, "/nope").await.0, 404);

    drop(fast);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn refused_connections_are_counted_by_reason() {
    let fast = FastConfig {
        max_connections: 1,
        ..FastConfig::for_budget(1 << 20)
    };
    let server = start_server_with_metrics(1 << 20, fast).await;
    let metrics_addr = server.metrics_addr().unwrap();
    let held = FastClient::connect(server.fast_addr()).await.unwrap();
    assert!(held.get("x").await.unwrap().is_none());
    // Over the limit: answered Busy and closed.
    let mut busy = RawConn::connect(server.fast_addr()).await;
    assert!(busy.recv().await.is_some());
    assert!(busy.recv().await.is_none());
    drop(held);
    // A malformed frame: a bad magic number.
    let mut bad = loop {
        let mut conn = RawConn::connect(server.fast_addr()).await;
        conn.send_bytes(&[0xAB; 32]).await.unwrap();
        match conn.recv().await {
            // The held connection may not be gone yet: busy again.
            Some((_, response, _)) if response.status() == redstone::fast::wire::Status::Busy => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Some(_) => break conn,
            None => panic!("closed without an answer"),
        }
    };
    assert!(bad.recv().await.is_none());
    let m = Metrics::scrape(metrics_addr).await;
    let busy_count = m.value(
        "redstone_connections_refused_total",
        &[("door", "fast"), ("reason", "busy")],
    );
    assert!(busy_count >= 1.0, "{busy_count}");
    assert_eq!(
        m.value(
            "redstone_connections_refused_total",
            &[("door", "fast"), ("reason", "malformed")]
        ),
        1.0
    );
    server.shutdown().await.unwrap();
}

/// A client that hangs up mid-PUT: its request is `aborted`, not a server
/// error.
#[tokio::test]
async fn a_client_hanging_up_mid_request_is_aborted_not_internal() {
    use redstone::fast::wire::{encode_frame, Request, WireMeta};
    let server = start_server_with_metrics(1 << 20, FastConfig::for_budget(1 << 20)).await;
    let metrics_addr = server.metrics_addr().unwrap();
    let mut conn = RawConn::connect(server.fast_addr()).await;
    let request = Request::Put {
        key: "half".into(),
        meta: WireMeta::from(&u8_meta(4096)),
    };
    conn.send_bytes(&encode_frame(request.opcode(), 0, 1, &request, 4096).unwrap())
        .await
        .unwrap();
    conn.send_bytes(&[1u8; 1000]).await.unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = Metrics::scrape(metrics_addr).await;
        // Counted, and the connection gone.
        let open = m.value("redstone_open_connections", &[("door", "fast")]);
        if m.requests("fast", "put", "aborted") == 1.0 && open == 0.0 {
            assert_eq!(m.requests("fast", "put", "internal"), 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never counted as aborted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.shutdown().await.unwrap();
}

/// A client that stops reading: the bytes queued for it show in the
/// fast path's queued-bytes gauge, and go when it does.
#[tokio::test]
async fn bytes_queued_for_a_stalled_reader_are_visible() {
    use redstone::fast::wire::Request;
    let server = start_server_with_metrics(64 << 20, FastConfig::for_budget(64 << 20)).await;
    let metrics_addr = server.metrics_addr().unwrap();
    let fast = FastClient::connect(server.fast_addr()).await.unwrap();
    fast.put_tensor("big", tensor(4 << 20, 9)).await.unwrap();
    let mut stalled = RawConn::connect(server.fast_addr()).await;
    for id in 0..32 {
        let get = Request::Get { key: "big".into() };
        stalled.send(id, &get, &[]).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let queued = Metrics::scrape(metrics_addr)
            .await
            .value("redstone_fast_queued_bytes", &[]);
        if queued >= (4 << 20) as f64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "queued {queued}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(stalled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Metrics::scrape(metrics_addr)
        .await
        .value("redstone_fast_queued_bytes", &[])
        > 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue was not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}

/// The metrics endpoint bounds what a client can hold: connections past
/// the limit are closed unanswered, and a silent connection is closed
/// after the timeout, freeing its place.
#[tokio::test]
async fn the_metrics_endpoint_bounds_connections_and_their_time() {
    use redstone::metrics::http::{CONNECTION_TIMEOUT, MAX_CONNECTIONS};
    use tokio::io::AsyncReadExt;
    let server = start_server_with_metrics(1 << 20, FastConfig::for_budget(1 << 20)).await;
    let addr = server.metrics_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // One more: closed without an answer.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), extra.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // The silent ones are closed by the server once their time is up...
    let started = std::time::Instant::now();
    for conn in &mut held {
        let read = tokio::time::timeout(CONNECTION_TIMEOUT * 2, conn.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    assert!(started.elapsed() < CONNECTION_TIMEOUT * 2);
    // ...and scrapes are served again.
    assert_eq!(http_get(addr, "/health").await, (200, "ok\n".into()));
    server.shutdown().await.unwrap();
}
