//! Buffers for disk reads, used again once the tensor read is dropped.
//!
//! A fresh large allocation faults on every page it is written into (and,
//! on glibc with its mmap threshold pinned, see `src/alloc.rs`, is unmapped
//! when freed): a 1 MiB read from disk could pay 256 page faults before its
//! copy. Buffers of at least [`POOLED_FROM`]
//! bytes come from here instead, and go back when the last `Bytes` of the
//! tensor read into them is dropped, up to [`POOL_LIMIT`] bytes kept.

use std::sync::{Arc, Mutex, PoisonError};

/// Buffers smaller than this are plain allocations (cheap from the heap).
pub(crate) const POOLED_FROM: usize = 128 * 1024;

/// The most bytes of idle buffers kept.
pub(crate) const POOL_LIMIT: usize = 64 << 20;

/// Idle buffers; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Each buffer's length is its capacity (all of it initialized).
    idle: Mutex<(Vec<Vec<u8>>, usize)>,
}

/// A buffer of exactly `len` readable bytes, returned to its pool on drop.
#[derive(Debug)]
pub(crate) struct Buf {
    buf: Vec<u8>,
    len: usize,
    pool: Option<Arc<Pool>>,
}

impl Pool {
    /// A buffer of `len` bytes: an idle one of at least `len` and at most
    /// twice that, or a new one.
    pub(crate) fn take(self: &Arc<Pool>, len: usize) -> Buf {
        if len < POOLED_FROM {
            return Buf {
                buf: vec![0; len],
                len,
                pool: None,
            };
        }
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let found = idle
                .0
                .iter()
                .position(|b| b.len() >= len && b.len() / 2 <= len);
            found.map(|i| {
                let buf = idle.0.swap_remove(i);
                idle.1 -= buf.len();
                buf
            })
        };
        Buf {
            buf: reused.unwrap_or_else(|| vec![0; len]),
            len,
            pool: Some(Arc::clone(self)),
        }
    }

    fn give(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.1 + buf.len() <= POOL_LIMIT {
            idle.1 += buf.len();
            idle.0.push(buf);
        }
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsMut<[u8]> for Buf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_and_is_used_again() {
        let pool = Arc::new(Pool::default());
        let first = pool.take(1 << 20);
        let ptr = first.as_ref().as_ptr();
        drop(first);
        let again = pool.take((1 << 20) - 5);
        assert_eq!(again.as_ref().as_ptr(), ptr);
        assert_eq!(again.as_ref().len(), (1 << 20) - 5);
        // Too big for it: a new one.
        assert_ne!(pool.take(3 << 20).as_ref().as_ptr(), ptr);
    }

    #[test]
    fn idle_bytes_are_bounded() {
        let pool = Arc::new(Pool::default());
        let held: Vec<Buf> = (0..100).map(|_| pool.take(1 << 20)).collect();
        drop(held);
        assert!(pool.idle.lock().unwrap().1 <= POOL_LIMIT);
    }
}
