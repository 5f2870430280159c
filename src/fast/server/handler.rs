//! One fast-path connection: read requests, apply them to the engine, queue
//! the responses for a writer task.
//!
//! The reader executes each request as soon as it is decoded (engine calls
//! never block) and pushes the response frames into a bounded queue. A
//! writer task drains the queue with vectored writes, many responses per
//! system call. The answer to the last request buffered goes out at once
//! instead, from this task, when nothing is queued ahead of it (see
//! `Queue`): one request at a time, the writer task never wakes. When a
//! client stops reading, the socket fills, the writer blocks, the queue
//! fills, and the reader stops reading requests: memory stays bounded by
//! the queue length, and queued GET payloads are shared with the engine,
//! not copied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::budget::{Closed, Queue, Shared};
use super::deadline::Deadline;
use super::FastConfig;
use crate::engine::{Engine, Lookup};
use crate::fast::direct::{drain, SharedWriter};
use crate::fast::local::{memfd, Local, SHARE_THRESHOLD};
use crate::fast::stream::{FrameReader, OutFrame, ReadError};
use crate::fast::wire::{
    encode_frame_as, AlignedHeader, ArchivedRequest, ArchivedWireMeta, Body, EncodeError, Limits,
    Opcode, Prefix, ProtocolError, Response, Status, WireMeta, BULK_THRESHOLD, FLAG_END, FLAG_FD,
    FLAG_NOT_BULK, FLAG_RESPONSE, MIN_VERSION,
};
pub(super) use crate::metrics::DoorRecorder;
use crate::metrics::{Door, ServerMetrics};
use crate::tensor::codec::Encoding;
use crate::tensor::Tensor;
use crate::Error;

/// How long a connection's last word (the error that ends it) may wait for
/// room in its queue.
const LAST_WORD: Duration = Duration::from_secs(1);

/// Room reserved for a response head beyond its key: prefix, header and
/// metadata.
const HEAD_ESTIMATE: u64 = 512;

/// What serving one connection needs from its server.
pub(crate) struct Serving {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<FastConfig>,
    pub(crate) shared: Arc<Shared>,
    /// Cancelled when the server shuts down.
    pub(crate) stop: CancellationToken,
    pub(crate) recorder: Arc<DoorRecorder>,
}

