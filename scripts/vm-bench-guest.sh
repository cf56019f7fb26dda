#!/bin/sh
# Runs inside the guest for `make vm-bench`: module loaded (if it loads), swap on the (throttled)
# virtio disk. Without the module the stock rows still run; the result file says why.
set -e
kmod=0
if why=$(insmod "$TORPOR_KO" 2>&1); then
    kmod=1
else
    export TORPOR_VMBENCH_KMOD_WHY="insmod $TORPOR_KO failed: $why"
    echo "vm-bench: $TORPOR_VMBENCH_KMOD_WHY (stock rows only)"
fi
mkswap "${TORPOR_VM_SWAPDEV:?attach a swap disk}" >/dev/null
swapon "$TORPOR_VM_SWAPDEV"
echo "+memory" > /sys/fs/cgroup/cgroup.subtree_control
echo "vm-bench: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo), swap $(tail -1 /proc/swaps)"
TORPOR_BENCH_FREEZER=v2 "$TORPOR_VMBENCH"
swapoff "$TORPOR_VM_SWAPDEV"
[ "$kmod" = 0 ] || rmmod torpor
