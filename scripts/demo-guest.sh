#!/bin/sh
# Runs inside the guest for `make demo`: load torpor.ko, ask it its version
# from userspace, show an unknown ioctl rejected, unload.
set -e
echo "== guest: $(uname -r), $(grep MemTotal /proc/meminfo)"
echo "== insmod $TORPOR_KO"
insmod "$TORPOR_KO"
ls -l /dev/torpor
echo "== torpor module   (GET_VERSION ioctl from the Rust CLI)"
"$TORPOR_CLI" module
echo "== torpor module --json"
"$TORPOR_CLI" module --json
echo "== unknown ioctls are rejected with ENOTTY, bad pointers with EFAULT:"
"$TORPOR_ABI_TEST" --ignored --test-threads=1 --nocapture 2>&1 | grep -oE '(cmd |GET_VERSION|test result).*'
rmmod torpor
echo "== rmmod done; module dmesg:"
dmesg | grep torpor | tail -3
