#!/usr/bin/env bash
# Prints the directory holding PostgreSQL's server binaries (initdb, pg_ctl, postgres), for
# the storage tests' throwaway server (tests/integration/storage/). Debian keeps them out of
# PATH under /usr/lib/postgresql/<major>/bin; the newest major found wins.
# With --install and root, installs Debian's `postgresql` package when none is found.
set -euo pipefail
find_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -n -r); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
      echo "$dir"; return 0
    fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}
if find_bin; then exit 0; fi
if [[ "${1:-}" == "--install" && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "[find-postgres] installing Debian's postgresql" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
    </dev/null >&2
  find_bin && exit 0
fi
echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2
exit 1
