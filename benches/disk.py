#!/usr/bin/env python3
"""The disk tier, measured in one run on this machine:

1. Spill: a closed-loop stream of 16 MiB puts into a full RAM tier, the
   same server binary with and without `--disk-dir`, interleaved (A B A B).
2. One-pass reads of 1 MiB tensors (`redstone-bench --op scan`, one read
   per key, so nothing is promoted back to RAM):
   - RAM tier: a server without a disk tier, every key in RAM;
   - disk tier, warm page cache: right after the fill;
   - disk tier, cold page cache: the server restarted after
     `sync; echo 3 > /proc/sys/vm/drop_caches` (needs root);
   (the first server writes its RAM to disk at shutdown, so the second
   has every key on disk) and the device's sequential read of the same segment files with
   `dd bs=4M`, caches dropped the same way.
3. Recovery: how long the restart took to rebuild the index of the full
   tier, cold page cache (the server's "disk tier recovered" log line).

    cargo build --release --bins
    sudo python3 benches/disk.py [--dir DIR] [--keys 4096]

DIR (default target/disk-bench) must be on the file system to measure.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`server` on free ports; its stderr is kept for the log lines."""

    def __init__(self, ram, disk_dir=None, disk_size=None, extra=()):
        self.grpc, self.fast, self.http = free_port(), free_port(), free_port()
        args = [os.path.join(BIN, "server"), f"127.0.0.1:{self.grpc}", ram,
                "--fast", f"127.0.0.1:{self.fast}", "--metrics", f"127.0.0.1:{self.http}"]
        if disk_dir:
            args += ["--disk-dir", disk_dir, "--disk-size", disk_size, *extra]
        self.log_path = os.path.join(ROOT, "target", f"disk-bench-{self.fast}.log")
        self.log = open(self.log_path, "w")
        started = time.time()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 600
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.fast), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    sys.exit(f"the server did not start; see {self.log_path}")
                time.sleep(0.02)
        self.start_s = time.time() - started

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics").read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("redstone_disk_") or line.startswith("redstone_cache_"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def logged(self, pattern):
        with open(self.log_path) as f:
            for line in f:
                m = re.search(pattern, line)
                if m:
                    return m
        return None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()
        os.unlink(self.log_path)


