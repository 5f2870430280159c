//! The shared, pipelined connection: a writer task draining a queue of
//! request frames (a request with nothing queued ahead of it is written at
//! once, by its caller), a reader task routing reply frames to the calls
//! waiting for them by request id.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::reply::read_error;
use super::{limits, FastClientOptions};
use crate::client::ClientError;
use crate::fast::direct::{drain, AtOnce, QueuedFrame, SharedWriter};
use crate::fast::local::fds::{Inbox, Outbox};
use crate::fast::local::memfd;
use crate::fast::stream::{FrameReader, OutFrame, Queued};
use crate::fast::wire::{
    decode_response, encode_frame, Limits, Request, Response, Status, FLAG_FD,
};

/// A reply frame: its decoded header and payload, or (the local door) the
/// sealed memfd its payload is in and that payload's length.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) response: Response,
    pub(super) payload: Bytes,
    pub(super) fd: Option<Passed>,
}

/// A tensor's memfd passed with a reply, and the lease it holds on the
/// server: released when this is dropped unmapped, or when the last clone
/// of the mapping is.
#[derive(Debug)]
pub(super) struct Passed {
    fd: OwnedFd,
    len: u64,
    lease: Lease,
}

impl Passed {
    /// The memfd's identity.
    pub(super) fn file_id(&self) -> Result<memfd::FileId, ClientError> {
        memfd::file_id(&self.fd).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The payload's length.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Maps the memfd read-only: the tensor's bytes, no copy.
    pub(super) fn map(self) -> Result<Bytes, ClientError> {
        let Passed { fd, len, lease } = self;
        let map = memfd::map(fd, len).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(memfd::Mapping::into_bytes(map, lease))
    }
}

/// Lease `id` on `link`, released on drop.
#[derive(Debug)]
struct Lease {
    id: u64,
    link: Weak<Link>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(link) = self.link.upgrade() {
            link.release(self.id);
        }
    }
}

/// Where the reader sends a request's reply frames.
#[derive(Debug)]
pub(super) enum Waiter {
    One(oneshot::Sender<Result<Reply, ClientError>>),
    Many(mpsc::UnboundedSender<Result<Reply, ClientError>>),
}

