#!/usr/bin/env python3
"""Compression and the client L1, end to end, measured side by side.

    cargo build --release --bins
    python3 benches/compress.py              # both tables (~10 min)
    python3 benches/compress.py --l1-only    # the L1 table
    sudo python3 benches/compress.py --rate 10gbit   # + the table on a 10 Gbit/s link

Compression: for each kind of synthetic tensor (`redstone-bench --data`),
1 MiB gets through the fast path with the values put raw and put with
`--compress lz4`, each against a fresh release server (so `stored_bytes`,
the server's `memory_used`, counts only that run's tensors). Throughput is
in raw (uncompressed) bytes per second. The cells are interleaved, three
runs each, and the table shows medians. Loopback moves bytes at memory
speed, so unpacking costs more than the bytes it saves; `--rate 10gbit`
limits loopback with `tc` (token bucket) to stand for a 10 GbE link.

L1: repeated 1 MiB gets over a hot set that fits the L1 (64 keys, L1 256
MiB) and over one 4x larger than the L1 (256 keys, L1 64 MiB), each beside
the same run without an L1, on one connection (each client has its own
L1).

Starts everything on loopback and stops it at the end; prints Markdown.
"""
import argparse
import json
import os
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


class Server:
    def __init__(self, budget="2GiB"):
        self.fast = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "server"), f"127.0.0.1:{free_port()}", budget,
             "--fast", self.fast, "--metrics", "off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = int(self.fast.rsplit(":", 1)[1])
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("the server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def bench(addr, args, duration):
    cmd = [os.path.join(BIN, "redstone-bench"), "--target", "fast", "--addr", addr,
           "--op", "get", "--duration", str(duration), "--json"] + args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        sys.exit(f"{result['errors']} errors in {' '.join(cmd)}")
    return result


def one(args, duration):
    server = Server()
    try:
        return bench(server.fast, args, duration)
    finally:
        server.stop()


class Link:
    """Loopback limited to `rate` (tc tbf on lo; needs root), or as it is."""

    def __init__(self, rate):
        self.rate = rate

    def __enter__(self):
        if self.rate:
            subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", self.rate,
                            "burst", "4mb", "latency", "100ms"], check=True)
        return self

    def __exit__(self, *exc):
        if self.rate:
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=True)


def compression(repeats, duration, concurrency, rate, kinds):
    keys = 256
    rows = []
    label = f"loopback limited to {rate} (tc tbf)" if rate else "loopback"
    for kind in kinds:
        runs = {"none": [], "lz4": []}
        for _ in range(repeats):
            for compress in ["none", "lz4"]:
                with Link(rate):
                    runs[compress].append(one(
                        ["--size", "1MiB", "--keys", str(keys), "--data", kind,
                         "--compress", compress, "--concurrency", str(concurrency)], duration))
        med = {c: statistics.median(r["mb_per_sec"] for r in runs[c]) for c in runs}
        stored = {c: runs[c][0]["stored_bytes"] / keys for c in runs}
        rows.append((kind, med, stored, runs))
    print(f"\n{label}: 1 MiB gets, {concurrency} workers, {keys} keys, fresh server per run; "
          f"MB/s of raw tensor bytes (median of {repeats}); stored = server memory_used per tensor\n")
    print("| data | stored raw | stored lz4 | lz4 / raw memory | get raw MB/s | get lz4 MB/s | lz4 / raw speed |")
    print("|---|---|---|---|---|---|---|")
    for kind, med, stored, runs in rows:
        print(f"| {kind} | {stored['none'] / 1024:.0f} KiB | {stored['lz4'] / 1024:.0f} KiB | "
              f"{stored['lz4'] / stored['none']:.2f}x | {med['none']:.0f} | {med['lz4']:.0f} | "
              f"{med['lz4'] / med['none']:.2f}x |")
        raw = ", ".join(f"{r['mb_per_sec']:.0f}" for r in runs["none"])
        packed = ", ".join(f"{r['mb_per_sec']:.0f}" for r in runs["lz4"])
        print(f"<!-- {kind}: raw runs {raw}; lz4 runs {packed} -->")


def l1(repeats, duration):
    cells = [("hot set fits (64 keys, L1 256 MiB)", 64, "256MiB"),
             ("hot set 4x the L1 (256 keys, L1 64 MiB)", 256, "64MiB")]
    print("\n1 MiB gets, 4 workers on one connection, median ops/s of "
          f"{repeats} runs, same server\n")
    print("| cell | no L1 | L1 | L1 / no L1 | L1 hit rate |")
    print("|---|---|---|---|---|")
    server = Server()
    try:
        for name, keys, size in cells:
            runs = {"off": [], "on": []}
            for _ in range(repeats):
                common = ["--size", "1MiB", "--keys", str(keys), "--concurrency", "4",
                          "--connections", "1"]
                runs["off"].append(bench(server.fast, common, duration))
                runs["on"].append(bench(server.fast, common + ["--l1", size], duration))
            off = statistics.median(r["ops_per_sec"] for r in runs["off"])
            on = statistics.median(r["ops_per_sec"] for r in runs["on"])
            last = runs["on"][-1]
            hit = last["l1_hits"] / max(1, last["l1_hits"] + last["l1_misses"])
            print(f"| {name} | {off:.0f} | {on:.0f} | {on / off:.2f}x | {hit:.0%} |")
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--l1-only", action="store_true")
    parser.add_argument("--no-l1", action="store_true", help="skip the L1 table")
    parser.add_argument("--data", default="relu,normal,bf16,int8",
                        help="the kinds of tensor in the compression table")
    parser.add_argument("--rate", action="append", default=None,
                        help="also run the compression table over loopback limited to this rate "
                             "with tc (e.g. 10gbit; needs root); repeatable")
    args = parser.parse_args()
    if not args.l1_only:
        for rate in [None] + (args.rate or []):
            compression(args.repeats, args.duration, args.concurrency, rate,
                        args.data.split(","))
    if not args.no_l1:
        l1(args.repeats, args.duration)


if __name__ == "__main__":
    main()
