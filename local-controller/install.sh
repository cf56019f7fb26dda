#!/bin/bash
# Install torpord, torpor and torpor-testapp, the systemd unit and an example config.
#   local-controller/install.sh [--prefix /usr/local] [--destdir DIR] [--no-build]
# Builds with `cargo build --release` unless --no-build. The config goes to /etc/torpor/torpord.toml
# only when that file does not exist yet. Does not enable or start the service.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=/usr/local
DESTDIR=
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --destdir) DESTDIR=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "usage: $0 [--prefix DIR] [--destdir DIR] [--no-build]" >&2; exit 2 ;;
    esac
done
CARGO=${CARGO:-cargo}
if [ "$BUILD" = 1 ]; then
    nice "$CARGO" build --release -p local-controller
fi
TARGET_DIR=${CARGO_TARGET_DIR:-target}
for b in torpord torpor torpor-testapp; do
    install -D -m 0755 "$TARGET_DIR/release/$b" "$DESTDIR$PREFIX/bin/$b"
done
unit=local-controller/systemd/torpord.service
install -d "$DESTDIR/etc/systemd/system"
sed "s#/usr/local/bin/#$PREFIX/bin/#g" "$unit" > "$DESTDIR/etc/systemd/system/torpord.service"
chmod 0644 "$DESTDIR/etc/systemd/system/torpord.service"
install -D -m 0644 local-controller/README.md "$DESTDIR$PREFIX/share/doc/torpor/local-controller.md"
if [ ! -e "$DESTDIR/etc/torpor/torpord.toml" ]; then
    install -D -m 0644 local-controller/examples/torpord.toml "$DESTDIR/etc/torpor/torpord.toml"
    echo "installed example config /etc/torpor/torpord.toml (edit its [[app]] entries)"
else
    echo "kept existing /etc/torpor/torpord.toml"
fi
if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
echo "installed torpord, torpor, torpor-testapp to $DESTDIR$PREFIX/bin and torpord.service; enable with: systemctl enable --now torpord"