impl Waiter {
    fn send(self, reply: Result<Reply, ClientError>) {
        match self {
            Waiter::One(tx) => drop(tx.send(reply)),
            Waiter::Many(tx) => drop(tx.send(reply)),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Keyed by request ids this client assigns: a fixed, fast hash (the
    /// standard SipHash cost about 5% of a small GET's client
    /// instructions, `benches/callgrind_get.sh --client`).
    pub(super) waiters: HashMap<u64, Waiter, foldhash::fast::FixedState>,
    /// Set once the connection is gone, under the same lock as `waiters`,
    /// so no call can register after the reader has failed everyone.
    pub(super) closed: Option<String>,
}

/// One multiplexed connection: the writer task's queue and the calls
/// waiting for replies.
///
/// A request goes out at once, from the caller's task, when no frame is
/// queued or being written ahead of it ([`AtOnce::write_now`]); one
/// call at a time, the writer task then never wakes. Otherwise, or for
/// what the socket does not take at once, it is queued for the writer.
#[derive(Debug)]
pub(super) struct Link {
    tx: mpsc::Sender<Queued<Unwritten>>,
    /// The connection's write half and its frames not yet written.
    at_once: AtOnce,
    /// Held by a sender from its check of what is unwritten until its
    /// frame is written or queued: no two senders' frames interleave.
    gate: Mutex<()>,
    pending: Mutex<Pending>,
    /// The writer task, aborted by [`Link::abort`].
    writer: Mutex<Option<tokio::task::AbortHandle>>,
    pub(super) next_id: AtomicU64,
    /// The runtime the link's tasks run on: a release that finds the
    /// queue full waits for room on it (a mapping may be dropped on any
    /// thread).
    runtime: tokio::runtime::Handle,
}

impl Link {
    /// Starts the writer and reader tasks of a new connection; `fds`
    /// for the local door's.
    pub(super) fn open<R, W>(
        reader: R,
        writer: W,
        fds: Option<(Inbox, Outbox)>,
        options: &FastClientOptions,
    ) -> Arc<Link>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let (inbox, outbox) = fds.unzip();
        let out = SharedWriter::new(writer);
        let link = Arc::new(Link {
            tx,
            at_once: AtOnce::new(out.clone()),
            gate: Mutex::new(()),
            pending: Mutex::new(Pending::default()),
            writer: Mutex::new(None),
            next_id: AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
        });
        // A server that stops reading closes the connection after the
        // write timeout: the queued requests and their payloads are
        // dropped, and the calls waiting for replies fail rather than wait
        // for answers to requests the server never got. (Any other write
        // error means the server closed or reset the connection: the
        // reader delivers the replies it sent first, a refusal saying why,
        // then sees the end.)
        let write_timeout = options.write_timeout;
        let writer_link = Arc::downgrade(&link);
        let task = tokio::spawn(async move {
            // On failure `drain` closes the write half: nothing more is
            // written on this connection, and the server sees its end.
            let Err(e) = drain(out, rx, write_timeout, outbox).await else {
                return;
            };
            if e.kind() == std::io::ErrorKind::TimedOut {
                if let Some(link) = writer_link.upgrade() {
                    link.close(format!("the server stopped reading: {e}"));
                }
            }
        });
        *link.writer.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        // The reader holds a weak handle: once every client has let go of
        // the link, its writer's queue closes, the server sees the
        // connection end and closes its side, and the reader ends.
        tokio::spawn(read_loop(
            FrameReader::new(reader),
            inbox,
            Arc::downgrade(&link),
            limits(options),
        ));
        link
    }

    /// Tells the server that the mapping of lease `id` is gone (no reply
    /// is waited for): now if the writer's queue has room, else from a
    /// task that waits for room.
    pub(super) fn release(&self, lease: u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request::Release {
            leases: vec![lease.to_le_bytes()],
        };
        let Ok(head) = encode_frame(request.opcode(), 0, id, &request, 0) else {
            return;
        };
        match self.try_send(OutFrame::new(head, Bytes::new())) {
            Sent::Done => {}
            Sent::Full(frame) => {
                // Bounded: the writer drains the queue, or gives up after
                // the write timeout and closes it.
                let tx = self.tx.clone();
                self.runtime.spawn(async move {
                    let _ = tx.send(frame).await;
                });
            }
            // The connection is gone, and the server let go of its
            // leases with it.
            Sent::Closed => {}
        }
    }

    /// Sends `frame`: writes it at once if nothing is ahead of it, else
    /// queues it for the writer task, waiting for room in the queue. `Err`
    /// once the writer has stopped: then nothing was queued (a frame the
    /// writer never took was not sent whole, and may go out again on a
    /// new connection).
    pub(super) async fn send(&self, frame: OutFrame) -> Result<(), ()> {
        match self.try_send(frame) {
            Sent::Done => Ok(()),
            Sent::Closed => Err(()),
            // Counted among the unwritten already: nobody writes ahead of
            // it while it waits for room.
            Sent::Full(queued) => self.tx.send(queued).await.map_err(drop),
        }
    }

    /// Writes `frame` at once if no frame is queued ahead of it, else
    /// queues (what is left of) it if the queue has room; never waits.
    fn try_send(&self, mut frame: OutFrame) -> Sent {
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if self.at_once.write_now(&self.tx, &mut frame) {
            return Sent::Done;
        }
        // The rest of a frame written in part goes first: with none
        // unwritten the queue is empty, and the gate keeps other senders
        // out until it is in.
        match self.tx.try_send(self.at_once.queued(frame, ())) {
            Ok(()) => Sent::Done,
            Err(mpsc::error::TrySendError::Full(queued)) => Sent::Full(queued),
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    /// Whether the connection is gone: the reader saw it end, or the
    /// writer stopped (then the reader may not know yet).
    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.pending().closed.is_some()
    }

    /// Ends the connection now: fails the waiting calls and stops the
    /// writer, dropping the requests it holds (their payloads with them),
    /// written or not.
    pub(super) fn abort(&self, why: &str) {
        self.close(why.to_owned());
        // The server sees the connection end now, not when the last
        // clone of this link is dropped.
        self.at_once.close();
        if let Some(writer) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            writer.abort();
        }
    }

    pub(super) fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every waiting call and refuses new ones.
    fn close(&self, why: String) {
        let waiters = {
            let mut pending = self.pending();
            pending.closed.get_or_insert_with(|| why.clone());
            std::mem::take(&mut pending.waiters)
        };
        for (_, waiter) in waiters {
            waiter.send(Err(ClientError::Unavailable(why.clone())));
        }
    }
}

/// A queued request's hold: its place among the frames not yet written.
type Unwritten = ((), QueuedFrame);

/// What became of a frame [`Link::try_send`] was given.
enum Sent {
    /// Written, or queued for the writer task.
    Done,
    /// Not written, and the queue is full: the frame, counted among the
    /// unwritten, to queue when there is room.
    Full(Queued<Unwritten>),
    /// The writer has stopped.
    Closed,
}

/// A call's place in its link's pending table. Dropping it — the call got
/// its reply, timed out, or was cancelled (a hedged read that lost, a
/// caller's own timeout) — removes the waiter, so none outlives its call.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) link: Arc<Link>,
    pub(super) id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.link.pending().waiters.remove(&self.id);
    }
}

