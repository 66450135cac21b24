# Shared by the hack/ scripts and .ci/run; source it (`. hack/lib.sh`), do not run it.
# Functions only: sourcing it changes no shell option and runs nothing.

# apt_install LABEL PACKAGE...: install Debian packages quietly, without their recommended
# packages, when we are root on a machine with apt-get (CI's fresh machines); progress goes
# to stderr so a script's stdout stays its answer. Returns 1, installing nothing, elsewhere.
apt_install() {
  local label="$1"
  shift
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  echo "[$label] installing Debian's $*" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    </dev/null >&2
}

# find_or_install LABEL FINDER PACKAGE HINT [--install]: print what the function FINDER
# prints when it succeeds; else, with --install, install PACKAGE and look again; else say
# HINT on stderr and fail. The find-*.sh scripts end with it.
find_or_install() {
  local label="$1" finder="$2" package="$3" hint="$4" flag="${5:-}"
  if "$finder"; then return 0; fi
  if [[ "$flag" == "--install" ]] && apt_install "$label" "$package"; then
    "$finder" && return 0
  fi
  echo "$hint" >&2
  return 1
}

# cache_fill LABEL DEST CHECK FILL...: make the cache entry DEST complete, once per cache,
# however many set-ups (CI runs, test sessions, make -j) ask for it at the same time.
# CHECK DIR (a function) succeeds when DIR holds a complete fill; the command FILL... STAGE
# fills STAGE. FILL must be a program, not a function (the scripts re-run themselves with
# --fill): bash ignores `set -e` inside a function whose caller tests its status, so a failed
# step in a function would go on and could mark a broken fill complete.
# - DEST complete: return at once (the common, warm case takes no lock).
# - Else take an exclusive flock on DEST.lock (a second set-up waits here, then finds DEST
#   complete and reuses it), run FILL into the stage DEST.partial and publish it with one
#   rename, so DEST is either absent or complete: nobody ever reads a half-filled DEST.
# - The stage survives a killed or failed fill, and the next fill resumes in it (FILL must be
#   idempotent: skip what is there). An incomplete DEST left by an older script that wrote in
#   place becomes the stage, so its finished parts are kept.
# Progress goes to stderr; returns FILL's failure, or 1 if CHECK still fails after FILL.
cache_fill() {
  local label="$1" dest="$2" check="$3"
  shift 3
  if "$check" "$dest"; then return 0; fi
  mkdir -p "$(dirname "$dest")"
  local fd rc=0
  exec {fd}>"$dest.lock"
  if ! flock -n "$fd"; then
    echo "[$label] another set-up is filling $dest: waiting for it" >&2
    flock "$fd"
  fi
  if "$check" "$dest"; then exec {fd}>&-; return 0; fi
  local stage="$dest.partial"
  if [[ -e "$dest" ]]; then
    if [[ -e "$stage" ]]; then rm -rf "$dest"; else mv -T "$dest" "$stage"; fi
  fi
  mkdir -p "$stage"
  "$@" "$stage" >&2 || rc=$?
  if ((rc == 0)) && "$check" "$stage"; then
    mv -T "$stage" "$dest"
  elif ((rc == 0)); then
    echo "[$label] the fill of $dest finished but is incomplete (kept in $stage)" >&2
    rc=1
  fi
  exec {fd}>&-
  return "$rc"
}

# has_marker DIR: the default CHECK for cache_fill: DIR/.complete exists (FILL writes it last).
has_marker() { [[ -f "$1/.complete" ]]; }

# kube_wrapper_module DIR CMD...: write DIR/go.mod, a wrapper module that builds the
# k8s.io/kubernetes commands CMD... at $KUBE_VERSION (versions.env): every staging module
# pinned to its published version v0.<minor>.<patch>, the commands as `tool` lines, and
# resolve it (go mod tidy). Needs go on PATH.
kube_wrapper_module() {
  local w="$1" mod c
  shift
  mkdir -p "$w"
  mod="$(cd "$w" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module streamherd.local/kubebins"
    grep -m1 '^go ' "$mod"
    grep -m1 '^godebug ' "$mod" || true
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$mod" | while read -r m; do
      echo "  $m => $m v0.${KUBE_VERSION#v1.}"
    done
    echo ")"
    echo "tool ("
    for c in "$@"; do echo "  k8s.io/kubernetes/cmd/$c"; done
    echo ")"
  } > "$w/go.mod"
  echo "[kube] resolving k8s.io/kubernetes $KUBE_VERSION modules in $w" >&2
  (cd "$w" && go mod tidy >&2)
}

# kube_build DIR CMD OUTDIR: build k8s.io/kubernetes/cmd/CMD in the wrapper module DIR into
# OUTDIR/CMD (static, stamped with $KUBE_VERSION like the release binaries' version output).
kube_build() {
  local w="$1" c="$2" out="$3" minor ld p
  minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  (cd "$w" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags "$ld" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c" >&2)
  mv "$out/$c.tmp" "$out/$c"
}
