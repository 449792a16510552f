#!/usr/bin/env bash
# Runs both HIL smoke checks (can-utils, then the socketcan addon) on $HSX_CAN_IFACE (default vcan0).
# Exit 0 only if both passed.
here="$(cd "$(dirname "$0")" && pwd)"
rc=0
bash "$here/can-utils-smoke.sh" || rc=1
node "$here/socketcan-smoke.mjs" || rc=1
exit $rc
