#!/usr/bin/env bash
# Instructions per 3 KiB GET, counted by callgrind (repeatable, whatever
# else the machine is doing), one request at a time
# (`redstone-bench --concurrency 1`).
#
#     cargo build --release --bins
#     benches/callgrind_get.sh [SERVER...]            # in the server
#     benches/callgrind_get.sh --client [BENCH...]    # in the client
#
# Server mode: each SERVER binary given (default target/release/server)
# runs under valgrind and serves the bench for 5 s after a warm-up;
# counters are zeroed after the warm-up, so the count covers the measured
# run plus the bench's own 1 s warm-up, hence ops * 6/5.
#
# Client mode: each BENCH binary given (default
# target/release/redstone-bench) runs under valgrind against a Redstone
# server (target/release/server) and against redis-server, the same
# harness on both: the fast-path client's instructions beside the
# harness's Redis client's. Two runs, of 2 s and 6 s: the difference of
# their counts over the difference of their GETs leaves out what every
# run spends once (start, the keys' puts).
#
# Needs valgrind (callgrind_control, callgrind_annotate); client mode also
# redis-server. Uses ports 50052 and 6390.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$out"' EXIT

ops_of() { python3 -c "import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['ops'])"; }
total_of() { grep -m1 "^summary:" "$1" | awk '{print $2}'; }

if [[ ${1:-} == --client ]]; then
    shift
    [[ $# -gt 0 ]] || set -- target/release/redstone-bench
    target/release/server 127.0.0.1:0 1GiB --fast 127.0.0.1:50052 --metrics off >/dev/null 2>&1 &
    pids+=($!)
    redis-server --port 6390 --save "" --appendonly no >/dev/null 2>&1 &
    pids+=($!)
    sleep 1
    for bench in "$@"; do
        for target in "fast 127.0.0.1:50052" "redis 127.0.0.1:6390"; do
            set -- $target
            "$bench" --target "$1" --addr "$2" --op get --size 3KiB --concurrency 1 \
                --duration 1 --keys 200 >/dev/null 2>&1
            for d in 2 6; do
                valgrind --tool=callgrind --callgrind-out-file="$out/cg.$d" "$bench" --target "$1" \
                    --addr "$2" --op get --size 3KiB --concurrency 1 --duration "$d" --keys 200 \
                    --json 2>/dev/null | ops_of >"$out/ops.$d"
            done
            ops=$(($(cat "$out/ops.6") - $(cat "$out/ops.2")))
            instr=$(($(total_of "$out/cg.6") - $(total_of "$out/cg.2")))
            echo "$bench --target $1: $((instr / ops)) instructions per GET ($ops GETs measured)"
            rm -f "$out"/cg* "$out"/ops*
        done
    done
    exit 0
fi

bench=target/release/redstone-bench
[[ $# -gt 0 ]] || set -- target/release/server
for server in "$@"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$server" 127.0.0.1:0 1GiB \
        --fast 127.0.0.1:50052 --metrics off >/dev/null 2>&1 &
    pid=$!
    sleep 4
    "$bench" --target fast --op get --size 3KiB --concurrency 1 --duration 2 --keys 200 >/dev/null 2>&1
    callgrind_control -z "$pid" >/dev/null 2>&1
    ops=$("$bench" --target fast --op get --size 3KiB --concurrency 1 --duration 5 --keys 200 \
        --json 2>/dev/null | ops_of)
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$server: $(($(total_of "$out/cg.$pid.1") * 5 / (ops * 6))) instructions per GET ($ops GETs measured)"
    rm -f "$out"/cg.*
done
