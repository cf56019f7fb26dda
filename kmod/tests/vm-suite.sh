#!/bin/sh
# In-guest test suite for torpor.ko (run inside the VM by `make vm-test`).
# Prints one "ok -"/"not ok -" line per check and ends with "N passed, N failed".
# TORPOR_VM_INJECT_FAIL=1 adds a deliberately failing check (used by the
# harness self-test to prove a failure inside the guest fails the run).
set -u
KO="${TORPOR_KO:?TORPOR_KO must name torpor.ko}"
TORPOR="${TORPOR_CLI:?TORPOR_CLI must name the torpor binary}"
ABI_TEST="${TORPOR_ABI_TEST:?TORPOR_ABI_TEST must name the kmod_abi test binary}"
. "$(dirname "$0")/guest-checks.sh"
expect_fail() { ! "$@"; }

loaded() { grep -q '^torpor ' /proc/modules; }
dev_ok() { [ -c /dev/torpor ] && [ "$(stat -c %a /dev/torpor)" = 600 ] && [ "$(stat -c %u /dev/torpor)" = 0 ]; }

echo "# kernel $(uname -r), module $KO"
check "module not loaded at start" expect_fail loaded
check "insmod torpor.ko" insmod "$KO"
check "module listed in /proc/modules" loaded
check "/dev/torpor exists, char device, mode 0600, owner root" dev_ok
echo "# torpor module (GET_VERSION from userspace):"
"$TORPOR" module | sed 's/^/#   /'
check "torpor module --json reports ABI 1 with get_version" sh -c "\"$TORPOR\" module --json | grep -q '\"abi_version\":1' && \"$TORPOR\" module --json | grep -q get_version"
check "kmod_abi tests (GET_VERSION, ENOTTY, EFAULT)" "$ABI_TEST" --ignored --test-threads=1
"$ABI_TEST" --ignored --test-threads=1 --nocapture 2>&1 | grep -oE '(GET_VERSION|cmd ).*' | sed 's/^/#   /'
# A caller without CAP_SYS_ADMIN: as uid 0 with sys_admin dropped from the
# bounding set, the 0600 node opens but every ioctl is refused with EPERM.
check "ioctl without CAP_SYS_ADMIN is refused (EPERM)" sh -c "! setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin \"$TORPOR\" module 2>/tmp/eperm.txt && grep -q 'Operation not permitted' /tmp/eperm.txt"
check "non-root caller cannot open /dev/torpor (EACCES)" sh -c "! setpriv --reuid=65534 --regid=65534 --clear-groups \"$TORPOR\" module 2>/tmp/eacces.txt && grep -q 'permission denied' /tmp/eacces.txt"
check "rmmod torpor" rmmod torpor
check "module gone after rmmod" expect_fail loaded
check "/dev/torpor gone after rmmod" test ! -e /dev/torpor
cycles() {
  i=0
  while [ $i -lt 50 ]; do
    insmod "$KO" || { echo "insmod failed at cycle $i"; return 1; }
    [ -c /dev/torpor ] || { echo "no /dev/torpor at cycle $i"; return 1; }
    "$TORPOR" module --json >/dev/null || { echo "GET_VERSION failed at cycle $i"; return 1; }
    rmmod torpor || { echo "rmmod failed at cycle $i"; return 1; }
    i=$((i + 1))
  done
  echo "50 cycles done"
}
check "50 load/unload cycles (GET_VERSION each time)" cycles
check "module not loaded after the cycles" expect_fail loaded

