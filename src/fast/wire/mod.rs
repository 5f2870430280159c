//! The fast-path wire format, sans I/O: bytes in, typed values out.
//!
//! A frame is a 32-byte [`Prefix`], then `header_len` bytes of rkyv-archived
//! header ([`Request`] or [`Response`]), then `payload_len` bytes of raw
//! tensor data. `docs/PROTOCOL.md` specifies it byte by byte.
//!
//! - `prefix`: the prefix, opcodes and flags.
//! - `header`: the rkyv header types, their checked in-place access and
//!   their encoding.
//! - `status`: response codes and the one mapping from [`Error`](crate::Error).

mod header;
mod prefix;
mod status;

pub use header::{
    decode_request, decode_response, encode, AlignedHeader, ArchivedBody, ArchivedRequest,
    ArchivedResponse, ArchivedWireMeta, Body, ConditionalPut, EncodeError, Header, Request,
    Response, WireDiskStats, WireMeta, WireStats,
};
pub use prefix::{
    Opcode, Prefix, BULK_THRESHOLD, FLAG_END, FLAG_FD, FLAG_NOT_BULK, FLAG_RESPONSE, MAGIC,
    MIN_VERSION, PREFIX_LEN, VERSION,
};
pub use status::{ProtocolError, Status};

/// Size limits checked against a prefix before anything it claims is read
/// or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest header accepted, in bytes.
    pub max_header: u32,
    /// The largest payload accepted, in bytes.
    pub max_payload: u64,
}

impl Limits {
    /// Fails with [`Status::TooLarge`] if the prefix claims more than the
    /// limits allow.
    pub fn check(&self, prefix: &Prefix) -> Result<(), ProtocolError> {
        if prefix.header_len > self.max_header {
            return Err(ProtocolError::new(
                Status::TooLarge,
                prefix.request_id,
                format!(
                    "the header is {} bytes, the limit is {}",
                    prefix.header_len, self.max_header
                ),
            ));
        }
        if prefix.payload_len > self.max_payload {
            return Err(ProtocolError::new(
                Status::TooLarge,
                prefix.request_id,
                format!(
                    "the payload is {} bytes, the limit is {}",
                    prefix.payload_len, self.max_payload
                ),
            ));
        }
        Ok(())
    }
}

/// Encodes a frame head, the prefix then `header` serialized in place, in
/// one allocation. The payload, if any, is sent after it from its own
/// buffer.
///
/// Fails only for a header no frame can carry: over 4 GiB, or with a
/// string or an archive too long for rkyv's 32-bit offsets.
pub fn encode_frame<T: Header>(
    opcode: Opcode,
    flags: u8,
    request_id: u64,
    header: &T,
    payload_len: u64,
) -> Result<Vec<u8>, EncodeError> {
    encode_frame_as(VERSION, opcode, flags, request_id, header, payload_len)
}

/// [`encode_frame`] in protocol version `version` (a server answers each
/// request in the request's version).
pub fn encode_frame_as<T: Header>(
    version: u8,
    opcode: Opcode,
    flags: u8,
    request_id: u64,
    header: &T,
    payload_len: u64,
) -> Result<Vec<u8>, EncodeError> {
    let mut head = Vec::with_capacity(PREFIX_LEN + 160);
    head.resize(PREFIX_LEN, 0);
    let mut head = header::encode_after(head, header)?;
    let header_len = u32::try_from(head.len() - PREFIX_LEN)
        .map_err(|_| EncodeError::new("the header is over 4 GiB"))?;
    let prefix = Prefix {
        version,
        opcode,
        flags,
        request_id,
        header_len,
        payload_len,
    };
    head[..PREFIX_LEN].copy_from_slice(&prefix.encode());
    Ok(head)
}

/// Encodes a frame head from header bytes already serialized (or, in
/// tests, deliberately not a valid header). The header must be under
/// 4 GiB; its length is truncated to 32 bits otherwise.
pub fn encode_head(
    opcode: Opcode,
    flags: u8,
    request_id: u64,
    header: &[u8],
    payload_len: u64,
) -> Vec<u8> {
    let prefix = Prefix {
        version: VERSION,
        opcode,
        flags,
        request_id,
        header_len: header.len() as u32,
        payload_len,
    };
    let mut head = Vec::with_capacity(PREFIX_LEN + header.len());
    head.extend_from_slice(&prefix.encode());
    head.extend_from_slice(header);
    head
}
