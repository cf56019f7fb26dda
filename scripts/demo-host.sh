#!/usr/bin/env bash
# scripts/demo-host.sh — the whole story on this machine: cold start of a real JVM server from
# Debian (Tomcat 10, `catalina.sh run`, default ROOT webapp) vs `torpor start` of the same server
# kept in torpord's standby pool (frozen and purged to swap).
#
# Root, Debian 12, non-interactive (CI=true, no stdin). Steps:
#   1. apt-get installs what is missing (tomcat10 with services kept from starting by a temporary
#      /usr/sbin/policy-rc.d; curl, jq, iproute2), says what it installs.
#   2. cargo build --release -p local-controller (niced).
#   3. The rest runs under procswap/tests/with-swap.sh with its own temporary swapfile.
#   4. torpord (temp config, socket, state dir, own cgroup parent) pre-starts Tomcat (`catalina.sh
#      run`, own CATALINA_BASE in a temp dir, free port), freezes and purges it (standby).
#   5. DEMO_CYCLES (default 5) Start/Stop cycles with prefetch = "full"; the first DEMO_COLD_RUNS
#      (default 3) are each preceded by a cold start of the same Tomcat (second CATALINA_BASE and
#      port) timed until its first HTTP 200 (interleaved, so both see the same machine load).
#      Then, torpord restarted each time (it adopts the frozen app), the same cycles with
#      prefetch = "none" (plain thaw + demand paging, the paper's non-enhanced resume) and
#      "working-set-only" (only the pages resident at the last Stop, i.e. what the last requests
#      touched). DEMO_MODES="full" runs only the first.
#   6. Summary table; exit non-zero on any failure. Every number printed was measured in this run.
# Everything started is removed on exit (processes, cgroups, swapfile, temp dir, policy-rc.d).
#
# Env: CARGO, CARGO_TARGET_DIR, DEMO_COLD_RUNS (3), DEMO_CYCLES (5), DEMO_MODES ("full none"),
#      DEMO_SWAP_MIB (1024), DEMO_SKIP_INSTALL=1, DEMO_SKIP_BUILD=1.
# About 25 s after the build on a 2-core machine.
set -eEuo pipefail
export LC_ALL=C
trap 'echo "demo: FAILED: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/scripts/demo-host.sh"
COLD_RUNS=${DEMO_COLD_RUNS:-3}
CYCLES=${DEMO_CYCLES:-5}
MODES=${DEMO_MODES:-full none working-set-only}
APP=tomcat

