#!/usr/bin/env bash
# Builds the Kubernetes control plane used by the integration tests from Go modules:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# etcd (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok) and helm, plus kwok-stages.yaml:
# kwok's own default "fast" Stages (node-initialize, node-heartbeat-with-lease, pod-ready,
# pod-complete, pod-delete) taken from the kwok module of the pinned version; the kwok
# controller does nothing to nodes and pods without Stages.
# Output: $STREAMHERD_CACHE/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/
# Re-running is free once the binaries are there. Cold: ~20-40 min on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
BIN="$CACHE/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
WANT=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

have_all() {
  for b in "${WANT[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  [[ -s "$BIN/kwok-stages.yaml" ]]
}
if have_all; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "go (>= 1.26) is required on PATH to build the control plane" >&2; exit 1; }
mkdir -p "$BIN"
# One build at a time per cache (parallel test sessions, make -j): wait for the other one.
exec 9>"$CACHE/bin/.build.lock"
flock 9
if have_all; then echo "$BIN"; exit 0; fi
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { echo "[build-control-plane] $*" >&2; }

build_kubernetes() {
  local c missing=0
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN/$c" ]] || missing=1
  done
  ((missing)) || return 0
  local w="$CACHE/build/kubernetes-$KUBE_VERSION"
  mkdir -p "$w"
  local mod
  mod="$(cd "$w" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  {
    echo "module streamherd.local/kubebins"
    grep -m1 '^go ' "$mod"
    grep -m1 '^godebug ' "$mod" || true
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo "replace ("
    # every staging module at the matching published version (v0.<minor>.<patch>)
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$mod" | while read -r m; do
      echo "  $m => $m v0.${KUBE_VERSION#v1.}"
    done
    echo ")"
    echo "tool ("
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do echo "  k8s.io/kubernetes/cmd/$c"; done
    echo ")"
  } > "$w/go.mod"
  log "resolving k8s.io/kubernetes $KUBE_VERSION modules"
  (cd "$w" && go mod tidy >&2)
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$BIN/$c" ]] && continue
    log "building $c (slow)"
    (cd "$w" && go build -trimpath -ldflags "$ld" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c" && mv "$BIN/$c.tmp" "$BIN/$c")
  done
}

build_etcd() {
  [[ -x "$BIN/etcd" ]] && return
  local w="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$w"
  printf 'module streamherd.local/etcdbin\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' "$ETCD_VERSION" > "$w/go.mod"
  log "building etcd $ETCD_VERSION"
  (cd "$w" && go mod tidy >&2 && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
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

build_etcd
build_simple kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
write_kwok_stages
build_helm
build_kubernetes
have_all || { echo "build incomplete in $BIN" >&2; exit 1; }
echo "$BIN"
