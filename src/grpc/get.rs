//! `Get` without the encode copy.
//!
//! tonic encodes a response by copying the whole message, payload
//! included, into its encode buffer. For `Get` this layer answers instead:
//! it writes the 5-byte gRPC message prefix, the `GetResponse` fields
//! before `data`, and `data`'s tag and length into one small buffer, then
//! hands the stored payload (`Bytes`, shared with the engine) to h2 as a
//! chunk of its own, which h2 writes to the socket without copying it (it
//! chains payloads over 256 bytes instead of buffering them). The bytes on
//! the wire are exactly what prost would have produced
//! (`matches_prost_byte_for_byte` below), so every gRPC client reads them
//! as before.
//!
//! Only a plain unary `POST /redstone.RedStone/Get` with an uncompressed
//! request takes this route; anything else (another method, a compressed
//! request) goes to tonic unchanged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use tonic::body::Body;
use tonic::Status;

use super::proto::{GetRequest, GetResponse};
use super::service::GrpcService;
use super::MESSAGE_SLACK;
use crate::tensor::Tensor;
use crate::Error;

/// The path of the method this layer answers.
const GET_PATH: &str = "/redstone.RedStone/Get";
/// The gRPC message prefix: a compression flag and a 32-bit length.
const PREFIX: usize = 5;

/// The [`tower::Layer`] that answers `Get` requests copy-free.
#[derive(Debug, Clone)]
pub(crate) struct CopyFreeGet {
    service: GrpcService,
}

impl CopyFreeGet {
    /// Answers `Get` from `service`.
    pub(crate) fn new(service: GrpcService) -> CopyFreeGet {
        CopyFreeGet { service }
    }
}

impl<S> tower::Layer<S> for CopyFreeGet {
    type Service = GetRoute<S>;

    fn layer(&self, inner: S) -> GetRoute<S> {
        GetRoute {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service [`CopyFreeGet`] makes: `Get` here, the rest to `inner`.
#[derive(Debug, Clone)]
pub(crate) struct GetRoute<S> {
    inner: S,
    service: GrpcService,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for GetRoute<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !is_plain_get(&request) {
            return Box::pin(self.inner.call(request));
        }
        let service = self.service.clone();
        Box::pin(async move {
            let reply = match read_request(request.into_body()).await {
                Ok(key) => service.get_raw(key).await.and_then(reply),
                Err(status) => Err(status),
            };
            Ok(reply.unwrap_or_else(|status| status.into_http()))
        })
    }
}

/// Whether `request` is a unary `Get` this layer can answer: POSTed to its
/// path, with an uncompressed (or no declared) encoding.
fn is_plain_get<B>(request: &http::Request<B>) -> bool {
    request.method() == http::Method::POST
        && request.uri().path() == GET_PATH
        && request
            .headers()
            .get("grpc-encoding")
            .is_none_or(|e| e == "identity")
}

/// The key of the one `GetRequest` message in `body`. The body is read up
/// to [`MESSAGE_SLACK`] bytes (a key is at most 4 KiB); more is refused
/// before it is buffered.
async fn read_request(body: Body) -> Result<String, Status> {
    const LIMIT: usize = MESSAGE_SLACK as usize;
    let collected = http_body_util::Limited::new(body, LIMIT + PREFIX)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                // Only a key can make a `GetRequest` this long: the answer
                // the engine gives an over-long key.
                Status::from(Error::InvalidKey(format!(
                    "a Get request of over {LIMIT} bytes; a key is at most {} bytes",
                    crate::engine::MAX_KEY_LEN
                )))
            } else {
                Status::internal(format!("reading the request: {e}"))
            }
        })?;
    let mut buf = collected.to_bytes();
    // As tonic does: the first message is the request, and any after it
    // are read and dropped, but each must be whole; a compression flag
    // without a declared encoding is a protocol error.
    let mut first = None;
    while !buf.is_empty() {
        if buf.len() < PREFIX {
            return Err(Status::internal("a truncated message prefix"));
        }
        let compressed = buf.get_u8();
        let len = buf.get_u32() as usize;
        if compressed != 0 {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        if buf.len() < len {
            return Err(Status::internal(format!(
                "a message of {len} bytes, truncated at {}",
                buf.len()
            )));
        }
        let message = buf.split_to(len);
        first.get_or_insert(message);
    }
    let message = first.ok_or_else(|| Status::internal("Missing request message."))?;
    let request = GetRequest::decode(message).map_err(|e| Status::internal(e.to_string()))?;
    Ok(request.key)
}

