#!/usr/bin/env python3
"""A/B: the same client (`redstone-bench`) against two `server` binaries, in
one run, cells interleaved (A, B, A, B, ...) so that drift on a noisy
machine hits both sides alike. For "is this change within noise of before".

    git worktree add /tmp/base <rev> && (cd /tmp/base && cargo build --release --bin server)
    cargo build --release --bins
    python3 benches/ab.py --a /tmp/base/target/release/server --b target/release/server

Prints, per cell, the median MB/s (and ops/s) of each side and B / A.
`--bench` picks the client binary: the base's `redstone-bench` when B
speaks a newer fast-path protocol than A (servers answer older versions).
Servers from #12 on serve metrics on 127.0.0.1:9464 by default: when both
binaries do, give one of them `--a-args "--metrics 127.0.0.1:0"`.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "redstone-bench")

# (target, size, op, concurrency, pipeline)
CELLS = [
    ("fast", 3 << 10, "get", 1, 1),
    ("fast", 3 << 10, "get", 16, 1),
    ("fast", 3 << 10, "get", 16, 16),
    ("fast", 3 << 10, "put", 1, 1),
    ("fast", 3 << 10, "put", 16, 1),
    ("fast", 1 << 20, "get", 1, 1),
    ("fast", 1 << 20, "put", 16, 1),
    ("fast", 16 << 20, "get", 1, 1),
    ("fast", 64 << 20, "put", 1, 1),
    ("grpc", 1 << 20, "get", 1, 1),
    ("grpc", 1 << 20, "get", 8, 1),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, extra):
    grpc, fast = free_port(), free_port()
    # `--tcp`: the fast path's old flag name, which every version accepts.
    proc = subprocess.Popen([binary, f"127.0.0.1:{grpc}", "2GiB", "--tcp", f"127.0.0.1:{fast}"] + extra,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", fast), timeout=0.2).close()
            return proc, {"fast": f"127.0.0.1:{fast}", "grpc": f"127.0.0.1:{grpc}"}
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"{binary} did not start")


def bench(target, addr, size, op, conc, pipe, duration):
    cmd = [BENCH, "--target", target, "--addr", addr, "--op", op, "--size", str(size),
           "--concurrency", str(conc), "--pipeline", str(pipe), "--duration", str(duration),
           "--json"]
    if op == "get":
        cmd += ["--keys", str(max(1, min(1000, (256 << 20) // size)) if target == "fast" else 32)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def human(n):
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def main():
    global BENCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the baseline server binary")
    ap.add_argument("--b", required=True, help="the server binary under test")
    ap.add_argument("--a-args", default="", help="more flags for A (e.g. '--metrics 127.0.0.1:0')")
    ap.add_argument("--b-args", default="", help="more flags for B")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="cells whose 'target/size/op/conc/pipeline' contains this")
    ap.add_argument("--bench", default=BENCH, help="the client: a redstone-bench binary")
    args = ap.parse_args()
    BENCH = args.bench
    servers = {
        name: start(binary, extra.split())
        for name, binary, extra in (("A", args.a, args.a_args), ("B", args.b, args.b_args))
    }
    try:
        print(f"Medians of {args.repeats} interleaved runs of {args.duration:.0f} s; "
              f"client: {BENCH}.\n")
        print("| target | size | op | conc | pipeline | A MB/s | B MB/s | A ops/s | B ops/s | B ÷ A |")
        print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for target, size, op, conc, pipe in CELLS:
            if args.only not in f"{target}/{human(size)}/{op}/{conc}/{pipe}":
                continue
            runs = {"A": [], "B": []}
            for _ in range(args.repeats):
                for name in ("A", "B"):
                    addr = servers[name][1][target]
                    runs[name].append(bench(target, addr, size, op, conc, pipe, args.duration))
            med = {n: {k: statistics.median(r[k] for r in rs) for k in ("mb_per_sec", "ops_per_sec")}
                   for n, rs in runs.items()}
            a, b = med["A"], med["B"]
            print(f"| {target} | {human(size)} | {op} | {conc} | {pipe} | {a['mb_per_sec']:.0f} | {b['mb_per_sec']:.0f} | "
                  f"{a['ops_per_sec']:.0f} | {b['ops_per_sec']:.0f} | {b['ops_per_sec'] / a['ops_per_sec']:.2f} |",
                  flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
