#!/usr/bin/env bash
# Build the host binaries the guest runs in place and print them as env
# assignments (the guest's root is the host's /, so absolute paths work).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO="${CARGO:-$(command -v cargo || echo /usr/bin/cargo)}"
"$CARGO" build -q --bin torpor --bin torpor-testchild --bin torpor-kmod-fuzz >&2
json="$("$CARGO" test -q -p procswap --test kmod_abi --test kmod_vm --test root_swap --no-run --message-format=json 2>/dev/null)"
exe() {
  local p
  p="$(printf '%s\n' "$json" | grep -o "\"executable\":\"[^\"]*/$1-[0-9a-f]*\"" | tail -1 | cut -d'"' -f4)"
  [ -x "$p" ] || { echo "vm-bins: cannot find the $1 test binary" >&2; exit 1; }
  echo "$p"
}
echo "TORPOR_ABI_TEST=$(exe kmod_abi) TORPOR_VM_TEST=$(exe kmod_vm) TORPOR_SWAP_TEST=$(exe root_swap)" \
     "TORPOR_CLI=${CARGO_TARGET_DIR:-$PWD/target}/debug/torpor TORPOR_KO=$PWD/kmod/torpor.ko" \
     "TORPOR_FUZZ=${CARGO_TARGET_DIR:-$PWD/target}/debug/torpor-kmod-fuzz"