if [ "${TORPOR_VM_SUITE:-full}" = full ]; then
  VM_TEST="${TORPOR_VM_TEST:?}" SWAP_TEST="${TORPOR_SWAP_TEST:?}"
  check "insmod torpor.ko (stress and backend tests)" insmod "$KO"
  "$TORPOR" module | sed 's/^/#   /'
  check "auto backend selection picks the module when it is loaded" sh -c "\"$TORPOR\" --json backend | grep -Eq '\"backend\": *\"kmod\"'"
  "$TORPOR" backend | sed 's/^/#   /'
  vmtest() { # NAME TEST: run one kmod_vm test, keep its output, show its summary lines
    check "$1" sh -c "\"$VM_TEST\" --ignored --test-threads=1 --exact $2 --nocapture > /tmp/job/$2.log 2>&1"
    grep -aoE '(race [a-z]+:|prefetch of a|fuzz: [0-9]+ ioctls \(|fuzz: module holds|free bitmap round|priority map (round|fuzz|build)|idle test:|agent ).*' "/tmp/job/$2.log" | sed 's/^/#   /'
  }
  vmtest "PREFETCH/DISCARD semantics and bad input, 0 references held after (GET_STATS)" prefetch_and_discard_semantics
  for r in exits munmaps mremaps forks; do
    vmtest "race: target $r during PREFETCH/DISCARD, 1000 iterations, 0 references held after (GET_STATS)" "race_target_$r"
  done
  vmtest "fuzz: 20000 random ioctls answer success or a documented errno, 0 references held after" fuzz_ioctls
  vmtest "FREE_BITMAP matches MemFree within 1%, bad input refused" free_bitmap_matches_memfree
  vmtest "PRIORITY_MAP: kernel text Kernel, own text User_Code, touched heap User_Data, bad input refused" priority_map_categories
  vmtest "PRIORITY_MAP: a process asleep longer than a 1 s window drops to Other" priority_map_idle_process_drops_to_other
  vmtest "torpor-guest dump/serve+query use the module source (exact): free within 1% of MemFree, kernel text/own text/heap/idle child categories via the agent" agent_uses_kmod_source
  # Swap on the virtio disk for the procswap suite.
  if [ -n "${TORPOR_VM_SWAPDEV:-}" ]; then
    check "mkswap + swapon $TORPOR_VM_SWAPDEV" sh -c "mkswap $TORPOR_VM_SWAPDEV >/dev/null && swapon $TORPOR_VM_SWAPDEV"
    echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    export TORPOR_TEST_SUMMARY=/tmp/job/summary.txt
    : > "$TORPOR_TEST_SUMMARY"
    swaptest() { # NAME BACKEND CGROUP-MODE TEST
      check "$1" env TORPOR_TEST_BACKEND="$2" TORPOR_TEST_CGROUP="$3" TORPOR_TEST_REQUIRE="$3" \
        sh -c "\"$SWAP_TEST\" --ignored --test-threads=1 --exact $4 --nocapture > /tmp/job/$2-$3-$4.log 2>&1"
    }
    swaptest "procswap lifecycle on the kmod backend, cgroup v2 (purge, prefetch, checksums)" kmod v2 lifecycle_v2
    swaptest "procswap lifecycle on the kmod backend, SIGSTOP" kmod signals lifecycle_signals
    swaptest "procswap lifecycle on the stock backend, pure cgroup v2 (memory.reclaim)" stock v2 lifecycle_v2
    check "working-set recording (DAMON vaddr / idle page tracking) in the guest" env TORPOR_TEST_REQUIRE_WS=1 TORPOR_TEST_CGROUP=v2 \
      sh -c "\"$SWAP_TEST\" --ignored --test-threads=1 --exact working_set_record_and_prefetch_first --nocapture > /tmp/job/ws.log 2>&1"
    sed 's/^/#   /' "$TORPOR_TEST_SUMMARY"
  else
    check "a swap disk is attached (run-vm.sh --swap-disk)" false
  fi
  # The structure-aware fuzzer (kmod-fuzz/), a fixed time over all its phases (ranges, guard,
  # guest-maps, concurrency, exits) against live churning children (swap on, so their
  # MADV_PAGEOUT really swaps): only documented errnos, answers the rules allow, and 0
  # references held / 0 calls in flight after each phase (GET_STATS). The seed is printed;
  # TORPOR_FUZZ_SEED replays one.
  FUZZ="${TORPOR_FUZZ:?TORPOR_FUZZ must name the torpor-kmod-fuzz binary}"
  FUZZ_TIME="${TORPOR_FUZZ_DURATION:-60s}"
  check "torpor-kmod-fuzz for $FUZZ_TIME, all phases: documented errnos only, 0 references held after each phase" \
    sh -c "\"$FUZZ\" --duration $FUZZ_TIME ${TORPOR_FUZZ_SEED:+--seed $TORPOR_FUZZ_SEED} > /tmp/job/kmod-fuzz.log 2>&1"
  grep -aE '^(torpor-kmod-fuzz: (seed|PASS|FAIL)|== |   [0-9.]+ s |   [A-Za-z_-]+ +[0-9]+ calls|   GET_STATS after|   module counted|   (UNDOCUMENTED|VIOLATION))' \
    /tmp/job/kmod-fuzz.log | sed 's/^/#   /'
  [ -n "${TORPOR_VM_SWAPDEV:-}" ] && swapoff "$TORPOR_VM_SWAPDEV"
  check "no process holds /dev/torpor after the stress tests" unused
  check "rmmod torpor after the stress tests" rmmod torpor
  # The module prints what it still holds when it unloads: after all of the above, nothing.
  check "unload after the stress tests: 0 outstanding references (pid 0 task 0 mm 0 page 0)" unload_zero
fi
# Every unload of this boot (the 50 cycles included) released everything.
all_unloads_zero() {
  n="$(dmesg | grep -ac 'torpor: unloaded, outstanding references')"
  z="$(dmesg | grep -aF 'torpor: unloaded, outstanding references: pid 0 task 0 mm 0 page 0' | wc -l)"
  echo "$z of $n unload lines report 0 outstanding references"
  [ "$n" -gt 0 ] && [ "$n" = "$z" ]
}
check "every unload line in dmesg reports 0 outstanding references" all_unloads_zero
check "module unloaded at end" expect_fail loaded
if [ "${TORPOR_VM_INJECT_FAIL:-0}" = 1 ]; then
  check "deliberately broken test (TORPOR_VM_INJECT_FAIL=1)" false
fi
dmesg | grep -E 'torpor' | tail -4 | sed 's/^/# dmesg: /'
summary
