//! Mappings kept for the next gets of the same tensors (the local door).
//!
//! A get over the local door maps the tensor's memfd; with 4 KiB pages
//! that costs about a quarter of a microsecond a page (a 64 MiB tensor:
//! ~4 ms here, most of the get's cost). The server hands out the same
//! sealed memfd each time it is asked for the same stored tensor, so a
//! client that keeps a few mappings after their tensors are dropped can
//! answer the next get of one with the mapping it has: the reply's
//! descriptor is recognised by its file identity, closed, and its lease
//! released at once.
//!
//! The identity is the memfd's device, inode and change time
//! ([`memfd::file_id`](crate::fast::local::memfd::file_id)), which no
//! other file shares while the mapping is kept: a mapping holds its file,
//! so its inode stays taken. A sealed memfd's bytes never change, so a
//! kept mapping is always the bytes the server would send. A kept mapping
//! still holds its lease: after the server evicts the tensor, its pages
//! stay counted in the server's leased bytes until the mapping is let go
//! (the client lets every kept mapping go when its connection is replaced:
//! the server released that connection's leases).

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use quick_cache::unsync::Cache;
use quick_cache::Weighter;

use crate::fast::local::memfd::FileId;

#[derive(Debug, Clone, Copy)]
struct ByLen;

impl Weighter<FileId, Bytes> for ByLen {
    fn weight(&self, _id: &FileId, bytes: &Bytes) -> u64 {
        bytes.len() as u64
    }
}

/// The kept mappings of one client (shared by its clones), within a byte
/// budget; the least recently got are let go first.
#[derive(Debug)]
pub(super) struct Kept {
    cache: Mutex<Cache<FileId, Bytes, ByLen>>,
}

impl Kept {
    /// Keeps mappings up to `capacity` bytes; `None` for 0 (keep none).
    pub(super) fn new(capacity: u64) -> Option<Kept> {
        (capacity > 0).then(|| Kept {
            cache: Mutex::new(Cache::with_weighter(64, capacity, ByLen)),
        })
    }

    /// The kept mapping of file `id`, if it is one of `len` bytes.
    pub(super) fn get(&self, id: FileId, len: u64) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(&id)
            .filter(|bytes| bytes.len() as u64 == len)
            .cloned()
    }

    /// Keeps `mapping`, the whole mapping of file `id`.
    pub(super) fn insert(&self, id: FileId, mapping: Bytes) {
        // A mapping evicted, unless a tensor still holds it, is unmapped
        // and its lease released.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.insert(id, mapping);
    }

    /// Lets every kept mapping go (the server is short of leases).
    pub(super) fn clear(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identities of three different files.
    fn ids() -> Vec<FileId> {
        (0..3)
            .map(|_| {
                let fd = rustix::fs::memfd_create("id", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
                crate::fast::local::memfd::file_id(&fd).unwrap()
            })
            .collect()
    }

    #[test]
    fn keeps_within_its_budget_and_checks_the_length() {
        let ids = ids();
        let kept = Kept::new(1000).unwrap();
        kept.insert(ids[0], Bytes::from(vec![1u8; 400]));
        kept.insert(ids[1], Bytes::from(vec![2u8; 400]));
        assert_eq!(kept.get(ids[0], 400).unwrap()[0], 1);
        assert!(
            kept.get(ids[0], 399).is_none(),
            "another length is another file"
        );
        kept.insert(ids[2], Bytes::from(vec![3u8; 400]));
        let held = ids
            .iter()
            .filter(|&&id| kept.get(id, 400).is_some())
            .count();
        assert_eq!(held, 2, "1,200 bytes do not fit in 1,000");
        kept.clear();
        assert!(kept.get(ids[2], 400).is_none());
        assert!(Kept::new(0).is_none());
    }
}
