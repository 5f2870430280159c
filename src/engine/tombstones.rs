//! Tombstones: deletes remembered for a while, so that a write that began
//! before a delete (a read repair, a put's write delivered late) cannot
//! bring the deleted tensor back. Each is charged to the cache's budget
//! (its key plus [`TOMBSTONE_OVERHEAD`]); they expire after a TTL, and past
//! a maximum count the oldest are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The fixed part of a tombstone's charge: the map slot, the queue slot and
/// the key's allocation header.
pub const TOMBSTONE_OVERHEAD: u64 = 96;

#[derive(Debug)]
struct Stone {
    deleted_at_ms: u64,
    /// Tells this stone from a later one of the same key in the queue.
    seq: u64,
    charge: u64,
}

/// The tombstones of one engine. Guarded by the engine's eviction lock.
#[derive(Debug)]
pub(super) struct Tombstones {
    by_key: HashMap<Arc<str>, Stone>,
    /// In burial order: (key, seq, expires at).
    queue: VecDeque<(Arc<str>, u64, u64)>,
    next_seq: u64,
    ttl_ms: u64,
    max: usize,
}

impl Tombstones {
    pub(super) fn new(ttl: Duration, max: usize) -> Tombstones {
        Tombstones {
            by_key: HashMap::new(),
            queue: VecDeque::new(),
            next_seq: 0,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            max,
        }
    }

    /// What a tombstone for `key` is charged.
    pub(super) fn charge(key: &str) -> u64 {
        key.len() as u64 + TOMBSTONE_OVERHEAD
    }

    /// Records that `key` was deleted at `now_ms`; returns the charge it
    /// adds and the charge of older stones it replaced or pushed out.
    pub(super) fn bury(&mut self, key: &Arc<str>, now_ms: u64) -> (u64, u64) {
        if self.max == 0 || self.ttl_ms == 0 {
            return (0, 0);
        }
        let mut freed = self.clear(key);
        let seq = self.next_seq;
        self.next_seq += 1;
        let charge = Tombstones::charge(key);
        self.by_key.insert(
            Arc::clone(key),
            Stone {
                deleted_at_ms: now_ms,
                seq,
                charge,
            },
        );
        self.queue
            .push_back((Arc::clone(key), seq, now_ms.saturating_add(self.ttl_ms)));
        while self.by_key.len() > self.max {
            freed += self.pop_oldest();
        }
        (charge, freed)
    }

    /// Forgets the stones expired at `now_ms`; returns their charge.
    pub(super) fn expire(&mut self, now_ms: u64) -> u64 {
        let mut freed = 0;
        while self
            .queue
            .front()
            .is_some_and(|(_, _, expires)| *expires <= now_ms)
        {
            freed += self.pop_oldest();
        }
        freed
    }

    /// Whether `key` was deleted at or after `since_ms`.
    pub(super) fn deleted_since(&self, key: &str, since_ms: u64) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|stone| stone.deleted_at_ms >= since_ms)
    }

    /// Forgets `key`'s stone (a new put of it); returns its charge.
    pub(super) fn clear(&mut self, key: &str) -> u64 {
        // Its queue slot stays until it reaches the front; `pop_oldest`
        // skips slots whose stone is gone or newer.
        self.by_key.remove(key).map_or(0, |stone| stone.charge)
    }

    /// The charge of every stone held.
    #[cfg(test)]
    pub(super) fn charged(&self) -> u64 {
        self.by_key.values().map(|stone| stone.charge).sum()
    }

    /// Stones held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Forgets the oldest stone to make room; its charge, or `None` when
    /// there is none.
    pub(super) fn drop_oldest(&mut self) -> Option<u64> {
        while !self.queue.is_empty() {
            let freed = self.pop_oldest();
            if freed > 0 {
                return Some(freed);
            }
        }
        None
    }

    fn pop_oldest(&mut self) -> u64 {
        let Some((key, seq, _)) = self.queue.pop_front() else {
            return 0;
        };
        match self.by_key.get(&key) {
            Some(stone) if stone.seq == seq => self.by_key.remove(&key).map_or(0, |s| s.charge),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stones_block_older_writes_expire_and_are_bounded() {
        let mut t = Tombstones::new(Duration::from_millis(100), 2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(t.bury(&a, 1000), (Tombstones::charge("a"), 0));
        assert!(t.deleted_since("a", 999), "a write begun before the delete");
        assert!(!t.deleted_since("a", 1001), "a write begun after it");
        assert!(!t.deleted_since("b", 0));
        t.bury(&b, 1010);
        let (_, freed) = t.bury(&c, 1020);
        assert_eq!(
            freed,
            Tombstones::charge("a"),
            "the oldest goes past the maximum"
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.clear("b"), Tombstones::charge("b"));
        assert_eq!(t.expire(1119), 0);
        assert_eq!(t.expire(1120), Tombstones::charge("c"));
        assert_eq!(t.len(), 0);
    }
}
