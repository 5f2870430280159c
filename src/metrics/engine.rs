//! The engine's counters, read at scrape time: the engine keeps them
//! anyway (for `Stats`), so exposing them costs its hot path nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::engine::Engine;

/// Reads an [`Engine`]'s [`Stats`](crate::stats::Stats) at each scrape.
#[derive(Debug)]
pub(super) struct EngineCollector {
    engine: Engine,
}

impl EngineCollector {
    pub(super) fn new(engine: Engine) -> EngineCollector {
        EngineCollector { engine }
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
        let gauges = [
            ("cache_entries", "Tensors cached", None, c.entries),
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
        for (name, help, unit, value) in gauges {
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
