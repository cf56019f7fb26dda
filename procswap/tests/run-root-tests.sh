#!/bin/bash
# The procswap/torpor root test suite, in the right order:
#   1. tests that need swap OFF (refusals, "no swap configured", freezers);
#   2. tests that need swap, under with-swap.sh (which creates and always removes a swapfile);
#   3. the torpor CLI tests (including a non-root caller via setpriv).
# Exits non-zero on any failure. Prints which cgroup modes ran and which could not.
# Env: TORPOR_TEST_CGROUP=v1|v2|signals|auto (comma list, default auto),
#      TORPOR_TEST_REQUIRE=v1,v2,signals,noswap|all (fail if such a mode cannot run here;
#        noswap: the "no swap configured" test, which needs swap off before the suite),
#      CARGO (default cargo), CARGO_FLAGS (e.g. --release).
set -uo pipefail
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
CARGO_FLAGS=${CARGO_FLAGS:-}
[ "$(id -u)" = 0 ] || { echo "run-root-tests.sh: must run as root" >&2; exit 2; }

export TORPOR_TEST_SUMMARY
TORPOR_TEST_SUMMARY=$(mktemp /tmp/torpor-test-summary.XXXXXX)
trap 'rm -f "$TORPOR_TEST_SUMMARY"' EXIT
fail=0

echo "== building tests" >&2
# shellcheck disable=SC2086
nice $CARGO test $CARGO_FLAGS -p procswap -p local-controller --no-run >&2 || exit 1

SKIP_NOSWAP=()
if [ -n "$(tail -n +2 /proc/swaps)" ]; then
    # Not ours to swapoff: run the rest of part 1, say so loudly, fail only if required.
    echo "run-root-tests.sh: swap is already on; the 'no swap configured' test cannot run:" >&2
    cat /proc/swaps >&2
    echo "no-swap refusal test: SKIPPED, CANNOT RUN ON THIS HOST: swap was already on before the suite" >>"$TORPOR_TEST_SUMMARY"
    case ",${TORPOR_TEST_REQUIRE:-}," in *,all,*|*,noswap,*) fail=1 ;; esac
    SKIP_NOSWAP=(--skip no_swap_configured_is_refused_without_change)
fi

echo "== part 1: refusals, freezers (swap off)" >&2
# shellcheck disable=SC2086
nice $CARGO test $CARGO_FLAGS -p procswap --test root_noswap -- --ignored --test-threads=1 --nocapture "${SKIP_NOSWAP[@]}" || fail=1

echo "== part 2: with a temporary swapfile" >&2
# shellcheck disable=SC2086
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p procswap --test root_swap -- --ignored --test-threads=1 --nocapture || fail=1
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p procswap --test root_kinds -- --ignored --test-threads=1 --nocapture || fail=1

echo "== part 3: torpor CLI" >&2
# shellcheck disable=SC2086
nice procswap/tests/with-swap.sh $CARGO test $CARGO_FLAGS -p local-controller --test cli -- --ignored --test-threads=1 --nocapture || fail=1

echo
echo "================ torpor root suite summary ================"
cat "$TORPOR_TEST_SUMMARY"
if grep -q "SKIPPED" "$TORPOR_TEST_SUMMARY"; then
    echo "NOTE: the SKIPPED lines above did NOT run on this host (they are not passes)."
fi
if [ "$fail" = 0 ]; then echo "RESULT: all run tests passed"; else echo "RESULT: FAILURES (see above)"; fi
exit $fail
