#!/usr/bin/env python3
"""Side-by-side comparison: Redstone fast path vs Redstone gRPC vs Redis, with
the iperf3 loopback ceiling, all measured in one run by one harness.

    cargo build --release --bins
    python3 benches/compare.py                 # every table (~20 min)
    python3 benches/compare.py --quick         # fewer cells, 1 repeat

Tables, in order:
1. Large transfers: 64 MiB plain `get` vs `get_into` vs iperf3; gRPC 1 MiB
   gets at 1 and 8 workers; 3 KiB gets with and without a stream of 64 MiB
   gets on the same client (head-of-line blocking).
2. Fresh, evicting caches: 1 MiB puts into a new 1 GiB Redstone and a new
   Redis with `maxmemory 1gb`, a new pair per run, both evicting for most
   of it.
3. Long-lived caches: one 6 GiB Redstone and one 6 GiB Redis serve every
   cell in turn, so later cells run against caches full of earlier cells'
   tensors.

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


def bench(target, addr, op, size, conc, pipeline=1, duration=3.0, into=False, extra=()):
    cmd = [os.path.join(BIN, "redstone-bench"), "--target", target, "--addr", addr,
           "--op", op, "--size", str(size), "--concurrency", str(conc),
           "--pipeline", str(pipeline), "--duration", str(duration), "--json", *extra]
    if into:
        cmd.append("--into")
    if op == "get" and "--keys" not in extra:
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


def start_pair(budget_gib):
    """A fresh Redstone (gRPC + fast path) and a fresh Redis, each with a
    budget of `budget_gib` GiB; returns (processes, addresses)."""
    grpc_port, tcp_port, redis_port = free_port(), free_port(), free_port()
    procs = [
        subprocess.Popen([os.path.join(BIN, "server"), f"127.0.0.1:{grpc_port}", f"{budget_gib}GiB",
                          "--fast", f"127.0.0.1:{tcp_port}", "--metrics", "off"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                          "--appendonly", "no", "--maxmemory", f"{budget_gib}gb",
                          "--maxmemory-policy", "allkeys-lru"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    for port in (grpc_port, tcp_port, redis_port):
        wait_port(port)
    return procs, {"tcp": f"127.0.0.1:{tcp_port}", "grpc": f"127.0.0.1:{grpc_port}",
                   "redis": f"127.0.0.1:{redis_port}"}


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=30)


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def large_transfers(addrs, repeats, duration):
    """Table 1, its cells interleaved, medians."""
    rows = {k: [] for k in ("iperf3", "get", "get_into", "grpc1", "grpc8", "small", "small_bg")}
    for _ in range(repeats):
        rows["iperf3"].append({"mb_per_sec": iperf3(seconds=3)})
        rows["get"].append(bench("tcp", addrs["tcp"], "get", 64 << 20, 1, 1, duration))
        rows["get_into"].append(bench("tcp", addrs["tcp"], "get", 64 << 20, 1, 1, duration, into=True))
        for conc in (1, 8):
            rows[f"grpc{conc}"].append(bench("grpc", addrs["grpc"], "get", 1 << 20, conc, 1, duration,
                                             extra=("--keys", "32")))
        for key, extra in (("small", ()), ("small_bg", ("--background-get", "64MiB"))):
            rows[key].append(bench("tcp", addrs["tcp"], "get", 3 << 10, 1, 1, duration,
                                   extra=("--connections", "1", *extra)))
    wire = median(rows["iperf3"], "mb_per_sec")
    get, into = median(rows["get"], "mb_per_sec"), median(rows["get_into"], "mb_per_sec")
    print("| what | MB/s | ratio |")
    print("|---|---|---|")
    print(f"| iperf3, loopback, one stream | {wire:.0f} | |")
    print(f"| fast path, 64 MiB `get_into`, one at a time | {into:.0f} | {into / wire:.2f} × iperf3 |")
    print(f"| fast path, 64 MiB plain `get`, one at a time | {get:.0f} | {get / into:.2f} × `get_into` |")
    for conc in (1, 8):
        g = median(rows[f"grpc{conc}"], "mb_per_sec")
        print(f"| gRPC, 1 MiB `Get`, {conc} worker{'s' if conc > 1 else ''} (32 keys) | {g:.0f} | |")
    print()
    small, bg = rows["small"], rows["small_bg"]
    print("| 3 KiB gets, one worker | ops/s | p50 µs | p99 µs |")
    print("|---|---|---|---|")
    print(f"| alone | {median(small, 'ops_per_sec'):.0f} | {median(small, 'p50_us'):.0f} | "
          f"{median(small, 'p99_us'):.0f} |")
    print(f"| beside 64 MiB gets on the same client ({median(bg, 'background_mb_per_sec'):.0f} MB/s) | "
          f"{median(bg, 'ops_per_sec'):.0f} | {median(bg, 'p50_us'):.0f} | {median(bg, 'p99_us'):.0f} |",
          flush=True)


def fresh_puts(repeats, duration):
    """Table 2: 1 MiB puts into fresh 1 GiB caches, both evicting."""
    print("| clients | fast path MB/s | Redis MB/s | fast ÷ Redis |")
    print("|---|---|---|---|")
    for conc in (1, 16):
        runs = {"tcp": [], "redis": []}
        for _ in range(repeats):
            for target in ("tcp", "redis"):
                procs, addrs = start_pair(1)
                try:
                    runs[target].append(bench(target, addrs[target], "put", 1 << 20, conc, 1, duration))
                finally:
                    stop(procs)
        t, r = median(runs["tcp"], "mb_per_sec"), median(runs["redis"], "mb_per_sec")
        print(f"| {conc} | {t:.0f} | {r:.0f} | {t / r:.2f} |", flush=True)


def long_lived(args, repeats):
    """Table 3: every cell against one long-lived pair of 6 GiB caches."""
    procs, addrs = start_pair(6)
    try:
        sizes = [3 << 10, 1 << 20, 16 << 20, 64 << 20]
        cells = []
        for size in sizes:
            for op in ("get", "put"):
                for conc in ((16,) if args.quick else (1, 16)):
                    cells.append((size, op, conc, 1))
        cells.append((3 << 10, "get", 16, 16))
        cells.append((3 << 10, "put", 16, 16))
        cells = [c for c in cells if args.only in f"{human(c[0])}/{c[1]}/{c[2]}/{c[3]}"]
        print("Ratios are the Redstone fast path ÷ the peer.\n")
        print("| size | op | conc | pipeline | fast path MB/s | gRPC MB/s | Redis MB/s | fast ÷ gRPC | "
              "fast ÷ Redis | fast path ops/s | Redis ops/s | fast `get_into` MB/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for size, op, conc, pipe in cells:
            med = {}
            for target in ("tcp", "grpc", "redis"):
                runs = [bench(target, addrs[target], op, size, conc, pipe, args.duration)
                        for _ in range(repeats)]
                med[target] = {k: median(runs, k) for k in ("ops_per_sec", "mb_per_sec", "p99_us")}
            into = ""
            if op == "get" and size >= (16 << 20):
                runs = [bench("tcp", addrs["tcp"], op, size, conc, pipe, args.duration, into=True)
                        for _ in range(repeats)]
                into = f"{median(runs, 'mb_per_sec'):.0f}"
            t, g, r = med["tcp"], med["grpc"], med["redis"]
            print(f"| {human(size)} | {op} | {conc} | {pipe} | {t['mb_per_sec']:.0f} | {g['mb_per_sec']:.0f} | "
                  f"{r['mb_per_sec']:.0f} | {t['mb_per_sec'] / g['mb_per_sec']:.2f} | "
                  f"{t['mb_per_sec'] / r['mb_per_sec']:.2f} | {t['ops_per_sec']:.0f} | {r['ops_per_sec']:.0f} | {into} |",
                  flush=True)
    finally:
        stop(procs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer cells, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--tables", default="123", help="which tables to run, e.g. 12")
    ap.add_argument("--only", default="", help="table 3: run only cells whose 'size/op/conc/pipeline' "
                    "label contains this, e.g. '64 MiB/put' or '/16/16'")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    for tool in ("redis-server", "iperf3"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install redis-server iperf3)")
    print(f"Medians of {repeats} run(s) of {args.duration:.0f} s each.\n")
    if "1" in args.tables:
        print("### 1. Large transfers, and small gets beside them (a fresh 1 GiB server)\n")
        procs, addrs = start_pair(1)
        try:
            large_transfers(addrs, repeats, args.duration)
        finally:
            stop(procs)
    if "2" in args.tables:
        print("\n### 2. 1 MiB puts into fresh, evicting 1 GiB caches (a new pair per run)\n")
        fresh_puts(repeats, args.duration)
    if "3" in args.tables:
        print("\n### 3. Long-lived 6 GiB caches, every cell in turn\n")
        long_lived(args, repeats)


if __name__ == "__main__":
    main()
