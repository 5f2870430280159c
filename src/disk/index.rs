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
    /// The tensor's digest: always known for a stored record; for a queued
    /// one, if RAM had computed it, or once [`Index::digest`] has.
    pub(crate) digest: Option<u64>,
    /// Tells this entry from a later one under the same key.
    pub(crate) serial: u64,
    /// When this record was last read from disk (µs since the epoch; 0:
    /// never; [`PROMOTED`]: a read has taken it to RAM). Shared by the
    /// slot's clones.
    last_hit: Arc<AtomicU64>,
}

/// `last_hit` once one read has been chosen to promote the record.
const PROMOTED: u64 = u64::MAX;

impl Slot {
    /// Notes a read from disk at `now`; whether this read should promote
    /// the tensor: the second within [`PROMOTE_WINDOW`], and only one read
    /// ever (readers racing for a hot key make one copy, not one each).
    pub(crate) fn hit(&self, now: u64) -> bool {
        let window = PROMOTE_WINDOW.as_micros() as u64;
        let mut before = self.last_hit.load(Ordering::Relaxed);
        loop {
            if before == PROMOTED {
                return false;
            }
            let promote = before != 0 && now.saturating_sub(before) <= window;
            let next = if promote { PROMOTED } else { now };
            match self.last_hit.compare_exchange_weak(
                before,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return promote,
                Err(seen) => before = seen,
            }
        }
    }
}

/// Key → [`Slot`].
#[derive(Debug, Default)]
pub(crate) struct Index {
    map: DashMap<Arc<str>, Slot>,
    serials: AtomicU64,
    /// The `last_hit` of every queued slot (never read: a queued tensor is
    /// served from memory), so that queueing allocates no counter.
    unread: Arc<AtomicU64>,
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

    fn serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Enters a tensor queued for writing (its digest, if known) unless the
    /// key has an entry; returns the new entry's serial, or gives the
    /// tensor back.
    pub(crate) fn insert_queued(
        &self,
        key: &Arc<str>,
        tensor: Tensor,
        digest: Option<u64>,
    ) -> Result<u64, Tensor> {
        match self.map.entry(Arc::clone(key)) {
            dashmap::Entry::Occupied(_) => Err(tensor),
            dashmap::Entry::Vacant(vacant) => {
                let serial = self.serial();
                vacant.insert(Slot {
                    len: tensor.data().len() as u64,
                    at: Where::Queued(tensor),
                    digest,
                    serial,
                    last_hit: Arc::clone(&self.unread),
                });
                Ok(serial)
            }
        }
    }

    /// Lets a record chosen for promotion be promoted again (its RAM copy
    /// was refused, or evicted since).
    pub(crate) fn unpromote(&self, key: &str) {
        if let Some(slot) = self.map.get(key) {
            if matches!(slot.at, Where::Stored { .. }) {
                slot.last_hit.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The tensor queued as entry `serial` of `key`, if it still is.
    pub(crate) fn queued(&self, key: &str, serial: u64) -> Option<Tensor> {
        let slot = self.map.get(key)?;
        match &slot.at {
            Where::Queued(tensor) if slot.serial == serial => Some(tensor.clone()),
            _ => None,
        }
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
        let slot = Slot {
            at: Where::Stored { loc, head_len },
            len,
            digest: Some(digest),
            serial: self.serial(),
            last_hit: Arc::default(),
        };
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
                slot.digest = Some(digest);
                slot.last_hit = Arc::default();
                true
            }
            _ => false,
        }
    }

    /// Removes `key` if its entry is still `serial`.
    pub(crate) fn remove_if_same(&self, key: &str, serial: u64) -> bool {
        self.map.remove_if(key, |_, s| s.serial == serial).is_some()
    }

    /// The digest of `key`'s tensor (computed for a queued one, outside
    /// every lock) and its entry's serial.
    pub(crate) fn digest(&self, key: &str) -> Option<(u64, u64)> {
        let slot = self.get(key)?;
        let digest = match (&slot.at, slot.digest) {
            (_, Some(digest)) => digest,
            (Where::Queued(t), None) => {
                let digest = t.digest();
                // Kept, so that a delete checking it under the engine's
                // lock need not hash.
                if let Some(mut entry) = self.map.get_mut(key) {
                    if entry.serial == slot.serial {
                        entry.digest = Some(digest);
                    }
                }
                digest
            }
            (Where::Stored { .. }, None) => return None,
        };
        Some((digest, slot.serial))
    }

    /// Removes `key`'s entry if its digest is known to be `digest`.
    pub(crate) fn take_if_digest(&self, key: &str, digest: u64) -> Option<Slot> {
        self.map
            .remove_if(key, |_, s| s.digest == Some(digest))
            .map(|(_, slot)| slot)
    }

    /// Removes `key`'s entry if it is `serial` (any entry, when `None`);
    /// returns it.
    pub(crate) fn take(&self, key: &str, serial: Option<u64>) -> Option<Slot> {
        match serial {
            None => self.map.remove(key),
            Some(serial) => self.map.remove_if(key, |_, s| s.serial == serial),
        }
        .map(|(_, slot)| slot)
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
