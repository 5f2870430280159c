#!/usr/bin/env python3
"""Where a 3 KiB GET's time goes, one request at a time: user and system
CPU per request of the server and of the client, for Redstone's fast path
and for Redis, driven by the same harness (`redstone-bench --concurrency 1`),
runs interleaved.

One request at a time, client and server take turns: a round trip is
about the sum of the four figures, so they show which side, and which
half (the kernel's or the program's), a gap comes from.

    cargo build --release --bins
    python3 benches/cpu_split.py [--rounds 3] [--duration 4]

Needs `redis-server` on PATH. Server CPU is read from /proc/PID/stat
around the measured run (after a warm-up run), the client's from
getrusage of the finished bench process.
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "redstone-bench")
SERVER = os.path.join(ROOT, "target", "release", "server")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_of(pid):
    """User and system seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def bench(target, port, duration):
    """Runs the bench; returns its JSON and its user and system seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [BENCH, "--target", target, "--addr", f"127.0.0.1:{port}", "--op", "get",
         "--size", "3KiB", "--concurrency", "1", "--keys", "200",
         "--duration", str(duration), "--json"],
        check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (json.loads(out.strip().splitlines()[-1]),
            after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def measure(target, port, pid, duration):
    bench(target, port, 1)  # writes the keys, warms both sides
    su, ss = cpu_of(pid)
    result, cu, cs = bench(target, port, duration)
    su2, ss2 = cpu_of(pid)
    # The bench also runs one second of warm-up before measuring.
    n = result["ops"] * (duration + 1) / duration
    us = lambda s: s / n * 1e6
    return (result["ops_per_sec"], us(su2 - su), us(ss2 - ss), us(cu), us(cs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    args = parser.parse_args()
    fast, grpc, redis = free_port(), free_port(), free_port()
    servers = {
        "fast": subprocess.Popen(
            [SERVER, f"127.0.0.1:{grpc}", "1GiB", "--fast", f"127.0.0.1:{fast}",
             "--metrics", "off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "redis": subprocess.Popen(
            ["redis-server", "--port", str(redis), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    ports = {"fast": fast, "redis": redis}
    try:
        for port in ports.values():
            wait_for(port)
        print("| round | server | ops/s | server user µs | server sys µs "
              "| client user µs | client sys µs |")
        print("|---|---|---|---|---|---|---|")
        for r in range(args.rounds):
            for target in ("fast", "redis"):
                row = measure(target, ports[target], servers[target].pid, args.duration)
                name = "Redstone fast path" if target == "fast" else "Redis"
                print(f"| {r + 1} | {name} | {row[0]:.0f} | "
                      + " | ".join(f"{x:.1f}" for x in row[1:]) + " |", flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
