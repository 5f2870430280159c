//! The writer thread: takes queued tensors in order and appends their
//! records.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::log::{Loc, Segment};
use super::{lock, record, Shared};
use crate::tensor::Tensor;

/// What a queued write is charged against the queue's bound besides its
/// payload: its key and the entries it holds in the queue and the index
/// (the engine charges a RAM entry the same).
pub(crate) const QUEUED_OVERHEAD: u64 = crate::engine::ENTRY_OVERHEAD;

/// A tensor RAM evicted, to be written if the index still has it queued
/// as entry `serial` of `key` (the tensor itself waits in the index, where
/// gets find it).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) key: Arc<str>,
    pub(crate) serial: u64,
    /// What it holds, as counted against the queue's bound.
    pub(crate) charge: u64,
}

impl Job {
    /// What queueing `tensor` under `key` holds: its payload, its key, and
    /// its entries.
    pub(crate) fn charge(key: &str, tensor: &Tensor) -> u64 {
        tensor.data().len() as u64 + key.len() as u64 + QUEUED_OVERHEAD
    }
}

/// Payloads up to this size are written with their head in one `pwrite`.
const SMALL: usize = 64 << 10;

/// The jobs waiting, and what flush waits on.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    jobs: VecDeque<Job>,
    /// The queued jobs' [`Job::charge`]s.
    pub(crate) bytes: u64,
    /// Jobs ever queued, and finished.
    pub(crate) pushed: u64,
    pub(crate) finished: u64,
    /// Set when the tier is dropped: stop after the job at hand.
    pub(crate) stop: bool,
    /// The writer is waiting for work (and has not been woken since).
    idle: bool,
    /// Threads waiting for the writer's progress (flush, persist, deletes).
    pub(crate) watchers: usize,
    /// The serial of the entry being written, if any.
    pub(crate) writing: Option<u64>,
}

impl Queue {
    /// Queues `job`; returns whether the writer must be woken (it was
    /// idle), so that a busy writer costs the caller no system call.
    #[must_use]
    pub(crate) fn push(&mut self, job: Job) -> bool {
        self.bytes += job.charge;
        self.jobs.push_back(job);
        self.pushed += 1;
        std::mem::take(&mut self.idle)
    }
}

/// The writer thread's loop.
pub(crate) fn run(s: &Shared) {
    loop {
        let job = {
            let mut queue = lock(&s.queue);
            loop {
                if queue.stop {
                    return;
                }
                if let Some(job) = queue.jobs.pop_front() {
                    queue.writing = Some(job.serial);
                    break job;
                }
                queue.idle = true;
                queue = s
                    .work
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                queue.idle = false;
            }
        };
        // The tensor leaves the index (written, or dropped) before its bytes
        // leave the queue's count, so the count bounds what is really held.
        write(s, &job.key, job.serial);
        let mut queue = lock(&s.queue);
        queue.bytes -= job.charge;
        queue.finished += 1;
        queue.writing = None;
        let watched = queue.watchers > 0;
        drop(queue);
        if watched {
            s.progress.notify_all();
        }
    }
}

/// Forgets the index entries of a segment being deleted.
pub(crate) fn reclaimed(s: &Shared) -> impl FnMut(u64, Segment) + '_ {
    move |id, segment| {
        for (key, offset) in &segment.keys {
            if s.index.reclaim(key, id, *offset) {
                s.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Stops all further writes after a failure, saying so once.
pub(crate) fn fail(s: &Shared, e: &std::io::Error) {
    if s.writable.swap(false, Ordering::Relaxed) {
        tracing::error!(dir = %s.dir.display(), error = %e, "the disk tier stopped writing; serving from RAM and what is on disk");
    }
}

fn write(s: &Shared, key: &Arc<str>, serial: u64) {
    let Some(tensor) = s.index.queued(key, serial) else {
        // Deleted while queued: nothing was written, nothing to void.
        return;
    };
    let tensor = &tensor;
    if !s.writable.load(Ordering::Relaxed) {
        s.index.remove_if_same(key, serial);
        s.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let digest = tensor.digest();
    let mut head = record::tensor_head(key, tensor, digest);
    let head_len = head.len() as u32;
    let mut payload: &[u8] = tensor.data();
    if payload.len() <= SMALL {
        // One write instead of two.
        head.extend_from_slice(payload);
        payload = &[];
    }
    let appended = lock(&s.log).append(key, &head, payload, &mut reclaimed(s));
    match appended {
        Ok(Some(loc)) => {
            s.writes.fetch_add(1, Ordering::Relaxed);
            let void = loc.clone();
            if !s.index.written(key, serial, loc, head_len, digest) {
                // Deleted while it was being written: void the record.
                void_record(s, &void);
            }
        }
        Ok(None) => {
            s.index.remove_if_same(key, serial);
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            fail(s, &e);
            s.index.remove_if_same(key, serial);
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Voids the record at `loc` (a delete); if that fails, deletes its whole
/// segment, so that a restart cannot bring the tensor back.
pub(crate) fn void_record(s: &Shared, loc: &Loc) {
    if let Err(e) = record::void(&loc.file, loc.offset) {
        tracing::error!(segment = loc.segment, error = %e, "cannot void a deleted tensor's disk record; deleting its segment");
        lock(&s.log).drop_segment(loc.segment, &mut reclaimed(s));
    }
}
