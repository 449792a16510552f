#!/usr/bin/env bash
# The HIL lane's job, the same on a host with CAN and inside the VM: the smoke checks, then the CAN suite
# (test/link-can-*.test.ts) on SocketCAN. Run from the work tree's root.
# ava flags come from HIL_AVA_FLAGS; by default one test file at a time with tests in order, because every test
# shares the one wire (vcan0) — the VM adds a long timeout.
# Exit: the suite's exit code, or 1 if only the smoke checks failed.
set -uo pipefail
export HSX_CAN_IFACE="${HSX_CAN_IFACE:-vcan0}" HSX_CAN_IFACE2="${HSX_CAN_IFACE2:-vcan1}"
echo "[hil] node $(node -v) on $(uname -r); CAN on $HSX_CAN_IFACE and $HSX_CAN_IFACE2"
t0=$(date +%s)
bash hil/smoke/run.sh
smoke=$?
t1=$(date +%s)
# HIL_TESTS narrows the run to some files (a glob or paths), e.g. HIL_TESTS=test/link-can-values.test.ts.
tests="${HIL_TESTS:-test/link-can-*.test.ts}"
shopt -s nullglob
# shellcheck disable=SC2206  # the glob is meant to expand here
suite=($tests)
if [ ${#suite[@]} -eq 0 ]; then
  echo "[hil] no CAN suite found ($tests)"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "[hil] smoke checks took $((t1 - t0)) s; running ${#suite[@]} CAN test files"
# shellcheck disable=SC2086  # HIL_AVA_FLAGS is a list of flags
node test/support/run-ava.mjs ${HIL_AVA_FLAGS:---serial --concurrency=1} "${suite[@]}"
rc=$?
echo "[hil] CAN suite took $(( $(date +%s) - t1 )) s (ava exit $rc)"
[ "$smoke" -ne 0 ] && [ "$rc" -eq 0 ] && { echo "[hil] smoke checks failed"; rc=1; }
exit $rc
