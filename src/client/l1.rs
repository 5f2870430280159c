//! The client-side L1 cache: tensors this process got or put, kept in its
//! own memory so that a hit answers without a round trip.
//!
//! Bounded by bytes (payload + key + a fixed overhead per entry), never by
//! count; eviction is `quick_cache`'s (CLOCK-PRO-like, weighted). Tensors
//! are immutable, so an entry stays right until its key is deleted: this
//! client's own deletes drop it at once, and a fetch that raced one is not
//! kept. Another client's delete (and re-put of other contents) is not seen
//! here: `ttl` bounds how long such a stale entry may be served.
//!
//! Concurrent misses of one key make one request (single flight): the
//! first caller fetches, the others wait for its answer. If the first is
//! cancelled, the next waiter fetches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use tokio::sync::OnceCell;

use super::ClientError;
use crate::tensor::Tensor;

/// Bytes charged per entry besides payload and key: the entry, its
/// metadata and the cache's own bookkeeping (an estimate).
pub const L1_ENTRY_OVERHEAD: u64 = 128;

/// Lock shards of the L1. A tensor larger than `capacity / SHARDS` is not
/// kept (each shard holds an equal share of the budget).
const SHARDS: usize = 4;

/// Options of a client's L1 cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Options {
    /// The byte budget: payloads + keys + [`L1_ENTRY_OVERHEAD`] each. A
    /// tensor over a quarter of it is never kept.
    pub capacity: u64,
    /// How long an entry may be served after it was fetched or put;
    /// `None`: until evicted or deleted by this client.
    pub ttl: Option<Duration>,
}

impl L1Options {
    /// An L1 of `capacity` bytes, entries kept until evicted.
    pub fn new(capacity: u64) -> L1Options {
        L1Options {
            capacity,
            ttl: None,
        }
    }
}

/// A snapshot of an L1's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L1Stats {
    /// Gets answered from the L1 (including those that waited for another
    /// caller's fetch of the same key).
    pub hits: u64,
    /// Gets that went to the network.
    pub misses: u64,
    /// Entries evicted to make room (not those removed by deletes or
    /// expiry).
    pub evictions: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes charged for them.
    pub bytes: u64,
    /// The byte budget.
    pub capacity: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    tensor: Tensor,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct ByteWeight;

impl Weighter<String, Entry> for ByteWeight {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        entry.tensor.data().len() as u64 + key.len() as u64 + L1_ENTRY_OVERHEAD
    }
}

#[derive(Debug, Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<String, Entry> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: String, _entry: Entry) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Flight = Arc<OnceCell<Result<Option<Tensor>, ClientError>>>;

