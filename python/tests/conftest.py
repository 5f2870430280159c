"""Fixtures: Redstone servers started for the tests, on ephemeral ports.

The server binary is ``$REDSTONE_SERVER`` if set, else the workspace's
``target/release/server`` or ``target/debug/server`` (whichever is newer),
built with ``cargo build --bin server`` if neither exists.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]


def server_binary() -> str:
    explicit = os.environ.get("REDSTONE_SERVER")
    if explicit:
        return explicit
    found = [ROOT / "target" / p / "server" for p in ("release", "debug")]
    found = [p for p in found if p.exists()]
    if not found:
        subprocess.run(["cargo", "build", "--bin", "server"], cwd=ROOT, check=True)
        found = [ROOT / "target" / "debug" / "server"]
    return str(max(found, key=lambda p: p.stat().st_mtime))


class Server:
    """One server process. ``fast`` is its fast-path address."""

    def __init__(self, budget: str = "512MiB", fast_port: int = 0, args: Optional[List[str]] = None):
        self.budget = budget
        self.args = args or []
        self.fast = ""
        self.proc: Optional[subprocess.Popen] = None
        self.log: List[str] = []
        self._start(fast_port)

    def _start(self, fast_port: int) -> None:
        cmd = [server_binary(), "127.0.0.1:0", self.budget, "--fast", f"127.0.0.1:{fast_port}", "--shutdown-grace", "1", "--metrics", "off"]
        self.proc = subprocess.Popen(cmd + self.args, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(r"fast=(\S+)", line)
            if match:
                self.fast = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if not self.fast:
            self.proc.kill()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        proc = self.proc
        if proc is not None and proc.stderr is not None:
            for line in proc.stderr:
                self.log.append(line)

    @property
    def port(self) -> int:
        return int(self.fast.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Kills the server (SIGKILL: no goodbye to its clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Starts it again on the same fast-path port, empty."""
        self.stop()
        self._start(self.port)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server shared by the tests that only read and write their own keys."""
    with Server("2GiB") as s:
        yield s


@pytest.fixture
def fresh_server() -> Iterator[Server]:
    """A server of this test's own (128 MiB budget)."""
    with Server("128MiB") as s:
        yield s


@pytest.fixture
def silent_addr() -> Iterator[str]:
    """A listener that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield "127.0.0.1:%d" % listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def unique(prefix: str) -> str:
    """A key no other test uses."""
    unique.n += 1  # type: ignore[attr-defined]
    return f"{prefix}:{os.getpid()}:{unique.n}"  # type: ignore[attr-defined]


unique.n = 0  # type: ignore[attr-defined]
