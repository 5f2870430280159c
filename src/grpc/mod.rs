//! The gRPC front door: the API of the original Redstone README, unchanged
//! on the wire.
//!
//! - [`proto`]: the code generated from `proto/redstone.proto`.
//! - `convert`: proto ↔ domain types, and [`Error`](crate::Error) → gRPC
//!   status, each in one place.
//! - [`GrpcService`]: the service, a thin layer over the engine.

mod convert;
mod service;

pub(crate) use convert::meta_from_proto;
pub use convert::{oversize_request_status, status_from_error};
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
