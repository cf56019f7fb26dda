#!/usr/bin/env bash
# fleet/demo.sh (`make fleet-demo`) — the fleet on one machine: a real etcd and a real HAProxy on
# loopback, two emulated hosts (a torpord each, own socket, state directory, cgroup parent and
# loopback address 127.0.0.11 / 127.0.0.12; app `web` = torpor-testapp in standby on both, its
# CPU capped at the host's share by the agent's --enforce-share), a host agent each, two
# controller replicas.
#   1. Under a steady load through HAProxy (wrk, 4 connections, 10 ms apart),
#      `torpor-fleet app web --min-running 1 --max-running 2`: the leader activates web on the
#      least-loaded host, HAProxy serves it. From HAProxy's own log (a line per request) and the
#      host's status in etcd: its `ready` -> the first request its server answered.
#   2. A flash crowd (wrk, 20 s) through HAProxy: the host's share (0.25 core) overloads; the
#      leader activates web on the other host (in standby there) and HAProxy spreads the load;
#      again its `ready` -> first request answered, under load.
#   3. The crowd gone: after the cooldown, the newest instance is drained, then stopped.
#   4. kill -9 the leading controller: the other leads.
# Every decision is printed from the controllers' event logs (GET /events). Root; the swapfile
# is temporary (procswap/tests/with-swap.sh, run by the Makefile). Everything started is
# stopped on exit. Env: CARGO, CARGO_TARGET_DIR, DEMO_SKIP_BUILD=1.
set -eEuo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=hosts-lib.sh
. "$REPO/fleet/hosts-lib.sh"
script_env fleet-demo
BIN=$TARGET/debug
[ "$(id -u)" = 0 ] || { echo "fleet-demo: must run as root" >&2; exit 2; }
for b in etcd haproxy wrk curl jq; do command -v $b >/dev/null || { echo "fleet-demo: $b missing (make deps)" >&2; exit 2; }; done
if [ -z "${DEMO_SKIP_BUILD:-}" ]; then
    (cd "$REPO" && nice "$CARGO" build -q -p local-controller --bins -p torpor-fleet)
