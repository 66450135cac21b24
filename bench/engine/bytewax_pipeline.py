"""The benchmark's reference pipeline written with Bytewax (a peer), one run.

Run by bench/engine/bench_peers.py with the Python of Bytewax's OWN virtualenv
(~/.cache/streamherd/venv-bytewax-<version>, created by bench_peers.py), so this file must not
import streamherd.

The pipeline is the one the engine runs in the benchmark: Bytewax's Kafka input (one
librdkafka consumer per partition, read to the end of each partition as it was at start:
``tail=False``), JSON values parsed with orjson, keep ``status == 200``, keyed by the Kafka key
(the producer keys every event by its ``user``), a 60 s tumbling window aligned to the epoch
with event time from ``ts``, ``clicks = count`` and ``bytes = sum(bytes)`` folded in one
accumulator, closed windows to Kafka (Bytewax's Kafka output) as
``{"user", "start", "clicks", "bytes"}`` keyed by the user. One worker. Recovery on: the
state and the input offsets are snapshotted into a local recovery database every 5 s (the
epoch), the counterpart of the engine's checkpoints; with it Bytewax's output is
at-least-once (it has no transactional output).

Event time only: the clock's "system time" never advances (``now_getter`` is constant, and
``to_system_utc`` returns None so the runtime never wakes up to close windows by the wall
clock), so a window closes when an event of its key passes its end, with no waiting
(``wait_for_system_duration=0``, the engine's zero lateness). Bytewax's default system clock
would move the watermark on with the wall clock between two events of a key, which on a
replay running ~10x faster than event time is harmless until the process stalls for a
second, when it would drop the key's next event as late. At the end of its input Bytewax
closes every window, including the last ones, which the engine leaves open (the comparison
in peer_outputs.py accounts for them).

``--records N`` reads the first N records of the topic: each partition up to its share of N
(in proportion to its size), by a thin wrapper around Bytewax's Kafka partitions that ends a
partition at that offset (one comparison per input batch); without it, the whole topic.

It prints one JSON line: records, wall and process CPU seconds (all threads) from the first
record to the end of the dataflow (its last snapshot and output flush included), the wall
time to the last input record, and the wall time of every 5000 consecutive input records.

    venv-bytewax/bin/python bench/engine/bytewax_pipeline.py --bootstrap H:P --topic IN \
        --sink OUT --recovery-dir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import bytewax.inputs
import bytewax.operators as op
import bytewax.operators.windowing as win
import confluent_kafka
import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import Consumer, TopicPartition

CHUNK = 5000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


class Meter:
    """Counts input records (one call per input batch) and takes the time marks."""

    def __init__(self) -> None:
        self.seen = 0
        self.first: tuple[float, float] | None = None
        self.last = 0.0
        self.marks: list[float] = []

    def __call__(self, batch: list[Any]) -> list[Any]:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, time.process_time())
        before = self.seen
        self.seen += len(batch)
        self.last = now
        self.marks.extend([now] * (self.seen // CHUNK - before // CHUNK))
        return batch


def prefix_ends(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    """Per partition, the offset where the first ``n`` records of the topic end (each
    partition's share in proportion to its size; the shares add up to ``n``)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bytewax-ends"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in sorted(partitions)
        }
    finally:
        consumer.close()
    total = sum(high - low for low, high in marks.values())
    if n >= total:
        return {p: high for p, (_, high) in marks.items()}
    ends, given = {}, 0
    for p, (low, high) in marks.items():
        share = n * (high - low) // total
        ends[p], given = low + share, given + share
    for p in list(ends)[: n - given]:  # the rounding remainder, one record each
        ends[p] += 1
    return ends


