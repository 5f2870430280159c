//! Clients for a Redstone server.
//!
//! [`RemoteCacheClient`] speaks the gRPC API, [`FastClient`] the fast path.
//! Both implement [`TensorStore`], so code written against the trait
//! switches transports by changing the line that connects. Errors come back
//! as [`ClientError`], one variant per outcome a caller may want to handle.

mod fast;
mod grpc;
mod store;

pub use fast::{FastClient, FastClientOptions};
pub use grpc::RemoteCacheClient;
pub use store::TensorStore;

use tonic::{Code, Status};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
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
    /// The tensor is larger than the whole cache (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    OutOfMemory(String),
    /// The server rejected the request's key, metadata or size
    /// (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request claims more than the server's limits (fast path); the
    /// server closes the connection after saying so.
    #[error("{0}")]
    TooLarge(String),
    /// A cluster put reached fewer replicas than its write quorum.
    #[error("write quorum not reached: {0}")]
    Quorum(String),
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The request was invalid before it was sent (bad key, size mismatch).
    #[error(transparent)]
    Invalid(#[from] crate::Error),
    /// The server answered with something this client cannot use.
    #[error("the server sent an invalid reply: {0}")]
    Protocol(String),
    /// The connection failed or the server is going away (`UNAVAILABLE`).
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// Any other gRPC status.
    #[error("gRPC error: {0}")]
    Rpc(Status),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> ClientError {
        let message = status.message().to_owned();
        match status.code() {
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::ResourceExhausted => ClientError::OutOfMemory(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::Unavailable => ClientError::Unavailable(message),
            _ => ClientError::Rpc(status),
        }
    }
}
