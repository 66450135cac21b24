"""The manifest's topic pattern against the real broker: every name the CRD accepts, Kafka
can create, and every name it refuses, Kafka refuses.

The broker is asked with `CreateTopics(validate_only=True)`, so nothing is created; a name
the broker already has (TOPIC_ALREADY_EXISTS) or that collides with one by '.' against '_'
is a legal name all the same. The unit tier checks the pattern against Kafka's rule in words
(tests/unit/api/test_topic_names.py); this pins the words to the broker.
"""

from __future__ import annotations

import re

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.cimpl import NewTopic
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamherd.operator.api.v1alpha1 import TOPIC_PATTERN
from tests.infra.kafka import KafkaBroker
from tests.infra.manifest_strategies import TOPIC_NAMES

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

EDGES = [".", "..", "...", ".a", "..a", "a.", "_", "-", "a" * 249, "a" * 250, "..".ljust(249, "b")]


def broker_accepts(broker: KafkaBroker, names: list[str]) -> dict[str, bool]:
    """Whether the broker would create each name (one validate-only request for all)."""
    admin = broker.admin()
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=1, replication_factor=1) for n in names],
        validate_only=True,
        request_timeout=20,
    )
    verdicts: dict[str, bool] = {}
    for name, future in futures.items():
        try:
            future.result(30)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                verdicts[name] = True
            elif error.code() == KafkaError.TOPIC_EXCEPTION:
                verdicts[name] = "collides with existing topics" in error.str()
            else:
                raise
        else:
            verdicts[name] = True
    return verdicts


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(TOPIC_NAMES.filter(bool), min_size=1, max_size=25, unique=True))
@example(EDGES)
def test_the_pattern_accepts_exactly_what_the_broker_creates(
    kafka_broker: KafkaBroker, names: list[str]
) -> None:
    # the empty name is left out: librdkafka refuses it before the broker is asked
    pattern = {n: re.fullmatch(TOPIC_PATTERN, n) is not None for n in names}
    assert broker_accepts(kafka_broker, names) == pattern
