"""Smoke tests of the real test infrastructure: the Kafka broker and the control plane.

If these fail, every other integration test would too: they check the fixtures themselves.
"""

from __future__ import annotations

import pytest

from tests.infra.kafka import KafkaBroker

pytestmark = pytest.mark.integration


@pytest.mark.kafka
def test_kafka_round_trip_on_four_partitions(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("smoke"), partitions=4)
    sent = [(f"k{i}", {"n": i}) for i in range(2000)]
    assert kafka_broker.produce(topic, sent) == 2000

    records = kafka_broker.consume_all(topic, timeout=30)

    assert sorted(r.json()["n"] for r in records) == list(range(2000))
    assert {r.partition for r in records} == {0, 1, 2, 3}
    # The same key always lands on the same partition.
    by_key: dict[bytes | None, set[int]] = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    assert sum(kafka_broker.end_offsets(topic).values()) == 2000


@pytest.mark.kafka
def test_kafka_explicit_partition_and_raw_values(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("smoke"), partitions=4)
    kafka_broker.produce(topic, [b"raw", "text", None], partition=2)

    records = kafka_broker.consume_all(topic, timeout=30)

    assert [(r.partition, r.value) for r in records] == [(2, b"raw"), (2, b"text"), (2, None)]