/// Serves one connection until the client closes it, it breaks the
/// protocol, it idles past the timeout, its writer stalls past the write
/// timeout, or `shutdown` is cancelled.
pub(crate) async fn serve_connection<R, W>(
    reader: R,
    writer: W,
    serving: Serving,
    local: Option<Local>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        engine,
        config,
        shared,
        stop: shutdown,
        recorder,
    } = serving;
    let (tx, rx) = mpsc::channel(config.max_in_flight.max(1));
    // Shared by the writer task and the queue, which writes a frame at
    // once when none is ahead of it.
    let out = SharedWriter::new(writer);
    // Aborted if this future is dropped (the server's grace period ran out).
    let writer = AbortOnDropHandle::new(tokio::spawn(drain(
        out.clone(),
        rx,
        Some(config.write_timeout),
        local.as_ref().map(|l| Arc::clone(&l.outbox)),
    )));
    let queue = Queue::new(tx, out, config.max_queued_bytes, shared, shutdown.clone());
    let mut reader = FrameReader::new(reader);
    // An upload that stops sending gives back its ingress room.
    reader.set_stall_timeout(Some(config.write_timeout));
    // Each header is validated and read in place here; reused, so a
    // connection allocates for headers only while they grow.
    let mut aligned = AlignedHeader::new();
    let limits = Limits {
        max_header: config.max_header,
        max_payload: config.max_payload.min(config.max_ingress),
    };
    // The loop's own scope: its pinned futures borrow the queue.
    {
        // Built once, not per request: each registers a waiter.
        let mut stopping = std::pin::pin!(shutdown.cancelled());
        let mut writer_gone = std::pin::pin!(queue.closed());
        // The idle limit and the per-request limit, one timer for both.
        let mut deadline = Deadline::new(config.idle_timeout);
        loop {
            let head = tokio::select! {
                biased;
                () = &mut stopping => {
                    let err = ProtocolError::new(Status::ShuttingDown, 0, "the server is shutting down");
                    send_error(&queue, None, &err).await;
                    break;
                }
                // The writer gave up (a stalled reader): the connection is over.
                () = &mut writer_gone => break,
                head = deadline.within(reader.read_head(&limits)) => head,
            };
            let head = match head {
                None => {
                    let err = ProtocolError::new(Status::Timeout, 0, "idle timeout");
                    recorder.refused("idle");
                    send_error(&queue, None, &err).await;
                    break;
                }
                Some(Ok(Some(head))) => head,
                Some(Ok(None)) => break,
                Some(Err(e)) => {
                    fail(&queue, None, e, &recorder).await;
                    break;
                }
            };
            // The request must complete within the limit from here.
            let now = tokio::time::Instant::now();
            deadline.touch(now);
            let started = now.into_std();
            let prefix = head.prefix;
            let request = match aligned
                .request(&head.header, prefix.request_id)
                .and_then(|r| check_framing(&prefix, r, local.is_some()))
            {
                Ok(request) => request,
                Err(e) => {
                    recorder.refused(refusal(e.status));
                    send_error(&queue, Some(&prefix), &e).await;
                    break;
                }
            };
            let conn = Conn {
                engine: &engine,
                queue: &queue,
                max_tensor: limits.max_payload,
                local: local.as_ref(),
            };
            let op = prefix.opcode;
            // The answer goes out at once if it is one frame and no other
            // request is buffered behind this one (else it is queued, to
            // share a system call with theirs).
            queue.set_direct(
                op != Opcode::GetMany && reader.buffered() as u64 <= prefix.payload_len,
            );
            // Free unless debug logging is on for this module.
            let span = tracing::debug_span!(
                "request",
                door = "fast",
                op = op.name(),
                key = request_key(request),
                size = prefix.payload_len,
            );
            let per_frame = deadline.within(
                conn.handle(&mut reader, &prefix, request)
                    .instrument(span.clone()),
            );
            let status = match per_frame.await {
                Some(Ok(status)) => status,
                Some(Err(e)) => {
                    let status = fail(&queue, Some(&prefix), e, &recorder).await;
                    record(&recorder, &span, op, status, started);
                    break;
                }
                None => {
                    let err = ProtocolError::new(
                        Status::Timeout,
                        prefix.request_id,
                        "the request did not complete within the idle timeout",
                    );
                    recorder.refused(refusal(err.status));
                    send_error(&queue, Some(&prefix), &err).await;
                    record(&recorder, &span, op, outcome(err.status), started);
                    break;
                }
            };
            record(&recorder, &span, op, outcome(status), started);
            // The next request may take the limit from here.
            deadline.touch(tokio::time::Instant::now());
        }
    }
    drop(queue);
    // Bounded: the writer gives up on a write that makes no progress for
    // the write timeout.
    if let Ok(Err(e)) = writer.await {
        if e.kind() == std::io::ErrorKind::TimedOut {
            // A client that stopped reading its responses.
            recorder.refused("timeout");
        }
    }
}

/// The fast path's recorder: ops by opcode, statuses by code, then
/// `aborted`.
pub(super) fn recorder(metrics: &ServerMetrics, door: Door) -> DoorRecorder {
    let ops: Vec<&str> = (1..=u8::MAX)
        .map_while(Opcode::from_u8)
        .map(Opcode::name)
        .collect();
    let mut statuses: Vec<&str> = Status::ALL.iter().map(|s| s.name()).collect();
    statuses.push(ABORTED.1);
    metrics.recorder(door, &ops, &statuses)
}

