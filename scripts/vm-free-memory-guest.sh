#!/bin/sh
# Runs inside the guest for scripts/vm-free-memory.sh: swap on the (throttled) virtio disk, cgroup v2
# memory controller, then torpor-bench's free-memory experiment (it fills the guest's memory).
set -e
mkswap "${TORPOR_VM_SWAPDEV:?attach a swap disk}" >/dev/null
swapon "$TORPOR_VM_SWAPDEV"
echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control
echo "vm-free-memory: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo), swap $(tail -1 /proc/swaps)"
mkdir -p /tmp/job/results
# shellcheck disable=SC2086
TORPOR_BENCH_FREEZER=v2 "$TORPOR_BENCH" $TORPOR_BENCH_ARGS --out /tmp/job/results free-memory
swapoff "$TORPOR_VM_SWAPDEV"
