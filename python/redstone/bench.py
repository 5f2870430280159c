"""Load generator for the Python client: ``python -m redstone.bench``.

Closed loop: N threads, one request each at a time, for a fixed duration,
after a one-second warm-up. The flags are ``redstone-bench``'s where they
apply. ``--target redstone,redis`` runs the same workload against both in
one run, Redis through redis-py the way its users move arrays
(``tobytes`` / ``np.frombuffer``), and prints the ratio::

    python -m redstone.bench --target redstone,redis --op get --size 1MiB

Redis needs the ``redis`` package (``pip install redis``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from typing import Any, Callable, Dict, List

import numpy as np

import redstone

UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def parse_size(text: str) -> int:
    """``3KiB``, ``1MiB``, ``4096``..."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 3KiB, 1MiB)")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


class Redstone:
    """Redstone through one shared :class:`redstone.Client`."""

    def __init__(self, addr: str) -> None:
        self.client = redstone.Client(addr)

    def put(self, key: str, value: np.ndarray) -> None:
        try:
            self.client.put(key, value)
        except redstone.AlreadyExistsError:
            pass

    def get(self, key: str) -> Any:
        return self.client.get(key)

    def get_into(self, key: str, out: np.ndarray) -> bool:
        return self.client.get_into(key, out)


class Redis:
    """Redis through redis-py: ``tobytes`` on the way in, ``np.frombuffer``
    on the way out. It has no ``get_into``: reading into a buffer is a get
    and a copy."""

    def __init__(self, addr: str) -> None:
        try:
            import redis  # type: ignore[import-not-found]
        except ImportError:
            sys.exit("--target redis needs redis-py: pip install redis")
        host, port = addr.rsplit(":", 1)
        self.client = redis.Redis(host=host, port=int(port), max_connections=256)

    def put(self, key: str, value: np.ndarray) -> None:
        self.client.set(key, value.tobytes())

    def get(self, key: str) -> Any:
        data = self.client.get(key)
        return None if data is None else np.frombuffer(data, dtype=np.uint8)

    def get_into(self, key: str, out: np.ndarray) -> bool:
        data = self.client.get(key)
        if data is None:
            return False
        out[:] = np.frombuffer(data, dtype=np.uint8)
        return True


DEFAULT_ADDRS = {"redstone": "127.0.0.1:50052", "redis": "127.0.0.1:6379"}


def run(target: str, addr: str, args: argparse.Namespace) -> Dict[str, Any]:
    store = Redstone(addr) if target == "redstone" else Redis(addr)
    size = args.size
    keys = args.keys or max(1, min(1000, (512 << 20) // max(size, 1)))
    prefix = f"{args.prefix}:{size}"
    names = [f"{prefix}:{i}" for i in range(keys)]
    if args.op != "put":
        value = np.arange(size, dtype=np.uint64).astype(np.uint8)
        for name in names:
            store.put(name, value)

    stop = threading.Event()
    measuring = threading.Event()
    latencies: List[List[int]] = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency
    misses = [0] * args.concurrency
    first_error: List[str] = []
    start_barrier = threading.Barrier(args.concurrency + 1)

    def worker(w: int) -> None:
        out = np.empty(size, np.uint8)
        value = np.full(size, w % 251, np.uint8)
        op: Callable[[int], Any]
        if args.op == "get":
            op = lambda i: store.get(names[i % keys]) is not None  # noqa: E731
        elif args.op == "get_into":
            op = lambda i: store.get_into(names[i % keys], out)  # noqa: E731
        else:
            run_id = time.monotonic_ns()
            op = lambda i: store.put(f"{prefix}:put:{run_id}:{w}:{i}", value) or True  # noqa: E731
        mine = latencies[w]
        i = w * 7919
        start_barrier.wait()
        while not stop.is_set():
            t0 = time.perf_counter_ns()
            failed = False
            try:
                ok = op(i)
            except Exception as e:  # noqa: BLE001 - counted and reported
                ok, failed = False, True
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}")
            t1 = time.perf_counter_ns()
            if measuring.is_set():
                # Only completed operations count towards throughput and
                # latency; misses and errors are reported apart.
                if failed:
                    errors[w] += 1
                elif not ok:
                    misses[w] += 1
                else:
                    mine.append(t1 - t0)
            i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(args.concurrency)]
    for t in threads:
        t.start()
    start_barrier.wait()
    time.sleep(1.0)  # warm-up
    measuring.set()
    began = time.perf_counter()
    time.sleep(args.duration)
    measuring.clear()
    elapsed = time.perf_counter() - began
    stop.set()
    for t in threads:
        t.join()

    lat = np.sort(np.concatenate([np.asarray(x, dtype=np.int64) for x in latencies]))
    ops = len(lat)
    pct = lambda p: float(lat[min(ops - 1, int(p * ops))]) / 1e3 if ops else float("nan")  # noqa: E731
    return {
        "target": target,
        "addr": addr,
        "op": args.op,
        "size": size,
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "ops": ops,
        "errors": sum(errors),
        "misses": sum(misses),
        "first_error": first_error[0] if first_error else None,
        "ops_per_sec": ops / elapsed,
        "bytes_per_sec": ops * size / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    }


def describe(r: Dict[str, Any]) -> str:
    return (
        f"{r['target']:>8} {r['op']:>8} {r['size']:>10} B x{r['concurrency']:<3} "
        f"{r['ops_per_sec']:>10.0f} ops/s {r['bytes_per_sec'] / 1e9:>7.3f} GB/s "
        f"p50 {r['p50_us']:>8.1f} us  p99 {r['p99_us']:>8.1f} us  errors {r['errors']}"
        + (f"  misses {r['misses']} (evicted: give the server more memory)" if r["misses"] else "")
        + (f"\n  first error: {r['first_error']}" if r["first_error"] else "")
    )


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m redstone.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="redstone", help="redstone, redis, or both: redstone,redis")
    p.add_argument("--addr", help="the server (one target), default 127.0.0.1:50052 / 127.0.0.1:6379")
    p.add_argument("--redstone-addr", default=DEFAULT_ADDRS["redstone"])
    p.add_argument("--redis-addr", default=DEFAULT_ADDRS["redis"])
    p.add_argument("--op", choices=["get", "put", "get_into"], default="get")
    p.add_argument("--size", type=parse_size, default=parse_size("3KiB"), help="value size: 3KiB, 1MiB, ...")
    p.add_argument("--concurrency", type=int, default=1, help="threads, one request each in flight")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured, after a 1 s warm-up")
    p.add_argument("--keys", type=int, help="distinct keys read (default: as many as fit in 512 MiB, at most 1000)")
    p.add_argument("--prefix", default="pybench")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if not targets or any(t not in DEFAULT_ADDRS for t in targets):
        p.error("--target is redstone, redis or redstone,redis")
    if args.addr and len(targets) > 1:
        p.error("--addr names one server; use --redstone-addr / --redis-addr with two targets")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")

    results = []
    for target in targets:
        addr = args.addr or getattr(args, f"{target}_addr")
        result = run(target, addr, args)
        results.append(result)
        print(describe(result), flush=True)
    if len(results) == 2:
        ratio = results[0]["ops_per_sec"] / max(results[1]["ops_per_sec"], 1e-9)
        print(f"{results[0]['target']} / {results[1]['target']}: {ratio:.2f}x")
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0]))
    return 1 if any(r["errors"] or r["misses"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
