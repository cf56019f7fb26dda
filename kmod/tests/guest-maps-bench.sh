#!/bin/sh
# Build times of the guest maps, module vs portable source, in this guest (run inside the VM):
#   vm-images/run-vm.sh --name maps --mem 1G -- env TORPOR_KO=$PWD/kmod/torpor.ko \
#     TORPOR_GUEST=$T/debug/torpor-guest TORPOR_TESTCHILD=$T/debug/torpor-testchild kmod/tests/guest-maps-bench.sh
# (T = the cargo target dir). Prints one JSON line per map build (jq condenses them when present):
# idle guest, then with a 512 MiB process touching its memory (active). Figures for
# bench/results/guest-maps-*.md.
set -u
KO="${TORPOR_KO:?}" TG="${TORPOR_GUEST:?}" TC="${TORPOR_TESTCHILD:?}"
N="${TORPOR_MAPS_N:-10}" NP="${TORPOR_MAPS_NP:-3}"
echo "# kernel $(uname -r), $(grep MemTotal /proc/meminfo | tr -s ' '), $(nproc) CPUs"
insmod "$KO" || exit 1
fmt() {
  if command -v jq >/dev/null; then
    jq -M -c "{l:\"$1\", src:.source, free_ms:.free_build_ms, prio_ms:.priority_build_ms, ratio:.free_over_memfree, user_ms:((.stats.priority_user_ns // 0)/1e6), active:.stats.active_processes, seen:.stats.processes_seen, cats:[.categories[][1]]}"
  else
    tr -d ' \n'; echo
  fi
}
run() { # LABEL N SOURCE
  i=0
  while [ "$i" -lt "$2" ]; do
    "$TG" dump --source "$3" --window 16s --json 2>/dev/null | fmt "$1"
    i=$((i + 1))
  done
}
run idle-kmod "$N" kmod
run idle-portable "$NP" portable
fifo=/tmp/maps-bench.$$
mkfifo "$fifo"
"$TC" < "$fifo" > "$fifo.out" &
tc=$!
exec 7>"$fifo"
echo "ALLOC 512 - 0" >&7
while ! grep -q READY "$fifo.out"; do sleep 0.5; done
echo "TOUCH 0 512 300000" >&7
sleep 2
run loaded512-kmod "$N" kmod
run loaded512-portable "$NP" portable
kill "$tc" 2>/dev/null
exec 7>&-
wait
rmmod torpor
