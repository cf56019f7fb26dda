# shellcheck shell=bash
# Sourced by scripts/deps.sh, scripts/demo-host.sh and bench/run-activation.sh: install the
# Debian packages that are missing, with no package service started while they install.

APT_POLICY=/usr/sbin/policy-rc.d
APT_POLICY_BACKUP=""
APT_POLICY_OURS=0

# apt_missing PKG...: the packages not installed, one a line.
apt_missing() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# apt_policy_restore: remove our temporary policy-rc.d and put back the one it replaced.
# Idempotent: callers also run it from their EXIT trap.
apt_policy_restore() {
    if [ "$APT_POLICY_OURS" = 1 ]; then
        rm -f "$APT_POLICY"
        if [ -n "$APT_POLICY_BACKUP" ]; then mv -f "$APT_POLICY_BACKUP" "$APT_POLICY"; fi
        APT_POLICY_OURS=0
        APT_POLICY_BACKUP=""
    fi
}

# apt_install WHO PKG...: apt-get install PKGS (no recommends) under a temporary policy-rc.d that
# says "exit 101" (no service starts; the previous one is restored after). If the install fails,
# the package lists are refreshed once and it is retried. apt-get's output goes to a log, whose
# last 20 lines go to stderr on failure. WHO names the caller in the log's name and policy-rc.d.
apt_install() {
    local who=$1
    shift
    local log=/tmp/torpor-$who-apt.$$.log
    if [ -e "$APT_POLICY" ]; then
        APT_POLICY_BACKUP=$(mktemp "$APT_POLICY.$who-backup.XXXXXX")
        cp -a "$APT_POLICY" "$APT_POLICY_BACKUP"
    fi
    APT_POLICY_OURS=1
    printf '#!/bin/sh\n# temporary, from torpor (%s)\nexit 101\n' "$who" > "$APT_POLICY"
    chmod 755 "$APT_POLICY"
    local rc=0
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >"$log" 2>&1; then
        echo "$who: apt-get install failed; refreshing the package lists once" >&2
        apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >>"$log" 2>&1 \
            || { rc=$?; tail -20 "$log" >&2; echo "$who: apt-get install $* failed (log: $log)" >&2; }
    fi
    [ "$rc" != 0 ] || rm -f "$log"
    apt_policy_restore
    return "$rc"
}
