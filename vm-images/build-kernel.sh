#!/usr/bin/env bash
# Build (or reuse) the Rust-enabled Linux 6.12 guest kernel.
#
# Input: Debian's linux-source-6.12 tarball, vm-images/kernel.fragment, the
# toolchain (rustc-web, bindgen-cli, clang). The tree is cached outside the
# repository at $TORPOR_CACHE/kernel-<hash>, where <hash> covers every input;
# a second run is a cache hit in a second or two.
#
# Prints the kernel tree path (KDIR, usable as `make -C $KDIR M=...`) as the
# last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/toolchain.sh"

fragment="$here/kernel.fragment"
# Bump RECIPE when the build steps below change in a way that changes the tree.
RECIPE=1
src_tar=/usr/src/linux-source-6.12.tar.xz
[ -f "$src_tar" ] || { echo "build-kernel: $src_tar missing (run: make deps)" >&2; exit 1; }

src_ver="$(dpkg-query -W -f='${Version}' linux-source-6.12)"
key="$( {
  echo "src=$src_ver"
  sha256sum "$fragment" | cut -d' ' -f1
  echo "recipe=$RECIPE"
  "$KRUSTC" --version
  "$KBINDGEN" --version
  clang --version | head -1
  gcc --version | head -1
} | sha256sum | cut -c1-16)"
dest="$TORPOR_CACHE/kernel-$key"
kdir="$dest/out"

mkdir -p "$TORPOR_CACHE"
exec 9>"$TORPOR_CACHE/kernel.lock"
flock 9

if [ -f "$dest/.complete" ]; then
  echo "kernel: cache hit ($dest, key $key)" >&2
  echo "$kdir"
  exit 0
fi

echo "kernel: cache miss (key $key): building Linux $src_ver with Rust into $dest" >&2
t0=$(date +%s)
rm -rf "$dest"
mkdir -p "$dest"
tar -C "$dest" -xf "$src_tar"
mv "$dest/linux-source-6.12" "$dest/src"
mkdir -p "$kdir"
km() { make -C "$dest/src" O="$kdir" "${KMAKEFLAGS[@]}" "$@"; }
km tinyconfig >/dev/null
"$dest/src/scripts/kconfig/merge_config.sh" -m -O "$kdir" "$kdir/.config" "$fragment" >/dev/null
km olddefconfig >/dev/null
# Every =y line of the fragment must have survived olddefconfig.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=y) grep -qx "$line" "$kdir/.config" || { echo "kernel: fragment option lost: $line" >&2; missing=1; } ;; esac
done < "$fragment"
km rustavailable >&2
grep -qx CONFIG_RUST=y "$kdir/.config" || { echo "kernel: CONFIG_RUST did not stick" >&2; exit 1; }
[ "$missing" = 0 ] || { echo "kernel: fragment options were dropped (unmet dependencies); fix vm-images/kernel.fragment" >&2; exit 1; }
km -j"$(( $(nproc) + 1 ))" bzImage modules >"$dest/build.log" 2>&1 || { tail -50 "$dest/build.log" >&2; echo "kernel: build failed, log $dest/build.log" >&2; exit 1; }
touch "$dest/.complete"
echo "kernel: built in $(( $(date +%s) - t0 )) s ($dest)" >&2
# Drop unfinished trees and keep at most 2 finished ones.
for d in "$TORPOR_CACHE"/kernel-*/; do [ -f "$d/.complete" ] || rm -rf "$d"; done
ls -1dt "$TORPOR_CACHE"/kernel-*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
echo "$kdir"
