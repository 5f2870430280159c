#!/usr/bin/env python3
"""The floor under a large put through the local door: how fast this host
copies 64 MiB into a memfd, the way the client fills one (`pwrite`), into
fresh pages (what every put needs: the tensor is new memory the server
keeps) and into pages already allocated (no put gets these), beside a copy
into fresh anonymous memory. No Redstone involved.

    python3 benches/fill_floor.py

Prints the median of nine runs of each, and the host's shmem huge-page
setting, which moves the fresh-memfd figure.
"""
import os
import statistics
import time

N = 64 << 20
SRC = os.urandom(1 << 20) * 64


def memfd(allocated):
    """Seconds to pwrite SRC into a new memfd, into pages already allocated
    (written once before) or fresh ones."""
    fd = os.memfd_create("floor")
    os.ftruncate(fd, N)
    if allocated:
        os.pwrite(fd, SRC, 0)
    t = time.perf_counter()
    os.pwrite(fd, SRC, 0)
    dt = time.perf_counter() - t
    os.close(fd)
    return dt


def anonymous_fresh():
    t = time.perf_counter()
    copy = bytearray(SRC)
    dt = time.perf_counter() - t
    del copy
    return dt


def main():
    with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
        print("shmem_enabled:", f.read().strip())
    for name, run in [("memfd, fresh pages (pwrite)", lambda: memfd(False)),
                      ("memfd, allocated pages (pwrite)", lambda: memfd(True)),
                      ("anonymous, fresh pages (copy)", anonymous_fresh)]:
        times = [run() for _ in range(9)]
        print(f"{name:34s} {N / statistics.median(times) / 1e9:5.2f} GB/s")


if __name__ == "__main__":
    main()
