//! A Unix stream socket that carries file descriptors beside its bytes.
//!
//! Descriptors travel as `SCM_RIGHTS` ancillary data, which the kernel
//! delivers with the first byte of the `sendmsg` they were attached to.
//! The protocol keeps them in step with the frames by order alone: a
//! frame flagged `FLAG_FD` owns the next descriptor in the stream
//! (docs/PROTOCOL.md, "The local door").
//!
//! - [`FdWriter`] attaches every descriptor queued on its [`Outbox`] to its
//!   next `sendmsg`. The write loop queues a frame's descriptor when it
//!   takes the frame, before any of the frame's bytes are written, so a
//!   descriptor never arrives after the frame that owns it.
//! - [`FdReader`] reads with `recvmsg` and keeps the descriptors that
//!   arrive, in order, on its [`Inbox`], where the frame reader's caller
//!   takes them as it meets flagged frames. A plain `read` would close
//!   them.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// The most descriptors one `sendmsg` carries. The write loop takes at
/// most 32 frames at a time, so this is never reached by an honest peer.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 64;
/// The most descriptors received and not yet claimed by a frame, per
/// connection; a peer that sends more is cut off. (An honest peer's wait
/// only for the frames of its last two writes: at most 64.)
pub(crate) const MAX_WAITING_FDS: usize = 128;
/// The most bytes one `recvmsg` reads.
const READ_CHUNK: usize = 256 * 1024;
/// Reads into at least this much room go straight to the caller's buffer.
const DIRECT_READ: usize = 128 * 1024;

pub(crate) use crate::fast::stream::Outbox;

/// Descriptors held unclaimed over many connections (a server's), and
/// the most there may be: each is a slot of the process's descriptor
/// table.
#[derive(Debug)]
pub(crate) struct FdBudget {
    held: AtomicUsize,
    limit: usize,
}

impl FdBudget {
    pub(crate) fn new(limit: usize) -> Arc<FdBudget> {
        Arc::new(FdBudget {
            held: AtomicUsize::new(0),
            limit,
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// Descriptors received and not yet claimed, in arrival order.
#[derive(Debug, Clone)]
pub(crate) struct Inbox(Arc<Waiting>);

#[derive(Debug)]
struct Waiting {
    fds: Mutex<VecDeque<OwnedFd>>,
    budget: Arc<FdBudget>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let held = self
            .fds
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.budget.held.fetch_sub(held, Ordering::Relaxed);
    }
}

impl Inbox {
    /// An empty inbox whose descriptors count against `budget`.
    pub(crate) fn new(budget: Arc<FdBudget>) -> Inbox {
        Inbox(Arc::new(Waiting {
            fds: Mutex::default(),
            budget,
        }))
    }

    /// The next descriptor received, if one has arrived.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        let fd = self.lock().pop_front();
        if fd.is_some() {
            self.0.budget.held.fetch_sub(1, Ordering::Relaxed);
        }
        fd
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<OwnedFd>> {
        self.0.fds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `fds`, or closes every descriptor waiting here and fails if
    /// this connection, or all of them, would hold too many.
    fn push(&self, fds: Vec<OwnedFd>) -> io::Result<()> {
        let budget = &self.0.budget;
        let mut waiting = self.lock();
        let n = fds.len();
        let held = budget.held.fetch_add(n, Ordering::Relaxed) + n;
        waiting.extend(fds);
        let why = if waiting.len() > MAX_WAITING_FDS {
            format!("more than {MAX_WAITING_FDS} file descriptors sent ahead of their frames")
        } else if held > budget.limit {
            format!(
                "the server holds {} unclaimed file descriptors; this connection's are dropped",
                budget.limit
            )
        } else {
            return Ok(());
        };
        budget.held.fetch_sub(waiting.len(), Ordering::Relaxed);
        waiting.clear();
        Err(io::Error::new(io::ErrorKind::InvalidData, why))
    }
}

/// The reading half: `recvmsg`, descriptors onto the [`Inbox`].
#[derive(Debug)]
pub(crate) struct FdReader {
    half: OwnedReadHalf,
    inbox: Inbox,
    /// Where reads smaller than [`DIRECT_READ`] land first.
    scratch: Box<[u8]>,
}

impl FdReader {
    pub(crate) fn new(half: OwnedReadHalf, inbox: Inbox) -> FdReader {
        FdReader {
            half,
            inbox,
            scratch: vec![0; DIRECT_READ].into_boxed_slice(),
        }
    }
}

impl AsyncRead for FdReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let stream = this.half.as_ref();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // `recvmsg` wants initialized memory. A large read (a payload)
            // goes straight into the caller's buffer, zeroed first; a small
            // one (frame heads) into a scratch buffer zeroed once, then is
            // copied: zeroing the caller's whole spare room on every read
            // would cost more than the bytes read.
            let direct = buf.remaining() >= DIRECT_READ;
            let dst: &mut [u8] = if direct {
                let want = buf.remaining().min(READ_CHUNK);
                buf.initialize_unfilled_to(want)
            } else {
                let want = buf.remaining().min(this.scratch.len());
                &mut this.scratch[..want]
            };
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = stream.try_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(dst)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            let msg = match received {
                Ok(msg) => msg,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let mut fds = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS_PER_MESSAGE {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_FDS_PER_MESSAGE} file descriptors in one message"),
                )));
            }
            if !fds.is_empty() {
                this.inbox.push(fds)?;
            }
            if direct {
                buf.advance(msg.bytes);
            } else {
                buf.put_slice(&this.scratch[..msg.bytes]);
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// The writing half: `sendmsg`, with what waits on the [`Outbox`].
#[derive(Debug)]
pub(crate) struct FdWriter {
    half: OwnedWriteHalf,
    outbox: Outbox,
}

impl FdWriter {
    pub(crate) fn new(half: OwnedWriteHalf, outbox: Outbox) -> FdWriter {
        FdWriter { half, outbox }
    }
}

impl AsyncWrite for FdWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let stream = this.half.as_ref();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            let fds: Vec<Arc<OwnedFd>> = {
                let outbox = this.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                outbox.iter().take(MAX_FDS_PER_MESSAGE).cloned().collect()
            };
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Poll::Ready(Err(io::Error::other("no room for the descriptors")));
            }
            let sent = stream.try_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(stream, bufs, &mut control, SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(n) => {
                    // Sent with these bytes: off the outbox.
                    let mut outbox = this.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                    outbox.drain(..fds.len());
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_shutdown(cx)
    }
}

/// Splits a connected Unix stream into descriptor-carrying halves; the
/// descriptors it receives count against `budget`.
pub(crate) fn split(
    stream: tokio::net::UnixStream,
    budget: Arc<FdBudget>,
) -> (FdReader, FdWriter, Inbox, Outbox) {
    let (read, write) = stream.into_split();
    let inbox = Inbox::new(budget);
    let outbox = Outbox::default();
    (
        FdReader::new(read, inbox.clone()),
        FdWriter::new(write, Arc::clone(&outbox)),
        inbox,
        outbox,
    )
}
