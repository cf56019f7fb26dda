#!/bin/sh
# Runs inside the guest for `make vm-bench`: module loaded, swap on the (throttled) virtio disk.
set -e
insmod "$TORPOR_KO"
mkswap "${TORPOR_VM_SWAPDEV:?attach a swap disk}" >/dev/null
swapon "$TORPOR_VM_SWAPDEV"
echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control
echo "vm-bench: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo), swap $(tail -1 /proc/swaps)"
TORPOR_BENCH_FREEZER=v2 "$TORPOR_VMBENCH"
swapoff "$TORPOR_VM_SWAPDEV"
rmmod torpor
