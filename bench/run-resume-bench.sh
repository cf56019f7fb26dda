#!/bin/bash
# resume_touch_all: stock thaw + demand paging vs procswap prefetch + thaw (64/256/1024 MiB),
# with its own temporary swapfile; writes bench/results/resume_touch_all-<date>-<host>[-quick].md.
#   bench/run-resume-bench.sh [criterion args...]
# Env: TORPOR_BENCH_QUICK=1 (64+256 MiB, 3 pairs, no criterion statistics: CI smoke),
#      TORPOR_BENCH_SIZES=64,256,1024, TORPOR_BENCH_FREEZER=auto|v2|v1|signal,
#      TORPOR_SWAPFILE (default /var/tmp/torpor-bench.swap), TORPOR_SWAP_MIB (default 3072),
#      TORPOR_BENCH_RESULTS (default bench/results/resume_touch_all-<date>-<host>[-quick].md).
# Needs root. Fails (does not skip) when it cannot measure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
[ "$(id -u)" = 0 ] || { echo "run-resume-bench.sh: needs root (swapon, cgroups, freezer, process_madvise, memcg reclaim)" >&2; exit 2; }

CARGO=${CARGO:-cargo}
# Build first, at low priority, so the measured run does not include compilation.
nice "$CARGO" bench -p bench --bench resume_touch_all --no-run

suffix=""
case "${TORPOR_BENCH_QUICK:-}" in ""|0) ;; *) suffix="-quick" ;; esac
out=${TORPOR_BENCH_RESULTS:-$ROOT/bench/results/resume_touch_all-$(date +%F)-$(hostname -s)$suffix.md}
mkdir -p "$(dirname "$out")"

echo "run-resume-bench.sh: load average now: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs); results -> $out" >&2
if [ "$(awk 'NR>1' /proc/swaps | wc -l)" -gt 0 ]; then
    echo "run-resume-bench.sh: note: swap already on ($(awk 'NR>1{print $1}' /proc/swaps | tr '\n' ' ')); ours gets a higher priority" >&2
fi

export TORPOR_BENCH_RESULTS=$out
export TORPOR_SWAPFILE=${TORPOR_SWAPFILE:-/var/tmp/torpor-bench.swap}
export TORPOR_SWAP_PRIO=${TORPOR_SWAP_PRIO:-32100}
"$ROOT/procswap/tests/with-swap.sh" "$CARGO" bench -p bench --bench resume_touch_all -- "$@"
echo "run-resume-bench.sh: wrote $out" >&2
