#!/usr/bin/env bash
# `make test-hil`: the CAN suite (test/link-can-*.test.ts) on real SocketCAN.
#  - host kernel has CAN -> hil/vcan-up.sh, then hil/hil-job.sh on vcan0/vcan1 directly;
#  - otherwise           -> build the VM once (cached in hil/vm/cache/), run hil/hil-job.sh inside it, one boot.
# HIL_LANE=host|vm forces a lane; HIL_TESTS narrows the files (default test/link-can-*.test.ts); HIL_AVA_FLAGS,
# HIL_VM_TIMEOUT, HIL_VM_SMP: see hil-job.sh and vm/run.sh. The output ends with the same `N passed, N failed` line as `make test` (held
# back and printed last, after the timing lines); the exit code is the suite's (124 if the VM timed out).
set -uo pipefail
shopt -s lastpipe   # the pipeline's last stage (relay) runs in this shell, so it can keep the summary line
cd "$(dirname "$0")/.."
PATH="$PATH:/sbin:/usr/sbin"
t0=$(date +%s)
summary=""

# Echo a run's output, holding back its summary line so that it closes the whole output.
relay() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ ^[0-9]+\ passed,\ [0-9]+\ failed(,\ [0-9]+\ skipped)?$ ]]; then
      summary="$line"
    else
      printf '%s\n' "$line"
    fi
  done
}

host_has_can() {
  local m
  for m in can can-raw vcan; do modprobe -q "$m" 2>/dev/null || true; done
  [ -d /proc/net/can ] || [ -d /sys/module/can_raw ] || return 1
  ip link show dev vcan0 >/dev/null 2>&1 && return 0
  ip link add dev hsxprobe0 type vcan 2>/dev/null || return 1
  ip link del dev hsxprobe0
}

lane="${HIL_LANE:-}"
if [ -z "$lane" ]; then
  if host_has_can; then lane=host; else lane=vm; fi
fi

case "$lane" in
  host)
    echo "[hil] lane: host kernel $(uname -r) has CAN; running on vcan0/vcan1 directly"
    bash hil/vcan-up.sh vcan0 vcan1 || exit 1
    if ! command -v cansend >/dev/null && [ "$(id -u)" -eq 0 ]; then   # the smoke check uses can-utils
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends can-utils >/dev/null
    fi
    t1=$(date +%s)
    bash hil/hil-job.sh 2>&1 | relay
    rc=${PIPESTATUS[0]}
    ;;
  vm)
    echo "[hil] lane: host kernel $(uname -r) has no CAN; running in a VM with CAN (hil/vm/)"
    bash hil/vm/build.sh || exit 1
    t1=$(date +%s)
    echo "[hil] VM ready after $((t1 - t0)) s"
    # JavaScript runs 9-20x slower under TCG on one vCPU: one test file at a time, tests in order, and a long
    # inactivity timeout. HSX_HIL_VM=1 tells tests they run there (to scale their own waits if they need to).
    bash hil/vm/run.sh --timeout "${HIL_VM_TIMEOUT:-1800}" \
      --env "HIL_AVA_FLAGS=${HIL_AVA_FLAGS:---serial --concurrency=1 --timeout=10m}" --env HSX_HIL_VM=1 \
      ${HIL_TESTS:+--env "HIL_TESTS=$HIL_TESTS"} \
      -- bash hil/hil-job.sh 2>&1 | relay
    rc=${PIPESTATUS[0]}
    ;;
  *) echo "[hil] HIL_LANE must be host or vm, not '$lane'" >&2; exit 2;;
esac

t2=$(date +%s)
echo "[hil] lane $lane: set-up $((t1 - t0)) s, run $((t2 - t1)) s, total $((t2 - t0)) s, exit $rc"
if [ -n "$summary" ]; then
  echo "$summary"
else
  echo "[hil] the run printed no test summary"
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
