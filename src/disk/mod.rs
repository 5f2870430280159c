//! The disk tier: where tensors evicted from RAM go, and what a restart
//! comes back to.
//!
//! An append-only log of segment files ([`log`]) in one directory, with an
//! index in memory from key to record. The engine hands each tensor it
//! evicts to [`DiskTier::offer`], which queues it for a writer thread and
//! returns at once: eviction and puts never wait on the disk, and a tensor
//! that does not fit in the bounded queue is dropped (and counted). A
//! queued tensor is served from the queue until it is written.
//!
//! Every record carries checksums ([`record`]): a read (`pread`, into a
//! buffer of its own) verifies the whole record (head, key, metadata,
//! payload) before a byte of it is served, and a record that fails is
//! dropped from the index and counted as corrupt, never returned.
//! Recovery ([`recover`]) rebuilds the index from the records' heads,
//! stopping at the first bad head of a segment (the torn tail a crash
//! leaves).
//!
//! A delete voids the key's record in place before it returns (a 4-byte
//! write into the page cache, so a SIGKILL right after cannot undo it), so
//! that a restart does not bring the tensor back; a delete that cannot void
//! it (the disk failed) deletes the whole segment that holds it instead.
//!
//! The directory holds a `LOCK` file, locked while a server uses it; a
//! second server on the same directory is refused.

mod index;
mod log;
mod pool;
mod record;
mod recover;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::striped::StripedCounter;
use crate::tensor::Tensor;
use index::{Index, Slot, Where};
use log::Loc;
use pool::Pool;
use writer::{Job, Queue};

pub use index::PROMOTE_WINDOW;

/// The default bound of the write queue, in bytes (see
/// [`DiskConfig::queue`]).
pub const DEFAULT_QUEUE: u64 = 64 << 20;

/// Bytes of payload being read from disk at once, across all readers; a
/// larger tensor is read alone.
const READING_LIMIT: u64 = 128 << 20;

/// The disk tier's settings.
///
/// ```
/// use redstone::disk::DiskConfig;
/// let cfg = DiskConfig::new("/var/cache/redstone", 100 << 30);
/// assert_eq!(cfg.queue, redstone::disk::DEFAULT_QUEUE);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// The most bytes the segment files occupy, counted in whole 4 KiB
    /// blocks as the file system allocates them.
    pub size: u64,
    /// The most bytes of evicted tensors waiting to be written (each
    /// counted with its key and 320 bytes of entries). Carved out of the RAM
    /// budget: the engine's own limit is the budget minus this, so
    /// RAM-resident and queued tensors together stay within it. One tensor
    /// larger than the whole queue may still wait alone in an empty queue
    /// (the budget is then passed by its excess until it is written).
    pub queue: u64,
}

