"""Servers that are down, restart, or never answer."""

import threading
import time

import numpy as np
import pytest

import redstone

from conftest import Server


def test_connecting_to_a_server_that_is_down_is_a_connection_error():
    with Server() as s:
        addr = s.fast
    with pytest.raises(redstone.ConnectionError, match="cannot connect") as caught:
        redstone.Client(addr, connect_timeout=1)
    assert isinstance(caught.value, ConnectionError)  # the builtin
    assert isinstance(caught.value, redstone.RedstoneError)


def test_a_server_restart_fails_calls_in_between_then_the_client_reconnects():
    with Server() as s:
        client = redstone.Client(s.fast)
        client.put("w", np.ones(4, np.float32))
        out = np.empty(4, np.float32)
        assert client.get_into("w", out)  # opens get_into's own connection
        s.stop()
        with pytest.raises(redstone.ConnectionError):
            client.get("w")
        s.restart()
        # The restarted server is empty; the same client carries on.
        assert client.get("w") is None
        assert client.get_into("w", out) is False
        client.put("w", np.full(4, 2, np.float32))
        assert client.get("w").tolist() == [2.0] * 4
        assert client.get_into("w", out) and out.tolist() == [2.0] * 4


def test_the_gil_is_released_while_a_call_waits(silent_addr):
    client = redstone.Client(silent_addr, timeout=1.0)
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(1)
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        with pytest.raises(redstone.TimeoutError):
            client.get("k")
    finally:
        done.set()
        ticker.join()
    # ~100 ticks in the second the call waited; a held GIL allows none.
    assert len(ticks) > 20
