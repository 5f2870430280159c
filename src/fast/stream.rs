//! Frames over a byte stream: a buffered reader that hands out payloads in
//! allocations of their own, and a vectored writer.
//!
//! Both the server and the client use these. What the bytes mean lives in
//! [`wire`](super::wire).
//!
//! # Why not `tokio_util::codec`
//! The reader is hand-made on purpose. A `Decoder` hands frames out of one
//! shared read buffer, so a payload would either be split off that buffer
//! (and keep the rest of its allocation alive, uncharged) or be copied out.
//! Here the prefix and header come through the read buffer, but a payload
//! goes into an allocation of exactly its size, read from the socket
//! straight into place, or into the caller's own buffer
//! ([`FrameReader::read_payload_into`]). The engine charges what that
//! allocation really is (`payload_gets_an_exact_allocation` below), and a
//! 64 MiB GET into a reused buffer (`get_into`) runs at the wire's speed
//! (the README's Performance section). On the write side, `FramedWrite`
//! would copy each payload into its buffer; [`write_frames`] hands the
//! stored buffers to `writev` as they are.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::{Limits, Prefix, ProtocolError, PREFIX_LEN};

/// The most frames [`write_loop`] takes from its queue at once (and so the
/// most descriptors one of its writes carries).
pub const WRITE_BATCH: usize = 32;
/// How much the reader asks the socket for at a time.
const READ_CHUNK: usize = 64 * 1024;
/// The most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream in the middle of a frame.
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    /// The bytes are not a valid frame, or claim more than the limits.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The payload's buffer could not be allocated (within the limits, but
    /// more than this process can have).
    #[error("cannot allocate {0} bytes for a payload")]
    Alloc(u64),
}

/// A frame's prefix and header bytes; its payload is still on the stream.
#[derive(Debug)]
pub struct Head {
    /// The validated prefix.
    pub prefix: Prefix,
    /// The header bytes, not yet decoded.
    pub header: BytesMut,
}

/// Reads frames from a stream; see the module docs.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    /// Bytes read but not yet consumed.
    buf: BytesMut,
    /// How long a payload may go without a byte arriving; see
    /// [`FrameReader::set_stall_timeout`].
    stall: Option<Duration>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `io`.
    pub fn new(io: R) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            stall: None,
        }
    }

    /// Makes [`read_payload`](FrameReader::read_payload) and
    /// [`skip_payload`](FrameReader::skip_payload) fail with
    /// [`io::ErrorKind::TimedOut`] when no byte of the payload arrives for
    /// `limit`: an upload that stalls gives back what it holds without
    /// waiting for the whole frame's deadline.
    pub fn set_stall_timeout(&mut self, limit: Option<Duration>) {
        self.stall = limit;
    }

    /// Bytes read from the stream and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads the next prefix and header. `Ok(None)` is a clean end of stream
    /// between frames. The prefix is checked against `limits` before the
    /// header is read, so nothing is allocated for an oversize claim.
    pub async fn read_head(&mut self, limits: &Limits) -> Result<Option<Head>, ReadError> {
        let prefix = loop {
            if let Some(prefix) = Prefix::parse(&self.buf)? {
                break prefix;
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        };
        limits.check(&prefix)?;
        let header_len = prefix.header_len as usize;
        while self.buf.len() < PREFIX_LEN + header_len {
            if !self.fill().await? {
                return Err(ReadError::Truncated);
            }
        }
        self.buf.advance(PREFIX_LEN);
        let header = self.buf.split_to(header_len);
        Ok(Some(Head { prefix, header }))
    }

    /// Reads a payload of `len` bytes (already checked against the limits)
    /// into a new allocation of exactly that size. What is already buffered
    /// is copied; the rest is read from the stream straight into place.
    pub async fn read_payload(&mut self, len: u64) -> Result<Bytes, ReadError> {
        Ok(Bytes::from(self.read_payload_in(len, Vec::new()).await?))
    }

    /// [`read_payload`](FrameReader::read_payload) into `payload`, an
    /// empty buffer (a reused one, say) that grows to exactly `len` bytes
    /// if it has less room.
    pub async fn read_payload_in(
        &mut self,
        len: u64,
        mut payload: Vec<u8>,
    ) -> Result<Vec<u8>, ReadError> {
        let size = usize::try_from(len).map_err(|_| ReadError::Alloc(len))?;
        payload.clear();
        // Fallible: a payload the limits allow but memory does not is an
        // error for this frame, not the end of the process.
        let fresh = payload.capacity() < size;
        payload
            .try_reserve_exact(size)
            .map_err(|_| ReadError::Alloc(len))?;
        if fresh && size >= HUGE_PAGES_FROM {
            advise_huge_pages(&mut payload);
        }
        let buffered = size.min(self.buf.len());
        payload.extend_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        while payload.len() < size {
            let want = (size - payload.len()) as u64;
            // `take` keeps the read inside this payload; the buffer has the
            // capacity for all of it, so it never grows.
            let stall = self.stall;
            let mut limited = (&mut self.io).take(want);
            let read = limited.read_buf(&mut payload);
            let n = match stall {
                None => read.await?,
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .map_err(|_| stalled(limit))??,
            };
            if n == 0 {
                return Err(ReadError::Truncated);
            }
        }
        Ok(payload)
    }

    /// Reads a payload of `len` bytes straight into `dst`, which must be
    /// exactly `len` bytes long.
    pub async fn read_payload_into(&mut self, dst: &mut [u8]) -> Result<(), ReadError> {
        let buffered = dst.len().min(self.buf.len());
        dst[..buffered].copy_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        let rest = &mut dst[buffered..];
        if !rest.is_empty() {
            self.io.read_exact(rest).await.map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ReadError::Truncated,
                _ => ReadError::Io(e),
            })?;
        }
        Ok(())
    }

    /// Reads and discards `len` payload bytes, in bounded chunks.
    pub async fn skip_payload(&mut self, mut len: u64) -> Result<(), ReadError> {
        loop {
            let buffered = len.min(self.buf.len() as u64) as usize;
            self.buf.advance(buffered);
            len -= buffered as u64;
            if len == 0 {
                return Ok(());
            }
            if !self.fill_payload().await? {
                return Err(ReadError::Truncated);
            }
        }
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    async fn fill(&mut self) -> Result<bool, ReadError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    /// [`fill`](FrameReader::fill) within the stall timeout.
    async fn fill_payload(&mut self) -> Result<bool, ReadError> {
        let Some(limit) = self.stall else {
            return self.fill().await;
        };
        tokio::time::timeout(limit, self.fill())
            .await
            .unwrap_or_else(|_| Err(ReadError::Io(stalled(limit))))
    }
}

