//! The cache engine: a concurrent index beside a byte budget and an
//! approximate-LRU eviction order.
//!
//! # Eviction policy (CLOCK, also called second-chance FIFO)
//! Entries sit in a list ordered by admission. A get only sets the entry's
//! atomic `referenced` bit, under a shared read lock of one index shard, so
//! readers never queue behind each other or behind writers on other shards.
//! When a put needs room, it looks at the oldest entry: if its bit is set,
//! the bit is cleared and the entry moves to the front (a second chance);
//! otherwise it is evicted. So an entry read since it last reached the back
//! survives a pass, keys read often stay, and among entries not read lately
//! the oldest goes first. After a full pass without finding a victim (every
//! entry re-read meanwhile) the oldest is evicted regardless, so a put
//! always terminates.
//!
//! # Budget
//! A stored tensor is charged [`Engine::charge`]: its payload (in whole
//! pages when large, as the allocator maps it), its key, its shape and a
//! fixed [`ENTRY_OVERHEAD`] for the index slot, list node and allocation
//! headers. `benches/memory.py` measures the real footprint against it.
//! A delete's tombstone (see `tombstones`) is charged its key plus
//! [`TOMBSTONE_OVERHEAD`]; tombstones together hold at most 1/16 of the
//! budget. `memory_used` only changes under the eviction lock, and a put
//! evicts before it adds, so `memory_used ≤ memory_limit` holds at every
//! instant, whatever number of threads put at once.
//!
//! The engine charges the payload's length. A `Bytes` sliced out of a larger
//! buffer keeps all of that buffer alive, so the front ends hand the engine
//! payloads that own exactly-sized allocations ([`Tensor::compacted`]).

mod clock;
mod tombstones;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use dashmap::DashMap;

use crate::disk::{DiskStats, DiskTier, Found, Refusal, StoredRef};
use crate::stats::{Counters, Stats};
use crate::striped::StripedCounter;
use crate::tensor::codec::Encoding;
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;
use crate::Error;
use clock::{ClockList, NodeId};
use tombstones::Tombstones;
pub use tombstones::TOMBSTONE_OVERHEAD;

/// How long a delete is remembered by default; see [`Engine::with_tombstones`].
pub const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The most tombstones kept by default.
pub const MAX_TOMBSTONES: usize = 1 << 20;

/// Microseconds since the Unix epoch, the clock tombstones and conditional
/// puts are compared on (0 if the clock is before 1970). Microseconds, so
/// that a put sent right after a delete (a loopback round trip later)
/// already counts as after it.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The largest budget an engine takes (1 EiB); a larger one is capped, so
/// that no sum of charges near it can overflow.
pub const MAX_BUDGET: u64 = 1 << 60;

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 4096;

/// The fixed part of every entry's charge, in bytes: the index slot, the
/// list node, the shared reference count of the payload and the allocator's
/// headers for the key, shape and payload allocations.
pub const ENTRY_OVERHEAD: u64 = 320;

pub use crate::alloc::payload_footprint;

/// Lock shards of the index. A get takes its shard's read lock, which
/// writes the lock's cache line; with DashMap's default (4 × cores) two
/// readers on two cores meet on the same line often enough to cost a third
/// of the second core's throughput (measured by `cargo bench --bench
/// engine`, `get_throughput`).
const INDEX_SHARDS: usize = 256;

