"""Redstone: an in-memory tensor cache. numpy arrays and torch tensors in
and out of Redstone servers, over the fast path, without copies.

::

    import numpy as np, redstone
    c = redstone.Client("127.0.0.1:50052")
    c.put("emb:1", np.ones((100, 768), np.float32))
    a = c.get("emb:1")            # np.ndarray, or None if not cached
"""

from ._convert import NAMES as DTYPE_NAMES
from ._convert import NUMPY_DTYPES
from ._redstone import __version__
from .client import AsyncClient, Client
from .errors import (
    AlreadyExistsError,
    ConnectionError,
    DeletedError,
    InvalidArgumentError,
    OutOfMemoryError,
    RedstoneError,
    TimeoutError,
    UnsupportedDtypeError,
)

__all__ = [
    "Client",
    "AsyncClient",
    "RedstoneError",
    "AlreadyExistsError",
    "OutOfMemoryError",
    "InvalidArgumentError",
    "ConnectionError",
    "TimeoutError",
    "DeletedError",
    "UnsupportedDtypeError",
    "DTYPE_NAMES",
    "NUMPY_DTYPES",
    "__version__",
]
