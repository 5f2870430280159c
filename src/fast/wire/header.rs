//! The rkyv-archived headers that follow the prefix.
//!
//! Headers are small (keys, metadata, status); tensor bytes never go in
//! them. A reader copies a header into an aligned buffer it reuses
//! ([`AlignedHeader`]), validates it with rkyv's checked access
//! (bytecheck), and then reads it in place: the server takes keys as
//! `&str` straight from the archive and builds only what it keeps (the
//! tensor's metadata). [`decode_request`] and [`decode_response`]
//! deserialize into owned values, for clients and tools.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::{ProtocolError, Status};
use crate::disk::DiskStats;
use crate::stats::Counters;
use crate::tensor::codec::Encoding;
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;
use crate::Error;

/// Tensor metadata as it travels: dtype, layout and the payload's encoding
/// by their stable codes.
///
/// `encoding` (protocol version 2) sits where version 1 had padding, so the
/// archive's layout is unchanged and a version-1 frame reads as encoding 0
/// (raw).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireMeta {
    /// [`DType::code`](crate::tensor::meta::DType::code).
    pub dtype: u8,
    /// [`StorageLayout::code`](crate::tensor::meta::StorageLayout::code).
    pub layout: u8,
    /// [`Encoding::code`] of the payload: 0 raw, 1 shuffle + LZ4. The raw
    /// size is the shape's.
    pub encoding: u8,
    /// The shape.
    pub shape: Vec<u64>,
}

impl From<&TensorMeta> for WireMeta {
    /// The metadata of a raw payload.
    fn from(meta: &TensorMeta) -> WireMeta {
        WireMeta {
            dtype: meta.dtype().code(),
            layout: meta.layout().code(),
            encoding: Encoding::Raw.code(),
            shape: meta.shape().to_vec(),
        }
    }
}

impl WireMeta {
    /// The metadata of `tensor`'s payload as held (raw or encoded).
    pub fn of(tensor: &Tensor) -> WireMeta {
        WireMeta {
            encoding: tensor.encoding().code(),
            ..WireMeta::from(tensor.meta())
        }
    }

    /// The payload's encoding ([`Error::InvalidEncoding`] if unknown).
    pub fn encoding(&self) -> Result<Encoding, Error> {
        Encoding::from_code(self.encoding)
    }
}

impl TryFrom<WireMeta> for TensorMeta {
    type Error = Error;

    fn try_from(meta: WireMeta) -> Result<TensorMeta, Error> {
        TensorMeta::from_codes(meta.dtype.into(), meta.shape, meta.layout.into())
    }
}

impl ArchivedWireMeta {
    /// Validated metadata read from the archive in place.
    pub fn to_meta(&self) -> Result<TensorMeta, Error> {
        let shape: Vec<u64> = self.shape.iter().map(|d| d.to_native()).collect();
        TensorMeta::from_codes(self.dtype.into(), shape, self.layout.into())
    }

    /// The payload's encoding ([`Error::InvalidEncoding`] if unknown).
    pub fn encoding(&self) -> Result<Encoding, Error> {
        Encoding::from_code(self.encoding)
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
    /// `DIGEST key`: the [`Tensor::digest`](crate::tensor::Tensor::digest)
    /// of the tensor under `key`.
    Digest {
        /// The key.
        key: String,
    },
    /// `DELETE_IF key digest`: remove `key` only if its tensor has this
    /// digest.
    DeleteIf {
        /// The key.
        key: String,
        /// The digest, little-endian. Bytes rather than a `u64`, so that
        /// the archived `Request` keeps its 4-byte alignment and every
        /// other request's bytes stay as they were.
        digest: [u8; 8],
    },
    /// `PUT_IF`, the tensor bytes as payload: a `PUT` refused with
    /// `Deleted` if the key was deleted at or after `since`. Boxed, so that
    /// the archived `Request` keeps its size and every other request's
    /// bytes stay as they were.
    PutIf(Box<ConditionalPut>),
    /// `DISK_STATS`: the disk tier's counters.
    DiskStats,
    /// `RELEASE leases`: the local door's client has dropped the mappings
    /// of these leases (each the request id of the GET that granted it).
    Release {
        /// Lease ids, little-endian (bytes, for the same reason as
        /// `DeleteIf::digest`).
        leases: Vec<[u8; 8]>,
    },
}

/// The header of a `PUT_IF`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ConditionalPut {
    /// The key.
    pub key: String,
    /// The tensor's metadata; the payload must be its byte size.
    pub meta: WireMeta,
    /// When the write began, in Unix microseconds, little-endian.
    pub since: [u8; 8],
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
            Request::Digest { .. } => Opcode::Digest,
            Request::DeleteIf { .. } => Opcode::DeleteIf,
            Request::PutIf(_) => Opcode::PutIf,
            Request::DiskStats => Opcode::DiskStats,
            Request::Release { .. } => Opcode::Release,
        }
    }
}