/// Payloads at least this large ask for transparent huge pages.
const HUGE_PAGES_FROM: usize = 4 << 20;

/// Asks the kernel to back the 2 MiB-aligned part of `buf`'s allocation
/// with transparent huge pages (`MADV_HUGEPAGE`; this machine, like most,
/// runs THP in `madvise` mode). A fresh buffer is then faulted in 2 MiB at
/// a time instead of 4 KiB: a 64 MiB payload costs 32 page faults, not
/// 16 384. Only whole huge pages inside the allocation are advised, so no
/// huge page spans memory that is not this payload's.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let end = start + buf.capacity();
    let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if to > from {
        // SAFETY: [from, to) lies inside `buf`'s allocation, which this
        // function borrows mutably, and is page-aligned. MADV_HUGEPAGE is
        // advice: it changes how the kernel backs these pages when they
        // are touched, never their contents or whether they are valid.
        // Its failure (a kernel without THP) leaves them as they were.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buf: &mut Vec<u8>) {}

/// The error for a payload from which no byte arrived for `limit`.
fn stalled(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no payload byte arrived for {limit:?}"),
    )
}

/// A frame to send: its head (prefix and header) and its payload, kept
/// apart so the payload goes out from its own buffer.
#[derive(Debug, Clone, Default)]
pub struct OutFrame {
    /// Prefix and header bytes.
    pub head: Bytes,
    /// The payload; empty for most frames.
    pub payload: Bytes,
    /// The file descriptor a `FLAG_FD` frame passes (the local door only);
    /// the writer sends it no later than the frame's first byte.
    pub fd: Option<Arc<OwnedFd>>,
}

/// A frame in a writer's queue, with what it keeps reserved (the server's
/// queued-bytes budgets; `()` for a client) until it has been written, or
/// dropped unwritten with its queue.
#[derive(Debug)]
pub struct Queued<H> {
    /// The frame.
    pub frame: OutFrame,
    /// Released once the frame is written.
    pub hold: H,
}

impl From<OutFrame> for Queued<()> {
    fn from(frame: OutFrame) -> Queued<()> {
        Queued { frame, hold: () }
    }
}

impl OutFrame {
    /// A frame of a head and a payload.
    pub fn new(head: impl Into<Bytes>, payload: Bytes) -> OutFrame {
        OutFrame {
            head: head.into(),
            payload,
            fd: None,
        }
    }

    /// Bytes on the wire.
    pub fn len(&self) -> u64 {
        (self.head.len() + self.payload.len()) as u64
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.payload.is_empty()
    }
}

