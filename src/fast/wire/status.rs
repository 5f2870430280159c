//! Response status codes, and the one mapping of [`Error`] onto them.

use crate::Error;

/// The outcome of a request, carried in every response header.
///
/// Codes are stable: new ones are added at the end, none is renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The key is not cached.
    NotFound = 1,
    /// The key is already cached (tensors are put-once).
    AlreadyExists = 2,
    /// The tensor is larger than the whole cache; nothing was evicted.
    OutOfMemory = 3,
    /// The key is empty or too long.
    InvalidKey = 4,
    /// The metadata names an unknown dtype or layout, or overflows.
    InvalidMetadata = 5,
    /// The payload length differs from the metadata's byte size.
    InvalidSize = 6,
    /// A header or payload length exceeds the server's limits. Fatal: the
    /// connection is closed after this response.
    TooLarge = 7,
    /// The frame or its header could not be decoded. Fatal.
    Malformed = 8,
    /// The frame's protocol version is not spoken here. Fatal.
    UnsupportedVersion = 9,
    /// The opcode is unknown. Fatal.
    UnknownOpcode = 10,
    /// The server is at its connection limit. Fatal.
    Busy = 11,
    /// The server is shutting down. Fatal.
    ShuttingDown = 12,
    /// The connection was idle or too slow for too long. Fatal.
    Timeout = 13,
    /// A server-side failure that is not the request's fault.
    Internal = 14,
    /// A conditional put (`PUT_IF`) began before the key was deleted.
    Deleted = 15,
    /// An encoded payload is corrupt or names an unknown encoding.
    InvalidEncoding = 16,
    /// The answer to a GET flagged `FLAG_NOT_BULK` (version 3) whose
    /// tensor's payload is over `BULK_THRESHOLD`: no payload; the client
    /// asks again on a connection of its own, without the flag.
    Bulk = 17,
    /// A GET on the local door whose tensor would be mapped, but the bytes
    /// local clients have mapped would pass the server's `--max-leased`
    /// (or the connection holds too many mappings). Nothing is sent; the
    /// client may drop mapped tensors and ask again.
    LeaseLimit = 18,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 19] = [
        Status::Ok,
        Status::NotFound,
        Status::AlreadyExists,
        Status::OutOfMemory,
        Status::InvalidKey,
        Status::InvalidMetadata,
        Status::InvalidSize,
        Status::TooLarge,
        Status::Malformed,
        Status::UnsupportedVersion,
        Status::UnknownOpcode,
        Status::Busy,
        Status::ShuttingDown,
        Status::Timeout,
        Status::Internal,
        Status::Deleted,
        Status::InvalidEncoding,
        Status::Bulk,
        Status::LeaseLimit,
    ];

    /// The status with wire code `code`; unknown codes read as `Internal`.
    pub fn from_code(code: u16) -> Status {
        Status::ALL
            .into_iter()
            .find(|s| *s as u16 == code)
            .unwrap_or(Status::Internal)
    }

    /// The status as a metrics label: `ok`, `not_found`, `too_large`, …
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotFound => "not_found",
            Status::AlreadyExists => "already_exists",
            Status::OutOfMemory => "out_of_memory",
            Status::InvalidKey => "invalid_key",
            Status::InvalidMetadata => "invalid_metadata",
            Status::InvalidSize => "invalid_size",
            Status::TooLarge => "too_large",
            Status::Malformed => "malformed",
            Status::UnsupportedVersion => "unsupported_version",
            Status::UnknownOpcode => "unknown_opcode",
            Status::Busy => "busy",
            Status::ShuttingDown => "shutting_down",
            Status::Timeout => "timeout",
            Status::Internal => "internal",
            Status::Deleted => "deleted",
            Status::InvalidEncoding => "invalid_encoding",
            Status::Bulk => "bulk",
            Status::LeaseLimit => "lease_limit",
        }
    }

    /// The status for an engine error. This is the only place the mapping
    /// is made for the fast path.
    pub fn from_error(err: &Error) -> Status {
        match err {
            Error::NotFound(_) => Status::NotFound,
            Error::AlreadyExists(_) => Status::AlreadyExists,
            Error::Deleted(_) => Status::Deleted,
            Error::OutOfMemory { .. } => Status::OutOfMemory,
            Error::InvalidKey(_) => Status::InvalidKey,
            Error::InvalidTensorMetadata(_) => Status::InvalidMetadata,
            Error::InvalidSize { .. } => Status::InvalidSize,
            Error::InvalidEncoding(_) => Status::InvalidEncoding,
            Error::TypeMismatch { .. } | Error::Misaligned { .. } => Status::Internal,
        }
    }
}

/// A request-level or connection-level failure, ready to be sent as an
/// error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status:?}: {message}")]
pub struct ProtocolError {
    /// The status to answer with.
    pub status: Status,
    /// The request it answers (0 if the prefix could not be read).
    pub request_id: u64,
    /// A human-readable explanation.
    pub message: String,
}

impl ProtocolError {
    /// A new error.
    pub fn new(status: Status, request_id: u64, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            status,
            request_id,
            message: message.into(),
        }
    }

    /// An engine error as an answer to `request_id`.
    pub fn from_error(err: &Error, request_id: u64) -> ProtocolError {
        ProtocolError::new(Status::from_error(err), request_id, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s as u16), s);
        }
        // The metrics index statuses by code: ALL is in code order.
        assert!(Status::ALL
            .iter()
            .enumerate()
            .all(|(i, s)| *s as usize == i));
        assert_eq!(Status::from_code(999), Status::Internal);
    }
}
