#!/bin/sh
# In-guest test suite for torpor.ko (run inside the VM by `make vm-test`).
# Prints one "ok -"/"not ok -" line per check and ends with "N passed, N failed".
# TORPOR_VM_INJECT_FAIL=1 adds a deliberately failing check (used by the
# harness self-test to prove a failure inside the guest fails the run).
set -u
KO="${TORPOR_KO:?TORPOR_KO must name torpor.ko}"
TORPOR="${TORPOR_CLI:?TORPOR_CLI must name the torpor binary}"
ABI_TEST="${TORPOR_ABI_TEST:?TORPOR_ABI_TEST must name the kmod_abi test binary}"
pass=0 fail=0
check() {
  name="$1"; shift
  if out="$("$@" 2>&1)"; then
    pass=$((pass + 1)); echo "ok - $name"
  else
    fail=$((fail + 1)); echo "not ok - $name"; echo "$out" | sed 's/^/    # /'
  fi
}
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
check "module unloaded at end" expect_fail loaded
if [ "${TORPOR_VM_INJECT_FAIL:-0}" = 1 ]; then
  check "deliberately broken test (TORPOR_VM_INJECT_FAIL=1)" false
fi
dmesg | grep -E 'torpor' | tail -4 | sed 's/^/# dmesg: /'
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
