"""The lag probe against a real Apache Kafka broker.

Covers the cases of the lag arithmetic that only a broker can show: normal lag, no committed
offset (earliest and latest), records deleted past the committed offset (DeleteRecords, the
broker operation retention performs), several groups measured in one call, and that the
figure is exactly what a consumer of the group then reads.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamherd.workers.lagprobe import ClusterConfig, GroupSpec, LagProbe, LagProbeError
from tests.infra.kafka import KafkaBroker
from tests.infra.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.fixture
def probe(kafka_broker: KafkaBroker) -> LagProbe:
    return LagProbe(ClusterConfig.of(kafka_broker.bootstrap), request_timeout=20.0)


def _group() -> str:
    return f"lagprobe-{uuid.uuid4().hex[:10]}"


def _fill(broker: KafkaBroker, topic: str, counts: list[int]) -> None:
    for partition, n in enumerate(counts):
        broker.produce(topic, (f"r{i}" for i in range(n)), partition=partition)


def _commit(broker: KafkaBroker, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for a group the way a worker does, without joining the group."""
    consumer = Consumer(broker.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def _delete_records(broker: KafkaBroker, topic: str, partition: int, before: int) -> None:
    admin = broker.admin()
    futures = admin.delete_records([TopicPartition(topic, partition, before)])
    for f in futures.values():
        f.result(30)


def _consume_as_group(
    broker: KafkaBroker, group: str, topic: str, start_from: str, partitions: int
) -> dict[int, int]:
    """Join the group like a worker would and count what it reads up to the end, per partition.

    Nothing is committed, so the probe can be compared before and after.
    """
    consumer = Consumer(
        broker.client_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": start_from,
                "session.timeout.ms": 6000,
            }
        )
    )
    counts = dict.fromkeys(range(partitions), 0)
    at_end: set[int] = set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"did not reach the end: {at_end}, {counts}"
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                part = msg.partition()
                assert part is not None
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(part)
                        continue
                    raise KafkaException(err)
                at_end.discard(part)
                counts[part] += 1
    finally:
        consumer.close()
    return counts


def test_normal_lag_per_partition(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("lag"), partitions=3)
    _fill(kafka_broker, topic, [100, 100, 50])
    group = _group()
    _commit(kafka_broker, group, topic, {0: 40, 1: 100, 2: 0})

    lag = probe.measure(GroupSpec(group, (topic,)))

    rows = {p.partition: p for p in lag.partitions}
    assert [(r.log_start, r.log_end, r.committed, r.lag) for r in rows.values()] == [
        (0, 100, 40, 60),
        (0, 100, 100, 0),
        (0, 50, 0, 50),
    ]
    assert lag.total == 110 and lag.partition_count == 3 and lag.missing_topics == ()
    assert {r.topic for r in lag.partitions} == {topic}
    assert _consume_as_group(kafka_broker, group, topic, "earliest", 3) == {0: 60, 1: 0, 2: 50}


@pytest.mark.parametrize(("start_from", "expected"), [("earliest", 150), ("latest", 0)])
def test_nothing_committed_follows_start_from(
    kafka_broker: KafkaBroker, probe: LagProbe, start_from: str, expected: int
) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("nocommit"), partitions=2)
    _fill(kafka_broker, topic, [100, 50])
    group = _group()

    lag = probe.measure(GroupSpec(group, (topic,), start_from))  # type: ignore[arg-type]

    assert all(p.committed is None for p in lag.partitions)
    assert lag.total == expected
    seen = _consume_as_group(kafka_broker, group, topic, start_from, 2)
    assert sum(seen.values()) == expected
    assert {p.partition: p.lag for p in lag.partitions} == seen


def test_records_deleted_past_the_commit(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("deleted"), partitions=2)
    _fill(kafka_broker, topic, [100, 100])
    group = _group()
    _commit(kafka_broker, group, topic, {0: 10, 1: 80})
    # Retention's effect, exactly: the log start moves to 60 on both partitions; partition 0
    # loses records the group never read, partition 1 only records it already read.
    _delete_records(kafka_broker, topic, 0, 60)
    _delete_records(kafka_broker, topic, 1, 60)

    lag = probe.measure(GroupSpec(group, (topic,)))

    rows = {p.partition: p for p in lag.partitions}
    assert (rows[0].log_start, rows[0].committed, rows[0].lag) == (60, 10, 40)  # not 90
    assert (rows[1].log_start, rows[1].committed, rows[1].lag) == (60, 80, 20)
    # A consumer whose offset fell off the log resets (earliest) and reads what is retained.
    assert _consume_as_group(kafka_broker, group, topic, "earliest", 2) == {0: 40, 1: 20}


def test_many_groups_in_one_call(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    a = kafka_broker.create_topic(kafka_broker.unique_topic("many"), partitions=2)
    b = kafka_broker.create_topic(kafka_broker.unique_topic("many"), partitions=1)
    _fill(kafka_broker, a, [30, 30])
    _fill(kafka_broker, b, [7])
    groups = [_group() for _ in range(12)]
    for i, g in enumerate(groups):
        _commit(kafka_broker, g, a, {0: i, 1: 2 * i})
    missing = kafka_broker.unique_topic("absent")
    specs = [GroupSpec(g, (a, b)) for g in groups] + [GroupSpec(_group(), (missing,), "latest")]

    results = probe.measure_many(specs)

    assert set(results) == {s.group for s in specs}
    for i, g in enumerate(groups):
        r = results[g]
        assert not isinstance(r, Exception)
        assert r.partition_count == 3
        assert r.total == (30 - i) + (30 - 2 * i) + 7
    lonely = results[specs[-1].group]
    assert not isinstance(lonely, Exception)
    assert lonely.missing_topics == (missing,) and lonely.total == 0
    assert lonely.partition_count == 0


def test_progress_shows_in_the_next_measurement(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("progress"), partitions=1)
    _fill(kafka_broker, topic, [200])
    group = _group()
    first = probe.measure(GroupSpec(group, (topic,)))
    _commit(kafka_broker, group, topic, {0: 150})
    _fill(kafka_broker, topic, [25])
    second = probe.measure(GroupSpec(group, (topic,)))
    assert (first.total, second.total) == (200, 75)
    assert (second.log_end_total, second.position_total) == (225, 150)
    assert second.measured_at >= first.measured_at


def test_unreachable_cluster_is_an_error_not_a_zero() -> None:
    dead = LagProbe(
        ClusterConfig.of(f"127.0.0.1:{free_port()}"),
        request_timeout=2.0,
        extra_config={"socket.connection.setup.timeout.ms": 1000},
    )
    with pytest.raises(LagProbeError, match="cannot read metadata"):
        dead.measure(GroupSpec("g", ("t",)))
