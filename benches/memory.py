#!/usr/bin/env python3
"""Memory efficiency: fill a 1 GiB budget with 3 KiB tensors, then (on a
fresh server) with 1 MiB tensors, through the fast path; report the
server's RSS against the budget and the real per-entry overhead. Then the
mixed workload: one server filled with 1 MiB, then 16 MiB, then 64 MiB
tensors, its RSS sampled all along (freed payloads of one size are not the
right size for the next).

    cargo build --release --bins
    python3 benches/memory.py
    python3 benches/memory.py --server OTHER/server   # another build's server

Each fill writes 1.25x what the budget holds, so the cache is full and has
been evicting when RSS is read.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
BUDGET = 1 << 30
CHARGED_OVERHEAD = 320  # src/engine/mod.rs ENTRY_OVERHEAD
SERVER = os.path.join(BIN, "server")


def footprint(size):
    """src/alloc.rs: jemalloc's size class (four per power of two)."""
    if size <= 128:
        return -(-size // 16) * 16
    lg = (size - 1).bit_length() - 1
    delta = 1 << (lg - 2)
    return -(-size // delta) * delta


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start():
    grpc, tcp = free_port(), free_port()
    server = subprocess.Popen([SERVER, f"127.0.0.1:{grpc}", str(BUDGET),
                               "--fast", f"127.0.0.1:{tcp}", "--metrics", "off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", tcp), timeout=0.2).close()
            return server, tcp
        except OSError:
            if time.time() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.05)


def fill(tcp, size, prefix):
    charge = footprint(size) + len(f"{prefix}:0000000") + 8 + CHARGED_OVERHEAD
    keys = int(BUDGET / charge * 1.25)
    out = subprocess.run([os.path.join(os.path.dirname(SERVER), "redstone-bench"), "--addr", f"127.0.0.1:{tcp}",
                          "--op", "fill", "--keys", str(keys), "--size", str(size),
                          "--concurrency", "8", "--key-prefix", prefix, "--json"],
                         capture_output=True, text=True, check=True)
    return keys, charge, json.loads(out.stdout.strip().splitlines()[-1])


def measure(size, label):
    server, tcp = start()
    try:
        baseline = rss(server.pid)
        keys, charge, stats = fill(tcp, size, "mem")
        time.sleep(0.5)
        resident = rss(server.pid)
        entries = stats["entries"]
        payload = entries * size
        real_overhead = (resident - baseline - payload) / entries
        print(f"| {label} | {keys} | {entries} | {stats['evictions']} | {stats['memory_used'] / BUDGET:.3f} | "
              f"{resident / 2**20:.0f} MiB | {resident / BUDGET:.3f} | {real_overhead:.0f} B | "
              f"{charge - size} B |")
    finally:
        server.terminate()
        server.wait(timeout=30)


def mixed():
    server, tcp = start()
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(server.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        after = []
        for size in (1 << 20, 16 << 20, 64 << 20):
            fill(tcp, size, f"mix{size >> 20}")
            time.sleep(0.5)
            after.append(rss(server.pid))
        time.sleep(2)
        settled = rss(server.pid)
    finally:
        done.set()
        sampler.join()
        server.terminate()
        server.wait(timeout=30)
    cells = " | ".join(f"{r / BUDGET:.2f}" for r in after)
    print(f"| {cells} | {peak[0] / BUDGET:.2f} | {settled / BUDGET:.2f} |")


def main():
    global SERVER
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=SERVER, help="the server binary to measure")
    SERVER = ap.parse_args().server
    print(f"Budget {BUDGET >> 20} MiB. RSS is the server's resident set after the fill; real overhead per entry is "
          "(RSS - RSS at start - entries x payload) / entries.\n")
    print("| tensors | written | cached | evicted | used / budget | RSS | RSS / budget | real overhead / entry | charged overhead / entry |")
    print("|---|---|---|---|---|---|---|---|---|")
    measure(3 << 10, "3 KiB")
    measure(1 << 20, "1 MiB")
    print("\nMixed: one server filled with 1 MiB, then 16 MiB, then 64 MiB tensors (1.25x the budget each). "
          "RSS / budget after each fill, the peak sampled every 20 ms, and 2 s after the last fill.\n")
    print("| after 1 MiB | after 16 MiB | after 64 MiB | peak | settled |")
    print("|---|---|---|---|---|")
    mixed()


if __name__ == "__main__":
    main()
