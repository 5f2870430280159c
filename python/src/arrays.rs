//! Payloads into numpy arrays and numpy arrays into payloads, without
//! copying either.
//!
//! The Python side hands over and receives flat `uint8` arrays; it views
//! them with the tensor's dtype and shape (`ndarray.view`, `reshape`), which
//! copies nothing either.

use bytes::{Bytes, BytesMut};
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The memory of a received payload, owned by the numpy array that views
/// it (its `base`). Nothing else reaches the buffer.
#[pyclass(frozen, module = "redstone._redstone")]
pub struct Payload {
    // Held, never read: the array views it through a raw pointer.
    _data: BytesMut,
}

/// A flat, writable `uint8` array over `data`: the buffer the payload was
/// read into, not a copy of it.
pub fn into_array(py: Python<'_>, data: Bytes) -> PyResult<Bound<'_, PyArray1<u8>>> {
    // A reply's payload has one owner, so this takes its buffer over; a
    // shared one (never from a reply) would be copied rather than aliased.
    let data = data
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let (ptr, len) = (data.as_ptr(), data.len());
    let owner = Bound::new(py, Payload { _data: data })?;
    // SAFETY: `ptr` and `len` describe `owner`'s buffer, which is never
    // modified or reallocated (`Payload` is frozen and exposes nothing), and
    // `owner` becomes the array's base object, so the memory outlives every
    // view numpy makes of it.
    let array = unsafe {
        let view = ArrayView1::from_shape_ptr(len, ptr);
        PyArray1::borrow_from_array(&view, owner.into_any())
    };
    Ok(array)
}

/// The bytes of a flat `uint8` array, sent from the array's own memory.
///
/// The returned `Bytes` holds a reference to the array until the last
/// clone is dropped (after the frame is written), so the memory stays
/// allocated while the writer reads it.
pub fn pinned(array: &Bound<'_, PyArray1<u8>>) -> PyResult<Bytes> {
    if !array.is_c_contiguous() {
        return Err(PyValueError::new_err("the payload must be contiguous"));
    }
    let owner = Pinned {
        ptr: array.data(),
        len: array.len(),
        _array: array.clone().unbind(),
    };
    Ok(Bytes::from_owner(owner))
}

/// A numpy array's memory, kept alive by a reference to the array.
struct Pinned {
    ptr: *const u8,
    len: usize,
    _array: Py<PyArray1<u8>>,
}

// SAFETY: `Pinned` only ever reads `ptr[..len]`, from any thread. The
// memory belongs to the referenced array (or its base), which cannot be
// freed while `_array` holds it; `Py` drops its reference safely from any
// thread (deferred until the interpreter is next attached). Python code
// writing to the array while a put runs races with the send, as with any
// buffer handed to I/O; the documentation says not to.
unsafe impl Send for Pinned {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for Pinned {}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr[..len]` is the contiguous data of the array `_array`
        // keeps alive (checked contiguous in `pinned`); an empty array's
        // pointer is non-null (numpy allocates at least one byte).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A writable, contiguous `uint8` array's memory, for `get_into` on a
/// tokio task (the awaitable form). Holds a reference to the array.
pub struct Target {
    ptr: *mut u8,
    len: usize,
    _array: Py<PyArray1<u8>>,
}

// SAFETY: the memory is kept alive by `_array` and written only by the one
// task that owns this `Target`; see `Target::slice`.
unsafe impl Send for Target {}

impl Target {
    /// Checks that `array` is writable and contiguous.
    pub fn new(array: &Bound<'_, PyArray1<u8>>) -> PyResult<Target> {
        let mut guard = array
            .try_readwrite()
            .map_err(|e| PyValueError::new_err(format!("out is not writable: {e}")))?;
        let slice = guard
            .as_slice_mut()
            .map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
        Ok(Target {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _array: array.clone().unbind(),
        })
    }

    /// The array's bytes.
    pub fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr[..len]` is the contiguous, writable data of the array
        // `_array` keeps alive (checked in `new`), and `&mut self` makes this
        // the only slice of it in Rust. Python code touching the array while
        // the read runs races with it; the documentation says not to.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
