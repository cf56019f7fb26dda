#!/usr/bin/env bash
# Tests of the VM harness itself: it must fail on a failing in-guest test, a
# non-zero guest command, a bad console line and a timeout, and pass a clean run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
VM=vm-images/run-vm.sh
pass=0 fail=0
out="$(mktemp)"; trap 'rm -f "$out"' EXIT
expect() { # expect WANT(0|nonzero) NAME GREP-PATTERN CMD...
  want="$1" name="$2" pat="$3"; shift 3
  "$@" >"$out" 2>&1; rc=$?
  if { [ "$want" = 0 ] && [ $rc = 0 ]; } || { [ "$want" != 0 ] && [ $rc != 0 ]; }; then
    if [ -z "$pat" ] || grep -qE "$pat" "$out"; then
      pass=$((pass + 1)); echo "ok - $name (rc $rc)"; return
    fi
    echo "not ok - $name: rc $rc but output lacks /$pat/"
  else
    echo "not ok - $name: rc $rc, wanted $want"
  fi
  fail=$((fail + 1)); tail -20 "$out" | sed 's/^/    # /'
}
# Runs that must end by themselves get a timeout that only catches a hang (a TCG boot on a
# loaded 2-core host takes far longer than on an idle one): a slow boot must not pass for the
# failure each case looks for. Only the hang case relies on its timeout, which it must hit.
ok_timeout=900
expect 0 "a clean guest command passes" "guest status 0, 0 bad console lines" \
  $VM --name selftest-ok --timeout $ok_timeout -- true
expect nonzero "a guest command exiting 3 fails the run" "guest command exited 3" \
  $VM --name selftest-rc --timeout $ok_timeout -- sh -c 'exit 3'
expect nonzero "a BUG: console line fails the run even if the command succeeds" "bad console lines" \
  $VM --name selftest-bug --timeout $ok_timeout -- sh -c 'echo "BUG: torpor harness self-test" > /dev/kmsg; sleep 1'
expect nonzero "a hung guest is killed at the timeout and fails the run" "timed out after 30s" \
  $VM --name selftest-hang --timeout 30 -- sleep 600
expect nonzero "a deliberately broken in-guest test makes make vm-test fail" "not ok - deliberately broken test" \
  make --no-print-directory vm-test VM_SUITE=quick TORPOR_VM_INJECT_FAIL=1
echo "harness self-test: $pass passed, $fail failed"
[ $fail = 0 ]
