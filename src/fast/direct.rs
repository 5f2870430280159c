//! A connection's write half shared by its writer task and the task that
//! makes its frames, so that a frame can go out at once, from the task that
//! made it, when nothing is queued ahead of it.
//!
//! One request at a time, a writer task costs a wakeup and a task switch
//! per reply: the frame goes into a queue, the writer task is woken, takes
//! it and writes it. [`AtOnce::write_now`] skips that: it writes what the
//! socket accepts without waiting, and hands back what is left for the
//! queue; only while no queued frame is still unwritten (frames must not
//! overtake each other). Its callers: the server's `Queue` (one sender per
//! connection) and the client's `Link` (many, behind a gate).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Buf;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use super::stream::{write_loop, OutFrame, Outbox, Queued};

/// What a connection's senders need to write a frame at once: its write
/// half, shared with its writer task, and the count of frames queued for
/// that task and not yet written.
#[derive(Debug)]
pub(crate) struct AtOnce {
    out: SharedWriter,
    unwritten: Unwritten,
}

impl AtOnce {
    pub(crate) fn new(out: SharedWriter) -> AtOnce {
        AtOnce {
            out,
            unwritten: Unwritten::default(),
        }
    }

    /// Writes `frame` at once if every frame queued on `queue` has been
    /// written and the queue is open; otherwise, or for what the socket
    /// does not take now, `false`, and `frame` is what is left to queue.
    /// The caller keeps other senders from queueing between this and its
    /// queueing of the rest (the rest must go first).
    pub(crate) fn write_now<T>(&self, queue: &mpsc::Sender<T>, frame: &mut OutFrame) -> bool {
        // In this order: a writer closes its queue before it lets go of a
        // batch it failed to write (`write_loop`), so with none unwritten
        // an open queue means no frame was cut short.
        self.unwritten.none() && !queue.is_closed() && self.out.write_now(frame)
    }

    /// `frame` as queued, with `hold`, counted among the unwritten until
    /// the writer drops it (written, or dropped with its queue).
    pub(crate) fn queued<H>(&self, frame: OutFrame, hold: H) -> Queued<(H, QueuedFrame)> {
        Queued {
            frame,
            hold: (hold, self.unwritten.one()),
        }
    }

    /// Drops the write half now: the peer sees the end of the stream.
    pub(crate) fn close(&self) {
        self.out.close();
    }
}

/// The writer task of a connection written through `out`: [`write_loop`],
/// then, if it failed, `out` closed, so that nothing is written after a
/// frame it cut short and the peer sees the stream end there.
pub(crate) async fn drain<H>(
    out: SharedWriter,
    rx: mpsc::Receiver<Queued<H>>,
    stall: Option<std::time::Duration>,
    outbox: Option<Outbox>,
) -> io::Result<()> {
    let written = write_loop(out.clone(), rx, stall, outbox).await;
    if written.is_err() {
        out.close();
    }
    written
}

/// The write half of a connection, locked for each poll (never across an
/// await): the writer task writes through it as an [`AsyncWrite`], and
/// [`write_now`](SharedWriter::write_now) beside it. `None` once
/// [`close`](SharedWriter::close)d.
#[derive(Clone)]
pub(crate) struct SharedWriter(Arc<Mutex<Option<Half>>>);

type Half = Box<dyn AsyncWrite + Unpin + Send>;

impl std::fmt::Debug for SharedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedWriter")
    }
}

