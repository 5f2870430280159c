//! Byte budgets that bound what clients can make the server hold beyond
//! the cache's own budget:
//!
//! - **queued bytes**: response frames waiting for a slow reader. A queued
//!   GET payload is the engine's own buffer, but one evicted meanwhile
//!   stays alive until it is sent. Bounded per connection and server-wide.
//! - **ingress**: PUT payloads being received, allocated at their full
//!   size before the last byte arrives. Bounded server-wide.
//!
//! Budgets are tokio semaphores counted in KiB, so that one reservation of
//! up to 4 TiB fits a `u32`. A reservation larger than a whole budget is
//! clamped to it: one frame bigger than the bound still goes through, alone.
//! Waiting is backpressure: the connection stops reading requests until
//! there is room, within the timeout that governs one frame.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::fast::stream::OutFrame;

/// The unit budgets are counted in.
const UNIT: u64 = 1024;

/// A budget of bytes, in [`UNIT`]s.
#[derive(Debug)]
pub(super) struct Budget {
    units: Arc<Semaphore>,
    capacity: u32,
}

impl Budget {
    pub(super) fn new(bytes: u64) -> Budget {
        let capacity = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        Budget {
            units: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// The units `bytes` takes: at least one, at most the whole budget.
    fn units_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity)
    }

    fn try_reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.units)
            .try_acquire_many_owned(self.units_for(bytes))
            .ok()
    }

    /// Waits for room for `bytes`. Room that is free right now is taken at
    /// once, even past larger requests waiting (so a small request is not
    /// held up behind a stalled large one); otherwise the wait is in FIFO
    /// order. Budgets are never closed, so `None` does not happen in
    /// practice; callers treat it as a closed connection.
    pub(super) async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        if let Some(permit) = self.try_reserve(bytes) {
            return Some(permit);
        }
        Arc::clone(&self.units)
            .acquire_many_owned(self.units_for(bytes))
            .await
            .ok()
    }

    /// Bytes not reserved right now.
    #[cfg(test)]
    fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }
}

/// The budgets every connection of one server shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// Bytes queued for sending, server-wide.
    pub(super) queued: Budget,
    /// Payloads being received, server-wide.
    pub(super) ingress: Budget,
}

/// What a queued frame holds until it is written: its share of its
/// connection's and the server's queued-bytes budgets.
#[derive(Debug)]
pub(super) struct Reservation {
    _connection: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
}

/// The connection is going away: its writer's queue has closed, or the
/// server is shutting down.
#[derive(Debug)]
pub(super) struct Closed;

/// One connection's response queue, bounded in frames (the channel) and in
/// bytes (its own budget and the server's), and its share of the server's
/// ingress budget.
#[derive(Debug)]
pub(super) struct Queue {
    tx: mpsc::Sender<OutFrame>,
    connection: Budget,
    shared: Arc<Shared>,
    /// Cancelled when the server shuts down: no wait for room outlives it.
    stop: CancellationToken,
}

impl Queue {
    pub(super) fn new(
        tx: mpsc::Sender<OutFrame>,
        max_bytes: u64,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Queue {
        Queue {
            tx,
            connection: Budget::new(max_bytes),
            shared,
            stop,
        }
    }

    /// Room for a PUT payload of `bytes` among the payloads being received
    /// server-wide; waits while it is full, unless the connection goes
    /// away meanwhile.
    pub(super) async fn receive(&self, bytes: u64) -> Result<OwnedSemaphorePermit, Closed> {
        tokio::select! {
            permit = self.shared.ingress.reserve(bytes) => permit.ok_or(Closed),
            () = self.stop.cancelled() => Err(Closed),
            () = self.tx.closed() => Err(Closed),
        }
    }

    /// Room for a frame of about `bytes`, reserved on this connection and
    /// server-wide; waits while either is full. Fails once the writer is
    /// gone (it stalled past the write timeout, or the peer left), so a
    /// handler never waits on a queue nobody drains.
    pub(super) async fn reserve(&self, bytes: u64) -> Result<Reservation, Closed> {
        if let Some(connection) = self.connection.try_reserve(bytes) {
            if let Some(server) = self.shared.queued.try_reserve(bytes) {
                return Ok(Reservation {
                    _connection: connection,
                    _server: server,
                });
            }
        }
        let both = async {
            // Always the connection first, then the server: one order, no
            // deadlock.
            let connection = self.connection.reserve(bytes).await?;
            let server = self.shared.queued.reserve(bytes).await?;
            Some(Reservation {
                _connection: connection,
                _server: server,
            })
        };
        tokio::select! {
            reservation = both => reservation.ok_or(Closed),
            () = self.stop.cancelled() => Err(Closed),
            () = self.tx.closed() => Err(Closed),
        }
    }

    /// Queues `frame` with the reservation it was given.
    pub(super) async fn send(
        &self,
        mut frame: OutFrame,
        reservation: Reservation,
    ) -> Result<(), Closed> {
        frame.hold = Some(Box::new(reservation));
        self.tx.send(frame).await.map_err(|_| Closed)
    }

    /// Reserves for `frame` as it is, then queues it.
    pub(super) async fn push(&self, frame: OutFrame) -> Result<(), Closed> {
        let reservation = self.reserve(frame.len()).await?;
        self.send(frame, reservation).await
    }

    /// Queues a frame that ends the connection, holding no reservation: it
    /// is small, and one per connection. Waits at most `patience` for room
    /// in the queue; a peer that is not reading would not hear it anyway.
    pub(super) async fn last_word(&self, frame: OutFrame, patience: std::time::Duration) {
        let _ = self.tx.send_timeout(frame, patience).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_clamped_and_released_on_drop() {
        let budget = Budget::new(10 * UNIT);
        assert_eq!(budget.units_for(0), 1);
        assert_eq!(budget.units_for(UNIT + 1), 2);
        assert_eq!(budget.units_for(u64::MAX), 10, "clamped to the budget");
        let all = budget
            .try_reserve(1 << 40)
            .expect("a huge frame goes alone");
        assert!(budget.try_reserve(1).is_none());
        drop(all);
        assert_eq!(budget.available(), 10 * UNIT);
    }

    #[tokio::test]
    async fn a_queue_whose_writer_is_gone_refuses_at_once() {
        let (tx, rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            queued: Budget::new(4 * UNIT),
            ingress: Budget::new(UNIT),
        });
        let queue = Queue::new(tx, 4 * UNIT, Arc::clone(&shared), CancellationToken::new());
        let held = queue.reserve(4 * UNIT).await.expect("room");
        drop(rx);
        // Full and nobody draining: the wait ends, it does not hang.
        assert!(queue.reserve(1).await.is_err());
        drop(held);
        assert_eq!(shared.queued.available(), 4 * UNIT);
    }
}
