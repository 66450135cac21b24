"""Records the broker deletes before a worker reads them (decision 0201), over any log.

The log has gaps of its own (compaction, transaction markers), and the broker moves its start
forward at any moment: while the pipeline is stopped, and while a worker reads, some records
already prefetched. A worker resumes with its checkpoint or from the group's offset alone,
under either ``startFrom``. The source here behaves as librdkafka does with
``auto.offset.reset: earliest``: a position the log no longer holds resumes at the log start,
after the records already fetched are handed out.

The invariant: past where the first run stopped, every record is either read or inside a
range counted lost, never both; a lost range holds only offsets the broker deleted before the
worker saw them; and a log with gaps and no deletion counts nothing. The integration test on
the real broker (tests/integration/engine/test_engine_records_lost.py) checks a few cases
end to end; this one checks the engine's bookkeeping over arbitrary ones.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from unittest.mock import patch

import orjson
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.processing import SyntheticMessage
from tests.unit.workers.test_worker_seams import DictBackend

TOPIC = "gappy"
BASE_TS = 1_767_225_600_000


@dataclass
class Deletion:
    """At the source's poll number ``at``, the broker deletes partition ``partition``'s
    records before ``before`` (retention, DeleteRecords); the consumer had already fetched
    the next ``prefetched`` records, which it still hands out."""

    at: int
    partition: int
    before: int
    prefetched: int


@dataclass
class Log:
    """The partitions' record offsets (ascending, gaps allowed), their log starts, and the
    consumer group's committed offsets and their metadata."""

    offsets: dict[int, list[int]]
    low: dict[int, int]
    group: dict[int, tuple[int, str]] = field(default_factory=dict)
    # Every offset the source handed out, and every one the broker deleted unread.
    handed: set[tuple[int, int]] = field(default_factory=set)
    deleted_unread: set[tuple[int, int]] = field(default_factory=set)
    # Where a partition that had no position yet (a new pipeline's earliest: the log start,
    # whatever it is when the first fetch comes) was moved to by a deletion: no loss.
    start_moved: dict[int, int] = field(default_factory=dict)
    # Deleted unread, but behind a jump the worker cannot tell from a marker: the log start
    # moved again, past the jump's first record, before that record was handed out (two
    # deletions in a row; the undercount decision 0201 accepts).
    hidden: set[tuple[int, int]] = field(default_factory=set)

    def high(self, partition: int) -> int:
        records = self.offsets[partition]
        return records[-1] + 1 if records else 0

    def delete(self, partition: int, before: int) -> None:
        """The log start moves to ``before`` (never back, never past the end)."""
        self.low[partition] = max(self.low[partition], min(before, self.high(partition)))