/// The in-memory tensor cache. Cheap to clone: clones share one cache.
///
/// ```
/// use redstone::engine::Engine;
/// use redstone::tensor::Tensor;
///
/// let cache = Engine::new(1 << 20);
/// cache.put("w", Tensor::from_slice::<f32>(vec![3], &[1.0, 2.0, 3.0])?)?;
/// let got = cache.get("w")?.expect("just stored");
/// assert_eq!(got.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
/// assert!(cache.put("w", got).is_err()); // keys are put-once
/// assert!(cache.delete("w")?);
/// # Ok::<(), redstone::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Key → entry. Gets only take a shard's read lock here.
    index: DashMap<Arc<str>, Entry>,
    /// The eviction order. Every change to the set of entries (put, delete,
    /// evict) happens under this lock, which keeps the index, the list and
    /// `memory_used` consistent. A std mutex: it is never held across an
    /// `.await`, and the work under it is O(1) per entry touched.
    order: Mutex<ClockList>,
    /// Recent deletes. Locked only while `order` is held, after it.
    tombstones: Mutex<Tombstones>,
    /// Bytes charged; written only under `order`, read lock-free by stats.
    memory_used: AtomicU64,
    memory_limit: u64,
    hits: StripedCounter,
    misses: StripedCounter,
    /// Written only under `order`.
    evictions: AtomicU64,
    /// Where evicted tensors go, if anywhere.
    disk: Option<DiskTier>,
}

/// Which disk entry a delete removes.
#[derive(Debug, Clone, Copy)]
enum DiskVictim {
    /// Whatever the disk tier has under the key.
    Any,
    /// Only one whose digest is known to be this.
    Digest(u64),
}

/// What a [`lookup`](Engine::lookup) found.
#[derive(Debug)]
pub enum Lookup {
    /// The tensor, from RAM (or from the disk tier's write queue).
    Found(Tensor),
    /// The tensor is on disk: [`DiskRead::read`] fetches it (blocking).
    OnDisk(DiskRead),
    /// Neither tier has the key.
    Missing,
}

/// A tensor located on disk by [`Engine::lookup`], not yet read.
#[derive(Debug)]
pub struct DiskRead {
    engine: Engine,
    stored: StoredRef,
}

impl DiskRead {
    /// The payload length.
    pub fn len(&self) -> u64 {
        self.stored.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.stored.is_empty()
    }

    /// Reads the tensor (blocking on the disk: call it off an async
    /// runtime's workers) and checks every byte of its record; `None` if
    /// the record was bad (counted, and dropped from the tier). A second
    /// read of a key within [`PROMOTE_WINDOW`](crate::disk::PROMOTE_WINDOW)
    /// promotes it back to RAM.
    pub fn read(self) -> Option<Tensor> {
        let Some(disk) = &self.engine.shared.disk else {
            return None;
        };
        let (tensor, promote) = disk.read(&self.stored);
        let tensor = tensor?;
        if promote && !self.engine.promote(&self.stored, &tensor) {
            disk.unpromote(&self.stored);
        }
        Some(tensor)
    }
}

#[derive(Debug)]
struct Entry {
    tensor: Tensor,
    /// What this entry added to `memory_used`.
    charge: u64,
    /// Where the key sits in the eviction order.
    node: NodeId,
    /// Set by gets, cleared when the entry is given a second chance.
    referenced: AtomicBool,
    /// The tensor's digest, computed on first request. Its `Arc` also
    /// tells this entry from a later one under the same key.
    digest: Arc<OnceLock<u64>>,
}

impl Engine {
    /// An empty cache with a budget of `memory_limit` bytes (at most
    /// [`MAX_BUDGET`]).
    pub fn new(memory_limit: u64) -> Engine {
        Engine::with_tombstones(memory_limit, TOMBSTONE_TTL, MAX_TOMBSTONES)
    }

    /// An empty cache that remembers each delete for `ttl` (at most `max`
    /// of them; 0 remembers none), so that a conditional put
    /// ([`Engine::put_if`]) begun before the delete is refused.
    pub fn with_tombstones(memory_limit: u64, ttl: std::time::Duration, max: usize) -> Engine {
        Engine::build(memory_limit, ttl, max, None)
    }

