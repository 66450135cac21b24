"""The benchmark's reference pipeline written with Quix Streams (the peer), one run.

Run by bench/engine/bench_engine.py with the Python of Quix Streams' OWN virtualenv
(~/.cache/streamherd/venv-quix: quixstreams 3.28.1 pins an older confluent-kafka than
streamherd, see ../shared/RECIPES.md §3), so this file must not import streamherd.

The pipeline is the one the streamherd engine runs in the benchmark: JSON values, keep
``status == 200``, a 60 s tumbling window keyed by the Kafka key (the producer keys every
event by its ``user``, which is what the engine's ``keyBy: user`` groups on) with event
time from the ``ts`` field and no grace period, aggregates ``clicks = count`` and
``bytes = sum(bytes)``, closed windows (``.final()``) to a Kafka topic, commits every 5 s.
Quix keeps its window state in RocksDB and, by default, a changelog topic (its recovery
mechanism, the counterpart of streamherd's checkpoint files); ``--no-changelog`` turns the
changelog off to measure Quix's lightest configuration; ``--exactly-once`` sets Quix's
``processing_guarantee="exactly-once"`` (its outputs, changelog and offsets in one Kafka
transaction per commit) instead of its default at-least-once.

It stops after ``--records`` input records and prints one JSON line: records, wall and
process CPU seconds from the first record to the end of ``app.run()`` (final commit
included), and the wall time of every 5000 consecutive records (Quix has no batches).

    venv-quix/bin/python bench/engine/quix_pipeline.py --bootstrap H:P --topic IN \
        --sink OUT --records 2000000 --state-dir DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from importlib.metadata import version
from typing import Any

import confluent_kafka
from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum

CHUNK = 5000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--no-changelog", action="store_true")
    parser.add_argument("--exactly-once", action="store_true")
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        commit_interval=5.0,
        state_dir=args.state_dir,
        use_changelog_topics=not args.no_changelog,
        processing_guarantee="exactly-once" if args.exactly_once else "at-least-once",
        loglevel=logging.WARNING,
    )

    def event_time(value: Any, _headers: Any, _timestamp: float, _kind: Any) -> int:
        return int(value["ts"])

    source = app.topic(args.topic, value_deserializer="json", timestamp_extractor=event_time)
    sink = app.topic(args.sink, value_serializer="json")

    seen = 0
    marks: list[float] = []
    first: list[float] = []

    def count(_value: Any) -> None:
        # Input counter (before the filter): stops the app once every record was read.
        nonlocal seen
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        seen += 1
        if seen % CHUNK == 0:
            marks.append(time.perf_counter())
        if seen >= args.records:
            app.stop()

    sdf = app.dataframe(source)
    sdf = sdf.update(count)
    sdf = sdf.filter(lambda value: value["status"] == 200)
    sdf = (
        sdf.tumbling_window(duration_ms=60_000, grace_ms=0)
        .agg(clicks=Count(), bytes=Sum("bytes"))
        .final()
    )
    sdf = sdf.to_topic(sink)  # Quix operations return a new frame: keep it
    app.run()
    wall = time.perf_counter() - first[0]
    cpu = time.process_time() - first[1]
    chunks = [b - a for a, b in zip([first[0], *marks], marks, strict=False)]
    print(
        json.dumps(
            {
                "records": seen,
                "wall": wall,
                "cpu": cpu,
                "chunks": chunks,
                "versions": {
                    "quixstreams": version("quixstreams"),
                    "confluent-kafka": version("confluent-kafka"),
                    "librdkafka": confluent_kafka.libversion()[0],
                    "python": sys.version.split()[0],
                },
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
