#!/usr/bin/env bash
# Prints the directory holding `prometheus` and `promtool`, for the monitoring tests (a real
# Prometheus scraping workers and the operator; promtool checking and unit-testing the
# generated alert rules). With --install and root, installs Debian's `prometheus` package
# (which ships both) when they are missing. The package's systemd unit is not used: the
# tests start their own server on a free loopback port.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
find_bin() {
  local p t
  p="$(command -v prometheus || true)"
  t="$(command -v promtool || true)"
  if [[ -n "$p" && -n "$t" && "$(dirname "$p")" == "$(dirname "$t")" ]]; then
    dirname "$p"; return 0
  fi
  return 1
}
find_or_install find-prometheus find_bin prometheus \
  "prometheus/promtool not found (apt-get install prometheus)" "${1:-}"
