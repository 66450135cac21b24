#!/usr/bin/env bash
# Fetches an Apache Kafka broker (KRaft) from Maven Central jars into the cache:
# $STREAMHERD_CACHE/kafka-$KAFKA_VERSION/libs/*.jar. Prints that libs directory.
# Needs Java 17+ and Maven. Re-running is free once the jars are there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${STREAMHERD_CACHE:-$HOME/.cache/streamherd}"
DIR="$CACHE/kafka-$KAFKA_VERSION"
if [[ -f "$DIR/.complete" ]]; then echo "$DIR/libs"; exit 0; fi
command -v mvn >/dev/null || { echo "maven is required" >&2; exit 1; }
mkdir -p "$DIR"
cat > "$DIR/pom.xml" <<POM
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
rm -rf "$DIR/libs"
mvn -B -q -f "$DIR/pom.xml" dependency:copy-dependencies -DoutputDirectory="$DIR/libs" -DincludeScope=runtime >&2
touch "$DIR/.complete"
echo "$DIR/libs"
