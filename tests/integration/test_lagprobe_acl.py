"""The lag probe's fallback when ``__consumer_offsets`` may not be read, on a real broker with
an authorizer.

The session broker runs without an authorizer, so this test starts its own (the
tests/infra/kafka.py broker, with KRaft's StandardAuthorizer switched on and everything
allowed unless an ACL says otherwise). Then, with real ACLs against the test's principal
(``User:ANONYMOUS`` on the PLAINTEXT listener):

- ALLOW Describe, DENY Read on ``__consumer_offsets``: the reader's Fetch fails with
  TOPIC_AUTHORIZATION_FAILED; the probe answers that call with OffsetFetch, stops reading the
  topic for good and logs it once;
- DENY Describe as well: the topic vanishes from the metadata; a new probe never starts a
  reader and answers with OffsetFetch (what a principal without any right on the topic
  meets).

Each time the figures equal the admin API's per-group answers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streamherd.operator import lagprobe as lagprobe_module
from streamherd.operator.lagprobe import ClusterConfig, GroupLag, GroupSpec, LagProbe
from tests.infra import kafka as kafka_infra
from tests.infra.kafka import KafkaBroker
from tests.integration.test_lagprobe import alter_offsets

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[KafkaBroker]:
    settings = {
        **kafka_infra.TEST_SETTINGS,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kafka_infra, "TEST_SETTINGS", settings)
        proc = kafka_infra.start_kafka()
    try:
        yield proc.broker
    finally:
        proc.stop()


def _acl(broker: KafkaBroker, operation: AclOperation, permission: AclPermissionType) -> None:
    acl = AclBinding(
        ResourceType.TOPIC,
        "__consumer_offsets",
        ResourcePatternType.LITERAL,
        "User:ANONYMOUS",
        "*",
        operation,
        permission,
    )
    admin = broker.admin()  # kept referenced until the answer is in
    for f in admin.create_acls([acl], request_timeout=30).values():
        f.result(60)


def _setup(broker: KafkaBroker) -> tuple[str, list[str]]:
    topic = broker.create_topic(broker.unique_topic("acl"), partitions=2)
    broker.produce(topic, (f"r{i}" for i in range(20)), partition=0)
    broker.produce(topic, (f"r{i}" for i in range(10)), partition=1)
    groups = [f"acl-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    alter_offsets(
        broker,
        {
            g: [TopicPartition(topic, 0, 5 * i), TopicPartition(topic, 1, i)]
            for i, g in enumerate(groups[:3])
        },
    )
    return topic, groups


def _committed(results: dict[str, object]) -> dict[str, list[int | None]]:
    out = {}
    for g, r in results.items():
        assert isinstance(r, GroupLag), r
        out[g] = [p.committed for p in r.partitions]
    return out


EXPECTED = [[0, 0], [5, 1], [10, 2], [None, None]]


def test_unreadable_offsets_topic_falls_back_to_offset_fetch(
    acl_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    topic, groups = _setup(acl_broker)
    specs = [GroupSpec(g, (topic,)) for g in groups]
    cluster = ClusterConfig.of(acl_broker.bootstrap)
    with LagProbe(cluster, request_timeout=20.0) as allowed:
        assert _committed(allowed.measure_many(specs)) == dict(zip(groups, EXPECTED, strict=True))
        assert (allowed.counters.from_topic, allowed.counters.from_fetch) == (4, 0)

    # Once a resource has an ACL, "allow everyone if no ACL found" no longer applies to it:
    # Describe must be allowed explicitly, or the topic leaves the metadata (the case below).
    _acl(acl_broker, AclOperation.DESCRIBE, AclPermissionType.ALLOW)
    _acl(acl_broker, AclOperation.READ, AclPermissionType.DENY)
    caplog.set_level(logging.DEBUG, logger=lagprobe_module.__name__)
    with LagProbe(cluster, request_timeout=20.0) as denied:
        first = denied.measure_many(specs)
        second = denied.measure_many(specs)
        reason = denied.offsets_topic_disabled
        reader = denied.reader
        counters = (denied.counters.from_topic, denied.counters.from_fetch)
    assert _committed(first) == _committed(second) == dict(zip(groups, EXPECTED, strict=True))
    assert reason is not None and "TOPIC_AUTHORIZATION_FAILED" in reason
    assert reader is None and counters == (0, 8)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not reading __consumer_offsets again" in warnings[0].getMessage()

    _acl(acl_broker, AclOperation.DESCRIBE, AclPermissionType.DENY)
    with LagProbe(cluster, request_timeout=20.0) as hidden:
        third = hidden.measure_many(specs)
        assert hidden.reader is None  # never started: the topic is not in the metadata
        assert hidden.offsets_topic_disabled is None  # it may appear later: not for good
        assert (hidden.counters.from_topic, hidden.counters.from_fetch) == (0, 4)
    assert _committed(third) == dict(zip(groups, EXPECTED, strict=True))
