//! The server's metrics: what every door counts, in one registry, served
//! in the Prometheus text format by [`http`].
//!
//! - [`ServerMetrics`]: requests by door, op and status; latency
//!   histograms by door and op; bytes in and out; connections open and
//!   refused. The doors record into it; the registry is
//!   [`prometheus_client`]'s.
//! - `engine`: the cache's own counters and gauges (hits, misses,
//!   evictions, entries, memory), read from [`Engine::stats`] when scraped,
//!   so the engine's hot path pays nothing for them.
//! - `io`: a byte stream wrapper that counts what crosses it.
//! - `striped`: the counter and histogram the hot path records into,
//!   striped over cache lines so that cores do not contend.
//! - [`http`]: `GET /metrics` and `GET /health`.
//!
//! Recording is cheap: a door resolves its (op, status) cells once
//! ([`DoorRecorder`]), and a request then costs three relaxed atomic adds
//! (its counter, its histogram bucket, the histogram's sum) on its
//! thread's own cache lines.

mod engine;
pub mod http;
mod io;
mod striped;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub(crate) use io::Counted;
use striped::{StripedCounter, StripedHistogram};

use crate::engine::Engine;

/// Latency buckets, in seconds: 10 µs to 10 s in 1-2.5-5 steps.
pub const LATENCY_BUCKETS: [f64; 19] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A front door, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// The gRPC API.
    Grpc,
    /// The fast path over TCP.
    Fast,
    /// The fast path over the local door's Unix socket.
    Local,
}

