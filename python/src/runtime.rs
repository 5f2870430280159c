//! The tokio runtime the clients of this process share.
//!
//! A forked child has none of the parent's runtime threads: it gets a
//! runtime of its own (see `process`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use tokio::runtime::{Builder, Runtime};

use crate::process::PerProcess;

static RUNTIME: PerProcess<Runtime> = PerProcess::new();

/// This process's runtime, made on first use.
pub fn runtime() -> PyResult<&'static Runtime> {
    RUNTIME.get_or_try_init(|| {
        Builder::new_multi_thread()
            .thread_name("redstone")
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start Redstone's threads: {e}")))
    })
}
