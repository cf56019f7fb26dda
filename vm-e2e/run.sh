#!/usr/bin/env bash
# make vm-e2e: VM resume end to end on this host (root, QEMU TCG, a temporary swapfile).
#   vm-e2e/run.sh [--trials N] [--driver torpord|direct] [--smoke-only] [--no-kmod]
# 1. builds torpor-e2e-app, torpor-vm-e2e, torpor-guest, torpord, torpor (release);
# 2. smoke: boots the guest, checks HTTP through hostfwd, the torpor-guest agent over
#    virtio-serial (HELLO, GET_LAYOUT, GET_FREE_BITMAP, GET_PRIORITY_MAP), QMP stop/cont;
# 3. bench (under procswap/tests/with-swap.sh): torpord runs the guest as a kind="vm" app;
#    N trials of Stop → memory-freed check → Start none/full/priority (interleaved) → time to
#    first HTTP response, swap-in bytes → /verify in the guest. Results: bench/results/vm-resume/.
# Exits non-zero on any failure. Env: CARGO, CARGO_TARGET_DIR (must be visible in the guest:
# inside the repository or not under /tmp, /run, /var/tmp), VM_E2E_SWAPFILE (default /var/tmp/torpor-vm-e2e.swap),
# VM_E2E_PORT (first of three host ports, default: three free ones from 18480),
# VM_E2E_OUT (results directory, default bench/results/vm-resume), VM_E2E_WS_MIB (MiB the
# app's GET / touches, default 16 of its 192).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
trials=3 driver=torpord smoke_only=0 kmod_flag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) trials="$2"; shift 2 ;;
    --driver) driver="$2"; shift 2 ;;
    --smoke-only) smoke_only=1; shift ;;
    --no-kmod) kmod_flag=--no-kmod; shift ;;
    *) echo "vm-e2e/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
CARGO=${CARGO:-cargo}
[ "$(id -u)" = 0 ] || { echo "vm-e2e: FAIL: must run as root (cgroups, swap, pagemap)" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "vm-e2e: FAIL: qemu-system-x86_64 missing (make deps)" >&2; exit 2; }
tdir="${CARGO_TARGET_DIR:-$repo/target}"
# The guest sees the host's / (where /tmp, /run, /var/tmp are its own tmpfs) plus the repository
# shared at the same path: a target dir inside the repository is visible wherever the clone is.
case "$tdir" in "$repo"/*) ;; /tmp/*|/run/*|/var/tmp/*) echo "vm-e2e: FAIL: CARGO_TARGET_DIR=$tdir is tmpfs in the guest (and outside the repository share); the guest runs host binaries in place" >&2; exit 2 ;; esac
t0=$(date +%s)

echo "== vm-e2e: building (release)" >&2
nice "$CARGO" build -q --release -p vm-e2e -p guest-enlight -p local-controller --bins >&2 || { echo "vm-e2e: FAIL: build" >&2; exit 1; }
bin="$tdir/release"
for b in torpor-e2e-app torpor-vm-e2e torpor-guest torpord torpor; do
  [ -x "$bin/$b" ] || { echo "vm-e2e: FAIL: $bin/$b missing after the build" >&2; exit 1; }
done

port="${VM_E2E_PORT:-}"
if [ -z "$port" ]; then
  for p in $(seq 18480 3 18580); do
    busy=0
    for q in "$p" "$((p + 1))" "$((p + 2))"; do (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null && busy=1; done
    [ "$busy" = 0 ] && { port=$p; break; }
  done
fi
[ -n "$port" ] || { echo "vm-e2e: FAIL: no three free ports in 18480-18582" >&2; exit 1; }

dir="$tdir/vm-e2e/run-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$dir"
echo "== vm-e2e: guest dir $dir, ports $port/$((port + 1))/$((port + 2))" >&2
E2E_APP="$bin/torpor-e2e-app" TORPOR_GUEST="$bin/torpor-guest" \
  vm-e2e/guest.sh prepare "$dir" --port "$port" --check-port "$((port + 1))" --idle-port "$((port + 2))" \
  --ws-mib "${VM_E2E_WS_MIB:-16}" $kmod_flag || { echo "vm-e2e: FAIL: prepare" >&2; exit 1; }

echo "== vm-e2e: smoke (HTTP, agent over virtio-serial, QMP)" >&2
"$bin/torpor-vm-e2e" smoke "$dir"
smoke=$?
bench=skipped
if [ "$smoke" = 0 ] && [ "$smoke_only" = 0 ]; then
  echo "== vm-e2e: bench ($driver, $trials trials per mode, temporary swapfile)" >&2
  TORPOR_SWAPFILE="${VM_E2E_SWAPFILE:-/var/tmp/torpor-vm-e2e.swap}" TORPOR_SWAP_MIB=2048 \
    procswap/tests/with-swap.sh "$bin/torpor-vm-e2e" bench "$dir" --trials "$trials" --driver "$driver" \
      --torpord "$bin/torpord" --torpor "$bin/torpor" --out "${VM_E2E_OUT:-$repo/bench/results/vm-resume}"
  bench=$?
fi
echo "== vm-e2e: smoke $( [ "$smoke" = 0 ] && echo PASSED || echo FAILED ), bench $( case "$bench" in 0) echo PASSED ;; skipped) echo "NOT RUN" ;; *) echo FAILED ;; esac ) in $(( $(date +%s) - t0 ))s (logs: $dir)" >&2
[ "$smoke" = 0 ] || exit 1
[ "$smoke_only" = 1 ] && exit 0
[ "$bench" = 0 ] || exit 1
