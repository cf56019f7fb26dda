#!/usr/bin/env bash
# phase.sh NAME CMD...: run CMD, print and record its wall time (target/phases.txt).
name="$1"; shift
mkdir -p target
t0=$(date +%s)
echo "=== phase $name: start ($(date -u +%H:%M:%S))"
"$@"; rc=$?
dt=$(( $(date +%s) - t0 ))
st=$([ $rc = 0 ] && echo ok || echo "FAILED (rc $rc)")
echo "=== phase $name: $st in ${dt}s"
printf '%-14s %-16s %5ss\n' "$name" "$st" "$dt" >> target/phases.txt
exit $rc
