#!/usr/bin/env bash
# Fetches an Apache Kafka broker (KRaft) from Maven Central jars into the cache:
# $STREAMHERD_CACHE/kafka-$KAFKA_VERSION/libs/*.jar. Prints that libs directory.
# Needs Java 17+ and Maven. Re-running is free once the jars are there; concurrent runs
# wait for one fill (cache_fill in lib.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
DIR="$CACHE/kafka-$KAFKA_VERSION"

fill_kafka() {  # STAGE: resolve the broker's jars into STAGE/libs, then mark it complete
  local stage="$1"
  command -v mvn >/dev/null || { echo "maven is required" >&2; return 1; }
  cat > "$stage/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.streamherd.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  echo "[fetch-kafka] resolving kafka_2.13:$KAFKA_VERSION from Maven Central" >&2
  # The stage is ours alone (cache_fill holds the lock): a half-copied libs/ is redone.
  rm -rf "$stage/libs"
  mvn -B -q -f "$stage/pom.xml" dependency:copy-dependencies -DoutputDirectory="$stage/libs" \
    -DincludeScope=runtime >&2
  touch "$stage/.complete"
}

if [[ "${1:-}" == --fill ]]; then fill_kafka "$2"; exit 0; fi
# Under a lock, published by an atomic rename: see cache_fill in lib.sh. A directory left by
# the older in-place script counts when it has its .complete marker.
cache_fill fetch-kafka "$DIR" has_marker bash "$here/fetch-kafka.sh" --fill
echo "$DIR/libs"
