#!/usr/bin/env bash
# Fetches Apache Kafka's command-line tools (org.apache.kafka:kafka-tools: ConsumerGroupCommand,
# what kafka-consumer-groups.sh runs) from Maven Central jars into the cache:
# $STREAMHERD_CACHE/kafka-tools-$KAFKA_VERSION/libs/*.jar. Prints that libs directory.
# The broker's jars (hack/fetch-kafka.sh) do not hold them since Kafka 4. Used by the tests
# that reset a consumer group's offsets the way an operator of Kafka would.
# Needs Java 17+ and Maven. Re-running is free once the jars are there; concurrent runs wait
# for each other (flock) and the directory appears whole or not at all (rename).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
DIR="$CACHE/kafka-tools-$KAFKA_VERSION"
if [[ -f "$DIR/.complete" ]]; then echo "$DIR/libs"; exit 0; fi
command -v mvn >/dev/null || { echo "maven is required" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.kafka-tools.lock"
flock 9
if [[ -f "$DIR/.complete" ]]; then echo "$DIR/libs"; exit 0; fi
tmp="$(mktemp -d "$CACHE/.kafka-tools.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.streamherd.test</groupId>
  <artifactId>kafka-tools</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
echo "[fetch-kafka-tools] resolving kafka-tools:$KAFKA_VERSION from Maven Central" >&2
mvn -B -q -f "$tmp/pom.xml" dependency:copy-dependencies -DoutputDirectory="$tmp/libs" -DincludeScope=runtime >&2
touch "$tmp/.complete"
rm -rf "$DIR"
mv "$tmp" "$DIR"
trap - EXIT
echo "$DIR/libs"
