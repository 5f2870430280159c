#!/usr/bin/env python3
"""Memory efficiency: fill a 1 GiB budget with 3 KiB tensors, then (on a
fresh server) with 1 MiB tensors, through the fast path; report the
server's RSS against the budget and the real per-entry overhead.

    cargo build --release --bins
    python3 benches/memory.py

Each fill writes 1.25x what the budget holds, so the cache is full and has
been evicting when RSS is read.
"""
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
BUDGET = 1 << 30
CHARGED_OVERHEAD = 320  # src/engine/mod.rs ENTRY_OVERHEAD


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


def measure(size, label):
    grpc, tcp = free_port(), free_port()
    server = subprocess.Popen([os.path.join(BIN, "server"), f"127.0.0.1:{grpc}", str(BUDGET),
                               "--fast", f"127.0.0.1:{tcp}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("the server did not start")
                time.sleep(0.05)
        baseline = rss(server.pid)
        key_len = len("mem:0000000")
        footprint = size if size < 128 * 1024 else -(-(size + 16) // 4096) * 4096
        charge = footprint + key_len + 8 + CHARGED_OVERHEAD
        keys = int(BUDGET / charge * 1.25)
        out = subprocess.run([os.path.join(BIN, "redstone-bench"), "--addr", f"127.0.0.1:{tcp}",
                              "--op", "fill", "--keys", str(keys), "--size", str(size),
                              "--concurrency", "8", "--key-prefix", "mem", "--json"],
                             capture_output=True, text=True, check=True)
        stats = json.loads(out.stdout.strip().splitlines()[-1])
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


def main():
    print(f"Budget {BUDGET >> 20} MiB. RSS is the server's resident set after the fill; real overhead per entry is "
          "(RSS - RSS at start - entries x payload) / entries.\n")
    print("| tensors | written | cached | evicted | used / budget | RSS | RSS / budget | real overhead / entry | charged overhead / entry |")
    print("|---|---|---|---|---|---|---|---|---|")
    measure(3 << 10, "3 KiB")
    measure(1 << 20, "1 MiB")


if __name__ == "__main__":
    main()