/// Writes every frame in `frames` with vectored writes: heads and payloads
/// go to the kernel as they are, many frames per system call, without
/// copying a payload into a staging buffer.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: impl IntoIterator<Item = OutFrame>,
) -> io::Result<()> {
    let mut chunks = VecDeque::new();
    let mut holds = Vec::new();
    queue_chunks(
        &mut chunks,
        &mut holds,
        frames.into_iter().map(Queued::from),
        None,
    )?;
    write_chunks(io, &mut chunks, None).await
}

/// Descriptors waiting for a descriptor-carrying writer's next `sendmsg`.
pub type Outbox = Arc<Mutex<VecDeque<Arc<OwnedFd>>>>;

/// Moves the frames' buffers onto `chunks`, their descriptors onto
/// `outbox` (before any of their bytes are written) and their holds onto
/// `holds`. A descriptor with nowhere to go is an error.
fn queue_chunks<H>(
    chunks: &mut VecDeque<Bytes>,
    holds: &mut Vec<H>,
    frames: impl IntoIterator<Item = Queued<H>>,
    outbox: Option<&Outbox>,
) -> io::Result<()> {
    for Queued { frame, hold } in frames {
        if let Some(fd) = frame.fd {
            let Some(outbox) = outbox else {
                return Err(io::Error::other(
                    "a file descriptor to send on a stream that cannot carry one",
                ));
            };
            outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(fd);
        }
        // Empty for the rest of a frame written in part elsewhere (see
        // `direct`), or for one written all but its flush.
        if !frame.head.is_empty() {
            chunks.push_back(frame.head);
        }
        if !frame.payload.is_empty() {
            chunks.push_back(frame.payload);
        }
        holds.push(hold);
    }
    Ok(())
}

/// Writes and empties `chunks`, up to [`MAX_IOV`] buffers per `writev`.
/// With a `stall` limit, a write that makes no progress for that long fails
/// with [`io::ErrorKind::TimedOut`].
async fn write_chunks<W: AsyncWrite + Unpin>(
    io: &mut W,
    chunks: &mut VecDeque<Bytes>,
    stall: Option<Duration>,
) -> io::Result<()> {
    while !chunks.is_empty() {
        // One small allocation per system call; the buffers are not copied.
        let slices: Vec<IoSlice<'_>> = chunks
            .iter()
            .take(MAX_IOV)
            .map(|c| IoSlice::new(c))
            .collect();
        let write = io.write_vectored(&slices);
        let mut written = match stall {
            None => write.await?,
            Some(limit) => tokio::time::timeout(limit, write).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no write progress for {limit:?}"),
                )
            })??,
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    io.flush().await
}

