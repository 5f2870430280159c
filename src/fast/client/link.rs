//! The shared, pipelined connection: a writer task draining a queue of
//! request frames, a reader task routing reply frames to the calls waiting
//! for them by request id.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::reply::read_error;
use super::{limits, FastClientOptions};
use crate::client::ClientError;
use crate::fast::stream::{write_loop, FrameReader, Queued};
use crate::fast::wire::{decode_response, Limits, Response, Status};

/// A reply frame: its decoded header and payload.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) response: Response,
    pub(super) payload: Bytes,
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
    pub(super) waiters: HashMap<u64, Waiter>,
    /// Set once the connection is gone, under the same lock as `waiters`,
    /// so no call can register after the reader has failed everyone.
    pub(super) closed: Option<String>,
}

/// One multiplexed connection: the writer task's queue and the calls
/// waiting for replies.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) tx: mpsc::Sender<Queued<()>>,
    pending: Mutex<Pending>,
    /// The writer task, aborted by [`Link::abort`].
    writer: Mutex<Option<tokio::task::AbortHandle>>,
    pub(super) next_id: AtomicU64,
}

impl Link {
    /// Starts the writer and reader tasks of a new connection.
    pub(super) fn open(stream: TcpStream, options: &FastClientOptions) -> Arc<Link> {
        let (reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let link = Arc::new(Link {
            tx,
            pending: Mutex::new(Pending::default()),
            writer: Mutex::new(None),
            next_id: AtomicU64::new(1),
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
            let Err(e) = write_loop(writer, rx, write_timeout).await else {
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
            Arc::downgrade(&link),
            limits(options),
        ));
        link
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
async fn read_loop(mut reader: FrameReader<OwnedReadHalf>, link: Weak<Link>, limits: Limits) {
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
        let payload = match reader.read_payload(prefix.payload_len).await {
            Ok(payload) => payload,
            Err(e) => break read_error(e),
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
        // A reply nobody waits for (timed out, cancelled) is dropped.
        if let Some(waiter) = waiter {
            waiter.send(Ok(Reply { response, payload }));
        }
    };
    if let Some(link) = link.upgrade() {
        // The writer stops too: nothing more is sent on a connection whose
        // replies can no longer be read.
        link.abort(&why);
    }
}
