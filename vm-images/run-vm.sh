#!/usr/bin/env bash
# Boot the torpor guest under qemu TCG, run a command inside it, return its status.
#
#   vm-images/run-vm.sh [options] -- COMMAND [ARGS...]
#
# The command runs in the guest with the host's / as its (read-only) root and
# the caller's working directory as its cwd, so host-built binaries and
# torpor.ko are used in place. /tmp/job in the guest is a writable share
# ($TORPOR_VM_JOBDIR on the host) for results.
#
# Options:
#   --timeout S        wall-clock limit for the whole VM run (default 900)
#   --mem SIZE         guest RAM (default 2G)
#   --smp N            guest CPUs (default 2)
#   --swap-disk SIZE   attach a fresh raw virtio disk of SIZE (e.g. 2G) as /dev/vda
#   --disk fast|ssd|hdd  throttle that disk (ssd: 400 MB/s 20k IOPS; hdd: 120 MB/s 150 IOPS)
#   --name NAME        label for logs (default vm)
#   --results DIR      after the run, copy the *.md files the guest left in /tmp/job to DIR
#
# Fails (non-zero) if the command fails, the VM times out or dies without the
# exit marker, or any console line matches a kernel-trouble pattern
# (BUG:, WARNING:, Oops, general protection, Kernel panic). Always prints where
# the full console log is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
. "$here/toolchain.sh"

timeout=900 mem=2G smp=2 swap_disk="" disk=fast name=vm results=""
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --smp) smp="$2"; shift 2 ;;
    --swap-disk) swap_disk="$2"; shift 2 ;;
    --disk) disk="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "run-vm: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "run-vm: no command given (usage: run-vm.sh [opts] -- CMD...)" >&2; exit 2; }

kdir="$("$here/build-kernel.sh" | tail -1)"
bzimage="$kdir/arch/x86/boot/bzImage"
[ -f "$bzimage" ] || { echo "run-vm: no bzImage at $bzimage" >&2; exit 1; }

vmdir="$repo/target/vm"
mkdir -p "$vmdir"
initrd="$vmdir/initramfs.cpio.gz"
"$here/mkinitramfs.sh" "$initrd"

stamp="$(date +%Y%m%d-%H%M%S)-$$"
jobdir="$vmdir/job-$name-$stamp"
mkdir -p "$jobdir"
log="$vmdir/console-$name-$stamp.log"
: > "$log"
# The repository is shared on its own, read-only, and mounted at the same path in the
# guest, so a checkout under a path the guest covers with tmpfs (/tmp, /var/tmp, /run)
# still works.
echo "$repo" > "$jobdir/repo.path"
{
  echo "cd $(printf %q "$PWD") || exit 126"
  [ -n "$swap_disk" ] && echo "export TORPOR_VM_SWAPDEV=/dev/vda"
  echo "export TORPOR_VM_JOBDIR=/tmp/job TORPOR_VM_DISK=$disk TORPOR_KDIR=$(printf %q "$kdir")"
  printf 'exec'; printf ' %q' "$@"; echo
} > "$jobdir/run.sh"

drive=()
if [ -n "$swap_disk" ]; then
  img="$jobdir/swap.raw"
  truncate -s "$swap_disk" "$img"
  case "$disk" in
    fast) thr="" ;;
    ssd) thr=",throttling.bps-total=400000000,throttling.iops-total=20000" ;;
    hdd) thr=",throttling.bps-total=120000000,throttling.iops-total=150" ;;
    *) echo "run-vm: --disk must be fast, ssd or hdd" >&2; exit 2 ;;
  esac
  drive=(-drive "file=$img,format=raw,if=none,id=swap0,cache=none,aio=threads$thr" -device virtio-blk-pci,drive=swap0)
fi

echo "vm[$name]: booting Linux ($bzimage), ${mem} RAM, $smp CPU(s), timeout ${timeout}s, disk=$disk${swap_disk:+ swap=$swap_disk}"
echo "vm[$name]: console log: $log"
t0=$(date +%s.%N)
set +e
timeout --foreground --signal=KILL "$timeout" qemu-system-x86_64 \
  -accel tcg -cpu max -m "$mem" -smp "$smp" \
  -nodefaults -no-user-config -display none -monitor none -no-reboot \
  -serial "file:$log" \
  -kernel "$bzimage" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 oops=panic loglevel=7" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$jobdir,mount_tag=job,security_model=none" \
  -virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on,multidevs=remap" \
  -device virtio-rng-pci \
  "${drive[@]}" </dev/null &
qpid=$!
tail -n +1 -F --pid=$qpid "$log" 2>/dev/null | sed -u "s/^/  guest| /" &
tpid=$!
wait $qpid
qrc=$?
sleep 0.3; kill $tpid 2>/dev/null; wait $tpid 2>/dev/null
set -e
t1=$(date +%s.%N)
rm -f "$jobdir/swap.raw"

# "traps: NAME[PID] general protection fault ip:..." is a *user* process killed by SIGSEGV (the
# module fuzzer's sacrificial targets die that way when DISCARD zaps their memory); a kernel
# general protection fault prints "general protection fault, probably for ..." and an Oops.
bad="$(grep -nE 'BUG:|WARNING:|Oops|general protection|Kernel panic' "$log" | grep -vE '\] traps: [^ ]+\[[0-9]+\] general protection fault ip:' || true)"
marker="$(grep -a '^TORPOR-VM-EXIT: ' "$log" | tail -1 | tr -d '\r' | awk '{print $2}' || true)"
secs=$(echo "$t1 - $t0" | bc)
status=0
if [ -n "$bad" ]; then
  echo "vm[$name]: FAIL: bad console lines:"; echo "$bad" | sed 's/^/    /'
  status=1
fi
if [ -z "$marker" ]; then
  if [ "$qrc" = 137 ]; then echo "vm[$name]: FAIL: timed out after ${timeout}s"; else echo "vm[$name]: FAIL: guest ended without an exit status (qemu rc $qrc)"; fi
  status=1
elif [ "$marker" != 0 ]; then
  echo "vm[$name]: FAIL: guest command exited $marker"
  status=1
fi
if [ -n "$results" ]; then
  mkdir -p "$results"
  for f in "$jobdir"/*.md; do [ -f "$f" ] && cp "$f" "$results/" && echo "vm[$name]: result $results/$(basename "$f")"; done
fi
nbad=$(printf '%s' "$bad" | grep -c . || true)
echo "vm[$name]: guest status ${marker:-none}, ${nbad} bad console lines, ${secs%.*}s wall; full log: $log; job dir: $jobdir"
exit $status
