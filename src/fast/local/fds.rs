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
/// The most descriptors received and not yet claimed by a frame; a peer
/// that sends more is cut off.
pub(crate) const MAX_WAITING_FDS: usize = 256;
/// The most bytes one `recvmsg` reads.
const READ_CHUNK: usize = 256 * 1024;

pub(crate) use crate::fast::stream::Outbox;

/// Descriptors received and not yet claimed, in arrival order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inbox(Arc<Mutex<VecDeque<OwnedFd>>>);

impl Inbox {
    /// The next descriptor received, if one has arrived.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn push(&self, fds: impl Iterator<Item = OwnedFd>) -> io::Result<()> {
        let mut waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.extend(fds);
        if waiting.len() > MAX_WAITING_FDS {
            waiting.clear();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_WAITING_FDS} file descriptors sent ahead of their frames"),
            ));
        }
        Ok(())
    }
}

/// The reading half: `recvmsg`, descriptors onto the [`Inbox`].
#[derive(Debug)]
pub(crate) struct FdReader {
    half: OwnedReadHalf,
    inbox: Inbox,
}

impl FdReader {
    pub(crate) fn new(half: OwnedReadHalf, inbox: Inbox) -> FdReader {
        FdReader { half, inbox }
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
            let want = buf.remaining().min(READ_CHUNK);
            let dst = buf.initialize_unfilled_to(want);
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
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    this.inbox.push(fds)?;
                }
            }
            if msg.flags.contains(ReturnFlags::CTRUNC) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_FDS_PER_MESSAGE} file descriptors in one message"),
                )));
            }
            buf.advance(msg.bytes);
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

/// Splits a connected Unix stream into descriptor-carrying halves.
pub(crate) fn split(stream: tokio::net::UnixStream) -> (FdReader, FdWriter, Inbox, Outbox) {
    let (read, write) = stream.into_split();
    let inbox = Inbox::default();
    let outbox = Outbox::default();
    (
        FdReader::new(read, inbox.clone()),
        FdWriter::new(write, Arc::clone(&outbox)),
        inbox,
        outbox,
    )
}
