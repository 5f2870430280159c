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
use tokio::sync::{mpsc, watch};

use super::{stopped, FastConfig};
use crate::connection::{write_loop, FrameReader, OutFrame, ReadError};
use crate::engine::{validate_key, Engine};
use crate::protocol::{
    decode_request, encode_frame, Body, Limits, Opcode, Prefix, ProtocolError, Request, Response,
    Status, FLAG_END, FLAG_RESPONSE,
};
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;
use crate::Error;

/// Serves one connection until the client closes it, it breaks the
/// protocol, it idles past the timeout, or `shutdown` turns true.
pub(crate) async fn serve_connection<R, W>(
    reader: R,
    writer: W,
    engine: Engine,
    config: Arc<FastConfig>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<OutFrame>(config.max_in_flight.max(1));
    let writer = tokio::spawn(write_loop(writer, rx));
    let mut reader = FrameReader::new(reader);
    let limits = Limits {
        max_header: config.max_header,
        max_payload: config.max_payload,
    };
    loop {
        let head = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => {
                let err = ProtocolError::new(Status::ShuttingDown, 0, "the server is shutting down");
                tx.send(error_frame(Opcode::Ping, &err)).await.ok();
                break;
            }
            head = tokio::time::timeout(config.idle_timeout, reader.read_head(&limits)) => head,
        };
        let head = match head {
            Err(_elapsed) => {
                let err = ProtocolError::new(Status::Timeout, 0, "idle timeout");
                tx.send(error_frame(Opcode::Ping, &err)).await.ok();
                break;
            }
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                fail(&tx, Opcode::Ping, e).await;
                break;
            }
        };
        let prefix = head.prefix;
        let request = match decode_request(&head.header, prefix.request_id)
            .and_then(|r| check_framing(&prefix, r))
        {
            Ok(request) => request,
            Err(e) => {
                tx.send(error_frame(prefix.opcode, &e)).await.ok();
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
                fail(&tx, prefix.opcode, e).await;
                break;
            }
            Err(_elapsed) => {
                let err = ProtocolError::new(
                    Status::Timeout,
                    prefix.request_id,
                    "the payload did not arrive within the idle timeout",
                );
                tx.send(error_frame(prefix.opcode, &err)).await.ok();
                break;
            }
        }
    }
    drop(tx);
    writer.await.ok();
}

/// Sends the error for a failed read, if the peer can still hear it.
async fn fail(tx: &mpsc::Sender<OutFrame>, opcode: Opcode, err: ReadError) {
    match err {
        ReadError::Protocol(e) => {
            tx.send(error_frame(opcode, &e)).await.ok();
        }
        ReadError::Io(e) => tracing::debug!("connection failed: {e}"),
        ReadError::Truncated => tracing::debug!("connection closed mid-frame"),
    }
}

/// A request must be a request, carry the opcode of its header, and carry
/// a payload only if it is a PUT.
fn check_framing(prefix: &Prefix, request: Request) -> Result<Request, ProtocolError> {
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

/// Applies one request and queues its response frames. Errors are fatal to
/// the connection; request-level failures are answered and return `Ok`.
async fn handle<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    engine: &Engine,
    prefix: &Prefix,
    request: Request,
    tx: &mpsc::Sender<OutFrame>,
) -> Result<(), ReadError> {
    let id = prefix.request_id;
    let opcode = prefix.opcode;
    let reply = |response: Response, payload: Bytes| {
        response_frame(opcode, FLAG_END, id, &response, payload)
    };
    let frame = match request {
        Request::Ping => reply(Response::ok(Body::Empty), Bytes::new()),
        Request::Get { key } => get_frame(engine, &key, opcode, FLAG_END, id, 0),
        Request::Put { key, meta } => {
            let checked = TensorMeta::try_from(meta).and_then(|meta| {
                precheck_put(engine, &key, &meta, prefix.payload_len).map(|()| meta)
            });
            match checked {
                Err(e) => {
                    // Refused before reading: skip the payload without
                    // keeping it, then answer.
                    reader.skip_payload(prefix.payload_len).await?;
                    error_frame(opcode, &ProtocolError::from_error(&e, id))
                }
                Ok(meta) => {
                    let payload = reader.read_payload(prefix.payload_len).await?;
                    match Tensor::new(meta, payload).and_then(|t| engine.put(&key, t)) {
                        Ok(()) => reply(Response::ok(Body::Empty), Bytes::new()),
                        Err(e) => error_frame(opcode, &ProtocolError::from_error(&e, id)),
                    }
                }
            }
        }
        Request::Delete { key } => match engine.delete(&key) {
            Ok(deleted) => reply(Response::ok(Body::Deleted(deleted)), Bytes::new()),
            Err(e) => error_frame(opcode, &ProtocolError::from_error(&e, id)),
        },
        Request::Stats => reply(
            Response::ok(Body::Stats(engine.stats().into())),
            Bytes::new(),
        ),
        Request::GetMany { keys } => {
            if keys.is_empty() {
                reply(Response::ok(Body::Empty), Bytes::new())
            } else {
                let last = keys.len() - 1;
                for (i, key) in keys.iter().enumerate().take(last) {
                    let frame = get_frame(engine, key, opcode, 0, id, i as u32);
                    send(tx, frame).await?;
                }
                get_frame(engine, &keys[last], opcode, FLAG_END, id, last as u32)
            }
        }
    };
    send(tx, frame).await
}