/// Drains a queue of frames onto `writer`: waits for one frame, takes
/// whatever else is already queued (up to a bound) and writes them all with
/// vectored writes, so pipelined small responses share system calls. Each
/// frame's hold is released once it is written. Shuts the writer down
/// when every sender is gone (`Ok`); stops at the first error, or when a
/// write makes no progress for `stall` (an error of kind `TimedOut`) —
/// then the queue is dropped with everything it holds, and senders see it
/// closed.
///
/// A frame's descriptor goes onto `outbox` (which `writer` must send
/// with its next write, see `fast::local`) when the frame is taken.
pub async fn write_loop<W: AsyncWrite + Unpin, H>(
    mut writer: W,
    mut rx: tokio::sync::mpsc::Receiver<Queued<H>>,
    stall: Option<Duration>,
    outbox: Option<Outbox>,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut chunks = VecDeque::with_capacity(2 * WRITE_BATCH);
    let mut holds = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let queued = queue_chunks(&mut chunks, &mut holds, batch.drain(..), outbox.as_ref());
        let written = match queued {
            Ok(()) => write_chunks(&mut writer, &mut chunks, stall).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!("write failed: {e}");
            // Closed before the batch's holds are dropped: a sender that
            // then sees no frame unwritten (`direct::Unwritten`) sees the
            // queue closed too, and writes nothing after the cut-short
            // frame.
            rx.close();
            return Err(e);
        }
        holds.clear();
    }
    if let Some(limit) = stall {
        let _ = tokio::time::timeout(limit, writer.shutdown()).await;
    } else {
        writer.shutdown().await.ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::wire::{encode_head, Opcode, Status};

    const LIMITS: Limits = Limits {
        max_header: 1024,
        max_payload: 1 << 20,
    };

    fn frame(id: u64, header: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = encode_head(Opcode::Put, 0, id, header, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn reads_frames_split_at_every_boundary() {
        let mut wire = frame(1, b"hdr", b"payload-one");
        wire.extend(frame(2, b"", b""));
        wire.extend(frame(3, b"h3", &[9u8; 300]));
        for chunk in [1, 2, 7, 31, 32, 33, 1000] {
            let (mut tx, rx) = tokio::io::duplex(chunk);
            let wire2 = wire.clone();
            let writer = tokio::spawn(async move {
                for piece in wire2.chunks(chunk) {
                    tx.write_all(piece).await.unwrap();
                }
            });
            let mut reader = FrameReader::new(rx);
            let h = reader.read_head(&LIMITS).await.unwrap().unwrap();
            assert_eq!((h.prefix.request_id, &h.header[..]), (1, &b"hdr"[..]));
            assert_eq!(&reader.read_payload(11).await.unwrap()[..], b"payload-one");
            let h = reader.read_head(&LIMITS).await.unwrap().unwrap();
            assert_eq!((h.prefix.request_id, h.header.len()), (2, 0));
            assert!(reader.read_payload(0).await.unwrap().is_empty());
            let h = reader.read_head(&LIMITS).await.unwrap().unwrap();
            assert_eq!(h.prefix.request_id, 3);
            let mut dst = vec![0u8; 300];
            reader.read_payload_into(&mut dst).await.unwrap();
            assert_eq!(dst, vec![9u8; 300]);
            writer.await.unwrap();
            assert!(
                reader.read_head(&LIMITS).await.unwrap().is_none(),
                "clean EOF"
            );
        }
    }

    #[tokio::test]
    async fn payload_gets_an_exact_allocation() {
        let wire = frame(1, b"", &[5u8; 100_000]);
        let mut reader = FrameReader::new(&wire[..]);
        let h = reader.read_head(&LIMITS).await.unwrap().unwrap();
        let payload = reader.read_payload(h.prefix.payload_len).await.unwrap();
        assert_eq!(payload.len(), 100_000);
        // Its own allocation: converting back to a unique BytesMut shows the
        // capacity is exactly the length.
        let owned = payload.try_into_mut().expect("unique");
        assert_eq!(owned.capacity(), 100_000);
    }

    #[tokio::test]
    async fn a_payload_memory_cannot_hold_is_an_error_not_an_abort() {
        // Within whatever limits a caller set, but more than any process
        // can allocate: the read fails, the process goes on.
        let mut reader = FrameReader::new(&b""[..]);
        let result = reader.read_payload(1 << 62).await;
        assert!(matches!(result, Err(ReadError::Alloc(n)) if n == 1 << 62));
    }

    #[tokio::test]
    async fn eof_mid_frame_is_truncated_and_oversize_claims_are_refused() {
        let wire = frame(1, b"abc", b"0123456789");
        for cut in 1..wire.len() {
            let mut reader = FrameReader::new(&wire[..cut]);
            let result = match reader.read_head(&LIMITS).await {
                Ok(Some(h)) => reader.read_payload(h.prefix.payload_len).await.map(|_| ()),
                Ok(None) => panic!("a cut frame is not a clean EOF"),
                Err(e) => Err(e),
            };
            assert!(matches!(result, Err(ReadError::Truncated)), "cut at {cut}");
        }
        let mut huge = encode_head(Opcode::Put, 0, 7, b"", 1 << 63);
        huge.extend_from_slice(&[0u8; 16]);
        let err = FrameReader::new(&huge[..])
            .read_head(&LIMITS)
            .await
            .unwrap_err();
        match err {
            ReadError::Protocol(e) => assert_eq!((e.status, e.request_id), (Status::TooLarge, 7)),
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn skip_payload_resynchronises() {
        let mut wire = frame(1, b"", &[1u8; 200_000]);
        wire.extend(frame(2, b"x", b"y"));
        let mut reader = FrameReader::new(&wire[..]);
        let h = reader.read_head(&LIMITS).await.unwrap().unwrap();
        reader.skip_payload(h.prefix.payload_len).await.unwrap();
        let h = reader.read_head(&LIMITS).await.unwrap().unwrap();
        assert_eq!(h.prefix.request_id, 2);
    }

    #[tokio::test]
    async fn vectored_writer_sends_everything_in_order() {
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        let frames: Vec<OutFrame> = (0..200u8)
            .map(|i| OutFrame::new(vec![i; 3], Bytes::from(vec![i; i as usize * 10])))
            .collect();
        let expected: Vec<u8> = frames
            .iter()
            .flat_map(|f| f.head.iter().chain(f.payload.iter()).copied())
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.unwrap();
            got
        });
        write_frames(&mut tx, frames).await.unwrap();
        drop(tx);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
