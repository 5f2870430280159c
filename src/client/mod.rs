//! What every client shares: the [`TensorStore`] trait and [`ClientError`].
//!
//! The clients themselves live with their doors:
//! [`FastClient`](crate::fast::FastClient) speaks the fast path,
//! [`RemoteCacheClient`](crate::grpc::RemoteCacheClient) the gRPC API, and
//! [`ClusterClient`](crate::cluster::ClusterClient) spreads keys over many
//! fast-path servers. All implement [`TensorStore`], so code written
//! against the trait switches transports by changing the line that
//! connects. They are re-exported here, where programs written against
//! earlier versions look for them.

mod l1;
mod store;

pub use crate::fast::{FastClient, FastClientOptions};
pub use crate::grpc::RemoteCacheClient;
pub use l1::{L1Options, L1Stats, L1, L1_ENTRY_OVERHEAD};
pub use store::TensorStore;

use crate::fast::wire::EncodeError;
use crate::Error;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to a Redstone server at {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The key is already cached (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// A conditional put began before the key was deleted: writing it
    /// would bring a deleted value back (fast path, cluster writes).
    #[error("{0}")]
    Deleted(String),
    /// The tensor is larger than the whole cache (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    OutOfMemory(String),
    /// The server rejected the request's key, metadata or size
    /// (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is larger than a frame can carry: refused by the server
    /// (over its limits; it closes the connection after saying so), or
    /// found unencodable before sending (a header over rkyv's 32-bit
    /// offsets).
    #[error("{0}")]
    TooLarge(String),
    /// A cluster write did not reach enough replicas: a put fewer than its
    /// write quorum, a delete not every replica.
    #[error("write quorum not reached: {0}")]
    Quorum(String),
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The request was found invalid before it was sent (a payload whose
    /// length does not match its metadata, a `get_into` buffer of the
    /// wrong size), with the engine's typed error. Where the server would
    /// refuse with a variant of its own — the key is cached, the tensor is
    /// larger than the cache — the client-side check gives that same
    /// variant (see `From<Error>`).
    #[error(transparent)]
    Invalid(Error),
    /// The server answered with something this client cannot use.
    #[error("the server sent an invalid reply: {0}")]
    Protocol(String),
    /// The connection failed or the server is going away (`UNAVAILABLE`).
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// Any other gRPC status.
    #[error("gRPC error: {0}")]
    Rpc(tonic::Status),
}

impl From<Error> for ClientError {
    /// An engine error caught on this side of the wire. Where the server
    /// answers the same refusal with a variant of its own, this is that
    /// variant, so a caller matches one pattern whichever side caught it.
    fn from(err: Error) -> ClientError {
        match err {
            Error::AlreadyExists(_) => ClientError::AlreadyExists(err.to_string()),
            Error::OutOfMemory { .. } => ClientError::OutOfMemory(err.to_string()),
            Error::Deleted(_) => ClientError::Deleted(err.to_string()),
            // A miss is `Ok(None)` on every client; no call returns it as
            // an error.
            Error::NotFound(_)
            | Error::InvalidKey(_)
            | Error::InvalidTensorMetadata(_)
            | Error::InvalidSize { .. }
            | Error::InvalidEncoding(_)
            | Error::TypeMismatch { .. }
            | Error::Misaligned { .. } => ClientError::Invalid(err),
        }
    }
}

impl From<EncodeError> for ClientError {
    fn from(err: EncodeError) -> ClientError {
        ClientError::TooLarge(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_the_same_whichever_side_caught_them() {
        let oom = Error::OutOfMemory {
            needed: 2,
            limit: 1,
        };
        assert!(matches!(
            ClientError::from(oom.clone()),
            ClientError::OutOfMemory(m) if m == oom.to_string()
        ));
        assert!(matches!(
            ClientError::from(Error::AlreadyExists("k".into())),
            ClientError::AlreadyExists(m) if m.starts_with("AlreadyExists: ")
        ));
        assert!(matches!(
            ClientError::from(Error::InvalidSize {
                expected: 1,
                actual: 2
            }),
            ClientError::Invalid(Error::InvalidSize { .. })
        ));
    }
}