class DeletingSource:
    """A consumer of ``log`` whose broker deletes records as ``deletions`` say; hands out
    ``chunk`` records per partition per poll; ends the run when ``stop_after`` records were
    handed out, or when every record has been."""

    name = "kafka"
    group_offsets = True
    cluster_id: str | None = None
    origin_ms: int | None = None

    def __init__(
        self,
        stop: threading.Event,
        log: Log,
        *,
        chunk: int,
        deletions: Sequence[Deletion] = (),
        stop_after: int | None = None,
    ) -> None:
        self.stop, self.log, self.chunk = stop, log, chunk
        self.deletions, self.stop_after = list(deletions), stop_after
        self.queue: dict[int, list[int]] = {}
        # The partitions with a position: assigned at an offset, a committed one, or read.
        self.anchored: set[int] = set()
        self.polls = self.given = 0
        self.on_abort: Any = None
        # Per partition, the consumer's resets to the log start not yet handed out: the
        # first record after each jump and the offsets deleted unread before it.
        self.jumps: dict[int, list[tuple[int, set[int]]]] = {}

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        assigned([TopicPartition(TOPIC, p) for p in sorted(self.log.offsets)])

    def adopt_origin(self, origin_ms: int) -> None:
        pass

    def _message(self, partition: int, offset: int) -> SyntheticMessage:
        ts = BASE_TS + offset
        record = {"p": partition, "o": offset, "ts": ts}
        return SyntheticMessage(TOPIC, partition, offset, b"k", record, ts)

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        self.polls += 1
        for deletion in [d for d in self.deletions if d.at <= self.polls]:
            self.deletions.remove(deletion)
            self._delete(deletion)
        batch: list[SyntheticMessage] = []
        for partition, queue in self.queue.items():
            taken, self.queue[partition] = queue[: self.chunk], queue[self.chunk :]
            batch.extend(self._message(partition, o) for o in taken)
            self.log.handed.update((partition, o) for o in taken)
            self._hand_out(partition, taken)
            if taken:
                self.anchored.add(partition)
        self.given += len(batch)
        if self.stop_after is not None and self.given >= self.stop_after:
            self.stop.set()
        return batch

    def _delete(self, deletion: Deletion) -> None:
        p = deletion.partition
        self.log.delete(p, deletion.before)
        queue = self.queue.get(p)
        if queue is None:  # not assigned: the log start moves, nothing is fetched
            return
        if p not in self.anchored:
            # Nothing fetched yet from "the log start": the first fetch finds the new one.
            self.log.start_moved[p] = self.log.low[p]
            self.queue[p] = [o for o in queue if o >= self.log.low[p]]
            return
        fetched, rest = queue[: deletion.prefetched], queue[deletion.prefetched :]
        # The fetch after the prefetched records is out of range: the consumer resumes at
        # the log start (auto.offset.reset: earliest).
        kept = [o for o in rest if o >= self.log.low[p]]
        gone = {o for o in rest if o < self.log.low[p]}
        self.log.deleted_unread.update((p, o) for o in gone)
        self.queue[p] = fetched + kept
        # A reset still to be handed out whose first record went too is one longer jump.
        jumps = self.jumps.setdefault(p, [])
        for first, gap in [j for j in jumps if j[0] in gone]:
            jumps.remove((first, gap))
            gone |= gap
        if gone and kept:
            jumps.append((kept[0], gone))

    def _reset(self, p: int, position: int) -> None:
        """The consumer's position of ``p`` is ``position``: out of range, it resumes at
        the log start, a jump over what was deleted unread."""
        low = self.log.low[p]
        start = position if low <= position <= self.log.high(p) else low
        self.queue[p] = [o for o in self.log.offsets[p] if o >= start]
        gap = {o for o in self.log.offsets[p] if position <= o < low}
        self.jumps[p] = [(self.queue[p][0], gap)] if gap and self.queue[p] else []

    def _hand_out(self, p: int, taken: list[int]) -> None:
        """The worker judges a jump by the log start when its first record comes: one that
        moved past that record since (another deletion) makes the jump look like a marker."""
        for first, gap in list(self.jumps.get(p, [])):
            if first in taken:
                self.jumps[p].remove((first, gap))
                if first < self.log.low[p]:
                    self.log.hidden.update((p, o) for o in gap)

    @property
    def exhausted(self) -> bool:
        return not self.deletions and not any(self.queue.values())

    def describe(self) -> Mapping[str, Any]:
        return {"source": self.name}

    def assign(self, start: list[TopicPartition]) -> None:
        for tp in start:
            p, low, high = tp.partition, self.log.low[tp.partition], self.log.high(tp.partition)
            if tp.offset >= 0 or p in self.log.group:
                self.anchored.add(p)
            if tp.offset >= 0:
                position = tp.offset
            elif tp.offset == OFFSET_END:
                position = high
            elif tp.offset == OFFSET_BEGINNING:
                position = low
            else:
                assert tp.offset == OFFSET_INVALID, tp
                committed = self.log.group.get(p)
                position = committed[0] if committed is not None else low
            self._reset(p, position)  # out of range: auto.offset.reset (earliest)

    def unassign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.queue.pop(tp.partition, None)

    def pause(self, partitions: list[TopicPartition]) -> None:
        raise AssertionError("nothing here pauses a partition")

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def seek(self, partition: TopicPartition) -> None:
        raise AssertionError("nothing here rewinds")

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            offset, metadata = self.log.group.get(tp.partition, (OFFSET_INVALID, ""))
            out.append(TopicPartition(tp.topic, tp.partition, offset, metadata=metadata))
        return out

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        for tp in offsets:
            self.log.group[tp.partition] = (tp.offset, tp.metadata or "")
        return [] if asynchronous else list(offsets)

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        raise AssertionError("no start time here")

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        return self.log.low[partition.partition], self.log.high(partition.partition)

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return []  # no transaction markers in memory

    def group_metadata(self) -> Any:
        return None

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, tuple[str | None, int]]:
        return {TOPIC: (None, len(self.log.offsets))}

    def close(self) -> None:
        pass


