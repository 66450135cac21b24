#!/usr/bin/env bash
# Times a cold `.ci/run` on this machine without touching its warm caches: a fresh clone of
# HEAD, with every cache the set-up fills pointed at an empty directory under WORK
# (default /tmp/streamherd-cold): STREAMHERD_CACHE, Go's build and module caches, pip's
# cache, Maven's local repository and Podman's image storage. The Debian packages stay as
# they are (they are installed system-wide). Prints the log's path; the log ends with the
# wall time and the exit status. Needs about 15 GB free under WORK.
#   bash hack/ci-cold.sh            # then: tail -f /tmp/streamherd-cold/ci.log
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${WORK:-/tmp/streamherd-cold}"
if [[ -e "$work" ]]; then
  echo "$work exists: remove it first (chmod -R u+w $work && rm -rf $work; Go makes its module cache read-only), or set WORK" >&2
  exit 1
fi
mkdir -p "$work"/{cache,gocache,gomod,pip,m2,containers,runroot}
git clone -q "$root" "$work/clone"
cat > "$work/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/containers"
runroot = "$work/runroot"
EOF
export STREAMHERD_CACHE="$work/cache" GOCACHE="$work/gocache" GOMODCACHE="$work/gomod" \
  PIP_CACHE_DIR="$work/pip" MAVEN_OPTS="-Dmaven.repo.local=$work/m2" \
  CONTAINERS_STORAGE_CONF="$work/storage.conf" CI=true
cd "$work/clone"
echo "$work/ci.log"
start=$SECONDS
status=0
bash .ci/run > "$work/ci.log" 2>&1 || status=$?
elapsed=$((SECONDS - start))
printf '\ncold .ci/run: %dm%02ds, exit status %d\n' $((elapsed / 60)) $((elapsed % 60)) "$status" \
  >> "$work/ci.log"
exit "$status"
