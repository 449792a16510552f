#!/usr/bin/env bash
# Creates and raises virtual CAN interfaces (default vcan0 and vcan1) with the CAN FD MTU (72), on a kernel
# that has CAN. Idempotent: an interface that already exists is only brought to MTU 72 and up.
#   hil/vcan-up.sh [IFACE...]
# Prints one line per interface: `vcan-up: vcan0 up (mtu 72)`. Exit 1 if the kernel has no vcan, or without
# the rights to add links (run as root, or let an administrator create the interfaces once).
set -euo pipefail
ifaces=("$@")
[ ${#ifaces[@]} -gt 0 ] || ifaces=(vcan0 vcan1)
PATH="$PATH:/sbin:/usr/sbin"
# Module names differ only in - vs _; modprobe accepts both. Missing modprobe/modules is reported below.
for m in can can-raw can-bcm vcan; do modprobe -q "$m" 2>/dev/null || true; done

for ifc in "${ifaces[@]}"; do
  if ! ip link show dev "$ifc" >/dev/null 2>&1; then
    ip link add dev "$ifc" type vcan || { echo "vcan-up: cannot add $ifc (no vcan in this kernel? try hil/vm/run.sh)" >&2; exit 1; }
  fi
  mtu="$(cat "/sys/class/net/$ifc/mtu")"
  if [ "$mtu" != 72 ]; then
    # vcan refuses an MTU change while up
    ip link set dev "$ifc" down
    ip link set dev "$ifc" mtu 72
  fi
  ip link set dev "$ifc" up
  echo "vcan-up: $ifc up (mtu $(cat "/sys/class/net/$ifc/mtu"))"
done
