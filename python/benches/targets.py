"""The Python client's speed targets, measured side by side in one run.

    python python/benches/targets.py [--duration 3] [--repeats 3]

Starts a release Redstone server and a Redis server (``redis-server`` on
PATH, no persistence) on free ports, then, interleaved ``--repeats`` times:

1. 64 MiB ``get_into``, one request at a time: ``python -m redstone.bench``
   against ``redstone-bench --target fast --into`` (Rust) on the same server;
2. 1 MiB ``get``: the Python client against Redis through redis-py
   (``GET`` + ``np.frombuffer``);
3. 3 KiB ``get`` from one Python thread: the same pair.

Needs the ``redstone`` and ``redis`` packages in this Python, and builds the
release binaries with cargo if they are missing.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from redstone import bench

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redstone() -> tuple[subprocess.Popen, str]:
    cmd = [str(RELEASE / "server"), "127.0.0.1:0", "4GiB", "--fast", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"fast=(\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("the Redstone server did not start")


def start_redis() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def python_cell(target: str, addr: str, op: str, size: int, duration: float) -> float:
    args = SimpleNamespace(op=op, size=size, concurrency=1, duration=duration, keys=4 if size >= 1 << 24 else None, prefix="targets")
    result = bench.run(target, addr, args)
    if result["errors"] or result["misses"]:
        sys.exit(f"{target} {op} {size}: {result['errors']} errors, {result['misses']} misses")
    return result["ops_per_sec"]


def rust_cell(addr: str, size: int, duration: float) -> float:
    out = subprocess.run(
        [str(RELEASE / "redstone-bench"), "--target", "fast", "--addr", addr, "--op", "get", "--into",
         "--size", str(size), "--concurrency", "1", "--keys", "4", "--duration", str(duration), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["ops_per_sec"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not (RELEASE / "server").exists() or not (RELEASE / "redstone-bench").exists():
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    redstone_proc, redstone_addr = start_redstone()
    redis_proc, redis_addr = start_redis()
    cells = {
        "64 MiB get_into: Python / Rust": ([], []),
        "1 MiB get: Redstone / Redis (both from Python)": ([], []),
        "3 KiB get, one thread: Redstone / Redis (both from Python)": ([], []),
    }
    try:
        for _ in range(args.repeats):
            a, b = cells["64 MiB get_into: Python / Rust"]
            a.append(python_cell("redstone", redstone_addr, "get_into", 64 << 20, args.duration))
            b.append(rust_cell(redstone_addr, 64 << 20, args.duration))
            a, b = cells["1 MiB get: Redstone / Redis (both from Python)"]
            a.append(python_cell("redstone", redstone_addr, "get", 1 << 20, args.duration))
            b.append(python_cell("redis", redis_addr, "get", 1 << 20, args.duration))
            a, b = cells["3 KiB get, one thread: Redstone / Redis (both from Python)"]
            a.append(python_cell("redstone", redstone_addr, "get", 3 << 10, args.duration))
            b.append(python_cell("redis", redis_addr, "get", 3 << 10, args.duration))
    finally:
        redstone_proc.kill()
        redis_proc.kill()
    print(f"{'cell':<60} {'ops/s (each run)':<40} ratio of medians")
    for name, (a, b) in cells.items():
        runs = ", ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(a, b))
        print(f"{name:<60} {runs:<40} {statistics.median(a) / statistics.median(b):.2f}x")


if __name__ == "__main__":
    main()