class KeptBackend(DictBackend):
    """Checkpoints kept whole (frozen objects), the group's committed offset in them too:
    the engine judges an offset reset by it."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[tuple[str, int], Checkpoint] = {}

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        return self.kept.get((topic, partition))

    def save(self, checkpoints: list[Checkpoint], *, group: Any = None) -> None:
        self.saves += 1
        self.kept.update(((c.topic, c.partition), c) for c in checkpoints)


def worker_config(start_from: Literal["earliest", "latest"]) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "lost"},
            "source": {
                "kafka": {
                    "bootstrapServers": "127.0.0.1:9",  # never dialled: the source is given
                    "topics": [TOPIC],
                    "consumerGroup": "lost",
                    "startFrom": start_from,
                }
            },
            "processor": {"steps": [{"filter": "o >= 0"}]},
            "sink": {"stdout": {}},
            "checkpoint": {"directory": "/nonexistent/never-written", "intervalSeconds": 3600},
            "runtime": {"metricsPort": 0, "batchSize": 50},
        }
    )


def run(
    start_from: Literal["earliest", "latest"], backend: KeptBackend, source: DeletingSource
) -> tuple[set[tuple[int, int]], list[tuple[int, int, int]]]:
    """One worker's run: the (partition, offset) of every record it wrote out, and every
    range it counted lost (partition, first, resumes_at)."""
    out = io.StringIO()
    engine = Engine(
        worker_config(start_from), stop=source.stop, out=out, metrics=EngineMetrics("lost"),
        source=source, state=backend,
    )  # fmt: skip
    lost: list[tuple[int, int, int]] = []
    counted = engine._count_lost
    # An abort a RewindingSource schedules: the engine's own, as a failed transaction's.
    source.on_abort = lambda: engine._abort_and_rewind(source, "aborted by the test")

    def record_lost(st: Any, position: int, resumes_at: int, **how: Any) -> None:
        lost.append((st.partition, position, resumes_at))
        counted(st, position, resumes_at, **how)

    # No broker behind the Kafka source's address: no snapshot topic to look for.
    with (
        patch.object(engine, "_list_topics", lambda timeout=10.0: []),
        patch.object(engine, "_count_lost", record_lost),
    ):
        engine.run()
    assert not [s for s in engine.partitions.values() if s.held is not None]
    read = set()
    for line in out.getvalue().splitlines():
        row = orjson.loads(line)
        read.add((row["p"], row["o"]))
    return read, lost


def gappy_log(gaps: list[list[int]]) -> dict[int, list[int]]:
    """Each partition's record offsets: a gap of g before a record skips g offsets (a
    compacted record, a transaction marker), and a last record that nothing deletes (a
    partition whose every record is deleted is counted only once a record comes: decision
    0201, a known limit)."""
    logs = {}
    for p, partition_gaps in enumerate(gaps):
        offsets, at = [], 0
        for gap in [*partition_gaps, 0]:
            at += gap
            offsets.append(at)
            at += 1
        logs[p] = offsets
    return logs


SCENARIO = st.fixed_dictionaries(
    {
        # Per partition, per record: the offsets skipped before it (mostly none).
        "gaps": st.lists(
            st.lists(st.sampled_from([0, 0, 0, 0, 1, 2, 5]), max_size=40), min_size=1, max_size=3
        ),
        "start_from": st.sampled_from(["earliest", "latest"]),
        # How many records the first run reads before it stops (None: no first run).
        "first_run": st.none() | st.integers(0, 60),
        "keep_checkpoint": st.booleans(),
        "chunk": st.integers(1, 7),
        # While stopped: how far each partition's log start moves (fraction of its end).
        "stopped_deletions": st.lists(st.integers(0, 100), max_size=3),
        # While reading: (poll number, partition, fraction of the end, records prefetched).
        "running_deletions": st.lists(
            st.tuples(
                st.integers(1, 30), st.integers(0, 2), st.integers(0, 100), st.integers(0, 8)
            ),
            max_size=4,
        ),
    }
)


def fraction(log: Log, partition: int, percent: int) -> int:
    """An offset ``percent`` of the way into the partition, never past its last record (a
    partition whose every record is deleted is counted once a record comes: a known limit
    of decision 0201, which the last record, never deleted, stands in for)."""
    return min(log.high(partition) * percent // 100, log.high(partition) - 1)


@settings(max_examples=1000, deadline=None)
@given(SCENARIO)
# One consume() hands out a prefetched record and the first after the reset together: the
# jump is inside the batch, not at its start (a review's finding).
@example(
    {
        "gaps": [[0, 0, 0, 0, 0, 0]],
        "start_from": "earliest",
        "first_run": 2,
        "keep_checkpoint": False,
        "chunk": 2,
        "stopped_deletions": [],
        "running_deletions": [(1, 0, 60, 1)],
    }
)
# A second deletion before the reset's first record is handed out hides the jump (found by
# this test on the CI's random draws: decision 0201's undercount, modelled since).
@example(
    {
        "gaps": [[0, 0, 0]],
        "start_from": "earliest",
        "first_run": 0,
        "keep_checkpoint": True,
        "chunk": 1,
        "stopped_deletions": [50],
        "running_deletions": [(1, 0, 75, 1)],
    }
)
def test_every_record_is_read_or_counted_lost_never_both(scenario: dict[str, Any]) -> None:
    offsets = gappy_log(scenario["gaps"])
    partitions = len(offsets)
    # The first run sees each partition's first half; the rest is produced after it.
    log = Log({p: o[: len(o) // 2] for p, o in offsets.items()}, {p: 0 for p in offsets})
    start_from = scenario["start_from"]
    backend = KeptBackend()
    read: set[tuple[int, int]] = set()
    lost: list[tuple[int, int, int]] = []
    if scenario["first_run"] is not None:
        before = DeletingSource(
            threading.Event(), log, chunk=scenario["chunk"], stop_after=scenario["first_run"]
        )
        read, lost = run(start_from, backend, before)
        assert not lost  # nothing was deleted
    if not scenario["keep_checkpoint"]:
        backend = KeptBackend()  # the group's offsets alone (a checkpoint volume lost)
    log.offsets = offsets
    for p, percent in zip(offsets, scenario["stopped_deletions"], strict=False):
        log.delete(p, fraction(log, p, percent))
    # Where each partition resumes: its checkpoint's offset, else the group's, else where
    # startFrom puts it (a new pipeline's earliest is the log start: what the broker deleted
    # before the pipeline had a position is no loss).
    resume = {}
    for p in offsets:
        kept = backend.kept.get((TOPIC, p))
        if kept is not None:
            resume[p] = kept.next_offset
        elif p in log.group:
            resume[p] = log.group[p][0]
        else:
            resume[p] = log.high(p) if start_from == "latest" else log.low[p]
        # Deleted while the pipeline was stopped, past where it resumes.
        log.deleted_unread.update((p, o) for o in offsets[p] if resume[p] <= o < log.low[p])
    deletions = [
        Deletion(at, p % partitions, fraction(log, p % partitions, percent), prefetched)
        for at, p, percent, prefetched in scenario["running_deletions"]
    ]
    second = DeletingSource(threading.Event(), log, chunk=scenario["chunk"], deletions=deletions)
    read_again, lost_again = run(start_from, backend, second)
    lost += lost_again

    # Never both: no offset counted lost was read, by either run.
    counted = {(p, o) for p, first, resumes in lost for o in range(first, resumes)}
    assert len(counted) == sum(resumes - first for _, first, resumes in lost), "counted twice"
    assert not counted & (read | read_again), sorted(counted & (read | read_again))
    # Each lost range holds only offsets the broker deleted before they were handed out
    # (a gap's offsets inside it included: the counter counts offsets, decision 0201).
    for p, first, resumes in lost:
        assert first < resumes, lost
        assert resumes <= log.low[p], (lost, log.low)
        assert not {(p, o) for o in range(first, resumes)} & log.handed, lost
    # Every record from where the second run resumed is read or counted lost.
    # (Those behind a jump a second deletion hid are not: decision 0201's undercount.)
    for p, records in offsets.items():
        for o in records:
            if o >= max(resume[p], log.start_moved.get(p, 0)) and (p, o) not in log.hidden:
                assert (p, o) in read_again or (p, o) in counted, (p, o, lost, resume)
    # Of the records, exactly those deleted unread are counted, but for the hidden ones. The
    # counter counts offsets, so a gap's offsets next to them count too (decision 0201); a
    # gap alone never does.
    deleted = {(p, o) for p, o in log.deleted_unread if o >= resume[p]}
    every = {(p, o) for p, os in offsets.items() for o in os}
    assert deleted - log.hidden <= counted & every <= deleted, (
        sorted(counted & every),
        sorted(deleted),
        sorted(log.hidden),
    )


class UnansweringGroup(DeletingSource):
    """Its first ``failures`` committed-offset lookups time out (a coordinator moving while
    the group forms); once every partition has its start, ``produced`` more records come to
    each.
    Pauses, resumes and seeks as librdkafka does for one consumer."""

    def __init__(self, stop: threading.Event, log: Log, *, failures: int, produced: int) -> None:
        super().__init__(stop, log, chunk=5)
        self.failures, self.produced = failures, produced
        self.answered = False
        self.paused: set[int] = set()

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.failures > 0:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.answered = True
        return super().committed(partitions, timeout)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(tp.partition for tp in partitions)

    def seek(self, partition: TopicPartition) -> None:
        p = partition.partition
        self.queue[p] = [o for o in self.log.offsets[p] if o >= partition.offset]

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        if self.answered and not self.paused and self.produced:
            # Produced once every partition has its start: they come after it.
            for p, offsets in self.log.offsets.items():
                end = self.log.high(p)
                offsets.extend(range(end, end + self.produced))
                self.queue[p] = self.queue.get(p, []) + list(range(end, end + self.produced))
            self.produced = 0
        held = {p: self.queue.pop(p) for p in self.paused if p in self.queue}
        try:
            return super().poll(max_records, timeout)
        finally:
            self.queue.update(held)

    @property
    def exhausted(self) -> bool:
        if self.polls > 2000:  # never asked again (the code before): end, and judge it
            return True
        return self.answered and not self.paused and not self.produced and super().exhausted


@pytest.mark.parametrize("committed", [None, 4], ids=["nothing-committed", "committed"])
def test_a_latest_start_the_group_could_not_tell_is_held_and_asked_again(
    committed: int | None,
) -> None:
    """The committed-offset lookup fails at assignment under startFrom: latest with no
    checkpoint. Left to librdkafka, a partition with nothing committed started at
    auto.offset.reset, the log start since decision 0201: a new pipeline read the history it
    was told to skip. Held and asked again, it starts at the log end (nothing committed) or
    at the committed offset, and reads what comes after."""
    log = Log({0: list(range(10)), 1: list(range(10))}, {0: 0, 1: 0})
    if committed is not None:
        log.group = {0: (committed, ""), 1: (committed, "")}
    source = UnansweringGroup(threading.Event(), log, failures=2, produced=3)
    read, lost = run("latest", KeptBackend(), source)
    start = 10 if committed is None else committed
    assert read == {(p, o) for p in (0, 1) for o in range(start, 13)}
    assert not lost
    assert source.answered


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_a_marker_among_records_prefetched_before_a_deletion_is_no_loss(chunk: int) -> None:
    """Offset 2 is a transaction marker (no record); records 0, 1, 3 and 4 were fetched
    before the log start moved to 5. They are all read, so nothing is lost, wherever the
    batches split them: the gap at 2 lies below the log start on both sides (a review's
    finding: it was counted lost)."""
    log = Log({0: [0, 1, 3, 4, *range(5, 20)]}, {0: 0}, group={0: (0, "")})
    source = DeletingSource(threading.Event(), log, chunk=chunk, deletions=[Deletion(1, 0, 5, 4)])
    read, lost = run("earliest", KeptBackend(), source)
    assert not log.deleted_unread
    assert lost == []
    assert read == {(0, o) for o in (0, 1, 3, 4, *range(5, 20))}


class RewindingSource(DeletingSource):
    """A consumer whose partitions go back to their checkpoint while a worker reads: at poll
    number ``at`` of each ``(at, how)`` in ``rewinds``, the group takes them all away and
    gives them back (``lost``: a session timeout, no checkpoint on the way out), or the
    worker's open transaction aborts (``abort``: every partition seeks back to its commit).
    A position the log no longer holds resumes at the log start, as librdkafka's
    ``auto.offset.reset: earliest`` does."""

    def __init__(
        self, stop: threading.Event, log: Log, *, chunk: int, rewinds: Sequence[tuple[int, str]]
    ) -> None:
        super().__init__(stop, log, chunk=chunk)
        self.rewinds = sorted(rewinds)

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        self.assigned, self.lose = assigned, lost
        super().open(assigned, revoked, lost)

    def seek(self, partition: TopicPartition) -> None:
        self._reset(partition.partition, partition.offset)

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        while self.rewinds and self.rewinds[0][0] <= self.polls + 1:
            _, how = self.rewinds.pop(0)
            owned = [TopicPartition(TOPIC, p) for p in sorted(self.queue)]
            if how == "lost":
                self.lose(owned)
                self.assigned(owned)
            else:
                self.on_abort()
        return super().poll(max_records, timeout)

    @property
    def exhausted(self) -> bool:
        return not self.rewinds and super().exhausted


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(3, 30), min_size=1, max_size=3),
    st.integers(1, 30),
    st.integers(0, 100),
    st.booleans(),
    st.integers(1, 7),
    st.lists(st.tuples(st.integers(1, 12), st.sampled_from(["lost", "abort"])), max_size=3),
)
@example([20], 5, 50, True, 3, [(2, "lost")])
@example([20], 5, 50, False, 3, [(2, "abort")])
def test_a_gap_jumped_again_after_a_rewind_is_counted_once(
    sizes: list[int],
    first_run: int,
    percent: int,
    keep_checkpoint: bool,
    chunk: int,
    rewinds: list[tuple[int, str]],
) -> None:
    """The broker deleted records past where the pipeline stopped. The worker resumes, jumps
    the gap and counts it; then its partitions go back to their checkpoint, before the gap,
    any number of times (an exactly-once abort, partitions lost and assigned again), and
    every fetch from there jumps the same gap. Whatever the schedule, the records deleted
    unread are counted lost exactly once, and every record still in the log is read (a
    rewind's own re-reads aside: at-least-once). On the code before, each rewind counted the
    gap again."""
    offsets = {p: list(range(size)) for p, size in enumerate(sizes)}
    log = Log({p: o[: len(o) // 2] for p, o in offsets.items()}, {p: 0 for p in offsets})
    backend = KeptBackend()
    before = DeletingSource(threading.Event(), log, chunk=chunk, stop_after=first_run)
    _, lost = run("earliest", backend, before)
    assert not lost
    if not keep_checkpoint:
        backend = KeptBackend()  # the group's offsets alone
    log.offsets = offsets
    resume = {}
    for p, records in offsets.items():
        kept = backend.kept.get((TOPIC, p))
        resume[p] = kept.next_offset if kept is not None else log.group.get(p, (0, ""))[0]
        log.delete(p, fraction(log, p, percent))
        log.deleted_unread.update((p, o) for o in records if resume[p] <= o < log.low[p])
    source = RewindingSource(threading.Event(), log, chunk=chunk, rewinds=rewinds)
    read_again, lost = run("earliest", backend, source)

    counted = [(p, o) for p, first, resumes in lost for o in range(first, resumes)]
    assert len(counted) == len(set(counted)), f"counted twice: {lost}"
    assert set(counted) == log.deleted_unread, (lost, sorted(log.deleted_unread))
    kept_records = {(p, o) for p, os in offsets.items() for o in os if o >= log.low[p]}
    assert {r for r in kept_records if r[1] >= resume[r[0]]} <= read_again


def test_a_topic_created_again_counts_its_own_gaps() -> None:
    """The offsets counted up to are the log's: a topic deleted and created again under the
    same name starts its offsets anew, and a gap there is other records (a review's
    finding: keyed by name alone, it was never counted)."""
    metrics = EngineMetrics("lost")
    engine = Engine(
        worker_config("earliest"), stop=threading.Event(), out=io.StringIO(), metrics=metrics
    )
    before = PartitionState(TOPIC, 0, log_topic_id="first")
    engine._lost(before, 0, 10)
    engine._lost(before, 0, 10)  # the same gap jumped again after a rewind
    engine._lost(PartitionState(TOPIC, 0, log_topic_id="second"), 0, 4)
    # A topic id not known at one assignment (its lookup timed out) and known at the next
    # is the same log: its gap is not counted again (a second review's finding).
    engine._lost(PartitionState(TOPIC, 1), 0, 10)
    engine._lost(PartitionState(TOPIC, 1, log_topic_id="first"), 0, 10)
    sample = metrics.registry.get_sample_value
    labels = {"pipeline": "lost", "topic": TOPIC, "partition": "0"}
    assert sample("streamherd_records_lost_total", labels) == 14
    assert sample("streamherd_records_lost_total", {**labels, "partition": "1"}) == 10
