"""Redstone's exceptions. All of them are :class:`RedstoneError`.

A missing key is not an exception: ``get`` returns ``None``, ``get_into``
returns ``False`` and ``delete`` returns ``False``.
"""

from __future__ import annotations

import builtins

__all__ = [
    "RedstoneError",
    "AlreadyExistsError",
    "OutOfMemoryError",
    "InvalidArgumentError",
    "ConnectionError",
    "TimeoutError",
    "DeletedError",
    "UnsupportedDtypeError",
]


class RedstoneError(Exception):
    """Any failure of a Redstone call."""


class AlreadyExistsError(RedstoneError):
    """The key is already cached. Values are immutable: delete the key,
    then put it again, to change one."""


class OutOfMemoryError(RedstoneError):
    """The tensor is larger than the server takes: its whole budget, or its
    ``--max-tensor`` limit. (A full cache evicts to make room; this is only
    for what can never fit.)"""


class InvalidArgumentError(RedstoneError, ValueError):
    """The key, dtype, shape or size was refused: by this client before
    sending, or by the server."""


class ConnectionError(RedstoneError, builtins.ConnectionError):
    """The server could not be reached, closed the connection, or (on a
    cluster) too few replicas answered. Calls after the server is back
    reconnect by themselves."""


class TimeoutError(ConnectionError, builtins.TimeoutError):
    """No reply within the client's ``timeout``."""


class DeletedError(RedstoneError):
    """A cluster put began before a delete of its key reached a replica:
    storing it would bring a deleted value back, so it was refused."""


class UnsupportedDtypeError(RedstoneError, TypeError):
    """An array's dtype has no Redstone equivalent (complex, object,
    strings...), or a bfloat16 tensor was read without ``ml_dtypes`` or
    torch to hold it."""
