#!/usr/bin/env bash
# Runs one command inside the HIL VM (a kernel with CAN), from the current directory, on vcan0/vcan1.
#   hil/vm/run.sh [--timeout SECONDS] [--env NAME=VALUE]... [--] COMMAND [ARGS...]
# The guest sees the host's whole filesystem (9p, chroot), /tmp included; its TMPDIR is a private tmpfs
# (/run/hsx-tmp), so scratch files and unix sockets of a job stay local to the guest. Environment passed in: PATH, CI, every HSX_* variable, and each --env.
# Prints the command's output as it comes (stdout and stderr both arrive on the VM console), plus
# "[hil-vm] ..." lines of its own. Exit code: the command's; 124 on timeout; 125 if the VM failed.
# Needs the cache built by hil/vm/build.sh (run.sh builds it if it is missing).
# Knobs (environment): HIL_VM_TIMEOUT (s, default 1800), HIL_VM_CPU (qemu64), HIL_VM_SMP (1), HIL_VM_MEM (MiB,
# 2048), HIL_VM_APPEND (extra kernel arguments, e.g. hsx_9pcache=none for uncached 9p).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${HIL_VM_CACHE:-$here/cache}"   # HIL_VM_CACHE: for the runner's own test (test/hil-vm-runner.test.ts)
timeout_s="${HIL_VM_TIMEOUT:-1800}"
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout_s="$2"; shift 2;;
    --env) envs+=("$2"); shift 2;;
    --) shift; break;;
    -*) echo "hil/vm/run.sh: unknown option $1" >&2; exit 2;;
    *) break;;
  esac
done
[ $# -gt 0 ] || { echo "usage: hil/vm/run.sh [--timeout S] [--env NAME=VALUE]... [--] COMMAND [ARGS...]" >&2; exit 2; }
cwd="$(pwd -P)"

if [ ! -f "$cache/kernel/COMPLETE" ] || [ ! -f "$cache/initramfs.COMPLETE" ]; then
  bash "$here/build.sh" || exit 125
fi

mkdir -p "$cache/jobs"
nonce="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
job="$cache/jobs/$nonce.sh"
rcfile="$cache/jobs/$nonce.rc"
qemu_err="$cache/jobs/$nonce.qemu-stderr"
trap 'rm -f "$job" "$rcfile" "$qemu_err"' EXIT
{
  echo '#!/bin/bash'
  echo 'echo "[hil-vm] job start"'
  printf 'cd %q || exit 125\n' "$cwd"
  printf 'export PATH=%q\n' "$PATH"
  [ -n "${CI:-}" ] && printf 'export CI=%q\n' "$CI"
  while IFS='=' read -r name _; do
    printf 'export %s=%q\n' "$name" "${!name}"
  done < <(env | grep -E '^HSX_[A-Za-z0-9_]*=' || true)
  for kv in "${envs[@]}"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
  printf '%q ' "$@"; echo
} > "$job"

start_ns=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - start_ns) / 1000000 ))" | sed 's/...$/.&/; s/^\./0./'; }
echo "[hil-vm] booting ($(cut -d' ' -f1 < "$cache/kernel/COMPLETE"), TCG, timeout ${timeout_s} s): $*"
# TCG: /dev/kvm is not usable on these machines. microvm hangs under TCG; pc + qboot boots the PVH vmlinux fast.
timeout --kill-after=15 "$timeout_s" qemu-system-x86_64 \
  -machine pc -accel tcg -cpu "${HIL_VM_CPU:-qemu64}" -smp "${HIL_VM_SMP:-1}" -m "${HIL_VM_MEM:-2048}" \
  -bios /usr/share/qemu/qboot.rom -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$cache/kernel/vmlinux" -initrd "$cache/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet loglevel=3 mitigations=off panic=-1 hsx_job=$job hsx_nonce=$nonce ${HIL_VM_APPEND:-}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap,id=hostroot \
  -serial stdio < /dev/null 2> "$qemu_err" |
while IFS= read -r line || [ -n "$line" ]; do
  line="${line%$'\r'}"
  case "$line" in
    *"HSX-VM-EXIT $nonce "*)   # the command's last output may lack a newline: keep what precedes the marker
      before="${line%%HSX-VM-EXIT $nonce *}"
      [ -n "$before" ] && printf '%s\n' "$before"
      echo "${line##* }" > "$rcfile";;
    *"] reboot: Power down") ;;
    *"[hil-vm] job start") echo "[hil-vm] command started $(elapsed) s after boot began";;
    *) printf '%s\n' "$line";;
  esac
done
qemu_rc=${PIPESTATUS[0]}
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
  echo "[hil-vm] timed out after ${timeout_s} s" >&2
  exit 124
fi
if [ ! -s "$rcfile" ]; then
  echo "[hil-vm] the VM stopped without an exit marker (qemu exit $qemu_rc)" >&2
  cat "$qemu_err" >&2
  exit 125
fi
rc="$(cat "$rcfile")"
echo "[hil-vm] command exited $rc after $(elapsed) s in total"
exit "$rc"
