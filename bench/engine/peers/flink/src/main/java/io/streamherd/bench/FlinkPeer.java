package io.streamherd.bench;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.runtime.util.EnvironmentInformation;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * The engine benchmark's reference pipeline as an Apache Flink job on a local MiniCluster,
 * parallelism 1, one run (bench/engine/bench_peers.py).
 *
 * <p>KafkaSource (bounded: from the earliest to the latest offsets at start), watermarks per
 * partition from the event's {@code ts} (monotonous: no out-of-orderness, like the engine's zero
 * lateness), keep {@code status == 200}, key by {@code user}, 60 s tumbling event-time windows,
 * {@code clicks = count}, {@code bytes = sum(bytes)} (an AggregateFunction: one accumulator per
 * window, no buffered elements), one JSON object per closed window to a KafkaSink keyed by the
 * user. Checkpoints every 5 s (heap state, checkpoint files in {@code --checkpoint-dir}); {@code
 * --guarantee at-least-once}: AT_LEAST_ONCE checkpoints and sink; {@code exactly-once}:
 * EXACTLY_ONCE checkpoints and a transactional sink (committed on each checkpoint).
 *
 * <p>Windows close by event time only, with Flink's default event-time trigger: a window fires
 * when the watermark (the smallest over the partitions) passes its end. At the end of the bounded
 * input Flink advances the watermark to +infinity, which fires every window still open: the last
 * ones, which the engine leaves open, and any whose end the periodic watermark had not yet passed
 * when the input ended. The benchmark's comparison (peer_outputs.py) counts the former apart.
 *
 * <p>Prints one JSON line: records, wall and process CPU seconds (every thread of this JVM, the
 * MiniCluster's included) from the first record to the end of the job (its final checkpoint and,
 * exactly-once, the commit of the last transaction), the wall time to the last input record, and
 * the wall time of every 5000 consecutive input records.
 */
public final class FlinkPeer {
  static final int CHUNK = 5000;

  /** The fields of an event the pipeline reads (a Flink POJO); the others are skipped. */
  public static final class Click {
    public String user;
    public int status;
    public long bytes;
    public long ts;

    public Click() {}
  }

  /** A window's accumulator. */
  public static final class Acc {
    public long clicks;
    public long bytes;

    public Acc() {}
  }

  /** One closed window. */
  public static final class Result {
    public String user;
    public long start;
    public long clicks;
    public long bytes;

    public Result() {}
  }

  /**
   * Counts input records and takes the time marks. Static: the MiniCluster runs the job's tasks in
   * this JVM with this class (no user-code jars), and the one source task calls it on one thread.
   */
  static final class Meter {
    static final List<Long> MARKS = new ArrayList<>();
    static long seen;
    static long firstWall;
    static long firstCpu;
    static long lastWall;

    static void record() {
      long now = System.nanoTime();
      if (seen == 0) {
        firstWall = now;
        firstCpu = processCpuNanos();
      }
      seen++;
      lastWall = now;
      if (seen % CHUNK == 0) {
        MARKS.add(now);
      }
    }
  }

