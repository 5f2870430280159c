//! The tokio runtime the clients of this process share.
//!
//! `fork()` copies a process with only the forking thread: the runtime's
//! worker threads do not exist in the child, and anything waiting on them
//! would wait forever. So the runtime belongs to the process that made it;
//! a forked child that calls in gets one of its own (the parent's is
//! abandoned: dropping it would wait for threads that are not there).

use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// This process's runtime, made on first use.
pub fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((owner, runtime)) = *slot {
        if owner == pid {
            return Ok(runtime);
        }
    }
    let runtime = Builder::new_multi_thread()
        .thread_name("redstone")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start Redstone's threads: {e}")))?;
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    *slot = Some((pid, runtime));
    Ok(runtime)
}
