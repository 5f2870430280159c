//! Payloads into numpy arrays and numpy arrays into payloads, without
//! copying either.
//!
//! The Python side hands over and receives flat `uint8` arrays; it views
//! them with the tensor's dtype and shape (`ndarray.view`, `reshape`), which
//! copies nothing either.

use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use redstone::client::ClientError;
use redstone::tensor::meta::{DType, TensorMeta};

use crate::process::PerProcess;
use tokio::sync::oneshot;

/// The memory of a received payload, owned by the numpy array that views
/// it (its `base`). Nothing else reaches the buffer, but for a tensor
/// mapped from the local door, which is shared read-only memory.
#[pyclass(frozen, module = "redstone._redstone")]
pub struct Payload {
    // Held, never read: the array views it through a raw pointer.
    _data: Held,
}

enum Held {
    /// A buffer of the array's own.
    Owned(BytesMut),
    /// A read-only mapping of a sealed memfd (the local door).
    Mapped(Bytes),
}

/// A flat `uint8` array over `data`, not a copy of it: writable over the
/// buffer the payload was read into; read-only over a tensor mapped from
/// the local door (sealed shared memory, which no process can write).
pub fn into_array(py: Python<'_>, data: Bytes) -> PyResult<Bound<'_, PyArray1<u8>>> {
    let mapped = redstone::fast::local::is_mapping(&data);
    let held = if mapped {
        Held::Mapped(data)
    } else {
        // A reply's payload has one owner, so this takes its buffer over;
        // a shared one (never from a reply) would be copied rather than
        // aliased.
        Held::Owned(
            data.try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..])),
        )
    };
    let (ptr, len) = match &held {
        Held::Owned(b) => (b.as_ptr(), b.len()),
        Held::Mapped(b) => (b.as_ptr(), b.len()),
    };
    let owner = Bound::new(py, Payload { _data: held })?;
    // SAFETY: `ptr` and `len` describe `owner`'s buffer, which is never
    // modified or reallocated (`Payload` is frozen and exposes nothing), and
    // `owner` becomes the array's base object, so the memory outlives every
    // view numpy makes of it. A mapped buffer is mapped read-only: the
    // array is made read-only before Python sees it.
    let array = unsafe {
        let view = ArrayView1::from_shape_ptr(len, ptr);
        PyArray1::borrow_from_array(&view, owner.into_any())
    };
    if mapped {
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("write", false)?;
        array.call_method("setflags", (), Some(&kwargs))?;
    }
    Ok(array)
}

/// Resolves when nothing reads a [`pinned`] array's memory any more, with
/// the array, to be released with the GIL held.
pub type Released = oneshot::Receiver<Py<PyArray1<u8>>>;

/// The bytes of a flat, contiguous `uint8` array, sent from the array's own
/// memory, and the signal that they are no longer read.
///
/// The `Bytes` (and its clones: the frames of a cluster's replica writes)
/// hold a reference to the array; when the last is dropped — after the
/// frame is written, or dropped unwritten with its connection — `Released`
/// resolves. A put returns only then, so the caller may reuse its array as
/// soon as it returns, whatever the outcome.
pub fn pinned(array: &Bound<'_, PyArray1<u8>>) -> PyResult<(Bytes, Released)> {
    if !array.is_c_contiguous() {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "the payload must be contiguous",
        ));
    }
    let (tx, rx) = oneshot::channel();
    let owner = Pinned {
        ptr: array.data(),
        len: array.len(),
        array: Some(array.clone().unbind()),
        release: Some(tx),
    };
    Ok((Bytes::from_owner(owner), rx))
}

/// A numpy array's memory, kept alive by a reference to the array.
struct Pinned {
    ptr: *const u8,
    len: usize,
    array: Option<Py<PyArray1<u8>>>,
    release: Option<oneshot::Sender<Py<PyArray1<u8>>>>,
}