class _PrefixPartition(bytewax.inputs.StatefulSourcePartition[Any, Any]):
    """One of Bytewax's Kafka partitions, ended at an offset."""

    def __init__(self, inner: Any, end: int) -> None:
        self.inner, self.end, self.done = inner, end, False

    def next_batch(self) -> list[Any]:
        if self.done:
            raise StopIteration
        batch = self.inner.next_batch()
        if batch and batch[-1].offset >= self.end - 1:
            self.done = True
            return [m for m in batch if m.offset < self.end]
        return batch

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()  # type: ignore[no-any-return]

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class PrefixKafkaSource(KafkaSource):
    """Bytewax's Kafka input, reading each partition up to a given offset."""

    def __init__(self, ends: dict[int, int], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ends = ends

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        part = super().build_part(step_id, for_part, resume_state)
        return _PrefixPartition(part, self.ends[int(for_part.split("-", 1)[0])])


def build(args: argparse.Namespace, meter: Meter) -> Dataflow:
    flow = Dataflow("bench")
    if args.records:
        ends = prefix_ends(args.bootstrap, args.topic, args.records)
        source = PrefixKafkaSource(ends, [args.bootstrap], [args.topic], tail=False)
    else:
        source = KafkaSource([args.bootstrap], [args.topic], tail=False)
    messages = op.input("in", flow, source)
    counted = op.flat_map_batch("count", messages, meter)

    def decode(message: Any) -> tuple[str, tuple[datetime, int]] | None:
        event = orjson.loads(message.value)
        if event["status"] != 200:
            return None
        return message.key.decode(), (EPOCH + timedelta(milliseconds=event["ts"]), event["bytes"])

    keyed = op.filter_map("decode", counted, decode)
    frozen = datetime(2000, 1, 1, tzinfo=UTC)
    clock = win.EventClock(
        ts_getter=lambda click: click[0],
        wait_for_system_duration=timedelta(0),
        now_getter=lambda: frozen,
        to_system_utc=lambda _close: None,
    )
    windower = win.TumblingWindower(length=WINDOW, align_to=EPOCH)

    def fold(acc: list[int], click: tuple[datetime, int]) -> list[int]:
        acc[0] += 1
        acc[1] += click[1]
        return acc

    def merge(a: list[int], b: list[int]) -> list[int]:
        return [a[0] + b[0], a[1] + b[1]]

    windows = win.fold_window("window", keyed, clock, windower, lambda: [0, 0], fold, merge)

    def message(user_window: tuple[str, tuple[int, list[int]]]) -> KafkaSinkMessage[bytes, bytes]:
        user, (window_id, (clicks, total)) = user_window
        start = window_id * int(WINDOW.total_seconds() * 1000)
        row = {"user": user, "start": start, "clicks": clicks, "bytes": total}
        return KafkaSinkMessage(user.encode(), orjson.dumps(row))

    out = op.map("out", windows.down, message)
    op.output("sink", out, KafkaSink([args.bootstrap], args.sink))
    return flow


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--recovery-dir", required=True)
    parser.add_argument("--records", type=int, default=0, help="the first N records (0: all)")
    parser.add_argument("--snapshot-seconds", type=float, default=5.0)
    args = parser.parse_args()

    recovery = Path(args.recovery_dir)
    recovery.mkdir(parents=True, exist_ok=True)
    init_db_dir(recovery, 1)
    meter = Meter()
    cli_main(
        build(args, meter),
        workers_per_process=1,
        epoch_interval=timedelta(seconds=args.snapshot_seconds),
        recovery_config=RecoveryConfig(recovery),
    )
    end = time.perf_counter()
    cpu = time.process_time()
    if meter.first is None:
        raise SystemExit("the dataflow read no record")
    chunks = [b - a for a, b in zip([meter.first[0], *meter.marks], meter.marks, strict=False)]
    print(
        json.dumps(
            {
                "records": meter.seen,
                "wall": end - meter.first[0],
                "wall_in": meter.last - meter.first[0],
                "cpu": cpu - meter.first[1],
                "chunks": chunks,
                "versions": {
                    "bytewax": version("bytewax"),
                    "confluent-kafka": version("confluent-kafka"),
                    "librdkafka": confluent_kafka.libversion()[0],
                    "orjson": orjson.__version__,
                    "python": sys.version.split()[0],
                },
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
