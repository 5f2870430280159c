"""The calls' contracts: misses, refusals, sizes, counters."""

import time

import numpy as np
import pytest

import redstone

from conftest import Server, unique


@pytest.fixture(scope="module")
def client(server):
    return redstone.Client(server.fast)


def test_a_missing_key_is_none_not_an_exception(client):
    key = unique("missing")
    assert client.get(key) is None
    out = np.full(4, 9, np.float32)
    assert client.get_into(key, out) is False
    assert (out == 9).all()
    assert client.delete(key) is False
    assert client.get_many([key, key]) == [None, None]


def test_a_second_put_is_already_exists_and_keeps_the_first_value(client):
    key = unique("dup")
    client.put(key, np.ones(3, np.float32))
    with pytest.raises(redstone.AlreadyExistsError, match="already cached"):
        client.put(key, np.zeros(3, np.float32))
    assert client.get(key).tolist() == [1.0, 1.0, 1.0]
    assert client.delete(key) is True
    client.put(key, np.zeros(3, np.float32))
    assert client.get(key).tolist() == [0.0, 0.0, 0.0]


def test_a_tensor_over_the_budget_is_out_of_memory(fresh_server):
    client = redstone.Client(fresh_server.fast)
    with pytest.raises(redstone.OutOfMemoryError):
        client.put(unique("huge"), np.zeros(129 << 20, np.uint8))
    # The server goes on serving, on the same client.
    key = unique("after")
    client.put(key, np.ones(2))
    assert client.get(key) is not None


def test_bad_keys_are_invalid_argument(client):
    with pytest.raises(redstone.InvalidArgumentError):
        client.put("", np.ones(1))
    for long in ["k" * 5000, "k" * 70000]:  # the second is over the server's header limit
        with pytest.raises(redstone.InvalidArgumentError, match="key"):
            client.get(long)
        with pytest.raises(redstone.InvalidArgumentError, match="key"):
            client.put(long, np.ones(1))
        with pytest.raises(redstone.InvalidArgumentError, match="key"):
            client.get_into(long, np.ones(1))
        with pytest.raises(redstone.InvalidArgumentError, match="key"):
            client.delete(long)
    assert issubclass(redstone.InvalidArgumentError, ValueError)
    with pytest.raises(TypeError, match="list of keys"):
        client.get_many("abc")


