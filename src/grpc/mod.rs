//! The gRPC front door: the API of the original Redstone README, unchanged
//! on the wire.
//!
//! - [`proto`]: the code generated from `proto/redstone.proto`.
//! - `convert`: proto ↔ domain types, and [`Error`](crate::Error) → gRPC
//!   status, each in one place.
//! - [`GrpcService`]: the service, a thin layer over the engine.
//! - `get`: `Get` answered without copying the payload into tonic's
//!   encode buffer.
//! - `limits`: [`GrpcConfig`]: connections at once (held by a permit from
//!   accept to close), streams per connection, idle connections closed.
//! - [`RemoteCacheClient`]: the client, and the one mapping of gRPC
//!   statuses onto [`ClientError`](crate::client::ClientError).

mod client;
mod convert;
mod get;
mod limits;
mod service;

pub use client::RemoteCacheClient;
pub(crate) use convert::meta_from_proto;
pub use convert::{oversize_request_status, status_from_error};
pub(crate) use get::CopyFreeGet;
pub(crate) use limits::incoming;
pub use limits::GrpcConfig;
pub use service::GrpcService;

/// Types generated from `proto/redstone.proto` by prost and tonic.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/redstone.rs"));
}

/// The largest message either side of the gRPC door sends or accepts.
///
/// gRPC frames a message with a 32-bit length, so no tensor of 4 GiB or more
/// can cross it; the fast path carries those.
pub const MAX_GRPC_MESSAGE: usize = u32::MAX as usize;

/// Room in a message for everything but the payload: key, metadata, tags.
pub(crate) const MESSAGE_SLACK: u64 = 64 * 1024;

/// HTTP/2 flow-control windows, on both sides. tonic's 64 KiB defaults
/// stall a connection every 64 KiB of a large tensor waiting for a window
/// update.
pub(crate) const H2_STREAM_WINDOW: u32 = 8 << 20;
/// See [`H2_STREAM_WINDOW`].
pub(crate) const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// The largest HTTP/2 frame either side accepts: a 1 MiB tensor crosses in
/// one DATA frame instead of 64 of the default 16 KiB (measured: 1 MiB gets
/// ~1.3 → ~2.3 GB/s).
pub(crate) const H2_MAX_FRAME: u32 = 1 << 20;
