#!/bin/sh
# Root-only guest-enlight tests (real /proc/iomem, /proc/kpageflags, pagemap PFNs).
# Usage: guest-enlight/tests/run-root-tests.sh   (as root; prints measurements)
set -eu
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
    echo "run-root-tests.sh: needs root, skipping" >&2
    exit 0
fi
exec nice cargo test -p guest-enlight --release -- --ignored --nocapture --test-threads=1
