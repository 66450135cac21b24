#!/usr/bin/env bash
# Builds KEDA (the operator and its metrics API server, "adapter") at $KEDA_VERSION from the
# Go module proxy, for the autoscaler comparison against the builtin mode (bench/autoscaling,
# issue: the builtin autoscaler against real KEDA on the same cluster). KEDA's own go.mod
# (its replace and exclude directives, its go.sum) applies: the module's source is copied
# from the module cache and built in place, as its Makefile does, without its code
# generation steps (the module ships the generated code).
# Output (printed): $STREAMHERD_CACHE/bin/keda-$KEDA_VERSION/ with keda-operator,
# keda-adapter and config/ (KEDA's CRDs and RBAC from the module). Cached by version under a
# lock (cache_fill in lib.sh). Cold: long (KEDA links every scaler's cloud SDK); warm: instant.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
DEST="$CACHE/bin/keda-$KEDA_VERSION"

have_all() {  # DIR: the cache_fill CHECK
  [[ -x "$1/keda-operator" && -x "$1/keda-adapter" && -d "$1/config/crd" ]]
}
if have_all "$DEST"; then echo "$DEST"; exit 0; fi
command -v go >/dev/null || { echo "go (>= 1.26) is required on PATH to build KEDA" >&2; exit 1; }
log() { echo "[build-keda] $*" >&2; }

fill_keda() {  # STAGE: build what is missing there
  local bin="$1" src="$CACHE/build/keda-$KEDA_VERSION" dir c
  if [[ ! -f "$src/go.mod" ]]; then
    log "downloading github.com/kedacore/keda/v2@$KEDA_VERSION"
    dir="$(cd "$CACHE/build" 2>/dev/null || mkdir -p "$CACHE/build"; cd "$CACHE/build" &&
      GOFLAGS=-mod=mod go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    rm -rf "$src.tmp"
    cp -r "$dir" "$src.tmp"
    chmod -R u+w "$src.tmp"
    mv "$src.tmp" "$src"
  fi
  for c in operator adapter; do
    [[ -x "$bin/keda-$c" ]] && continue
    log "building keda-$c $KEDA_VERSION (slow)"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
      -o "$bin/keda-$c.tmp" "./cmd/$c" >&2)
    mv "$bin/keda-$c.tmp" "$bin/keda-$c"
  done
  rm -rf "$bin/config"
  cp -r "$src/config" "$bin/config.tmp"
  mv "$bin/config.tmp" "$bin/config"
}
if [[ "${1:-}" == --fill ]]; then fill_keda "$2"; exit 0; fi

cache_fill build-keda "$DEST" have_all bash "$here/build-keda.sh" --fill || {
  echo "KEDA build incomplete in $DEST.partial" >&2
  exit 1
}
echo "$DEST"
