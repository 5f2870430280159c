//! What a reply means to a caller: the one mapping of fast-path statuses
//! onto [`ClientError`], and tensors out of reply frames.

use bytes::Bytes;

use super::link::Reply;
use crate::client::ClientError;
use crate::fast::stream::ReadError;
use crate::fast::wire::{Body, Status};
use crate::tensor::codec::Encoding;
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;

/// The client error for a status, or `Ok` for success. The only place
/// fast-path statuses are mapped to client errors.
pub(super) fn check(status: Status, message: &str) -> Result<(), ClientError> {
    let message = message.to_owned();
    Err(match status {
        Status::Ok => return Ok(()),
        Status::AlreadyExists => ClientError::AlreadyExists(message),
        Status::Deleted => ClientError::Deleted(message),
        Status::OutOfMemory | Status::LeaseLimit => ClientError::OutOfMemory(message),
        Status::InvalidKey
        | Status::InvalidMetadata
        | Status::InvalidSize
        | Status::InvalidEncoding => ClientError::InvalidArgument(message),
        Status::TooLarge => ClientError::TooLarge(message),
        Status::Busy | Status::ShuttingDown | Status::Timeout => ClientError::Unavailable(message),
        Status::NotFound
        | Status::Malformed
        | Status::UnsupportedVersion
        | Status::UnknownOpcode
        | Status::Bulk
        | Status::Internal => ClientError::Protocol(format!("{status:?}: {message}")),
    })
}

/// Validated metadata, and the payload's encoding, from a reply's
/// `Tensor` body.
pub(super) fn meta_from(body: Body) -> Result<(TensorMeta, Encoding), ClientError> {
    let Body::Tensor(meta) = body else {
        return Err(unexpected(&body));
    };
    let encoding = meta
        .encoding()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let meta = TensorMeta::try_from(meta).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok((meta, encoding))
}

/// The raw tensor a successful GET reply carries: an encoded payload is
/// decoded here (corrupt → [`ClientError::Invalid`] with
/// `InvalidEncoding`), if its raw size is at most `max_payload` (the
/// client's [`max_payload`](super::FastClientOptions::max_payload), which
/// bounds raw replies in the frame reader).
pub(super) fn tensor_from(reply: Reply, max_payload: u64) -> Result<Tensor, ClientError> {
    let (meta, encoding) = meta_from(reply.response.body)?;
    tensor_of(meta, encoding, reply.payload, max_payload)
}

/// [`tensor_from`] for a reply already taken apart.
pub(super) fn tensor_of(
    meta: TensorMeta,
    encoding: Encoding,
    payload: Bytes,
    max_payload: u64,
) -> Result<Tensor, ClientError> {
    if encoding != Encoding::Raw && meta.byte_size() > max_payload {
        return Err(ClientError::TooLarge(format!(
            "a packed reply unpacks to {} bytes, over this client's max_payload ({max_payload})",
            meta.byte_size()
        )));
    }
    let tensor = Tensor::from_encoded(meta, encoding, payload).map_err(|e| match e {
        crate::Error::InvalidEncoding(_) => ClientError::Invalid(e),
        e => ClientError::Protocol(e.to_string()),
    })?;
    Ok(tensor.decoded()?)
}

pub(super) fn unexpected(body: &Body) -> ClientError {
    ClientError::Protocol(format!("unexpected reply body {body:?}"))
}

pub(super) fn read_error(e: ReadError) -> String {
    format!("connection lost: {e}")
}
