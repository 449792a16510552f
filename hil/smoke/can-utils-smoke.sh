#!/usr/bin/env bash
# HIL lane smoke check with can-utils: cansend puts a classic, an extended and a CAN FD (BRS) frame on the bus
# and candump must log exactly those. Interface: $HSX_CAN_IFACE or vcan0.
# Prints the dump and `hil smoke can-utils: ok` or `... BAD`; exit 1 on a mismatch.
set -uo pipefail
iface="${HSX_CAN_IFACE:-vcan0}"
command -v candump >/dev/null && command -v cansend >/dev/null \
  || { echo "hil smoke can-utils: BAD (can-utils not installed: apt-get install -y can-utils)"; exit 1; }
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
frames=("123#DEADBEEF" "1F334455#1122334455667788" "18DAF110##1$(printf '%02X' $(seq 0 63) | tr -d '\n')")
timeout 30 candump -L -n ${#frames[@]} "$iface" > "$out" &
dump=$!
sleep 1   # let candump bind before the first frame goes out
for f in "${frames[@]}"; do cansend "$iface" "$f" || { echo "hil smoke can-utils: BAD (cansend $f failed)"; exit 1; }; done
wait "$dump"
# Newer kernels also report CANFD_FDF (0x04) in the FD flags nibble; compare BRS/ESI only.
got="$(awk '{print $3}' "$out" | sed 's/##4/##0/; s/##5/##1/; s/##6/##2/; s/##7/##3/')"
want="$(printf '%s\n' "${frames[@]}")"
awk '{print "  candump: " $2 " " $3}' "$out"
if [ "$got" = "$want" ]; then
  echo "hil smoke can-utils: ok (${#frames[@]} frames incl. CAN FD 64 bytes with BRS)"
else
  echo "hil smoke can-utils: BAD (candump logged other frames than cansend sent)"
  exit 1
fi
