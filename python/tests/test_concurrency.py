"""Threads and asyncio sharing one client."""

import asyncio
import threading

import numpy as np
import pytest

import redstone

from conftest import unique


def test_sixteen_threads_share_one_client(server):
    client = redstone.Client(server.fast)
    prefix = unique("threads")
    errors = []

    def work(t):
        try:
            for i in range(50):
                key = f"{prefix}:{t}:{i}"
                value = np.full((64, 17), t * 1000 + i, np.int32)
                client.put(key, value)
                assert np.array_equal(client.get(key), value)
                out = np.empty_like(value)
                assert client.get_into(key, out) and np.array_equal(out, value)
                got = client.get_many([key, key + ":missing"])
                assert np.array_equal(got[0], value) and got[1] is None
                if i % 2:
                    assert client.delete(key)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_asyncio_runs_many_gets_at_once(server):
    async def main():
        client = redstone.AsyncClient(server.fast)
        prefix = unique("async")
        keys = [f"{prefix}:{i}" for i in range(200)]
        await asyncio.gather(*(client.put(k, np.full(100, i, np.float64)) for i, k in enumerate(keys)))
        # 1,000 gets in flight together, hits and misses.
        gets = [client.get(keys[i % 200] if i % 5 else f"{prefix}:none:{i}") for i in range(1000)]
        got = await asyncio.gather(*gets)
        for i, value in enumerate(got):
            if i % 5:
                assert value is not None and (value == i % 200).all()
            else:
                assert value is None
        outs = [np.empty(100, np.float64) for _ in range(20)]
        found = await asyncio.gather(*(client.get_into(keys[i], outs[i]) for i in range(20)))
        assert all(found) and all((outs[i] == i).all() for i in range(20))
        many = await client.get_many(keys[:3] + ["nope"])
        assert [m[0] for m in many[:3]] == [0, 1, 2] and many[3] is None
        with pytest.raises(redstone.AlreadyExistsError):
            await client.put(keys[0], np.zeros(1))
        assert await client.delete(keys[0]) is True
        stats = await client.stats()
        assert stats["hits"] >= 800

    asyncio.run(main())


def test_the_event_loop_keeps_running_while_calls_wait(silent_addr):
    async def main():
        client = redstone.AsyncClient(silent_addr, timeout=0.5)
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        with pytest.raises(redstone.TimeoutError):
            await client.get("k")
        ticker.cancel()
        assert ticks > 10

    asyncio.run(main())
