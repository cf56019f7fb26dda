#!/bin/sh
# Runs inside the e2e guest (from vm-e2e/guest.sh's job): module (optional), agent, web app,
# standalone checksum process; logs in /tmp/job (the host's DIR/job). Stays up until killed.
set -u
log=/tmp/job
echo "e2e-guest: up, $(nproc) CPU(s), $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo), kernel $(uname -r)"
ip -4 addr show dev eth0 2>/dev/null | sed -n 's/^ *inet /e2e-guest: eth0 inet /p'
if [ -n "${TORPOR_KO:-}" ] && [ -f "$TORPOR_KO" ]; then
  if insmod "$TORPOR_KO" 2>"$log/insmod.err"; then
    echo "e2e-guest: torpor.ko loaded ($TORPOR_KO)"
  else
    echo "e2e-guest: torpor.ko did not load ($(cat "$log/insmod.err")); the agent uses its portable source"
  fi
else
  echo "e2e-guest: no torpor.ko; the agent uses its portable source"
fi
# No udev here: find the port by name in sysfs (udev would make /dev/virtio-ports/NAME).
port=""
for n in /sys/class/virtio-ports/*/name; do
  [ -f "$n" ] && [ "$(cat "$n")" = org.torpor.agent.0 ] && port="/dev/$(basename "$(dirname "$n")")"
done
if [ -n "$port" ]; then
  echo "e2e-guest: virtio port org.torpor.agent.0 is $port"
else
  echo "e2e-guest: no virtio port named org.torpor.agent.0 (ls: $(ls /sys/class/virtio-ports 2>&1))"
  port=/dev/virtio-ports/org.torpor.agent.0
fi
NO_COLOR=1 RUST_LOG=info "$TORPOR_GUEST" serve --device "$port" > "$log/agent.log" 2>&1 &
echo "e2e-guest: torpor-guest serve pid $!"
"$E2E_APP" --port 80 --mib "$APP_MIB" --ws-mib "$WS_MIB" --seed 1 --name app > "$log/app.log" 2>&1 &
echo "e2e-guest: web app pid $!"
"$E2E_APP" --port 81 --mib "$CHECK_MIB" --ws-mib 0 --seed 2 --name checksum > "$log/checksum.log" 2>&1 &
echo "e2e-guest: checksum process pid $!"
"$E2E_APP" --port 82 --mib "$IDLE_MIB" --ws-mib 0 --seed 3 --name idle > "$log/idle.log" 2>&1 &
echo "e2e-guest: idle process pid $!"
echo "E2E-GUEST-STARTED"
# Stay up; report children that die (the host tests see it as a failed HTTP/agent check).
while :; do
  wait
  echo "e2e-guest: all children exited"
  sleep 3600
done
