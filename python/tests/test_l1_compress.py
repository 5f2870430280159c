"""Compressed puts and the client-side L1, from Python."""

import asyncio

import numpy as np
import pytest

import redstone

from conftest import unique


def relu(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return np.maximum(x, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int8, np.uint16, np.int64, np.bool_])
def test_a_compressed_put_reads_back_exact(fresh_server, dtype):
    client = redstone.Client(fresh_server.fast)
    value = (relu(300_000, 1) * 10).astype(dtype).reshape(600, 500)
    key = unique("packed")
    client.put(key, value, compress="lz4")
    back = client.get(key)
    assert back.dtype == value.dtype and back.shape == value.shape
    assert np.array_equal(back, value)
    out = np.empty_like(value)
    assert client.get_into(key, out)
    assert np.array_equal(out, value)
    assert np.array_equal(client.get_many([key])[0], value)


def test_relu_activations_are_charged_under_two_thirds_of_their_size(fresh_server):
    client = redstone.Client(fresh_server.fast)
    value = relu(1 << 20, 2)
    client.put(unique("acts"), value, compress="lz4")
    # Packed to about 0.53x, and charged the allocator's size class that
    # holds it (jemalloc: 2.5 MiB for these 2.2 MB), about 0.63x.
    assert client.stats()["memory_used"] < 0.66 * value.nbytes


def test_an_unknown_compression_is_a_value_error(client_on):
    with pytest.raises(ValueError, match="unknown compression"):
        client_on.put(unique("x"), np.ones(4, np.float32), compress="zip")


@pytest.fixture
def client_on(server):
    return redstone.Client(server.fast)


def test_the_l1_answers_repeated_gets_and_forgets_own_deletes(fresh_server):
    client = redstone.Client(fresh_server.fast, l1=64 << 20)
    key = unique("hot")
    value = relu(1 << 18, 3)
    client.put(key, value)
    served = client.stats()["hits"]
    for _ in range(5):
        a = client.get(key)
        assert np.array_equal(a, value)
        a[0] = -1.0  # each get is the caller's own array
    stats = client.stats()
    assert stats["hits"] == served, "no request reached the server"
    assert stats["l1"]["hits"] == 5 and stats["l1"]["entries"] == 1
    assert client.delete(key) is True
    assert client.get(key) is None
    assert redstone.Client(fresh_server.fast).stats()["l1"] is None


def test_an_async_client_takes_both(fresh_server):
    async def run():
        client = redstone.AsyncClient(fresh_server.fast, l1=8 << 20, l1_ttl=30.0)
        key = unique("async")
        value = relu(1 << 16, 4)
        await client.put(key, value, compress="lz4")
        assert np.array_equal(await client.get(key), value)
        assert np.array_equal(await client.get(key), value)
        return await client.stats()

    stats = asyncio.run(run())
    assert stats["l1"]["hits"] >= 1


def test_l1_ttl_without_l1_is_a_value_error(server):
    with pytest.raises(ValueError, match="l1_ttl needs l1"):
        redstone.Client(server.fast, l1_ttl=1.0)
