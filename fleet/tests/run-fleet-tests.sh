#!/bin/bash
# The fleet's root suite: real etcd and HAProxy on loopback, emulated hosts (a torpord each, in
# its own cgroups), host agents and controllers; a temporary swapfile (procswap/tests/with-swap.sh).
#   fleet/tests/run-fleet-tests.sh [TEST_NAME_FILTER]
# Env: CARGO (default cargo), TORPOR_SWAPFILE (default /var/tmp/torpor-fleet-test.swap),
#   TORPOR_SWAP_MIB (default 512).
set -uo pipefail
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
[ "$(id -u)" = 0 ] || { echo "run-fleet-tests.sh: must run as root" >&2; exit 2; }
for b in etcd haproxy; do
    command -v $b >/dev/null || { echo "run-fleet-tests.sh: $b is needed (make deps)" >&2; exit 2; }
done
export TORPOR_SWAPFILE=${TORPOR_SWAPFILE:-/var/tmp/torpor-fleet-test.swap}
export TORPOR_SWAP_MIB=${TORPOR_SWAP_MIB:-512}
echo "== building (torpord and torpor-testapp, which the tests start, and the fleet's tests)" >&2
nice $CARGO build -p local-controller --bins >&2 || exit 1
nice $CARGO test -p torpor-fleet --no-run >&2 || exit 1
start=$(date +%s)
nice procswap/tests/with-swap.sh $CARGO test -p torpor-fleet --test 'root_*' -- \
    --ignored --test-threads=1 --nocapture "$@"
rc=$?
echo "== fleet root suite: $( [ $rc = 0 ] && echo PASSED || echo FAILED ) in $(( $(date +%s) - start ))s" >&2
exit $rc
