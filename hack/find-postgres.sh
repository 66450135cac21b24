#!/usr/bin/env bash
# Prints the directory holding PostgreSQL's server binaries (initdb, pg_ctl, postgres), for
# the storage tests' throwaway server (tests/integration/storage/). Debian keeps them out of
# PATH under /usr/lib/postgresql/<major>/bin; the newest major found wins.
# With --install and root, installs Debian's `postgresql` package when none is found.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
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
find_or_install find-postgres find_bin postgresql \
  "PostgreSQL server binaries not found (apt-get install postgresql)" "${1:-}"
