# fleet/hosts-lib.sh — sourced by fleet/demo.sh and bench/run-agility.sh: their common
# environment, and the teardown of emulated hosts started by a script.

# script_env NAME: C locale, a failure line naming NAME and the failing command (ERR trap), and
# CARGO and TARGET (CARGO_TARGET_DIR, else the repository's target/; REPO set by the caller).
script_env() {
    export LC_ALL=C
    # shellcheck disable=SC2064 # NAME is expanded now, LINENO and BASH_COMMAND when it fires.
    trap "echo \"$1: FAILED (line \$LINENO): \$BASH_COMMAND\" >&2" ERR
    CARGO=${CARGO:-cargo}
    TARGET=${CARGO_TARGET_DIR:-$REPO/target}
}

# stop_hosts: kill -9 every pid in PIDS, then thaw, kill and remove the app cgroups under each
# cgroup parent in PARENTS (cgroup v2 and the v1 memory, freezer and cpu hierarchies), then the
# parents; empties both arrays.
stop_hosts() {
    local p parent d pid
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    PIDS=()
    for parent in "${PARENTS[@]}"; do
        for d in /sys/fs/cgroup/{unified,memory,freezer,}/"$parent"/*/; do
            [ -d "$d" ] || continue
            { echo 0 > "$d/cgroup.freeze"; } 2>/dev/null || true
            { echo THAWED > "$d/freezer.state"; } 2>/dev/null || true
            for pid in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            sleep 0.2; rmdir "$d" 2>/dev/null || true
        done
        rmdir /sys/fs/cgroup/{unified,memory,freezer,cpu,}/"$parent" 2>/dev/null || true
    done
    PARENTS=()
}