fi
TMP=$(mktemp -d /tmp/torpor-fleet-demo.XXXXXX)
PIDS=()
PARENTS=()
cleanup() {
    stop_hosts
    rm -rf "$TMP"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { printf '%s\n' "$*"; }
hdr() { printf '\n== %s\n' "$*"; }
bg() { local log=$1; shift; "$@" >"$TMP/$log.log" 2>&1 & PIDS+=($!); }
wait_for() { # WHAT CMD...: poll every 0.2 s, give up after 300 s
    local what=$1; shift
    for _ in $(seq 1500); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "fleet-demo: timed out waiting for $what" >&2
    l=$(leader) && curl -sf "http://127.0.0.1:$l/events" | jq -c '.[-5:]' >&2
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD" get --prefix /torpor/v1/ >&2 || true
    exit 1
}

ETCD=http://127.0.0.1:$(port); PEER=http://127.0.0.1:$(port)
bg etcd etcd --name demo --data-dir "$TMP/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "demo=$PEER"
FE=$(port)
"$BIN/torpor-fleet" router-config --socket "$TMP/haproxy.sock" --frontend "web=$FE" > "$TMP/haproxy.cfg"
bg haproxy haproxy -db -f "$TMP/haproxy.cfg"
i=10
for h in h1 h2; do
    i=$((i + 1)); addr=127.0.0.$i
    parent=torpor-fleet-demo-$h-$$; PARENTS+=("$parent"); p=$(port)
    mkdir -p "$TMP/$h"
    cat > "$TMP/$h/torpord.toml" <<EOF
socket = "$TMP/$h/torpord.sock"
state_dir = "$TMP/$h/state"
cgroup_parent = "$parent"
reserve = "64M"
# The emulated hosts share one kernel: its paging rate (other work on the machine) is not this
# host's, so torpord's paging overload flags are off here; the CPU rule decides.
overload_threshold = 1e12
[[app]]
name = "web"
command = ["$BIN/torpor-testapp", "--bind", "$addr", "--port", "$p", "--mib", "256"]
ready = { http = "http://$addr:$p/" }
prestart = true
EOF
    bg "torpord-$h" "$BIN/torpord" --config "$TMP/$h/torpord.toml"
    wait_for "torpord $h's standby pool" sh -c "curl -sf --unix-socket $TMP/$h/torpord.sock http://t/v1/health | jq -e .pool_ready"
    bg "agent-$h" "$BIN/torpor-fleet" --etcd "$ETCD" host --name "$h" --torpord "$TMP/$h/torpord.sock" \
        --cgroup-parent "$parent" --share-cores 0.25 --enforce-share --serve "web=$addr:$p"
    say "host $h: torpord with web (torpor-testapp, 256 MiB) in standby on $addr:$p, share 0.25 core (enforced)"
done
C1=$(port); C2=$(port)
declare -A CPID
for c in c1:$C1 c2:$C2; do
    bg "${c%%:*}" "$BIN/torpor-fleet" --etcd "$ETCD" controller --id "${c%%:*}" --haproxy "$TMP/haproxy.sock" \
        --cooldown 10 --listen "127.0.0.1:${c##*:}"
    CPID[${c%%:*}]=$!
done
leader() { for c in $C1 $C2; do curl -sf "http://127.0.0.1:$c/metrics" | grep -qx 'torpor_fleet_leader 1' && { echo "$c"; return 0; }; done; return 1; }
wait_for "a leading controller" leader
SEEN=0
events() { # print the leader's events after the last printed
    local l; l=$(leader) || return 0
    curl -sf "http://127.0.0.1:$l/events" | jq -r --argjson s "$SEEN" \
        '.[] | select(.seq > $s) | "  [\(.seq)] \(.kind) \(.host // "-")/\(.app // "-") \(.seconds * 1000 | floor) ms: \(.message)"'
    SEEN=$(curl -sf "http://127.0.0.1:$l/events" | jq '[.[].seq] | max // 0')
}
servers() { echo "show servers state web" | python3 -c "
import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('$TMP/haproxy.sock'); s.sendall(sys.stdin.read().encode())
out=b''
while (d:=s.recv(65536)): out+=d
for l in out.decode().splitlines()[2:]:
    f=l.split(); print(f'  HAProxy web/{f[3]} {f[4]}:{f[18]} admin={f[6]} op={f[5]}') if len(f)>18 else None"; }

first_answer() { # HOST: its ready -> the first request its server answered, from HAProxy's log
    local r; r=$("$BIN/torpor-fleet" --etcd "$ETCD" first-answer --haproxy-log "$TMP/haproxy.log" --app web --host "$1") || return 1
    read -r ready sent answered <<<"$r"
    say "  $1 ready at $ready: first request passed on to web/$1 $sent ms later, first answered $answered ms later (HAProxy's log)"
}

hdr "1. steady load (wrk, 4 connections, 10 ms between requests) while web is declared (min 1, max 2)"
cat > "$TMP/steady.lua" <<'LUA'
function delay() return 10 end
LUA
bg wrk-steady wrk -t1 -c4 -d600s -s "$TMP/steady.lua" "http://127.0.0.1:$FE/"
STEADY=$!
sleep 1
"$BIN/torpor-fleet" --etcd "$ETCD" app web --min-running 1 --max-running 2 >/dev/null
wait_for "web through HAProxy" curl -sf "http://127.0.0.1:$FE/"
sleep 1; events; servers
FIRST=$(curl -sf "http://127.0.0.1:$(leader)/events" | jq -r '[.[] | select(.kind == "router_ready")][0].host')
first_answer "$FIRST"

hdr "2. flash crowd: wrk -t2 -c32 -d20s through HAProxy, GET /touch (reads all of the app's pages)"
wrk -t2 -c32 -d20s --latency "http://127.0.0.1:$FE/touch" | grep -E 'Latency|50%|99%|Requests/sec|requests in'
events; servers
for h in h1 h2; do [ "$h" = "$FIRST" ] || first_answer "$h" 2>/dev/null || say "  $h: not activated"; done
kill "$STEADY" 2>/dev/null || true

hdr "3. the crowd gone: after the 10 s cooldown the newest instance is drained and stopped"
activated() { curl -sf "http://127.0.0.1:$(leader)/events" | jq -e '[.[] | select(.kind == "place_running")] | length > 1'; }
drained() { curl -sf "http://127.0.0.1:$(leader)/events" | jq -e 'any(.[]; .kind == "place_standby")'; }
if activated; then
    wait_for "a drained and stopped instance" drained
    sleep 1; events; servers
else
    say "  (no host reached 80% of its share during the crowd on this machine: nothing to drain)"
fi

hdr "4. kill -9 the leading controller"
L=$(leader)
OLD=$([ "$L" = "$C1" ] && echo c1 || echo c2)
t0=$EPOCHREALTIME; kill -9 "${CPID[$OLD]}"
newleader() { curl -sf "http://127.0.0.1:$([ "$OLD" = c1 ] && echo "$C2" || echo "$C1")/metrics" | grep -qx 'torpor_fleet_leader 1'; }
wait_for "the other controller to lead" newleader
say "  $OLD killed; the other replica leads after $(python3 -c "print(f'{$EPOCHREALTIME - $t0:.2f}')") s (lease TTL 3 s)"
SEEN=0; events
say ""; say "fleet-demo: done (logs were in $TMP, removed on exit)"