/// Routes reply frames to their waiters until the connection ends.
async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    inbox: Option<Inbox>,
    link: Weak<Link>,
    limits: Limits,
) {
    let why = loop {
        let head = match reader.read_head(&limits).await {
            Ok(Some(head)) => head,
            Ok(None) => break "the server closed the connection".to_owned(),
            Err(e) => break read_error(e),
        };
        let prefix = head.prefix;
        let response = match decode_response(&head.header, prefix.request_id) {
            Ok(response) => response,
            Err(e) => break format!("undecodable reply: {e}"),
        };
        // A passed memfd (the local door): the payload is not on the
        // stream, and its descriptor has arrived with or before the frame.
        let fd = match (prefix.flags & FLAG_FD != 0, &inbox) {
            (false, _) => None,
            (true, Some(inbox)) => match inbox.take() {
                Some(fd) => Some(Passed {
                    fd,
                    len: prefix.payload_len,
                    lease: Lease {
                        id: prefix.request_id,
                        link: link.clone(),
                    },
                }),
                None => break "a reply flagged FLAG_FD came without a descriptor".to_owned(),
            },
            (true, None) => break "a reply flagged FLAG_FD on a TCP connection".to_owned(),
        };
        let payload = match fd {
            Some(_) => Bytes::new(),
            None => match reader.read_payload(prefix.payload_len).await {
                Ok(payload) => payload,
                Err(e) => break read_error(e),
            },
        };
        let Some(link) = link.upgrade() else { return };
        if prefix.request_id == 0 && response.status() != Status::Ok {
            break format!("{:?}: {}", response.status(), response.message);
        }
        let waiter = {
            let mut pending = link.pending();
            if prefix.is_end() {
                pending.waiters.remove(&prefix.request_id)
            } else {
                match pending.waiters.get(&prefix.request_id) {
                    Some(Waiter::Many(tx)) => Some(Waiter::Many(tx.clone())),
                    _ => None,
                }
            }
        };
        // A reply nobody waits for (timed out, cancelled) is dropped, and
        // a passed tensor's lease with it.
        if let Some(waiter) = waiter {
            waiter.send(Ok(Reply {
                response,
                payload,
                fd,
            }));
        }
    };
    if let Some(link) = link.upgrade() {
        // The writer stops too: nothing more is sent on a connection whose
        // replies can no longer be read.
        link.abort(&why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The second frame finds room in the socket while the first one's
    /// rest waits for the writer task, which has not run yet (one thread,
    /// no yield between): it must be queued behind that rest, not written
    /// into the room.
    #[tokio::test]
    async fn a_frame_never_lands_inside_the_rest_of_another() {
        let (near, mut far) = tokio::io::duplex(64);
        let (_replies, reader) = tokio::io::duplex(64);
        let link = Link::open(reader, near, None, &FastClientOptions::default());
        let first = OutFrame::new(Bytes::from(vec![1u8; 24]), Bytes::from(vec![2u8; 1000]));
        link.send(first).await.unwrap();
        let mut got = vec![0u8; 10];
        far.read_exact(&mut got).await.unwrap();
        link.send(OutFrame::new(Bytes::from_static(b"second"), Bytes::new()))
            .await
            .unwrap();
        let mut rest = vec![0u8; 1024 - 10 + 6];
        far.read_exact(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        assert_eq!(&got[..24], &[1u8; 24][..]);
        assert_eq!(&got[24..1024], &[2u8; 1000][..]);
        assert_eq!(&got[1024..], b"second");
    }
}