    /// An empty cache over a disk tier: tensors evicted from RAM go to
    /// `disk` instead of being dropped, and what `disk` already holds (from
    /// an earlier server) is served. The disk tier's write queue is carved
    /// out of `memory_limit`: the engine's own budget is the rest, so that
    /// RAM and the queue together stay within `memory_limit`.
    ///
    /// ```
    /// use redstone::disk::{DiskConfig, DiskTier};
    /// use redstone::engine::{Engine, TOMBSTONE_TTL, MAX_TOMBSTONES};
    /// use redstone::tensor::Tensor;
    ///
    /// let dir = std::env::temp_dir().join(format!("redstone-doc-{}", std::process::id()));
    /// let disk = DiskTier::open(&DiskConfig { queue: 1 << 20, ..DiskConfig::new(&dir, 64 << 20) })?;
    /// let cache = Engine::with_disk(4 << 20, TOMBSTONE_TTL, MAX_TOMBSTONES, disk);
    /// for i in 0..8 {
    ///     // 8 MiB of tensors through a 3 MiB RAM tier: the rest spills.
    ///     cache.put(&format!("t{i}"), Tensor::from_slice::<u8>(vec![1 << 20], &vec![i; 1 << 20])?)?;
    /// }
    /// cache.flush_disk(std::time::Duration::from_secs(10));
    /// assert_eq!(cache.get("t0")?.expect("read back from disk").data()[0], 0);
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_disk(
        memory_limit: u64,
        ttl: std::time::Duration,
        max: usize,
        disk: DiskTier,
    ) -> Engine {
        let ram = memory_limit.saturating_sub(disk.queue_limit());
        Engine::build(ram, ttl, max, Some(disk))
    }

    fn build(
        memory_limit: u64,
        ttl: std::time::Duration,
        max: usize,
        disk: Option<DiskTier>,
    ) -> Engine {
        let memory_limit = memory_limit.min(MAX_BUDGET);
        Engine {
            shared: Arc::new(Shared {
                index: DashMap::with_shard_amount(INDEX_SHARDS),
                order: Mutex::new(ClockList::new()),
                // Tombstones may hold up to 1/16 of the budget.
                tombstones: Mutex::new(Tombstones::new(ttl, max, memory_limit / 16)),
                memory_used: AtomicU64::new(0),
                memory_limit,
                hits: StripedCounter::default(),
                misses: StripedCounter::default(),
                evictions: AtomicU64::new(0),
                disk,
            }),
        }
    }

    /// The bytes of budget a tensor stored under `key` is charged: its
    /// payload as the allocator holds it ([`payload_footprint`]), plus the
    /// key, 8 per dimension and [`ENTRY_OVERHEAD`].
    ///
    /// It depends only on the key and the metadata, so a front end can
    /// check it before receiving the payload.
    ///
    /// Saturating: a claimed size near `u64::MAX` is charged `u64::MAX`,
    /// which no budget admits.
    pub fn charge(key: &str, meta: &TensorMeta) -> u64 {
        Engine::charge_stored(key, meta, meta.byte_size())
    }

    /// [`charge`](Engine::charge) for a payload held in `stored_len` bytes
    /// (an encoded tensor is charged what it holds, not its raw size).
    pub fn charge_stored(key: &str, meta: &TensorMeta, stored_len: u64) -> u64 {
        payload_footprint(stored_len)
            .saturating_add(key.len() as u64)
            .saturating_add(8 * meta.shape().len() as u64)
            .saturating_add(ENTRY_OVERHEAD)
    }

    /// Everything a put of a `payload_len`-byte tensor described by `meta`
    /// under `key` can be refused for before the payload exists: an invalid
    /// key, a length that is not the metadata's byte size, a charge over
    /// the whole budget, a key already cached. Returns the charge.
    ///
    /// [`put`](Engine::put) runs this same check; a front end runs it
    /// before receiving a payload, so that a refused one is never read into
    /// memory.
    ///
    /// ```
    /// use redstone::engine::Engine;
    /// use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
    ///
    /// let cache = Engine::new(1 << 20);
    /// let meta = TensorMeta::new(DType::F32, vec![4], StorageLayout::RowMajor)?;
    /// assert!(cache.admit("w", &meta, 16).is_ok());
    /// assert!(cache.admit("w", &meta, 15).is_err()); // 4 × f32 is 16 bytes
    /// # Ok::<(), redstone::Error>(())
    /// ```
    pub fn admit(&self, key: &str, meta: &TensorMeta, payload_len: u64) -> Result<u64, Error> {
        self.admit_encoded(key, meta, Encoding::Raw, payload_len)
    }