// SAFETY: `Pinned` only ever reads `ptr[..len]`, from any thread. The
// memory belongs to the referenced array (or its base), which cannot be
// freed while `array` holds it; the array goes back to the caller, who
// drops it with the GIL, or, if the caller is gone, `Py`'s drop defers the
// decref until the interpreter is next attached. Python code writing to
// the array while a put runs races with the send, as with any buffer
// handed to I/O; the documentation says not to.
unsafe impl Send for Pinned {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for Pinned {}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr[..len]` is the contiguous data of the array `array`
        // keeps alive (checked contiguous in `pinned`); an empty array's
        // pointer is non-null (numpy allocates at least one byte).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let (Some(release), Some(array)) = (self.release.take(), self.array.take()) {
            // If the caller stopped waiting, the array is dropped here.
            let _ = release.send(array);
        }
    }
}

/// What `get_into` expects of the tensor, from its `out` array: checked
/// against the tensor's metadata before a byte of `out` is written.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The dtype code of `out`.
    pub dtype: u8,
    /// The shape of `out`.
    pub shape: Vec<u64>,
    /// The layout code `out` is contiguous in, or 0 for both.
    pub layout: u8,
}

impl Expect {
    /// Whether the tensor described by `meta` can be read into `out`.
    pub fn check(&self, key: &str, meta: &TensorMeta) -> Result<(), ClientError> {
        let (dtype, shape, layout) = (meta.dtype(), meta.shape(), meta.layout());
        if dtype.code() != self.dtype || shape != self.shape.as_slice() {
            let out_dtype = DType::from_code(i64::from(self.dtype))
                .map_or_else(|_| format!("code {}", self.dtype), |d| d.to_string());
            return Err(ClientError::InvalidArgument(format!(
                "the tensor under {key:?} is {dtype} {shape:?} but out is {out_dtype} {:?}: give \
                 get_into an array of the same dtype and shape, or a flat uint8 array of its byte \
                 size (out untouched)",
                self.shape
            )));
        }
        // Bytes read the same in both orders when at most one dimension is
        // longer than 1.
        let trivial = shape.iter().filter(|&&d| d > 1).count() <= 1;
        if self.layout != 0 && layout.code() != self.layout && !trivial {
            let (stored, wanted) = match layout.code() {
                2 => ("column-major", "F-contiguous (order='F')"),
                _ => ("row-major", "C-contiguous"),
            };
            return Err(ClientError::InvalidArgument(format!(
                "the tensor under {key:?} is stored {stored}: give get_into a {wanted} out \
                 (out untouched)"
            )));
        }
        Ok(())
    }
}

/// The memory ranges this process's `get_into` calls are writing now (a
/// child forked meanwhile has no such calls).
static WRITING: PerProcess<Mutex<Vec<(usize, usize)>>> = PerProcess::new();

/// This process's ranges in [`WRITING`], locked.
fn writing() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    let ranges: Result<_, std::convert::Infallible> =
        WRITING.get_or_try_init(|| Ok(Mutex::new(Vec::new())));
    let ranges = match ranges {
        Ok(ranges) => ranges,
        Err(never) => match never {},
    };
    ranges.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A writable, contiguous `uint8` array's memory, written by one
/// `get_into` (blocking or on a tokio task). Holds a reference to the
/// array, and its memory range in [`WRITING`], so no other `get_into`
/// writes the same memory at the same time.
pub struct Target {
    ptr: *mut u8,
    len: usize,
    _array: Py<PyArray1<u8>>,
}

// SAFETY: the memory is kept alive by `_array` and written only through
// the one `Target` that registered its range; see `Target::slice`.
unsafe impl Send for Target {}

impl Target {
    /// Checks that `array` is writable and contiguous, and that no other
    /// `get_into` is writing any of its memory.
    pub fn new(array: &Bound<'_, PyArray1<u8>>) -> Result<Target, ClientError> {
        let invalid = |why: &str| ClientError::InvalidArgument(why.to_owned());
        let mut guard = array
            .try_readwrite()
            .map_err(|_| invalid("out is not writable"))?;
        let slice = guard
            .as_slice_mut()
            .map_err(|_| invalid("out must be contiguous"))?;
        let (ptr, len) = (slice.as_mut_ptr(), slice.len());
        if len > 0 {
            let (start, end) = (ptr as usize, ptr as usize + len);
            let mut writing = writing();
            if writing.iter().any(|&(s, e)| s < end && start < e) {
                return Err(invalid(
                    "another get_into is writing into out's memory: give each concurrent call its own array",
                ));
            }
            writing.push((start, end));
        }
        Ok(Target {
            ptr,
            len,
            _array: array.clone().unbind(),
        })
    }

    /// The array's bytes.
    pub fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr[..len]` is the contiguous, writable data of the array
        // `_array` keeps alive (checked in `new`); its range is registered
        // in `WRITING` until this `Target` drops, so no other `Target`
        // covers it, and `&mut self` makes this the only slice of it in
        // Rust. Python code touching the array while the read runs races
        // with it; the documentation says not to.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.len > 0 {
            let start = self.ptr as usize;
            let mut writing = writing();
            if let Some(i) = writing.iter().position(|&(s, _)| s == start) {
                writing.swap_remove(i);
            }
        }
    }
}
