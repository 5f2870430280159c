"""Processes: fork, and interpreter exit with calls behind it."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import redstone

from conftest import Server


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_uses_the_parents_client_and_new_ones(server):
    client = redstone.Client(server.fast, timeout=5)
    client.put("fork:parent", np.arange(4, dtype=np.int32))  # the runtime and connection exist
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never raise
        code = 1
        try:
            inherited = client.get("fork:parent")
            fresh = redstone.Client(server.fast, timeout=5).get("fork:parent")
            client.put("fork:child", np.ones(2))
            if inherited.tolist() == [0, 1, 2, 3] and fresh.tolist() == [0, 1, 2, 3]:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # The parent's connection was not disturbed by the child.
    assert client.get("fork:child").tolist() == [1.0, 1.0]
    assert client.get("fork:parent").tolist() == [0, 1, 2, 3]


def test_programs_using_asyncclient_exit_cleanly():
    with Server() as s:
        script = textwrap.dedent(
            f"""
            import asyncio, numpy as np, redstone
            async def main():
                c = redstone.AsyncClient({s.fast!r})
                try:
                    await c.put("exit", np.ones(8))
                except redstone.AlreadyExistsError:
                    pass
                await asyncio.gather(*(c.get("exit") for _ in range(50)))
                await asyncio.gather(*(c.get("missing:" + str(i)) for i in range(20)))
            asyncio.run(main())
            """
        )
        codes = [subprocess.run([sys.executable, "-c", script], timeout=60).returncode for _ in range(15)]
    assert codes == [0] * 15


def test_calls_after_interpreter_shutdown_began_raise_instead_of_hanging():
    with Server() as s:
        script = textwrap.dedent(
            f"""
            import asyncio, redstone
            c = redstone.AsyncClient({s.fast!r})
            redstone._redstone.shutdown()  # what atexit runs
            async def main():
                try:
                    await asyncio.wait_for(c.get("k"), 5)
                except RuntimeError as e:
                    assert "shutting down" in str(e), e
                    return
                raise SystemExit("no error")
            asyncio.run(main())
            """
        )
        result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == 0
