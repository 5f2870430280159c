#!/usr/bin/env python3
"""The local door against the TCP fast path: one server, both doors, the
same client (`redstone-bench`, `--target uds` and `--target fast`), cells
interleaved (uds, fast, uds, fast, ...) so drift on a noisy machine hits
both alike. Then memory: eight processes (`examples/local_hold.rs`) each
holding one tensor, over each door.

    cargo build --release --bins --examples
    python3 benches/local.py [--rounds 3] [--duration 3]

Prints the median of each cell, the ratio uds / fast, and the memory table.
The figures depend on the host's shmem huge pages
(/sys/kernel/mm/transparent_hugepage/shmem_enabled): the script prints
the setting; the README quotes both.
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
BENCH = os.path.join(RELEASE, "redstone-bench")
SERVER = os.path.join(RELEASE, "server")
HOLD = os.path.join(RELEASE, "examples", "local_hold")

# (label, op, size, concurrency, fast_extra, uds_extra): the TCP side of a
# large get is `get_into` (its fastest way to a usable tensor), of a small
# one `get`. The "kept" cells give the local client `--keep-mapped`: a get
# of a tensor it mapped before reuses that mapping.
KEEP = ["--keep-mapped", "1GiB"]
CELLS = [
    ("64 MiB get", "get", 64 << 20, 1, ["--into"], []),
    ("64 MiB get, kept mappings", "get", 64 << 20, 1, ["--into"], KEEP),
    ("1 MiB get", "get", 1 << 20, 1, ["--into"], []),
    ("1 MiB get, kept mappings", "get", 1 << 20, 1, ["--into"], KEEP),
    ("64 MiB put", "put", 64 << 20, 1, [], []),
    ("3 KiB get, 1 conn", "get", 3 << 10, 1, [], []),
    ("3 KiB get, 16 conns", "get", 3 << 10, 16, [], []),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(sock, budget="6GiB"):
    fast, grpc = free_port(), free_port()
    proc = subprocess.Popen(
        [SERVER, f"127.0.0.1:{grpc}", budget, "--fast", f"127.0.0.1:{fast}", "--uds", sock,
         "--metrics", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        if os.path.exists(sock):
            try:
                socket.create_connection(("127.0.0.1", fast), timeout=0.2).close()
                return proc, f"127.0.0.1:{fast}"
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("the server did not start")


def bench(target, addr, op, size, conc, duration, extra):
    keys = max(1, min(256, (512 << 20) // size))
    cmd = [BENCH, "--target", target, "--addr", addr, "--op", op, "--size", str(size),
           "--concurrency", str(conc), "--duration", str(duration), "--json", *extra]
    if op == "get":
        cmd += ["--keys", str(keys)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def kib(path, field):
    """A field of /proc/PID/smaps_rollup or /proc/meminfo, in KiB."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory(addr, size, readers):
    """Puts one tensor over `addr`, then has `readers` processes hold it:
    their resident memory, and the host's shared memory added since before
    the put (the stored tensor, over the local door), in MiB."""
    key = f"hold-{os.getpid()}-{time.time_ns()}"
    shmem_before = kib("/proc/meminfo", "Shmem")
    subprocess.run([HOLD, addr, key, "--put", str(size)], check=True, capture_output=True)
    holders = []
    for _ in range(readers):
        p = subprocess.Popen([HOLD, addr, key], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        line = p.stdout.readline()
        if not line.startswith("held"):
            sys.exit(f"a holder failed: {line}")
        holders.append(p)
    rss = [kib(f"/proc/{p.pid}/smaps_rollup", "Rss") for p in holders]
    pss = [kib(f"/proc/{p.pid}/smaps_rollup", "Pss") for p in holders]
    shmem_after = kib("/proc/meminfo", "Shmem")
    for p in holders:
        p.stdin.close()
        p.wait(10)
    return {
        "rss_each": statistics.median(rss) / 1024,
        "pss_total": sum(pss) / 1024,
        "shmem_delta": (shmem_after - shmem_before) / 1024,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--hold-size", type=int, default=256 << 20)
    args = ap.parse_args()
    for binary in (BENCH, SERVER, HOLD):
        if not os.path.exists(binary):
            sys.exit(f"{binary} is missing: cargo build --release --bins --examples")
    with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
        shmem = re.search(r"\[(\w+)\]", f.read()).group(1)
    print(f"shmem_enabled = {shmem}")
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "redstone.sock")
        results = {(c[0], t): [] for c in CELLS for t in ("uds", "fast")}
        for r in range(args.rounds):
            for label, op, size, conc, fast_extra, uds_extra in CELLS:
                for target in ("uds", "fast"):
                    # A fresh server per cell: puts fill it.
                    proc, tcp = start(sock)
                    try:
                        addr = sock if target == "uds" else tcp
                        extra = fast_extra if target == "fast" else uds_extra
                        res = bench(target, addr, op, size, conc, args.duration, extra)
                    finally:
                        proc.terminate()
                        proc.wait(10)
                    results[(label, target)].append(res)
                    print(f"  round {r + 1} {label:>26} {target:>4}: "
                          f"{res['mb_per_sec']:9.1f} MB/s {res['ops_per_sec']:9.0f} ops/s",
                          file=sys.stderr)
        print(f"\n| cell | local door | TCP fast path | local ÷ TCP |")
        print("|---|---|---|---|")
        for label, op, size, conc, fast_extra, _ in CELLS:
            key = "mb_per_sec" if size >= (1 << 20) else "ops_per_sec"
            unit = "MB/s" if key == "mb_per_sec" else "ops/s"
            u = statistics.median(r[key] for r in results[(label, "uds")])
            f = statistics.median(r[key] for r in results[(label, "fast")])
            tcp_how = " (`get_into`)" if fast_extra else ""
            print(f"| {label} | {u:,.0f} {unit} | {f:,.0f} {unit}{tcp_how} | {u / f:.2f} |")

        proc, tcp = start(sock)
        try:
            print(f"\n{args.readers} processes each holding one {args.hold_size >> 20} MiB tensor:\n")
            print("| door | resident per process (MiB) | PSS, all processes (MiB) | host shared memory added (MiB) |")
            print("|---|---|---|---|")
            for name, addr in (("local", f"unix:{sock}"), ("TCP", tcp)):
                m = memory(addr, args.hold_size, args.readers)
                print(f"| {name} | {m['rss_each']:.0f} | {m['pss_total']:.0f} | {m['shmem_delta']:.0f} |")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