say()  { printf '%s\n' "$*"; }
hdr()  { printf '\n== %s\n' "$*"; }
die()  { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }
now()  { printf '%s' "$EPOCHREALTIME"; }
# sub A B → A-B with 3 decimals
sub()  { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
# median of numbers (one per argument)
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mib()  { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# =====================================================================================
# Outer stage: install, build, then re-run this script under its own temporary swapfile.
# =====================================================================================
POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
POLICY_OURS=0
outer_cleanup() {
    local rc=$?
    if [ "$POLICY_OURS" = 1 ]; then
        rm -f "$POLICY"
        [ -n "$POLICY_BACKUP" ] && mv -f "$POLICY_BACKUP" "$POLICY"
    fi
    exit $rc
}

install_deps() {
    hdr "1. Debian packages"
    command -v apt-get >/dev/null || die "apt-get not found: this demo needs Debian 12"
    local pkgs=(tomcat10 curl jq iproute2) missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
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
    # Keep the package's service from starting while it installs.
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP=$(mktemp "$POLICY.demo-backup.XXXXXX")
        cp -a "$POLICY" "$POLICY_BACKUP"
    fi
    POLICY_OURS=1
    printf '#!/bin/sh\n# temporary, from torpor scripts/demo-host.sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    local was_installed=0
    dpkg-query -W -f='${Status}' tomcat10 2>/dev/null | grep -q "install ok installed" && was_installed=1
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/tmp/torpor-demo-apt.log 2>&1; then
        # The package lists may be stale: refresh once and retry.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/tmp/torpor-demo-apt.log 2>&1 \
            || { tail -20 /tmp/torpor-demo-apt.log >&2; die "apt-get install ${missing[*]} failed (log: /tmp/torpor-demo-apt.log)"; }
    fi
    rm -f /tmp/torpor-demo-apt.log
    rm -f "$POLICY"
    [ -n "$POLICY_BACKUP" ] && mv -f "$POLICY_BACKUP" "$POLICY"
    POLICY_OURS=0
    POLICY_BACKUP=""
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
    hdr "2. Build (cargo build --release -p local-controller, niced)"
    local cargo=${CARGO:-}
    if [ -z "$cargo" ]; then
        cargo=$(command -v cargo || true)
        [ -n "$cargo" ] || { [ -x /root/.cargo/bin/cargo ] && cargo=/root/.cargo/bin/cargo; } || true
        [ -n "$cargo" ] || cargo=/usr/bin/cargo
    fi
    [ -x "$cargo" ] || die "cargo not found (tried PATH, /root/.cargo/bin/cargo, /usr/bin/cargo; set CARGO=)"
    local t0 t1
    t0=$(now)
    (cd "$REPO" && nice -n 10 "$cargo" build --release --quiet -p local-controller) || die "cargo build --release -p local-controller failed"
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
    for b in torpord torpor; do [ -x "$DEMO_BIN/$b" ] || die "$DEMO_BIN/$b missing (build failed?)"; done
    hdr "3. Temporary swapfile (procswap/tests/with-swap.sh)"
    export TORPOR_SWAPFILE=/var/tmp/torpor-demo-$$.swap
    export TORPOR_SWAP_MIB=${DEMO_SWAP_MIB:-1024}
    local t0 rc=0
    t0=$(now)
    "$REPO/procswap/tests/with-swap.sh" "$SELF" --inner || rc=$?
    grep -q "^$TORPOR_SWAPFILE " /proc/swaps && die "swapfile $TORPOR_SWAPFILE still active"
    [ -e "$TORPOR_SWAPFILE" ] && die "swapfile $TORPOR_SWAPFILE not removed"
    [ "$rc" = 0 ] || die "demo run failed (exit $rc); everything it started was removed"
    say "swapfile removed; demo (after build) took $(sub "$(now)" "$t0") s"
}

# =====================================================================================
# Inner stage (runs with the swapfile on).
# =====================================================================================
TMPD=""
COLD_PID=""
TORPORD_PID=""
CG_PARENT="torpor-demo-$$"
TOMCAT_HOME=/usr/share/tomcat10

inner_cleanup() {
    local rc=$?
    set +e
    trap - ERR
    case "$rc" in 130|143) say "demo: interrupted (signal); removing what it started" >&2 ;; esac
    if [ "$rc" = 1 ] && [ -n "$TMPD" ]; then
        if [ -s "$TMPD/torpord.log" ]; then say "--- last lines of torpord's log:" >&2; tail -15 "$TMPD/torpord.log" >&2; fi
        if [ -s "$TMPD/state/logs/$APP.log" ]; then say "--- last lines of the app's log:" >&2; tail -10 "$TMPD/state/logs/$APP.log" >&2; fi
    fi
    [ -n "$COLD_PID" ] && stop_group "$COLD_PID"
    if [ -n "$TORPORD_PID" ]; then
        kill -TERM "$TORPORD_PID" 2>/dev/null
        wait_gone "$TORPORD_PID" 10 || kill -KILL "$TORPORD_PID" 2>/dev/null
        wait "$TORPORD_PID" 2>/dev/null
    fi
    remove_cgroups
    [ -n "$TMPD" ] && rm -rf "$TMPD"
    exit "$rc"
}

# wait_gone PID SECONDS: 0 once PID is gone
wait_gone() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        # a zombie child of ours counts as gone
        [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ] && return 0
        sleep 0.05
    done
    return 1
}

