"""No loss, no double count: workers killed with SIGKILL at random moments and restarted,
and a second worker joining and leaving mid-stream, while records keep arriving.

Afterwards the sink, deduplicated by its deterministic key (last wins), must hold every
window of the input with exactly the reference aggregates: each input record reflected
once, none lost, none twice, and no window missing. The same holds for state that JSON
cannot hold as is (infinities, NaN, integers beyond 64 bits, composite keys, keys 1, 1.0
and true): the results equal those of the engine's own batch path run uninterrupted."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.processing import (
    Processor,
    SourceMessage,
    SyntheticMessage,
    decode_json,
    encode_output,
    window_batch,
)
from streamherd.workers.windowing import PartitionWindows
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    BASE_TS,
    PacedProducer,
    Worker,
    assert_matches,
    clicks,
    flush_markers,
    latest_by_key,
    pipeline_config,
    reference,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


def finish_and_verify(
    broker: KafkaBroker, src: str, sink: str, dlq: str, total: int, workers: list[Worker]
) -> None:
    records = list(clicks(0, total))
    flush_markers(broker, src, 4, records[-1][1]["ts"])
    expected = reference(records)
    seen: dict[str, dict[str, Any]] = {}

    def complete() -> bool:
        seen.clear()
        seen.update(latest_by_key(broker.consume_all(sink, timeout=60)))
        return set(expected) <= set(seen)

    wait_until("every window in the sink", complete, 120, workers)
    assert_matches(seen, expected)
    late = broker.consume_all(dlq)
    assert late == [], f"{len(late)} records dead-lettered, e.g. {late[0].headers}"


def make_topics(broker: KafkaBroker) -> tuple[str, str, str]:
    src = broker.create_topic(broker.unique_topic("in"), 4)
    sink = broker.create_topic(broker.unique_topic("out"), 4)
    dlq = broker.create_topic(broker.unique_topic("dlq"), 1)
    return src, sink, dlq


def test_sigkill_at_random_moments_loses_nothing_counts_nothing_twice(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = make_topics(kafka_broker)
    rate = 1_000
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        batchSize=500,
    )
    config["checkpoint"]["intervalSeconds"] = 0.5  # more checkpoints: more kills inside one
    producer = PacedProducer(kafka_broker, src, rate)  # until the kills are over
    producer.start()
    worker = Worker.create(tmp_path, "w", config).start()
    rng = random.Random(20260101)
    kills = 0
    try:
        while kills < 5:
            wait_until(
                "the worker to own partitions",
                lambda: worker.get("/readyz")[0] == 200,
                60,
                [worker],
            )
            if kills == 1:
                # From the second kill on, a checkpoint exists before the kill, so each
                # restart after it must restore (under load, every kill could otherwise come
                # before a first checkpoint; the first kill still may).
                wait_until(
                    "a first checkpoint",
                    lambda: any(
                        "pending" not in head.name
                        for head in (tmp_path / "ck" / src).glob("*.ckpt")
                    ),
                    60,
                    [worker],
                )
            time.sleep(rng.uniform(0.2, 2.5))  # a random moment: the test
            worker.kill()
            kills += 1
            worker.start()
        producer.finish()
        finish_and_verify(kafka_broker, src, sink, dlq, producer.total, [worker])
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert log.count("event=partition-restored") >= 4  # restarts did restore checkpoints


def test_second_worker_joins_and_leaves_mid_stream(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = make_topics(kafka_broker)
    rate = 1_500
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        batchSize=500,
    )
    producer = PacedProducer(kafka_broker, src, rate)  # until b has come and gone
    producer.start()
    first = Worker.create(tmp_path, "a", config).start()
    second = Worker.create(
        tmp_path, "b", {**config, "runtime": {**config["runtime"], "metricsPort": 0}}
    )
    try:
        wait_until("worker a owns partitions", lambda: first.get("/readyz")[0] == 200, 60, [first])
        # Mid-stream: b joins once a has read records and committed the offsets of a checkpoint.
        wait_until(
            "worker a to commit offsets",
            lambda: first.value("streamherd_offset_commits_total") >= 1,
            60,
            [first],
        )
        second.start()
        wait_until(
            "worker b owns partitions", lambda: second.get("/readyz")[0] == 200, 60, [first, second]
        )

        def b_consumed() -> bool:
            return any(
                k.startswith("streamherd_records_in_total") and v > 0
                for k, v in second.metrics().items()
            )

        wait_until("worker b to process records", b_consumed, 60, [first, second])
        # b leaves with work of its own made durable: a resumes from b's commit.
        wait_until(
            "worker b to commit offsets",
            lambda: second.value("streamherd_offset_commits_total") >= 1,
            60,
            [first, second],
        )
        second.signal(signal.SIGTERM)  # leaves the group: its partitions go back to a
        assert second.wait(20) == 0, second.log_tail()
        producer.finish()
        finish_and_verify(kafka_broker, src, sink, dlq, producer.total, [first])
        rebalances = {
            k: v for k, v in first.metrics().items() if k.startswith("streamherd_rebalances")
        }
        assert (
            rebalances.get('streamherd_rebalances_total{kind="revoke",pipeline="clicks"}', 0) >= 1
        )
        assert (
            rebalances.get('streamherd_rebalances_total{kind="assign",pipeline="clicks"}', 0) >= 2
        )
    finally:
        first.stop()
        second.stop()


HOSTILE_WINDOW: dict[str, Any] = {
    "keyBy": "[user, x]",  # a composite key; x is 1, 1.0 or true: three different keys
    "size": "10s",
    "eventTime": {"field": "ts"},
    "allowedLateness": "1h",
    "aggregates": [
        {"name": "n", "function": "count"},
        {"name": "hi", "function": "max", "expression": "float(s) if s != 'nan' else null"},
        {"name": "lo", "function": "min", "expression": "float(s) if s != 'nan' else null"},
        {"name": "big", "function": "sum", "expression": "i * 18446744073709551616"},
        {"name": "mean", "function": "avg", "expression": "float(s)"},
    ],
}


def hostile_records(total: int) -> list[tuple[int, dict[str, Any]]]:
    """(partition, record): every key in one partition (by user), event time growing."""
    xs: list[Any] = [1, 1.0, True]
    out = []
    for i in range(total):
        user = i % 40
        record = {
            "user": f"u{user}",
            "x": xs[(i // 40) % 3],
            "s": "inf"
            if i % 97 == 0
            else "-inf"
            if i % 89 == 0
            else "nan"
            if i % 83 == 0
            else str((i * 37) % 1000 / 8),
            "i": i,
            "ts": BASE_TS + i * 3,
        }
        out.append((user % 2, record))
    return out


def uninterrupted(records: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The engine's own generic batch path over each partition in order, never stopped."""
    cfg = ProcessorConfig.model_validate({"steps": [{"window": HOSTILE_WINDOW}]})
    processor = Processor.compile(cfg)
    assert processor.window is not None
    out: dict[str, Any] = {}
    for partition in (0, 1):
        state = PartitionWindows(processor.window)
        messages: list[SourceMessage] = [
            SyntheticMessage("in", partition, i, None, r, 0)
            for i, r in enumerate(r for p, r in records if p == partition)
        ]
        batch = window_batch(decode_json, processor, state, messages)
        assert batch.failures == [] and batch.late == []
        for key, row in state.close(everything=True):
            out[key] = json.loads(encode_output(row))  # as the sink writes it (exact ints)
    return out


