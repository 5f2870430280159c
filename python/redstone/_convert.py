"""Arrays to ``(dtype code, shape, layout code, flat uint8 view)`` and back.

Nothing here copies, except a non-contiguous or big-endian input to
``put``, which is copied once into a contiguous little-endian array.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Tuple

import numpy as np

from .errors import InvalidArgumentError, UnsupportedDtypeError

ROW_MAJOR = 1
COLUMN_MAJOR = 2
BF16 = 7

#: Redstone's dtype codes (the wire's) and their numpy dtypes, little-endian.
#: BF16 (code 7) is ``ml_dtypes.bfloat16`` when that package is installed.
NUMPY_DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("<i8"),
    5: np.dtype("u1"),
    6: np.dtype("<f2"),
    8: np.dtype("i1"),
    9: np.dtype("<i2"),
    10: np.dtype("<u2"),
    11: np.dtype("<u4"),
    12: np.dtype("<u8"),
    13: np.dtype("?"),
}

#: Redstone's name for each code, as the server and the Rust client print it.
NAMES = {
    1: "F32", 2: "F64", 3: "I32", 4: "I64", 5: "U8", 6: "F16", 7: "BF16",
    8: "I8", 9: "I16", 10: "U16", 11: "U32", 12: "U64", 13: "BOOL",
}

_CODES = {dt: code for code, dt in NUMPY_DTYPES.items()}

_BF16_HELP = (
    "bfloat16 needs the ml_dtypes package for numpy arrays (pip install ml_dtypes), "
    "or torch: get(..., torch=True)"
)


def bfloat16() -> Optional[np.dtype]:
    """numpy's bfloat16 dtype from ml_dtypes, or None when it is not installed."""
    try:
        import ml_dtypes  # type: ignore[import-not-found]
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _torch() -> Any:
    """The torch module if the program has imported it (never imports it)."""
    return sys.modules.get("torch")


def _code_of(dtype: np.dtype) -> int:
    native = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    code = _CODES.get(native)
    if code is not None:
        return code
    if dtype.name == "bfloat16":
        return BF16
    raise UnsupportedDtypeError(f"Redstone has no dtype for numpy's {dtype} (supported: {', '.join(NAMES.values())})")


def as_array(value: Any) -> Tuple[np.ndarray, Optional[int]]:
    """``value`` as a numpy array sharing its memory, and the dtype code
    when the array's dtype does not say it (a torch bfloat16 tensor, viewed
    as int16)."""
    if isinstance(value, np.ndarray):
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError("masked arrays are not supported: store .filled(fill_value) or .data")
        # A subclass (np.matrix...) as the plain array over its memory.
        return (value if type(value) is np.ndarray else value.view(np.ndarray)), None
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise InvalidArgumentError(
                f"the tensor is on {value.device}; copy it to the CPU first (tensor.cpu())"
            )
        value = value.detach()
        if value.is_conj():
            value = value.resolve_conj()
        if value.is_neg():
            value = value.resolve_neg()
        try:
            if value.dtype == torch.bfloat16:
                return value.view(torch.int16).numpy(), BF16
            return value.numpy(), None
        except (TypeError, RuntimeError) as e:
            raise UnsupportedDtypeError(f"Redstone cannot take a torch {value.dtype} tensor: {e}") from None
    if isinstance(value, np.generic):
        return np.asarray(value), None
    if hasattr(value, "__dlpack__"):
        return np.from_dlpack(value), None
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(
            f"cannot put a {type(value).__name__}: expected a numpy array, a torch CPU tensor, "
            "an object with __dlpack__, or a buffer (bytes, bytearray, memoryview, array.array); "
            "convert lists with np.asarray first"
        ) from None
    return np.asarray(view), None


def to_parts(value: Any) -> Tuple[int, Tuple[int, ...], int, np.ndarray]:
    """``(dtype code, shape, layout code, flat uint8 view of the bytes)``.

    C-contiguous arrays are sent as row-major and Fortran-contiguous ones
    as column-major, both from their own memory; anything else is copied
    once into a C-contiguous array.
    """
    array, code = as_array(value)
    if code is None:
        code = _code_of(array.dtype)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.flags.c_contiguous:
        layout = ROW_MAJOR
    elif array.flags.f_contiguous:
        layout = COLUMN_MAJOR
    else:
        array = np.ascontiguousarray(array)
        layout = ROW_MAJOR
    flat = array.ravel(order="K").view(np.uint8)
    return code, array.shape, layout, flat


def from_parts(code: int, shape: Tuple[int, ...], layout: int, flat: np.ndarray, torch: bool = False) -> Any:
    """The array (or torch tensor) for a received tensor, over ``flat``'s memory."""
    order = "F" if layout == COLUMN_MAJOR else "C"
    dtype = NUMPY_DTYPES.get(code)
    if dtype is None and code == BF16:
        dtype = bfloat16()
        if dtype is None:
            if torch:
                return _torch_bf16(flat, shape, order)
            raise UnsupportedDtypeError("the tensor is bfloat16: " + _BF16_HELP)
    if dtype is None:
        raise UnsupportedDtypeError(f"the server sent an unknown dtype code {code}; upgrade the redstone package")
    array = flat.view(dtype).reshape(shape, order=order)
    if not torch:
        return array
    if code == BF16:
        return _torch_bf16(flat, shape, order)
    return _import_torch().from_numpy(array)


def _torch_bf16(flat: np.ndarray, shape: Tuple[int, ...], order: str) -> Any:
    torch = _import_torch()
    return torch.from_numpy(flat.view(np.int16).reshape(shape, order=order)).view(torch.bfloat16)


def _import_torch() -> Any:
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError("torch=True needs PyTorch: pip install torch") from None
    return torch


def out_view(out: Any) -> Tuple[np.ndarray, Optional[Tuple[int, Tuple[int, ...], int]]]:
    """``get_into``'s destination as a flat, writable uint8 view of its
    memory, and what it expects of the tensor: ``(dtype code, shape, layout
    code)`` (layout 0: either order), or ``None`` for a flat uint8 array,
    which takes any tensor's raw bytes."""
    torch = _torch()
    is_tensor = torch is not None and isinstance(out, torch.Tensor)
    if not is_tensor and (not isinstance(out, np.ndarray) or isinstance(out, np.ma.MaskedArray)):
        raise TypeError(f"out must be a numpy array or a torch CPU tensor, not {type(out).__name__}")
    if is_tensor and (out.is_neg() or out.is_conj()):
        # Its numpy view would be a resolved copy: the bytes would not land in out.
        raise InvalidArgumentError("out is a lazily negated or conjugated view; pass a plain tensor")
    array, code = as_array(out)
    if not array.flags.writeable:
        raise InvalidArgumentError("out is read-only")
    if array.dtype.byteorder == ">":
        raise InvalidArgumentError("out must be little-endian, as Redstone stores tensors")
    c, f = array.flags.c_contiguous, array.flags.f_contiguous
    if not (c or f):
        raise InvalidArgumentError("out must be contiguous (allocate it with np.empty(shape, dtype))")
    flat = array.ravel(order="K").view(np.uint8)
    if array.ndim == 1 and array.dtype == np.uint8 and code is None:
        return flat, None
    if code is None:
        code = _code_of(array.dtype)
    layout = 0 if (c and f) else (ROW_MAJOR if c else COLUMN_MAJOR)
    return flat, (code, array.shape, layout)