/// A request's status for the metrics: a [`Status`] code, or
/// [`ABORTED`]'s.
type Outcome = (usize, &'static str);

fn outcome(status: Status) -> Outcome {
    (status as usize, status.name())
}

/// Counts one request, answered with `status`, and logs it at debug
/// level.
fn record(
    recorder: &DoorRecorder,
    span: &tracing::Span,
    op: Opcode,
    (status, name): Outcome,
    started: Instant,
) {
    let elapsed = started.elapsed();
    recorder.record(op as usize - 1, status, elapsed);
    tracing::debug!(
        parent: span,
        status = name,
        latency_us = elapsed.as_micros() as u64,
        "answered"
    );
}

/// The key a request names, for the log (a batch's first).
fn request_key(request: &ArchivedRequest) -> &str {
    match request {
        ArchivedRequest::Get { key }
        | ArchivedRequest::Put { key, .. }
        | ArchivedRequest::Delete { key }
        | ArchivedRequest::Digest { key }
        | ArchivedRequest::DeleteIf { key, .. } => key.as_str(),
        ArchivedRequest::PutIf(args) => args.key.as_str(),
        ArchivedRequest::GetMany { keys } => keys.first().map_or("", |k| k.as_str()),
        ArchivedRequest::Ping
        | ArchivedRequest::Stats
        | ArchivedRequest::DiskStats
        | ArchivedRequest::Release { .. } => "",
    }
}

/// The `connections_refused` reason for a status that ends a connection.
fn refusal(status: Status) -> &'static str {
    match status {
        Status::Busy => "busy",
        Status::Timeout => "timeout",
        Status::TooLarge => "too_large",
        _ => "malformed",
    }
}

/// Queues the error frame that ends a connection, if the peer can still
/// hear it: in the version and with the opcode of the request it answers,
/// if any (else version 1, which every client reads).
async fn send_error(queue: &Queue, prefix: Option<&Prefix>, err: &ProtocolError) {
    let (version, opcode) = prefix.map_or((MIN_VERSION, Opcode::Ping), |p| (p.version, p.opcode));
    match error_frame(version, opcode, err) {
        Ok(frame) => queue.last_word(frame, LAST_WORD).await,
        Err(e) => tracing::warn!("cannot encode an error frame: {e}"),
    }
}

/// Sends the error that ends a connection, if the peer can still hear it;
/// returns the status label the request ended with: its status, or
/// `aborted` when the connection went away (the client hung up or stopped
/// reading, or the server is shutting down) before it was answered.
async fn fail(
    queue: &Queue,
    prefix: Option<&Prefix>,
    err: impl Into<Fatal>,
    recorder: &DoorRecorder,
) -> Outcome {
    let id = prefix.map_or(0, |p| p.request_id);
    match err.into() {
        Fatal::Read(ReadError::Protocol(e)) => {
            recorder.refused(refusal(e.status));
            send_error(queue, prefix, &e).await;
            outcome(e.status)
        }
        Fatal::Read(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            // An upload that stopped sending its payload.
            recorder.refused("timeout");
            tracing::debug!("connection failed: {e}");
            outcome(Status::Timeout)
        }
        Fatal::Read(ReadError::Io(e)) => {
            tracing::debug!("connection failed: {e}");
            ABORTED
        }
        Fatal::Read(ReadError::Truncated) => {
            tracing::debug!("connection closed mid-frame");
            ABORTED
        }
        Fatal::Closed => {
            tracing::debug!("the connection's writer is gone");
            ABORTED
        }
        Fatal::Read(ReadError::Alloc(n)) => {
            tracing::warn!("cannot allocate a {n}-byte payload");
            outcome(Status::Internal)
        }
        Fatal::Encode(e) => {
            tracing::warn!("cannot encode a response: {e}");
            let err = ProtocolError::new(Status::Internal, id, e.to_string());
            send_error(queue, prefix, &err).await;
            outcome(Status::Internal)
        }
        Fatal::Task(e) => {
            tracing::warn!("{e}");
            let err = ProtocolError::new(Status::Internal, id, e);
            send_error(queue, prefix, &err).await;
            outcome(Status::Internal)
        }
    }
}

/// The outcome of a request whose connection ended before its answer:
/// the client hung up or stopped reading, or the server is shutting down.
const ABORTED: Outcome = (Status::ALL.len(), "aborted");

