#!/usr/bin/env bash
# Builds what the node tier (tests/node/) adds to the control plane: kubelet and kube-proxy
# at $KUBE_VERSION from Go modules (same wrapper module, staging pins and version stamps as
# hack/build-control-plane.sh), and the sandbox ("pause") image containerd needs, made from
# scratch because no registry is reachable: a static Go program that reaps children and
# exits on SIGTERM/SIGINT, packed as a one-layer OCI archive (hack/oci_image.py).
# Output (printed): $STREAMHERD_CACHE/bin/node-k8s-$KUBE_VERSION/ with kubelet, kube-proxy,
# pause and pause.oci.tar. Cached by version under a lock (cache_fill in lib.sh); cold:
# ~3-5 minutes on 2 cores with a warm Go module cache, warm: instant.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
DEST="$CACHE/bin/node-k8s-$KUBE_VERSION"
PAUSE_REF="localhost/streamherd-pause:$KUBE_VERSION"

have_all() {  # DIR: the cache_fill CHECK
  [[ -x "$1/kubelet" && -x "$1/kube-proxy" && -x "$1/pause" && -s "$1/pause.oci.tar" ]]
}
if have_all "$DEST"; then echo "$DEST"; exit 0; fi
command -v go >/dev/null || { echo "go (>= 1.26) is required on PATH to build kubelet" >&2; exit 1; }
log() { echo "[build-node] $*" >&2; }

fill_node() {  # STAGE: build what is missing there
  local bin="$1" w="$CACHE/build/kubenode-$KUBE_VERSION" c
  if [[ ! -x "$bin/kubelet" || ! -x "$bin/kube-proxy" ]]; then
    kube_wrapper_module "$w" kubelet kube-proxy
    for c in kubelet kube-proxy; do
      [[ -x "$bin/$c" ]] && continue
      log "building $c $KUBE_VERSION (slow)"
      kube_build "$w" "$c" "$bin"
    done
  fi
  if [[ ! -x "$bin/pause" ]]; then
    log "building the pause program"
    local p="$CACHE/build/pause"
    mkdir -p "$p"
    printf 'module streamherd.local/pause\n\ngo 1.26\n' > "$p/go.mod"
    cat > "$p/main.go" <<'GO'
// pause: the sandbox container's process. It holds the pod's namespaces, reaps the zombies
// re-parented to it (it is PID 1 of the pod when the PID namespace is shared), and exits
// on SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
    (cd "$p" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/pause.tmp" . >&2)
    mv "$bin/pause.tmp" "$bin/pause"
  fi
  python3 "$here/oci_image.py" --binary "$bin/pause" --entrypoint /pause --ref "$PAUSE_REF" \
    --arch "$(go env GOARCH)" --output "$bin/pause.oci.tar.tmp"
  mv "$bin/pause.oci.tar.tmp" "$bin/pause.oci.tar"
}
if [[ "${1:-}" == --fill ]]; then fill_node "$2"; exit 0; fi

cache_fill build-node "$DEST" have_all bash "$here/build-node.sh" --fill || {
  echo "node build incomplete in $DEST.partial" >&2
  exit 1
}
echo "$DEST"
