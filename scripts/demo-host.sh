#!/usr/bin/env bash
# scripts/demo-host.sh — the whole story on this machine: cold start of a real JVM server from
# Debian (Tomcat 10, `catalina.sh run`, default ROOT webapp) vs `torpor start` of the same server
# kept in torpord's standby pool (frozen and purged to swap).
#
# Setup only; the measuring is `torpor-bench demo` (bench/src/bin/torpor-bench/demo.rs, which says
# what it measures and prints). Root, Debian 12, non-interactive (CI=true, no stdin). Steps:
#   1. apt-get installs tomcat10 if missing, with its service kept from starting by a temporary
#      /usr/sbin/policy-rc.d; says what it installs.
#   2. cargo build --release of torpord, torpor and torpor-bench (niced).
#   3. procswap/tests/with-swap.sh sets up a temporary swapfile and runs `torpor-bench demo`
#      (torpord's standby pool, DEMO_CYCLES Start/Stop cycles per prefetch mode in DEMO_MODES,
#      DEMO_COLD_RUNS cold starts interleaved with the first mode's cycles, the summary); it
#      removes everything it started, and the swapfile is removed afterwards.
#
# Env: CARGO, CARGO_TARGET_DIR, DEMO_COLD_RUNS (3), DEMO_CYCLES (5), DEMO_MODES ("full none
#      working-set-only"), DEMO_SWAP_MIB (1024), DEMO_SKIP_INSTALL=1, DEMO_SKIP_BUILD=1.
# About 25 s after the build on a 2-core machine.
set -eEuo pipefail
export LC_ALL=C
trap 'echo "demo: FAILED: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COLD_RUNS=${DEMO_COLD_RUNS:-3}
CYCLES=${DEMO_CYCLES:-5}
MODES=${DEMO_MODES:-full none working-set-only}

say()  { printf '%s\n' "$*"; }
hdr()  { printf '\n== %s\n' "$*"; }
die()  { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }
now()  { printf '%s' "$EPOCHREALTIME"; }
# sub A B → A-B with 3 decimals
sub()  { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# shellcheck source=apt-lib.sh
. "$REPO/scripts/apt-lib.sh"
outer_cleanup() {
    local rc=$?
    apt_policy_restore
    exit $rc
}

install_deps() {
    hdr "1. Debian packages"
    command -v apt-get >/dev/null || die "apt-get not found: this demo needs Debian 12"
    local pkgs=(tomcat10) missing=()
    mapfile -t missing < <(apt_missing "${pkgs[@]}")
    if [ ${#missing[@]} -eq 0 ]; then
        say "all present: ${pkgs[*]} ($(dpkg-query -W -f='${Package} ${Version}' tomcat10))"
        return
    fi
    say "installing with apt-get: ${missing[*]}"
    local cand
    cand=$(apt-cache policy tomcat10 | awk '/Candidate:/ { print $2 }')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        apt-get update -qq || die "apt-get update failed"
        cand=$(apt-cache policy tomcat10 | awk '/Candidate:/ { print $2 }')
    fi
    [ -n "$cand" ] && [ "$cand" != "(none)" ] || die "no tomcat10 package candidate (apt-cache policy tomcat10)"
    say "tomcat10 candidate: $cand"
    local was_installed=0
    dpkg-query -W -f='${Status}' tomcat10 2>/dev/null | grep -q "install ok installed" && was_installed=1
    # The package's service is kept from starting while it installs (apt_install's policy-rc.d).
    apt_install demo "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    if [ "$was_installed" = 0 ] && command -v systemctl >/dev/null; then
        # The package enables tomcat10.service for the next boot; the demo never runs it as a service.
        systemctl disable --quiet tomcat10.service >/dev/null 2>&1 || true
        local en
        en=$(systemctl is-enabled tomcat10.service 2>/dev/null) || true
        say "tomcat10.service was not started (policy-rc.d); it is now ${en:-disabled} (the demo never runs it as a service)"
    fi
    say "installed: $(dpkg-query -W -f='${Package} ${Version}' tomcat10)"
}

build() {
    hdr "2. Build (cargo build --release: torpord, torpor, torpor-bench; niced)"
    local cargo=${CARGO:-}
    if [ -z "$cargo" ]; then
        cargo=$(command -v cargo || true)
        [ -n "$cargo" ] || { [ -x /root/.cargo/bin/cargo ] && cargo=/root/.cargo/bin/cargo; } || true
        [ -n "$cargo" ] || cargo=/usr/bin/cargo
    fi
    [ -x "$cargo" ] || die "cargo not found (tried PATH, /root/.cargo/bin/cargo, /usr/bin/cargo; set CARGO=)"
    local t0 t1
    t0=$(now)
    (cd "$REPO" && nice -n 10 "$cargo" build --release --quiet -p local-controller -p bench --bin torpord --bin torpor --bin torpor-bench) \
        || die "cargo build --release (torpord, torpor, torpor-bench) failed"
    t1=$(now)
    say "built with $cargo in $(sub "$t1" "$t0") s"
}

outer_main() {
    [ "$(id -u)" = 0 ] || die "run as root (swapon, cgroups, apt-get)"
    trap outer_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    say "torpor demo: cold start of Tomcat 10 (Debian) vs torpor Start from the standby pool"
    say "host: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
    if [ "${DEMO_SKIP_INSTALL:-0}" != 1 ]; then install_deps; fi
    if [ "${DEMO_SKIP_BUILD:-0}" != 1 ]; then build; fi
    local tdir=${CARGO_TARGET_DIR:-$REPO/target}
    export DEMO_BIN="$tdir/release"
    for b in torpord torpor torpor-bench; do [ -x "$DEMO_BIN/$b" ] || die "$DEMO_BIN/$b missing (build failed?)"; done
    hdr "3. Temporary swapfile (procswap/tests/with-swap.sh)"
    export TORPOR_SWAPFILE=/var/tmp/torpor-demo-$$.swap
    export TORPOR_SWAP_MIB=${DEMO_SWAP_MIB:-1024}
    local t0 rc=0
    t0=$(now)
    # shellcheck disable=SC2086 # DEMO_MODES is a blank-separated list
    "$REPO/procswap/tests/with-swap.sh" "$DEMO_BIN/torpor-bench" demo --bin "$DEMO_BIN" --swapfile "$TORPOR_SWAPFILE" \
        --cold-runs "$COLD_RUNS" --cycles "$CYCLES" --modes $MODES || rc=$?
    grep -q "^$TORPOR_SWAPFILE " /proc/swaps && die "swapfile $TORPOR_SWAPFILE still active"
    [ -e "$TORPOR_SWAPFILE" ] && die "swapfile $TORPOR_SWAPFILE not removed"
    [ "$rc" = 0 ] || die "demo run failed (exit $rc); everything it started was removed"
    say "swapfile removed; demo (after build) took $(sub "$(now)" "$t0") s"
}

outer_main "$@"