/// The response to a found tensor: headers, the message in two chunks
/// (everything before the payload, then the payload itself), and the
/// `grpc-status: 0` trailer.
fn reply(tensor: Tensor) -> Result<http::Response<Body>, Status> {
    let (meta, data) = tensor.into_parts();
    let fields = GetResponse {
        meta: Some((&meta).into()),
        data: Bytes::new(),
    };
    // prost leaves an empty `bytes` field out, and so does this.
    let data_field = if data.is_empty() {
        0
    } else {
        1 + encoded_len_varint(data.len() as u64) + data.len()
    };
    let message_len = fields.encoded_len() + data_field;
    let message_len = u32::try_from(message_len).map_err(|_| {
        Status::out_of_range(format!(
            "Error, encoded message length too large: found {message_len} bytes, the limit is: {} bytes",
            u32::MAX
        ))
    })?;
    let mut head = BytesMut::with_capacity(PREFIX + fields.encoded_len() + 11);
    head.put_u8(0);
    head.put_u32(message_len);
    fields
        .encode(&mut head)
        .map_err(|e| Status::internal(e.to_string()))?;
    if !data.is_empty() {
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(data.len() as u64, &mut head);
    }
    let chunks = [head.freeze(), data]
        .into_iter()
        .filter(|chunk| !chunk.is_empty())
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(Chunks {
        chunks,
        trailers: Some(trailers),
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

/// A response body of ready chunks, then trailers.
#[derive(Debug)]
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    // No exact size hint: hyper would turn it into a `content-length`
    // header, which tonic's replies do not carry.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::meta::{DType, StorageLayout, TensorMeta};

    async fn body_bytes(response: http::Response<Body>) -> (Bytes, HeaderMap) {
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        (collected.to_bytes(), trailers)
    }

    fn prost_framed(message: &GetResponse) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn matches_prost_byte_for_byte() {
        // Payload lengths around the varint boundaries, and empty.
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let meta =
                TensorMeta::new(DType::U8, vec![len as u64], StorageLayout::RowMajor).unwrap();
            let tensor = Tensor::new(meta.clone(), data.clone()).unwrap();
            let response = reply(tensor).unwrap();
            assert_eq!(response.headers()["content-type"], "application/grpc");
            let (wire, trailers) = body_bytes(response).await;
            let expected = prost_framed(&GetResponse {
                meta: Some((&meta).into()),
                data: data.into(),
            });
            assert_eq!(&wire[..], &expected[..], "{len} bytes");
            assert_eq!(trailers["grpc-status"], "0");
        }
    }

    #[test]
    fn the_payload_is_a_chunk_of_its_own_not_a_copy() {
        let data = Bytes::from(vec![7u8; 4096]);
        let tensor = Tensor::new(
            TensorMeta::new(DType::U8, vec![4096], StorageLayout::RowMajor).unwrap(),
            data.clone(),
        )
        .unwrap();
        let mut body = reply(tensor).unwrap().into_body();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut frames = Vec::new();
        while let Poll::Ready(Some(frame)) =
            http_body::Body::poll_frame(Pin::new(&mut body), &mut cx)
        {
            if let Ok(data) = frame.unwrap().into_data() {
                frames.push(data);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[1].as_ptr(),
            data.as_ptr(),
            "the stored buffer itself"
        );
    }

    fn frame_bytes(bytes: &[u8], flag: u8) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    fn framed(bytes: &[u8], flag: u8) -> Body {
        Body::new(http_body_util::Full::new(Bytes::from(frame_bytes(
            bytes, flag,
        ))))
    }

    #[tokio::test]
    async fn malformed_requests_get_a_status() {
        let key = GetRequest { key: "k".into() }.encode_to_vec();
        assert_eq!(read_request(framed(&key, 0)).await.unwrap(), "k");
        let compressed = read_request(framed(&key, 1)).await.unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Internal);
        let short = Body::new(http_body_util::Full::new(Bytes::from_static(&[0, 0])));
        assert_eq!(
            read_request(short).await.unwrap_err().code(),
            tonic::Code::Internal
        );
        let empty = Body::new(http_body_util::Full::new(Bytes::new()));
        assert_eq!(
            read_request(empty).await.unwrap_err().code(),
            tonic::Code::Internal
        );
        // A second whole message is read and dropped; a cut one is an error.
        let other = GetRequest {
            key: "other".into(),
        }
        .encode_to_vec();
        let mut two = frame_bytes(&key, 0);
        two.extend(frame_bytes(&other, 0));
        let body = Body::new(http_body_util::Full::new(Bytes::from(two.clone())));
        assert_eq!(read_request(body).await.unwrap(), "k");
        two.pop();
        let cut = Body::new(http_body_util::Full::new(Bytes::from(two)));
        assert_eq!(
            read_request(cut).await.unwrap_err().code(),
            tonic::Code::Internal
        );
        let garbage = read_request(framed(&[0xff; 9], 0)).await.unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::Internal);
        let huge = read_request(framed(&vec![0u8; 2 * MESSAGE_SLACK as usize], 0))
            .await
            .unwrap_err();
        assert_eq!(huge.code(), tonic::Code::InvalidArgument);
        assert!(huge.message().starts_with("InvalidKey:"));
    }
}
