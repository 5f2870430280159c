//! The rkyv-archived headers that follow the prefix.
//!
//! Headers are small (keys, metadata, status); tensor bytes never go in
//! them. Decoding copies the header into an aligned buffer and validates it
//! with rkyv's checked access (bytecheck) before anything is read from it.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::{ProtocolError, Status};
use crate::engine::Stats;
use crate::tensor::meta::{DType, StorageLayout, TensorMeta};
use crate::Error;

/// Tensor metadata as it travels: dtype and layout by their stable codes.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireMeta {
    /// [`DType::code`].
    pub dtype: u8,
    /// [`StorageLayout::code`].
    pub layout: u8,
    /// The shape.
    pub shape: Vec<u64>,
}

impl From<&TensorMeta> for WireMeta {
    fn from(meta: &TensorMeta) -> WireMeta {
        WireMeta {
            dtype: meta.dtype().code(),
            layout: meta.layout().code(),
            shape: meta.shape().to_vec(),
        }
    }
}

impl TryFrom<WireMeta> for TensorMeta {
    type Error = Error;

    fn try_from(meta: WireMeta) -> Result<TensorMeta, Error> {
        TensorMeta::new(
            DType::from_code(meta.dtype.into())?,
            meta.shape,
            StorageLayout::from_code(meta.layout.into())?,
        )
    }
}

/// A request header. The prefix's opcode must match the variant.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Request {
    /// `PING`.
    Ping,
    /// `GET key`.
    Get {
        /// The key.
        key: String,
    },
    /// `PUT key meta`, the tensor bytes as payload.
    Put {
        /// The key.
        key: String,
        /// The tensor's metadata; the payload must be its byte size.
        meta: WireMeta,
    },
    /// `DELETE key`.
    Delete {
        /// The key.
        key: String,
    },
    /// `STATS`.
    Stats,
    /// `GET_MANY keys`: one response frame per key.
    GetMany {
        /// The keys, answered in this order.
        keys: Vec<String>,
    },
}

impl Request {
    /// The opcode a frame carrying this request has.
    pub fn opcode(&self) -> super::Opcode {
        use super::Opcode;
        match self {
            Request::Ping => Opcode::Ping,
            Request::Get { .. } => Opcode::Get,
            Request::Put { .. } => Opcode::Put,
            Request::Delete { .. } => Opcode::Delete,
            Request::Stats => Opcode::Stats,
            Request::GetMany { .. } => Opcode::GetMany,
        }
    }
}

/// The counters, as `STATS` returns them.
#[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireStats {
    /// See [`Stats`].
    pub entries: u64,
    /// See [`Stats`].
    pub memory_used: u64,
    /// See [`Stats`].
    pub memory_limit: u64,
    /// See [`Stats`].
    pub hits: u64,
    /// See [`Stats`].
    pub misses: u64,
    /// See [`Stats`].
    pub evictions: u64,
}

impl From<Stats> for WireStats {
    fn from(s: Stats) -> WireStats {
        WireStats {
            entries: s.entries,
            memory_used: s.memory_used,
            memory_limit: s.memory_limit,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
        }
    }
}

impl From<WireStats> for Stats {
    fn from(s: WireStats) -> Stats {
        Stats::from_counts(
            s.entries,
            s.memory_used,
            s.memory_limit,
            s.hits,
            s.misses,
            s.evictions,
        )
    }
}

/// What a successful response carries besides its status.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Body {
    /// Nothing (PING, PUT, errors).
    Empty,
    /// A tensor's metadata; its bytes are the payload.
    Tensor(WireMeta),
    /// DELETE's answer: whether the key was cached.
    Deleted(bool),
    /// STATS' answer.
    Stats(WireStats),
}

/// A response header.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Response {
    /// A [`Status`] code.
    pub status: u16,
    /// For a batch GET, the position of the key this frame answers; else 0.
    pub index: u32,
    /// Why the request failed; empty on success.
    pub message: String,
    /// The result.
    pub body: Body,
}

impl Response {
    /// A success carrying `body`.
    pub fn ok(body: Body) -> Response {
        Response {
            status: Status::Ok as u16,
            index: 0,
            message: String::new(),
            body,
        }
    }