/// A client's L1 cache. Cheap to clone: clones share it.
#[derive(Debug, Clone)]
pub struct L1 {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cache: Cache<String, Entry, ByteWeight, DefaultHashBuilder, CountEvictions>,
    capacity: u64,
    ttl: Option<Duration>,
    /// Bumped by every delete of this client: a fetch or put that saw
    /// another value does not fill the L1.
    deletes: AtomicU64,
    /// Misses being fetched, by key.
    flights: Mutex<HashMap<String, Flight>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

impl L1 {
    /// An empty L1.
    pub fn new(options: &L1Options) -> L1 {
        let evictions = Arc::new(AtomicU64::new(0));
        // Estimated items size the cache's tables (64 KiB a tensor); at
        // least 32 a shard, or quick_cache uses fewer shards (and a shard's
        // share of the budget, the largest tensor kept, grows).
        let items = (options.capacity / (64 << 10)).clamp(32 * SHARDS as u64, 1 << 20) as usize;
        let cache = Cache::with_options(
            quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(items)
                .weight_capacity(options.capacity)
                .shards(SHARDS)
                .build()
                .expect("valid L1 options"),
            ByteWeight,
            DefaultHashBuilder::default(),
            CountEvictions(Arc::clone(&evictions)),
        );
        L1 {
            inner: Arc::new(Inner {
                cache,
                capacity: options.capacity,
                ttl: options.ttl,
                deletes: AtomicU64::new(0),
                flights: Mutex::new(HashMap::new()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                evictions,
            }),
        }
    }

    /// The tensor under `key`: from the L1 if held and fresh, else from
    /// `fetch` (one fetch for all concurrent callers of one key), kept for
    /// next time when found.
    pub async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Option<Tensor>, ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Tensor>, ClientError>>,
    {
        if let Some(tensor) = self.lookup(key) {
            // A hit never waits: without this, a task looping over hits
            // would never yield and could starve its runtime's other tasks
            // (timers included). This yields once tokio's per-task budget
            // is spent, which costs a hit nothing otherwise.
            tokio::task::consume_budget().await;
            return Ok(Some(tensor));
        }
        let flight = {
            let mut flights = self
                .inner
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(flights.entry(key.to_owned()).or_default())
        };
        let mut fetched = false;
        let result = flight
            .get_or_init(|| {
                fetched = true;
                self.fetch_and_keep(key, fetch)
            })
            .await
            .clone();
        {
            let mut flights = self
                .inner
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(key);
            }
        }
        let counter = if fetched {
            &self.inner.misses
        } else {
            &self.inner.hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn fetch_and_keep<Fut>(
        &self,
        key: &str,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Option<Tensor>, ClientError>
    where
        Fut: std::future::Future<Output = Result<Option<Tensor>, ClientError>>,
    {
        let epoch = self.epoch();
        let result = fetch().await;
        if let Ok(Some(tensor)) = &result {
            self.keep(key, tensor, epoch);
        }
        result
    }

    /// The fresh entry under `key`, counted as a hit; `None` (not counted)
    /// otherwise. An expired entry is dropped.
    pub fn lookup(&self, key: &str) -> Option<Tensor> {
        let entry = self.inner.cache.get(key)?;
        if self.inner.ttl.is_some_and(|ttl| entry.at.elapsed() >= ttl) {
            self.inner.cache.remove_if(key, |e| e.at == entry.at);
            return None;
        }
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.tensor)
    }

    /// Counts `n` gets that went to the network without
    /// [`get`](L1::get) (a batch's misses).
    pub fn count_misses(&self, n: u64) {
        self.inner.misses.fetch_add(n, Ordering::Relaxed);
    }

    /// The current delete epoch: pass it to [`keep`](L1::keep) for a value
    /// read or written after this point.
    pub fn epoch(&self) -> u64 {
        self.inner.deletes.load(Ordering::Acquire)
    }

    /// Keeps `tensor` (raw) under `key`, unless this client deleted
    /// anything since `epoch` (the value may be the deleted one).
    pub fn keep(&self, key: &str, tensor: &Tensor, epoch: u64) {
        if self.epoch() == epoch {
            let entry = Entry {
                tensor: tensor.clone(),
                at: Instant::now(),
            };
            self.inner.cache.insert(key.to_owned(), entry);
            // A delete that began meanwhile may have missed this insert.
            if self.epoch() != epoch {
                self.inner.cache.remove(key);
            }
        }
    }

    /// After this client's successful put of `key`: keeps `raw` (the
    /// tensor as put, in a buffer of its own: a tensor sliced out of a
    /// larger buffer would keep all of it alive, uncharged), or, when only
    /// its packed form is at hand, drops whatever an earlier value left.
    pub fn put_done(&self, key: &str, raw: Option<Tensor>, epoch: u64) {
        match raw {
            Some(raw) => self.keep(key, &raw.compacted(), epoch),
            None => {
                self.inner.cache.remove(key);
            }
        }
    }

    /// Forgets `key` ahead of this client's delete of it, and makes every
    /// fetch in flight forget what it read. Call again once the delete is
    /// answered.
    pub fn invalidate(&self, key: &str) {
        self.inner.deletes.fetch_add(1, Ordering::AcqRel);
        self.inner.cache.remove(key);
        // A get from now on must not join a fetch that began before.
        self.inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The counters.
    pub fn stats(&self) -> L1Stats {
        let inner = &self.inner;
        L1Stats {
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            evictions: inner.evictions.load(Ordering::Relaxed),
            entries: inner.cache.len() as u64,
            bytes: inner.cache.weight(),
            capacity: inner.capacity,
        }
    }

    /// Registers the L1's metrics, read from [`stats`](L1::stats) at
    /// each scrape: `redstone_l1_hits_total`, `redstone_l1_misses_total`,
    /// `redstone_l1_evictions_total`, `redstone_l1_bytes`,
    /// `redstone_l1_entries`, `redstone_l1_capacity_bytes`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry
            .sub_registry_with_prefix("redstone_l1")
            .register_collector(Box::new(L1Collector(self.clone())));
    }
}

/// Reads an L1's counters at scrape time.
#[derive(Debug)]
struct L1Collector(L1);

impl Collector for L1Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        let counters = [
            ("hits", "Gets answered from the client's L1 cache", s.hits),
            ("misses", "Gets the L1 sent to the network", s.misses),
            ("evictions", "L1 entries evicted for room", s.evictions),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let gauges = [
            (
                "bytes",
                "Bytes the L1 holds (payloads, keys, overhead)",
                None,
                s.bytes,
            ),
            ("entries", "Tensors the L1 holds", None, s.entries),
            (
                "capacity",
                "The L1's byte budget",
                Some(Unit::Bytes),
                s.capacity,
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
