"""The asyncio side of the native calls: how their futures are resolved
and awaited."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Tuple


def resolve(future: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    """Called on the event loop (``call_soon_threadsafe``) when a native
    call has ended. A future cancelled meanwhile takes nothing."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


async def run(started: "Tuple[asyncio.Future[Any], Callable[[], None]]", abort: bool = True) -> Any:
    """Awaits a native call started as ``(future, abort)``.

    If the awaiting task is cancelled, the call is aborted (unless
    ``abort`` is false: a put runs on to its end), and the cancellation
    goes on only once the future has resolved: by then the native side has
    let go of the caller's arrays, so nothing writes into a ``get_into``'s
    ``out`` or reads a put's array after the ``CancelledError``.
    """
    future, stop = started
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if abort:
            stop()
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except BaseException:  # noqa: BLE001 - the call's own error; the cancel wins
                break
        if future.done() and not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it
        raise

