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


def test_kept_mappings_serve_repeat_gets_and_never_a_replaced_tensor(local):
    _, addr = local
    client = redstone.Client(addr, keep_mapped=64 << 20)
    key = unique("kept")
    first = np.full(1 << 18, 1.0, np.float32)  # 1 MiB: shared
    client.put(key, first)
    got = client.get(key)
    at = got.__array_interface__["data"][0]
    del got
    # The array is gone, the mapping kept: the next get is a view of it.
    again = client.get(key)
    assert again.__array_interface__["data"][0] == at
    assert np.array_equal(again, first) and not again.flags.writeable
    # Replaced under the same key: the new tensor, never the kept one.
    assert client.delete(key)
    second = np.full(1 << 18, 2.0, np.float32)
    client.put(key, second)
    assert np.array_equal(client.get(key), second)


def test_keep_mapped_is_for_one_servers_local_door():
    with pytest.raises(ValueError, match="keep_mapped"):
        redstone.Client(nodes=["127.0.0.1:1"], keep_mapped=1 << 20)