/// A request must be a request, carry the opcode of its header, carry a
/// payload only if it is a PUT, and pass a descriptor only over the local
/// door.
fn check_framing<'a>(
    prefix: &Prefix,
    request: &'a ArchivedRequest,
    local: bool,
) -> Result<&'a ArchivedRequest, ProtocolError> {
    let id = prefix.request_id;
    if prefix.flags & FLAG_FD != 0 && !local {
        return Err(ProtocolError::new(
            Status::Malformed,
            id,
            "FLAG_FD: file descriptors travel only over the local (Unix socket) door",
        ));
    }
    if prefix.is_response() {
        return Err(ProtocolError::new(
            Status::Malformed,
            id,
            "a client sent a response frame",
        ));
    }
    if request.opcode() != prefix.opcode {
        return Err(ProtocolError::new(
            Status::Malformed,
            id,
            format!(
                "the prefix says {:?} but the header is {:?}",
                prefix.opcode,
                request.opcode()
            ),
        ));
    }
    if !matches!(prefix.opcode, Opcode::Put | Opcode::PutIf) && prefix.payload_len != 0 {
        return Err(ProtocolError::new(
            Status::Malformed,
            id,
            format!("{:?} carries no payload", prefix.opcode),
        ));
    }
    Ok(request)
}

/// Runs `work` on the blocking pool: a digest reads a whole tensor (up to
/// the budget), which must not hold up a runtime worker. Each entry's
/// digest is computed once, so repeating the request costs nothing more.
async fn off_the_runtime<T, F>(engine: &Engine, work: F) -> Result<Result<T, Error>, Fatal>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
{
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || work(&engine))
        .await
        .map_err(|e| Fatal::Task(e.to_string()))
}

/// Why a request ended its connection.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the connection's writer is gone")]
    Closed,
    #[error("a server task failed: {0}")]
    Task(String),
}

impl From<Closed> for Fatal {
    fn from(_: Closed) -> Fatal {
        Fatal::Closed
    }
}

/// What handling one request needs from its connection and server.
struct Conn<'a> {
    engine: &'a Engine,
    queue: &'a Queue,
    /// `--max-tensor`: the largest raw size a packed put may claim.
    max_tensor: u64,
    /// The local door's descriptors and leases; `None` over TCP.
    local: Option<&'a Local>,
}

