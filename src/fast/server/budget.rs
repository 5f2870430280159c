//! Byte budgets that bound what clients can make the server hold beyond
//! the cache's own budget:
//!
//! - **queued bytes**: response frames waiting for a slow reader. A queued
//!   GET payload is the engine's own buffer, but one evicted meanwhile
//!   stays alive until it is sent. Bounded per connection and server-wide.
//! - **ingress**: PUT payloads being received, allocated at their full
//!   size before the last byte arrives. Bounded server-wide.
//!
//! A budget is an atomic byte counter: taking room is one compare-and-swap
//! and giving it back one subtraction, so the request path never takes a
//! lock (a semaphore's release does, and cost 10–15% of small PUTs with 16
//! connections, measured with `benches/ab.py`). A reservation larger than a
//! whole budget is clamped to it: one frame bigger than the bound still goes
//! through, alone. Waiting is backpressure: the connection stops reading
//! requests until there is room, within the timeout that governs one
//! request. Waiters are woken on every release and take room as it comes
//! (no FIFO order).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::fast::direct::{AtOnce, QueuedFrame, SharedWriter};
use crate::fast::stream::{OutFrame, Queued};

/// A budget of bytes.
#[derive(Debug)]
pub(super) struct Budget {
    used: AtomicU64,
    capacity: u64,
    /// Tasks waiting for room; releases notify only when there are some.
    waiting: AtomicUsize,
    room: Notify,
}

/// Room taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub(super) struct Taken {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Taken {
    fn drop(&mut self) {
        // SeqCst here and in `take`: a release (store `used`, load
        // `waiting`) racing a new waiter (store `waiting`, load `used`) is
        // the store-buffer pattern; weaker orderings may let both miss.
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            self.budget.room.notify_waiters();
        }
    }
}

