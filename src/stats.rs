//! The cache's counters, as every door and client reports them.
//!
//! [`Counters`] are the raw numbers a server keeps; [`Stats`] adds the two
//! ratios derived from them. Each transport carries only the counters, and
//! the ratios are derived here, in one place, on whichever side reads them.

/// The raw counters of one cache (or, summed, of several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Tensors currently cached.
    pub entries: u64,
    /// Bytes charged for them (see [`Engine::charge`](crate::engine::Engine::charge)).
    pub memory_used: u64,
    /// The byte budget.
    pub memory_limit: u64,
    /// Gets that found their key.
    pub hits: u64,
    /// Gets that did not.
    pub misses: u64,
    /// Entries removed to make room.
    pub evictions: u64,
}

impl Counters {
    /// The field-by-field sum, saturating: counters another server sent
    /// can be anything, and adding them must not overflow.
    ///
    /// ```
    /// use redstone::stats::Counters;
    /// let a = Counters { hits: u64::MAX, entries: 2, ..Counters::default() };
    /// let b = Counters { hits: 5, entries: 3, ..Counters::default() };
    /// let sum = a.saturating_add(b);
    /// assert_eq!((sum.hits, sum.entries), (u64::MAX, 5));
    /// ```
    pub fn saturating_add(self, other: Counters) -> Counters {
        Counters {
            entries: self.entries.saturating_add(other.entries),
            memory_used: self.memory_used.saturating_add(other.memory_used),
            memory_limit: self.memory_limit.saturating_add(other.memory_limit),
            hits: self.hits.saturating_add(other.hits),
            misses: self.misses.saturating_add(other.misses),
            evictions: self.evictions.saturating_add(other.evictions),
        }
    }
}

/// A snapshot of a cache's counters, with the ratios derived from them.
///
/// ```
/// use redstone::stats::{Counters, Stats};
/// let s = Stats::from(Counters { hits: 3, misses: 1, memory_used: 50, memory_limit: 100, ..Counters::default() });
/// assert_eq!((s.hit_rate, s.memory_utilization), (0.75, 0.5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Tensors currently cached.
    pub entries: u64,
    /// Bytes charged for them (see [`Engine::charge`](crate::engine::Engine::charge)).
    pub memory_used: u64,
    /// The byte budget.
    pub memory_limit: u64,
    /// Gets that found their key.
    pub hits: u64,
    /// Gets that did not.
    pub misses: u64,
    /// Entries removed to make room.
    pub evictions: u64,
    /// `hits / (hits + misses)`, 0 before any get.
    pub hit_rate: f64,
    /// `memory_used / memory_limit`.
    pub memory_utilization: f64,
}

impl Stats {
    /// The counters without the derived ratios.
    pub fn counters(&self) -> Counters {
        Counters {
            entries: self.entries,
            memory_used: self.memory_used,
            memory_limit: self.memory_limit,
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
        }
    }
}

impl From<Counters> for Stats {
    fn from(c: Counters) -> Stats {
        // Computed in f64 so that no counter sum can overflow.
        let ratio = |a: u64, b: f64| if b == 0.0 { 0.0 } else { a as f64 / b };
        Stats {
            entries: c.entries,
            memory_used: c.memory_used,
            memory_limit: c.memory_limit,
            hits: c.hits,
            misses: c.misses,
            evictions: c.evictions,
            hit_rate: ratio(c.hits, c.hits as f64 + c.misses as f64),
            memory_utilization: ratio(c.memory_used, c.memory_limit as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_a_peer_sent_never_overflow() {
        let max = Counters {
            entries: u64::MAX,
            memory_used: u64::MAX,
            memory_limit: u64::MAX,
            hits: u64::MAX,
            misses: u64::MAX,
            evictions: u64::MAX,
        };
        let stats = Stats::from(max);
        assert_eq!(stats.hit_rate, 0.5);
        assert_eq!(stats.memory_utilization, 1.0);
        assert_eq!(max.saturating_add(max), max);
    }
}
