package io.streamherd.bench;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.AppInfoParser;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * The engine benchmark's reference pipeline on Kafka Streams, one run (bench/engine/bench_peers.py).
 *
 * <p>JSON click events keyed by user: keep {@code status == 200}, a 60 s tumbling window per key
 * (the record key, which the producer set to the event's user: no repartition) with event time
 * from {@code ts} and no grace, {@code clicks = count}, {@code bytes = sum(bytes)}; only closed
 * windows go out ({@code suppress(untilWindowCloses)}), as one JSON object per window keyed by the
 * user. State: Kafka Streams' defaults (RocksDB window store with its changelog topic, the
 * suppression buffer with its own). One stream thread; commits every {@code --commit-ms}.
 *
 * <p>It stops after {@code --records} input records (counted before the filter), closes the
 * application (final commit), and prints one JSON line: records, wall and process CPU seconds
 * (every thread of this JVM) from the first record to the end of {@code close()}, the wall time to
 * the last input record, and the wall time of every 5000 consecutive input records.
 */
public final class KafkaStreamsPeer {
  static final int CHUNK = 5000;

  /** The fields of an event the pipeline reads; the others are skipped by the parser. */
  public static final class Click {
    public int status;
    public long bytes;
    public long ts;
  }

  /** A window's accumulator: count and sum. */
  record Agg(long clicks, long bytes) {}

  /** Counts input records and takes the time marks; called on the one stream thread. */
  static final class Meter {
    final long target;
    final CountDownLatch done = new CountDownLatch(1);
    final List<Long> marks = new ArrayList<>();
    long seen;
    long firstWall;
    long firstCpu;
    long lastWall;

    Meter(long target) {
      this.target = target;
    }

    void record() {
      long now = System.nanoTime();
      if (seen == 0) {
        firstWall = now;
        firstCpu = processCpuNanos();
      }
      seen++;
      lastWall = now;
      if (seen % CHUNK == 0) {
        marks.add(now);
      }
      if (seen == target) {
        done.countDown();
      }
    }
  }

  static long processCpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
        .getProcessCpuTime();
  }

  static Map<String, String> parseArgs(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      if (!argv[i].startsWith("--")) {
        throw new IllegalArgumentException("expected --name value pairs, got " + argv[i]);
      }
      args.put(argv[i].substring(2), argv[i + 1]);
    }
    for (String name : List.of("bootstrap", "topic", "sink", "records", "state-dir", "guarantee")) {
      if (!args.containsKey(name)) {
        throw new IllegalArgumentException("--" + name + " is required");
      }
    }
    return args;
  }

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = parseArgs(argv);
    String guarantee = args.get("guarantee");
    if (!guarantee.equals(StreamsConfig.AT_LEAST_ONCE)
        && !guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2)) {
      throw new IllegalArgumentException("--guarantee: at_least_once or exactly_once_v2");
    }
    Meter meter = new Meter(Long.parseLong(args.get("records")));
    ObjectMapper mapper = new ObjectMapper();
    ObjectReader clickReader =
        mapper.readerFor(Click.class).without(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES);

    Deserializer<Click> clickDeserializer =
        (topic, data) -> {
          try {
            return clickReader.readValue(data);
          } catch (IOException e) {
            throw new UncheckedIOException(e);
          }
        };
    Serializer<Click> noClickSerializer =
        (topic, click) -> {
          throw new UnsupportedOperationException("clicks are only read");
        };
    Serde<Click> clickSerde = Serdes.serdeFrom(noClickSerializer, clickDeserializer);
    Serializer<Agg> aggSerializer =
        (topic, agg) -> ByteBuffer.allocate(16).putLong(agg.clicks()).putLong(agg.bytes()).array();
    Deserializer<Agg> aggDeserializer =
        (topic, data) -> {
          ByteBuffer buffer = ByteBuffer.wrap(data);
          return new Agg(buffer.getLong(), buffer.getLong());
        };
    Serde<Agg> aggSerde = Serdes.serdeFrom(aggSerializer, aggDeserializer);
    TimestampExtractor eventTime = (record, partitionTime) -> ((Click) record.value()).ts;

    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(
            args.get("topic"),
            Consumed.with(Serdes.String(), clickSerde).withTimestampExtractor(eventTime))
        .peek((user, click) -> meter.record())
        .filter((user, click) -> click.status == 200)
        .groupByKey()
        .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofSeconds(60)))
        .aggregate(
            () -> new Agg(0, 0),
            (user, click, agg) -> new Agg(agg.clicks() + 1, agg.bytes() + click.bytes),
            Materialized.with(Serdes.String(), aggSerde))
        .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
        .toStream()
        .map(
            (window, agg) -> {
              Map<String, Object> row = new LinkedHashMap<>();
              row.put("user", window.key());
              row.put("start", window.window().start());
              row.put("clicks", agg.clicks());
              row.put("bytes", agg.bytes());
              try {
                return KeyValue.pair(window.key(), mapper.writeValueAsString(row));
              } catch (IOException e) {
                throw new UncheckedIOException(e);
              }
            })
        .to(args.get("sink"), Produced.with(Serdes.String(), Serdes.String()));

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, "bench-ks-" + UUID.randomUUID());
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
    // Both guarantees commit every 5 s, like the engine's checkpoints (exactly_once_v2 would
    // default to 100 ms: far more transactions for the same work).
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, args.getOrDefault("commit-ms", "5000"));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    props.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

    AtomicReference<Throwable> failure = new AtomicReference<>();
    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    streams.setUncaughtExceptionHandler(
        error -> {
          failure.set(error);
          meter.done.countDown();
          return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
    streams.start();
    if (!meter.done.await(Long.parseLong(args.getOrDefault("timeout-s", "7200")), TimeUnit.SECONDS)) {
      throw new IllegalStateException("timed out after " + meter.seen + " records");
    }
    if (!streams.close(Duration.ofMinutes(5))) {
      throw new IllegalStateException("Kafka Streams did not close in 5 minutes");
    }
    long end = System.nanoTime();
    long cpu = processCpuNanos();
    if (failure.get() != null) {
      throw new IllegalStateException("the stream thread failed", failure.get());
    }
    List<Double> chunks = new ArrayList<>();
    long previous = meter.firstWall;
    for (long mark : meter.marks) {
      chunks.add((mark - previous) / 1e9);
      previous = mark;
    }
    Map<String, Object> result = new LinkedHashMap<>();
    result.put("records", meter.seen);
    result.put("wall", (end - meter.firstWall) / 1e9);
    result.put("wall_in", (meter.lastWall - meter.firstWall) / 1e9);
    result.put("cpu", (cpu - meter.firstCpu) / 1e9);
    result.put("chunks", chunks);
    result.put(
        "versions",
        Map.of(
            "kafka-streams", AppInfoParser.getVersion(),
            "java", System.getProperty("java.version")));
    System.out.println(mapper.writeValueAsString(result));
  }
}
