//! Leases: stored payloads a local client has mapped.
//!
//! A client's mapping keeps a tensor's pages alive after the server evicts
//! it, so those pages are memory outside the cache's budget. The server
//! counts them, bounds them (`--max-leased`) and lets them go when the
//! client says it has dropped the mapping (`RELEASE`) or its connection
//! ends, whichever comes first.
//!
//! A payload mapped by many clients (or many times by one) is counted once:
//! the pages are the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::memfd::key;

/// The most leases one connection holds at once.
pub(crate) const MAX_LEASES_PER_CONNECTION: usize = 4096;

/// The server-wide count of leased payloads.
#[derive(Debug)]
pub(crate) struct Leases {
    limit: u64,
    /// The most leases at once, over all connections: each may be a
    /// descriptor in flight, which the kernel counts against this user's
    /// descriptor limit until the client reads it.
    max_count: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Leases per payload, by (address, length).
    held: HashMap<(usize, usize), u32>,
    bytes: u64,
    /// Leases, however many per payload.
    count: usize,
}

/// Why a lease was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LeaseError {
    /// Granting it would pass `--max-leased`.
    #[error("{leased} bytes are mapped by local clients; this {len}-byte tensor would pass the server's limit of {limit} (--max-leased): drop mapped tensors, or read with get_into")]
    Full {
        /// Bytes leased now.
        leased: u64,
        /// The payload's length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The connection holds [`MAX_LEASES_PER_CONNECTION`] leases.
    #[error("this connection holds {MAX_LEASES_PER_CONNECTION} mapped tensors; drop some first")]
    TooMany,
    /// All connections together hold the most leases the server allows.
    #[error("local clients hold {0} mapped tensors, the most this server passes at once (a quarter of its descriptor limit); drop some, or read with get_into")]
    TooManyInAll(usize),
    /// The lease id is already in use on this connection.
    #[error("lease {0} is already held on this connection")]
    Duplicate(u64),
}

impl Leases {
    /// At most `limit` bytes of distinct payloads, and `max_count` leases,
    /// at once.
    pub(crate) fn new(limit: u64, max_count: usize) -> Arc<Leases> {
        Arc::new(Leases {
            limit,
            max_count,
            state: Mutex::default(),
        })
    }

    /// Bytes of distinct payloads leased now.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire(&self, key: (usize, usize)) -> Result<(), LeaseError> {
        let mut state = self.lock();
        if state.count >= self.max_count {
            return Err(LeaseError::TooManyInAll(state.count));
        }
        if let Some(count) = state.held.get_mut(&key) {
            *count += 1;
            state.count += 1;
            return Ok(());
        }
        let len = key.1 as u64;
        if state.bytes + len > self.limit {
            return Err(LeaseError::Full {
                leased: state.bytes,
                len,
                limit: self.limit,
            });
        }
        state.bytes += len;
        state.count += 1;
        state.held.insert(key, 1);
        Ok(())
    }

    fn release(&self, key: (usize, usize)) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(count) = state.held.get_mut(&key) else {
            return;
        };
        *count -= 1;
        state.count -= 1;
        if *count == 0 {
            state.held.remove(&key);
            state.bytes -= key.1 as u64;
        }
    }
}

/// One connection's leases, by lease id; all released when it is dropped
/// (the connection ended).
#[derive(Debug)]
pub(crate) struct ConnLeases {
    leases: Arc<Leases>,
    /// The payload each lease holds (so its address stays its own).
    held: Mutex<HashMap<u64, Bytes>>,
}

impl ConnLeases {
    pub(crate) fn new(leases: Arc<Leases>) -> ConnLeases {
        ConnLeases {
            leases,
            held: Mutex::default(),
        }
    }

    /// Leases `payload` under `id` (the request id of the GET that maps
    /// it).
    pub(crate) fn grant(&self, id: u64, payload: &Bytes) -> Result<(), LeaseError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.contains_key(&id) {
            return Err(LeaseError::Duplicate(id));
        }
        if held.len() >= MAX_LEASES_PER_CONNECTION {
            return Err(LeaseError::TooMany);
        }
        self.leases.acquire(key(payload))?;
        held.insert(id, payload.clone());
        Ok(())
    }

    /// Lets go of lease `id`; an unknown id (released twice) is ignored.
    pub(crate) fn release(&self, id: u64) {
        let released = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(payload) = released {
            self.leases.release(key(&payload));
        }
    }
}

impl Drop for ConnLeases {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(PoisonError::into_inner));
        for payload in held.values() {
            self.leases.release(key(payload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_counted_once_and_released_with_its_last_lease() {
        let leases = Leases::new(100, 5);
        let a = Bytes::from(vec![1u8; 60]);
        let b = Bytes::from(vec![2u8; 50]);
        let one = ConnLeases::new(Arc::clone(&leases));
        let two = ConnLeases::new(Arc::clone(&leases));
        one.grant(1, &a).unwrap();
        two.grant(1, &a).unwrap();
        one.grant(2, &a).unwrap();
        assert_eq!(leases.bytes(), 60);
        assert_eq!(one.grant(2, &a), Err(LeaseError::Duplicate(2)));
        assert!(matches!(
            two.grant(3, &b),
            Err(LeaseError::Full {
                leased: 60,
                len: 50,
                limit: 100
            })
        ));
        one.release(1);
        one.release(1);
        drop(one);
        assert_eq!(leases.bytes(), 60, "still held by the second connection");
        drop(two);
        assert_eq!(leases.bytes(), 0);
        let three = ConnLeases::new(Arc::clone(&leases));
        three.grant(9, &b).unwrap();
        assert_eq!(leases.bytes(), 50);
        // At most five leases in all, of any payloads.
        for id in 10..14 {
            three.grant(id, &b).unwrap();
        }
        assert_eq!(three.grant(14, &b), Err(LeaseError::TooManyInAll(5)));
        three.release(10);
        three.grant(14, &b).unwrap();
    }
}
