//! One fast-path connection: read requests, apply them to the engine, queue
//! the responses for a writer task.
//!
//! The reader executes each request as soon as it is decoded (engine calls
//! never block) and pushes the response frames into a bounded queue. A
//! writer task drains the queue with vectored writes, many responses per
//! system call. When a client stops reading, the socket fills, the writer
//! blocks, the queue fills, and the reader stops reading requests: memory
//! stays bounded by the queue length, and queued GET payloads are shared
//! with the engine, not copied.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FastConfig;
use crate::engine::Engine;
use crate::fast::stream::{write_loop, FrameReader, OutFrame, ReadError};
use crate::fast::wire::{
    encode_frame, AlignedHeader, ArchivedRequest, Body, EncodeError, Limits, Opcode, Prefix,
    ProtocolError, Response, Status, FLAG_END, FLAG_RESPONSE,
};
use crate::tensor::Tensor;
use crate::Error;

/// Serves one connection until the client closes it, it breaks the
/// protocol, it idles past the timeout, or `shutdown` is cancelled.
pub(crate) async fn serve_connection<R, W>(
    reader: R,
    writer: W,
    engine: Engine,
    config: Arc<FastConfig>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<OutFrame>(config.max_in_flight.max(1));
    let writer = tokio::spawn(write_loop(writer, rx));
    let mut reader = FrameReader::new(reader);
    // Each header is validated and read in place here; reused, so a
    // connection allocates for headers only while they grow.
    let mut aligned = AlignedHeader::new();
    let limits = Limits {
        max_header: config.max_header,
        max_payload: config.max_payload,
    };
    loop {
        let head = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let err = ProtocolError::new(Status::ShuttingDown, 0, "the server is shutting down");
                send_error(&tx, Opcode::Ping, &err).await;
                break;
            }
            head = tokio::time::timeout(config.idle_timeout, reader.read_head(&limits)) => head,
        };
        let head = match head {
            Err(_elapsed) => {
                let err = ProtocolError::new(Status::Timeout, 0, "idle timeout");
                send_error(&tx, Opcode::Ping, &err).await;
                break;
            }
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                fail(&tx, None, e).await;
                break;
            }
        };
        let prefix = head.prefix;
        let request = match aligned
            .request(&head.header, prefix.request_id)
            .and_then(|r| check_framing(&prefix, r))
        {
            Ok(request) => request,
            Err(e) => {
                send_error(&tx, prefix.opcode, &e).await;
                break;
            }
        };
        let per_frame = tokio::time::timeout(
            config.idle_timeout,
            handle(&mut reader, &engine, &prefix, request, &tx),
        );
        match per_frame.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                fail(&tx, Some(&prefix), e).await;
                break;
            }
            Err(_elapsed) => {
                let err = ProtocolError::new(
                    Status::Timeout,
                    prefix.request_id,
                    "the payload did not arrive within the idle timeout",
                );
                send_error(&tx, prefix.opcode, &err).await;
                break;
            }
        }
    }
    drop(tx);
    writer.await.ok();
}

/// Queues an error frame, if the peer can still hear it.
async fn send_error(tx: &mpsc::Sender<OutFrame>, opcode: Opcode, err: &ProtocolError) {
    match error_frame(opcode, err) {
        Ok(frame) => drop(tx.send(frame).await),
        Err(e) => tracing::warn!("cannot encode an error frame: {e}"),
    }
}

/// Sends the error that ends a connection, if the peer can still hear it.
async fn fail(tx: &mpsc::Sender<OutFrame>, prefix: Option<&Prefix>, err: impl Into<Fatal>) {
    let (opcode, id) = prefix.map_or((Opcode::Ping, 0), |p| (p.opcode, p.request_id));
    match err.into() {
        Fatal::Read(ReadError::Protocol(e)) => send_error(tx, opcode, &e).await,
        Fatal::Read(ReadError::Io(e)) => tracing::debug!("connection failed: {e}"),
        Fatal::Read(ReadError::Truncated) => tracing::debug!("connection closed mid-frame"),
        Fatal::Encode(e) => {
            tracing::warn!("cannot encode a response: {e}");
            let err = ProtocolError::new(Status::Internal, id, e.to_string());
            send_error(tx, opcode, &err).await;
        }
    }
}

/// A request must be a request, carry the opcode of its header, and carry
/// a payload only if it is a PUT.
fn check_framing<'a>(
    prefix: &Prefix,
    request: &'a ArchivedRequest,
) -> Result<&'a ArchivedRequest, ProtocolError> {
    let id = prefix.request_id;
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
    if prefix.opcode != Opcode::Put && prefix.payload_len != 0 {
        return Err(ProtocolError::new(
            Status::Malformed,
            id,
            format!("{:?} carries no payload", prefix.opcode),
        ));
    }
    Ok(request)
}

