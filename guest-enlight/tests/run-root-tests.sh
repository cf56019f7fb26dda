#!/bin/sh
# Root-only guest-enlight tests (real /proc/iomem, /proc/kpageflags, pagemap PFNs).
# Usage: guest-enlight/tests/run-root-tests.sh   (as root; prints measurements)
# Fails (does not skip) when not root: `make test` runs it as root.
set -eu
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
    echo "run-root-tests.sh: needs root (/proc/iomem addresses, /proc/kpageflags)" >&2
    exit 2
fi
CARGO="${CARGO:-cargo}"
exec nice "$CARGO" test -p guest-enlight --release -- --ignored --nocapture --test-threads=1
