//! The disk tier's index: key → where its tensor is (queued or on disk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::log::Loc;
use crate::tensor::Tensor;

/// A tensor read from disk twice within this window is promoted back to
/// RAM; read once, it is served and left on disk, so that one pass over
/// many cold keys does not push the hot ones out of RAM.
pub const PROMOTE_WINDOW: Duration = Duration::from_secs(60);

/// Where a key's tensor is.
#[derive(Debug, Clone)]
pub(crate) enum Where {
    /// Waiting for the writer.
    Queued(Tensor),
    /// Written: the record at `loc`, whose head is `head_len` bytes.
    Stored { loc: Loc, head_len: u32 },
}

/// One key's entry.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) at: Where,
    /// The payload length.
    pub(crate) len: u64,
    /// The tensor's digest (for a stored record; a queued one computes it).
    pub(crate) digest: u64,
    /// Tells this entry from a later one under the same key.
    pub(crate) serial: u64,
    /// When this record was last read from disk (µs since the epoch; 0:
    /// never). Shared by the slot's clones.
    last_hit: Arc<AtomicU64>,
}

impl Slot {
    /// Notes a read from disk at `now`; whether it is the second within
    /// [`PROMOTE_WINDOW`].
    pub(crate) fn hit(&self, now: u64) -> bool {
        let before = self.last_hit.swap(now, Ordering::Relaxed);
        before != 0 && now.saturating_sub(before) <= PROMOTE_WINDOW.as_micros() as u64
    }
}

/// Key → [`Slot`].
#[derive(Debug, Default)]
pub(crate) struct Index {
    map: DashMap<Arc<str>, Slot>,
    serials: AtomicU64,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Slot> {
        self.map.get(key).map(|s| s.clone())
    }

    pub(crate) fn get_with_key(&self, key: &str) -> Option<(Arc<str>, Slot)> {
        self.map
            .get(key)
            .map(|s| (Arc::clone(s.key()), s.value().clone()))
    }

    fn slot(&self, at: Where, len: u64, digest: u64) -> Slot {
        Slot {
            at,
            len,
            digest,
            serial: self.serials.fetch_add(1, Ordering::Relaxed) + 1,
            last_hit: Arc::default(),
        }
    }

    /// Enters a tensor queued for writing, replacing whatever was there.
    pub(crate) fn insert_queued(&self, key: &Arc<str>, tensor: Tensor) -> Slot {
        let len = tensor.data().len() as u64;
        let slot = self.slot(Where::Queued(tensor), len, 0);
        self.map.insert(Arc::clone(key), slot.clone());
        slot
    }

    /// Enters a record found on disk by recovery, replacing an older one.
    pub(crate) fn insert_stored(
        &self,
        key: Arc<str>,
        loc: Loc,
        head_len: u32,
        len: u64,
        digest: u64,
    ) {
        let slot = self.slot(Where::Stored { loc, head_len }, len, digest);
        self.map.insert(key, slot);
    }

    /// Marks the queued entry `serial` written at `loc`; false if the key
    /// was removed or replaced meanwhile.
    pub(crate) fn written(
        &self,
        key: &str,
        serial: u64,
        loc: Loc,
        head_len: u32,
        digest: u64,
    ) -> bool {
        match self.map.get_mut(key) {
            Some(mut slot) if slot.serial == serial => {
                slot.at = Where::Stored { loc, head_len };
                slot.digest = digest;
                true
            }
            _ => false,
        }
    }

    /// Removes `key` if its entry is still `serial`.
    pub(crate) fn remove_if_same(&self, key: &str, serial: u64) -> bool {
        self.map.remove_if(key, |_, s| s.serial == serial).is_some()
    }

    /// Removes `key` if its tensor's digest is `digest` (any tensor, when
    /// `None`); returns the removed entry.
    pub(crate) fn remove_matching(
        &self,
        key: &str,
        digest: Option<u64>,
    ) -> Option<(Arc<str>, Slot)> {
        let Some(digest) = digest else {
            return self.map.remove(key);
        };
        let slot = self.get(key)?;
        // A queued tensor's digest is computed outside the shard's lock.
        let theirs = match &slot.at {
            Where::Queued(t) => t.digest(),
            Where::Stored { .. } => slot.digest,
        };
        if theirs != digest {
            return None;
        }
        self.map.remove_if(key, |_, s| s.serial == slot.serial)
    }

    /// Removes `key` if its entry is the record at `segment`/`offset` (its
    /// segment is being deleted); returns whether it did.
    pub(crate) fn reclaim(&self, key: &str, segment: u64, offset: u64) -> bool {
        self.map
            .remove_if(key, |_, s| {
                matches!(&s.at, Where::Stored { loc, .. } if loc.segment == segment && loc.offset == offset)
            })
            .is_some()
    }

    /// Removes `key` whatever its entry (recovery replaying a delete).
    pub(crate) fn remove(&self, key: &str) {
        self.map.remove(key);
    }
}