/// Why a request ended its connection.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Applies one request, read in place from its archived header, and queues
/// its response frames. Errors are fatal to the connection; request-level
/// failures are answered and return `Ok`.
async fn handle<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    engine: &Engine,
    prefix: &Prefix,
    request: &ArchivedRequest,
    tx: &mpsc::Sender<OutFrame>,
) -> Result<(), Fatal> {
    let id = prefix.request_id;
    let opcode = prefix.opcode;
    let reply = |response: Response| response_frame(opcode, FLAG_END, id, &response, Bytes::new());
    let refuse = |e: Error| error_frame(opcode, &ProtocolError::from_error(&e, id));
    let frame = match request {
        ArchivedRequest::Ping => reply(Response::ok(Body::Empty))?,
        ArchivedRequest::Get { key } => get_frame(engine, key.as_str(), opcode, FLAG_END, id, 0)?,
        ArchivedRequest::Put { key, meta } => {
            let key = key.as_str();
            let admitted = meta
                .to_meta()
                .and_then(|meta| engine.admit(key, &meta, prefix.payload_len).map(|_| meta));
            match admitted {
                Err(e) => {
                    // Refused before reading: skip the payload without
                    // keeping it, then answer.
                    reader.skip_payload(prefix.payload_len).await?;
                    refuse(e)?
                }
                Ok(meta) => {
                    let payload = reader.read_payload(prefix.payload_len).await?;
                    match Tensor::new(meta, payload).and_then(|t| engine.put(key, t)) {
                        Ok(()) => reply(Response::ok(Body::Empty))?,
                        Err(e) => refuse(e)?,
                    }
                }
            }
        }
        ArchivedRequest::Delete { key } => match engine.delete(key.as_str()) {
            Ok(deleted) => reply(Response::ok(Body::Deleted(deleted)))?,
            Err(e) => refuse(e)?,
        },
        ArchivedRequest::Stats => {
            reply(Response::ok(Body::Stats(engine.stats().counters().into())))?
        }
        ArchivedRequest::GetMany { keys } => {
            let Some((last, rest)) = keys.split_last() else {
                return send(tx, reply(Response::ok(Body::Empty))?).await;
            };
            for (i, key) in rest.iter().enumerate() {
                let frame = get_frame(engine, key.as_str(), opcode, 0, id, i as u32)?;
                send(tx, frame).await?;
            }
            get_frame(
                engine,
                last.as_str(),
                opcode,
                FLAG_END,
                id,
                rest.len() as u32,
            )?
        }
    };
    send(tx, frame).await
}

/// Queues a frame; fails once the writer has given up on the socket.
async fn send(tx: &mpsc::Sender<OutFrame>, frame: OutFrame) -> Result<(), Fatal> {
    tx.send(frame)
        .await
        .map_err(|_| ReadError::Io(std::io::ErrorKind::BrokenPipe.into()).into())
}

/// The frame answering a GET of `key` (or one key of a batch): the stored
/// payload is attached as is, a reference to the engine's own buffer.
fn get_frame(
    engine: &Engine,
    key: &str,
    opcode: Opcode,
    flags: u8,
    id: u64,
    index: u32,
) -> Result<OutFrame, EncodeError> {
    let found = engine
        .get(key)
        .and_then(|found| found.ok_or_else(|| Error::NotFound(key.to_owned())));
    let (mut response, payload) = match found {
        Ok(tensor) => {
            let (meta, data) = tensor.into_parts();
            (Response::ok(Body::Tensor((&meta).into())), data)
        }
        Err(e) => {
            let e = ProtocolError::from_error(&e, id);
            (Response::error(e.status, e.message), Bytes::new())
        }
    };
    response.index = index;
    response_frame(opcode, flags, id, &response, payload)
}

/// A response frame: encoded head plus the payload as given.
fn response_frame(
    opcode: Opcode,
    flags: u8,
    id: u64,
    response: &Response,
    payload: Bytes,
) -> Result<OutFrame, EncodeError> {
    let head = encode_frame(
        opcode,
        flags | FLAG_RESPONSE,
        id,
        response,
        payload.len() as u64,
    )?;
    Ok(OutFrame {
        head: Bytes::from(head),
        payload,
    })
}

/// An error response ending its request.
pub(super) fn error_frame(opcode: Opcode, err: &ProtocolError) -> Result<OutFrame, EncodeError> {
    let response = Response::error(err.status, err.message.clone());
    response_frame(opcode, FLAG_END, err.request_id, &response, Bytes::new())
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
        let frame = get_frame(&engine, "k", Opcode::Get, FLAG_END, 1, 0).unwrap();
        // Zero copy: the payload chunk handed to writev is the very
        // allocation the engine holds.
        assert_eq!(frame.payload.as_ptr(), stored_ptr);
        assert_eq!(frame.payload.len(), 4096);
    }
}
