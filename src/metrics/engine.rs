//! The engine's counters, read at scrape time: the engine keeps them
//! anyway (for `Stats`), so exposing them costs its hot path nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use std::sync::{Arc, OnceLock};

use crate::engine::Engine;

/// Reads the fast path's server-wide budgets: bytes of responses queued,
/// bytes of payloads being received.
pub(super) struct BudgetProbe(pub(super) Box<dyn Fn() -> (u64, u64) + Send + Sync>);

impl std::fmt::Debug for BudgetProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetProbe")
    }
}

/// Reads an [`Engine`]'s [`Stats`](crate::stats::Stats) and tombstones,
/// and the fast path's budgets once it serves, at each scrape.
#[derive(Debug)]
pub(super) struct EngineCollector {
    engine: Engine,
    budgets: Arc<OnceLock<BudgetProbe>>,
}

impl EngineCollector {
    pub(super) fn new(engine: Engine, budgets: Arc<OnceLock<BudgetProbe>>) -> EngineCollector {
        EngineCollector { engine, budgets }
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
        ];
        for (name, help, unit, value) in gauges.into_iter().chain(budgets) {
            let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            metric.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
