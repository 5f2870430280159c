#!/usr/bin/env bash
# Instructions per 3 KiB GET in a server, counted by callgrind (repeatable,
# whatever else the machine is doing): each SERVER binary given (default
# target/release/server) runs under valgrind and serves `redstone-bench
# --concurrency 1` for 5 s after a warm-up; counters are zeroed after the
# warm-up, so the count covers the measured run plus the bench's own 1 s
# warm-up, hence ops * 6/5.
#
#     cargo build --release --bins
#     benches/callgrind_get.sh [SERVER...]     # e.g. an older build beside this one
#
# Needs valgrind (callgrind_control, callgrind_annotate). Uses port 50052.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=target/release/redstone-bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
[[ $# -gt 0 ]] || set -- target/release/server
for server in "$@"; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$server" 127.0.0.1:0 1GiB \
        --fast 127.0.0.1:50052 --metrics off >/dev/null 2>&1 &
    pid=$!
    sleep 4
    "$bench" --target fast --op get --size 3KiB --concurrency 1 --duration 2 --keys 200 >/dev/null 2>&1
    callgrind_control -z "$pid" >/dev/null 2>&1
    ops=$("$bench" --target fast --op get --size 3KiB --concurrency 1 --duration 5 --keys 200 \
        --json 2>/dev/null | tail -1 | python3 -c "import json, sys; print(json.load(sys.stdin)['ops'])")
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    total=$(grep -m1 "^summary:" "$out/cg.$pid.1" | awk "{print \$2}")
    echo "$server: $((total * 5 / (ops * 6))) instructions per GET ($ops GETs measured)"
    rm -f "$out"/cg.*
done
