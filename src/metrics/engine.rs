//! The engine's counters, read at scrape time: the engine keeps them
//! anyway (for `Stats`), so exposing them costs its hot path nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use std::sync::{Arc, OnceLock};

use crate::disk::DiskStats;
use crate::engine::Engine;

/// Reads the fast path's server-wide budgets: bytes of responses queued,
/// bytes of payloads being received.
pub(super) struct BudgetProbe(pub(super) Box<dyn Fn() -> (u64, u64) + Send + Sync>);

impl std::fmt::Debug for BudgetProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetProbe")
    }
}

/// Reads the local door's leased bytes.
pub(super) struct LeaseProbe(pub(super) Box<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for LeaseProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseProbe")
    }
}

/// Reads an [`Engine`]'s [`Stats`](crate::stats::Stats) and tombstones,
/// and the fast path's budgets once it serves, at each scrape.
#[derive(Debug)]
pub(super) struct EngineCollector {
    engine: Engine,
    budgets: Arc<OnceLock<BudgetProbe>>,
    leases: Arc<OnceLock<LeaseProbe>>,
}

impl EngineCollector {
    pub(super) fn new(
        engine: Engine,
        budgets: Arc<OnceLock<BudgetProbe>>,
        leases: Arc<OnceLock<LeaseProbe>>,
    ) -> EngineCollector {
        EngineCollector {
            engine,
            budgets,
            leases,
        }
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.engine.stats().counters();
        let counters = [
            ("cache_hits", "Gets that found their key", c.hits),
            ("cache_misses", "Gets that did not find their key", c.misses),
            (
                "cache_evictions",
                "Tensors evicted to make room for others",
                c.evictions,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let (tombstones, tombstone_bytes) = self.engine.tombstones();
        let gauges = [
            ("cache_entries", "Tensors cached", None, c.entries),
            (
                "tombstones",
                "Deletes remembered (so that late writes cannot bring a tensor back)",
                None,
                tombstones,
            ),
            (
                "tombstone",
                "Bytes of the budget charged for tombstones (part of memory_used)",
                Some(Unit::Bytes),
                tombstone_bytes,
            ),
            (
                "memory_used",
                "Bytes charged for the cached tensors (payloads, keys, metadata)",
                Some(Unit::Bytes),
                c.memory_used,
            ),
            (
                "memory_budget",
                "The byte budget; memory_used never passes it",
                Some(Unit::Bytes),
                c.memory_limit,
            ),
        ];
        let (queued, receiving) = self.budgets.get().map_or((0, 0), |probe| (probe.0)());
        let budgets = [
            (
                "fast_queued",
                "Bytes of fast-path responses queued for sending, over all connections (bounded by --max-queued-total)",
                Some(Unit::Bytes),
                queued,
            ),
            (
                "fast_receiving",
                "Bytes of fast-path PUT payloads being received, over all connections (bounded by --max-ingress)",
                Some(Unit::Bytes),
                receiving,
            ),
            (
                "local_leased",
                "Bytes of stored tensors that local-door clients have mapped, each counted once (bounded by --max-leased)",
                Some(Unit::Bytes),
                self.leases.get().map_or(0, |probe| (probe.0)()),
            ),
        ];
        for (name, help, unit, value) in gauges.into_iter().chain(budgets) {
            gauge(&mut encoder, name, help, unit, value)?;
        }
        if let Some(d) = self.engine.disk_stats() {
            encode_disk(&mut encoder, &d)?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?)
}

/// The disk tier's counters, `redstone_disk_*`; only when there is one.
fn encode_disk(encoder: &mut DescriptorEncoder, d: &DiskStats) -> Result<(), std::fmt::Error> {
    let counters = [
        ("disk_hits", "Gets RAM missed that the disk tier answered", d.hits),
        ("disk_misses", "Gets RAM missed that the disk tier did not answer", d.misses),
        ("disk_promotions", "Tensors read from disk back into RAM", d.promotions),
        ("disk_writes", "Tensor records written to the disk tier", d.writes),
        (
            "disk_dropped_writes",
            "Evicted tensors not written to disk (queue full, too large, or the tier stopped writing)",
            d.dropped_writes,
        ),
        ("disk_corrupt", "Disk records found torn or corrupt (skipped, never served)", d.corrupt),
        ("disk_evictions", "Tensors removed from the disk tier to make room", d.evictions),
    ];
    for (name, help, value) in counters {
        let metric = ConstCounter::new(value);
        metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
    }
    let gauges = [
        (
            "disk_entries",
            "Tensors in the disk tier (written or queued)",
            None,
            d.entries,
        ),
        (
            "disk_used",
            "Bytes the disk tier's files occupy",
            Some(Unit::Bytes),
            d.bytes,
        ),
        (
            "disk_budget",
            "The disk tier's size limit (--disk-size)",
            Some(Unit::Bytes),
            d.limit,
        ),
        (
            "disk_queued",
            "Bytes of evicted tensors waiting to be written",
            Some(Unit::Bytes),
            d.queued_bytes,
        ),
        (
            "disk_writable",
            "1 while the disk tier accepts writes, 0 after a write failed",
            None,
            u64::from(d.writable),
        ),
    ];
    for (name, help, unit, value) in gauges {
        gauge(encoder, name, help, unit, value)?;
    }
    Ok(())
}