/// Queues a frame; fails once the writer has given up on the socket.
async fn send(tx: &mpsc::Sender<OutFrame>, frame: OutFrame) -> Result<(), ReadError> {
    tx.send(frame)
        .await
        .map_err(|_| ReadError::Io(std::io::ErrorKind::BrokenPipe.into()))
}

/// Everything a PUT can be refused for that is known before its payload
/// arrives, so that a refused payload is never allocated.
fn precheck_put(
    engine: &Engine,
    key: &str,
    meta: &TensorMeta,
    payload_len: u64,
) -> Result<(), Error> {
    validate_key(key)?;
    if meta.byte_size() != payload_len {
        return Err(Error::InvalidSize {
            expected: meta.byte_size(),
            actual: payload_len,
        });
    }
    let needed = Engine::charge(key, meta);
    if needed > engine.memory_limit() {
        return Err(Error::OutOfMemory {
            needed,
            limit: engine.memory_limit(),
        });
    }
    if engine.contains(key) {
        return Err(Error::AlreadyExists(key.to_owned()));
    }
    Ok(())
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
) -> OutFrame {
    let (mut response, payload) = match engine.get(key) {
        Ok(Some(tensor)) => {
            let (meta, data) = tensor.into_parts();
            (Response::ok(Body::Tensor((&meta).into())), data)
        }
        Ok(None) => (
            Response::error(
                Status::NotFound,
                format!("NotFound: key {key:?} is not cached"),
            ),
            Bytes::new(),
        ),
        Err(e) => (
            Response::error(Status::from_error(&e), e.to_string()),
            Bytes::new(),
        ),
    };
    response.index = index;
    response_frame(opcode, flags, id, &response, payload)
}

/// A response frame: encoded head plus the payload as given.
pub(crate) fn response_frame(
    opcode: Opcode,
    flags: u8,
    id: u64,
    response: &Response,
    payload: Bytes,
) -> OutFrame {
    let head = encode_frame(
        opcode,
        flags | FLAG_RESPONSE,
        id,
        response,
        payload.len() as u64,
    );
    OutFrame {
        head: Bytes::from(head),
        payload,
    }
}

/// An error response ending its request.
pub(crate) fn error_frame(opcode: Opcode, err: &ProtocolError) -> OutFrame {
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
        let frame = get_frame(&engine, "k", Opcode::Get, FLAG_END, 1, 0);
        // Zero copy: the payload chunk handed to writev is the very
        // allocation the engine holds.
        assert_eq!(frame.payload.as_ptr(), stored_ptr);
        assert_eq!(frame.payload.len(), 4096);
    }

    #[test]
    fn put_is_refused_before_its_payload_when_it_cannot_succeed() {
        let engine = Engine::new(10_000);
        let meta = TensorMeta::new(
            crate::tensor::meta::DType::U8,
            vec![100],
            crate::tensor::meta::StorageLayout::RowMajor,
        )
        .unwrap();
        assert!(precheck_put(&engine, "k", &meta, 100).is_ok());
        assert!(matches!(
            precheck_put(&engine, "k", &meta, 99),
            Err(Error::InvalidSize { .. })
        ));
        assert!(matches!(
            precheck_put(&engine, "", &meta, 100),
            Err(Error::InvalidKey(_))
        ));
        let big = TensorMeta::new(
            crate::tensor::meta::DType::U8,
            vec![20_000],
            crate::tensor::meta::StorageLayout::RowMajor,
        )
        .unwrap();
        assert!(matches!(
            precheck_put(&engine, "k", &big, 20_000),
            Err(Error::OutOfMemory { .. })
        ));
        engine
            .put("k", Tensor::new(meta.clone(), vec![0u8; 100]).unwrap())
            .unwrap();
        assert!(matches!(
            precheck_put(&engine, "k", &meta, 100),
            Err(Error::AlreadyExists(_))
        ));
    }
}