impl Conn<'_> {
    /// Applies one request, read in place from its archived header, and
    /// queues its response frames; returns the status it was answered
    /// with (a batch: `Ok`, each key's own status being in its frame).
    /// Errors are fatal to the connection; request-level failures are
    /// answered and return `Ok`.
    async fn handle<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        prefix: &Prefix,
        request: &ArchivedRequest,
    ) -> Result<Status, Fatal> {
        let (engine, queue) = (self.engine, self.queue);
        let id = prefix.request_id;
        let (version, opcode) = (prefix.version, prefix.opcode);
        let reply = |response: Response| {
            response_frame(version, opcode, FLAG_END, id, &response, Bytes::new())
                .map(|f| (f, Status::Ok))
        };
        let refuse = |e: Error| {
            let e = ProtocolError::from_error(&e, id);
            error_frame(version, opcode, &e).map(|f| (f, e.status))
        };
        let (frame, status) = match request {
            ArchivedRequest::Ping => reply(Response::ok(Body::Empty))?,
            ArchivedRequest::Get { key } => {
                return self.get(key.as_str(), prefix, FLAG_END, 0).await;
            }
            ArchivedRequest::Put { key, meta } => {
                self.put(reader, prefix, key.as_str(), meta, None).await?
            }
            ArchivedRequest::PutIf(args) => {
                let since = Some(u64::from_le_bytes(args.since));
                self.put(reader, prefix, args.key.as_str(), &args.meta, since)
                    .await?
            }
            ArchivedRequest::Delete { key } => match engine.delete(key.as_str()) {
                Ok(deleted) => reply(Response::ok(Body::Deleted(deleted)))?,
                Err(e) => refuse(e)?,
            },
            ArchivedRequest::Digest { key } => {
                let key = key.as_str().to_owned();
                match off_the_runtime(engine, move |e| e.digest(&key).map(|d| (d, key))).await? {
                    Ok((Some(digest), _)) => reply(Response::ok(Body::Digest(digest)))?,
                    Ok((None, key)) => refuse(Error::NotFound(key))?,
                    Err(e) => refuse(e)?,
                }
            }
            ArchivedRequest::DeleteIf { key, digest } => {
                let (key, digest) = (key.as_str().to_owned(), u64::from_le_bytes(*digest));
                match off_the_runtime(engine, move |e| e.delete_if(&key, digest)).await? {
                    Ok(deleted) => reply(Response::ok(Body::Deleted(deleted)))?,
                    Err(e) => refuse(e)?,
                }
            }
            ArchivedRequest::Stats => {
                reply(Response::ok(Body::Stats(engine.stats().counters().into())))?
            }
            ArchivedRequest::DiskStats => reply(Response::ok(Body::DiskStats(
                engine.disk_stats().map(|d| Box::new(d.into())),
            )))?,
            ArchivedRequest::Release { leases } => {
                // Over TCP nothing is leased: nothing to let go of.
                if let Some(local) = self.local {
                    for lease in leases.iter() {
                        local.leases.release(u64::from_le_bytes(*lease));
                    }
                }
                reply(Response::ok(Body::Empty))?
            }
            ArchivedRequest::GetMany { keys } => {
                let Some((last, rest)) = keys.split_last() else {
                    queue.push(reply(Response::ok(Body::Empty))?.0).await?;
                    return Ok(Status::Ok);
                };
                for (i, key) in rest.iter().enumerate() {
                    self.get(key.as_str(), prefix, 0, i as u32).await?;
                }
                self.get(last.as_str(), prefix, FLAG_END, rest.len() as u32)
                    .await?;
                return Ok(Status::Ok);
            }
        };
        queue.push(frame).await?;
        Ok(status)
    }

    /// A PUT (or, with `since`, a PUT_IF): checked before its payload is
    /// read, which is received only once there is room for it; returns the
    /// answer.
    async fn put<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        prefix: &Prefix,
        key: &str,
        meta: &ArchivedWireMeta,
        since: Option<u64>,
    ) -> Result<(OutFrame, Status), Fatal> {
        let (engine, id, opcode) = (self.engine, prefix.request_id, prefix.opcode);
        let version = prefix.version;
        let len = prefix.payload_len;
        let refuse = |e: Error| {
            let e = ProtocolError::from_error(&e, id);
            error_frame(version, opcode, &e).map(|f| (f, e.status))
        };
        // The payload is a sealed memfd passed beside the frame (the local
        // door), taken now so that it is never left for the next frame.
        let passed = match (prefix.flags & FLAG_FD != 0, self.local) {
            (true, Some(local)) => Some(local.inbox.take().ok_or_else(|| {
                malformed(id, "FLAG_FD, but no file descriptor came with the frame")
            })?),
            _ => None,
        };
        let admitted = meta.to_meta().and_then(|m| {
            // Version 1 had padding where `encoding` is: whatever a
            // version-1 client left there, its payload is raw.
            let encoding = match version {
                1 => Encoding::Raw,
                _ => meta.encoding()?,
            };
            engine
                .admit_encoded(key, &m, encoding, len)
                .map(|_| (m, encoding))
        });
        let (meta, encoding) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => {
                // Refused before reading: skip the payload without keeping
                // it (a passed memfd is closed), then answer.
                if passed.is_none() {
                    reader.skip_payload(len).await?;
                }
                return Ok(refuse(e)?);
            }
        };
        // A packed tensor is unpacked whole for version-1 and gRPC readers:
        // its raw size is held to the largest payload this server takes
        // (`--max-tensor`, and `--max-ingress`, which bounds the unpacked
        // copies), as a raw one's is (LZ4 could otherwise claim 255 times
        // its bytes).
        if encoding != Encoding::Raw && meta.byte_size() > self.max_tensor {
            if passed.is_none() {
                reader.skip_payload(len).await?;
            }
            let e = ProtocolError::new(
                Status::OutOfMemory,
                id,
                format!(
                    "OutOfMemory: the packed tensor unpacks to {} bytes, over this server's \
                     largest tensor ({} bytes, --max-tensor)",
                    meta.byte_size(),
                    self.max_tensor
                ),
            );
            return Ok(error_frame(version, opcode, &e).map(|f| (f, e.status))?);
        }
        let _receiving;
        let payload = match (passed, self.local) {
            // Kept as the memfd, mapped, not copied: nothing is allocated
            // for it. Within the door's limit on such payloads (each holds
            // a descriptor and a mapping), and only large ones.
            (Some(fd), Some(local))
                if len >= SHARE_THRESHOLD as u64 && memfd::shared_count() < local.limits.shared =>
            {
                memfd::adopt(fd, len).map_err(|e| malformed(id, e.to_string()))?
            }
            (Some(fd), _) => {
                // Copied out and closed, within the ingress budget.
                _receiving = self.queue.receive(len).await?;
                memfd::read(fd, len).map_err(|e| malformed(id, e.to_string()))?
            }
            (None, _) => {
                // Room among the payloads being received, before
                // allocating this one; held until the engine has it.
                _receiving = self.queue.receive(len).await?;
                reader.read_payload(len).await?
            }
        };
        // An encoded payload's framing is checked here; its contents when
        // a reader decodes it.
        let stored = Tensor::from_encoded(meta, encoding, payload).and_then(|t| match since {
            None => engine.put(key, t),
            Some(since) => engine.put_if(key, t, since),
        });
        Ok(match stored {
            Ok(()) => {
                let ok = Response::ok(Body::Empty);
                (
                    response_frame(version, opcode, FLAG_END, id, &ok, Bytes::new())?,
                    Status::Ok,
                )
            }
            Err(e) => refuse(e)?,
        })
    }

    /// Answers a GET of `key` (or one key of a batch), returning its
    /// status. Room in the queue is reserved before the tensor is taken
    /// from the engine, so a reader waiting for room never keeps an evicted
    /// tensor alive. A version-1 request is answered with an encoded
    /// tensor decoded (on the blocking pool).
    async fn get(
        &self,
        key: &str,
        prefix: &Prefix,
        flags: u8,
        index: u32,
    ) -> Result<Status, Fatal> {
        // A version-1 reader is sent a packed tensor unpacked: room for
        // its raw size.
        let len = match prefix.version {
            1 => self.engine.peek_raw_len(key),
            _ => self.engine.peek_len(key),
        };
        // A large tensor a version-3 client fetches on a connection of its
        // own is answered `Bulk` from its peeked size, before it is looked
        // up: a tensor on disk is read (and counted, and considered for
        // promotion) once, by the GET that takes its payload.
        if let Some(len) = len.filter(|&len| wants_bulk(prefix, len)) {
            let reservation = self.queue.reserve(HEAD_ESTIMATE).await?;
            let (frame, status) = answer(bulk(len), Bytes::new(), prefix, flags, index)?;
            self.queue.send(frame, reservation).await?;
            return Ok(status);
        }
        // A GET that may be answered with a memfd reserves room for the
        // head only; one answered with bytes after all waits for room for
        // them below.
        let payload = match (self.local, wants_fd(prefix)) {
            (Some(_), true) => 0,
            _ => len.unwrap_or(0),
        };
        let mut estimate = payload + HEAD_ESTIMATE + key.len() as u64;
        loop {
            let reservation = self.queue.reserve(estimate).await?;
            let mut found = self.find(key).await?;
            if let (1, Ok(Some(tensor))) = (prefix.version, &found) {
                if tensor.encoding() != Encoding::Raw {
                    let raw = tensor.meta().byte_size();
                    if raw + HEAD_ESTIMATE + key.len() as u64 > estimate {
                        // Not the size peeked (read from disk, or
                        // replaced): wait for room for the real one.
                        estimate = raw + HEAD_ESTIMATE + key.len() as u64;
                        continue;
                    }
                    found = self.unpack(tensor.clone()).await?.map(Some);
                }
            }
            let (frame, status) = match self.shared(&found, prefix, index) {
                Some(answer) => answer?,
                None => get_frame(found, key, prefix, flags, index)?,
            };
            if frame.len() <= estimate {
                self.queue.send(frame, reservation).await?;
                return Ok(status);
            }
            // The key was replaced by a larger tensor while this waited:
            // let go of it and wait for room for its real size.
            estimate = frame.len();
        }
    }

    /// The answer passing a found tensor's memfd instead of its bytes, if
    /// this is the local door, the request a GET, and the payload a sealed
    /// memfd the server keeps; the tensor is leased under the request's id
    /// (or the answer is `LeaseLimit`).
    fn shared(
        &self,
        found: &Result<Option<Tensor>, Error>,
        prefix: &Prefix,
        index: u32,
    ) -> Option<Result<(OutFrame, Status), EncodeError>> {
        let local = self.local?;
        let Ok(Some(tensor)) = found else { return None };
        if !wants_fd(prefix) {
            return None;
        }
        let fd = memfd::shared_fd(tensor.data())?;
        let id = prefix.request_id;
        Some(match local.leases.grant(id, tensor.data()) {
            Ok(()) => {
                let mut response = Response::ok(Body::Tensor(WireMeta::of(tensor)));
                response.index = index;
                encode_frame_as(
                    prefix.version,
                    prefix.opcode,
                    FLAG_END | FLAG_RESPONSE | FLAG_FD,
                    id,
                    &response,
                    tensor.data().len() as u64,
                )
                .map(|head| {
                    let mut frame = OutFrame::new(head, Bytes::new());
                    frame.fd = Some(fd);
                    (frame, Status::Ok)
                })
            }
            Err(e) => answer(
                Response::error(Status::LeaseLimit, e.to_string()),
                Bytes::new(),
                prefix,
                FLAG_END,
                index,
            ),
        })
    }

    /// `tensor` unpacked, for a version-1 reader, on the blocking pool. The
    /// unpacked copy is memory outside the budget: it is charged to the
    /// payloads-being-received budget (`--max-ingress`) until it is sent.
    async fn unpack(&self, tensor: Tensor) -> Result<Result<Tensor, Error>, Fatal> {
        let room = self.queue.receive(tensor.meta().byte_size()).await?;
        let unpacked = tokio::task::spawn_blocking(move || tensor.decoded())
            .await
            .map_err(|e| Fatal::Task(e.to_string()))?;
        Ok(unpacked.and_then(|t| {
            let (meta, data) = t.into_parts();
            Tensor::new(meta, Bytes::from_owner(Unpacked { data, _room: room }))
        }))
    }

    /// The tensor under `key`, from RAM, or read from the disk tier on the
    /// blocking pool (a whole record is read and checked before a byte of
    /// it is sent: a payload streamed from the file could not be taken back
    /// once its checksum failed).
    async fn find(&self, key: &str) -> Result<Result<Option<Tensor>, Error>, Fatal> {
        Ok(match self.engine.lookup(key) {
            Ok(Lookup::Found(tensor)) => Ok(Some(tensor)),
            Ok(Lookup::Missing) => Ok(None),
            Ok(Lookup::OnDisk(read)) => Ok(tokio::task::spawn_blocking(move || read.read())
                .await
                .map_err(|e| Fatal::Task(e.to_string()))?),
            Err(e) => Err(e),
        })
    }
}

