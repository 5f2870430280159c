//! The writer thread: takes queued jobs in order and appends their records.
//!
//! One thread, so records reach the log in the order their jobs were
//! queued: a delete record always follows the record it voids, and
//! precedes a later write of the same key.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::log::Segment;
use super::{lock, record, Shared};
use crate::tensor::Tensor;

/// Something for the writer to do.
#[derive(Debug)]
pub(crate) enum Job {
    /// Write the tensor RAM evicted, if the index still has entry `serial`.
    Write {
        key: Arc<str>,
        serial: u64,
        tensor: Tensor,
    },
    /// Record that `key`, whose record is in `segment`, was deleted.
    Delete { key: Arc<str>, segment: u64 },
}

/// The jobs waiting, and what flush waits on.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    jobs: VecDeque<Job>,
    /// Payload bytes of the queued writes.
    pub(crate) bytes: u64,
    /// Jobs ever queued, and finished.
    pub(crate) pushed: u64,
    pub(crate) finished: u64,
    /// Set when the tier is dropped: finish the queue, then exit.
    pub(crate) stop: bool,
}

impl Queue {
    pub(crate) fn push(&mut self, job: Job) {
        if let Job::Write { tensor, .. } = &job {
            self.bytes += tensor.data().len() as u64;
        }
        self.jobs.push_back(job);
        self.pushed += 1;
    }
}

/// The writer thread's loop.
pub(crate) fn run(s: &Shared) {
    loop {
        let job = {
            let mut queue = lock(&s.queue);
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                if queue.stop {
                    return;
                }
                queue = s
                    .work
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let written = match &job {
            Job::Write {
                key,
                serial,
                tensor,
            } => {
                write(s, key, *serial, tensor);
                tensor.data().len() as u64
            }
            Job::Delete { key, segment } => {
                delete(s, key, *segment);
                0
            }
        };
        // The job's tensor is let go of before its bytes leave the queue's
        // count, so the count bounds what the queue really holds.
        drop(job);
        let mut queue = lock(&s.queue);
        queue.bytes -= written;
        queue.finished += 1;
        drop(queue);
        s.progress.notify_all();
    }
}

/// Forgets the index entries of a segment being deleted.
fn reclaimed(s: &Shared) -> impl FnMut(u64, Segment) + '_ {
    move |id, segment| {
        for (key, offset) in &segment.keys {
            if s.index.reclaim(key, id, *offset) {
                s.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Stops all further writes after a failure, saying so once.
fn fail(s: &Shared, e: &std::io::Error) {
    if s.writable.swap(false, Ordering::Relaxed) {
        tracing::error!(dir = %s.dir.display(), error = %e, "the disk tier stopped writing; serving from RAM and what is on disk");
    }
}

fn write(s: &Shared, key: &Arc<str>, serial: u64, tensor: &Tensor) {
    let wanted = s.index.get(key).is_some_and(|slot| slot.serial == serial);
    if !wanted {
        // Deleted while queued: nothing was written, nothing to void.
        return;
    }
    if !s.writable.load(Ordering::Relaxed) {
        s.index.remove_if_same(key, serial);
        s.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let digest = tensor.digest();
    let head = record::tensor_head(key, tensor, digest);
    let appended = lock(&s.log).append(Some(key), &head, tensor.data(), &mut reclaimed(s));
    match appended {
        Ok(Some(loc)) => {
            s.writes.fetch_add(1, Ordering::Relaxed);
            let segment = loc.segment;
            if !s.index.written(key, serial, loc, head.len() as u32, digest) {
                // Deleted while it was being written: void the record.
                delete(s, key, segment);
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

/// Appends a delete record for `key`; if that fails, deletes the segment
/// holding its tensor, so that a restart cannot bring the tensor back.
fn delete(s: &Shared, key: &Arc<str>, segment: u64) {
    let mut log = lock(&s.log);
    if s.writable.load(Ordering::Relaxed) {
        match log.append(None, &record::delete_head(key), &[], &mut reclaimed(s)) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => fail(s, &e),
        }
    }
    log.drop_segment(segment, &mut reclaimed(s));
}
