#!/bin/bash
# Run CMD... with a temporary swapfile active; always swapoff and remove it afterwards.
#   procswap/tests/with-swap.sh CMD [ARGS...]
# Env: TORPOR_SWAPFILE (default /var/tmp/torpor-test.swap), TORPOR_SWAP_MIB (default 3072),
#      TORPOR_SWAP_PRIO (default 32000), TORPOR_SWAP_DISCARD (pages, the default; both; none).
# Discard matters for layout, not for the disk: with a discard policy (6.18's swap allocator) a new
# allocation takes a free cluster before the holes of partly used ones, so a purge's pages written in
# touch order get consecutive slots; without it they refill holes the app's own write faults left,
# scattered (bench/results/activation/README.md, "Swap layout": 2,600-2,900 extents for 5,000 pages
# without discard, 1-3 with). `swapon --discard=once` does not set that policy.
set -euo pipefail
SWAPFILE=${TORPOR_SWAPFILE:-/var/tmp/torpor-test.swap}
MIB=${TORPOR_SWAP_MIB:-3072}
PRIO=${TORPOR_SWAP_PRIO:-32000}
DISCARD=${TORPOR_SWAP_DISCARD:-pages}
case "$DISCARD" in
    pages) DISCARD_ARGS=(--discard=pages) ;;
    both) DISCARD_ARGS=(--discard) ;;
    none) DISCARD_ARGS=() ;;
    *) echo "with-swap.sh: TORPOR_SWAP_DISCARD must be pages, both or none (got '$DISCARD')" >&2; exit 2 ;;
esac
[ "$#" -ge 1 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "with-swap.sh: needs root (swapon)" >&2; exit 2; }

cleanup() {
    if grep -q "^$SWAPFILE " /proc/swaps 2>/dev/null; then
        swapoff "$SWAPFILE" || echo "with-swap.sh: swapoff $SWAPFILE failed" >&2
    fi
    rm -f "$SWAPFILE"
}
trap cleanup EXIT INT TERM

if grep -q "^$SWAPFILE " /proc/swaps; then swapoff "$SWAPFILE"; fi
rm -f "$SWAPFILE"
# fallocate is fine for swap on ext4/xfs; fall back to dd where it is not supported.
if ! fallocate -l "${MIB}M" "$SWAPFILE" 2>/dev/null; then
    dd if=/dev/zero of="$SWAPFILE" bs=1M count="$MIB" status=none
fi
chmod 600 "$SWAPFILE"
mkswap "$SWAPFILE" >/dev/null
swapon -p "$PRIO" "${DISCARD_ARGS[@]}" "$SWAPFILE"
echo "with-swap.sh: swap on (discard: $DISCARD): $(grep "^$SWAPFILE " /proc/swaps)" >&2
set +e
"$@"
rc=$?
set -e
exit $rc