# stop_group PGID: TERM the process group (catalina.sh runs java by exec), KILL after 15 s
stop_group() {
    kill -TERM -- "-$1" 2>/dev/null || return 0
    if ! wait_gone "$1" 15; then
        say "  (no exit 15 s after SIGTERM: SIGKILL)"
        kill -KILL -- "-$1" 2>/dev/null || true
        wait_gone "$1" 5 || true
    fi
    wait "$1" 2>/dev/null || true
    COLD_PID=""
}

# Thaw and kill everything in our cgroups, then remove them (every hierarchy).
remove_cgroups() {
    local d a i left
    for d in $(find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d -name "$CG_PARENT" 2>/dev/null); do
        for a in "$d"/*/; do
            [ -d "$a" ] || continue
            [ -e "$a/cgroup.freeze" ] && echo 0 > "$a/cgroup.freeze" 2>/dev/null
            [ -e "$a/freezer.state" ] && echo THAWED > "$a/freezer.state" 2>/dev/null
            xargs -r kill -KILL < "$a/cgroup.procs" 2>/dev/null
        done
    done
    for d in $(find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d -name "$CG_PARENT" 2>/dev/null); do
        for a in "$d"/*/; do
            [ -d "$a" ] || continue
            for ((i = 0; i < 100; i++)); do
                left=$(cat "$a/cgroup.procs" 2>/dev/null)
                [ -z "$left" ] && break
                xargs -r kill -KILL <<< "$left" 2>/dev/null
                sleep 0.1
            done
            rmdir "$a" 2>/dev/null || say "demo: could not remove cgroup $a" >&2
        done
        rmdir "$d" 2>/dev/null || say "demo: could not remove cgroup $d" >&2
    done
}

free_port() {
    local p
    for p in $(seq 18080 18180); do
        [ "$p" = "${1:-}" ] && continue
        ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return 0; }
    done
    return 1
}

