//! `redstone._redstone`: the native half of the Python package.
//!
//! The Python package (`python/redstone/`) turns arrays into dtype codes,
//! shapes and flat byte views, and back; this crate moves those bytes with
//! the Rust clients. Nothing here speaks the protocol itself.
//!
//! - `backend`: one node ([`FastClient`](redstone::fast::FastClient)) or a
//!   cluster ([`ClusterClient`](redstone::cluster::ClusterClient)) behind
//!   one set of calls.
//! - `native`: the `Native` class: each call blocking (the GIL released
//!   while it waits) or as an asyncio awaitable.
//! - `aio`: calls as asyncio futures, resolved from the runtime's threads.
//! - `runtime`: the process's tokio runtime, made again after `fork()`.
//! - `process`: values that belong to one process (`PerProcess`), so a
//!   forked child never waits on a lock or thread of its parent's.
//! - `arrays`: payloads into numpy arrays and numpy arrays into payloads,
//!   without copies.
//! - `convert`: received tensors and counters as Python objects.
//! - `errors`: the one mapping of client errors to Python exceptions.

mod aio;
mod arrays;
mod backend;
mod convert;
mod errors;
mod native;
mod process;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _redstone(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<native::Native>()?;
    m.add_class::<arrays::Payload>()?;
    m.add_class::<aio::Abort>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let shutdown = wrap_pyfunction!(aio::shutdown, m)?;
    m.add_function(shutdown.clone())?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    Ok(())
}
