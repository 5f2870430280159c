"""A put never reads the caller's array after it returns, whatever the
outcome: a caller may reuse its buffer at once."""

import asyncio

import numpy as np
import pytest

import redstone

from conftest import Server

SIZE = 192 << 20


@pytest.fixture
def big():
    with Server("1GiB") as s:
        yield s


def stored_intact(server, key, fill):
    back = redstone.Client(server.fast).get(key)
    if back is None:
        return True  # never stored: nothing torn
    return bool((back == fill).all())


def test_a_put_that_times_out_has_stopped_reading_when_it_raises(big):
    client = redstone.Client(big.fast, timeout=0.005)
    value = np.full(SIZE, 0xAB, np.uint8)
    with pytest.raises(redstone.TimeoutError):
        client.put("slow", value)
    value[:] = 0  # the caller reuses its buffer
    assert stored_intact(big, "slow", 0xAB), "bytes written after the put returned were stored"


def test_a_cancelled_async_put_has_stopped_reading_when_cancelled(big):
    async def main():
        client = redstone.AsyncClient(big.fast)
        value = np.full(SIZE, 0xCD, np.uint8)
        task = asyncio.ensure_future(client.put("cancelled", value))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        value[:] = 0
        return client

    asyncio.run(main())
    assert stored_intact(big, "cancelled", 0xCD)


def test_a_put_to_a_server_that_stops_reading_returns_near_its_timeout(silent_addr):
    import time

    client = redstone.Client(silent_addr, timeout=0.5)
    value = np.ones(SIZE, np.uint8)  # far more than the socket buffers take
    began = time.monotonic()
    with pytest.raises(redstone.ConnectionError):
        client.put("stuck", value)
    assert time.monotonic() - began < 5, "the put waited for the connection's write timeout"


def test_a_cancelled_put_to_a_server_that_never_reads_ends_soon(silent_addr):
    import time

    async def main():
        client = redstone.AsyncClient(silent_addr)
        value = np.ones(SIZE, np.uint8)  # far more than the socket buffers take
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.put("k", value), 0.5)

    began = time.monotonic()
    asyncio.run(asyncio.wait_for(main(), 20))
    # Not the connection's 30 s write timeout: its queued bytes are dropped.
    assert time.monotonic() - began < 5
