#!/usr/bin/env bash
# `make image`: builds the streamherd image from ./Dockerfile, reports its size and runs its
# entry points in it; prints the image name (last line of stdout).
# - Engine: docker when its daemon answers, else podman (CONTAINER_ENGINE overrides).
# - Base: PYTHON_IMAGE when set; else the Dockerfile's pinned default when the engine can pull
#   it; else (no registry reachable, as on the CI machines) a local Debian base made by
#   hack/build-image-base.sh (mmdebstrap, cached by version).
# - Smoke run (like the chart runs it): `streamherd --help`, `streamherd-worker --help`, and
#   `streamherd run examples/01-clicks-local.yaml` as the image's user with a read-only root
#   and no network. tests/node/test_image.py checks more and fails CI when any breaks.
# IMAGE_TAG overrides the name (default localhost/streamherd:<pyproject version>).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
log() { echo "[image] $*" >&2; }

engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else echo "make image needs Docker or Podman (apt-get install podman)" >&2; exit 1
  fi
fi
version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
tag="${IMAGE_TAG:-localhost/streamherd:$version}"
default_base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)"

base="${PYTHON_IMAGE:-}"
if [[ -z "$base" ]]; then
  if "$engine" image inspect "$default_base" >/dev/null 2>&1 \
    || "$engine" pull --quiet "$default_base" >/dev/null 2>&1; then
    base="$default_base"
  else
    log "cannot pull ${default_base%@*}: building a local Debian base instead"
    base="$(bash "$here/build-image-base.sh" --install)"
  fi
fi

build=("$engine" build --network host --build-arg "PYTHON_IMAGE=$base" -t "$tag")
if [[ "$engine" == podman && -d /etc/ssl/certs ]]; then
  # RUN steps see the host's CA bundle (read-only, not kept in the image): the package
  # registries may be reached through a TLS-inspecting egress proxy with its own CA.
  build+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
fi
log "building $tag from $base with $engine"
start=$SECONDS
"${build[@]}" . >&2
size="$("$engine" image inspect --format '{{.Size}}' "$tag")"
log "built $tag in $((SECONDS - start)) s: $((size / 1000000)) MB"

run=("$engine" run --rm --network none)
if [[ "$engine" == podman ]]; then
  # Some VMs drop CAP_SYS_RESOURCE from every process: runc then cannot set podman's default
  # rlimits (EPERM), only lower ones.
  run+=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
fi
"${run[@]}" "$tag" streamherd --help >/dev/null
"${run[@]}" "$tag" streamherd-worker --help >/dev/null
log "streamherd run examples/01-clicks-local.yaml (uid $("${run[@]}" "$tag" id -u), read-only root)"
"${run[@]}" --read-only --tmpfs /tmp -v "$root/examples:/examples:ro" "$tag" \
  streamherd run /examples/01-clicks-local.yaml >&2
echo "$tag"
