#!/usr/bin/env bash
# `make vm-bench`, host side: build torpor-vmbench (niced, honours CARGO_TARGET_DIR), boot our
# guest with a throttled virtio swap disk (VM_DISK=fast|ssd|hdd) and run scripts/vm-bench-guest.sh
# in it; results (markdown + JSON) go to bench/results/vm/vmbench-<disk>-<date>.{md,json}.
# Env: VM_DISK (ssd), TORPOR_VMBENCH_MIB (256; 128 for hdd), TORPOR_VMBENCH_ROUNDS (5; 3 for hdd),
#      TORPOR_VM_NAME (vmbench-<disk>), TORPOR_KO (kmod/torpor.ko: the module as built; when it does
#      not load in the guest, the stock rows still run and the file says why), CARGO, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DISK=${VM_DISK:-ssd}
case "$DISK" in fast|ssd|hdd) ;; *) echo "vm-bench: VM_DISK must be fast, ssd or hdd" >&2; exit 2 ;; esac
# The HDD model (150 IOPS) makes demand paging of 256 MiB take about a minute per resume under
# TCG: smaller child and fewer rounds there, said in the result file.
if [ "$DISK" = hdd ]; then dmib=128 drounds=3; else dmib=256 drounds=5; fi
MIB=${TORPOR_VMBENCH_MIB:-$dmib}
ROUNDS=${TORPOR_VMBENCH_ROUNDS:-$drounds}
CARGO=${CARGO:-cargo}
TDIR=${CARGO_TARGET_DIR:-$ROOT/target}
nice "$CARGO" build --release -p bench --bins
KO=${TORPOR_KO:-$ROOT/kmod/torpor.ko}
OUT=$ROOT/bench/results/vm
mkdir -p "$OUT"
day=$(date +%F)
load=$(cut -d' ' -f1-3 /proc/loadavg)
log=$(mktemp /tmp/vm-bench-host.XXXXXX)
trap 'rm -f "$log"' EXIT
echo "vm-bench: disk $DISK, $MIB MiB, $ROUNDS rounds, host load $load" >&2
rc=0
vm-images/run-vm.sh --name "${TORPOR_VM_NAME:-vmbench-$DISK}" --timeout 3000 --swap-disk 2G --disk "$DISK" --results "$OUT" -- \
    env TORPOR_KO="$KO" TORPOR_VMBENCH_OUT="/tmp/job/vmbench-$DISK-$day.md" TORPOR_VMBENCH="$TDIR/release/torpor-vmbench" \
    TORPOR_VMBENCH_MIB="$MIB" TORPOR_VMBENCH_ROUNDS="$ROUNDS" TORPOR_VMBENCH_HOST_LOAD="$load (host, at VM start)" \
    scripts/vm-bench-guest.sh 2>&1 | tee "$log" || rc=$?
jobdir=$(sed -n 's/.*job dir: //p' "$log" | tail -1)
if [ -n "$jobdir" ] && [ -f "$jobdir/vmbench-$DISK-$day.json" ]; then
    cp "$jobdir/vmbench-$DISK-$day.json" "$OUT/"
    echo "vm-bench: result $OUT/vmbench-$DISK-$day.json" >&2
fi
exit "$rc"
