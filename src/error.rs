//! The one error type of the engine and the tensor types.
//!
//! Each front end maps it in exactly one place: `grpc::convert` to gRPC
//! status codes, and the fast path to its error codes. Every message starts
//! with the variant's name (`InvalidSize: …`) so that it reads the same on
//! every transport.

use crate::tensor::meta::DType;

/// Why a cache or tensor operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key is not cached. [`Engine::get`](crate::engine::Engine::get)
    /// answers a miss with `None`; the doors use this variant to say so.
    #[error("NotFound: key {0:?} is not cached")]
    NotFound(String),

    /// The key is already cached. Tensors are immutable: delete, then put.
    #[error("AlreadyExists: key {0:?} is already cached; delete it first to replace it")]
    AlreadyExists(String),

    /// A conditional put ([`Engine::put_if`](crate::engine::Engine::put_if))
    /// began before the key was last deleted: it would bring a deleted
    /// value back.
    #[error("Deleted: key {0:?} was deleted after this write began")]
    Deleted(String),

    /// The tensor's charge exceeds the whole cache budget; nothing was evicted.
    #[error(
        "OutOfMemory: the tensor needs {needed} bytes of budget, the whole cache holds {limit}"
    )]
    OutOfMemory {
        /// What the tensor would be charged.
        needed: u64,
        /// The cache's byte budget.
        limit: u64,
    },

    /// The key is empty or too long.
    #[error("InvalidKey: {0}")]
    InvalidKey(String),

    /// The metadata is missing, names an unknown dtype or layout, or its
    /// shape overflows.
    #[error("InvalidTensorMetadata: {0}")]
    InvalidTensorMetadata(String),

    /// The payload length differs from what the metadata requires.
    #[error("InvalidSize: the data is {actual} bytes but the metadata requires {expected}")]
    InvalidSize {
        /// `meta.byte_size()`.
        expected: u64,
        /// The payload length received.
        actual: u64,
    },

    /// An encoded payload is corrupt, names an unknown encoding, or is
    /// viewed without being decoded.
    #[error("InvalidEncoding: {0}")]
    InvalidEncoding(String),

    /// A typed view asked for a different element type than stored.
    #[error("TypeMismatch: the tensor holds {stored}, not {requested}")]
    TypeMismatch {
        /// The tensor's dtype.
        stored: DType,
        /// The dtype of the requested element type.
        requested: DType,
    },

    /// A zero-copy view needs an alignment the payload buffer lacks.
    #[error("Misaligned: the payload is not aligned to {align} bytes; use to_vec")]
    Misaligned {
        /// The alignment the element type needs.
        align: usize,
    },
}
