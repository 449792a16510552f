#!/usr/bin/env bash
# Installs the Debian packages the test suite uses when they are missing, so `make test`
# works from a fresh clone. .ci/run installs them explicitly as well.
set -euo pipefail
need=()
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
# the live page's browser tests (test/http-page.test.ts) drive Debian's Chromium headless
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root or install them: apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