impl Door {
    /// The label value: `grpc`, `fast` or `local`.
    pub fn name(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Fast => "fast",
            Door::Local => "local",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    door: &'static str,
    op: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    door: &'static str,
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DoorLabels {
    door: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    door: &'static str,
    reason: &'static str,
}

/// The server's metrics registry and the handles the doors record into.
/// Cheap to clone: every clone records into the same metrics.
///
/// ```
/// use std::time::Duration;
/// use redstone::engine::Engine;
/// use redstone::metrics::{Door, ServerMetrics};
///
/// let metrics = ServerMetrics::new(Engine::new(1 << 20));
/// let fast = metrics.recorder(Door::Fast, &["get", "put"], &["ok", "not_found"]);
/// fast.record(0, 1, Duration::from_micros(40)); // a get, not found
/// let text = metrics.encode();
/// assert!(text.contains(r#"redstone_requests_total{door="fast",op="get",status="not_found"} 1"#));
/// ```
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, StripedCounter>,
    latency: Family<OpLabels, StripedHistogram>,
    received: Family<DoorLabels, StripedCounter>,
    sent: Family<DoorLabels, StripedCounter>,
    open: Family<DoorLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    draining: AtomicBool,
    budgets: Arc<OnceLock<engine::BudgetProbe>>,
    leases: Arc<OnceLock<engine::LeaseProbe>>,
}

impl ServerMetrics {
    /// Fresh metrics for a server over `engine`, whose own counters are
    /// read from it at each scrape.
    pub fn new(engine: Engine) -> ServerMetrics {
        let mut registry = Registry::with_prefix("redstone");
        let requests = Family::<RequestLabels, StripedCounter>::default();
        registry.register(
            "requests",
            "Requests answered, by door, op and status",
            requests.clone(),
        );
        let latency = Family::<OpLabels, StripedHistogram>::default();
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its answer being queued (fast path) or returned (gRPC), by door and op",
            Unit::Seconds,
            latency.clone(),
        );
        let received = Family::<DoorLabels, StripedCounter>::default();
        registry.register_with_unit(
            "received",
            "Bytes read from clients' sockets, by door",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Family::<DoorLabels, StripedCounter>::default();
        registry.register_with_unit(
            "sent",
            "Bytes written to clients' sockets, by door",
            Unit::Bytes,
            sent.clone(),
        );
        let open = Family::<DoorLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Connections open, by door",
            open.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused at accept (busy), closed for idling (idle), or ended by the server for the client's fault (timeout, malformed, too_large), by door and reason",
            refused.clone(),
        );
        let budgets = Arc::new(OnceLock::new());
        let leases = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(engine::EngineCollector::new(
            engine,
            Arc::clone(&budgets),
            Arc::clone(&leases),
        )));
        ServerMetrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                received,
                sent,
                open,
                refused,
                draining: AtomicBool::new(false),
                budgets,
                leases,
            }),
        }
    }

    /// The recorder for `door`'s requests, whose ops and statuses are
    /// named by index in `ops` and `statuses`. Its cells are created on
    /// first use, so only the (op, status) pairs that happened are
    /// exposed.
    pub fn recorder(
        &self,
        door: Door,
        ops: &[&'static str],
        statuses: &[&'static str],
    ) -> DoorRecorder {
        let door_name = door.name();
        let ops = ops
            .iter()
            .map(|&op| OpCells {
                name: op,
                latency: self
                    .inner
                    .latency
                    .get_or_create(&OpLabels {
                        door: door_name,
                        op,
                    })
                    .clone(),
                statuses: statuses.iter().map(|&s| (s, OnceLock::new())).collect(),
            })
            .collect();
        DoorRecorder {
            door: door_name,
            metrics: self.clone(),
            ops,
        }
    }

    /// Counts a connection refused or ended for `reason` (`busy`, `idle`,
    /// `timeout`, `malformed`, `too_large`).
    pub fn refused(&self, door: Door, reason: &'static str) {
        self.inner
            .refused
            .get_or_create(&RefusedLabels {
                door: door.name(),
                reason,
            })
            .inc();
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection(&self, door: Door) -> OpenConnection {
        let gauge = self
            .inner
            .open
            .get_or_create(&DoorLabels { door: door.name() })
            .clone();
        gauge.inc();
        OpenConnection { gauge }
    }

    /// Wraps a connection's byte stream (or one half of it) so that the
    /// bytes read and written are counted for `door`.
    pub(crate) fn counted<T>(&self, door: Door, io: T) -> Counted<T> {
        let labels = DoorLabels { door: door.name() };
        Counted::new(
            io,
            self.inner.received.get_or_create(&labels).clone(),
            self.inner.sent.get_or_create(&labels).clone(),
        )
    }

    /// Lets a scrape read the fast path's server-wide budgets (bytes
    /// queued, bytes being received) through `probe`. The first call wins.
    pub(crate) fn watch_fast_budgets(
        &self,
        probe: impl Fn() -> (u64, u64) + Send + Sync + 'static,
    ) {
        let _ = self.inner.budgets.set(engine::BudgetProbe(Box::new(probe)));
    }

    /// Lets a scrape read the local door's leased bytes through `probe`.
    /// The first call wins.
    pub(crate) fn watch_leases(&self, probe: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.inner.leases.set(engine::LeaseProbe(Box::new(probe)));
    }

    /// Marks the server as draining (shutting down): `/health` answers
    /// 503 from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Every metric, in the Prometheus text format (0.0.4), as served at
    /// `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// Records one door's requests into pre-resolved cells: see
/// [`ServerMetrics::recorder`].
#[derive(Debug)]
pub struct DoorRecorder {
    door: &'static str,
    metrics: ServerMetrics,
    ops: Vec<OpCells>,
}

#[derive(Debug)]
struct OpCells {
    name: &'static str,
    latency: StripedHistogram,
    statuses: Vec<(&'static str, OnceLock<StripedCounter>)>,
}

impl DoorRecorder {
    /// Counts a connection of this door refused or ended for `reason`
    /// ([`ServerMetrics::refused`]).
    pub fn refused(&self, reason: &'static str) {
        self.metrics
            .inner
            .refused
            .get_or_create(&RefusedLabels {
                door: self.door,
                reason,
            })
            .inc();
    }

    /// Counts one request of op `op` answered with status `status` (both
    /// indexes into the recorder's lists; out of range, it is ignored)
    /// that took `elapsed`.
    pub fn record(&self, op: usize, status: usize, elapsed: Duration) {
        let Some(cells) = self.ops.get(op) else {
            return;
        };
        let Some((status, counter)) = cells.statuses.get(status) else {
            return;
        };
        counter
            .get_or_init(|| {
                let labels = RequestLabels {
                    door: self.door,
                    op: cells.name,
                    status,
                };
                self.metrics.inner.requests.get_or_create(&labels).clone()
            })
            .inc();
        cells.latency.observe(elapsed);
    }
}

/// A connection counted as open while this lives; see
/// [`ServerMetrics::connection`].
#[derive(Debug)]
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
