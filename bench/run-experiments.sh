#!/bin/bash
# The paper-experiment scenario harness (Agile application placement in hosting platforms): builds torpor-bench, sets up its own
# temporary swapfile and runs the experiments; results go to bench/results/<experiment>/.
#   bench/run-experiments.sh [--quick] [EXPERIMENT...]
# EXPERIMENT: size-sweep, contribution, contiguity, repeated, cpu-load, tomcat, all (default: all);
#   disk-models (alone: table + plot from the latest bench/results/vm/vmbench-*.json, no root needed).
# cpu-load and tomcat run Tomcat 10 from Debian with a small webapp compiled by javac: missing
# packages (tomcat10, openjdk-17-jdk-headless) are installed with apt-get, services kept from starting.
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
        size-sweep|contribution|contiguity|repeated|cpu-load|tomcat|all|disk-models) exps+=("$a") ;;
        *) echo "run-experiments.sh: unknown argument $a (usage: [--quick] [size-sweep|contribution|contiguity|repeated|cpu-load|tomcat|all|disk-models]...)" >&2; exit 2 ;;
    esac
done
[ "${#exps[@]}" -gt 0 ] || exps=(all)
out=()
[ -z "${TORPOR_BENCH_OUT:-}" ] || out=(--out "$TORPOR_BENCH_OUT")

CARGO=${CARGO:-cargo}
# Build first, at low priority, so no measurement includes compilation.
nice "$CARGO" build -p bench --release --bins
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/torpor-bench
if [ "${exps[*]}" = disk-models ]; then
    exec "$BIN" "${out[@]}" disk-models
fi

# Tomcat 10 and a JDK (javac) for cpu-load / tomcat.
if [[ " ${exps[*]} " =~ \ (all|cpu-load|tomcat)\  ]]; then
    missing=()
    for p in tomcat10 openjdk-17-jdk-headless; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "run-experiments.sh: installing with apt-get: ${missing[*]} (services kept from starting)" >&2
        policy=/usr/sbin/policy-rc.d
        [ -e "$policy" ] && { echo "run-experiments.sh: $policy exists; not touching it" >&2; policy=""; }
        if [ -n "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; fi
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >&2 \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >&2; } || rc=$?
        [ -n "$policy" ] && rm -f "$policy"
        [ "$rc" = 0 ] || { echo "run-experiments.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
    fi
fi

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
