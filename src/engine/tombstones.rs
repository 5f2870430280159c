//! Tombstones: deletes remembered for a while, so that a write that began
//! before a delete (a read repair, a put's write delivered late) cannot
//! bring the deleted tensor back. Each is charged to the cache's budget
//! (its key plus [`TOMBSTONE_OVERHEAD`]). They expire after a TTL, and
//! together they hold at most a share of the budget and a maximum count:
//! past either, the oldest are forgotten first, so a flood of deletes
//! displaces at most that share of the cached tensors.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The fixed part of a tombstone's charge: the map slot, the queue slot and
/// the key's allocation header.
pub const TOMBSTONE_OVERHEAD: u64 = 96;

#[derive(Debug)]
struct Stone {
    deleted_at_us: u64,
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
    ttl_us: u64,
    max: usize,
    /// The most bytes all stones may be charged together.
    max_bytes: u64,
    /// What the stones held are charged together.
    bytes: u64,
}

impl Tombstones {
    pub(super) fn new(ttl: Duration, max: usize, max_bytes: u64) -> Tombstones {
        Tombstones {
            by_key: HashMap::new(),
            queue: VecDeque::new(),
            next_seq: 0,
            max_bytes,
            bytes: 0,
            ttl_us: u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX),
            max,
        }
    }

    /// Deletes remembered now, and the bytes charged for them.
    pub(super) fn held(&self) -> (u64, u64) {
        (self.by_key.len() as u64, self.bytes)
    }

    /// What a tombstone for `key` is charged.
    pub(super) fn charge(key: &str) -> u64 {
        key.len() as u64 + TOMBSTONE_OVERHEAD
    }

    /// Whether a stone for `key` can be kept at all (stones are on, and
    /// one fits in their share of the budget).
    pub(super) fn can_bury(&self, key: &str) -> bool {
        self.max > 0 && self.ttl_us > 0 && Tombstones::charge(key) <= self.max_bytes
    }

    /// Makes room among the stones for one more for `key` (forgetting the
    /// oldest past the count or the byte share); returns their charge.
    pub(super) fn make_room_for(&mut self, key: &str) -> u64 {
        let mut freed = self.clear(key);
        let charge = Tombstones::charge(key);
        while self.by_key.len() >= self.max || self.bytes + charge > self.max_bytes {
            match self.drop_oldest() {
                Some(bytes) => freed += bytes,
                None => break,
            }
        }
        freed
    }

    /// Records that `key` was deleted at `now_us` (after
    /// [`make_room_for`](Tombstones::make_room_for)); returns its charge.
    pub(super) fn bury(&mut self, key: &Arc<str>, now_us: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let charge = Tombstones::charge(key);
        self.by_key.insert(
            Arc::clone(key),
            Stone {
                deleted_at_us: now_us,
                seq,
                charge,
            },
        );
        self.bytes += charge;
        self.queue
            .push_back((Arc::clone(key), seq, now_us.saturating_add(self.ttl_us)));
        // Slots of stones cleared or replaced stay queued until they reach
        // the front; keep them from outnumbering the stones.
        if self.queue.len() > 2 * self.by_key.len() + 16 {
            let by_key = &self.by_key;
            self.queue
                .retain(|(k, seq, _)| by_key.get(k).is_some_and(|s| s.seq == *seq));
        }
        charge
    }

    /// Forgets the stones expired at `now_us`; returns their charge.
    pub(super) fn expire(&mut self, now_us: u64) -> u64 {
        let mut freed = 0;
        while self
            .queue
            .front()
            .is_some_and(|(_, _, expires)| *expires <= now_us)
        {
            freed += self.pop_oldest();
        }
        freed
    }

    /// Whether `key` was deleted at or after `since_us`.
    pub(super) fn deleted_since(&self, key: &str, since_us: u64) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|stone| stone.deleted_at_us >= since_us)
    }

    /// Forgets `key`'s stone (a new put of it); returns its charge.
    pub(super) fn clear(&mut self, key: &str) -> u64 {
        // Its queue slot stays until it reaches the front; `pop_oldest`
        // skips slots whose stone is gone or newer.
        let freed = self.by_key.remove(key).map_or(0, |stone| stone.charge);
        self.bytes -= freed;
        freed
    }

    /// The charge of every stone held.
    #[cfg(test)]
    pub(super) fn charged(&self) -> u64 {
        let sum = self.by_key.values().map(|stone| stone.charge).sum();
        assert_eq!(sum, self.bytes);
        sum
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
            Some(stone) if stone.seq == seq => self.clear(&key),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stones_block_older_writes_expire_and_are_bounded() {
        let mut t = Tombstones::new(Duration::from_micros(100), 2, 1 << 20);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(t.make_room_for("a"), 0);
        assert_eq!(t.bury(&a, 1000), Tombstones::charge("a"));
        assert!(t.deleted_since("a", 999), "a write begun before the delete");
        assert!(!t.deleted_since("a", 1001), "a write begun after it");
        assert!(!t.deleted_since("b", 0));
        t.make_room_for("b");
        t.bury(&b, 1010);
        let freed = t.make_room_for("c");
        t.bury(&c, 1020);
        assert_eq!(
            freed,
            Tombstones::charge("a"),
            "the oldest goes past the maximum"
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.clear("b"), Tombstones::charge("b"));
        assert_eq!(t.expire(1119), 0);
        assert_eq!(t.expire(1120), Tombstones::charge("c"));
        assert_eq!((t.len(), t.charged()), (0, 0));
    }

    #[test]
    fn stones_keep_to_their_byte_share_and_a_short_queue() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut t = Tombstones::new(Duration::from_secs(1), 100, 2 * Tombstones::charge("a"));
        for key in [&a, &b, &c] {
            t.make_room_for(key);
            t.bury(key, 5);
        }
        assert_eq!(t.len(), 2, "a third stone would pass the byte share");
        assert!(!t.can_bury(&"x".repeat(1000)), "one that can never fit");
        // Burying one key again and again keeps the queue short.
        for i in 0..1000 {
            t.make_room_for("a");
            t.bury(&a, 10 + i);
        }
        assert!(t.queue.len() <= 2 * t.len() + 17, "{}", t.queue.len());
        assert_eq!(t.charged(), 2 * Tombstones::charge("a"));
    }
}