# http_code URL → the status code, 000 when no answer
http_code() { curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

# make_base DIR PORT: a CATALINA_BASE with the package's pristine config and default ROOT webapp
make_base() {
    mkdir -p "$1"/{conf,logs,temp,work,webapps,lib}
    cp "$TOMCAT_HOME"/etc/* "$1/conf/"
    cp -r /usr/share/tomcat10-root/default_root "$1/webapps/ROOT"
    # HTTP connector on our port, shutdown port disabled (no clash with another Tomcat).
    sed -i -e "s/port=\"8080\"/port=\"$2\"/" -e 's/<Server port="8005"/<Server port="-1"/' "$1/conf/server.xml"
    grep -q "port=\"$2\"" "$1/conf/server.xml" || die "could not set the HTTP port in $1/conf/server.xml"
}

cold_start_once() {
    local log="$TMPD/cold-$1.log" t0 t1 code
    t0=$(now)
    setsid env CATALINA_HOME="$TOMCAT_HOME" CATALINA_BASE="$BASE_COLD" CATALINA_TMPDIR="$BASE_COLD/temp" JAVA_HOME="$JAVA_HOME" \
        "$TOMCAT_HOME/bin/catalina.sh" run </dev/null >"$log" 2>&1 &
    COLD_PID=$!
    while :; do
        code=$(http_code "$URL_COLD")
        [ "$code" = 200 ] && break
        kill -0 "$COLD_PID" 2>/dev/null || { tail -5 "$log" >&2; die "Tomcat exited before answering (log above)"; }
        [ "$(sub "$(now)" "$t0" | cut -d. -f1)" -lt 90 ] || die "Tomcat did not answer 200 on $URL_COLD within 90 s"
        sleep 0.02
    done
    t1=$(now)
    COLD_T=$(sub "$t1" "$t0")
    COLD_RSS=$(awk '/VmRSS/ { print $2 * 1024 }' "/proc/$COLD_PID/status")
    stop_group "$COLD_PID"
}

tp() { "$DEMO_BIN/torpor" --socket "$SOCK" "$@"; }

# app_json → the app's status as JSON (GET /v1/apps/NAME)
app_json() { tp --json status "$APP"; }

# jget JSON FILTER: a required value (dies when null)
jget() {
    local v
    v=$(jq -er "$2" <<< "$1") || die "torpord's answer has no $2: $1"
    printf '%s' "$v"
}

write_config() {
    cat > "$TMPD/torpord.toml" <<EOF
# written by scripts/demo-host.sh
socket = "$SOCK"
socket_mode = "0600"
state_dir = "$TMPD/state"
reserve = "256M"
purge = "always"
prefetch = "$1"
backend = "auto"
cgroup_parent = "$CG_PARENT"
sample_interval = "1s"

[[app]]
name = "$APP"
command = ["$TOMCAT_HOME/bin/catalina.sh", "run"]
workdir = "$BASE"
env = { CATALINA_HOME = "$TOMCAT_HOME", CATALINA_BASE = "$BASE", CATALINA_TMPDIR = "$BASE/temp", JAVA_HOME = "$JAVA_HOME" }
ready = { http = "$URL" }
ready_timeout = "90s"
prestart = true
EOF
}

start_torpord() {
    "$DEMO_BIN/torpord" --check --config "$TMPD/torpord.toml" >/dev/null || die "torpord rejected the generated config"
    RUST_LOG=info "$DEMO_BIN/torpord" --config "$TMPD/torpord.toml" </dev/null >>"$TMPD/torpord.log" 2>&1 &
    TORPORD_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        [ -S "$SOCK" ] && tp status >/dev/null 2>&1 && return 0
        kill -0 "$TORPORD_PID" 2>/dev/null || die "torpord exited at startup"
        sleep 0.05
    done
    die "torpord's socket did not answer within 10 s"
}

stop_torpord() {
    kill -TERM "$TORPORD_PID"
    wait_gone "$TORPORD_PID" 15 || die "torpord did not exit on SIGTERM"
    wait "$TORPORD_PID" 2>/dev/null || true
    TORPORD_PID=""
}

# Wait until the app is in standby (frozen and purged); show the transitions.
wait_standby() {
    local t0 st last="" j
    t0=$(now)
    while :; do
        j=$(app_json 2>/dev/null) || j=""
        st=$(jq -r '.state + (if .busy then "*" else "" end)' <<< "$j" 2>/dev/null || true)
        if [ -n "$st" ] && [ "$st" != "$last" ]; then
            say "  $(printf '%6.2f s' "$(sub "$(now)" "$t0")")  state: $st"
            last=$st
        fi
        [ "$st" = standby ] && [ "$(jq -r .frozen <<< "$j")" = true ] && break
        case "$st" in stopped|running|suspended) [ "$(jq -r '.last_error // empty' <<< "$j")" ] && die "app $APP: $(jq -r .last_error <<< "$j")" ;; esac
        kill -0 "$TORPORD_PID" 2>/dev/null || die "torpord exited"
        [ "$(sub "$(now)" "$t0" | cut -d. -f1)" -lt 150 ] || die "app $APP not in standby after 150 s (state: $st)"
        sleep 0.2
    done
}

# mem_line JSON → "resident X MiB (anon Y), swapped Z MiB"
mem_line() {
    local r a s
    r=$(jget "$1" .memory.resident_bytes)
    a=$(jget "$1" .memory.resident_anon_bytes)
    s=$(jget "$1" .memory.swapped_bytes)
    printf 'resident %s MiB (anon %s MiB), swapped %s MiB' "$(mib "$r")" "$(mib "$a")" "$(mib "$s")"
}

run_cycles() {
    local mode=$1 i j r t0 t1 t2 code pre pf thaw probe total pmib stop_s
    printf '  %-3s %-22s %8s %9s %7s %7s %7s %9s %9s  %s\n' "#" "standby res/swap MiB" "prefetch" "fetched" "thaw" "probe" "total" "cli_wall" "1st_resp" "Stop"
    for ((i = 1; i <= CYCLES; i++)); do
        if [ "$2" = 1 ] && [ "$i" -le "$COLD_RUNS" ]; then
            cold_start_once "$i"
            COLD+=("$COLD_T")
            COLD_RSSES+=("$COLD_RSS")
            printf '  c%-2s cold start: catalina.sh run on :%s → first 200 after %s s (RSS %s MiB); stopped\n' "$i" "$PORT_COLD" "$COLD_T" "$(mib "$COLD_RSS")"
        fi
        j=$(app_json) || die "torpor status $APP failed"
        [ "$(jget "$j" .state)" = standby ] || die "cycle $i: app is $(jq -r .state <<< "$j"), not standby, before Start"
        pre="$(jq -r '"\(.memory.resident_bytes / 1048576 | round) / \(.memory.swapped_bytes / 1048576 | round)"' <<< "$j")"
        t0=$(now)
        r=$(tp --json start "$APP") || die "torpor start $APP failed${r:+: $r}"
        t1=$(now)
        code=$(http_code "$URL")
        t2=$(now)
        [ "$code" = 200 ] || die "cycle $i: GET $URL right after Start answered $code, not 200"
        [ "$(jq -r '.cold // false' <<< "$r")" = false ] || die "cycle $i: torpord cold-started the app (it was not resumed)"
        total=$(jget "$r" .timing.total_s)
        read -r pf thaw probe <<< "$(jq -r '.timing | [.prefetch_s, .thaw_s, .probe_s] | map(if . == null then "-" else (. * 1000 | round / 1000 | tostring) end) | join(" ")' <<< "$r")"
        pmib=$(jq -r 'if .timing.prefetch_bytes == null then "-" else "\(.timing.prefetch_bytes / 1048576 | round) MiB" end' <<< "$r")
        START_TOTAL+=("$total")
        START_CLI+=("$(sub "$t1" "$t0")")
        START_FIRST+=("$(sub "$t2" "$t0")")
        j=$(app_json) || die "torpor status $APP failed"
        RUN_RES+=("$(jget "$j" .memory.resident_bytes)")
        r=$(tp --json stop "$APP") || die "torpor stop $APP failed${r:+: $r}"
        [ "$(jget "$r" .state)" = standby ] || die "cycle $i: Stop left the app $(jq -r .state <<< "$r"), not standby"
        stop_s=$(jq -r '.timing.total_s * 1000 | round / 1000' <<< "$r")
        printf '  %-3s %-22s %8s %9s %7s %7s %7.3f %9s %9s  %.3f s\n' "$i" "$pre" "$pf" "$pmib" "$thaw" "$probe" "$total" \
            "$(sub "$t1" "$t0")" "$(sub "$t2" "$t0")" "$stop_s"
    done
}

inner_main() {
    trap inner_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    for c in curl jq ss setsid; do command -v "$c" >/dev/null || die "$c not found"; done
    [ -x "$TOMCAT_HOME/bin/catalina.sh" ] || die "$TOMCAT_HOME/bin/catalina.sh missing (apt-get install tomcat10)"
    [ -d /usr/share/tomcat10-root/default_root ] || die "/usr/share/tomcat10-root/default_root missing (package tomcat10)"
    local java
    java=$(readlink -f "$(command -v java)") || die "no java on PATH (apt-get install default-jre-headless)"
    JAVA_HOME=${java%/bin/java}
    TMPD=$(mktemp -d /tmp/torpor-demo.XXXXXX)
    SOCK="$TMPD/torpord.sock"
    [ "$COLD_RUNS" -ge 1 ] && [ "$COLD_RUNS" -le "$CYCLES" ] || die "DEMO_COLD_RUNS must be 1..DEMO_CYCLES (cold starts are interleaved with the Start cycles)"
    PORT=$(free_port) || die "no free TCP port in 18080-18180"
    PORT_COLD=$(free_port "$PORT") || die "no second free TCP port in 18080-18180"
    URL="http://127.0.0.1:$PORT/"
    URL_COLD="http://127.0.0.1:$PORT_COLD/"
    BASE="$TMPD/catalina-base"
    BASE_COLD="$TMPD/catalina-base-cold"
    make_base "$BASE" "$PORT"
    make_base "$BASE_COLD" "$PORT_COLD"
    say "swap devices: $(awk 'NR > 1 { printf "%s%s (%s, %d MiB, prio %s)", sep, $1, $2, $3 / 1024, $5; sep = ", " }' /proc/swaps)"
    awk -v me="$TORPOR_SWAPFILE" 'NR > 1 && $1 == me { p = $5 } NR > 1 && $1 != me { o[$1] = $5 }
        END { for (f in o) if (o[f] + 0 >= p + 0) printf "note: %s (prio %s) is another active swap device, used before or alongside the demo'"'"'s swapfile (prio %s)\n", f, o[f], p }' /proc/swaps
    say "Tomcat $(dpkg-query -W -f='${Version}' tomcat10), $("$JAVA_HOME/bin/java" -version 2>&1 | head -1), catalina.sh run with CATALINA_BASE=$TMPD/catalina-base{,-cold}: under torpord on :$PORT, cold starts on :$PORT_COLD"

    COLD=() COLD_RSSES=()
    # ---------------------------------------------------------------- torpord
    local mode first=1 letters=abcdefgh BACKEND="" SB_RES SB_SWAP SB_LINE cold_med=""
    declare -A MED_TOTAL MED_CLI MED_FIRST MED_RUNRES
    for mode in $MODES; do
        case "$mode" in full|none|working-set-only) ;; *) die "DEMO_MODES: unknown prefetch mode $mode" ;; esac
        write_config "$mode"
        if [ "$first" = 1 ]; then
            hdr "4. torpord: standby pool (prestart, purge = always, prefetch = $mode), cgroups under $CG_PARENT/"
        else
            hdr "5${letters:first-1:1}. torpord restarted with prefetch = $mode (it adopts the frozen app; Tomcat is not restarted)"
        fi
        start_torpord
        wait_standby
        if [ "$mode" = working-set-only ]; then
            local wsb
            wsb=$(app_json | jq -r '.working_set_bytes // empty')
            [ -n "$wsb" ] || die "no working set recorded for $APP (needed by prefetch = working-set-only)"
            say "  working set recorded at the last Stop (pages resident then): $(mib "$wsb") MiB"
        fi
        if [ "$first" = 1 ]; then
            local h
            h=$(tp --json status) || die "torpor status failed"
            BACKEND="$(jget "$h" .backend) ($(jq -r .backend_why <<< "$h"))"
            say "  backend: $BACKEND"
            say "  cgroups: $(jq -r .cgroups <<< "$h")"
            say "\$ torpor apps"
            tp apps | sed 's/^/  /'
            local j
            j=$(app_json)
            say "\$ torpor status $APP   (selected fields)"
            jq -r '"  state \(.state), frozen \(.frozen), pid \(.pid), pids \(.pids | length), cgroups \(.cgroups | tostring)",
                   "  memory: \(.memory | tostring)",
                   "  last_purge: \(.last_purge | tostring)"' <<< "$j"
            SB_RES=$(jget "$j" .memory.resident_bytes)
            SB_SWAP=$(jget "$j" .memory.swapped_bytes)
            SB_LINE=$(mem_line "$j")
            say "  standby: $SB_LINE"
            say "  (the prestart was itself a cold start under torpord: ready after $(jq -r '.last_start.total_s * 1000 | round / 1000' <<< "$j") s)"
            hdr "5. Cold start vs torpor Start, interleaved: $COLD_RUNS cold starts (catalina.sh run → first 200, on :$PORT_COLD),"
            say "   each followed by a torpor Start/Stop cycle of the standby app (on :$PORT)"
        fi
        say "  $CYCLES Start/Stop cycles (prefetch = $mode); times in s; cli_wall = \`torpor start\` wall time,"
        say "  1st_resp = from \`torpor start\` to the first 200 of a curl issued when it returned:"
        START_TOTAL=() START_CLI=() START_FIRST=() RUN_RES=()
        run_cycles "$mode" "$first"
        if [ "$first" = 1 ]; then
            cold_med=$(median "${COLD[@]}")
            say "  cold start median: $cold_med s (runs: ${COLD[*]})"
        fi
        MED_TOTAL[$mode]=$(median "${START_TOTAL[@]}")
        MED_CLI[$mode]=$(median "${START_CLI[@]}")
        MED_FIRST[$mode]=$(median "${START_FIRST[@]}")
        MED_RUNRES[$mode]=$(median "${RUN_RES[@]}")
        say "  medians: torpord total ${MED_TOTAL[$mode]} s, cli_wall ${MED_CLI[$mode]} s, 1st_resp ${MED_FIRST[$mode]} s"
        say "\$ torpor apps"
        tp apps | sed 's/^/  /'
        stop_torpord
        first=$((first + 1))
    done

    # ---------------------------------------------------------------- summary
    hdr "6. Summary (this machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r); swapfile on $(df --output=source "$(dirname "$TORPOR_SWAPFILE")" | tail -1))"
    local sep='  ------------------------------------------------------------------------------------------'
    printf '  %-50s %13s %15s %12s\n' "Tomcat 10 (Debian), default ROOT webapp" "torpord total" "first response" "resident"
    say "$sep"
    printf '  %-50s %13s %15s %12s\n' "cold start: catalina.sh run (median of $COLD_RUNS)" "-" "$cold_med s" "$(mib "$(median "${COLD_RSSES[@]}")") MiB"
    for mode in $MODES; do
        local label="torpor start, prefetch = $mode"
        [ "$mode" = none ] && label="torpor start, prefetch = none (demand paging)"
        [ "$mode" = working-set-only ] && label="torpor start, prefetch = working set only"
        printf '  %-50s %13s %15s %12s\n' "$label" "${MED_TOTAL[$mode]} s" "${MED_FIRST[$mode]} s" "$(mib "${MED_RUNRES[$mode]}") MiB"
    done
    printf '  %-50s %13s %15s %12s\n' "standby (frozen + purged), between Starts" "" "" "$(mib "$SB_RES") MiB"
    say "$sep"
    say "  torpor rows: medians of $CYCLES Start/Stop cycles. torpord total = Start request to ready (prefetch,"
    say "  thaw, its own HTTP probe); first response = from \`torpor start\` to a client's first 200 (curl issued"
    say "  when it returned); cold start = from exec of catalina.sh to the first 200. resident = the app's"
    say "  resident memory (cold start: RSS when it first answered; standby: $SB_LINE)."
    say ""
    for mode in $MODES; do
        say "  ==> torpor Start (prefetch = $mode) is $(awk -v c="$cold_med" -v t="${MED_FIRST[$mode]}" 'BEGIN { printf "%.1f", c / t }')x faster than a cold start (time to first response, medians)"
    done
    if [[ " $MODES " == *" full "* && " $MODES " == *" none "* ]]; then
        if awk -v f="${MED_FIRST[full]}" -v n="${MED_FIRST[none]}" 'BEGIN { exit !(n < f) }'; then
            say "  Here demand paging answers the first request sooner than whole-process prefetch: the first request"
            say "  needs ~$(mib "${MED_RUNRES[none]}") MiB of the $(mib "$SB_SWAP") MiB on swap; prefetch = full brings all of it back first."
        else
            say "  Here whole-process prefetch answers the first request sooner than demand paging."
        fi
    fi
    say "  backend: $BACKEND"
    say "  paper (Agile application placement in hosting platforms, for context; JBoss, 2009 hardware): cold start over 90 s on an idle machine; plain resume 5.3x, enhanced (prefetch + pre-purge) resume over 20x faster than a cold start."
}

if [ "${1:-}" = --inner ]; then
    inner_main
else
    outer_main "$@"
fi
