#!/usr/bin/env bash
# Makes a local Python base image for the Dockerfile (its ARG PYTHON_IMAGE) on a machine that
# reaches no image registry: a Debian bookworm rootfs with python3, venv and pip, made with
# mmdebstrap from the Debian mirror, imported into Podman as localhost/streamherd-pybase:<key>.
# Prints that image name. The rootfs tarball is cached by key under
# $STREAMHERD_CACHE/image-base/<key>/ (cache_fill in lib.sh: locked, published by a rename),
# so a new Podman store re-imports it in seconds instead of running mmdebstrap again.
# Needs root (or mmdebstrap's unshare mode), mmdebstrap and podman: `apt-get install
# mmdebstrap podman` (--install does it when root). The key changes with the package list.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
KEY="$SUITE-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-12)"
DIR="$CACHE/image-base/$KEY"
IMAGE="localhost/streamherd-pybase:$KEY"

fill_base() {  # STAGE: the rootfs tarball, then the marker
  local stage="$1"
  echo "[build-image-base] mmdebstrap $SUITE ($PACKAGES): under a minute with a warm apt cache" >&2
  rm -rf "$stage/rootfs.tar" "$stage/rootfs.tmp.tar"
  mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    "$SUITE" "$stage/rootfs.tmp.tar" >&2
  mv "$stage/rootfs.tmp.tar" "$stage/rootfs.tar"
  touch "$stage/.complete"
}
if [[ "${1:-}" == --fill ]]; then fill_base "$2"; exit 0; fi

if [[ "${1:-}" == --install ]]; then
  missing=()
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v podman >/dev/null || missing+=(podman)
  ((${#missing[@]} == 0)) || apt_install build-image-base "${missing[@]}" || true
fi
command -v podman >/dev/null || { echo "podman is required (apt-get install podman)" >&2; exit 1; }
if podman image exists "$IMAGE"; then echo "$IMAGE"; exit 0; fi
if ! has_marker "$DIR"; then
  command -v mmdebstrap >/dev/null \
    || { echo "mmdebstrap is required (apt-get install mmdebstrap)" >&2; exit 1; }
fi
cache_fill build-image-base "$DIR" has_marker bash "$here/build-image-base.sh" --fill
# Importing twice at once yields the same image under the same name: no lock needed.
podman import --quiet --change 'CMD ["python3"]' "$DIR/rootfs.tar" "$IMAGE" >/dev/null
echo "$IMAGE"
