//! Client errors as Python exceptions: the one place they are mapped.
//!
//! The classes are defined in Python (`redstone/errors.py`), where
//! `redstone.ConnectionError` can subclass both `redstone.RedstoneError`
//! and the builtin `ConnectionError`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use redstone::client::ClientError;

/// The name of the `redstone.errors` class for `err`.
fn class_name(err: &ClientError) -> &'static str {
    match err {
        ClientError::AlreadyExists(_) => "AlreadyExistsError",
        // A payload over the server's limit (`--max-tensor`, by default
        // its budget) is refused before it is read, as `TooLarge`: for a
        // Python caller, as for the engine's own refusal, the tensor does
        // not fit in that server.
        ClientError::OutOfMemory(_) | ClientError::TooLarge(_) => "OutOfMemoryError",
        ClientError::InvalidArgument(_) | ClientError::Invalid(_) => "InvalidArgumentError",
        ClientError::Timeout(_) => "TimeoutError",
        ClientError::Connect { .. } | ClientError::Unavailable(_) | ClientError::Quorum(_) => {
            "ConnectionError"
        }
        ClientError::Deleted(_) => "DeletedError",
        ClientError::Protocol(_) | ClientError::Rpc(_) => "RedstoneError",
    }
}

/// `err` as an instance of its `redstone.errors` class.
pub fn to_py(py: Python<'_>, err: ClientError) -> PyErr {
    let class = py
        .import("redstone.errors")
        .and_then(|module| module.getattr(class_name(&err)))
        .and_then(|class| Ok(class.cast_into::<PyType>()?));
    match class {
        Ok(class) => PyErr::from_type(class, err.to_string()),
        Err(_) => PyRuntimeError::new_err(err.to_string()),
    }
}
