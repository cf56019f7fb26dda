#!/usr/bin/env bash
# Install what torpor's build, tests and demo need on Debian 12. Idempotent:
# prints what it installs, installs nothing when everything is present.
set -euo pipefail
: "${TORPOR_TOOLS:=/opt/torpor-tools}"
pkgs=(
  # kernel + module build (Rust-for-Linux with Debian's rustc-web 1.96)
  rustc-web rust-web-src cargo-web rust-web-clippy libclang-dev clang lld llvm flex bison bc libelf-dev libssl-dev
  cpio dwarves kmod linux-source-6.12 file
  # guest
  qemu-system-x86 busybox-static
  # userspace tests: setpriv, swap tools, procps
  util-linux procps
  # fleet: coordination, request router, load generator; protoc and its well-known types for
  # the etcd client's generated gRPC code
  etcd-server haproxy wrk protobuf-compiler libprotobuf-dev
  # the torpord root suite's `redis` readiness probe test (Debian's redis-server)
  redis-server
  # the agility benchmark's open-loop load generator (fixed request rates)
  httperf
  # benchmarks: plot labels (plotters reads DejaVu Sans at run time)
  fonts-dejavu-core
  # PostgreSQL 15 (postgres, initdb, pgbench, pg_prewarm): the activation benchmark's
  # multi-process app with shared memory; its service is kept from starting (below)
  postgresql-15
)
# shellcheck source=apt-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
trap apt_policy_restore EXIT
mapfile -t missing < <(apt_missing "${pkgs[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "deps: need root to install: ${missing[*]}" >&2; exit 1; }
  echo "deps: installing with apt-get: ${missing[*]}"
  apt-get update -qq
  # No package service starts (postgresql would start a cluster of its own): apt_install's
  # temporary policy-rc.d, the previous one restored after.
  apt_install deps "${missing[@]}"
  if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v systemctl >/dev/null; then
    systemctl disable --quiet postgresql.service >/dev/null 2>&1 || true
  fi
else
  echo "deps: all ${#pkgs[@]} Debian packages present"
fi
cargo_bin="$(command -v cargo || echo /usr/bin/cargo)"
if [ ! -x "$TORPOR_TOOLS/bin/bindgen" ] || ! "$TORPOR_TOOLS/bin/bindgen" --version | grep -q '0.70.1'; then
  echo "deps: installing bindgen-cli 0.70.1 into $TORPOR_TOOLS (cargo install, ~80 s)"
  "$cargo_bin" install --locked --quiet --root "$TORPOR_TOOLS" bindgen-cli@0.70.1
else
  echo "deps: bindgen-cli 0.70.1 present ($TORPOR_TOOLS/bin/bindgen)"
fi
echo "deps: cargo $("$cargo_bin" --version | cut -d' ' -f2) at $cargo_bin; kernel rustc $(/usr/bin/rustc --version | cut -d' ' -f2)"