def test_sigkill_with_hostile_values_gives_the_uninterrupted_results(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 2)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 2)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1)
    records = hostile_records(24_000)
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        batchSize=300,
    )
    config["processor"] = {"steps": [{"window": HOSTILE_WINDOW}]}
    config["checkpoint"]["intervalSeconds"] = 0.3
    worker = Worker.create(tmp_path, "w", config).start()
    rng = random.Random(20261203)
    chunk = 2000
    try:
        for start in range(0, len(records), chunk):
            for partition in (0, 1):
                part = [(r["user"], r) for p, r in records[start : start + chunk] if p == partition]
                kafka_broker.produce(src, part, partition=partition)
            if start // chunk % 3 == 1:  # a kill every third chunk, at a random moment
                wait_until(
                    "the worker to own partitions",
                    lambda: worker.get("/readyz")[0] == 200,
                    60,
                    [worker],
                )
                time.sleep(rng.uniform(0.1, 1.5))  # a random moment: the test
                worker.kill()
                worker.start()
        last = records[-1][1]["ts"]
        for partition in (0, 1):
            marker = {"user": "zz-flush", "x": 0, "s": "0", "i": 0, "ts": last + 86_400_000}
            kafka_broker.produce(src, [("zz-flush", marker)], partition=partition)
        expected = uninterrupted(records)
        seen: dict[str, Any] = {}

        def complete() -> bool:
            seen.clear()
            for rec in sorted(
                kafka_broker.consume_all(sink), key=lambda r: (r.partition, r.offset)
            ):
                assert rec.key is not None
                if not rec.key.startswith(b'["zz-flush"'):
                    seen[rec.key.decode()] = json.loads(rec.value or b"null")
            return set(expected) <= set(seen)

        wait_until("every window in the sink", complete, 120, [worker])
        assert seen == expected
        assert kafka_broker.consume_all(dlq) == []
    finally:
        worker.stop()
    assert worker.log_path.read_text().count("event=partition-restored") >= 2