impl ArchivedRequest {
    /// The opcode a frame carrying this request has.
    pub fn opcode(&self) -> super::Opcode {
        use super::Opcode;
        match self {
            ArchivedRequest::Ping => Opcode::Ping,
            ArchivedRequest::Get { .. } => Opcode::Get,
            ArchivedRequest::Put { .. } => Opcode::Put,
            ArchivedRequest::Delete { .. } => Opcode::Delete,
            ArchivedRequest::Stats => Opcode::Stats,
            ArchivedRequest::GetMany { .. } => Opcode::GetMany,
            ArchivedRequest::Digest { .. } => Opcode::Digest,
            ArchivedRequest::DeleteIf { .. } => Opcode::DeleteIf,
            ArchivedRequest::PutIf(_) => Opcode::PutIf,
            ArchivedRequest::DiskStats => Opcode::DiskStats,
            ArchivedRequest::Release { .. } => Opcode::Release,
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

impl From<Counters> for WireStats {
    fn from(c: Counters) -> WireStats {
        WireStats {
            entries: c.entries,
            memory_used: c.memory_used,
            memory_limit: c.memory_limit,
            hits: c.hits,
            misses: c.misses,
            evictions: c.evictions,
        }
    }
}

impl From<WireStats> for Counters {
    fn from(s: WireStats) -> Counters {
        Counters {
            entries: s.entries,
            memory_used: s.memory_used,
            memory_limit: s.memory_limit,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
        }
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
    /// DIGEST's answer.
    Digest(u64),
    /// DISK_STATS' answer: `None` from a server without a disk tier.
    /// Boxed, so that the archived `Body` keeps its size.
    DiskStats(Option<Box<WireDiskStats>>),
}

/// The disk tier's counters, as `DISK_STATS` returns them; see
/// [`DiskStats`](crate::disk::DiskStats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[allow(missing_docs)]
pub struct WireDiskStats {
    pub entries: u64,
    pub bytes: u64,
    pub limit: u64,
    pub queued_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub promotions: u64,
    pub writes: u64,
    pub dropped_writes: u64,
    pub corrupt: u64,
    pub evictions: u64,
    pub writable: bool,
    pub recovery_micros: u64,
}

impl From<DiskStats> for WireDiskStats {
    fn from(d: DiskStats) -> WireDiskStats {
        let DiskStats {
            entries,
            bytes,
            limit,
            queued_bytes,
            hits,
            misses,
            promotions,
            writes,
            dropped_writes,
            corrupt,
            evictions,
            writable,
            recovery_micros,
        } = d;
        WireDiskStats {
            entries,
            bytes,
            limit,
            queued_bytes,
            hits,
            misses,
            promotions,
            writes,
            dropped_writes,
            corrupt,
            evictions,
            writable,
            recovery_micros,
        }
    }
}

impl From<WireDiskStats> for DiskStats {
    fn from(d: WireDiskStats) -> DiskStats {
        let WireDiskStats {
            entries,
            bytes,
            limit,
            queued_bytes,
            hits,
            misses,
            promotions,
            writes,
            dropped_writes,
            corrupt,
            evictions,
            writable,
            recovery_micros,
        } = d;
        DiskStats {
            entries,
            bytes,
            limit,
            queued_bytes,
            hits,
            misses,
            promotions,
            writes,
            dropped_writes,
            corrupt,
            evictions,
            writable,
            recovery_micros,
        }
    }
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

/// Why a header could not be encoded: it is larger than a frame or rkyv's
/// 32-bit offsets allow (a `GET_MANY` of gigabytes of keys, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the header cannot be encoded: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    pub(crate) fn new(why: impl Into<String>) -> EncodeError {
        EncodeError(why.into())
    }
}

/// Serializes a header on its own.
pub fn encode<T: Header>(header: &T) -> Result<Vec<u8>, EncodeError> {
    encode_after(Vec::with_capacity(128), header)
}

/// Serializes `header` after what `out` already holds. rkyv's pointers are
/// relative, so the archive is valid wherever it starts, provided the
/// reader copies it to an aligned buffer (it does) and `out.len()` is a
/// multiple of 16 (keeping the archive's internal alignment).
pub(crate) fn encode_after<T: Header>(out: Vec<u8>, header: &T) -> Result<Vec<u8>, EncodeError> {
    debug_assert_eq!(out.len() % 16, 0);
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(header, out)
        .map_err(|e| EncodeError(e.to_string()))
}

/// The most an [`AlignedHeader`] keeps allocated between headers.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A reusable aligned buffer in which headers are validated and read in
/// place.
///
/// rkyv's checked access needs the archive at an aligned address and a
/// slice that ends where the archive ends; a header sits at an arbitrary
/// offset of a read buffer, so it is copied here first (it is small,
/// bounded by the header limit). One buffer per connection: after the
/// first frames it never allocates again.
#[derive(Debug, Default)]
pub struct AlignedHeader {
    buf: AlignedVec,
}

impl AlignedHeader {
    /// An empty buffer.
    pub fn new() -> AlignedHeader {
        AlignedHeader::default()
    }

    /// Copies `bytes` in, validates them as a request header, and returns
    /// the archive to read in place.
    pub fn request(
        &mut self,
        bytes: &[u8],
        request_id: u64,
    ) -> Result<&ArchivedRequest, ProtocolError> {
        self.access(bytes, request_id)
    }

    /// Copies `bytes` in, validates them as a response header, and returns
    /// the archive to read in place.
    pub fn response(
        &mut self,
        bytes: &[u8],
        request_id: u64,
    ) -> Result<&ArchivedResponse, ProtocolError> {
        self.access(bytes, request_id)
    }

    fn access<T>(&mut self, bytes: &[u8], request_id: u64) -> Result<&T, ProtocolError>
    where
        T: rkyv::Portable
            + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
    {
        if self.buf.capacity() > KEEP_CAPACITY && bytes.len() <= KEEP_CAPACITY {
            // One large header does not keep its buffer for the life of the
            // connection.
            self.buf = AlignedVec::with_capacity(KEEP_CAPACITY);
        }
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        rkyv::access::<T, rancor::Error>(&self.buf).map_err(|e| malformed(e, request_id))
    }
}

/// Validates and deserializes a request header from `bytes` (any alignment).
pub fn decode_request(bytes: &[u8], request_id: u64) -> Result<Request, ProtocolError> {
    let mut aligned = AlignedHeader::new();
    let archived = aligned.request(bytes, request_id)?;
    rkyv::deserialize::<Request, rancor::Error>(archived).map_err(|e| malformed(e, request_id))
}

/// Validates and deserializes a response header from `bytes`.
pub fn decode_response(bytes: &[u8], request_id: u64) -> Result<Response, ProtocolError> {
    let mut aligned = AlignedHeader::new();
    let archived = aligned.response(bytes, request_id)?;
    rkyv::deserialize::<Response, rancor::Error>(archived).map_err(|e| malformed(e, request_id))
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

    /// Wire version 1 fixes these layouts: a new request or body variant
    /// must not change them (box it instead, as `PutIf` is), or every
    /// existing frame's bytes change.
    #[test]
    fn archived_layouts_are_those_of_wire_version_1() {
        use std::mem::{align_of, size_of};
        assert_eq!(
            (size_of::<ArchivedRequest>(), align_of::<ArchivedRequest>()),
            (24, 4)
        );
        assert_eq!(
            (
                size_of::<ArchivedResponse>(),
                align_of::<ArchivedResponse>()
            ),
            (72, 8)
        );
    }

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
                    encoding: 1,
                    shape: vec![3, 4],
                },
            },
            Request::Delete {
                key: "x".repeat(4096),
            },
            Request::Stats,
            Request::DiskStats,
            Request::Release {
                leases: vec![7u64.to_le_bytes(), u64::MAX.to_le_bytes()],
            },
            Request::GetMany {
                keys: vec!["a".into(), "b".into()],
            },
        ];
        for r in requests {
            let bytes = encode(&r).unwrap();
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
        assert_eq!(decode_response(&encode(&r).unwrap(), 0).unwrap(), r);
        let e = Response::error(Status::NotFound, "gone");
        assert_eq!(decode_response(&encode(&e).unwrap(), 0).unwrap(), e);
    }

    #[test]
    fn garbage_and_truncation_are_malformed_not_panics() {
        let bytes = encode(&Request::Get {
            key: "hello".into(),
        })
        .unwrap();
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