def test_get_into_checks_its_buffer_and_leaves_it_alone_when_refused(client):
    key = unique("into")
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    client.put(key, value)
    small = np.full(11, -1, np.float32)
    with pytest.raises(redstone.InvalidArgumentError, match=r"is F32 \[3, 4\] but out is F32 \[11\]"):
        client.get_into(key, small)
    assert (small == -1).all()
    raw = np.full(44, 7, np.uint8)
    with pytest.raises(redstone.InvalidArgumentError, match="out is 44 bytes but the tensor under .* is 48"):
        client.get_into(key, raw)
    assert (raw == 7).all()
    with pytest.raises(redstone.InvalidArgumentError, match="C-contiguous"):
        client.get_into(key, np.empty((4, 3), np.float32).T)
    readonly = np.empty((3, 4), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(redstone.InvalidArgumentError, match="read-only"):
        client.get_into(key, readonly)
    # The dtype, shape and order are checked before a byte is written.
    for wrong in [np.full((3, 4), -1, np.int32), np.full((4, 3), -1, np.float32), np.full((2, 6), -1, np.float32)]:
        with pytest.raises(redstone.InvalidArgumentError, match="out untouched"):
            client.get_into(key, wrong)
        assert (wrong == -1).all()
    with pytest.raises(redstone.InvalidArgumentError, match="row-major"):
        client.get_into(key, np.empty((3, 4), np.float32, order="F"))
    with pytest.raises(TypeError, match="numpy array"):
        client.get_into(key, np.float64(0))
    with pytest.raises(TypeError, match="numpy array"):
        client.get_into(key, [0.0] * 12)
    # The connection is still in step after the refusals.
    out = np.empty((3, 4), np.float32)
    assert client.get_into(key, out) and np.array_equal(out, value)
    # A flat uint8 buffer of the byte size takes the raw bytes.
    raw = np.empty(48, np.uint8)
    assert client.get_into(key, raw) and raw.tobytes() == value.tobytes()


def test_get_into_a_column_major_tensor_takes_a_fortran_ordered_out(client):
    key = unique("into-f")
    value = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
    client.put(key, value)
    with pytest.raises(redstone.InvalidArgumentError, match="column-major.*order='F'"):
        client.get_into(key, np.empty((3, 4), np.int64))
    out = np.empty((3, 4), np.int64, order="F")
    assert client.get_into(key, out) and np.array_equal(out, value)
    # One dimension longer than 1: the same bytes in either order.
    key = unique("into-f1")
    client.put(key, np.asfortranarray(np.arange(5, dtype=np.int64).reshape(1, 5)))
    out = np.empty((1, 5), np.int64)
    assert client.get_into(key, out) and out.tolist() == [[0, 1, 2, 3, 4]]


def test_two_calls_never_write_the_same_memory_at_once(client, silent_addr):
    import asyncio

    key = unique("alias")
    client.put(key, np.arange(1000, dtype=np.float64))
    out = np.empty(1000, np.float64)
    stuck = redstone.AsyncClient(silent_addr, timeout=1.0)

    async def main():
        # A read that waits (its server never answers) holds out's memory.
        first = asyncio.ensure_future(stuck.get_into("k", out))
        await asyncio.sleep(0.1)
        with pytest.raises(redstone.InvalidArgumentError, match="another get_into"):
            client.get_into(key, out[500:].reshape(20, 25))
        with pytest.raises(redstone.TimeoutError):
            await first

    asyncio.run(main())
    assert client.get_into(key, out) and out[999] == 999.0  # free again


def test_client_arguments(client):
    with pytest.raises(ValueError, match="host:port"):
        redstone.Client("")


def test_get_many_keeps_the_order_of_its_keys(client):
    keys = [unique("many") for _ in range(5)]
    for i, key in enumerate(keys):
        if i % 2 == 0:
            client.put(key, np.full(i + 1, i, np.int16))
    got = client.get_many(keys)
    assert [None if g is None else g.tolist() for g in got] == [[0], None, [2, 2, 2], None, [4] * 5]
    assert client.get_many([]) == []


def test_stats_count_this_clients_traffic(fresh_server):
    client = redstone.Client(fresh_server.fast)
    client.put("a", np.zeros(1000, np.uint8))
    client.get("a")
    client.get("a")
    client.get("b")
    s = client.stats()
    assert (s["entries"], s["hits"], s["misses"], s["evictions"]) == (1, 2, 1, 0)
    assert s["memory_limit"] == 128 << 20
    assert s["memory_used"] >= 1000
    assert s["hit_rate"] == pytest.approx(2 / 3)


def test_stats_report_the_disk_tier(fresh_server, tmp_path):
    assert redstone.Client(fresh_server.fast).stats()["disk"] is None
    tier = ["--disk-dir", str(tmp_path / "tier"), "--disk-size", "256MiB"]
    with Server("64MiB", args=tier) as s:
        client = redstone.Client(s.fast)
        # 96 MiB through 48 MiB of RAM (16 MiB of 64 is the disk queue).
        arrays = [np.full(1 << 20, i, np.uint8) for i in range(96)]
        for i, a in enumerate(arrays):
            client.put(f"t{i}", a)
            deadline = time.monotonic() + 10
            while client.stats()["disk"]["queued_bytes"] and time.monotonic() < deadline:
                time.sleep(0.005)
        disk = client.stats()["disk"]
        assert disk["writable"] and disk["dropped_writes"] == 0, disk
        assert disk["entries"] >= 40, disk
        # The oldest live on disk now, and come back byte for byte.
        np.testing.assert_array_equal(client.get("t0"), arrays[0])
        assert client.stats()["disk"]["hits"] >= 1


def test_large_tensors_round_trip():
    # 256 MiB, on a server of its own with room for it.
    with Server("600MiB") as big:
        client = redstone.Client(big.fast)
        words = np.arange(32 << 20, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        value = words.view(np.uint8).reshape(1 << 14, 1 << 14)
        client.put("big", value)
        out = np.empty_like(value)
        assert client.get_into("big", out)
        assert np.array_equal(out, value)
        del out
        back = client.get("big")
        assert back.shape == value.shape and np.array_equal(back, value)


def test_timeouts_are_connection_errors(silent_addr):
    client = redstone.Client(silent_addr, timeout=0.2)
    with pytest.raises(redstone.TimeoutError):
        client.get("k")
    with pytest.raises(redstone.ConnectionError):
        client.get_into("k", np.empty(4, np.uint8))
    with pytest.raises(TimeoutError):  # the builtin, too
        client.stats()


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        redstone.Client("127.0.0.1:1", nodes=["127.0.0.1:2"])
    with pytest.raises(ValueError, match="timeout"):
        redstone.Client("127.0.0.1:1", timeout=-1)
    with pytest.raises(ValueError, match="cluster"):
        redstone.Client("127.0.0.1:1", replicas=2)
    with pytest.raises(redstone.InvalidArgumentError, match="replicas"):
        redstone.Client(nodes=["127.0.0.1:1", "127.0.0.1:2"], replicas=3)
