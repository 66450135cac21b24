"""operator/topicadmin.py against the real broker: create, check, report, delete.

The operator-level behaviour (status, conditions, events, the finalizer) is in
tests/integration/operator/test_operator_internal_topics.py; this is the admin module alone, so its
use of the Kafka admin API is pinned down without a control plane.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka.admin._config import ConfigResource

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.kafkaadmin import KafkaAdmin, logged_admin
from streamherd.operator.lagprobe import ClusterConfig
from streamherd.operator.topicadmin import InternalTopics, TopicAdminError
from streamherd.workers import changelog as changelog_backend
from tests.infra.kafka import KafkaBroker, start_kafka
from tests.infra.processes import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def _pipeline(bootstrap: str, topics: list[str], backend: str = "kafka") -> StreamPipeline:
    return StreamPipeline.model_validate(
        {
            "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}", "namespace": "ta", "uid": "u1"},
            "spec": {
                "source": {"kafka": {"bootstrapServers": bootstrap, "topics": topics}},
                "processor": {"steps": [{"window": {
                    "keyBy": "page", "size": "60s",
                    "aggregates": [{"name": "n", "function": "count"}]}}]},
                "sink": {"stdout": {}},
                "checkpoint": {"backend": backend},
            },
        }
    )  # fmt: skip


def _manager(**kwargs: Any) -> InternalTopics:
    return InternalTopics(
        resolve_cluster=lambda p: ClusterConfig.of(p.spec.source.kafka.bootstrap_servers),  # type: ignore[union-attr]
        **kwargs,
    )


def _config(broker: KafkaBroker, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = broker.admin()  # kept: a dropped client fails its futures (_DESTROY)
    entries = admin.describe_configs([resource])[resource].result(10)
    return {k: str(v.value) for k, v in entries.items()}


def _topics(broker: KafkaBroker) -> dict[str, int]:
    md = broker.admin().list_topics(timeout=10)
    return {n: len(t.partitions) for n, t in md.topics.items() if t.error is None}


def test_create_then_check_then_delete(kafka_broker: KafkaBroker) -> None:
    a = kafka_broker.create_topic(kafka_broker.unique_topic("ta"), partitions=2)
    b = kafka_broker.create_topic(kafka_broker.unique_topic("ta"), partitions=6)
    pipeline = _pipeline(kafka_broker.bootstrap, [a, b])
    manager = _manager(wait=30.0)
    try:
        report = manager.ensure(pipeline)
        assert report is not None and report.status == "ready", report
        assert [(t.spec.purpose, t.partitions, t.created) for t in report.topics] == [
            ("repartition", 6, True),
            ("changelog", 6, True),
        ]
        repartition, changelog = (t.spec.name for t in report.topics)

        # Created is ready; another client's metadata lists the topics a moment later (a CI
        # run read it at once and missed the repartition topic).
        def both_listed() -> dict[str, int] | None:
            found = _topics(kafka_broker)
            return found if repartition in found and changelog in found else None

        listed = wait_until("the internal topics listed", both_listed, 30)
        assert listed[repartition] == 6
        assert _config(kafka_broker, repartition)["cleanup.policy"] == "delete"
        assert _config(kafka_broker, repartition)["retention.ms"] == str(7 * 24 * 3600 * 1000)
        # The changelog as a worker makes it (streamherd run): hourly segments, which bound
        # a restore. The operator made it with cleanup.policy alone before: Kafka's 7-day
        # segments, so a restore could read a week of checkpoint deltas.
        made = _config(kafka_broker, changelog)
        assert {k: made[k] for k in changelog_backend.TOPIC_CONFIG} == dict(
            changelog_backend.TOPIC_CONFIG
        )
        # Idempotent: a fresh manager (an operator restart) finds them as they should be.
        again = _manager(wait=30.0)
        second = again.ensure(pipeline)
        assert second is not None and second.status == "ready"
        assert not second.created
        again.close()
        assert manager.delete(pipeline) == sorted([repartition, changelog])

        def deleted() -> dict[str, int] | None:
            # Accepted by the controller; the metadata of other clients follows shortly.
            left = _topics(kafka_broker)
            return left if repartition not in left and changelog not in left else None

        left = wait_until("the internal topics gone from the metadata", deleted, 30)
        assert a in left and b in left
        assert manager.delete(pipeline) == []  # nothing left: nothing to do, no error
    finally:
        manager.close()


def test_a_changelog_made_before_its_tuning_is_ready_as_it_is(kafka_broker: KafkaBroker) -> None:
    """A changelog an earlier operator made (cleanup.policy alone): the settings the operator
    now creates it with are not judged afterwards, so it is ready, not a mismatch."""
    source = kafka_broker.create_topic(kafka_broker.unique_topic("ta"), partitions=2)
    pipeline = _pipeline(kafka_broker.bootstrap, [source])
    changelog = f"streamherd.ta.{pipeline.name}.changelog"
    kafka_broker.create_topic(changelog, partitions=2, config={"cleanup.policy": "compact"})
    manager = _manager(wait=30.0)
    try:
        report = manager.ensure(pipeline)
        assert report is not None and report.status == "ready", report
        assert [t.spec.purpose for t in report.created] == ["repartition"]
        assert _config(kafka_broker, changelog)["segment.ms"] != "3600000"  # left as it was
    finally:
        manager.delete(pipeline)
        manager.close()


def test_a_topic_that_differs_is_reported_not_recreated(kafka_broker: KafkaBroker) -> None:
    source = kafka_broker.create_topic(kafka_broker.unique_topic("ta"), partitions=3)
    pipeline = _pipeline(kafka_broker.bootstrap, [source])
    changelog = f"streamherd.ta.{pipeline.name}.changelog"
    kafka_broker.create_topic(changelog, partitions=1, config={"cleanup.policy": "delete"})
    kafka_broker.produce(changelog, [("k", "v")])
    manager = _manager(wait=30.0)
    try:
        report = manager.ensure(pipeline)
        assert report is not None and report.status == "mismatch"
        assert report.problems == [
            f"{changelog} has 1 partitions, the source topics' most is 3",
            f"{changelog} has cleanup.policy=delete, the operator sets compact",
        ]
        assert report.retry_after is not None and report.retry_after > 0
        assert [r.value for r in kafka_broker.consume_all(changelog)] == [b"v"]
        assert _topics(kafka_broker)[changelog] == 1
    finally:
        manager.delete(pipeline)
        manager.close()


def test_no_source_topic_yet_creates_nothing(kafka_broker: KafkaBroker) -> None:
    pipeline = _pipeline(kafka_broker.bootstrap, [kafka_broker.unique_topic("absent")])
    manager = _manager(wait=30.0)
    try:
        report = manager.ensure(pipeline)
        assert report is not None and report.status == "no-source"
        assert not [n for n in _topics(kafka_broker) if pipeline.name in n]
    finally:
        manager.close()


def test_an_unreachable_broker_is_reported_and_retried_after_a_backoff() -> None:
    pipeline = _pipeline(f"127.0.0.1:{free_port()}", ["t"])
    clock = [0.0]
    manager = _manager(wait=60.0, timeout=2.0, clock=lambda: clock[0])
    try:
        first = manager.ensure(pipeline)
        assert first is not None and first.status == "unreachable"
        assert "127.0.0.1" in first.message and first.retry_after == 5.0
        # Within the backoff: the same answer from memory, no new attempt.
        clock[0] = 3.0
        held = manager.ensure(pipeline)
        assert held is not None and held.status == "unreachable" and held.message == first.message
        assert held.retry_after is not None and held.retry_after <= 2.0
        # After it: one more attempt; while it runs, the last answer stands (no flip to
        # "checking"); once it is over, the next backoff is twice as long.
        clock[0] = 6.0
        during = manager.ensure(pipeline)
        assert during is not None and during.status == "unreachable"
        pause = threading.Event()
        for _ in range(300):
            second = manager.ensure(pipeline)
            assert second is not None and second.status == "unreachable"
            if second.retry_after == 10.0:
                break
            pause.wait(0.1)
        assert second is not None and second.retry_after == 10.0
        with pytest.raises(TopicAdminError):
            manager.delete(pipeline)
    finally:
        manager.close()


class _RecordingAdmin:
    """The real admin client, with its whole-cluster listings counted."""

    def __init__(self, cluster: ClusterConfig, listings: list[str | None]) -> None:
        self._admin = logged_admin(cluster)
        self._listings = listings

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self._listings.append(topic)
        return self._admin.list_topics(topic, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._admin, name)


def test_a_check_asks_for_its_own_topics_only(kafka_broker: KafkaBroker) -> None:
    """A pipeline's check asks the broker about its own topics only: listing every topic
    made each check as costly as the cluster is large (docs/scale.md). Topics that exist
    and topics that do not are both told apart without a listing."""
    source = kafka_broker.create_topic(kafka_broker.unique_topic("tp"), partitions=5)
    listings: list[str | None] = []
    manager = _manager(wait=30.0, admin_factory=lambda c: _RecordingAdmin(c, listings))
    try:
        pipeline = _pipeline(kafka_broker.bootstrap, [source])
        first = manager.ensure(pipeline)
        assert first is not None and first.status == "ready", first
        assert [(t.partitions, t.created) for t in first.topics] == [(5, True), (5, True)]
        again = _manager(wait=30.0, admin_factory=lambda c: _RecordingAdmin(c, listings))
        second = again.ensure(pipeline)
        pause = threading.Event()
        for _ in range(300):
            # Another client, right after the creation: a KRaft broker can list a topic
            # before it describes it, and the check says so ("checking") until it does.
            if second is None or second.status != "checking":
                break
            pause.wait(0.1)
            second = again.ensure(pipeline)
        again.close()
        assert second is not None and second.status == "ready", second
        assert [(t.partitions, t.created) for t in second.topics] == [(5, False), (5, False)]
        missing = manager.ensure(_pipeline(kafka_broker.bootstrap, [f"{source}-none"]))
        assert missing is not None and missing.status == "no-source", missing
        assert len(manager.delete(pipeline)) == 2
        assert listings == []
    finally:
        manager.close()


def test_asking_about_a_missing_topic_never_creates_it() -> None:
    """On a broker that auto-creates topics a client asks about, a check of named topics
    creates none: the operator's question "does it exist?" must not answer itself "yes"
    (with the broker's default partitions and configuration, not the internal topic's)."""
    kafka = start_kafka(settings={"auto.create.topics.enable": "true"})
    try:
        admin = KafkaAdmin(logged_admin(ClusterConfig.of(kafka.broker.bootstrap)), 5.0)
        name = f"never-made-{uuid.uuid4().hex[:8]}"
        assert admin.topics([name]) == {}
        time.sleep(2.0)  # an auto-creation would be listed by now
        assert name not in admin.topics() and admin.topics([name]) == {}
        admin.close()
    finally:
        kafka.stop()
