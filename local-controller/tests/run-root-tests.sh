#!/bin/bash
# torpord root suite: real apps in real cgroups, a temporary swapfile (procswap/tests/with-swap.sh).
#   local-controller/tests/run-root-tests.sh [TEST_NAME_FILTER]
# Exits non-zero on any failure. Env: CARGO (default cargo), CARGO_FLAGS (e.g. --release),
#   TORPOR_SWAPFILE (default /var/tmp/torpord-test.swap), TORPOR_SWAP_MIB (default 2048).
set -uo pipefail
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
CARGO_FLAGS=${CARGO_FLAGS:-}
[ "$(id -u)" = 0 ] || { echo "run-root-tests.sh: must run as root" >&2; exit 2; }
command -v setpriv >/dev/null || { echo "run-root-tests.sh: setpriv (util-linux) is needed" >&2; exit 2; }
export TORPOR_SWAPFILE=${TORPOR_SWAPFILE:-/var/tmp/torpord-test.swap}
export TORPOR_SWAP_MIB=${TORPOR_SWAP_MIB:-2048}

echo "== building" >&2
# shellcheck disable=SC2086
nice $CARGO test $CARGO_FLAGS -p local-controller --no-run >&2 || exit 1

start=$(date +%s)
echo "== torpord root suite (with a temporary swapfile)" >&2
# shellcheck disable=SC2086
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p local-controller --test root_torpord -- \
    --ignored --test-threads=1 --nocapture "$@"
rc=$?
echo "== loading-set activation: bad input and faults" >&2
# shellcheck disable=SC2086
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p local-controller --test root_activation -- \
    --ignored --test-threads=1 --nocapture --skip swap_full_at_stop "$@" || rc=1
# Swap full at Stop: the only swap is a 64 MiB swapfile, smaller than the test's 256 MiB app.
if [ "$#" = 0 ] || [[ swap_full_at_stop_partial_purge_loses_nothing == *"$1"* ]]; then
    # shellcheck disable=SC2086
    TORPOR_SWAP_MIB=64 nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p local-controller \
        --test root_activation -- --ignored --test-threads=1 --nocapture --exact \
        swap_full_at_stop_partial_purge_loses_nothing || rc=1
fi
echo "== torpord VM-app root suite (real qemu-system-x86_64 -accel tcg, fake guest agent)" >&2
command -v qemu-system-x86_64 >/dev/null || { echo "run-root-tests.sh: qemu-system-x86_64 is needed (apt-get install qemu-system-x86)" >&2; rc=1; }
# shellcheck disable=SC2086
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p local-controller --test root_vm -- \
    --ignored --test-threads=1 --nocapture "$@" || rc=1
# The mechanism under it (procswap::vm on a real QEMU: fetch_ranges, Twinkle, pmemsave check).
# shellcheck disable=SC2086
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p procswap --test root_vm_fetch --test vm_qmp -- \
    --include-ignored --test-threads=1 --nocapture "$@" || rc=1
echo "== torpord root suite: $( [ $rc = 0 ] && echo PASSED || echo FAILED ) in $(( $(date +%s) - start ))s" >&2
exit $rc