    /// [`admit`](Engine::admit) for a payload of `payload_len` bytes in
    /// `encoding`: an encoded payload may be at most a few bytes per block
    /// longer than the raw tensor, and is charged its own length.
    pub fn admit_encoded(
        &self,
        key: &str,
        meta: &TensorMeta,
        encoding: Encoding,
        payload_len: u64,
    ) -> Result<u64, Error> {
        let needed = self.admissible(key, meta, encoding, payload_len)?;
        if self.contains(key) {
            return Err(Error::AlreadyExists(key.to_owned()));
        }
        Ok(needed)
    }

    /// [`admit`](Engine::admit) but for the key being cached, which `put`
    /// checks under its lock.
    fn admissible(
        &self,
        key: &str,
        meta: &TensorMeta,
        encoding: Encoding,
        payload_len: u64,
    ) -> Result<u64, Error> {
        validate_key(key)?;
        if !encoding.fits(meta, payload_len) {
            return Err(Error::InvalidSize {
                expected: meta.byte_size(),
                actual: payload_len,
            });
        }
        let needed = Engine::charge_stored(key, meta, payload_len);
        let limit = self.shared.memory_limit;
        if needed > limit {
            return Err(Error::OutOfMemory { needed, limit });
        }
        Ok(needed)
    }

    /// The byte budget.
    pub fn memory_limit(&self) -> u64 {
        self.shared.memory_limit
    }

    /// Returns the tensor under `key`, marking it recently used. The payload
    /// is shared with the cache (a reference-count bump, no copy).
    ///
    /// With a disk tier, a key RAM does not have is read from disk, which
    /// blocks: an async front end calls [`lookup`](Engine::lookup) and reads
    /// off its runtime's workers.
    pub fn get(&self, key: &str) -> Result<Option<Tensor>, Error> {
        Ok(match self.lookup(key)? {
            Lookup::Found(tensor) => Some(tensor),
            Lookup::OnDisk(read) => read.read(),
            Lookup::Missing => None,
        })
    }

    /// Finds `key` in RAM (counting a hit and marking it used), else in
    /// the disk tier, without reading the disk: see [`Lookup`].
    pub fn lookup(&self, key: &str) -> Result<Lookup, Error> {
        let ram = self.get_ram(key)?;
        if let Some(tensor) = ram {
            return Ok(Lookup::Found(tensor));
        }
        let Some(disk) = &self.shared.disk else {
            return Ok(Lookup::Missing);
        };
        Ok(match disk.lookup(key) {
            Some(Found::Queued(tensor)) => Lookup::Found(tensor),
            Some(Found::Stored(stored)) => Lookup::OnDisk(DiskRead {
                engine: self.clone(),
                stored,
            }),
            None => Lookup::Missing,
        })
    }

    /// The RAM tier's part of a get: hits are counted here, misses (of
    /// both tiers) too.
    fn get_ram(&self, key: &str) -> Result<Option<Tensor>, Error> {
        validate_key(key)?;
        let found = self.shared.index.get(key).map(|entry| {
            // Load before store: a hot key's cache line stays shared
            // between cores instead of being written on every hit.
            if !entry.referenced.load(Ordering::Relaxed) {
                entry.referenced.store(true, Ordering::Relaxed);
            }
            entry.tensor.clone()
        });
        match found {
            Some(_) => self.shared.hits.incr(),
            None => self.shared.misses.incr(),
        }
        Ok(found)
    }