impl SharedWriter {
    pub(crate) fn new(io: impl AsyncWrite + Unpin + Send + 'static) -> SharedWriter {
        SharedWriter(Arc::new(Mutex::new(Some(Box::new(io)))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Half>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the write half now (a socket's peer sees the end of the
    /// stream), whoever else holds this; later writes fail.
    fn close(&self) {
        drop(self.lock().take());
    }

    /// Writes as much of `frame` as the socket takes now, without waiting,
    /// and advances `frame` past it; `true` once all of it is written.
    /// A frame passing a descriptor is not written here (the writer task
    /// sends descriptors with its bytes). An error writes nothing more and
    /// returns `false`: the writer task, given the rest, meets the error
    /// again and ends the connection the usual way.
    fn write_now(&self, frame: &mut OutFrame) -> bool {
        if frame.fd.is_some() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut guard = self.lock();
        let Some(io) = guard.as_mut() else {
            return false;
        };
        while !frame.is_empty() {
            let both = [IoSlice::new(&frame.head), IoSlice::new(&frame.payload)];
            let slices = if frame.head.is_empty() {
                &both[1..]
            } else if frame.payload.is_empty() {
                &both[..1]
            } else {
                &both[..]
            };
            match Pin::new(&mut **io).poll_write_vectored(&mut cx, slices) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    let from_head = n.min(frame.head.len());
                    frame.head.advance(from_head);
                    frame.payload.advance(n - from_head);
                }
                // Full (the no-op waker is replaced by the writer task's
                // when it polls), closed, or failed: the rest is the
                // writer task's.
                _ => return false,
            }
        }
        // A flush not done yet is the writer task's too: given the empty
        // rest of the frame, it writes nothing and flushes.
        matches!(Pin::new(&mut **io).poll_flush(&mut cx), Poll::Ready(Ok(())))
    }

    /// Polls the write half with `f`, or fails once it is closed.
    fn with<T>(
        &self,
        f: impl FnOnce(Pin<&mut Half>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.lock().as_mut() {
            Some(io) => f(Pin::new(io)),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

/// The frames queued for a writer task and not yet written (or dropped
/// unwritten): a frame may be written at once only while there are none,
/// or it would overtake them.
#[derive(Debug, Default)]
struct Unwritten(Arc<AtomicUsize>);

impl Unwritten {
    /// Whether every frame queued so far has been written (or dropped).
    fn none(&self) -> bool {
        // Acquire: pairs with `Queued`'s release, so the writer task's
        // writes of those frames happen before what the caller writes.
        self.0.load(Ordering::Acquire) == 0
    }

    /// Counts one more frame, until the returned guard (the frame's hold
    /// in the writer's queue) is dropped.
    fn one(&self) -> QueuedFrame {
        self.0.fetch_add(1, Ordering::Relaxed);
        QueuedFrame(Arc::clone(&self.0))
    }
}

/// One frame counted in an [`Unwritten`] until dropped.
#[derive(Debug)]
pub(crate) struct QueuedFrame(Arc<AtomicUsize>);

impl Drop for QueuedFrame {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl AsyncWrite for SharedWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::stream::write_frames;
    use bytes::Bytes;
    use std::os::fd::OwnedFd;
    use tokio::io::AsyncReadExt;

    fn frame(head: &'static [u8], payload: &'static [u8]) -> OutFrame {
        OutFrame::new(Bytes::from_static(head), Bytes::from_static(payload))
    }

    #[tokio::test]
    async fn a_frame_the_socket_has_room_for_is_written_whole() {
        let (near, mut far) = tokio::io::duplex(1024);
        let out = SharedWriter::new(near);
        let mut f = frame(b"head", b"payload");
        assert!(out.write_now(&mut f));
        assert!(f.is_empty());
        let mut got = [0u8; 11];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headpayload");
    }

    #[tokio::test]
    async fn the_rest_of_a_frame_the_socket_cannot_take_is_left_in_order() {
        let (near, mut far) = tokio::io::duplex(6);
        let mut out = SharedWriter::new(near);
        let mut f = frame(b"head", b"payload");
        assert!(!out.write_now(&mut f), "only 6 bytes fit");
        assert_eq!((&f.head[..], &f.payload[..]), (&b""[..], &b"yload"[..]));
        // The writer's path sends the rest, behind what went first.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 11 + 3];
            far.read_exact(&mut got).await.unwrap();
            got
        });
        write_frames(&mut out, [f, frame(b"n", b"xt")])
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap(), b"headpayloadnxt");
    }

    #[tokio::test]
    async fn a_frame_passing_a_descriptor_is_left_to_the_writer() {
        let (near, _far) = tokio::io::duplex(1024);
        let out = SharedWriter::new(near);
        let mut f = frame(b"head", b"");
        f.fd = Some(Arc::new(OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        )));
        assert!(!out.write_now(&mut f));
        assert_eq!(&f.head[..], b"head", "nothing written");
    }
}
