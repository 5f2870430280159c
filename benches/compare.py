#!/usr/bin/env python3
"""Side-by-side comparison: Redstone fast path vs Redstone gRPC vs Redis, with
the iperf3 loopback ceiling, all measured in one run by one harness.

    cargo build --release --bins
    python3 benches/compare.py                 # the full table (~15 min)
    python3 benches/compare.py --quick         # fewer cells, 1 repeat

Needs `redis-server` and `iperf3` on PATH (Debian: apt-get install
redis-server iperf3). Starts everything on loopback, stops it at the end,
prints a Markdown table of medians and ratios (Redstone / peer).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def bench(target, addr, op, size, conc, pipeline=1, duration=3.0, into=False):
    cmd = [os.path.join(BIN, "redstone-bench"), "--target", target, "--addr", addr,
           "--op", op, "--size", str(size), "--concurrency", str(conc),
           "--pipeline", str(pipeline), "--duration", str(duration), "--json"]
    if into:
        cmd.append("--into")
    if op == "get":
        # Few enough keys to stay cached, enough to leave the CPU cache.
        cmd += ["--keys", str(max(1, min(1000, (256 << 20) // size)))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        print(f"  warning: {result['errors']} errors in {' '.join(cmd)}", file=sys.stderr)
    return result


def iperf3(seconds=3):
    # No probe connection: a one-shot iperf3 server would take it for the test.
    for _ in range(5):
        port = free_port()
        server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                              "-l", "1M", "-J"], capture_output=True, text=True)
        server.kill()
        server.wait(timeout=10)
        try:
            return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8 / 1e6
        except (ValueError, KeyError):
            continue
    sys.exit("iperf3 failed five times")


def human(size):
    for unit, n in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n} {unit}"
    return f"{size} B"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--only", default="", help="run only cells whose 'size/op/conc/pipeline' "
                    "label contains this, e.g. '64 MiB/put' or '/16/16'")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    for tool in ("redis-server", "iperf3"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install redis-server iperf3)")

    grpc_port, tcp_port, redis_port = free_port(), free_port(), free_port()
    procs = [
        subprocess.Popen([os.path.join(BIN, "server"), f"127.0.0.1:{grpc_port}", "6GiB",
                          "--fast", f"127.0.0.1:{tcp_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                          "--appendonly", "no", "--maxmemory", "6gb",
                          "--maxmemory-policy", "allkeys-lru"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        for port in (grpc_port, tcp_port, redis_port):
            wait_port(port)
        addrs = {"tcp": f"127.0.0.1:{tcp_port}", "grpc": f"127.0.0.1:{grpc_port}",
                 "redis": f"127.0.0.1:{redis_port}"}
        sizes = [3 << 10, 1 << 20, 16 << 20, 64 << 20]
        cells = []
        for size in sizes:
            for op in ("get", "put"):
                for conc in ((16,) if args.quick else (1, 16)):
                    cells.append((size, op, conc, 1))
        cells.append((3 << 10, "get", 16, 16))
        cells.append((3 << 10, "put", 16, 16))
        cells = [c for c in cells if args.only in f"{human(c[0])}/{c[1]}/{c[2]}/{c[3]}"]

        ceiling = [iperf3(seconds=3) for _ in range(repeats)]
        # The single-stream case the ceiling is about: one 64 MiB get at a time.
        single = [bench("tcp", addrs["tcp"], "get", 64 << 20, 1, 1, args.duration, into=True)
                  for _ in range(repeats)]
        ceil = statistics.median(ceiling)
        single_mb = statistics.median(r["mb_per_sec"] for r in single)
        print(f"Medians of {repeats} run(s) of {args.duration:.0f} s each; ratios are Redstone fast path ÷ peer.\n")
        print(f"iperf3 loopback, one stream: {ceil:.0f} MB/s. "
              f"Fast path, one 64 MiB `get_into` at a time: {single_mb:.0f} MB/s = {single_mb / ceil:.2f} × iperf3.\n")
        print("| size | op | conc | pipeline | fast path MB/s | gRPC MB/s | Redis MB/s | fast ÷ gRPC | fast ÷ Redis | fast path ops/s | Redis ops/s | fast `get_into` MB/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for size, op, conc, pipe in cells:
            med = {}
            for target in ("tcp", "grpc", "redis"):
                runs = [bench(target, addrs[target], op, size, conc, pipe, args.duration)
                        for _ in range(repeats)]
                med[target] = {k: statistics.median(r[k] for r in runs)
                               for k in ("ops_per_sec", "mb_per_sec", "p99_us")}
            into = ""
            if op == "get" and size >= (16 << 20):
                runs = [bench("tcp", addrs["tcp"], op, size, conc, pipe, args.duration, into=True)
                        for _ in range(repeats)]
                into = f"{statistics.median(r['mb_per_sec'] for r in runs):.0f}"
            t, g, r = med["tcp"], med["grpc"], med["redis"]
            print(f"| {human(size)} | {op} | {conc} | {pipe} | {t['mb_per_sec']:.0f} | {g['mb_per_sec']:.0f} | "
                  f"{r['mb_per_sec']:.0f} | {t['mb_per_sec'] / g['mb_per_sec']:.2f} | "
                  f"{t['mb_per_sec'] / r['mb_per_sec']:.2f} | {t['ops_per_sec']:.0f} | {r['ops_per_sec']:.0f} | {into} |",
                  flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)



if __name__ == "__main__":
    main()
