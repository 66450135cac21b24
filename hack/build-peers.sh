#!/usr/bin/env bash
# Builds the JVM peers of the engine benchmark (bench/engine/peers: Kafka Streams at the
# broker's $KAFKA_VERSION, Apache Flink with its Kafka connector) with Maven into the cache,
# and prints the directory that holds them: DIR/kafka-streams/{peer.jar,lib/} and
# DIR/flink/{peer.jar,lib/}. Needs Java 17+ and Maven. Progress goes to stderr.
#
# Two cache entries, each filled once under a lock and published by one rename (cache_fill
# in lib.sh), so concurrent runs wait for one fill and nobody sees half of one:
# - $CACHE/maven-peers-<hash of the poms and KAFKA_VERSION>: the Maven repository with every
#   dependency and plugin the build needs (filled by one online build);
# - $CACHE/engine-peers-<hash of bench/engine/peers and KAFKA_VERSION>: the built jars, from
#   an offline build against that repository. Editing a source rebuilds only this one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
SRC="$(cd "$here/../bench/engine/peers" && pwd)"

# digest FILE...: a short content hash of the files (names included) and KAFKA_VERSION.
digest() {
  { echo "kafka=$KAFKA_VERSION"; for f in "$@"; do echo "== ${f#"$SRC"/}"; cat "$f"; done; } \
    | sha256sum | cut -c1-12
}
mapfile -t poms < <(cd "$SRC" && find . -name pom.xml -not -path '*/target/*' | sort)
mapfile -t sources < <(cd "$SRC" && find . -type f \( -name pom.xml -o -name '*.java' \) \
  -not -path '*/target/*' | sort)
REPO="$CACHE/maven-peers-$(cd "$SRC" && digest "${poms[@]}")"
DIR="$CACHE/engine-peers-$(cd "$SRC" && digest "${sources[@]}")"

# build SRC_COPY REPO [mvn flags...]: package every module of a copy of the project.
build() {
  local copy="$1" repo="$2"
  shift 2
  mvn -B -q -Dstyle.color=never -f "$copy/pom.xml" -Dmaven.repo.local="$repo" -Dkafka.version="$KAFKA_VERSION" \
    "$@" package >&2
}

fill_repo() {  # STAGE: resolve everything the build needs into STAGE/repository
  local stage="$1" work
  command -v mvn >/dev/null || { echo "maven is required" >&2; return 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  cp -r "$SRC" "$work/peers"
  # Seeded with hard links from an older complete repository, if any: a version bump then
  # downloads only what changed. Maven replaces files, never writes into them.
  if [[ ! -d "$stage/repository" ]]; then
    local old
    for old in "$CACHE"/maven-peers-*/.complete; do
      [[ -e "$old" ]] || continue
      echo "[build-peers] seeding $stage from ${old%/.complete}" >&2
      cp -al "${old%/.complete}/repository" "$stage/repository"
      break
    done
  fi
  echo "[build-peers] resolving the peers' dependencies from Maven Central into $stage" >&2
  # Maven resumes in a stage a killed fill left: what it holds is not downloaded again.
  build "$work/peers" "$stage/repository"
  touch "$stage/.complete"
}

fill_jars() {  # STAGE: build offline against the resolved repository, keep jar + lib/
  local stage="$1" work m
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  cp -r "$SRC" "$work/peers"
  echo "[build-peers] building the Kafka Streams and Flink peers into $stage" >&2
  build "$work/peers" "$REPO/repository" -o
  for m in kafka-streams flink; do
    rm -rf "${stage:?}/$m"
    mkdir -p "$stage/$m"
    cp "$work/peers/$m/target/"*-peer-1.jar "$stage/$m/peer.jar"
    cp -r "$work/peers/$m/target/lib" "$stage/$m/lib"
  done
  touch "$stage/.complete"
}

case "${1:-}" in
  --fill-repo) fill_repo "$2"; exit 0 ;;
  --fill-jars) fill_jars "$2"; exit 0 ;;
esac
cache_fill build-peers "$REPO" has_marker bash "$here/build-peers.sh" --fill-repo
cache_fill build-peers "$DIR" has_marker bash "$here/build-peers.sh" --fill-jars
echo "$DIR"