impl Budget {
    pub(super) fn new(capacity: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            capacity: capacity.max(1),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// Takes `bytes` (at most the whole budget) if there is room now.
    fn try_take(self: &Arc<Self>, bytes: u64) -> Option<Taken> {
        let bytes = bytes.min(self.capacity);
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.capacity).then_some(after)
            })
            .ok()?;
        Some(Taken {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Waits for room for `bytes`, then takes it.
    pub(super) async fn take(self: &Arc<Self>, bytes: u64) -> Taken {
        if let Some(taken) = self.try_take(bytes) {
            return taken;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so no release between the check
            // and the wait is missed.
            room.as_mut().enable();
            if let Some(taken) = self.try_take(bytes) {
                return taken;
            }
            room.await;
        }
    }

    /// Bytes taken right now.
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// Counts a waiter out however its wait ends (room, or cancelled).
struct Waiting<'a>(&'a Budget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The budgets every connection of one server shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// Bytes queued for sending, server-wide.
    pub(super) queued: Arc<Budget>,
    /// Payloads being received, server-wide.
    pub(super) ingress: Arc<Budget>,
}

/// What a queued frame holds until it is written: its share of its
/// connection's and the server's queued-bytes budgets.
#[derive(Debug)]
pub(super) struct Reservation {
    _connection: Taken,
    _server: Taken,
}

/// What a queued frame holds until it is written, or dropped unwritten
/// with its queue: its reservation, if any, and its place in the count of
/// frames not yet written.
pub(super) type Hold = (Option<Reservation>, QueuedFrame);

/// The connection is going away: its writer's queue has closed, or the
/// server is shutting down.
#[derive(Debug)]
pub(super) struct Closed;

/// One connection's response queue, bounded in frames (the channel) and in
/// bytes (its own budget and the server's), and its share of the server's
/// ingress budget.
///
/// A frame answering the last request the connection has buffered goes
/// out at once, from the handler, when no frame is queued or being written
/// ahead of it ([`AtOnce::write_now`]): one request at a time, the
/// writer task then never wakes. Answers to pipelined requests are queued,
/// and the writer task sends many per system call.
#[derive(Debug)]
pub(super) struct Queue {
    tx: mpsc::Sender<Queued<Hold>>,
    connection: Arc<Budget>,
    shared: Arc<Shared>,
    /// Cancelled when the server shuts down: no wait for room outlives it.
    stop: CancellationToken,
    /// The connection's write half and its frames not yet written.
    at_once: AtOnce,
    /// Whether frames may be written at once: set by the handler for each
    /// request (see [`Queue::set_direct`]).
    direct: AtomicBool,
}

impl Queue {
    pub(super) fn new(
        tx: mpsc::Sender<Queued<Hold>>,
        out: SharedWriter,
        max_bytes: u64,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) -> Queue {
        Queue {
            tx,
            connection: Budget::new(max_bytes),
            shared,
            stop,
            at_once: AtOnce::new(out),
            direct: AtomicBool::new(false),
        }
    }

    /// Whether the frames answering the request at hand may be written at
    /// once: the handler says yes when it is the last request buffered and
    /// its answer is one frame. Otherwise they are queued, to share the
    /// writer's system calls with the answers after them.
    pub(super) fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Ordering::Relaxed);
    }

    /// Room for a PUT payload of `bytes` among the payloads being received
    /// server-wide; waits while it is full, unless the connection goes
    /// away meanwhile.
    pub(super) async fn receive(&self, bytes: u64) -> Result<Taken, Closed> {
        if let Some(taken) = self.shared.ingress.try_take(bytes) {
            return Ok(taken);
        }
        tokio::select! {
            biased;
            taken = self.shared.ingress.take(bytes) => Ok(taken),
            () = self.stop.cancelled() => Err(Closed),
            () = self.tx.closed() => Err(Closed),
        }
    }

    /// Room for a frame of about `bytes`, reserved on this connection and
    /// server-wide; waits while either is full. Fails once the writer is
    /// gone (it stalled past the write timeout, or the peer left) or the
    /// server shuts down, so a handler never waits on a queue nobody
    /// drains.
    pub(super) async fn reserve(&self, bytes: u64) -> Result<Reservation, Closed> {
        // One frame takes at most one connection's worth of the server-wide
        // budget, so a single huge frame cannot hold every connection up.
        let bytes = bytes.min(self.connection.capacity);
        if let Some(connection) = self.connection.try_take(bytes) {
            if let Some(server) = self.shared.queued.try_take(bytes) {
                return Ok(Reservation {
                    _connection: connection,
                    _server: server,
                });
            }
        }
        let both = async {
            // Always the connection first, then the server: one order, no
            // deadlock.
            let connection = self.connection.take(bytes).await;
            let server = self.shared.queued.take(bytes).await;
            Reservation {
                _connection: connection,
                _server: server,
            }
        };
        tokio::select! {
            biased;
            reservation = both => Ok(reservation),
            () = self.stop.cancelled() => Err(Closed),
            () = self.tx.closed() => Err(Closed),
        }
    }

    /// Queues `frame` with the reservation it was given.
    pub(super) async fn send(
        &self,
        frame: OutFrame,
        reservation: Reservation,
    ) -> Result<(), Closed> {
        self.queue(frame, Some(reservation)).await
    }

    /// Queues a frame without payload (a PUT's or DELETE's answer, STATS,
    /// PING). It takes no byte budget: such frames are small and bounded
    /// in number by the queue's length, and must never wait behind other
    /// connections' large responses.
    pub(super) async fn push(&self, frame: OutFrame) -> Result<(), Closed> {
        debug_assert!(frame.payload.is_empty());
        self.queue(frame, None).await
    }

    async fn queue(&self, mut frame: OutFrame, hold: Option<Reservation>) -> Result<(), Closed> {
        // The handler is this queue's only sender, so no frame can be
        // queued between the check and the write.
        if self.direct.load(Ordering::Relaxed) && self.at_once.write_now(&self.tx, &mut frame) {
            return Ok(());
        }
        let queued = self.at_once.queued(frame, hold);
        // The common case, room in the queue, without building a select.
        let queued = match self.tx.try_send(queued) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
            Err(mpsc::error::TrySendError::Full(queued)) => queued,
        };
        // Full: wait for room, but not past a shutdown (in-flight answers
        // that can be queued are; one still waiting is dropped).
        tokio::select! {
            biased;
            sent = self.tx.send(queued) => sent.map_err(|_| Closed),
            () = self.stop.cancelled() => Err(Closed),
        }
    }

    /// Completes once the writer is gone (the peer left, or stalled past
    /// the write timeout).
    pub(super) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Queues a frame that ends the connection, holding no reservation: it
    /// is small, and one per connection. Waits at most `patience` for room
    /// in the queue; a peer that is not reading would not hear it anyway.
    pub(super) async fn last_word(&self, frame: OutFrame, patience: std::time::Duration) {
        let queued = self.at_once.queued(frame, None);
        let _ = self.tx.send_timeout(queued, patience).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_is_clamped_released_on_drop_and_waited_for() {
        let budget = Budget::new(10_000);
        let all = budget.try_take(1 << 40).expect("a huge frame goes alone");
        assert_eq!(budget.used(), 10_000);
        assert!(budget.try_take(1).is_none());
        let waiter = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.take(4_000).await.bytes }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no room: it waits");
        drop(all);
        assert_eq!(waiter.await.unwrap(), 4_000);
        assert_eq!(budget.used(), 0, "the waiter's room went back on drop");
    }

    #[tokio::test]
    async fn a_queue_whose_writer_is_gone_refuses_at_once() {
        let (tx, rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            queued: Budget::new(4096),
            ingress: Budget::new(1024),
        });
        let out = SharedWriter::new(tokio::io::sink());
        let queue = Queue::new(tx, out, 4096, Arc::clone(&shared), CancellationToken::new());
        let held = queue.reserve(4096).await.expect("room");
        drop(rx);
        // Full and nobody draining: the wait ends, it does not hang.
        assert!(queue.reserve(1).await.is_err());
        drop(held);
        assert_eq!(shared.queued.used(), 0);
    }
}
