"""The local door (``server --uds PATH``, ``Client("unix:PATH")``): large
tensors come back as read-only arrays over the server's shared memory."""

import os
import tempfile

import numpy as np
import pytest

import redstone

from conftest import Server, unique


@pytest.fixture(scope="module")
def local():
    """A server with a local door, and the door's address."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "redstone.sock")
        with Server("256MiB", args=["--uds", path]) as s:
            yield s, "unix:" + path


def test_a_large_tensor_is_a_read_only_view_of_shared_memory(local):
    server, addr = local
    client = redstone.Client(addr)
    key = unique("big")
    value = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    client.put(key, value)
    got = client.get(key)
    assert got.dtype == np.float32 and got.shape == (1024, 1024)
    assert np.array_equal(got, value)
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0, 0] = 5.0
    with pytest.raises(ValueError):
        got.setflags(write=True)
    # A copy is the caller's own; the stored tensor is unchanged.
    mine = got.copy()
    mine[0, 0] = 5.0
    assert client.get(key)[0, 0] == 0.0
    # get_into copies it into the caller's array.
    out = np.empty_like(value)
    assert client.get_into(key, out)
    assert np.array_equal(out, value)
    # A TCP client reads the same bytes.
    assert np.array_equal(redstone.Client(server.fast).get(key), value)


def test_a_small_tensor_is_a_writable_array_as_over_tcp(local):
    _, addr = local
    client = redstone.Client(addr)
    key = unique("small")
    client.put(key, np.ones(16, np.int64))
    got = client.get(key)
    assert got.flags.writeable
    got[0] = 7
    assert client.get(key).tolist() == [1] * 16
