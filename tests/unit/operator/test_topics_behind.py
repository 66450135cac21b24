"""A broker that has not caught up with a topic made or deleted a moment ago.

A KRaft broker answers a metadata request and a DescribeConfigs request from caches that
catch up one after the other: a topic another client has just created can be listed and
not yet described (UNKNOWN_TOPIC_OR_PART), or not listed at all. CI met the first (stop
38): the check reported the broker unreachable, which holds off every pipeline on the
cluster for a backoff. Whatever mix of such topics, the check says "checking" and retries
shortly, never "unreachable" nor "mismatch", and once the broker has caught up it says
"ready". A topic this check created is taken as made, listed or not. The broker side runs
for real in tests/integration/test_topicadmin.py.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.builders.topics import internal_topics, topic_config
from streamherd.operator.lagprobe import ClusterConfig
from streamherd.operator.topicadmin import BACKOFF_MAX, BEHIND_CHECKS, InternalTopics
from tests.unit.operator.operator_testkit import (
    admin_done,
    admin_failed,
    example_doc,
    pipeline_from,
)

#: How far behind the broker is with one internal topic.
Lag = str
CAUGHT_UP, ABSENT, UNDESCRIBED, UNLISTED, UNLISTED_AFTER_CREATE = (
    "caught-up",
    "absent",
    "undescribed",
    "unlisted",
    "unlisted-after-create",
)
#: The lags under which a topic exists before the check.
EXISTING = (CAUGHT_UP, UNDESCRIBED, UNLISTED)
#: The lags the check cannot see past: a topic it did not make and cannot read.
BEHIND = (UNDESCRIBED, UNLISTED)


class LaggingBroker:
    """An AdminClient whose metadata and configuration answers trail what exists.

    ``lags`` says, for each internal topic, what the broker answers until ``catch_up``:
    ``caught-up``, ``undescribed`` and ``unlisted`` topics exist (another client has just
    made them): the second is listed but its configuration is UNKNOWN_TOPIC_OR_PART, the
    third is neither listed nor described. ``absent`` and ``unlisted-after-create`` ones do
    not exist; the latter is not listed once this check has created it."""

    def __init__(self, partitions: dict[str, int], lags: dict[str, Lag]) -> None:
        self.partitions = dict(partitions)
        self.configs = {name: {"cleanup.policy": "delete"} for name in partitions}
        self.lags = dict(lags)
        self.created: list[str] = []
        self.down = False  # no broker answers

    def catch_up(self) -> None:
        self.lags = {name: CAUGHT_UP for name in self.lags}

    def poll(self, timeout: float) -> int:
        return 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise AssertionError("a check of named topics lists no topics")

    def delete_topics(self, topics: list[str], **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a check deletes nothing")

    def delete_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a check deletes nothing")

    def create_topics(self, new_topics: list[Any], **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t in new_topics:
            if t.topic in self.partitions:
                out[t.topic] = admin_failed(KafkaError.TOPIC_ALREADY_EXISTS)
                continue
            self.partitions[t.topic] = t.num_partitions
            self.configs[t.topic] = dict(t.config)
            self.created.append(t.topic)
            out[t.topic] = admin_done(None)
        return out

    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Any]:
        if self.down:
            return {name: admin_failed(KafkaError._TRANSPORT) for name in topics.topic_names}
        return {
            name: admin_done(SimpleNamespace(partitions=[object()] * self.partitions[name]))
            if name in self.partitions
            and self.lags.get(name) not in (UNLISTED, UNLISTED_AFTER_CREATE)
            else admin_failed(KafkaError.UNKNOWN_TOPIC_OR_PART)
            for name in topics.topic_names
        }

    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Any]:
        return {
            r: admin_done({k: SimpleNamespace(value=v) for k, v in self.configs[r.name].items()})
            if r.name in self.partitions
            and self.lags.get(r.name) not in (UNDESCRIBED, UNLISTED, UNLISTED_AFTER_CREATE)
            else admin_failed(KafkaError.UNKNOWN_TOPIC_OR_PART)
            for r in resources
        }


def _pipeline(name: str) -> Any:
    doc = example_doc("02-clicks-per-minute")
    doc["metadata"]["name"] = name
    doc["spec"].setdefault("checkpoint", {})["backend"] = "kafka"
    return pipeline_from(doc, namespace="default", uid=f"u-{name}")


def _broker(pipelines: list[Any], lags: dict[str, Lag]) -> LaggingBroker:
    """A broker with the pipelines' source topics, and their internal topics existing
    where their lag says so."""
    partitions: dict[str, int] = {}
    for p in pipelines:
        for source in p.spec.source.kafka.topics:
            partitions[source] = 4
    broker = LaggingBroker(partitions, lags)
    for p in pipelines:
        for spec in internal_topics(p):
            if lags.get(spec.name, CAUGHT_UP) in EXISTING:
                broker.partitions[spec.name] = 4
                broker.configs[spec.name] = dict(topic_config(spec.purpose))
    return broker


def _manager(broker: LaggingBroker, clock: list[float]) -> InternalTopics:
    return InternalTopics(
        resolve_cluster=lambda _p: ClusterConfig.of("k:9092"),
        admin_factory=lambda _c: broker,
        wait=10.0,
        clock=lambda: clock[0],
    )


def _new_check(manager: InternalTopics, pipeline: Any, clock: list[float]) -> Any:
    """Past any backoff, a new check of ``pipeline``'s topics, run in the manager's pool;
    the report it left (within its backoff)."""
    clock[0] += BACKOFF_MAX + 1
    manager.ensure(pipeline)
    key = (pipeline.namespace, pipeline.name)
    pause = threading.Event()
    for _ in range(500):
        if key not in manager._running:
            break
        pause.wait(0.01)
    return manager.ensure(pipeline)


@given(st.lists(st.sampled_from([CAUGHT_UP, ABSENT, UNDESCRIBED, UNLISTED, UNLISTED_AFTER_CREATE])))
def test_a_broker_behind_its_topics_is_checked_again_and_never_called_unreachable(
    picked: list[Lag],
) -> None:
    pipeline = _pipeline("behind")
    other = _pipeline("beside")  # on the same cluster, its topics all caught up
    names = [s.name for s in internal_topics(pipeline)]
    lags = dict(zip(names, [*picked, *[CAUGHT_UP] * len(names)], strict=False))
    broker = _broker([pipeline, other], lags)
    clock = [0.0]
    manager = _manager(broker, clock)
    try:
        first = manager.ensure(pipeline)
        assert first is not None
        behind = [n for n in names if lags[n] in BEHIND]
        if behind:
            assert first.status == "checking", first
            assert all(n in first.message for n in behind), first.message
            assert first.retry_after is not None and first.retry_after <= 5.0
        else:
            assert first.status == "ready", first
        # Every topic that did not exist was created, once, whatever the broker lists.
        assert sorted(broker.created) == sorted(
            n for n in names if lags[n] in (ABSENT, UNLISTED_AFTER_CREATE)
        )
        assert {t.spec.name for t in first.created} == set(broker.created)
        # The cluster is not marked down: a pipeline beside it is checked at once.
        beside = manager.ensure(other)
        assert beside is not None and beside.status == "ready", beside
        # Caught up, the next try (a backoff later) finds every topic as it should be.
        broker.catch_up()
        clock[0] += 1000.0
        later = manager.ensure(pipeline)
        pause = threading.Event()
        for _ in range(200):  # the new try runs in the manager's pool; the last report
            if later is not None and later.status != "checking":  # stands until it ends
                break
            pause.wait(0.01)
            later = manager.ensure(pipeline)
        assert later is not None and later.status == "ready", later
        assert later.created == [] and sorted(broker.created) == sorted(set(broker.created))
    finally:
        manager.close()


def test_a_topic_the_broker_never_describes_becomes_a_mismatch_after_a_few_checks() -> None:
    """A principal that may create a topic but not Describe it: the creation says it
    exists, the broker never lists it to us. "checking" for the first BEHIND_CHECKS
    checks (a topic made a moment ago), then a mismatch that names it and says why, so a
    person sees it (TopicMismatch, Degraded); checked again at each backoff all along."""
    pipeline = _pipeline("hidden")
    names = [s.name for s in internal_topics(pipeline)]
    broker = _broker([pipeline], {names[0]: UNLISTED})
    clock = [0.0]
    manager = _manager(broker, clock)
    try:
        seen = []
        for _ in range(BEHIND_CHECKS + 2):
            report = _new_check(manager, pipeline, clock)
            assert report is not None and report.retry_after is not None
            seen.append(report.message)
            assert report.status == ("checking" if len(seen) <= BEHIND_CHECKS else "mismatch")
        assert names[0] in seen[-1] and "ACL" in seen[-1], seen[-1]
        assert broker.created == []  # it exists: the creation says so, every time
    finally:
        manager.close()


def test_only_checks_that_found_topics_behind_count_toward_the_bound() -> None:
    """A broker down for many checks, then up with a topic another client made a moment
    ago: that is one check behind, "checking", not a mismatch because failures came first."""
    pipeline = _pipeline("back")
    names = [s.name for s in internal_topics(pipeline)]
    broker = _broker([pipeline], {names[0]: UNDESCRIBED})
    broker.down = True
    clock = [0.0]
    manager = _manager(broker, clock)
    try:
        for n in range(BEHIND_CHECKS + 3):
            if n == BEHIND_CHECKS + 2:
                broker.down = False
            report = _new_check(manager, pipeline, clock)
            assert report is not None
            assert report.status == ("unreachable" if broker.down else "checking"), report
    finally:
        manager.close()