def bench(server, *args):
    out = subprocess.run([os.path.join(BIN, "redstone-bench"), "--addr",
                          f"127.0.0.1:{server.fast}", "--json", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        sys.exit(f"cannot drop the page cache ({e}): run as root")


def dd_read(files):
    """Sequential read of `files` with dd bs=4M, cold cache; GB/s."""
    drop_caches()
    total, started = 0, time.time()
    for path in files:
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M"], check=True,
                       capture_output=True)
        total += os.path.getsize(path)
    return total / (time.time() - started) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=os.path.join(ROOT, "target", "disk-bench"))
    parser.add_argument("--keys", type=int, default=4096, help="1 MiB tensors read back")
    parser.add_argument("--spill-seconds", type=float, default=10)
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    disk_size = f"{args.keys + 1024}MiB"

    print("1. spill: 16 MiB puts, concurrency 1, into a full 512 MiB RAM tier")
    spill = {"ram only": [], "ram + disk": []}
    for _ in range(2):
        for label in spill:
            tier = os.path.join(args.dir, "spill")
            shutil.rmtree(tier, ignore_errors=True)
            disk = (tier, "8GiB") if label == "ram + disk" else (None, None)
            s = Server("512MiB", *disk)
            # Fill RAM first, so the measured puts all evict.
            bench(s, "--op", "put", "--size", "16MiB", "--concurrency", "1", "--duration", "2")
            r = bench(s, "--op", "put", "--size", "16MiB", "--concurrency", "1",
                      "--duration", str(args.spill_seconds))
            m = s.metrics()
            s.stop()
            spill[label].append(r["mb_per_sec"] / 1e3)
            extra = ""
            if label == "ram + disk":
                extra = (f"  (disk writes {m['redstone_disk_writes_total']:.0f}, "
                         f"dropped {m['redstone_disk_dropped_writes_total']:.0f})")
            print(f"   {label:10} {r['mb_per_sec'] / 1e3:.2f} GB/s{extra}")
    shutil.rmtree(os.path.join(args.dir, "spill"), ignore_errors=True)
    a, b = (sum(v) / len(v) for v in spill.values())
    print(f"   ratio (disk / ram only): {b / a:.2f}")

    # Reads: three rounds, each over keys of its own (a second read of a
    # key within a minute would promote it to RAM), alternating the sides
    # compared, so that the machine's drift hits both alike.
    rounds = 3
    per_round = args.keys // rounds
    def keys(r):
        return ["--keys", str(per_round), "--size", "1MiB", "--key-prefix", f"r{r}"]
    print(f"2. one-pass reads of 1 MiB tensors, {rounds} rounds of {per_round} keys, "
          "concurrency 4, plain get")
    ram = Server(f"{args.keys + 512}MiB")
    tier = os.path.join(args.dir, "tier")
    # RAM is written to disk at shutdown, so that the restart has every key.
    disk = Server("256MiB", tier, disk_size, ["--persist-on-shutdown"])
    for r in range(rounds):
        bench(ram, "--op", "fill", "--concurrency", "2", *keys(r))
        fill = bench(disk, "--op", "fill", "--concurrency", "2", *keys(r))
        while disk.metrics().get("redstone_disk_queued_bytes", 0) > 0:
            time.sleep(0.1)
    m = disk.metrics()
    print(f"   (disk-tier fill {fill['mb_per_sec'] / 1e3:.2f} GB/s; disk writes "
          f"{m['redstone_disk_writes_total']:.0f}, dropped "
          f"{m['redstone_disk_dropped_writes_total']:.0f})")
    warm_ratios = []
    for r in range(rounds):
        a = bench(ram, "--op", "scan", "--concurrency", "4", *keys(r))
        b = bench(disk, "--op", "scan", "--concurrency", "4", *keys(r))
        warm_ratios.append(b["mb_per_sec"] / a["mb_per_sec"])
        print(f"   round {r}: RAM tier {a['mb_per_sec'] / 1e3:.2f} GB/s, disk tier (warm cache) "
              f"{b['mb_per_sec'] / 1e3:.2f} GB/s = {warm_ratios[-1]:.2f}x  "
              f"(found {b['found']}/{per_round})")
    m = disk.metrics()
    print(f"   disk hits {m['redstone_disk_hits_total']:.0f}, promotions "
          f"{m['redstone_disk_promotions_total']:.0f}")
    ram.stop()
    disk.stop()

    drop_caches()
    disk = Server("256MiB", tier, disk_size)
    recovered = disk.logged(r"disk tier recovered.*tensors=(\d+).*ms=(\d+)")
    if recovered:
        print(f"3. recovery, cold cache: {recovered.group(1)} tensors in "
              f"{recovered.group(2)} ms (server up in {disk.start_s:.2f} s)")
    else:
        print("3. no recovery line in the log:\n" + open(disk.log_path).read()[:2000])
    segments = sorted(os.path.join(tier, f) for f in os.listdir(tier) if f.endswith(".seg"))
    cold_ratios = []
    print("4. cold page cache: dd bs=4M of all segment files, then one round of reads")
    for r in range(rounds):
        dd = dd_read(segments)
        drop_caches()
        b = bench(disk, "--op", "scan", "--concurrency", "4", *keys(r))
        cold_ratios.append(b["mb_per_sec"] / 1e3 / dd)
        print(f"   round {r}: dd {dd:.2f} GB/s, disk tier (cold cache) "
              f"{b['mb_per_sec'] / 1e3:.2f} GB/s = {cold_ratios[-1]:.2f}x  "
              f"(found {b['found']}/{per_round})")
    disk.stop()
    med = lambda v: sorted(v)[len(v) // 2]
    print(f"median: warm {med(warm_ratios):.2f}x the RAM tier, cold {med(cold_ratios):.2f}x dd")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