/// An unpacked payload and the budget room it holds until it is dropped
/// (sent, or its connection gone).
struct Unpacked {
    data: Bytes,
    _room: super::budget::Taken,
}

impl AsRef<[u8]> for Unpacked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// The frame answering a GET of `key` (or one key of a batch) with what
/// was `found`, and its status: the stored payload is attached as is, a
/// reference to the engine's own buffer.
fn get_frame(
    found: Result<Option<Tensor>, Error>,
    key: &str,
    prefix: &Prefix,
    flags: u8,
    index: u32,
) -> Result<(OutFrame, Status), EncodeError> {
    let found = found.and_then(|found| found.ok_or_else(|| Error::NotFound(key.to_owned())));
    let (response, payload) = match found {
        // Peeked smaller (or not at all), found larger: replaced meanwhile.
        Ok(tensor) if wants_bulk(prefix, tensor.data().len() as u64) => {
            (bulk(tensor.data().len() as u64), Bytes::new())
        }
        Ok(tensor) => (
            Response::ok(Body::Tensor(WireMeta::of(&tensor))),
            tensor.data().clone(),
        ),
        Err(e) => {
            let e = ProtocolError::from_error(&e, prefix.request_id);
            (Response::error(e.status, e.message), Bytes::new())
        }
    };
    answer(response, payload, prefix, flags, index)
}

