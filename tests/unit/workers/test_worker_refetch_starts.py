"""Engine._refetch: where a partition moved inside a poll is sought again, only where the
consumer would have started it (helper-119's review of its first version).

Schedules the property tests' model cannot express, each with the model changed only where
librdkafka differs: a seek that resolves a logical offset when it is served, a committed-
offset lookup that fails inside an assignment, a seek refused while an assignment's fetch
has not started (its committed offset still looked up). The first version of _refetch lost
records in the first (it sought an unpinned log end again, past what the poll had handed
out), read the group's history again in the second (the log start for a committed offset it
did not know), and stopped the worker in the third (the seek's _STATE, not transient)."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    KafkaError,
    KafkaException,
    TopicPartition,
)

import tests.unit.workers.test_worker_commit_never_passes_unfolded as alo
from streamherd.workers.main import cured_by_waiting
from tests.unit.workers.test_worker_commit_never_passes_unfolded import Event, GroupConsumer


def schedule(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gaps": [[0] * 11],
        "initial": [0],
        "events": [],
        "chunk": 3,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": set(),
    }
    base.update(changes)
    return base


# -- 1. a seek that resolves logical offsets (the model's seek takes OFFSET_END, -1, for an
#       absolute offset below every record: it hands out the whole log).


class LogicalSeek(GroupConsumer):
    """The model, with seek resolving OFFSET_END/OFFSET_BEGINNING when it is served (as
    librdkafka's seek does: a ListOffsets at that moment), and records produced at poll 2
    right after its before-events (after an assignment resolved OFFSET_END, before the
    engine's _refetch seeks)."""

    watermarks_fail = True

    def seek(self, partition: TopicPartition) -> None:
        p, offset = partition.partition, partition.offset
        if offset == OFFSET_END:
            offset = self.ends(p)
        elif offset == OFFSET_BEGINNING:
            offset = self.logs[p][0] if self.logs[p] else 0
        super().seek(TopicPartition(partition.topic, p, offset))

    def _events(self, phase: Any) -> None:
        super()._events(phase)
        if phase == "before" and self.polls == 2:
            end = self.ends(0)
            added = list(range(end, end + 3))
            self.logs[0].extend(added)
            if 0 in self.queue:
                self.queue[0].extend(added)

    def watermarks(self, partition: TopicPartition, *, fresh: bool = False) -> Any:
        if fresh and self.watermarks_fail:
            return None  # the log end not read at the assignment: start-not-pinned
        return super().watermarks(partition, fresh=fresh)


def test_an_unpinned_latest_start_assigned_again_in_one_poll_loses_nothing() -> None:
    """startFrom latest, the log end not read at the assignment (start OFFSET_END, unpinned):
    p0 lost and assigned again inside poll 2, before its records; records 11..13 are
    produced, the poll hands them out (the new ownership's); _refetch drops them and seeks
    OFFSET_END again, which now resolves past them: never read (the first version of
    _refetch). Left to the consumer, its own resolution stands."""
    with patch.object(alo, "GroupConsumer", LogicalSeek):
        consumer, _ = alo.run(
            schedule(
                start_from="latest",
                events=[Event(2, "lost", 0, "before"), Event(2, "assign", 0, "before")],
            )
        )
    written = consumer.written()
    start = consumer.start[0]
    missing = sorted(o for o in consumer.logs[0] if o >= start and (0, o) not in written)
    assert not missing, f"p0 started at {start}: never read {missing}"


# -- 2. OFFSET_INVALID after a failed committed-offset lookup: the engine resolves it to the
#       log start, the consumer to the group's committed offset.


class FailingLookups(GroupConsumer):
    """The model with the committed-offset lookups failing at chosen calls (the model fails
    only the first ones, when nothing is committed yet)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group[0] = 6  # committed by the partition's previous owner (no checkpoint here)
        self.sought: list[int] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.polls == 2:  # inside poll 2's callbacks: the coordinator is moving
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return super().committed(partitions, timeout)

    def seek(self, partition: TopicPartition) -> None:
        self.sought.append(partition.offset)
        offset = partition.offset
        if offset == OFFSET_BEGINNING:
            offset = self.logs[partition.partition][0]
        GroupConsumer._seek(self, partition.partition, offset)


def test_a_start_the_group_could_not_tell_is_not_guessed() -> None:
    """At-least-once, no checkpoint, the group committed 6. p0 lost and assigned again inside
    poll 2 after its records; that assignment's two committed lookups time out: the start
    is OFFSET_INVALID, which the consumer resolves to 6 (its own OffsetFetch); _resolved
    said the log start (st.committed unknown), and _refetch sought p0 there: 0..5, which
    the group had passed, were read (and written) again (the first version of _refetch).
    Now the consumer's own resolution stands."""
    with patch.object(alo, "GroupConsumer", FailingLookups):
        consumer, _ = alo.run(
            schedule(events=[Event(2, "lost", 0, "after"), Event(2, "assign", 0, "after")])
        )
    assert isinstance(consumer, FailingLookups)
    reread = sorted(o for p, o in consumer.written() if p == 0 and o < 6)
    assert not reread, (
        f"sought to {consumer.sought} (not 6, where the consumer starts itself): "
        f"read again below the group's committed offset 6: {reread}"
    )


# -- 3. seek on a partition whose fetcher has not started: rd_kafka_toppar_seek answers
#       _STATE (FETCH_STOPPED/NONE) or _PREV_IN_PROGRESS (STOPPING), and Consumer.seek, which
#       waits for that answer (rd_kafka_seek_partitions(..., -1)), raises it. An assignment
#       at OFFSET_INVALID starts its fetcher only when its OffsetFetch answers
#       (rd_kafka_assignment_serve_pending), after the incremental_assign() returned.


class UnstartedSeek(GroupConsumer):
    def assign(self, start: list[TopicPartition]) -> None:
        super().assign(start)
        self.unstarted = {tp.partition for tp in start if tp.offset == -1001}

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        self.unstarted = set()
        return super().poll(max_records, timeout)

    def seek(self, partition: TopicPartition) -> None:
        if partition.partition in self.unstarted:  # the OffsetFetch not answered yet
            raise KafkaException(KafkaError(KafkaError._STATE))
        super().seek(partition)


def test_a_partition_whose_fetch_has_not_started_is_not_sought() -> None:
    """p0 (no checkpoint: its start OFFSET_INVALID) lost and assigned again in one poll, the
    poll returning before the OffsetFetch answers: _refetch's seek raised _STATE out of the
    loop, not transient (workers/main.py re-raised it: the worker process exited). Nothing
    of the new ownership was handed out: the start it was assigned stands."""
    with patch.object(alo, "GroupConsumer", UnstartedSeek):
        try:
            alo.run(schedule(events=[Event(2, "lost", 0, "after"), Event(2, "assign", 0, "after")]))
        except KafkaException as error:
            assert not cured_by_waiting(error)
            raise AssertionError(f"the engine stopped: {error}") from error
