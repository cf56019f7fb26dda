#!/usr/bin/env bash
# Experiment 3's "free memory only" row, in our guest (it fills the machine's memory with dirty
# hogs, which this shared 24 GiB host cannot do; in the guest we own all 2 GiB and cgroup v2):
# builds torpor-bench (niced, honours CARGO_TARGET_DIR), boots the guest with a throttled swap
# disk and copies bench/results/free-memory/free-memory-<date>-guest[-quick].{md,json,png} back.
#   scripts/vm-free-memory.sh [--quick]
# Env: VM_DISK (ssd), TORPOR_VM_NAME (free-memory), CARGO, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
args=""
[ "${1:-}" = --quick ] && args=--quick
DISK=${VM_DISK:-ssd}
CARGO=${CARGO:-cargo}
TDIR=${CARGO_TARGET_DIR:-$ROOT/target}
nice "$CARGO" build --release -p bench --bins
load=$(cut -d' ' -f1-3 /proc/loadavg)
log=$(mktemp /tmp/vm-free-memory.XXXXXX)
trap 'rm -f "$log"' EXIT
echo "vm-free-memory: disk $DISK, host load $load" >&2
rc=0
vm-images/run-vm.sh --name "${TORPOR_VM_NAME:-free-memory}" --timeout 2400 --swap-disk 3G --disk "$DISK" -- \
    env TORPOR_BENCH="$TDIR/release/torpor-bench" TORPOR_BENCH_ARGS="$args" TORPOR_BENCH_HOST_LOAD="$load (at VM start; disk model $DISK)" \
    scripts/vm-free-memory-guest.sh 2>&1 | tee "$log" || rc=$?
jobdir=$(sed -n 's/.*job dir: //p' "$log" | tail -1)
if [ -n "$jobdir" ] && [ -d "$jobdir/results/free-memory" ]; then
    mkdir -p bench/results/free-memory
    cp "$jobdir"/results/free-memory/* bench/results/free-memory/
    echo "vm-free-memory: results in bench/results/free-memory/: $(ls "$jobdir/results/free-memory" | tr '\n' ' ')" >&2
fi
exit "$rc"
