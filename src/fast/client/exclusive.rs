//! A connection used by one call at a time: a reply's payload can be read
//! straight into the caller's own buffer (`get_into`), and a large one
//! (`get` of a tensor over `BULK_THRESHOLD`) holds up no other call.

use std::sync::Arc;

use bytes::Bytes;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::pool::BufferPool;
use super::reply::{check, meta_from, read_error, tensor_of};
use super::{connect_stream, Endpoint, FastClientOptions};
use crate::client::ClientError;
use crate::fast::stream::{FrameReader, ReadError};
use crate::fast::wire::{decode_response, encode_frame, Limits, Request, Status};
use crate::tensor::codec::{self, Encoding};
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;

#[derive(Debug)]
pub(super) struct Exclusive {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Whether the last call began writing a payload into its buffer.
    payload_started: bool,
}

impl Exclusive {
    /// A new exclusive connection: TCP only (the local door passes large
    /// payloads as memfds on the shared connection instead).
    pub(super) async fn connect(
        peer: &Endpoint,
        options: &FastClientOptions,
    ) -> Result<Exclusive, ClientError> {
        let Endpoint::Tcp(peer) = peer else {
            return Err(ClientError::Protocol(
                "no exclusive connections over the local door".into(),
            ));
        };
        let stream = connect_stream(peer, &peer.to_string(), options.connect_timeout).await?;
        let (reader, writer) = stream.into_split();
        Ok(Exclusive {
            reader: FrameReader::new(reader),
            writer,
            next_id: 1,
            payload_started: false,
        })
    }

    /// Whether the last [`get_into`](Self::get_into) got as far as its
    /// reply's payload: after a failure from there on, a retry could no
    /// longer promise an untouched buffer (nor one its check was shown).
    pub(super) fn payload_started(&self) -> bool {
        self.payload_started
    }

    /// Sends a GET of `key` and reads its reply up to the payload: the
    /// tensor's metadata, the payload's encoding and length, or `None` if
    /// the key is not cached (the reply read whole).
    async fn ask(
        &mut self,
        key: &str,
        limits: &Limits,
    ) -> Result<Option<(TensorMeta, Encoding, u64)>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request::Get {
            key: key.to_owned(),
        };
        let frame = encode_frame(request.opcode(), 0, id, &request, 0)?;
        self.writer
            .write_all(&frame)
            .await
            .map_err(|e| ClientError::Unavailable(format!("connection lost: {e}")))?;
        let head = self
            .reader
            .read_head(limits)
            .await
            .map_err(lost)?
            .ok_or_else(|| ClientError::Unavailable("the server closed the connection".into()))?;
        let response =
            decode_response(&head.header, id).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if head.prefix.request_id != id {
            check(response.status(), &response.message)?;
            return Err(ClientError::Protocol(format!(
                "reply to request {} on an exclusive connection",
                head.prefix.request_id
            )));
        }
        let len = head.prefix.payload_len;
        match response.status() {
            Status::NotFound => {
                self.reader.skip_payload(len).await.map_err(lost)?;
                return Ok(None);
            }
            status => {
                if let Err(e) = check(status, &response.message) {
                    self.reader.skip_payload(len).await.map_err(lost)?;
                    return Err(e);
                }
            }
        }
        let (meta, encoding) = meta_from(response.body)?;
        if !encoding.fits(&meta, len) {
            return Err(ClientError::Protocol(format!(
                "payload of {len} bytes for a tensor of {}",
                meta.byte_size()
            )));
        }
        Ok(Some((meta, encoding, len)))
    }

    /// The tensor under `key`, its payload read into an allocation of its
    /// own (a plain `get` of a payload too large for the shared
    /// connection).
    pub(super) async fn get(
        &mut self,
        key: &str,
        limits: &Limits,
        pool: Option<&Arc<BufferPool>>,
    ) -> Result<Option<Tensor>, ClientError> {
        self.payload_started = false;
        let Some((meta, encoding, len)) = self.ask(key, limits).await? else {
            return Ok(None);
        };
        let reused = pool.and_then(|pool| pool.take(len as usize));
        let buf = self
            .reader
            .read_payload_in(len, reused.unwrap_or_default())
            .await
            .map_err(lost)?;
        let payload = match pool {
            Some(pool) => BufferPool::lend(pool, buf),
            None => Bytes::from(buf),
        };
        tensor_of(meta, encoding, payload, limits.max_payload).map(Some)
    }

    pub(super) async fn get_into(
        &mut self,
        key: &str,
        dst: &mut [u8],
        limits: &Limits,
        accept: &mut Option<impl FnOnce(&TensorMeta) -> Result<(), ClientError>>,
    ) -> Result<Option<TensorMeta>, ClientError> {
        self.payload_started = false;
        let Some((meta, encoding, len)) = self.ask(key, limits).await? else {
            return Ok(None);
        };
        // From here a failure is not safe to retry: `dst` may be partly
        // written, or `accept` already consumed.
        self.payload_started = true;
        // The caller's own check first: it says what is wrong in the
        // caller's terms (a dtype), where sizes may only differ.
        let verdict = accept
            .take()
            .map_or(Ok(()), |accept| accept(&meta))
            .and_then(|()| {
                if meta.byte_size() == dst.len() as u64 {
                    return Ok(());
                }
                Err(ClientError::Invalid(crate::Error::InvalidSize {
                    expected: meta.byte_size(),
                    actual: dst.len() as u64,
                }))
            });
        if let Err(e) = verdict {
            self.reader.skip_payload(len).await.map_err(lost)?;
            return Err(e);
        }
        if encoding == Encoding::Raw {
            self.reader.read_payload_into(dst).await.map_err(lost)?;
        } else {
            // Encoded: received whole (at most the raw size, which `dst`
            // already holds), then decoded into `dst`.
            let encoded = self.reader.read_payload(len).await.map_err(lost)?;
            codec::decode_into(&meta, &encoded, dst)?;
        }
        Ok(Some(meta))
    }
}

fn lost(e: ReadError) -> ClientError {
    ClientError::Unavailable(read_error(e))
}
