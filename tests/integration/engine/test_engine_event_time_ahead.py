"""A record with a wrong clock, on the real broker: its event time ten years ahead (a
mistyped year) of its partition's records and of its own Kafka timestamp, produced in the
middle of every partition. With eventTime.maxAhead set (168h) it is dead-lettered (reason
``expression``, ``EventTimeAheadError``) and every window is exactly what the records without
it give; folded, it would close every open window and make the second half of each partition
late. Both routes: a window that trusts the topic's keying, and one behind a repartition
topic (the upstream judges it, before the repartition topic carries its time)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, clicks, pipeline_config, reference
from tests.integration.engine.test_engine_repartition import (
    PARTITIONS,
    check,
    flush,
    page_clicks,
    page_reference,
    repartitioned_config,
    sink_windows,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

TEN_YEARS_MS = 3652 * 86_400_000


@pytest.mark.parametrize("route", ["trusted keying", "repartitioned"])
def test_a_record_ten_years_ahead_is_dead_lettered_and_no_window_changes(
    kafka_broker: KafkaBroker, tmp_path: Path, route: str
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("clicks"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 2)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1)
    records: list[tuple[str, dict[str, Any]]]
    config: dict[str, Any]
    if route == "repartitioned":
        records = list(page_clicks(0, 6000))
        config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
        expected = page_reference(records)
    else:
        records = list(clicks(0, 6000))
        config = pipeline_config(
            kafka_broker, source=src, sink=sink, dlq=dlq, group=f"g-{src}",
            checkpoints=tmp_path / "ck", lateness="0s",
        )  # fmt: skip
        expected = reference(records)
    config["processor"]["steps"][-1]["window"]["eventTime"]["maxAhead"] = "168h"  # opt-in
    kafka_broker.produce(src, records[:3000])  # keyed by user
    wrong = []
    for p in range(PARTITIONS):  # the producer's clock is now; the record's field is 2036
        ts = records[2999][1]["ts"] + TEN_YEARS_MS
        rec = {"id": 100_000 + p, "user": "user-1", "page": "/p1", "bytes": 5, "ts": ts}
        wrong.append(rec)
        kafka_broker.produce(src, [("user-1", rec)], partition=p)
    kafka_broker.produce(src, records[3000:])
    flush(kafka_broker, src, records[-1][1]["ts"])

    worker = Worker.create(tmp_path, "w", config).start()
    try:
        got, written = sink_windows(kafka_broker, sink, expected, "every window", 120, [worker])
        check(got, expected)  # the second half counted: none of it late
        assert set(written.values()) == {1}, "a window was written twice"
        dead = kafka_broker.consume_all(dlq, timeout=30)
        assert sorted(r.json()["id"] for r in dead) == [w["id"] for w in wrong]
        headers = [dict(r.headers) for r in dead]
        assert Counter(h["streamherd.error.reason"] for h in headers) == {b"expression": PARTITIONS}
        assert {h["streamherd.error"] for h in headers} == {b"EventTimeAheadError"}
        assert b"eventTime.maxAhead (168h)" in (headers[0]["streamherd.error.message"] or b"")
    finally:
        worker.stop()
