#!/usr/bin/env bash
# Prints the directory holding `prometheus` and `promtool`, for the monitoring tests (a real
# Prometheus scraping workers and the operator; promtool checking and unit-testing the
# generated alert rules). With --install and root, installs Debian's `prometheus` package
# (which ships both) when they are missing. The package's systemd unit is not used: the
# tests start their own server on a free loopback port.
set -euo pipefail
find_bin() {
  local p t
  p="$(command -v prometheus || true)"
  t="$(command -v promtool || true)"
  if [[ -n "$p" && -n "$t" && "$(dirname "$p")" == "$(dirname "$t")" ]]; then
    dirname "$p"; return 0
  fi
  return 1
}
if find_bin; then exit 0; fi
if [[ "${1:-}" == "--install" && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "[find-prometheus] installing Debian's prometheus" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    </dev/null >&2
  find_bin && exit 0
fi
echo "prometheus/promtool not found (apt-get install prometheus)" >&2
exit 1