/// The frame of `response` (key `index` of a batch) and `payload`,
/// answering the request framed as `prefix`, and its status.
fn answer(
    mut response: Response,
    payload: Bytes,
    prefix: &Prefix,
    flags: u8,
    index: u32,
) -> Result<(OutFrame, Status), EncodeError> {
    response.index = index;
    let status = Status::from_code(response.status);
    let frame = response_frame(
        prefix.version,
        prefix.opcode,
        flags,
        prefix.request_id,
        &response,
        payload,
    )?;
    Ok((frame, status))
}

/// Whether a GET framed as `prefix` of a payload of `len` bytes is
/// answered `Bulk` (docs/PROTOCOL.md, "Bulk replies").
fn wants_bulk(prefix: &Prefix, len: u64) -> bool {
    prefix.opcode == Opcode::Get && prefix.flags & FLAG_NOT_BULK != 0 && len > BULK_THRESHOLD
}

/// Whether a GET framed as `prefix` takes its tensor as a memfd, if the
/// server has it as one (docs/PROTOCOL.md, "The local door").
fn wants_fd(prefix: &Prefix) -> bool {
    prefix.opcode == Opcode::Get && prefix.version >= 3 && prefix.flags & FLAG_FD != 0
}

/// The `Bulk` answer to a GET of a payload of `len` bytes.
fn bulk(len: u64) -> Response {
    Response::error(
        Status::Bulk,
        format!("a payload of {len} bytes: ask on a connection of its own"),
    )
}

