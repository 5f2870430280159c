//! A statistics counter that many threads bump without sharing a cache line.
//!
//! The engine's hits and misses are counted on every get, and the doors'
//! metrics on every request. One `AtomicU64` bumped from every core would
//! bounce its cache line between them and serialize them; instead each
//! thread adds to one of a few padded stripes, and a read sums them.
//! [`Padded`] and [`stripe_index`] serve other striped values (the metrics'
//! latency histograms).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per value: more than the cores of most machines a cache runs
/// on; threads beyond share stripes round-robin.
pub(crate) const STRIPES: usize = 16;

/// A value alone on its cache lines (128 bytes covers adjacent-line
/// prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A sum of per-thread stripes; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    stripes: [Padded<AtomicU64>; STRIPES],
}

/// This thread's stripe.
pub(crate) fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl StripedCounter {
    pub(crate) fn incr(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe_index()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of the stripes (wrapping, like each stripe).
    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_threads() {
        let c = StripedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..1000).for_each(|_| c.incr()));
            }
        });
        assert_eq!(c.get(), 8000);
    }
}
