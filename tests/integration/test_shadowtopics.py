"""The Kafka side of a shadow verification (operator/shadowtopics.py) against the real
broker: seeding a new group with offsets, reading committed and end offsets, creating and
deleting internal topics, and reading a topic in full, read_committed (an aborted
transaction's records are not results)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer

from streamherd.operator.kafkaadmin import KafkaAdmin, logged_admin
from streamherd.operator.lagprobe import ClusterConfig
from streamherd.operator.shadowtopics import NO_OFFSET, KafkaShadowClient, ShadowKafkaError
from tests.infra.kafka import KafkaBroker, start_kafka
from tests.infra.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def test_offsets_topics_and_reads_against_the_broker(kafka_broker: KafkaBroker) -> None:
    client = KafkaShadowClient(ClusterConfig.of(kafka_broker.bootstrap))
    try:
        source = kafka_broker.create_topic(kafka_broker.unique_topic("shadow-in"), partitions=2)
        kafka_broker.produce(source, [f"r{i}" for i in range(7)], partition=0)
        kafka_broker.produce(source, [f"r{i}" for i in range(3)], partition=1)
        assert client.end_offsets([source]) == {(source, 0): 7, (source, 1): 3}

        group = f"shadow-{uuid.uuid4().hex[:8]}"
        assert client.committed(group, [source]) == {(source, 0): NO_OFFSET,
                                                     (source, 1): NO_OFFSET}  # fmt: skip
        client.commit(group, {(source, 0): 5, (source, 1): 3})
        assert client.committed(group, [source]) == {(source, 0): 5, (source, 1): 3}
        assert kafka_broker.committed(group, source) == {0: 5, 1: 3}

        out = kafka_broker.unique_topic("shadow-out")
        client.create_topic(out, 1)
        client.create_topic(out, 1)  # already there: fine
        assert client.read_all(out) == []
        # One committed and one aborted transaction: only the committed records are read.
        producer = Producer(
            kafka_broker.client_config(**{"transactional.id": f"t-{uuid.uuid4().hex[:8]}"})
        )
        producer.init_transactions(30)
        for values, commit in (([b"a", b"b"], True), ([b"x"], False), ([b"c"], True)):
            producer.begin_transaction()
            for v in values:
                producer.produce(out, v)
            if commit:
                producer.commit_transaction(30)
            else:
                producer.abort_transaction(30)
        assert client.read_all(out) == [b"a", b"b", b"c"]

        # Deleted, and a topic that does not exist is not one left.
        assert client.delete_topics([out, kafka_broker.unique_topic("never-made")]) == []
        with pytest.raises(ShadowKafkaError):
            client.read_all(out)
        # A group with a member is not deleted (returned), an unknown one counts as gone.
        member = Consumer(kafka_broker.client_config(**{"group.id": group}))
        member.subscribe([source])

        def joined() -> bool:
            member.poll(0.5)
            return bool(member.assignment())

        wait_until("a member in the group", joined, timeout=60)
        assert client.delete_groups([group, f"never-{uuid.uuid4().hex[:8]}"]) == [group]
        member.close()
        assert client.delete_groups([group]) == []
        assert client.committed(group, [source]) == {(source, 0): NO_OFFSET,
                                                     (source, 1): NO_OFFSET}  # fmt: skip
    finally:
        client.close()


def test_a_topic_the_broker_refuses_to_delete_for_good_is_kept_not_retried() -> None:
    """On a broker that refuses every topic deletion (`delete.topic.enable=false`), a
    verification's tidy step asked again every few seconds for ever (a review): a topic
    refused for good is kept (said in a warning) and not returned as one to try again."""
    kafka = start_kafka(settings={"delete.topic.enable": "false"})
    try:
        broker = kafka.broker
        client = KafkaShadowClient(ClusterConfig.of(broker.bootstrap))
        try:
            topic = broker.create_topic(broker.unique_topic("shadow-kept"), partitions=1)
            assert client.delete_topics([topic]) == []
            # ... and named, with the broker's answer, for the deletion's warning.
            assert list(client.kept_topics()) == [topic], client.kept_topics()
            admin = KafkaAdmin(logged_admin(ClusterConfig.of(broker.bootstrap)), 5.0)
            try:
                deleted = admin.delete_topics([topic])
                assert (deleted.names, set(deleted.failed), deleted.refused) == (
                    [],
                    {topic},
                    frozenset({topic}),
                )
                assert topic in admin.topics()  # kept: refused, not deleted
            finally:
                admin.close()
        finally:
            client.close()
    finally:
        kafka.stop()
