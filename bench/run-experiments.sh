#!/bin/bash
# The paper-experiment scenario harness (seed 004): builds torpor-bench, sets up its own
# temporary swapfile and runs the experiments; results go to bench/results/<experiment>/.
#   bench/run-experiments.sh [--quick] [EXPERIMENT...]
# EXPERIMENT: size-sweep, contribution, contiguity, repeated, all (default: all).
# Env: TORPOR_SWAPFILE (default /var/tmp/torpor-exp.swap), TORPOR_SWAP_MIB (default 3072 with
#      --quick, else 6144: the 2 GiB size-sweep child plus slack), TORPOR_BENCH_SIZES=64,256,...
#      (size-sweep sizes), TORPOR_BENCH_FREEZER=auto|v2|v1|signal, TORPOR_BENCH_OUT (results dir).
# Needs root. Fails (does not skip) when it cannot measure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
[ "$(id -u)" = 0 ] || { echo "run-experiments.sh: needs root (swapon, cgroups, freezer, process_madvise, memcg reclaim)" >&2; exit 2; }
command -v swapon >/dev/null || { echo "run-experiments.sh: no swapon(8): cannot set up swap" >&2; exit 2; }

quick=()
exps=()
for a in "$@"; do
    case "$a" in
        --quick) quick=(--quick) ;;
        size-sweep|contribution|contiguity|repeated|all) exps+=("$a") ;;
        *) echo "run-experiments.sh: unknown argument $a (usage: [--quick] [size-sweep|contribution|contiguity|repeated|all]...)" >&2; exit 2 ;;
    esac
done
[ "${#exps[@]}" -gt 0 ] || exps=(all)
out=()
[ -z "${TORPOR_BENCH_OUT:-}" ] || out=(--out "$TORPOR_BENCH_OUT")

CARGO=${CARGO:-cargo}
# Build first, at low priority, so no measurement includes compilation.
nice "$CARGO" build -p bench --release --bins
BIN=$ROOT/target/release/torpor-bench

echo "run-experiments.sh: load average now: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)" >&2
if [ "$(awk 'NR>1' /proc/swaps | wc -l)" -gt 0 ]; then
    echo "run-experiments.sh: note: swap already on ($(awk 'NR>1{print $1}' /proc/swaps | tr '\n' ' ')); ours gets a higher priority" >&2
fi
export TORPOR_SWAPFILE=${TORPOR_SWAPFILE:-/var/tmp/torpor-exp.swap}
if [ "${#quick[@]}" -gt 0 ]; then export TORPOR_SWAP_MIB=${TORPOR_SWAP_MIB:-3072}; else export TORPOR_SWAP_MIB=${TORPOR_SWAP_MIB:-6144}; fi
export TORPOR_SWAP_PRIO=${TORPOR_SWAP_PRIO:-32200}
start=$(date +%s)
"$ROOT/procswap/tests/with-swap.sh" "$BIN" "${quick[@]}" "${out[@]}" "${exps[@]}"
echo "run-experiments.sh: done in $(( $(date +%s) - start )) s" >&2
