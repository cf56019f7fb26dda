#!/usr/bin/env bash
# Build the guest initramfs (busybox-static + vm-images/init) into $1 (a .cpio.gz).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: mkinitramfs.sh OUT.cpio.gz}"
bb=/bin/busybox
[ -x "$bb" ] || { echo "mkinitramfs: $bb missing (make deps installs busybox-static)" >&2; exit 1; }
case "$(file -L "$bb")" in
  *"statically linked"*) ;;
  *) echo "mkinitramfs: $bb is not statically linked (install busybox-static)" >&2; exit 1 ;;
esac
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,dev,proc,sys,host}
cp "$bb" "$tmp/bin/busybox"
ln -s busybox "$tmp/bin/sh"
install -m 0755 "$here/init" "$tmp/init"
mkdir -p "$(dirname "$out")"
(cd "$tmp" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