  static long processCpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
        .getProcessCpuTime();
  }

  /** JSON value to Click with Jackson (unknown fields skipped), the key left unread. */
  static final class ClickDeserializer implements KafkaRecordDeserializationSchema<Click> {
    private transient ObjectReader reader;

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Click> out)
        throws java.io.IOException {
      if (reader == null) {
        reader =
            new ObjectMapper()
                .readerFor(Click.class)
                .without(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES);
      }
      out.collect(reader.readValue(record.value()));
    }

    @Override
    public TypeInformation<Click> getProducedType() {
      return TypeInformation.of(Click.class);
    }
  }

  /** Count and sum, one accumulator per key and window. */
  static final class CountSum implements AggregateFunction<Click, Acc, Acc> {
    @Override
    public Acc createAccumulator() {
      return new Acc();
    }

    @Override
    public Acc add(Click click, Acc acc) {
      acc.clicks += 1;
      acc.bytes += click.bytes;
      return acc;
    }

    @Override
    public Acc getResult(Acc acc) {
      return acc;
    }

    @Override
    public Acc merge(Acc a, Acc b) {
      a.clicks += b.clicks;
      a.bytes += b.bytes;
      return a;
    }
  }

  /** Adds the key and the window's start to the aggregate. */
  static final class ToResult extends ProcessWindowFunction<Acc, Result, String, TimeWindow> {
    @Override
    public void process(String user, Context context, Iterable<Acc> accs, Collector<Result> out) {
      Acc acc = accs.iterator().next();
      Result result = new Result();
      result.user = user;
      result.start = context.window().getStart();
      result.clicks = acc.clicks;
      result.bytes = acc.bytes;
      out.collect(result);
    }
  }

  /** A closed window as the Kafka record (user, JSON). */
  static final class ResultSerializer implements KafkaRecordSerializationSchema<Result> {
    private final String topic;
    private transient ObjectMapper mapper;

    ResultSerializer(String topic) {
      this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(
        Result result, KafkaSinkContext context, Long timestamp) {
      if (mapper == null) {
        mapper = new ObjectMapper();
      }
      Map<String, Object> row = new LinkedHashMap<>();
      row.put("user", result.user);
      row.put("start", result.start);
      row.put("clicks", result.clicks);
      row.put("bytes", result.bytes);
      try {
        return new ProducerRecord<>(
            topic, result.user.getBytes(StandardCharsets.UTF_8), mapper.writeValueAsBytes(row));
      } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
        throw new IllegalStateException(e);
      }
    }
  }

  static Map<String, String> parseArgs(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      if (!argv[i].startsWith("--")) {
        throw new IllegalArgumentException("expected --name value pairs, got " + argv[i]);
      }
      args.put(argv[i].substring(2), argv[i + 1]);
    }
    for (String name : List.of("bootstrap", "topic", "sink", "checkpoint-dir", "guarantee")) {
      if (!args.containsKey(name)) {
        throw new IllegalArgumentException("--" + name + " is required");
      }
    }
    return args;
  }

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = parseArgs(argv);
    DeliveryGuarantee guarantee =
        switch (args.get("guarantee")) {
          case "at-least-once" -> DeliveryGuarantee.AT_LEAST_ONCE;
          case "exactly-once" -> DeliveryGuarantee.EXACTLY_ONCE;
          default -> throw new IllegalArgumentException("--guarantee: at-least-once|exactly-once");
        };
    String run = UUID.randomUUID().toString().substring(0, 8);
    Map<String, String> conf = new HashMap<>();
    conf.put("parallelism.default", "1");
    conf.put("execution.checkpointing.interval", args.getOrDefault("checkpoint-ms", "5000") + " ms");
    conf.put(
        "execution.checkpointing.mode",
        guarantee == DeliveryGuarantee.EXACTLY_ONCE ? "EXACTLY_ONCE" : "AT_LEAST_ONCE");
    conf.put("state.backend.type", "hashmap");
    conf.put("execution.checkpointing.storage", "filesystem");
    conf.put("execution.checkpointing.dir", "file://" + args.get("checkpoint-dir"));
    StreamExecutionEnvironment env =
        StreamExecutionEnvironment.createLocalEnvironment(Configuration.fromMap(conf));
    env.setParallelism(1);

    KafkaSource<Click> source =
        KafkaSource.<Click>builder()
            .setBootstrapServers(args.get("bootstrap"))
            .setTopics(args.get("topic"))
            .setGroupId("bench-flink-" + run)
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setBounded(OffsetsInitializer.latest())
            .setDeserializer(new ClickDeserializer())
            .build();
    KafkaSink<Result> sink =
        KafkaSink.<Result>builder()
            .setBootstrapServers(args.get("bootstrap"))
            .setRecordSerializer(new ResultSerializer(args.get("sink")))
            .setDeliveryGuarantee(guarantee)
            .setTransactionalIdPrefix("bench-flink-" + run)
            // below the broker's transaction.max.timeout.ms (15 min); Flink's default is 1 h
            .setProperty("transaction.timeout.ms", "300000")
            .build();

    WatermarkStrategy<Click> eventTime =
        WatermarkStrategy.<Click>forMonotonousTimestamps()
            .withTimestampAssigner((click, recordTs) -> click.ts);
    env.fromSource(source, eventTime, "clicks")
        .map(
            click -> {
              Meter.record();
              return click;
            })
        .filter(click -> click.status == 200)
        .keyBy(click -> click.user)
        .window(TumblingEventTimeWindows.of(Duration.ofSeconds(60)))
        .aggregate(new CountSum(), new ToResult())
        .sinkTo(sink);
    env.execute("bench-flink-" + run);
    long end = System.nanoTime();
    long cpu = processCpuNanos();
    if (Meter.seen == 0) {
      throw new IllegalStateException("the job read no record (or ran in another class loader)");
    }
    List<Double> chunks = new ArrayList<>();
    long previous = Meter.firstWall;
    for (long mark : Meter.MARKS) {
      chunks.add((mark - previous) / 1e9);
      previous = mark;
    }
    Map<String, Object> result = new LinkedHashMap<>();
    result.put("records", Meter.seen);
    result.put("wall", (end - Meter.firstWall) / 1e9);
    result.put("wall_in", (Meter.lastWall - Meter.firstWall) / 1e9);
    result.put("cpu", (cpu - Meter.firstCpu) / 1e9);
    result.put("chunks", chunks);
    result.put(
        "versions",
        Map.of(
            "flink", EnvironmentInformation.getVersion(),
            "java", System.getProperty("java.version")));
    System.out.println(new ObjectMapper().writeValueAsString(result));
  }
}
