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
