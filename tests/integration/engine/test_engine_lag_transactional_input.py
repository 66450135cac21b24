"""Helper-115: the lag a worker exports for a caught-up partition of a transactionally
written topic (another exactly-once pipeline's sink, or the repartition topic of an
exactly-once pipeline) must be 0, as decision 0010 says ("committed offsets of a
transactional consumer end past the commit markers, so a caught-up group still reads 0").

Real broker, real `streamherd-worker` subprocess. Property: once the worker has read and
committed every record, for every owned partition, exported lag == 0, the group's committed
offset == the log end (the broker's own view of the group: kafka-consumer-groups LAG), and
the operator's probe reads 0 as well.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamherd.operator.lagprobe import ClusterConfig, GroupSpec, LagProbe
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, clicks, pipeline_config, wait_until
from tests.integration.engine.test_engine_repartition import (
    page_clicks,
    repartitioned_config,
    topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 4


def produce_in_transactions(broker: KafkaBroker, topic: str, batches: int, per: int) -> None:
    """What an exactly-once writer leaves: records, each transaction ended by a commit
    marker (one offset per partition it wrote to)."""
    producer = Producer(broker.client_config(**{"transactional.id": f"tx-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    start = 0
    for _ in range(batches):
        producer.begin_transaction()
        broker.produce(topic, clicks(start, per), producer=producer)
        producer.commit_transaction(30)
        start += per


def settled_ends(broker: KafkaBroker, topic: str) -> dict[int, int]:
    """The log ends once the last transaction's commit markers are in: commit_transaction
    returns once the coordinator has decided, and the markers are written after it (read at
    once, under load an end lacked its marker: a CI-like run waited for it for 90 s)."""
    ends = broker.end_offsets(topic)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        again = broker.end_offsets(topic)
        if again == ends:
            return ends
        ends = again
    raise AssertionError(f"the log ends of {topic} never settled: {ends}")


def transactional_pipeline(
    broker: KafkaBroker, tmp_path: Path, name: str, batches: int, per: int
) -> tuple[str, str, dict[str, Any]]:
    """A source topic written in ``batches`` transactions of ``per`` records and a plain
    pipeline reading it: (source topic, group, config)."""
    src = broker.create_topic(broker.unique_topic(name), PARTITIONS)
    sink = broker.create_topic(broker.unique_topic(f"{name}-out"), PARTITIONS)
    group = f"g-{src}"
    config = pipeline_config(
        broker, source=src, sink=sink, dlq=None, group=group, checkpoints=tmp_path / "ck"
    )
    produce_in_transactions(broker, src, batches=batches, per=per)
    return src, group, config


def exported(worker: Worker, topic: str) -> dict[int, float | None]:
    metrics = worker.metrics()
    return {
        p: metrics.get(
            f'streamherd_consumer_lag{{partition="{p}",pipeline="clicks",topic="{topic}"}}'
        )
        for p in range(PARTITIONS)
    }


def test_a_caught_up_worker_on_a_transactional_topic_exports_no_lag(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, group, config = transactional_pipeline(kafka_broker, tmp_path, "txin", 3, 400)
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until(
            "every record read",
            lambda: worker.value("streamherd_records_in_total") == 1200,
            90,
            [worker],
        )
        ends = kafka_broker.end_offsets(src)

        wait_until(
            "every partition committed",
            lambda: all(o >= 0 for o in kafka_broker.committed(group, src).values()),
            60,
            [worker],
        )
        time.sleep(5)  # five more checkpoint intervals and lag refreshes: nothing moves
        committed = kafka_broker.committed(group, src)
        with LagProbe(ClusterConfig.of(kafka_broker.bootstrap)) as probe:
            probed = probe.measure(GroupSpec(group, (src,), "earliest")).by_partition()
        lag = exported(worker, src)
        # Nothing is left to read: every record is read, processed and committed.
        assert worker.value("streamherd_records_in_total") == 1200
        assert lag == dict.fromkeys(range(PARTITIONS), 0.0), (lag, committed, ends)
        assert sum(probed.values()) == 0, probed
        assert worker.value("streamherd_worker_consumer_lag") == 0
    finally:
        worker.stop()


def test_librdkafka_position_passes_the_commit_marker(kafka_broker: KafkaBroker) -> None:
    """What a fix can use: after the last record of a transaction is handed out, the
    consumer's position (local, no round trip) moves past the commit marker."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("txpos"), 1)
    produce_in_transactions(kafka_broker, src, batches=2, per=10)
    consumer = Consumer(
        kafka_broker.client_config(
            **{
                "group.id": f"g-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    consumer.assign([TopicPartition(src, 0, 0)])
    last = -1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for m in consumer.consume(100, 1.0):
            if m.error() is None:
                last = m.offset() or 0
        if last == 20:  # 10 records, marker at 10, 10 records, marker at 21
            break
    time.sleep(2)
    consumer.consume(100, 1.0)
    position = consumer.position([TopicPartition(src, 0)])[0].offset
    consumer.close()
    assert (last, position) == (20, 22)


def test_an_exactly_once_repartitioned_pipeline_at_rest_exports_no_lag(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The pipeline's own repartition topic is written in its transactions: once every
    record is read and committed and the input stops, no partition, source or
    repartition, has lag (else StreamherdNoProgress fires after 10 quiet minutes, and
    minReplicas 0 never scales it to zero: decision.py's _idle wants lag == 0)."""
    src, sink, dlq = topics(kafka_broker)
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    config["delivery"] = "exactlyOnce"
    kafka_broker.produce(src, page_clicks(0, 2000))
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until(
            "every record read and re-keyed",
            lambda: (
                worker.value("streamherd_records_in_total") == 2000
                and worker.value("streamherd_repartition_records_in_total") == 2000
            ),
            120,
            [worker],
        )
        time.sleep(6)  # several transactions and lag refreshes more: nothing moves
        metrics = worker.metrics()
        lag = {
            k: v for k, v in metrics.items() if k.startswith("streamherd_consumer_lag{") and v != 0
        }
        assert lag == {}, lag
    finally:
        worker.stop()


def test_a_group_standing_on_a_commit_marker_reaches_the_log_end_without_new_records(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A partition whose start is a commit marker's offset (a checkpoint an earlier version
    wrote, or the group's offset reset there with Kafka's tools) reads no record there: the
    consumer's position passes the marker anyway, and the worker commits it, with no new
    record to come (before: lag 1 until the next record, for good on a quiet topic)."""
    src, group, config = transactional_pipeline(kafka_broker, tmp_path, "txmark", 2, 200)
    ends = settled_ends(kafka_broker, src)
    first = Worker.create(tmp_path, "first", config).start()
    try:
        wait_until("every partition at the log end",
                   lambda: kafka_broker.committed(group, src) == ends, 90, [first])  # fmt: skip
    finally:
        first.stop()
    admin = AdminClient(kafka_broker.client_config())
    on_markers = [TopicPartition(src, p, end - 1) for p, end in ends.items()]  # each a marker
    for future in admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, on_markers)]
    ).values():
        future.result(timeout=30)
    assert kafka_broker.committed(group, src) == {p: end - 1 for p, end in ends.items()}
    again = Worker.create(tmp_path, "again", config).start()
    try:
        wait_until("the group past the markers again",
                   lambda: kafka_broker.committed(group, src) == ends, 60, [again])  # fmt: skip
        wait_until("no lag exported",
                   lambda: exported(again, src) == dict.fromkeys(range(PARTITIONS), 0.0),
                   30, [again])  # fmt: skip
        assert (again.value("streamherd_records_in_total") or 0) == 0  # only markers there
    finally:
        again.stop()