    /// Brings a copy of a tensor read from disk into RAM (the read's own
    /// buffer goes back to the disk tier's pool), unless RAM cannot hold it,
    /// has the key already, or its record was deleted or replaced meanwhile
    /// (checked again under the eviction lock, which deletes also hold).
    /// The record stays on disk.
    /// Returns whether it did.
    fn promote(&self, stored: &StoredRef, tensor: &Tensor) -> bool {
        let Some(disk) = &self.shared.disk else {
            return false;
        };
        let key = stored.key();
        let Ok(charge) = self.admissible(
            key,
            tensor.meta(),
            tensor.encoding(),
            tensor.data().len() as u64,
        ) else {
            return false;
        };
        if self.shared.index.contains_key(key) || !disk.still(stored) {
            return false;
        }
        // Copied only once it may go in, outside the lock.
        let copy = tensor.clone().compacted();
        let evicted;
        {
            let mut order = self.lock_order();
            if self.shared.index.contains_key(key) || !disk.still(stored) {
                return false;
            }
            let mut stones = self.lock_tombstones();
            evicted = self.make_room(&mut order, &mut stones, charge);
            drop(stones);
            // Its digest is the record's: a delete_if can match it unhashed.
            let digest = Arc::new(OnceLock::from(stored.digest()));
            self.admit_entry(&mut order, Arc::from(key), copy, charge, digest);
        }
        disk.promoted();
        drop(evicted);
        true
    }

    /// Counters of the disk tier, if there is one.
    pub fn disk_stats(&self) -> Option<DiskStats> {
        self.shared.disk.as_ref().map(DiskTier::stats)
    }

    /// Waits (up to `timeout`) until the tensors queued for the disk tier
    /// are written and synced; true if there is no disk tier. For tests and
    /// shutdown.
    pub fn flush_disk(&self, timeout: std::time::Duration) -> bool {
        self.shared.disk.as_ref().is_none_or(|d| d.flush(timeout))
    }

