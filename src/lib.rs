//! Redstone: an in-memory cache for tensors.
//!
//! # Layout
//! The bottom floor knows no transport:
//! - [`tensor`]: [`Tensor`](tensor::Tensor) and its validated
//!   [`TensorMeta`](tensor::meta::TensorMeta) (dtype, shape, layout).
//! - [`Error`]: the one error type of the engine and the tensor types,
//!   mapped once per door.
//! - [`stats`]: the counters every door reports.
//! - [`size`]: parses byte sizes such as `512MiB`.
//! - [`engine`]: the cache itself: a concurrent index, a byte budget and
//!   CLOCK eviction. Every door shares one [`Engine`](engine::Engine).
//!
//! One folder per door, each with its wire format, server side and client:
//! - [`fast`]: the fast path, length-prefixed binary frames over TCP:
//!   [`fast::wire`] (the bytes, sans I/O), [`fast::stream`] (frames over a
//!   socket), the server side ([`fast::FastConfig`]) and
//!   [`FastClient`](fast::FastClient); and [`fast::local`], the same
//!   protocol over a Unix socket, large tensors shared as sealed memfds
//!   with clients on the server's host.
//! - [`grpc`]: the original gRPC API: generated code, conversions, the
//!   service and [`RemoteCacheClient`](grpc::RemoteCacheClient).
//!
//! On top:
//! - [`client`]: what every client shares: the
//!   [`TensorStore`](client::TensorStore) trait and
//!   [`ClientError`](client::ClientError) (and, for convenience, both
//!   clients).
//! - [`cluster`]: [`ClusterClient`](cluster::ClusterClient): placement by
//!   rendezvous hashing, replication, failover and read repair, all in the
//!   client, over [`FastClient`](fast::FastClient).
//! - [`metrics`]: what the doors count, in a Prometheus registry, and the
//!   `/metrics` + `/health` endpoint.
//! - [`server`]: binds the doors and the metrics endpoint over one
//!   engine, serves them, shuts them down.
//! - `fuzzing` (feature `fuzzing`): the fuzz targets' entry points, shared
//!   with the corpus replay test.
//! - `src/bin/`: thin mains for `server` and `client`; the load generator
//!   `redstone-bench` is a package of its own in `redstone-bench/`.

#![warn(missing_docs)]

mod alloc;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod engine;
mod error;
pub mod fast;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod grpc;
pub mod metrics;
pub mod server;
pub mod size;
pub mod stats;
mod striped;
pub mod tensor;

pub use error::Error;

/// Compiles the README's Rust examples as doctests, so they cannot drift.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
