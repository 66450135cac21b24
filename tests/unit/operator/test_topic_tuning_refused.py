"""A broker that refuses the changelog's tuning still gets the changelog (decision 0193).

The operator creates the changelog topic with the worker's compaction settings (``tuning``:
``segment.ms``, ``min.cleanable.dirty.ratio``, ``delete.retention.ms``) besides the
``cleanup.policy`` it checks. Some clusters take only a few topic settings and refuse a
creation that names any other: MSK Serverless lets a topic set ``cleanup.policy`` (at
creation), ``retention.ms`` and a few more, "all other topic-level configuration properties
are not configurable" (its documentation); a ``CreateTopicPolicy`` does the same on a
broker of one's own. Before the tuning, the operator made the changelog there; with it, the
whole creation was refused and the pipeline's internal topics reported unreachable for
good. The tuning bounds a restore, it is not what keeps state correct: a topic is made
without it rather than not at all. The broker stands in as an AdminClient whose answers
are futures, as confluent-kafka's are; the real one runs in tests/integration.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from streamherd.operator.builders.topics import TopicSpec, topic_config, topic_tuning
from streamherd.operator.kafkaadmin import KafkaAdmin, KafkaAdminError
from streamherd.operator.lagprobe import ClusterConfig
from streamherd.operator.topicadmin import InternalTopics
from tests.unit.operator.operator_testkit import admin_done, admin_failed

SOURCE = "clicks"
REPARTITION = "streamherd.default.p.repartition"
CHANGELOG = "streamherd.default.p.changelog"
#: What MSK Serverless lets a topic set (its documentation's table).
SERVERLESS = frozenset(
    {
        "cleanup.policy",
        "compression.type",
        "max.message.bytes",
        "message.timestamp.difference.max.ms",
        "message.timestamp.type",
        "retention.bytes",
        "retention.ms",
    }
)


class PolicyBroker:
    """An AdminClient of a cluster whose creation policy takes only ``allowed`` settings."""

    def __init__(self, allowed: frozenset[str], code: int = KafkaError.POLICY_VIOLATION) -> None:
        self.allowed, self.code = allowed, code
        self.partitions: dict[str, int] = {SOURCE: 3}
        self.configs: dict[str, dict[str, str]] = {SOURCE: {"cleanup.policy": "delete"}}
        self.asked: list[dict[str, str]] = []

    def poll(self, timeout: float) -> int:
        return 0

    def create_topics(self, new_topics: list[Any], **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in new_topics:
            self.asked.append(dict(t.config))
            refused = sorted(set(t.config) - self.allowed)
            if t.topic in self.partitions:
                out[t.topic] = admin_failed(KafkaError.TOPIC_ALREADY_EXISTS, "exists")
            elif refused:
                out[t.topic] = admin_failed(
                    self.code, f"Config property '{refused[0]}' not allowed"
                )
            else:
                self.partitions[t.topic] = t.num_partitions
                self.configs[t.topic] = dict(t.config)
                out[t.topic] = admin_done(None)
        return out

    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Any]:
        return {
            name: admin_done(SimpleNamespace(partitions=[object()] * self.partitions[name]))
            if name in self.partitions
            else admin_failed(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown")
            for name in topics.topic_names
        }

    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Any]:
        return {
            r: admin_done({k: SimpleNamespace(value=v) for k, v in self.configs[r.name].items()})
            for r in resources
        }


def specs() -> list[TopicSpec]:
    return [
        TopicSpec(REPARTITION, "repartition", topic_config("repartition")),
        TopicSpec(CHANGELOG, "changelog", topic_config("changelog"), topic_tuning("changelog")),
    ]


def ensure(broker: PolicyBroker) -> Any:
    manager = InternalTopics(resolve_cluster=lambda _p: ClusterConfig.of("k:9092"))
    return manager._ensure(KafkaAdmin(broker, 1.0), [SOURCE], specs())  # type: ignore[arg-type]


def test_a_cluster_that_refuses_the_tuning_gets_the_changelog_without_it() -> None:
    for code in (KafkaError.POLICY_VIOLATION, KafkaError.INVALID_CONFIG):
        broker = PolicyBroker(SERVERLESS, code)
        report = ensure(broker)
        assert report.status == "ready", report.message
        assert {t.spec.name for t in report.topics if t.created} == {REPARTITION, CHANGELOG}
        # Made with what correctness needs, checked as ever; the tuning asked for first.
        assert broker.configs[CHANGELOG] == {"cleanup.policy": "compact"}
        assert broker.configs[REPARTITION] == topic_config("repartition")
        assert any("segment.ms" in asked for asked in broker.asked)
        # Checked again later: found as made, no mismatch.
        assert ensure(broker).status == "ready"


def test_a_cluster_that_takes_the_tuning_gets_it() -> None:
    broker = PolicyBroker(SERVERLESS | set(topic_tuning("changelog")))
    report = ensure(broker)
    assert report.status == "ready", report.message
    assert broker.configs[CHANGELOG] == {
        **topic_tuning("changelog"),
        **topic_config("changelog"),
    }


def test_a_refusal_of_what_is_checked_is_still_raised() -> None:
    """A policy that refuses ``cleanup.policy=compact`` itself: no changelog can be made
    that keeps state; the refusal is raised as before the tuning (``_attempt`` puts it in
    the pipeline's status and retries after a backoff), and nothing is made without it."""
    broker = PolicyBroker(frozenset({"retention.ms"}))
    with pytest.raises(KafkaAdminError, match="POLICY_VIOLATION"):
        ensure(broker)
    assert CHANGELOG not in broker.partitions
