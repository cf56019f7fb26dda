# Sourced by the in-guest module scripts (vm-suite.sh, vm-fuzz.sh): the "ok -"/"not ok -" check
# lines, the wait for /dev/torpor's last holder, the unload-line check and the summary line.
# POSIX sh (the guest runs these with /bin/sh).
pass=0 fail=0
# check NAME CMD...: run CMD; one "ok -"/"not ok -" line, CMD's output indented under a failure.
check() {
  name="$1"; shift
  if out="$("$@" 2>&1)"; then
    pass=$((pass + 1)); echo "ok - $name"
  else
    fail=$((fail + 1)); echo "not ok - $name"; echo "$out" | sed 's/^/    # /'
  fi
}
# Wait (up to 300 s, a bound that only catches a hang) until no process holds /dev/torpor open:
# processes the fuzzer killed in the middle of a slow ioctl finish exiting only when the call
# returns, which under TCG on a loaded host can take seconds after the fuzzer itself is done.
unused() {
  i=0
  while [ "$(cat /sys/module/torpor/refcnt 2>/dev/null || echo 0)" != 0 ]; do
    [ $i -ge 3000 ] && { echo "torpor still in use after 300 s:"; ls -l /proc/[0-9]*/fd 2>/dev/null | grep -B8 /dev/torpor | grep -E '^/proc|torpor' | head; return 1; }
    sleep 0.1; i=$((i + 1))
  done
}
# The module prints what it still holds when it unloads: the last such line must say nothing.
unload_zero() {
  line="$(dmesg | grep -a 'torpor: unloaded, outstanding references' | tail -1)"
  echo "last unload line: ${line:-none}"
  echo "$line" | grep -qF 'torpor: unloaded, outstanding references: pid 0 task 0 mm 0 page 0'
}
# The last line of a run; its status is the run's (0 only with no failed check).
summary() {
  echo "$pass passed, $fail failed"
  [ "$fail" = 0 ]
}
