#!/bin/sh
# In-guest long run of the module fuzzer (`make vm-fuzz DURATION=30m`): insmod,
# torpor-kmod-fuzz for TORPOR_FUZZ_DURATION over all its phases (each ends with GET_STATS
# reporting 0 references held and 0 calls in flight), rmmod, and the module's unload line must
# report 0 outstanding references. The harness (run-vm.sh) fails the run on any
# BUG:/WARNING:/Oops console line. Prints "ok -"/"not ok -" lines and "N passed, N failed".
set -u
KO="${TORPOR_KO:?TORPOR_KO must name torpor.ko}"
FUZZ="${TORPOR_FUZZ:?TORPOR_FUZZ must name the torpor-kmod-fuzz binary}"
DURATION="${TORPOR_FUZZ_DURATION:-10m}"
. "$(dirname "$0")/guest-checks.sh"
echo "# kernel $(uname -r), module $KO, fuzzer $FUZZ, $DURATION"
# Swap on, so the targets' MADV_PAGEOUT really swaps and PREFETCH reads pages back from it.
if [ -n "${TORPOR_VM_SWAPDEV:-}" ]; then
  check "mkswap + swapon $TORPOR_VM_SWAPDEV" sh -c "mkswap $TORPOR_VM_SWAPDEV >/dev/null && swapon $TORPOR_VM_SWAPDEV"
fi
check "module not loaded at start" sh -c "! grep -q '^torpor ' /proc/modules"
check "insmod torpor.ko" insmod "$KO"
# The fuzzer's output goes to the console as it runs (phase summaries, GET_STATS lines) and
# to the job directory.
echo "# torpor-kmod-fuzz --duration $DURATION${TORPOR_FUZZ_SEED:+ --seed $TORPOR_FUZZ_SEED}:"
{ "$FUZZ" --duration "$DURATION" ${TORPOR_FUZZ_SEED:+--seed "$TORPOR_FUZZ_SEED"} 2>&1; echo $? > /tmp/kmod-fuzz.rc; } |
  tee /tmp/job/kmod-fuzz.log | sed 's/^/#   /'
check "torpor-kmod-fuzz for $DURATION: documented errnos only, answers the rules allow, 0 references held after each phase" \
  test "$(cat /tmp/kmod-fuzz.rc)" = 0
# Processes the fuzzer killed mid-ioctl may still hold /dev/torpor: wait for them (unused).
check "no process holds /dev/torpor" unused
check "rmmod torpor (unloads cleanly)" rmmod torpor
check "unload line reports 0 outstanding references (pid 0 task 0 mm 0 page 0)" unload_zero
dmesg | grep -a 'torpor: unloaded' | tail -1 | sed 's/^/# dmesg: /'
[ -n "${TORPOR_VM_SWAPDEV:-}" ] && swapoff "$TORPOR_VM_SWAPDEV"
summary