    /// A failure.
    pub fn error(status: Status, message: impl Into<String>) -> Response {
        Response {
            status: status as u16,
            index: 0,
            message: message.into(),
            body: Body::Empty,
        }
    }

    /// The status.
    pub fn status(&self) -> Status {
        Status::from_code(self.status)
    }
}

/// A header type: serializable by rkyv into a plain byte vector.
pub trait Header:
    for<'a> rkyv::Serialize<
    rkyv::api::high::HighSerializer<Vec<u8>, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
>
{
}

impl Header for Request {}
impl Header for Response {}

/// Serializes a header on its own.
pub fn encode<T: Header>(header: &T) -> Vec<u8> {
    encode_after(Vec::with_capacity(128), header)
}

/// Serializes `header` after what `out` already holds. rkyv's pointers are
/// relative, so the archive is valid wherever it starts, provided the
/// reader copies it to an aligned buffer (it does) and `out.len()` is a
/// multiple of 16 (keeping the archive's internal alignment).
pub(crate) fn encode_after<T: Header>(out: Vec<u8>, header: &T) -> Vec<u8> {
    debug_assert_eq!(out.len() % 16, 0);
    // Serializing plain data into a growable vector cannot fail.
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(header, out).unwrap_or_default()
}

/// Validates and deserializes a request header from `bytes` (any alignment).
pub fn decode_request(bytes: &[u8], request_id: u64) -> Result<Request, ProtocolError> {
    let aligned = aligned_copy(bytes);
    rkyv::from_bytes::<Request, rancor::Error>(&aligned).map_err(|e| malformed(e, request_id))
}

/// Validates and deserializes a response header from `bytes`.
pub fn decode_response(bytes: &[u8], request_id: u64) -> Result<Response, ProtocolError> {
    let aligned = aligned_copy(bytes);
    rkyv::from_bytes::<Response, rancor::Error>(&aligned).map_err(|e| malformed(e, request_id))
}

/// rkyv's checked access needs the archive at an aligned address; a header
/// sits at an arbitrary offset of a read buffer, so it is copied (it is
/// small, bounded by the header limit).
fn aligned_copy(bytes: &[u8]) -> AlignedVec {
    let mut aligned = AlignedVec::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    aligned
}

fn malformed(err: rancor::Error, request_id: u64) -> ProtocolError {
    ProtocolError::new(
        Status::Malformed,
        request_id,
        format!("the header does not validate: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Ping,
            Request::Get { key: "k".into() },
            Request::Put {
                key: "ключ".into(),
                meta: WireMeta {
                    dtype: 1,
                    layout: 2,
                    shape: vec![3, 4],
                },
            },
            Request::Delete {
                key: "x".repeat(4096),
            },
            Request::Stats,
            Request::GetMany {
                keys: vec!["a".into(), "b".into()],
            },
        ];
        for r in requests {
            let bytes = encode(&r);
            assert_eq!(decode_request(&bytes, 0).unwrap(), r);
            // The same bytes at an odd offset decode too.
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(&bytes);
            assert_eq!(decode_request(&shifted[1..], 0).unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip() {
        let mut r = Response::ok(Body::Stats(WireStats {
            entries: 1,
            memory_used: 2,
            memory_limit: 3,
            hits: 4,
            misses: 5,
            evictions: 6,
        }));
        r.index = 7;
        assert_eq!(decode_response(&encode(&r), 0).unwrap(), r);
        let e = Response::error(Status::NotFound, "gone");
        assert_eq!(decode_response(&encode(&e), 0).unwrap(), e);
    }

    #[test]
    fn garbage_and_truncation_are_malformed_not_panics() {
        let bytes = encode(&Request::Get {
            key: "hello".into(),
        });
        for n in 0..bytes.len() {
            if let Err(e) = decode_request(&bytes[..n], 5) {
                assert_eq!(e.status, Status::Malformed);
                assert_eq!(e.request_id, 5);
            }
        }
        assert!(decode_request(&[0xff; 64], 1).is_err());
        assert!(decode_request(&[], 1).is_err());
    }
}
