"""A window that trusts its topic's keying, on the real broker, fed records with and without
a Kafka key: the keyed ones give exactly one right result per (user, window), and each keyless
one (placed anywhere, as a producer's partitioner places it) is dead-lettered as ``unkeyed``
with its origin, not folded into a partial result of whatever partition it landed in.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import WINDOW_MS, Worker, iso, pipeline_config
from tests.integration.engine.test_engine_repartition import check, page_clicks, sink_windows

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 3


def test_a_trusted_keying_dead_letters_the_records_produced_without_a_key(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("clicks"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("users"), 2)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1)
    # keyBy user, no repartition topic: the window trusts that the topic is keyed by user.
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=dlq, group=f"g-{src}", checkpoints=tmp_path / "ck"
    )
    records = list(page_clicks(0, 3000))
    keyed, keyless = records[::3], [rec for i, (_, rec) in enumerate(records) if i % 3]
    kafka_broker.produce(src, keyed)  # (user, record): the partitioner places them by user
    for p in range(PARTITIONS):  # bare values: no key, one user's records in every partition
        kafka_broker.produce(src, keyless[p::PARTITIONS], partition=p)
    last = records[-1][1]["ts"] + 86_400_000
    for p in range(PARTITIONS):  # every earlier window closes on every partition
        flush = {"id": -1, "user": "zz-flush", "page": "-", "bytes": 0, "ts": last}
        kafka_broker.produce(src, [("zz-flush", flush)], partition=p)

    expected: dict[str, dict[str, int]] = {}
    for user, rec in keyed:
        row = expected.setdefault(
            f"{user}|{iso(rec['ts'] - rec['ts'] % WINDOW_MS)}", {"clicks": 0, "bytes": 0}
        )
        row["clicks"] += 1
        row["bytes"] += rec["bytes"]

    worker = Worker.create(tmp_path, "w", config).start()
    try:
        got, written = sink_windows(kafka_broker, sink, expected, "every window", 120, [worker])
        check(got, expected)
        assert set(written.values()) == {1}, "a window was written twice"
        dead = kafka_broker.consume_all(dlq, timeout=60)
        assert len(dead) == len(keyless)
        reasons = Counter(dict(r.headers)["streamherd.error.reason"] for r in dead)
        assert reasons == {b"unkeyed": len(keyless)}
        assert sorted(r.json()["id"] for r in dead) == sorted(rec["id"] for rec in keyless)
        message = dict(dead[0].headers)["streamherd.error.message"] or b""
        assert b"no Kafka key" in message and b"repartition: always" in message
    finally:
        worker.stop()