impl DiskConfig {
    /// A tier of `size` bytes in `dir`, with the default queue.
    pub fn new(dir: impl Into<PathBuf>, size: u64) -> DiskConfig {
        DiskConfig {
            dir: dir.into(),
            size,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// Why a disk tier could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory cannot be created or written.
    #[error("the disk directory {path} is not usable: {source}")]
    Unusable {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error("the disk directory {0} is in use by another server (its LOCK file is locked)")]
    InUse(PathBuf),
    /// Reading the segments back failed.
    #[error("recovering the disk directory {path} failed: {source}")]
    Recovery {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// A snapshot of the disk tier's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Tensors on disk or queued for it.
    pub entries: u64,
    /// Bytes the segment files occupy.
    pub bytes: u64,
    /// The tier's size limit.
    pub limit: u64,
    /// Bytes of tensors queued for writing.
    pub queued_bytes: u64,
    /// Gets that RAM missed and the disk tier answered.
    pub hits: u64,
    /// Gets that RAM missed and the disk tier did not have (or had only a
    /// corrupt record of).
    pub misses: u64,
    /// Tensors read from disk back into RAM (each keeps its disk copy).
    pub promotions: u64,
    /// Tensor records written.
    pub writes: u64,
    /// Tensors RAM evicted that were not written: the queue was full, the
    /// tensor was larger than the tier, or the tier had stopped writing.
    pub dropped_writes: u64,
    /// Records found corrupt or torn, at recovery or on a read.
    pub corrupt: u64,
    /// Tensors removed from disk to make room.
    pub evictions: u64,
    /// Whether the tier still writes (false after a write failed).
    pub writable: bool,
    /// Microseconds the last start spent recovering the index.
    pub recovery_micros: u64,
}

/// What the disk tier has under a key.
#[derive(Debug)]
pub(crate) enum Found {
    /// Still queued for writing: served from memory.
    Queued(Tensor),
    /// On disk: [`DiskTier::read`] fetches it.
    Stored(StoredRef),
}

/// A tensor record on disk, located but not yet read.
#[derive(Debug, Clone)]
pub struct StoredRef {
    key: Arc<str>,
    slot: Slot,
}

impl StoredRef {
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The record's digest.
    pub(crate) fn digest(&self) -> u64 {
        self.slot.digest.unwrap_or_default()
    }

    /// The payload length.
    pub fn len(&self) -> u64 {
        self.slot.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.slot.len == 0
    }
}

/// The disk tier; see the module docs. Dropping it stops the writer thread
/// after the write at hand (what is still queued is lost: call
/// [`flush`](DiskTier::flush) first to keep it) and releases the directory.
#[derive(Debug)]
pub struct DiskTier {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Receives when the writer thread has returned (in a mutex only to be
    /// `Sync`; read once, by `drop`).
    writer_done: Mutex<std::sync::mpsc::Receiver<()>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    limit: u64,
    queue_limit: u64,
    index: Index,
    log: Mutex<log::Log>,
    /// [`log::Log::allocated`], readable without the log's lock (which a
    /// write holds for its whole `pwrite`).
    allocated: Arc<AtomicU64>,
    pool: Arc<Pool>,
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the writer should stop.
    work: Condvar,
    /// Signalled when the writer finished a job.
    progress: Condvar,
    reading: Mutex<u64>,
    read_done: Condvar,
    writable: AtomicBool,
    hits: StripedCounter,
    misses: StripedCounter,
    promotions: AtomicU64,
    writes: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
    recovery_micros: u64,
    /// Held (locked) for the tier's lifetime.
    _lock: File,
}

/// How long dropping the tier waits for the writer to finish the write at
/// hand (a hung disk must not hang the process's exit).
const WRITER_EXIT_WAIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `cfg.dir`, recovering what
    /// an earlier server left there, and starts its writer thread.
    pub fn open(cfg: &DiskConfig) -> Result<DiskTier, DiskError> {
        let dir = cfg.dir.clone();
        let unusable = |source| DiskError::Unusable {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(unusable)?;
        let lock_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))
            .map_err(unusable)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(DiskError::InUse(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(unusable(e)),
        }
        let started = Instant::now();
        let index = Index::default();
        let recovered =
            recover::recover(&dir, &index, cfg.size).map_err(|source| DiskError::Recovery {
                path: dir.clone(),
                source,
            })?;
        let recovery_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let segment_size = (cfg.size / 16).clamp(1 << 20, 256 << 20);
        let mut log = log::Log::new(&dir, cfg.size, segment_size, recovered.segments);
        // Started with a smaller size than last time: the oldest go.
        log.trim(&mut |id, segment| {
            for (key, offset) in &segment.keys {
                index.reclaim(key, id, *offset);
            }
        });
        tracing::info!(
            dir = %dir.display(),
            tensors = index.len(),
            bytes = log.allocated(),
            corrupt = recovered.corrupt,
            ms = recovery_micros / 1000,
            "disk tier recovered"
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            dir,
            limit: cfg.size,
            queue_limit: cfg.queue,
            index,
            allocated: log.allocated_counter(),
            log: Mutex::new(log),
            pool: Arc::default(),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            reading: Mutex::new(0),
            read_done: Condvar::new(),
            writable: AtomicBool::new(true),
            hits: StripedCounter::default(),
            misses: StripedCounter::default(),
            promotions: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            corrupt: AtomicU64::new(recovered.corrupt),
            evictions: AtomicU64::new(0),
            recovery_micros,
            _lock: lock_file,
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("redstone-disk".into())
                .spawn(move || {
                    writer::run(&shared);
                    let _ = done_tx.send(());
                })
                .map_err(|source| DiskError::Unusable {
                    path: cfg.dir.clone(),
                    source,
                })?
        };
        Ok(DiskTier {
            shared,
            writer: Some(writer),
            writer_done: Mutex::new(done_rx),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The write queue's bound (carved out of the RAM budget).
    pub fn queue_limit(&self) -> u64 {
        self.shared.queue_limit
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DiskStats {
        let s = &self.shared;
        DiskStats {
            entries: s.index.len() as u64,
            bytes: s.allocated.load(Ordering::Relaxed),
            limit: s.limit,
            queued_bytes: lock(&s.queue).bytes,
            hits: s.hits.get(),
            misses: s.misses.get(),
            promotions: s.promotions.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            dropped_writes: s.dropped.load(Ordering::Relaxed),
            corrupt: s.corrupt.load(Ordering::Relaxed),
            evictions: s.evictions.load(Ordering::Relaxed),
            writable: s.writable.load(Ordering::Relaxed),
            recovery_micros: s.recovery_micros,
        }
    }

    /// Whether the tier has `key` (queued or on disk).
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.shared.index.contains(key)
    }

    /// The payload length under `key`, if the tier has it.
    pub(crate) fn len_of(&self, key: &str) -> Option<u64> {
        self.shared.index.get(key).map(|s| s.len)
    }

    /// Takes a tensor RAM evicted (`digest`: its digest, if RAM had
    /// computed it), without waiting; on refusal gives it back (for the
    /// caller to drop outside its locks) with the reason. Called under the
    /// engine's lock, which serializes everything that adds disk entries.
    pub(crate) fn offer(
        &self,
        key: Arc<str>,
        tensor: Tensor,
        digest: Option<u64>,
    ) -> Result<(), (Tensor, Refusal)> {
        let s = &self.shared;
        if s.index.contains(&key) {
            // Already on disk (it was promoted from there): nothing to
            // write, and it may be promoted again.
            s.index.unpromote(&key);
            return Err((tensor, Refusal::OnDisk));
        }
        let charge = Job::charge(&key, &tensor);
        if !s.writable.load(Ordering::Relaxed) {
            return Err((tensor, Refusal::NotWritable));
        }
        let mut queue = lock(&s.queue);
        // A tensor larger than the whole queue goes alone, into an empty one.
        if queue.bytes > 0 && queue.bytes.saturating_add(charge) > s.queue_limit {
            return Err((tensor, Refusal::Full));
        }
        let serial = match s.index.insert_queued(&key, tensor, digest) {
            Ok(serial) => serial,
            Err(tensor) => return Err((tensor, Refusal::OnDisk)),
        };
        let wake = queue.push(Job {
            key,
            serial,
            charge,
        });
        drop(queue);
        if wake {
            s.work.notify_one();
        }
        Ok(())
    }

    /// Counts an evicted tensor the tier could not take.
    pub(crate) fn dropped(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits (until `deadline`) until the queue has room for `charge`
    /// bytes; false if the deadline passed or the tier stopped writing.
    pub(crate) fn wait_for_room(&self, charge: u64, deadline: Instant) -> bool {
        let s = &self.shared;
        self.wait_until(deadline, |queue| {
            if !s.writable.load(Ordering::Relaxed) {
                return Some(false);
            }
            let full = queue.bytes > 0 && queue.bytes.saturating_add(charge) > s.queue_limit;
            (!full).then_some(true)
        })
        .unwrap_or(false)
    }

    /// Waits for the writer's progress until `done` says how it ended, or
    /// `deadline` passes (`None`).
    fn wait_until<T>(&self, deadline: Instant, done: impl Fn(&Queue) -> Option<T>) -> Option<T> {
        let s = &self.shared;
        let mut queue = lock(&s.queue);
        loop {
            if let Some(outcome) = done(&queue) {
                return Some(outcome);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            queue.watchers += 1;
            queue = s
                .progress
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            queue.watchers -= 1;
        }
    }

    /// Waits until everything queued before this call is written and the
    /// segments are on stable storage, or `timeout` passes. Returns whether
    /// it finished.
    pub fn flush(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        let target = lock(&s.queue).pushed;
        let written = self.wait_until(Instant::now() + timeout, |queue| {
            (queue.finished >= target).then_some(())
        });
        if written.is_none() {
            return false;
        }
        if let Err(e) = lock(&s.log).sync() {
            tracing::warn!(error = %e, "could not sync the disk tier");
            return false;
        }
        true
    }

    /// What the tier has under `key`; counts a disk miss if nothing.
    pub(crate) fn lookup(&self, key: &str) -> Option<Found> {
        let s = &self.shared;
        let Some((key, slot)) = s.index.get_with_key(key) else {
            s.misses.incr();
            return None;
        };
        match &slot.at {
            Where::Queued(tensor) => {
                s.hits.incr();
                Some(Found::Queued(tensor.clone()))
            }
            Where::Stored { .. } => Some(Found::Stored(StoredRef { key, slot })),
        }
    }

    /// Reads a located record from disk, blocking, and verifies it. `None`
    /// (counted as corrupt, and the record dropped from the index) if any
    /// check fails or the read does; also returns whether this read should
    /// promote the tensor to RAM ([`PROMOTE_WINDOW`]).
    pub(crate) fn read(&self, stored: &StoredRef) -> (Option<Tensor>, bool) {
        let s = &self.shared;
        let Where::Stored { loc, head_len } = &stored.slot.at else {
            return (None, false);
        };
        let len = stored.slot.len;
        let _reading = self.reading(len);
        let read = record::read(
            loc,
            *head_len,
            &stored.key,
            len,
            stored.slot.digest.unwrap_or_default(),
            &s.pool,
        );
        match read {
            Ok(tensor) => {
                s.hits.incr();
                let promote = stored.slot.hit(crate::engine::unix_micros());
                (Some(tensor), promote)
            }
            Err(_) if !self.still(stored) => {
                // Deleted (voided) or replaced while it was read: a miss.
                s.misses.incr();
                (None, false)
            }
            Err(why) => {
                tracing::warn!(key = %stored.key, segment = loc.segment, offset = loc.offset, %why, "a disk record failed its checks; dropped");
                s.corrupt.fetch_add(1, Ordering::Relaxed);
                s.misses.incr();
                // Voided too, so that a restart does not bring it back
                // under a key deleted since.
                if s.index.remove_if_same(&stored.key, stored.slot.serial) {
                    writer::void_record(s, loc);
                }
                (None, false)
            }
        }
    }

    /// Counts a tensor read from disk and taken into RAM.
    pub(crate) fn promoted(&self) {
        self.shared.promotions.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the record `stored` names is still the key's (it was not
    /// deleted or replaced meanwhile).
    pub(crate) fn still(&self, stored: &StoredRef) -> bool {
        self.shared
            .index
            .get(&stored.key)
            .is_some_and(|s| s.serial == stored.slot.serial)
    }

    /// The digest of the tensor under `key` (computed for a queued one:
    /// call it outside locks), and which entry it is, for
    /// [`remove`](DiskTier::remove).
    pub(crate) fn digest(&self, key: &str) -> Option<(u64, u64)> {
        self.shared.index.digest(key)
    }

    /// Lets a record chosen for promotion be promoted again (RAM refused it).
    pub(crate) fn unpromote(&self, stored: &StoredRef) {
        self.shared.index.unpromote(&stored.key);
    }

    /// Removes `key`: any entry, or only one whose digest is known to be
    /// `digest`. Returns whether it did, and what [`void`](DiskTier::void)
    /// must finish once the engine's lock is let go (it is called under it).
    pub(crate) fn remove(&self, key: &str, digest: Option<u64>) -> (bool, Option<Voiding>) {
        let taken = match digest {
            None => self.shared.index.take(key, None),
            Some(digest) => self.shared.index.take_if_digest(key, digest),
        };
        match taken {
            None => (false, None),
            Some(slot) => match slot.at {
                Where::Stored { loc, .. } => (true, Some(Voiding::Record(loc))),
                // The writer may be writing it right now: it voids what it
                // wrote for an entry gone meanwhile; the delete waits for
                // that. The tensor is freed outside the engine's lock.
                Where::Queued(tensor) => (true, Some(Voiding::Queued(slot.serial, tensor))),
            },
        }
    }

    /// Finishes a removal (see the module docs): voids the record on disk,
    /// or waits until the writer is done with the entry. Either way, when
    /// this returns, no live record of the removed entry is on disk.
    pub(crate) fn void(&self, voiding: Voiding) {
        match voiding {
            Voiding::Record(loc) => writer::void_record(&self.shared, &loc),
            Voiding::Queued(serial, tensor) => {
                drop(tensor);
                let s = &self.shared;
                let mut queue = lock(&s.queue);
                while queue.writing == Some(serial) {
                    queue.watchers += 1;
                    queue = s
                        .progress
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue.watchers -= 1;
                }
            }
        }
    }

    /// Holds `len` bytes of the read budget until dropped.
    fn reading(&self, len: u64) -> Reading<'_> {
        let s = &self.shared;
        let len = len.min(READING_LIMIT);
        let mut reading = lock(&s.reading);
        while *reading > 0 && *reading + len > READING_LIMIT {
            reading = s
                .read_done
                .wait(reading)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *reading += len;
        Reading { shared: s, len }
    }
}

struct Reading<'a> {
    shared: &'a Shared,
    len: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        *lock(&self.shared.reading) -= self.len;
        self.shared.read_done.notify_all();
    }
}

/// What queueing `tensor` under `key` counts against the write queue's
/// bound.
pub(crate) fn queue_charge(key: &str, tensor: &Tensor) -> u64 {
    Job::charge(key, tensor)
}

/// What is left of a removal once the engine's lock is let go.
#[derive(Debug)]
pub(crate) enum Voiding {
    /// Void this record.
    Record(Loc),
    /// The entry was queued (its serial and tensor): wait for the writer if
    /// it is writing it.
    Queued(u64, Tensor),
}

/// Why the tier did not take an evicted tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It has the key already.
    OnDisk,
    /// The queue is full.
    Full,
    /// It stopped writing.
    NotWritable,
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.work.notify_all();
        // The writer finishes the write at hand; what is still queued is
        // dropped (a shutdown flushes first, within its grace period). A
        // writer stuck on a hung disk is left behind after a while.
        let done = self
            .writer_done
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let exited = done.recv_timeout(WRITER_EXIT_WAIT).is_ok();
        match self.writer.take() {
            Some(writer) if exited => {
                let _ = writer.join();
                if let Err(e) = lock(&self.shared.log).sync() {
                    tracing::warn!(error = %e, "could not sync the disk tier");
                }
            }
            _ => tracing::warn!("the disk writer did not stop; leaving it"),
        }
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
pub(crate) mod tests;
