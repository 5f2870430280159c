"""A three-node cluster with two replicas per tensor."""

import numpy as np
import pytest

import redstone

from conftest import Server


@pytest.fixture
def cluster():
    servers = [Server("256MiB") for _ in range(3)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_a_cluster_serves_every_tensor_with_one_node_down(cluster):
    nodes = [s.fast for s in cluster]
    client = redstone.Client(nodes=nodes, replicas=2, timeout=1.0)
    values = {f"t{i}": np.full((32, 32), i, np.float32) for i in range(40)}
    for key, value in values.items():
        client.put(key, value)
    stats = client.stats()
    assert stats["entries"] == 80  # two replicas each
    assert len(stats["nodes"]) == 3 and all(n["up"] for n in stats["nodes"])

    cluster[1].stop()
    for key, value in values.items():
        assert np.array_equal(client.get(key), value), key
        out = np.empty_like(value)
        assert client.get_into(key, out) and np.array_equal(out, value)
    got = client.get_many(list(values) + ["absent"])
    assert all(np.array_equal(g, values[k]) for g, k in zip(got, values))
    assert got[-1] is None
    stats = client.stats()
    down = [n for n in stats["nodes"] if n["addr"] == nodes[1]][0]
    assert "error" in down
    assert stats["entries"] < 80

    # A delete must reach every replica: with one down, some cannot.
    refused = 0
    for key in values:
        try:
            client.delete(key)
        except redstone.ConnectionError as e:
            assert "retry" in str(e)
            refused += 1
    assert 0 < refused < len(values)


def test_cluster_puts_are_immutable_too(cluster):
    client = redstone.Client(nodes=",".join(s.fast for s in cluster))
    client.put("k", np.ones(3))
    with pytest.raises(redstone.AlreadyExistsError):
        client.put("k", np.zeros(3))
    assert client.get("k").tolist() == [1.0, 1.0, 1.0]


def test_a_frozen_replica_does_not_hold_a_put(cluster):
    import os
    import signal
    import time

    client = redstone.Client(nodes=[s.fast for s in cluster[:2]], replicas=2, write_quorum=1, timeout=1.0)
    frozen = cluster[1].proc
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        value = np.ones(64 << 20, np.uint8)  # more than the socket buffers take
        client.put("frozen", value)
        # The frozen replica times out and is marked down, which ends its
        # connection and drops the queued bytes: the put does not wait for
        # them (the client's 30 s write timeout).
        assert time.monotonic() - began < 8
        value[:] = 0
        assert (client.get("frozen") == 1).all()
    finally:
        os.kill(frozen.pid, signal.SIGCONT)


def test_a_dns_name_is_a_node_list(cluster):
    # A numeric name resolves to itself through the system's resolver.
    port = cluster[0].fast.rsplit(":", 1)[1]
    client = redstone.Client(nodes=f"dns:127.0.0.1:{port}")
    client.put("k", np.arange(4, dtype=np.float32))
    assert client.get("k").tolist() == [0.0, 1.0, 2.0, 3.0]
    stats = client.stats()
    assert [n["addr"] for n in stats["nodes"]] == [cluster[0].fast]
    with pytest.raises(redstone.ConnectionError, match="cannot resolve"):
        redstone.Client(nodes="dns:name.invalid:1").get("k")
    with pytest.raises(ValueError, match="dns:"):
        redstone.Client(nodes="dns:no-port")
