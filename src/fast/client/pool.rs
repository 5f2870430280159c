//! Receive buffers kept for reuse by plain `get`s of large tensors.
//!
//! A fresh 64 MiB buffer is thousands of page faults (or, with huge pages,
//! 64 MiB the kernel zeroes) before the first byte lands in it, and it is
//! unmapped again when the caller drops the tensor. A `get` over
//! [`BULK_THRESHOLD`](crate::fast::wire::BULK_THRESHOLD) therefore reads
//! into a buffer from this pool when one of the right size is free; the
//! tensor's `Bytes` owns it, and dropping the last clone gives it back.
//! The pool holds at most its capacity in idle buffers; one that would
//! take it over is freed.

use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Idle receive buffers, up to a byte capacity.
#[derive(Debug)]
pub(super) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: u64,
}

impl BufferPool {
    /// A pool keeping up to `capacity` bytes of idle buffers.
    pub(super) fn new(capacity: u64) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            capacity,
        })
    }

    /// An empty buffer with room for exactly `len` bytes, or nothing when
    /// none is idle. Only a buffer of the same capacity is handed out, so
    /// a small tensor never keeps a large buffer alive.
    pub(super) fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let at = free.iter().position(|b| b.capacity() == len)?;
        Some(free.swap_remove(at))
    }

    /// `buf` as the payload of a `Bytes` that gives it back to `pool` when
    /// its last clone is dropped.
    pub(super) fn lend(pool: &Arc<BufferPool>, buf: Vec<u8>) -> bytes::Bytes {
        bytes::Bytes::from_owner(Lent {
            buf,
            pool: Arc::downgrade(pool),
        })
    }

    /// Bytes of idle buffers held.
    fn held(free: &[Vec<u8>]) -> u64 {
        free.iter().map(|b| b.capacity() as u64).sum()
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let size = buf.capacity() as u64;
        if size > self.capacity {
            return;
        }
        // The oldest idle buffers make room for the newest.
        while !free.is_empty() && BufferPool::held(&free) + size > self.capacity {
            free.remove(0);
        }
        buf.clear();
        free.push(buf);
    }
}

/// A pooled buffer lent to a tensor.
struct Lent {
    buf: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, byte: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        v.resize(len, byte);
        v
    }

    #[test]
    fn a_dropped_tensor_gives_its_buffer_back_for_the_next_of_its_size() {
        let pool = BufferPool::new(10 << 20);
        let bytes = BufferPool::lend(&pool, filled(4 << 20, 1));
        let addr = bytes.as_ptr();
        let clone = bytes.clone();
        drop(bytes);
        assert!(pool.take(4 << 20).is_none(), "a clone still holds it");
        drop(clone);
        assert!(pool.take(3 << 20).is_none(), "only the same size");
        let reused = pool.take(4 << 20).expect("given back");
        assert_eq!((reused.as_ptr(), reused.len()), (addr, 0));
    }

    #[test]
    fn idle_buffers_stay_within_the_capacity() {
        let pool = BufferPool::new(10 << 20);
        let lent: Vec<_> = (0..4)
            .map(|_| BufferPool::lend(&pool, filled(4 << 20, 2)))
            .collect();
        drop(lent);
        let free = pool.free.lock().unwrap();
        assert_eq!(BufferPool::held(&free), 8 << 20, "two of four kept");
        drop(free);
        // Larger than the whole pool: never kept.
        drop(BufferPool::lend(&pool, filled(11 << 20, 3)));
        assert!(pool.take(11 << 20).is_none());
        assert!(pool.take(4 << 20).is_some());
    }

    #[test]
    fn a_buffer_outliving_its_pool_is_simply_freed() {
        let pool = BufferPool::new(10 << 20);
        let bytes = BufferPool::lend(&pool, filled(1 << 20, 4));
        drop(pool);
        assert_eq!(bytes[0], 4);
        drop(bytes);
    }
}
