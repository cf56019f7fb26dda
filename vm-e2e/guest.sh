#!/usr/bin/env bash
# The end-to-end guest: our kernel + initramfs (vm-images/), the host's / as the guest's
# read-only root over 9p (as vm-images/run-vm.sh does), an HTTP app reachable through
# QEMU user networking (hostfwd), a QMP socket, and the torpor-guest agent on a
# virtio-serial port.
#
#   vm-e2e/guest.sh prepare DIR [--port P] [--check-port P] [--idle-port P] [--mem MIB] [--smp N]
#                               [--app-mib N] [--ws-mib N] [--check-mib N] [--idle-mib N] [--no-kmod]
#       builds nothing: finds the kernel (vm-images/build-kernel.sh, cached), writes the
#       initramfs and the guest's job (DIR/job/run.sh) and DIR/guest.env. Needs these host
#       binaries (env, absolute paths the guest can see: inside the repository, or not under /tmp /run /var/tmp):
#       E2E_APP (torpor-e2e-app), TORPOR_GUEST (torpor-guest).
#   vm-e2e/guest.sh launch DIR
#       execs qemu-system-x86_64 in the foreground (this is the command torpord runs), with
#       DIR/qmp.sock, DIR/agent.sock (chardev of virtio port org.torpor.agent.0),
#       DIR/console.log and 127.0.0.1:PORT -> guest :80, CHECK_PORT -> :81, IDLE_PORT -> :82.
#
# In the guest (vm-e2e/guest-job.sh): insmod kmod/torpor.ko when present and loadable,
# `torpor-guest serve` on the virtio port, the web app on :80 (APP_MIB MiB, WS_MIB MiB
# working set), the standalone checksum process on :81 (CHECK_MIB MiB) and an idle process
# on :82 (IDLE_MIB MiB, verified only at the end: memory of an inactive process, class Other
# in the agent's priority map); then it stays up.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: guest.sh prepare|launch DIR [options]" >&2; exit 2; }
shift 2

case "$cmd" in
prepare)
  port=18080 check_port=18081 idle_port=18082 mem=512 smp=1 app_mib=192 ws_mib=16 check_mib=32 idle_mib=96 kmod=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --check-port) check_port="$2"; shift 2 ;;
      --idle-port) idle_port="$2"; shift 2 ;;
      --idle-mib) idle_mib="$2"; shift 2 ;;
      --mem) mem="$2"; shift 2 ;;
      --smp) smp="$2"; shift 2 ;;
      --app-mib) app_mib="$2"; shift 2 ;;
      --ws-mib) ws_mib="$2"; shift 2 ;;
      --check-mib) check_mib="$2"; shift 2 ;;
      --no-kmod) kmod=0; shift ;;
      *) echo "guest.sh prepare: unknown option $1" >&2; exit 2 ;;
    esac
  done
  for v in E2E_APP TORPOR_GUEST; do
    p="${!v:-}"
    [ -n "$p" ] && [ -x "$p" ] || { echo "guest.sh: $v must name an executable (got '${p}')" >&2; exit 2; }
    # Visible in the guest: the host's / except its tmpfs dirs, and the repository share.
    case "$p" in "$repo"/*) ;; /tmp/*|/run/*|/var/tmp/*|/dev/*) echo "guest.sh: $v=$p is not visible in the guest (tmpfs there, outside the repository share)" >&2; exit 2 ;; esac
  done
  case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
  mkdir -p "$dir/job"
  # E2E_KDIR: use this kernel tree instead of vm-images/build-kernel.sh (cached build).
  kdir="${E2E_KDIR:-$("$repo/vm-images/build-kernel.sh" | tail -1)}"
  bzimage="$kdir/arch/x86/boot/bzImage"
  [ -f "$bzimage" ] || { echo "guest.sh: no bzImage at $bzimage" >&2; exit 1; }
  "$repo/vm-images/mkinitramfs.sh" "$dir/initramfs.cpio.gz"
  ko=""
  [ "$kmod" = 1 ] && [ -f "$repo/kmod/torpor.ko" ] && ko="$repo/kmod/torpor.ko"
  # The job share: run.sh is what the guest's init runs; repo.path makes init mount the
  # repository share at the same path (see vm-images/init).
  echo "$repo" > "$dir/job/repo.path"
  {
    echo "cd $(printf %q "$repo") || exit 126"
    echo "export TORPOR_VM_JOBDIR=/tmp/job TORPOR_KDIR=$(printf %q "$kdir")"
    printf 'exec env E2E_APP=%q TORPOR_GUEST=%q TORPOR_KO=%q APP_MIB=%q WS_MIB=%q CHECK_MIB=%q IDLE_MIB=%q %q\n' \
      "$E2E_APP" "$TORPOR_GUEST" "$ko" "$app_mib" "$ws_mib" "$check_mib" "$idle_mib" "$here/guest-job.sh"
  } > "$dir/job/run.sh"
  {
    echo "BZIMAGE=$(printf %q "$bzimage")"
    echo "PORT=$port CHECK_PORT=$check_port IDLE_PORT=$idle_port MEM=$mem SMP=$smp"
    echo "APP_MIB=$app_mib WS_MIB=$ws_mib CHECK_MIB=$check_mib IDLE_MIB=$idle_mib KO=$(printf %q "$ko")"
  } > "$dir/guest.env"
  echo "guest.sh: prepared $dir (kernel $bzimage, ${mem} MiB RAM, app ${app_mib} MiB ws ${ws_mib} MiB, checksum ${check_mib} MiB, idle ${idle_mib} MiB, ports $port/$check_port/$idle_port, module: ${ko:-none})" >&2
  ;;
launch)
  case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
  [ -f "$dir/guest.env" ] || { echo "guest.sh launch: $dir is not prepared" >&2; exit 2; }
  # shellcheck disable=SC1091
  . "$dir/guest.env"
  rm -f "$dir/qmp.sock" "$dir/agent.sock"
  : > "$dir/console.log"
  exec qemu-system-x86_64 \
    -name torpor-e2e -accel tcg,tb-size=128 -cpu max -m "$MEM" -smp "$SMP" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -serial "file:$dir/console.log" \
    -kernel "$BZIMAGE" -initrd "$dir/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 oops=panic loglevel=6 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$dir/job,mount_tag=job,security_model=none" \
    -virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-rng-pci \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:80,hostfwd=tcp:127.0.0.1:$CHECK_PORT-:81,hostfwd=tcp:127.0.0.1:$IDLE_PORT-:82" \
    -device virtio-net-pci,netdev=n0 \
    -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
    -device virtio-serial \
    -chardev "socket,id=tg,path=$dir/agent.sock,server=on,wait=off" \
    -device virtserialport,chardev=tg,name=org.torpor.agent.0 \
    </dev/null
  ;;
*) echo "guest.sh: unknown command $cmd (prepare|launch)" >&2; exit 2 ;;
esac