/// A response frame in protocol `version`: encoded head plus the payload
/// as given.
fn response_frame(
    version: u8,
    opcode: Opcode,
    flags: u8,
    id: u64,
    response: &Response,
    payload: Bytes,
) -> Result<OutFrame, EncodeError> {
    // Version 1 has no `InvalidEncoding`: its readers are told `Internal`
    // (a stored tensor that does not unpack is the server's problem to
    // them), with the same message.
    let v1;
    let response = if version == 1 && response.status == Status::InvalidEncoding as u16 {
        v1 = Response {
            status: Status::Internal as u16,
            ..response.clone()
        };
        &v1
    } else {
        response
    };
    let head = encode_frame_as(
        version,
        opcode,
        flags | FLAG_RESPONSE,
        id,
        response,
        payload.len() as u64,
    )?;
    Ok(OutFrame::new(head, payload))
}

/// The fatal error for a frame that breaks the protocol.
fn malformed(id: u64, message: impl Into<String>) -> Fatal {
    Fatal::Read(ReadError::Protocol(ProtocolError::new(
        Status::Malformed,
        id,
        message,
    )))
}

/// An error response ending its request, in protocol `version`.
pub(super) fn error_frame(
    version: u8,
    opcode: Opcode,
    err: &ProtocolError,
) -> Result<OutFrame, EncodeError> {
    let response = Response::error(err.status, err.message.clone());
    response_frame(
        version,
        opcode,
        FLAG_END,
        err.request_id,
        &response,
        Bytes::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_frame_sends_the_engines_own_buffer() {
        let engine = Engine::new(1 << 20);
        let tensor = Tensor::from_slice::<u8>(vec![4096], &[3u8; 4096]).unwrap();
        let stored_ptr = tensor.data().as_ptr();
        engine.put("k", tensor).unwrap();
        let prefix = Prefix {
            version: crate::fast::wire::VERSION,
            opcode: Opcode::Get,
            flags: 0,
            request_id: 1,
            header_len: 0,
            payload_len: 0,
        };
        let (frame, status) = get_frame(engine.get("k"), "k", &prefix, FLAG_END, 0).unwrap();
        assert_eq!(status, Status::Ok);
        // Zero copy: the payload chunk handed to writev is the very
        // allocation the engine holds.
        assert_eq!(frame.payload.as_ptr(), stored_ptr);
        assert_eq!(frame.payload.len(), 4096);
    }
}
