#!/usr/bin/env bash
# Builds the Kubernetes control plane used by the integration tests from Go modules:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# etcd (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok) and helm, plus kwok-stages.yaml:
# kwok's own default "fast" Stages (node-initialize, node-heartbeat-with-lease, pod-ready,
# pod-complete, pod-delete) taken from the kwok module of the pinned version; the kwok
# controller does nothing to nodes and pods without Stages.
# Output (printed): $STREAMHERD_CACHE/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/
# Re-running is free once the binaries are there; concurrent runs wait for one build.
# Cold: ~20-40 min on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
DEST="$CACHE/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
WANT=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

have_all() {  # DIR: every binary and the stages file are there (the cache_fill CHECK)
  local b
  for b in "${WANT[@]}"; do [[ -x "$1/$b" ]] || return 1; done
  [[ -s "$1/kwok-stages.yaml" ]]
}
if have_all "$DEST"; then echo "$DEST"; exit 0; fi

command -v go >/dev/null || { echo "go (>= 1.26) is required on PATH to build the control plane" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { echo "[build-control-plane] $*" >&2; }
# The build functions write into $BIN: the stage that cache_fill publishes when complete.
BIN=

build_kubernetes() {
  local c missing=0
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN/$c" ]] || missing=1
  done
  ((missing)) || return 0
  local w="$CACHE/build/kubernetes-$KUBE_VERSION"
  kube_wrapper_module "$w" kube-apiserver kube-controller-manager kube-scheduler kubectl
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN/$c" ]] && continue
    log "building $c (slow)"
    kube_build "$w" "$c" "$BIN"
  done
}

build_etcd() {
  [[ -x "$BIN/etcd" ]] && return
  local w="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$w"
  printf 'module streamherd.local/etcdbin\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' "$ETCD_VERSION" > "$w/go.mod"
  log "building etcd $ETCD_VERSION"
  (cd "$w" && go mod tidy >&2 && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

write_kwok_stages() {
  [[ -s "$BIN/kwok-stages.yaml" ]] && return
  local dir
  dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  log "writing kwok stages from $dir"
  {
    echo "# kwok $KWOK_VERSION default stages (kustomize/stage/...), for kwok --config"
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$dir/kustomize/stage/$f"
    done
  } > "$BIN/kwok-stages.yaml.tmp"
  mv "$BIN/kwok-stages.yaml.tmp" "$BIN/kwok-stages.yaml"
}

build_helm() {
  [[ -x "$BIN/helm" ]] && return
  local w="$CACHE/build/helm-$HELM_VERSION" kube ld p
  mkdir -p "$w"
  printf 'module streamherd.local/helmbin\n\ngo 1.26\n\nrequire helm.sh/helm/v3 %s\n\ntool helm.sh/helm/v3/cmd/helm\n' "$HELM_VERSION" > "$w/go.mod"
  log "building helm $HELM_VERSION"
  (cd "$w" && go mod tidy >&2)
  # Stamped like helm's own Makefile does (its version; the default Kubernetes version that
  # `helm template` reports as .Capabilities.KubeVersion, unstamped v1.20), except that the
  # Kubernetes minor is our control plane's, so offline renders match the test cluster.
  kube="${KUBE_VERSION#v1.}"; kube="${kube%%.*}"
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kube"
  done
  (cd "$w" && go build -trimpath -ldflags "$ld" -o "$BIN/helm.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$BIN/helm.tmp" "$BIN/helm"
}

build_simple() {  # name module version package
  [[ -x "$BIN/$1" ]] && return
  log "building $1 $3"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "$4@$3"
}

fill_control_plane() {  # STAGE: build what is missing there (a resumed stage keeps its parts)
  BIN="$1"
  build_etcd
  build_simple kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
  write_kwok_stages
  build_helm
  build_kubernetes
}

# One build per cache, published complete by an atomic rename (cache_fill in lib.sh): a
# concurrent set-up waits and reuses it. The directory the older in-place script filled
# counts as it is when it has every binary.
if [[ "${1:-}" == --fill ]]; then fill_control_plane "$2"; exit 0; fi
cache_fill build-control-plane "$DEST" have_all bash "$here/build-control-plane.sh" --fill || {
  echo "build incomplete in $DEST.partial" >&2
  exit 1
}
echo "$DEST"
