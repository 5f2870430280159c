#!/bin/bash
# foyer 0.22 as a disk tier, against the device's own sequential read, in
# one run (needs root for drop_caches). Run from this directory:
#   sudo ./run.sh
set -u
cd "$(dirname "$0")"
cargo build --release
BIN=./target/release/foyer_eval
echo "### raw device: 2 GiB file, dd bs=4M"
[ -f dd2g.bin ] || dd if=/dev/urandom of=dd2g.bin bs=4M count=512 status=none
sync
if echo 3 > /proc/sys/vm/drop_caches; then echo "drop_caches ok"; else echo "drop_caches FAILED"; fi
echo "cold:"; dd if=dd2g.bin of=/dev/null bs=4M 2>&1 | tail -1
echo "warm:"; dd if=dd2g.bin of=/dev/null bs=4M 2>&1 | tail -1
rm -f dd2g.bin
for cfg in "evict" "insert" "insert 8"; do
  echo; echo "### foyer_eval $cfg"
  /usr/bin/time -f "[time] wall %es  maxRSS %M KiB" $BIN $cfg
done
rm -rf data
for cfg in "evict" "insert 8"; do
  echo; echo "### FOYER_TOMBSTONE=1 foyer_eval $cfg"
  FOYER_TOMBSTONE=1 /usr/bin/time -f "[time] wall %es  maxRSS %M KiB" $BIN $cfg
done
rm -rf data
