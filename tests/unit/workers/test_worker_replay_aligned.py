"""A replay (or ``startFrom``'s time) inside a window computes that window whole
(helper-94's finding): each partition sought to the first record at or after the time, so
the window holding it was emitted with part of its records, under the key of its whole
result (``<key>|<window start>``): in a compacted topic or an upserting table the partial
result replaced the whole one, silently. It seeks to the start of the earliest window
holding the time now, and the windows before it start closed: a record of theirs read
after the seek (written after its time) is late, never a partial result."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WorkerConfig
from streamherd.workers.processing import SyntheticMessage
from tests.unit.workers import test_worker_unkeyed as unkeyed
from tests.unit.workers.test_worker_unkeyed import (
    BASE_TS,
    TOPIC,
    WINDOW_MS,
    MemorySource,
    message,
    once_each,
    reference,
    worker_config,
)


class TimedSource(MemorySource):
    """The memory topic with the broker's offsets for times (by the messages' Kafka
    timestamps: the first offset at or after the time; none: the log end)."""

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            mine = [m for m in self.messages if m.partition() == tp.partition]
            hit = next((m.offset() for m in mine if m.timestamp()[1] >= tp.offset), -1)
            out.append(TopicPartition(tp.topic, tp.partition, hit))
        return out

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, OFFSET_INVALID) for tp in partitions]

    def watermarks(self, partition: TopicPartition, *, fresh: bool = False) -> tuple[int, int]:
        mine = [m for m in self.messages if m.partition() == partition.partition]
        return 0, len(mine)


def config(start_ms: int) -> WorkerConfig:
    doc = worker_config("never").model_dump(by_alias=True, exclude_none=True)
    doc["source"]["kafka"]["startFromTimeMs"] = start_ms
    return WorkerConfig.model_validate(doc)


def run(messages: list[SyntheticMessage], start_ms: int, fused: bool) -> tuple[Any, Any]:
    def built(repartition: str) -> WorkerConfig:
        return config(start_ms)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unkeyed, "worker_config", built)
        patch.setattr(unkeyed, "MemorySource", TimedSource)
        rows, engine = unkeyed.run(messages, repartition="never", fused=fused, partitions=1)
    return rows, engine


def clicks(times: list[int], *, kafka: list[int] | None = None) -> list[SyntheticMessage]:
    out = []
    for i, t in enumerate(times):
        rec = {"user": "a", "bytes": 1, "ts": BASE_TS + t}
        msg = message(0, i, b"a", rec)
        if kafka is not None:  # written at another time than its event time
            msg = SyntheticMessage(TOPIC, 0, i, b"a", rec, BASE_TS + kafka[i])
        out.append(msg)
    return out


@settings(max_examples=80, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 900), min_size=1, max_size=40),
    start=st.integers(0, 12_000),
    fused=st.booleans(),
)
def test_the_window_holding_the_start_is_computed_whole(
    gaps: list[int], start: int, fused: bool
) -> None:
    times = [sum(gaps[: i + 1]) for i in range(len(gaps))]  # in order: Kafka time = event time
    rows, _ = run(clicks(times), BASE_TS + start, fused)
    first = (BASE_TS + start) - (BASE_TS + start) % WINDOW_MS
    recs = [{"user": "a", "bytes": 1, "ts": BASE_TS + t} for t in times if BASE_TS + t >= first]
    assert once_each(rows) == reference(recs)


def test_a_record_of_an_earlier_window_read_after_the_seek_is_late_not_a_partial_result() -> None:
    # Event times 0.5 s, 2.5 s, 3.5 s; the first written at 2.3 s (after its window's end).
    messages = clicks([500, 2_500, 3_500], kafka=[2_300, 2_500, 3_500])
    rows, engine = run(messages, BASE_TS + 2_200, fused=False)
    assert once_each(rows) == reference(
        [{"user": "a", "bytes": 1, "ts": BASE_TS + t} for t in (2_500, 3_500)]
    )
    assert engine.summary("stopped", finished=True).dead_lettered == 1