    /// Writes every tensor in RAM that the disk tier does not have to it,
    /// waiting for the writer as needed, then flushes; gives up at
    /// `deadline`. Returns how many tensors were queued (0 without a disk
    /// tier). For a shutdown that should come back warm.
    pub fn persist(&self, deadline: std::time::Instant) -> usize {
        let Some(disk) = &self.shared.disk else {
            return 0;
        };
        type Held = (Arc<str>, Tensor, Arc<OnceLock<u64>>);
        let entries: Vec<Held> = self
            .shared
            .index
            .iter()
            .map(|e| (Arc::clone(e.key()), e.tensor.clone(), Arc::clone(&e.digest)))
            .collect();
        let mut queued = 0;
        'entries: for (key, tensor, cell) in entries {
            let room = crate::disk::queue_charge(&key, &tensor);
            loop {
                // Room first, without the lock; then queue it under the
                // lock, if it is still the entry it was (not deleted since).
                if !disk.wait_for_room(room, deadline) {
                    break 'entries;
                }
                let _order = self.lock_order();
                let same = self
                    .shared
                    .index
                    .get(&key)
                    .is_some_and(|e| Arc::ptr_eq(&e.digest, &cell));
                if !same {
                    continue 'entries;
                }
                match disk.offer(Arc::clone(&key), tensor.clone(), cell.get().copied()) {
                    Ok(()) => queued += 1,
                    // Another write took the room meanwhile: wait again.
                    Err((_, Refusal::Full)) => continue,
                    Err((_, Refusal::OnDisk)) => {}
                    Err((_, Refusal::NotWritable)) => break 'entries,
                }
                continue 'entries;
            }
        }
        disk.flush(deadline.saturating_duration_since(std::time::Instant::now()));
        queued
    }

    /// The payload length of the tensor under `key`, if cached, without
    /// counting a hit or a miss or marking it used: for a front end that
    /// reserves room before it answers.
    pub fn peek_len(&self, key: &str) -> Option<u64> {
        let ram = self
            .shared
            .index
            .get(key)
            .map(|entry| entry.tensor.data().len() as u64);
        ram.or_else(|| self.shared.disk.as_ref()?.len_of(key))
    }

    /// [`peek_len`](Engine::peek_len), but of the tensor unpacked: its
    /// metadata's byte size (for RAM; a tensor on disk gives its stored
    /// length, which a caller learns is short once it reads the record).
    pub fn peek_raw_len(&self, key: &str) -> Option<u64> {
        let ram = self
            .shared
            .index
            .get(key)
            .map(|entry| entry.tensor.meta().byte_size());
        ram.or_else(|| self.shared.disk.as_ref()?.len_of(key))
    }

    /// The [`Tensor::digest`] of the tensor under `key`, if cached, without
    /// counting a hit or a miss. Computed outside every lock.
    pub fn digest(&self, key: &str) -> Result<Option<u64>, Error> {
        validate_key(key)?;
        Ok(match self.digest_of(key) {
            Some((digest, _)) => Some(digest),
            None => self
                .shared
                .disk
                .as_ref()
                .and_then(|d| d.digest(key))
                .map(|(digest, _)| digest),
        })
    }

    /// The digest of `key`'s entry (computed once per entry, outside every
    /// lock) and the entry's identity.
    fn digest_of(&self, key: &str) -> Option<(u64, Arc<OnceLock<u64>>)> {
        let (tensor, cell) = self
            .shared
            .index
            .get(key)
            .map(|e| (e.tensor.clone(), Arc::clone(&e.digest)))?;
        let digest = *cell.get_or_init(|| tensor.digest());
        Some((digest, cell))
    }

    /// Removes `key` only if the tensor under it has digest `digest`;
    /// returns whether it removed it. A writer that lost a race for a key
    /// takes back its own value this way, never another's. The delete is
    /// remembered (as by [`delete`](Engine::delete)) when it removed the
    /// tensor or the key was absent, so that the writer's own write still
    /// in flight cannot land after it; not when another value is there.
    pub fn delete_if(&self, key: &str, digest: u64) -> Result<bool, Error> {
        validate_key(key)?;
        // Digests are computed outside the lock (and kept: a RAM entry's in
        // its cell, a queued tensor's in its disk entry); under it, only
        // entries whose digest is known to be `digest` are removed: the
        // writer's own value, wherever an eviction or a promotion has moved
        // it meanwhile.
        let ram = self.digest_of(key).map(|(d, _)| d);
        let disk = self
            .shared
            .disk
            .as_ref()
            .and_then(|d| d.digest(key))
            .map(|(d, _)| d);
        if ram.is_some_and(|d| d != digest) || disk.is_some_and(|d| d != digest) {
            return Ok(false);
        }
        Ok(self.bury(
            key,
            Some(&|e: &Entry| e.digest.get() == Some(&digest)),
            DiskVictim::Digest(digest),
        ))
    }

    /// Whether `key` is cached (in RAM or on disk), without counting a hit
    /// or a miss.
    pub fn contains(&self, key: &str) -> bool {
        self.shared.index.contains_key(key)
            || self.shared.disk.as_ref().is_some_and(|d| d.contains(key))
    }

    /// Stores `tensor` under `key`, evicting as needed.
    ///
    /// Fails with [`Error::AlreadyExists`] if the key is cached (nothing is
    /// evicted then), and with [`Error::OutOfMemory`] at once, evicting
    /// nothing, if the tensor's charge exceeds the whole budget.
    pub fn put(&self, key: &str, tensor: Tensor) -> Result<(), Error> {
        self.insert(key, tensor, None)
    }

    /// [`put`](Engine::put), unless `key` was deleted at or after
    /// `since_us` ([`unix_micros`] of when the write began): then
    /// [`Error::Deleted`]. For writes that copy a value which may have
    /// been deleted meanwhile (a cluster's read repair, a put's write that
    /// arrives late). A plain `put` always goes through and clears the
    /// key's tombstone.
    pub fn put_if(&self, key: &str, tensor: Tensor, since_us: u64) -> Result<(), Error> {
        self.insert(key, tensor, Some(since_us))
    }

    fn insert(&self, key: &str, tensor: Tensor, since_us: Option<u64>) -> Result<(), Error> {
        let charge = self.admissible(
            key,
            tensor.meta(),
            tensor.encoding(),
            tensor.data().len() as u64,
        )?;
        let evicted;
        {
            let mut order = self.lock_order();
            // Under the lock, so that of two puts of one key exactly one wins.
            if self.contains(key) {
                return Err(Error::AlreadyExists(key.to_owned()));
            }
            let mut stones = self.lock_tombstones();
            let mut freed = stones.expire(unix_micros());
            if let Some(since) = since_us {
                if stones.deleted_since(key, since) {
                    self.release(freed);
                    return Err(Error::Deleted(key.to_owned()));
                }
            }
            freed += stones.clear(key);
            self.release(freed);
            evicted = self.make_room(&mut order, &mut stones, charge);
            drop(stones);
            self.admit_entry(&mut order, Arc::from(key), tensor, charge, Arc::default());
        }
        // Payloads are freed here, outside the lock.
        drop(evicted);
        Ok(())
    }

    /// Adds an entry at the front of the order (under the eviction lock,
    /// room made).
    fn admit_entry(
        &self,
        order: &mut ClockList,
        key: Arc<str>,
        tensor: Tensor,
        charge: u64,
        digest: Arc<OnceLock<u64>>,
    ) {
        let node = order.push_front(Arc::clone(&key));
        self.shared.index.insert(
            key,
            Entry {
                tensor,
                charge,
                node,
                referenced: AtomicBool::new(false),
                digest,
            },
        );
        self.shared.memory_used.fetch_add(charge, Ordering::Relaxed);
    }

    /// Removes `key`; returns whether it was cached.
    ///
    /// The delete is remembered (a tombstone, charged to the budget) for
    /// the engine's tombstone TTL, whether or not the key was cached, so
    /// that a conditional put begun before it is refused.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        validate_key(key)?;
        Ok(self.bury(key, Some(&|_: &Entry| true), DiskVictim::Any))
    }

    /// Removes `key`'s RAM entry if `remove` accepts it (`None`: none), and
    /// its disk copy as `disk` says, then remembers the delete with a
    /// tombstone unless another entry stays. Returns whether an entry was
    /// removed. A disk record removed is voided on disk before this
    /// returns, outside the lock.
    fn bury(&self, key: &str, remove: Option<&dyn Fn(&Entry) -> bool>, disk: DiskVictim) -> bool {
        let now = unix_micros();
        let (removed, evicted, voiding) = {
            let mut order = self.lock_order();
            let removed = match remove {
                Some(remove) => self.shared.index.remove_if(key, |_, e| remove(e)),
                None => None,
            };
            if let Some((_, entry)) = &removed {
                order.remove(entry.node);
                self.release(entry.charge);
            }
            // Under the eviction lock, which a promotion from disk holds too.
            let (removed_from_disk, voiding) = match (&self.shared.disk, disk) {
                (Some(tier), DiskVictim::Any) => tier.remove(key, None),
                (Some(tier), DiskVictim::Digest(digest)) => tier.remove(key, Some(digest)),
                (None, _) => (false, None),
            };
            let mut evicted = Vec::new();
            let mut stones = self.lock_tombstones();
            self.release(stones.expire(now));
            if !self.contains(key) && stones.can_bury(key) {
                // Stones make room among themselves first; within their
                // share of the budget, tensors give way like for any put.
                self.release(stones.make_room_for(key));
                let charge = Tombstones::charge(key);
                evicted = self.make_room(&mut order, &mut stones, charge);
                let key = removed
                    .as_ref()
                    .map_or_else(|| Arc::from(key), |(k, _)| Arc::clone(k));
                self.shared
                    .memory_used
                    .fetch_add(stones.bury(&key, now), Ordering::Relaxed);
            }
            (removed.is_some() || removed_from_disk, evicted, voiding)
        };
        if let (Some(tier), Some(voiding)) = (&self.shared.disk, voiding) {
            tier.void(voiding);
        }
        // Payloads are freed here, outside the lock.
        drop(evicted);
        removed
    }

    /// Gives back `bytes` of charge (under the eviction lock).
    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.shared.memory_used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn lock_tombstones(&self) -> MutexGuard<'_, Tombstones> {
        self.shared
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats::from(Counters {
            entries: s.index.len() as u64,
            memory_used: s.memory_used.load(Ordering::Relaxed),
            memory_limit: s.memory_limit,
            hits: s.hits.get(),
            misses: s.misses.get(),
            evictions: s.evictions.load(Ordering::Relaxed),
        })
    }

    /// Deletes remembered now (tombstones, see
    /// [`Engine::with_tombstones`]), and the bytes of the budget charged
    /// for them (part of `memory_used`).
    pub fn tombstones(&self) -> (u64, u64) {
        self.lock_tombstones().held()
    }

    fn lock_order(&self) -> MutexGuard<'_, ClockList> {
        // No code under this lock can leave the list half-updated on panic
        // in a way later operations would trip over, so poison is ignored.
        self.shared
            .order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Evicts until `charge` more bytes fit; returns the evicted tensors
    /// the disk tier did not take, so that the caller frees them after
    /// releasing the lock. Tensors go first; once none is left, the oldest
    /// tombstones.
    ///
    /// An evicted tensor is handed to the disk tier here, under the lock,
    /// so that no put of its key can slip in between the two tiers.
    fn make_room(
        &self,
        order: &mut ClockList,
        stones: &mut Tombstones,
        charge: u64,
    ) -> Vec<Tensor> {
        let s = &self.shared;
        let mut evicted = Vec::new();
        // Second chances granted in this call; past one full pass the oldest
        // entry goes whatever its bit says.
        let mut passes_left = order.len();
        while s.memory_used.load(Ordering::Relaxed).saturating_add(charge) > s.memory_limit {
            let Some(id) = order.back() else {
                match stones.drop_oldest() {
                    Some(freed) => {
                        self.release(freed);
                        continue;
                    }
                    None => break,
                }
            };
            let Some(key) = order.key(id).cloned() else {
                break;
            };
            let second_chance = passes_left > 0
                && s.index
                    .get(&key)
                    .is_some_and(|e| e.referenced.swap(false, Ordering::Relaxed));
            if second_chance {
                passes_left -= 1;
                order.move_to_front(id);
                continue;
            }
            order.remove(id);
            if let Some((key, entry)) = s.index.remove(&key) {
                s.memory_used.fetch_sub(entry.charge, Ordering::Relaxed);
                s.evictions.fetch_add(1, Ordering::Relaxed);
                match &s.disk {
                    Some(disk) => {
                        let digest = entry.digest.get().copied();
                        if let Err((tensor, why)) = disk.offer(key, entry.tensor, digest) {
                            if why != Refusal::OnDisk {
                                disk.dropped();
                            }
                            evicted.push(tensor);
                        }
                    }
                    None => evicted.push(entry.tensor),
                }
            }
        }
        evicted
    }
}

/// Checks that `key` is a valid cache key: non-empty and at most
/// [`MAX_KEY_LEN`] bytes. Every operation checks this; front ends may check
/// it early.
pub fn validate_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey("the key is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey(format!(
            "the key is {} bytes, the maximum is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
