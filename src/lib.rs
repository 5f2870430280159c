//! Redstone: an in-memory cache for tensors.
//!
//! # Layout
//! - [`tensor`]: [`Tensor`](tensor::Tensor) and its validated
//!   [`TensorMeta`](tensor::meta::TensorMeta) (dtype, shape, layout).
//! - [`engine`]: the cache itself: a concurrent index, a byte budget and
//!   CLOCK eviction. Both front doors share one [`Engine`](engine::Engine).
//! - [`grpc`]: the gRPC front door (the original Redstone API): the
//!   generated code, conversions and the service.
//! - [`protocol`]: the fast path's wire format, sans I/O: the frame prefix,
//!   rkyv headers, status codes.
//! - [`connection`]: frames over a byte stream: a reader that gives each
//!   payload its own allocation, a vectored writer.
//! - [`fast`]: the fast path's server side: accept loop, limits, and the
//!   per-connection handler.
//! - [`server`]: binds the front doors, serves them, shuts them down.
//! - `fuzzing` (hidden): the fuzz targets' entry points, shared with the
//!   corpus replay test.
//! - [`client`]: [`RemoteCacheClient`](client::RemoteCacheClient) (gRPC),
//!   [`FastClient`](client::FastClient) (fast path) and the
//!   [`TensorStore`](client::TensorStore) trait both implement.
//! - [`cluster`]: [`ClusterClient`](cluster::ClusterClient): placement by
//!   rendezvous hashing, replication, failover and read repair, all in the
//!   client.
//! - [`size`]: parses byte sizes such as `512MiB`.
//! - [`Error`]: the one error type of the engine, mapped once per transport.
//! - `src/bin/`: thin mains for `server`, `client` and `redstone-bench`.

#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod connection;
pub mod engine;
mod error;
pub mod fast;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod protocol;
pub mod server;
pub mod size;
pub mod tensor;

pub use error::Error;

/// Compiles the README's Rust examples as doctests, so they cannot drift.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
