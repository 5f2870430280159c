"""Type stubs of the native module. Use :class:`redstone.Client` and
:class:`redstone.AsyncClient`; this layer moves flat uint8 arrays."""

import asyncio
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

#: ``(dtype code, shape, layout code, flat uint8 array over the payload)``
Parts = Tuple[int, List[int], int, npt.NDArray[np.uint8]]
#: ``(dtype code, shape, layout code)``; layout 0 in an ``expect``: either order.
MetaParts = Tuple[int, List[int], int]

class Payload:
    """The memory of a received tensor; the base of the array that views it."""

class Abort:
    """Stops a started call at its next step; its future still resolves."""
    def __call__(self) -> None: ...

Started = Tuple["asyncio.Future[Any]", Abort]

def shutdown() -> None:
    """Registered with atexit: stops delivering results to event loops."""

class Native:
    def __init__(
        self,
        addr: Optional[str] = None,
        *,
        nodes: Optional[Sequence[str]] = None,
        replicas: Optional[int] = None,
        write_quorum: Optional[int] = None,
        connect_timeout: float = 5.0,
        timeout: Optional[float] = None,
        max_tensor: Optional[int] = None,
        l1: Optional[int] = None,
        l1_ttl: Optional[float] = None,
        keep_mapped: Optional[int] = None,
    ) -> None: ...
    def put(
        self,
        key: str,
        dtype: int,
        shape: Sequence[int],
        layout: int,
        data: npt.NDArray[np.uint8],
        compress: Optional[str] = None,
    ) -> None: ...
    def get(self, key: str) -> Optional[Parts]: ...
    def get_into(
        self, key: str, out: npt.NDArray[np.uint8], expect: Optional[MetaParts] = None
    ) -> Optional[MetaParts]: ...
    def get_many(self, keys: Sequence[str]) -> List[Optional[Parts]]: ...
    def delete(self, key: str) -> bool: ...
    def stats(self) -> Dict[str, Any]: ...
    # The same calls started on Redstone's threads: (future of the running
    # loop, abort). See redstone._aio.run.
    def aput(
        self,
        key: str,
        dtype: int,
        shape: Sequence[int],
        layout: int,
        data: npt.NDArray[np.uint8],
        compress: Optional[str] = None,
    ) -> Started: ...
    def aget(self, key: str) -> Started: ...
    def aget_into(self, key: str, out: npt.NDArray[np.uint8], expect: Optional[MetaParts] = None) -> Started: ...
    def aget_many(self, keys: Sequence[str]) -> Started: ...
    def adelete(self, key: str) -> Started: ...
    def astats(self) -> Started: ...
