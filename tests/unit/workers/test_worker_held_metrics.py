"""A held partition (assigned, not consumed, not checkpointed) shows in
``streamherd_partition_held{topic,partition,reason}``, not only in /readyz: held for its
state, for the offset of a replay's or startFrom's time the broker has not given yet, or
for its start under ``startFrom: latest`` (the committed offset could not be read). The
series is there while the partition is held, gone once it is consumed again or dropped."""

from __future__ import annotations

import io
import threading
from typing import Any, Literal
from unittest.mock import patch

from confluent_kafka import TopicPartition

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.metrics import EngineMetrics
from tests.unit.workers.test_worker_input_lost import (
    TOPIC,
    KeptBackend,
    Log,
    UnansweringGroup,
    worker_config,
)

StartFrom = Literal["earliest", "latest"]


def held(metrics: EngineMetrics) -> dict[tuple[str, str], float]:
    """(partition, reason) -> value of every streamherd_partition_held series."""
    [family] = [f for f in metrics.registry.collect() if f.name == "streamherd_partition_held"]
    return {(s.labels["partition"], s.labels["reason"]): s.value for s in family.samples}


def engine(source: UnansweringGroup, start_from: StartFrom, time_ms: int | None = None) -> Engine:
    doc: dict[str, Any] = worker_config(start_from).model_dump(by_alias=True, exclude_none=True)
    if time_ms is not None:
        doc["source"]["kafka"]["startFromTimeMs"] = time_ms
    made = Engine(
        WorkerConfig.model_validate(doc), stop=source.stop, out=io.StringIO(),
        metrics=EngineMetrics("held"), source=source, state=KeptBackend(),
    )  # fmt: skip
    made._list_topics = lambda timeout=10.0: []  # type: ignore[method-assign]
    made.source = source
    source.open(made._on_assign, made._on_revoke, made._on_lost)
    return made


def two_partitions() -> Log:
    return Log({0: list(range(10)), 1: list(range(10))}, {0: 0, 1: 0})


def test_a_start_the_group_could_not_tell_is_shown_held_until_found() -> None:
    source = UnansweringGroup(threading.Event(), two_partitions(), failures=2, produced=0)
    made = engine(source, "latest")
    assert held(made.metrics) == {("0", "start-offset"): 1, ("1", "start-offset"): 1}
    assert all(st.held is not None for st in made.partitions.values())
    # An exactly-once abort rebuilds the partitions: still held, still shown.
    with patch.object(made, "_committed_with_metadata", lambda *_: {}):
        made._abort_and_rewind(source, "aborted by the test")
    assert held(made.metrics) == {("0", "start-offset"): 1, ("1", "start-offset"): 1}
    made._retry_starts()  # the group answers
    assert not [st for st in made.partitions.values() if st.held is not None]
    assert held(made.metrics) == {}


class UntimedGroup(UnansweringGroup):
    """The broker gives no offset for the start time until ``answering``."""

    answering = False

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        if not self.answering:
            return []
        return [TopicPartition(tp.topic, tp.partition, 5) for tp in partitions]


def test_a_start_time_without_an_offset_is_shown_held_until_the_broker_gives_one() -> None:
    source = UntimedGroup(threading.Event(), two_partitions(), failures=0, produced=0)
    made = engine(source, "earliest", time_ms=1_767_225_600_000)
    assert held(made.metrics) == {("0", "replay-offset"): 1, ("1", "replay-offset"): 1}
    made._retry_seeks()  # asked again: still no answer
    assert held(made.metrics) == {("0", "replay-offset"): 1, ("1", "replay-offset"): 1}
    source.answering = True
    made._retry_seeks()
    assert not [st for st in made.partitions.values() if st.held is not None]
    assert held(made.metrics) == {}


def test_a_state_hold_is_shown_and_its_series_goes_with_the_partition() -> None:
    source = UnansweringGroup(threading.Event(), two_partitions(), failures=0, produced=0)
    made = engine(source, "earliest")
    assert held(made.metrics) == {}
    made._hold(made.partitions[(TOPIC, 0)], "held by the test", "test-hold", {})
    assert held(made.metrics) == {("0", "state"): 1}
    made._drop_state(TOPIC, 0)  # revoked or lost: no series left behind
    assert held(made.metrics) == {}


def test_one_series_per_held_partition_whatever_its_reasons_were() -> None:
    metrics = EngineMetrics("held")
    metrics.partition_held(TOPIC, 0, "start-offset")
    metrics.partition_held(TOPIC, 0, "state")
    metrics.partition_held(TOPIC, 1, "replay-offset")
    assert held(metrics) == {("0", "state"): 1, ("1", "replay-offset"): 1}
    metrics.partition_held(TOPIC, 0, None)
    metrics.forget_partition(TOPIC, 1)
    assert held(metrics) == {}
