#!/usr/bin/env bash
# bench/run-activation.sh — `make bench-activation`: issue 12's activation benchmark (setup only;
# the benchmark itself is `torpor-bench activation`, bench/src/activation.rs).
#
# Root, Debian 12. Steps:
#   1. apt-get installs the Debian 12 packages the chosen apps need (tomcat10 + a JDK for the
#      256 MiB webapp, redis-server, postgresql-15 with pgbench, fonts-dejavu-core for the plots),
#      with a temporary /usr/sbin/policy-rc.d so no package service starts (the benchmark runs its
#      own instances under torpord, never the system services);
#   2. cargo build --release -p bench -p local-controller (niced); for the VM app also the vm-e2e
#      and guest-enlight binaries and the cached guest kernel (`make kernel`);
#   3. under procswap/tests/with-swap.sh (its own swapfile): torpor-bench activation.
#
# Env: ACTIVATION_APPS (comma list; default all: tomcat,tomcat-256,redis,postgres,child-touch,child-null,vm),
#      ACTIVATION_TRIALS (default 5; quick 2), ACTIVATION_QUICK=1, ACTIVATION_OUT (results dir), ACTIVATION_TAG (file-name tag),
#      ACTIVATION_SWAP_MIB (default 6144), ACTIVATION_SWAPFILE, ACTIVATION_SKIP_INSTALL=1,
#      ACTIVATION_SKIP_BUILD=1, ACTIVATION_TORPORD (a torpord binary to use instead of the one built
#      here), CARGO, CARGO_TARGET_DIR; the rest (ACTIVATION_MODES, ACTIVATION_CONDITION, sizes) is read
#      by torpor-bench activation itself (see its --help).
set -euo pipefail
export LC_ALL=C
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APPS=${ACTIVATION_APPS:-tomcat,tomcat-256,redis,postgres,child-touch,child-null,vm}
CARGO=${CARGO:-$(command -v cargo || echo /usr/bin/cargo)}
TDIR=${CARGO_TARGET_DIR:-$REPO/target}

say() { printf 'run-activation: %s\n' "$*" >&2; }
die() { printf 'run-activation: FAILED: %s\n' "$*" >&2; exit 1; }
has_app() { [[ ",$APPS," == *",$1,"* ]]; }

[ "$(id -u)" = 0 ] || die "run as root (swapon, cgroups, apt-get)"

# ---------------------------------------------------------------- 1. packages
# shellcheck source=../scripts/apt-lib.sh
. "$REPO/scripts/apt-lib.sh"
trap apt_policy_restore EXIT

install_pkgs() {
    local pkgs=(fonts-dejavu-core) missing=() p
    if has_app tomcat || has_app tomcat-256; then pkgs+=(tomcat10 openjdk-17-jdk-headless); fi
    if has_app redis; then pkgs+=(redis-server redis-tools); fi
    if has_app postgres; then pkgs+=(postgresql-15); fi
    mapfile -t missing < <(apt_missing "${pkgs[@]}")
    if [ ${#missing[@]} -eq 0 ]; then
        say "packages present: ${pkgs[*]}"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this benchmark needs Debian 12"
    say "installing with apt-get: ${missing[*]} (services kept from starting by a temporary policy-rc.d)"
    apt_install run-activation "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    if command -v systemctl >/dev/null && [ "$(systemctl is-system-running 2>/dev/null || true)" != offline ]; then
        # Installed services are enabled for the next boot; the benchmark never uses them.
        for p in tomcat10 redis-server postgresql; do systemctl disable --quiet "$p.service" >/dev/null 2>&1 || true; done
    fi
    say "installed: $(dpkg-query -W -f='${Package} ${Version}  ' "${missing[@]}")"
}

if [ "${ACTIVATION_SKIP_INSTALL:-0}" != 1 ]; then install_pkgs; fi

# ---------------------------------------------------------------- 2. build
if [ "${ACTIVATION_SKIP_BUILD:-0}" != 1 ]; then
    say "building (release): bench, local-controller"
    (cd "$REPO" && nice -n 10 "$CARGO" build --release -q -p bench -p local-controller --bins) || die "cargo build failed"
    if has_app vm; then
        say "building (release): vm-e2e, guest-enlight; guest kernel (make kernel, cached)"
        (cd "$REPO" && nice -n 10 "$CARGO" build --release -q -p vm-e2e -p guest-enlight --bins) || die "cargo build (vm) failed"
        (cd "$REPO" && make --no-print-directory kernel >&2) || die "make kernel failed"
    fi
fi
BIN="$TDIR/release"
for b in torpor-bench torpor-bench-child torpor-bench-netchild torpord; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing (build failed?)"
done

# ---------------------------------------------------------------- 3. run
args=(activation --apps "$APPS" --torpord "${ACTIVATION_TORPORD:-$BIN/torpord}")
[ -n "${ACTIVATION_TRIALS:-}" ] && args+=(--trials "$ACTIVATION_TRIALS")
[ "${ACTIVATION_QUICK:-0}" = 1 ] && args+=(--quick)
[ -n "${ACTIVATION_OUT:-}" ] && args+=(--out "$ACTIVATION_OUT")
[ -n "${ACTIVATION_TAG:-}" ] && args+=(--tag "$ACTIVATION_TAG")
export TORPOR_SWAPFILE=${ACTIVATION_SWAPFILE:-/var/tmp/torpor-activation.swap}
export TORPOR_SWAP_MIB=${ACTIVATION_SWAP_MIB:-6144}
# The highest swap priority, so that every page the apps swap goes to this one file: the kernel
# spreads allocations over devices of equal priority, and another swapfile at the suites' 32000
# (another session's tests on a shared machine) would interleave the purge's loading-set-first
# layout over two devices (seen: Tomcat's first part in ~1,500 extents). Say which in the log.
export TORPOR_SWAP_PRIO=${ACTIVATION_SWAP_PRIO:-32767}
say "swap devices before: $(tail -n +2 /proc/swaps | awk '{print $1" prio "$5}' | paste -sd, - || true)"
say "running under $TORPOR_SWAPFILE ($TORPOR_SWAP_MIB MiB): $BIN/torpor-bench ${args[*]}"
exec "$REPO/procswap/tests/with-swap.sh" "$BIN/torpor-bench" "${args[@]}"
