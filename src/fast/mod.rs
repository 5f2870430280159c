//! The fast path: length-prefixed binary frames over TCP, an rkyv header,
//! and payloads written straight from the stored buffer.
//! `docs/PROTOCOL.md` specifies the bytes.
//!
//! - [`wire`]: the frame format, sans I/O: the prefix, the rkyv headers,
//!   status codes and the one mapping from [`Error`](crate::Error).
//! - [`stream`]: frames over a byte stream: a reader that gives each
//!   payload its own exactly-sized allocation, and a vectored writer.
//! - `direct`: a connection's write half shared by its writer task and
//!   the task that makes its frames, which writes a frame at once when
//!   nothing is queued ahead of it.
//! - `server`: the accept loop, its limits ([`FastConfig`]) and the
//!   per-connection handler.
//! - `client`: [`FastClient`]: a shared pipelined connection, exclusive
//!   connections for `get_into`, and the mapping of statuses onto
//!   [`ClientError`](crate::client::ClientError).
//! - [`local`]: the local door: this protocol over a Unix socket, with
//!   large tensors passed as sealed memfds instead of bytes.

mod client;
mod direct;
pub mod local;
mod server;
pub mod stream;
pub mod wire;

pub use client::{FastClient, FastClientOptions};
#[cfg(feature = "fuzzing")]
pub use server::serve_io;
pub use server::FastConfig;
pub(crate) use server::{serve, Budgets, Listener};
