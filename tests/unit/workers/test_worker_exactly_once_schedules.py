"""Exactly-once: what a commit makes visible holds each record once, over any schedule.

The twin of test_worker_commit_never_passes_unfolded.py for ``delivery: exactlyOnce`` into
a Kafka sink. There the rule is that a committed offset never passes a record not folded;
here it is stronger: a transaction commits outputs and the group's offsets together
(send_offsets_to_transaction, commit_transaction), so after every commit the visible
outputs of a partition are exactly one of each record from where the partition started up
to the group's committed offset: none missing, none twice, none past it.

The broker is a model: input logs with markers (offsets no record holds), a consumer group
with committed offsets and their metadata, an output topic of which only committed
transactions are visible, and one transactional id whose producers fence each other
(``init_transactions``). The worker's producer is a fake of librdkafka's transactional
state machine (rdkafka_txnmgr.c): a produce or commit outside a transaction is refused;
a failed send_offsets or commit leaves the transaction abortable (``txn_requires_abort``),
open (retriable), or the producer dead (fatal); a commit that timed out leaves it
committing, the broker having committed or not, where an abort is refused (``_STATE``);
an abort may time out and be resumed. Any of these calls can fail at any numbered call.
The consumer is the at-least-once test's group consumer (rebalances inside any poll,
before or after its records are handed out; markers served or not; records produced while
the worker reads; committed-offset lookups that time out first), its commits refused: in
this mode every offset goes through a transaction. Checkpoints are the volume's files
(pending until their transaction commits).

A worker that stops on an error (a fatal producer, an abort that cannot complete, a
lookup that fails inside a rewind) is followed by a new one (a new Engine, a new producer
of the same transactional id, the same group and volume), as workers/main.py does, until
one ends cleanly: the rule is checked at every commit across all of them, and at the end
every record of a partition the last worker owned is visible exactly once.

Half the schedules are ``takeovers`` (a partition dropped while it still has records to
hand out and assigned again close after; a revoke whose transaction fails; the group's
lookups failing after an assignment's stable one, and its retries for a while; a start
time whose offsets are given late, or not to an abort's rebuild): drawn as independent
events, mutants of the refetch and of an abort's rebuild lived through the random search
(helper-124, whose runs also found helper-123's finding below on the engine before its
fix, from a start time given late as well as at once; helper-125: an abort that forgot a
held start was still unknown, or folded a poll's records of a partition it held).

Pipelines: a filter into the Kafka sink (each output is its record), and a tumbling count
window (each output is a window, counted once and whole).

Dead letters: in the ``HOSTILE`` schedules some records fail, half to decode (not JSON), half
the filter (a division by zero), and go to the dead-letter topic in the same transaction
(the producer is the one transactional producer). The rule then covers both topics: after
every commit, each record of a partition from its start up to the committed offset is
either one output (or counted in its window) or one dead letter, never both, and a dead
letter is exactly a hostile record.

The changelog state backend (``checkpoint.changelog``, workers/changelog.py), instead of the
volume's files: its records join the worker's one transaction (the same fake producer), into
a model of the compacted topic's partitions where each record stays open until its
transaction is decided (committed or aborted: a commit, an abort, a commit of unknown
outcome as the broker decided it, or the next producer's ``init_transactions``); the
backend's restore reads it with a fake of its two consumers (read_committed up to the last
stable offset, and the probe of the log end). Its topic admin calls are stubbed (the
topic exists with ``CHANGELOG_PARTITIONS``). Besides the rule above, at every commit each
partition whose offset it commits has, in the committed changelog, the checkpoint of that
offset and transaction; a restore that would wait for the worker's own open transaction is
a violation. Not modelled: another worker's transaction still open when a restore reads
(the model's broker aborts it at once, on the next init_transactions), snapshots (``keep``,
a reset or replay), compaction itself (the reader folds every committed record, which is
what compaction keeps).

Starts without a checkpoint: the group may hold offsets before the first worker, with no
checkpoint of them (``preset``: a stateless pipeline's, a checkpoint lost, or of another
generation; each such partition begins there with empty state, and is judged from there),
and ``startFromTimeMs`` may be set (``start_time``: where a partition with nothing committed
begins, the consumer answering offsets for times; a record's time is BASE_TS + its offset).
Such a partition must begin exactly at its time's offset (with a window, its window's
start's): not past it (records lost), nor before it (records the spec leaves out folded into
the first windows). Found with them (helper-123): a partition sought to its start time's
offset on assign, its first transaction aborted, was not sought back, and the aborted
records were skipped; the cases are spelled out in
tests/unit/workers/test_worker_abort_rewind_starts.py. And (a review's, found by this search
once a start before the time was judged): under ``startFrom: earliest`` a lookup failing on
assign left the partition to the consumer's reset, the log start.

Found by it (helper-117; the examples below, fixed by Engine._refetch): records handed out
in a poll before a rebalance callback that moved their partition back inside it (a revoke
whose transaction failed and was aborted, every owned partition sought back to its commit;
the whole assignment lost and a partition assigned again) were folded into the new state,
and the records before them, read again, were skipped as already read: lost, under
exactly-once. The model hands out, in one poll, records from before and after such a
callback (as the at-least-once test does); librdkafka 2.x purges a batch's records of an
outdated version only when its barrier op is served within the same call, and a poll that
serves an assignment also hands out records fetched after it (seen on the real broker).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from streamherd.workers import changelog
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.kafkaclients import FatalClientError
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.processing import SyntheticMessage
from streamherd.workers.statebackends import VolumeBackend
from tests.unit.workers.test_worker_input_lost import BASE_TS, TOPIC, gappy_log

# The engine raises the recursion limit when built: raised before Hypothesis runs, it does
# not change during a test (which Hypothesis warns of).
ensure_recursion_headroom()

Phase = Literal["before", "after"]
Kind = Literal["assign", "revoke", "lost"]
#: send_offsets_to_transaction: abortable (txn_requires_abort), retriable (the transaction
#: stays open), fatal (fenced). commit_transaction: abortable, fatal, or timed out with the
#: broker having committed it ("unknown-committed") or not ("unknown-aborted").
#: abort_transaction: timed out (retriable: the next call resumes it).
Fault = Literal["abortable", "retriable", "fatal", "unknown-committed", "unknown-aborted"]
Call = Literal["send_offsets", "commit", "abort"]
OUT = "results"
DEAD = "dead"
CHANGELOG = "exactly-changelog"
#: Fewer than the source's partitions (up to 3): partitions 0 and 2 share changelog 0.
CHANGELOG_PARTITIONS = 2
WINDOW_MS = 4
MAX_WORKERS = 8


@dataclass(frozen=True)
class Event:
    """At poll number ``at``, before or after its records are handed out, the group assigns
    or revokes ``partition``, or the worker loses its whole assignment (as librdkafka does)
    while it owns ``partition`` (an event that does not apply is skipped)."""

    at: int
    kind: Kind
    partition: int
    phase: Phase


class Violation(AssertionError):
    pass


@dataclass
class Entry:
    """A changelog partition's entry: a record of a transaction (open until the transaction
    is decided), or the marker that decides it (offsets no record holds)."""

    key: bytes | None
    value: bytes | None
    status: Literal["open", "committed", "aborted", "marker"]


def window_of(offset: int) -> int:
    """The tumbling window a record falls in (its event time is BASE_TS + its offset)."""
    return (BASE_TS + offset) // WINDOW_MS


def window_index(start: str) -> int:
    return int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000) // WINDOW_MS


class Broker:
    """The cluster as the workers share it: input logs, the group's committed offsets and
    metadata, the output topic's committed records, the transactional id's epoch, and the
    faults to inject (by call and its number, counted across workers)."""

    def __init__(
        self,
        logs: dict[int, list[int]],
        faults: dict[tuple[Call, int], Fault],
        *,
        windowed: bool,
        earliest: bool,
        hostile: frozenset[tuple[int, int]] = frozenset(),
    ) -> None:
        self.logs, self.faults, self.windowed = logs, dict(faults), windowed
        # (partition, index in its log) of the records that are dead-lettered
        self.hostile_at = hostile
        self.planned = len(faults)
        self.earliest = earliest
        self.group: dict[int, tuple[int, str]] = {}
        self.visible: list[dict[str, Any]] = []  # the committed outputs, in commit order
        self.dead: list[tuple[int, int]] = []  # the committed dead letters' (partition, offset)
        self.epoch = 0
        self.calls: Counter[str] = Counter()
        self.start: dict[int, int] = {}  # where each partition began: nothing committed then
        # startFromTimeMs (as an offset: a record's time is BASE_TS + its offset), or None.
        self.start_time: int | None = None
        self.violations: list[str] = []
        self.commits = 0
        # A fault was injected into the running worker: one that ends may end with its
        # stop's transaction aborted, which the next one reads again. The end is judged on
        # a worker that met no fault.
        self.faulted = False
        self.owner: GroupConsumer | None = None
        # The changelog topic (checkpoint.changelog): every entry ever written, by partition.
        self.changelogged = False
        self.restores = 0  # reads of a changelog partition that holds a committed record
        self.changelog: dict[int, list[Entry]] = {cp: [] for cp in range(CHANGELOG_PARTITIONS)}

    def hostile(self, p: int, o: int) -> bool:
        """Whether record ``o`` of partition ``p`` fails the pipeline (is dead-lettered)."""
        return bool(self.hostile_at) and (p, self.logs[p].index(o)) in self.hostile_at

    def ends(self, p: int) -> int:
        """The log end: past the last record and, on odd partitions, a marker after it."""
        records = self.logs[p]
        return (records[-1] + 1 if records else 0) + (p % 2)

    def fault(self, call: Call) -> Fault | None:
        self.calls[call] += 1
        fault = self.faults.pop((call, self.calls[call]), None)
        if fault is not None:
            self.faulted = True
        return fault

    def decide(self, entries: Sequence[tuple[int, Entry]], committed: bool) -> None:
        """A transaction's changelog records are decided: a marker follows them."""
        touched = set()
        for cp, entry in entries:
            if entry.status == "open":
                entry.status = "committed" if committed else "aborted"
                touched.add(cp)
        for cp in sorted(touched):
            self.changelog[cp].append(Entry(None, None, "marker"))

    def fence(self) -> None:
        """A new producer of the transactional id: the open transaction is aborted."""
        self.decide([(cp, e) for cp, log in self.changelog.items() for e in log], False)

    def restored(self, p: int) -> Checkpoint | None:
        """Partition ``p``'s checkpoint as the committed changelog holds it."""
        records: changelog.Records = {}
        changelog.apply(
            records,
            (
                (e.key, e.value)
                for e in self.changelog[p % CHANGELOG_PARTITIONS]
                if e.status == "committed" and e.key is not None
            ),
        )
        mine = {k: v for k, v in records.items() if changelog.owner(k) == (TOPIC, p)}
        return changelog.decode(TOPIC, p, changelog.live(mine))

    def violation(self, message: str) -> Violation:
        self.violations.append(message)
        return Violation(message)

    def started(self, p: int, offset: int) -> None:
        """A partition nothing is committed of begins (again) at ``offset``."""
        if p in self.group:
            return
        if self.start_time is not None:
            # At the first record at or after the time (with a window, at or after the start
            # of the time's window: that window is computed whole). Not before it either: the
            # records before it are not the spec's, and they were folded into the windows
            # they fall in (a lookup failing on assign under startFrom: earliest left the
            # partition to the consumer's reset, the log start: a review's finding; judged
            # since, the search finds it on the engine before its fix).
            found = self.at_time(p, self.start_ms())
            due = found if found >= 0 else self.ends(p)
            if offset != due:
                raise self.violation(
                    f"p{p} begins at {offset}, not at its start time's {due} "
                    f"({'past it' if offset > due else 'records before the time read'})"
                )
        elif self.earliest and self.logs[p] and offset > self.logs[p][0]:
            raise self.violation(f"p{p} begins at {offset}, past its first record")
        self.start[p] = offset

    def start_ms(self) -> int:
        """The time a partition with nothing committed begins at: ``startFromTimeMs``, or
        with a window the start of the window holding it (Engine._replay_start)."""
        assert self.start_time is not None
        time_ms = BASE_TS + self.start_time
        return time_ms - time_ms % WINDOW_MS if self.windowed else time_ms

    def at_time(self, p: int, time_ms: int) -> int:
        """The offset of partition ``p``'s first record at or after ``time_ms`` (-1: none)."""
        return next((o for o in self.logs[p] if BASE_TS + o >= time_ms), -1)

    def commit(
        self,
        outputs: list[dict[str, Any]],
        dead: list[tuple[int, int]],
        offsets: dict[int, tuple[int, str]],
    ) -> None:
        """A transaction commits: its outputs, dead letters and offsets at once."""
        self.commits += 1
        self.visible.extend(outputs)
        self.dead.extend(dead)
        self.group.update(offsets)
        if self.changelogged:
            # The changelog commits with the offsets: each partition's checkpoint there is
            # the one of its committed offset (same offset, same transaction's generation).
            for p, (offset, generation) in offsets.items():
                checkpoint = self.restored(p)
                if checkpoint is None or (checkpoint.next_offset, checkpoint.generation) != (
                    offset,
                    generation,
                ):
                    raise self.violation(
                        f"commit {self.commits}: p{p} committed at {offset} ({generation}), "
                        f"its changelog checkpoint "
                        f"{checkpoint and (checkpoint.next_offset, checkpoint.generation)}"
                    )
        self.judge(f"commit {self.commits}")

    # -- the rule

    def expected(self, p: int, upto: int) -> Counter[Any]:
        """The outputs a partition must hold when ``upto`` is committed: each record (or,
        windowed, each window closed with its records) from its start, once."""
        start = self.start.get(p, 0)
        records = [o for o in self.logs[p] if start <= o < upto and not self.hostile(p, o)]
        if not self.windowed:
            return Counter((p, o) for o in records)
        counts = Counter(
            window_of(o) for o in self.logs[p] if o >= start and not self.hostile(p, o)
        )
        return Counter((p, w, counts[w]) for w in {window_of(o) for o in records})

    def expected_dead(self, p: int, upto: int) -> Counter[tuple[int, int]]:
        """The dead letters a partition must hold when ``upto`` is committed: each hostile
        record from its start, once (whatever the pipeline: a window never counts one)."""
        start = self.start.get(p, 0)
        return Counter((p, o) for o in self.logs[p] if start <= o < upto and self.hostile(p, o))

    def seen(self, p: int) -> Counter[Any]:
        if not self.windowed:
            return Counter((r["p"], r["o"]) for r in self.visible if r["p"] == p)
        return Counter(
            (int(r["key"]), window_index(r["window_start"]), r["n"])
            for r in self.visible
            if int(r["key"]) == p
        )

    def judge(self, when: str) -> None:
        for p in self.logs:
            committed = self.group.get(p, (None, ""))[0]
            if committed is not None and committed > self.ends(p):
                raise self.violation(f"{when}: p{p} committed at {committed}, past the log end")
            dead = Counter(d for d in self.dead if d[0] == p)
            expected_dead = self.expected_dead(p, committed if committed is not None else -1)
            if dead != expected_dead:
                raise self.violation(
                    f"{when}: p{p} committed at {committed} from {self.start.get(p)}: dead "
                    f"letters missing {sorted((expected_dead - dead).elements())}, more than "
                    f"once or past it {sorted((dead - expected_dead).elements())}"
                )
            seen = self.seen(p)
            if self.windowed:
                # A window result appears once, with every record of its window counted;
                # results of windows not closed yet may lag behind the offset (they are
                # emitted once a later record closes them), never run ahead of it.
                twice = [w for w, n in seen.items() if n > 1]
                complete = self.expected(p, self.ends(p) + 1)
                wrong = sorted(set(seen) - set(complete))
                ahead = sorted(
                    w for w in seen if committed is None or w[1] > window_of(committed - 1)
                )
                if twice or wrong or ahead:
                    raise self.violation(
                        f"{when}: p{p} (committed {committed}): twice {twice}, wrong {wrong}, "
                        f"ahead {ahead}"
                    )
                continue
            expected = self.expected(p, committed if committed is not None else -1)
            if seen != expected:
                missing = sorted((expected - seen).elements())
                extra = sorted((seen - expected).elements())
                raise self.violation(
                    f"{when}: p{p} committed at {committed} from {self.start.get(p)}: "
                    f"missing {missing}, more than once or past it {extra}"
                )


@dataclass(frozen=True)
class Metadata:
    """The consumer group's metadata a worker hands its transaction (KIP-447)."""

    consumer: GroupConsumer
    generation: int


class FakeProducer:
    """A transactional producer as librdkafka's state machine behaves for the engine."""

    def __init__(self, broker: Broker, conf: dict[str, Any]) -> None:
        assert conf.get("transactional.id"), conf
        self.broker = broker
        self.state = "init"
        self.epoch = -1
        self.outputs: list[dict[str, Any]] = []
        self.dead: list[tuple[int, int]] = []
        self.offsets: dict[int, tuple[int, str]] = {}
        self.changes: list[tuple[int, Entry]] = []  # its changelog records, in the log
        self.error: KafkaError | None = None

    # -- librdkafka's errors

    def _raise(self, code: int, reason: str, **how: bool) -> None:
        error = KafkaError(code, reason, **how)
        if how.get("fatal"):
            self.state, self.error = "fatal", error
        elif how.get("txn_requires_abort"):
            self.state, self.error = "abortable", error
        raise KafkaException(error)

    def _require(self, call: str, *states: str) -> None:
        if self.epoch != self.broker.epoch and self.state != "fatal":
            self._raise(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
        if self.state in states:
            return
        if self.state in ("fatal", "abortable") and self.error is not None:
            raise KafkaException(self.error)  # the transaction's own error, again
        self.broker.violation(f"{call} in state {self.state}")
        self._raise(KafkaError._STATE, f"Operation not valid in state {self.state}")

    # -- the transactional API

    def init_transactions(self, timeout: float = -1) -> None:
        # Fences the earlier producers of this transactional id; their open transaction
        # is aborted (its outputs never become visible).
        self.broker.epoch += 1
        self.epoch = self.broker.epoch
        self.broker.fence()
        self.state = "ready"

    def begin_transaction(self) -> None:
        self._require("begin_transaction", "ready")
        self.state = "in"
        self.outputs, self.dead, self.offsets, self.changes = [], [], {}, []

    def produce(
        self,
        topic: str,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        key: bytes | None = None,
        partition: int = -1,
        **_: Any,
    ) -> None:
        self._require("produce", "in")
        if topic == CHANGELOG:
            assert self.broker.changelogged and 0 <= partition < CHANGELOG_PARTITIONS, partition
            entry = Entry(key, value, "open")
            self.broker.changelog[partition].append(entry)
            self.changes.append((partition, entry))
            return
        assert value is not None
        if topic == DEAD:
            origin = dict(headers)
            p = int(origin["streamherd.source.partition"])
            o = int(origin["streamherd.source.offset"])
            if not self.broker.hostile(p, o):
                raise self.broker.violation(f"p{p} record {o} dead-lettered: {origin}")
            self.dead.append((p, o))
            return
        if topic != OUT:
            raise self.broker.violation(f"produced to {topic}")
        self.outputs.append(orjson.loads(value))

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self._require("send_offsets_to_transaction", "in")
        fault = self.broker.fault("send_offsets")
        if fault in ("abortable", "unknown-committed", "unknown-aborted"):
            self._raise(KafkaError.ILLEGAL_GENERATION, "injected", txn_requires_abort=True)
        if fault == "retriable":
            self._raise(KafkaError._TIMED_OUT, "injected", retriable=True)
        if fault == "fatal":
            self._raise(KafkaError._FENCED, "injected", fatal=True)
        assert isinstance(group_metadata, Metadata), group_metadata
        self._take_offsets(positions, group_metadata.consumer)

    def _take_offsets(self, positions: list[TopicPartition], consumer: Any) -> None:
        """The offsets a send_offsets_to_transaction that succeeded adds to the transaction
        (only of partitions the consumer owns: KIP-447 fences the others)."""
        for tp in positions:
            if tp.partition not in consumer.queue:
                raise self.broker.violation(f"offsets sent for p{tp.partition}, not owned")
            self.offsets[tp.partition] = (tp.offset, tp.metadata or "")

    def commit_transaction(self, timeout: float = -1) -> None:
        self._require("commit_transaction", "in")
        fault = self.broker.fault("commit")
        if fault in ("abortable", "retriable"):
            self._raise(KafkaError.INVALID_TXN_STATE, "injected", txn_requires_abort=True)
        if fault == "fatal":
            self._raise(KafkaError._FENCED, "injected", fatal=True)
        if fault is not None:  # timed out; EndTxn sent, its outcome the broker's
            self.state = "committing"
            self.broker.decide(self.changes, fault == "unknown-committed")
            if fault == "unknown-committed":
                self.broker.commit(self.outputs, self.dead, self.offsets)
            self.outputs, self.dead, self.offsets, self.changes = [], [], {}, []
            self._raise(KafkaError._TIMED_OUT, "injected", retriable=True)
        self.broker.decide(self.changes, True)
        self.broker.commit(self.outputs, self.dead, self.offsets)
        self.outputs, self.dead, self.offsets, self.changes = [], [], {}, []
        self.state = "ready"

    def abort_transaction(self, timeout: float = -1) -> None:
        if self.state in ("committing",):
            # rd_kafka_txn_op_begin_abort: not in a state an abort may begin from.
            self._raise(KafkaError._STATE, "Operation not valid in state CommittingTransaction")
        self._require("abort_transaction", "in", "abortable")
        if self.broker.fault("abort") is not None:
            self._raise(KafkaError._TIMED_OUT, "injected", retriable=True)
        self.broker.decide(self.changes, False)
        self.outputs, self.dead, self.offsets, self.changes = [], [], {}, []
        self.state, self.error = "ready", None

    # -- the producer's other calls

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self.outputs, self.dead = [], []

    def __len__(self) -> int:
        return 0


class ChangelogMessage:
    """A changelog record as a read_committed consumer hands it out, or the end of the
    partition (``_PARTITION_EOF``)."""

    def __init__(self, offset: int, key: bytes | None = None, value: bytes | None = None,
                 *, eof: bool = False) -> None:  # fmt: skip
        self._offset, self._key, self._value, self._eof = offset, key, value, eof

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class ChangelogReader:
    """The changelog backend's consumers (workers/changelog.py): the restore's reader
    (read_committed: committed records only, up to the first transaction still open, the
    last stable offset) and its probe of the log end (open transactions included)."""

    def __init__(self, broker: Broker, conf: dict[str, Any]) -> None:
        self.broker = broker
        self.committed_only = conf["isolation.level"] == "read_committed"
        self.cp: int | None = None
        self.pos = 0

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        assert tp.topic == CHANGELOG, tp
        return 0, len(self.broker.changelog[tp.partition])

    def assign(self, partitions: list[TopicPartition]) -> None:
        [tp] = partitions
        assert tp.topic == CHANGELOG and tp.offset == OFFSET_BEGINNING, tp
        self.cp, self.pos = tp.partition, 0
        if any(e.status == "committed" for e in self.broker.changelog[self.cp]):
            self.broker.restores += 1

    def consume(self, num_messages: int, timeout: float) -> list[ChangelogMessage]:
        assert self.cp is not None
        log = self.broker.changelog[self.cp]
        out: list[ChangelogMessage] = []
        while self.pos < len(log) and len(out) < num_messages:
            entry = log[self.pos]
            if entry.status == "open" and self.committed_only:
                # Only the live producer's transaction is open (init_transactions aborted
                # every earlier one): a read waiting for it waits for the transaction's
                # timeout, while the worker itself is what would end it.
                raise self.broker.violation(
                    f"a restore of changelog {self.cp} waits for the worker's own open "
                    f"transaction (at {self.pos})"
                )
            if entry.key is not None and (entry.status == "committed" or not self.committed_only):
                out.append(ChangelogMessage(self.pos, entry.key, entry.value))
            self.pos += 1
        if self.pos >= len(log):
            out.append(ChangelogMessage(self.pos, eof=True))
        return out

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.pos) for tp in partitions]

    def unassign(self) -> None:
        self.cp = None

    def close(self) -> None:
        pass


class Garbage(SyntheticMessage):
    """A record whose value is not JSON: it fails to decode."""

    __slots__ = ()

    def value(self) -> bytes:
        return b"\xff" + super().value()


def message(p: int, o: int, *, hostile: bool) -> SyntheticMessage:
    """Record ``o`` of partition ``p``; a hostile one fails to decode (even offsets) or fails
    the pipeline's filter (odd: a division by zero), and is dead-lettered either way."""
    record = {"p": p, "o": o, "k": str(p), "d": 0 if hostile else 1}
    cls = Garbage if hostile and o % 2 == 0 else SyntheticMessage
    return cls(TOPIC, p, o, str(p).encode(), record, BASE_TS + o)


class GroupConsumer:
    """The at-least-once test's consumer of logs with markers in a cooperative group
    (workers/test_worker_commit_never_passes_unfolded.py), over the broker's logs and group:
    its own commits are refused (offsets go through the transaction)."""

    name = "kafka"
    group_offsets = True
    cluster_id: str | None = None
    origin_ms: int | None = None

    def __init__(
        self,
        broker: Broker,
        *,
        initial: Sequence[int],
        events: Sequence[Event],
        chunk: int,
        serve: Sequence[bool],
        produce: dict[int, int],
        lookup_failures: int,
        failing_lookups: Collection[int] = (),
        slow_retries: int = 0,
        time_unanswered: Collection[int] = (),
    ) -> None:
        self.broker, self.logs, self.initial = broker, broker.logs, list(initial)
        self.events = sorted(events, key=lambda e: (e.at, e.phase == "after"))
        self.chunk, self.serve, self.produce = chunk, list(serve) or [False], dict(produce)
        self.lookup_failures = lookup_failures
        self.failing_lookups, self.lookups = set(failing_lookups), 0
        # The coordinator answers in between 5 and 10 s for a while: this many lookups asked
        # with a shorter timeout (the engine's retries of a start it held) time out, the
        # others (an assignment's, a rewind's) are answered.
        self.slow_retries = slow_retries
        # Under startFromTimeMs: the answers of offsets for that time that give nothing,
        # by their number per partition (a broker with no leader for it for a while): the
        # first ones (held from the assignment on), or a later one (an abort's rebuild asks
        # again, and holds the partition).
        self.time_unanswered = set(time_unanswered)
        self.time_asked: Counter[int] = Counter()
        self.queue: dict[int, list[int]] = {}  # owned partitions: records still to hand out
        self.pos: dict[int, int] = {}
        self.paused: set[int] = set()
        self.polls = 0
        self.owned_at_end: set[int] = set()  # set by close()
        self.generation = 0
        # Assigned at the consumer's own start (OFFSET_INVALID) under a start time: where
        # each begins unless it is sought before a record of it is handed out.
        self.unresolved: dict[int, int] = {}

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        self.callbacks = {"assign": assigned, "revoke": revoked, "lost": lost}
        self.generation += 1
        if self.initial:
            assigned([TopicPartition(TOPIC, p) for p in self.initial])

    def adopt_origin(self, origin_ms: int) -> None:
        pass

    def _events(self, phase: Phase) -> None:
        due = (self.polls, phase == "after")
        while self.events and (self.events[0].at, self.events[0].phase == "after") <= due:
            event = self.events.pop(0)
            owned = event.partition in self.queue
            if (event.kind == "assign") == owned:
                continue
            self.generation += 1
            # librdkafka loses the whole assignment at once (its generation is gone).
            lost = sorted(self.queue) if event.kind == "lost" else [event.partition]
            self.callbacks[event.kind]([TopicPartition(TOPIC, p) for p in lost])

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        self.polls += 1
        for p, more in list(self.produce.items()):
            if more and self.polls >= 3:
                end = self.broker.ends(p)
                added = list(range(end, end + more))
                self.logs[p].extend(added)
                if p in self.queue:
                    self.queue[p].extend(added)
                self.produce[p] = 0
        self._events("before")
        batch: list[SyntheticMessage] = []
        for p in sorted(self.queue):
            if p in self.paused:
                continue
            room = min(self.chunk, max_records - len(batch))
            taken, self.queue[p] = self.queue[p][:room], self.queue[p][room:]
            if taken and p in self.unresolved:
                self.broker.started(p, self.unresolved.pop(p))
            for o in taken:
                batch.append(message(p, o, hostile=self.broker.hostile(p, o)))
                self.pos[p] = o + 1
            if self.serve[self.polls % len(self.serve)]:
                self.pos[p] = self.queue[p][0] if self.queue[p] else self.broker.ends(p)
        self._events("after")
        return batch

    @property
    def exhausted(self) -> bool:
        return (
            not self.events
            and not any(self.produce.values())
            # A paused (held) partition with records to read is not done: the engine must
            # resume it (a partition left paused for good runs out the loop bound).
            and not any(self.queue.values())
            # Nor one held for a start the engine seeks once the broker tells it (its queue,
            # placed at the log end by startFrom: latest, says nothing of where that is).
            and not (self.paused & set(self.queue))
        )

    def describe(self) -> dict[str, Any]:
        return {"source": self.name}

    def _seek(self, p: int, offset: int) -> None:
        self.queue[p] = [o for o in self.logs[p] if o >= offset]
        if self.pos.get(p, -1001) >= 0:
            self.pos[p] = offset

    def assign(self, start: list[TopicPartition]) -> None:
        for tp in start:
            p = tp.partition
            if tp.offset >= 0:
                offset = tp.offset
            elif tp.offset == OFFSET_END:
                offset = self.broker.ends(p)
            else:
                assert tp.offset == OFFSET_INVALID, tp
                committed = self.broker.group.get(p)
                offset = committed[0] if committed else (self.logs[p][0] if self.logs[p] else 0)
            if self.broker.start_time is None or tp.offset >= 0:
                self.broker.started(p, offset)
            elif tp.offset == OFFSET_INVALID:
                # With a start time, a partition held (and paused) for its time's offset
                # not given yet waits here, the consumer's own start: it begins where it is
                # sought then, or, read from here (not held), here.
                self.unresolved[p] = offset
            # (With a start time, the log end is where a partition waits, held and paused,
            # for the group's answer: it begins where it is sought then.)
            self._seek(p, offset)
            self.pos[p] = -1001

    def unassign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.queue.pop(tp.partition, None)
            self.pos.pop(tp.partition, None)
            self.paused.discard(tp.partition)
            self.unresolved.pop(tp.partition, None)

    def pause(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            p = tp.partition
            self.paused.add(p)
            if self.pos.get(p, -1) >= 0:
                self._seek(p, self.pos[p])

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(tp.partition for tp in partitions)

    def seek(self, partition: TopicPartition) -> None:
        self.unresolved.pop(partition.partition, None)
        self.broker.started(partition.partition, partition.offset)
        self._seek(partition.partition, partition.offset)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.lookups += 1
        if self.lookups in self.failing_lookups:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        if timeout < 10 and self.slow_retries > 0:
            self.slow_retries -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        if self.lookup_failures > 0:
            self.lookup_failures -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        answer = []
        for tp in partitions:
            offset, metadata = self.broker.group.get(tp.partition, (OFFSET_INVALID, ""))
            answer.append(TopicPartition(tp.topic, tp.partition, offset, metadata=metadata))
        return answer

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        raise self.broker.violation(f"offsets committed outside a transaction: {offsets}")

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        assert self.broker.start_time is not None, "no start time here"
        found = []
        for tp in partitions:
            self.time_asked[tp.partition] += 1
            if self.time_asked[tp.partition] in self.time_unanswered:
                continue  # no answer for it yet (a broker with no leader for it)
            found.append(
                TopicPartition(tp.topic, tp.partition, self.broker.at_time(tp.partition, tp.offset))
            )
        return found

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        p = partition.partition
        return (self.logs[p][0] if self.logs[p] else 0), self.broker.ends(p)

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.pos.get(tp.partition, -1001))
            for tp in partitions
        ]

    def group_metadata(self) -> Any:
        return Metadata(self, self.generation)

    def describe_logs(self, topics: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        return {TOPIC: (None, len(self.logs))}

    def close(self) -> None:
        # What the worker owns at its end (its close() revokes it all: nothing is left
        # assigned after it).
        self.owned_at_end = set(self.queue)
        owned = [TopicPartition(TOPIC, p) for p in sorted(self.queue)]
        if owned:
            self.callbacks["revoke"](owned)


def config(
    batch_size: int,
    start_from: str,
    directory: str,
    *,
    windowed: bool,
    dead_letters: bool = False,
    changelogged: bool = False,
    start_time_ms: int | None = None,
) -> WorkerConfig:
    checkpoint: dict[str, Any] = {"directory": directory, "intervalSeconds": 600}
    if changelogged:
        checkpoint["changelog"] = {"topic": CHANGELOG, "partitions": CHANGELOG_PARTITIONS}
    steps: list[dict[str, Any]] = [{"filter": "o / d >= 0"}]
    if windowed:
        steps.append(
            {
                "window": {
                    "keyBy": "k",
                    "size": f"{WINDOW_MS}ms",
                    "repartition": "never",
                    "aggregates": [{"name": "n", "function": "count"}],
                }
            }
        )
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "exactly"},
            "delivery": "exactlyOnce",
            "source": {
                "kafka": {
                    "bootstrapServers": "127.0.0.1:9",  # never dialled: the source is given
                    "topics": [TOPIC],
                    "consumerGroup": "exactly",
                    "startFrom": start_from,
                    **({"startFromTimeMs": start_time_ms} if start_time_ms is not None else {}),
                }
            },
            "processor": {"steps": steps},
            "sink": {"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": OUT}},
            "checkpoint": checkpoint,
            "runtime": {"metricsPort": 0, "batchSize": batch_size},
            **(
                {"deadLetter": {"bootstrapServers": "127.0.0.1:9", "topic": DEAD}}
                if dead_letters
                else {}
            ),
        }
    )


FAULTS = st.dictionaries(
    st.tuples(st.sampled_from(["send_offsets", "commit", "abort"]), st.integers(1, 6)),
    st.sampled_from(["abortable", "retriable", "fatal", "unknown-committed", "unknown-aborted"]),
    max_size=4,
)
EVENT = st.builds(
    Event,
    st.integers(1, 12),
    st.sampled_from(["assign", "revoke", "lost"]),
    st.integers(0, 2),
    st.sampled_from(["before", "after"]),
)
EVENTS = st.lists(EVENT, max_size=6)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "gaps": st.lists(
        st.lists(st.sampled_from([0, 0, 0, 1, 1, 2]), max_size=20), min_size=1, max_size=3
    ),
    "initial": st.lists(st.integers(0, 2), max_size=3, unique=True),
    "events": EVENTS,
    # Rebalances of the workers that take over after one stopped.
    "later_events": st.lists(
        st.builds(
            Event,
            st.integers(1, 8),
            st.sampled_from(["assign", "revoke", "lost"]),
            st.integers(0, 2),
            st.sampled_from(["before", "after"]),
        ),
        max_size=3,
    ),
    "faults": FAULTS,
    "chunk": st.integers(1, 6),
    "start_from": st.sampled_from(["earliest", "latest"]),
    "lookup_failures": st.integers(0, 2),
    "batch_size": st.integers(1, 12),
    "serve": st.lists(st.booleans(), min_size=1, max_size=5),
    "produce": st.dictionaries(st.integers(0, 2), st.integers(0, 5), max_size=3),
    "checkpoints": st.sets(st.integers(1, 15), max_size=8),
    # Committed offsets with no checkpoint, by partition: (offset, the commit's metadata:
    # none, or a generation no checkpoint has).
    "preset": st.dictionaries(
        st.integers(0, 2),
        st.tuples(st.integers(0, 12), st.sampled_from(["", "elsewhere"])),
        max_size=2,
    ),
    # startFromTimeMs, as the offset whose record has that time (mostly none).
    "start_time": st.one_of(st.none(), st.none(), st.integers(0, 12)),
}
PHASE: st.SearchStrategy[Phase] = st.sampled_from(["before", "after"])


#: A fault of the first transactions: the revoke's, when no checkpoint came before it.
FIRST_FAULTS: list[dict[tuple[Call, int], Fault]] = [
    {("send_offsets", 1): "abortable"},
    {("send_offsets", 1): "abortable"},
    {("send_offsets", 2): "abortable"},
    {("commit", 1): "abortable"},
    {("commit", 1): "unknown-committed"},
    {("commit", 2): "unknown-aborted"},
]


@st.composite
def takeovers(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> Any:
    """Schedules of a partition moved back inside a poll, or an ownership that follows
    another: a partition read for a poll or more, dropped (its whole assignment lost, or it
    revoked) while it still has records to hand out, mostly after the poll's, and assigned
    again in the same poll or up to two on; half the time the first transactions fail (the
    revoke's, if it is the first: an abort that rewinds every partition owned). Drawn as
    independent events over twelve polls (``FIELDS``), this was rare: most logs were read
    out by poll 2, an assignment seldom followed the drop of the same partition in the same
    poll, and a fault seldom hit a revoke's transaction (mutation tests: records in hand of
    a partition moved back in the poll folded into its new state were found in one schedule
    of several hundred, by one of the six tests)."""
    drawn_here = {"gaps", "initial", "chunk", "events", "faults", "checkpoints", "start_time"}
    schedule = draw(st.fixed_dictionaries({k: v for k, v in fields.items() if k not in drawn_here}))
    # Half the time every partition is owned from the start (an abort rewinds them all).
    schedule["initial"] = draw(st.one_of(st.just([0, 1, 2]), fields["initial"]))
    schedule["gaps"] = draw(
        st.lists(
            st.lists(st.sampled_from([0, 0, 0, 1, 1, 2]), min_size=4, max_size=12),
            min_size=1,
            max_size=3,
        )
    )
    schedule["chunk"] = draw(st.integers(1, 4))
    # Half the time the worker starts at startFromTimeMs (early in the logs), its offsets
    # given at once, after one to twelve answers of nothing (partitions held for it
    # through the first loops, where an abort rebuilds them: given to the rebuild, its
    # hold ends), or at the assignment and not at the next ask (an abort's rebuild: held
    # there, records of the poll in hand).
    schedule["start_time"] = draw(st.one_of(st.none(), st.integers(0, 3)))
    schedule["time_unanswered"] = draw(
        st.sampled_from(
            [(), (), (1,), (1, 2), tuple(range(1, 5)), tuple(range(1, 13)), (2,), (2, 3)]
        )
    )
    # The group's committed offsets not told after the assignment's stable lookup (the
    # second lookup of the first one, and those asking again): starts held (startFrom:
    # latest, or a start time) through the first loops, where an abort rebuilds them. With
    # a start time too: the engine forgot it then and pinned the log end, every record from
    # the time on skipped (helper-125's report; fixed, and drawn since); under earliest it
    # did not hold the start, and read the records before the time (judged since).
    schedule["failing_lookups"] = draw(st.sampled_from([(), (2,), (2, 3, 4), (2, 3, 4, 5, 6)]))
    # Half the time the retries of those starts time out for a while, a rewind's lookup
    # answered: an abort then rebuilds partitions still held for their start.
    schedule["slow_retries"] = draw(st.sampled_from([0, 3]))
    # A third of the time the first drop is a revoke after the poll's records, whose
    # transaction (the first with offsets: a pinned latest start's comes before) fails:
    # its abort rewinds every partition owned, the poll's records of each in hand.
    revoke_fails = draw(st.integers(0, 2)) == 0
    events: list[Event] = []
    for group in range(draw(st.integers(1, 2))):
        p, at = draw(st.integers(0, 2)), draw(st.integers(2, 3))
        drop = Event(at, draw(st.sampled_from(["lost", "revoke"])), p,
                     draw(st.sampled_from(["after", "after", "before"])))  # fmt: skip
        if revoke_fails and group == 0:
            drop = Event(at, "revoke", p, "after")
        later = draw(st.integers(0, 2))
        phase: Phase = "after" if later == 0 and drop.phase == "after" else draw(PHASE)
        # (Owned first: an assignment of a partition owned already is skipped.)
        events += [Event(1, "assign", p, "before"), drop, Event(at + later, "assign", p, phase)]
    schedule["events"] = events + draw(st.lists(EVENT, max_size=2))
    schedule["faults"] = draw(st.one_of(FAULTS, st.sampled_from(FIRST_FAULTS)))
    schedule["checkpoints"] = draw(st.sets(st.integers(1, 15), max_size=3))
    if revoke_fails:
        schedule["initial"] = [0, 1, 2]
        pinned = schedule["start_from"] == "latest" and schedule["start_time"] is None
        schedule["faults"] = {("send_offsets", 1 + pinned): "abortable"}
        schedule["checkpoints"] = {c for c in schedule["checkpoints"] if c >= events[1].at}
    # A sixth of the time each, the first transaction (the first loop's checkpoint) aborts
    # while every start is held: the group's lookup failed on assign and its retries time
    # out for a while (startFrom: latest), or the start time's offset was not given on
    # assign (and is, or is not, to the rebuild). The rebuild must keep each hold asked
    # again, or end it and resume the partition (drawn apart, each was found in about one
    # schedule of a thousand: helper-125's mutants of the rebuild).
    held = draw(st.sampled_from([None, None, None, None, "start", "time"]))
    if held == "start":
        schedule.update(start_from="latest", start_time=None, failing_lookups=(2,),
                        slow_retries=3)  # fmt: skip
    elif held == "time":
        schedule["start_time"] = draw(st.integers(0, 3))
        schedule["time_unanswered"] = draw(st.sampled_from([(1,), (1, 2)]))
    if held is not None:
        # Nothing committed before (no preset offsets), and no takeover: an assignment
        # again would end a hold the rebuild left wrong (a pause for good) by itself.
        schedule["preset"] = {}
        schedule["events"] = schedule["events"][len(events) :]
        schedule["faults"] = {("commit", 1): "abortable"}
        schedule["checkpoints"] = schedule["checkpoints"] | {1}
    return schedule


#: Half the schedules drawn as independent fields, half ``takeovers``.
SCHEDULE = st.one_of(st.fixed_dictionaries(FIELDS), takeovers(FIELDS))
#: The same, some records hostile: (partition, index in its log) of each, the partition
#: taken modulo the partitions; an index past the log's records is one produced meanwhile.
HOSTILE_FIELDS = {
    **FIELDS,
    "hostile": st.sets(st.tuples(st.integers(0, 2), st.integers(0, 6)), min_size=1, max_size=8),
}
HOSTILE = st.one_of(st.fixed_dictionaries(HOSTILE_FIELDS), takeovers(HOSTILE_FIELDS))


@contextmanager
def scratch() -> Iterator[str]:
    """A checkpoint directory, in memory where the machine has one (no fsync cost)."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and sys.platform.startswith("linux") else None
    with tempfile.TemporaryDirectory(dir=where, prefix="eos-") as directory:
        yield directory


@dataclass
class Outcome:
    broker: Broker
    owned: set[int]  # the partitions the last worker owned at its end
    reasons: list[str]


def run(schedule: dict[str, Any], *, windowed: bool = False, changelogged: bool = False) -> Outcome:
    logs = gappy_log(schedule["gaps"])
    n = len(logs)
    faults = {(call, k): fault for (call, k), fault in schedule["faults"].items()}
    hostile = frozenset((p % n, o) for p, o in schedule.get("hostile", ()))
    broker = Broker(
        logs, faults, windowed=windowed, earliest=schedule["start_from"] == "earliest",
        hostile=hostile,
    )  # fmt: skip
    broker.changelogged = changelogged
    # Offsets the group committed before any worker, with no checkpoint of them (a stateless
    # pipeline's, a checkpoint lost or of another epoch): each partition starts there, with
    # empty state, its outputs judged from there.
    for p, (at, metadata) in schedule.get("preset", {}).items():
        offset = min(at, broker.ends(p % n))
        broker.group[p % n] = (offset, metadata)
        broker.start[p % n] = offset
    # Never past a partition's last record (each log ends with one): a record produced after
    # a start past the log end may be older than the time (a window's late record).
    start_time = schedule.get("start_time")
    if start_time is not None:
        broker.start_time = min(start_time, *(log[-1] for log in logs.values()))
    start_time_ms = None if broker.start_time is None else BASE_TS + broker.start_time
    reasons: list[str] = []
    owned: set[int] = set()
    with scratch() as directory:
        for worker in range(MAX_WORKERS):
            first = worker == 0
            broker.faulted = False
            stop = threading.Event()
            consumer = GroupConsumer(
                broker,
                initial=sorted({p % n for p in schedule["initial"]}) if first else range(n),
                events=[
                    Event(e.at, e.kind, e.partition % n, e.phase)
                    for e in schedule["events" if first else "later_events"]
                ],
                chunk=schedule["chunk"],
                serve=schedule["serve"],
                produce={p % n: k for p, k in schedule["produce"].items()} if first else {},
                lookup_failures=schedule["lookup_failures"] if first else 0,
                failing_lookups=schedule.get("failing_lookups", ()) if first else (),
                slow_retries=schedule.get("slow_retries", 0) if first else 0,
                time_unanswered=schedule.get("time_unanswered", ()) if first else (),
            )
            cfg = config(schedule["batch_size"], schedule["start_from"], directory,
                         windowed=windowed, dead_letters="hostile" in schedule,
                         changelogged=changelogged, start_time_ms=start_time_ms)  # fmt: skip
            with (
                patch("streamherd.workers.sinks.topic_limits", lambda *a, **k: {}),
                patch(
                    "streamherd.workers.sinks.TransactionalProducer",
                    lambda conf: FakeProducer(broker, conf),
                ),
            ):
                engine = Engine(
                    cfg, stop=stop, out=sys.stdout, metrics=EngineMetrics("exactly"),
                    source=consumer, state=None if changelogged else VolumeBackend(directory),
                )  # fmt: skip
            loops = [0]
            interval = engine._maybe_checkpoint

            def maybe_checkpoint(
                engine: Engine = engine, interval: Any = interval, loops: list[int] = loops,
                stop: threading.Event = stop,
            ) -> None:  # fmt: skip
                loops[0] += 1
                if loops[0] in schedule["checkpoints"]:
                    engine._last_checkpoint = float("-inf")
                interval()
                if loops[0] > 500:
                    stop.set()

            with (
                patch("streamherd.workers.engine.LAG_REFRESH_SECONDS", 0.0),
                patch.object(engine, "_list_topics", lambda timeout=10.0: []),
                patch.object(engine, "_maybe_checkpoint", maybe_checkpoint),
                # The changelog backend's topic and consumers (its producer is the engine's).
                patch.object(changelog, "AdminClient", lambda conf: None),
                patch.object(changelog, "ensure_topic", lambda *a, **k: CHANGELOG_PARTITIONS),
                patch.object(changelog, "Consumer", lambda conf: ChangelogReader(broker, conf)),
            ):
                try:
                    summary = engine.run()
                except (FatalClientError, KafkaException) as error:
                    # The worker stops (workers/main.py starts another): a fatal producer, an
                    # abort that cannot complete, a lookup failing inside a rewind.
                    reasons.append(f"{type(error).__name__}: {error}")
                    engine.outputs.discard()
                    continue
            assert loops[0] <= 500, "the run never ended"
            reasons.append(summary.reason)
            owned = consumer.owned_at_end
            if broker.faulted:
                continue  # its stop's transaction may have failed: the next worker goes on
            break
        else:
            raise AssertionError(f"no worker ended cleanly: {reasons}")
    assert not broker.violations, broker.violations
    return Outcome(broker, owned, reasons)


def check_end(outcome: Outcome) -> None:
    """Every record of a partition the last worker owned at its end is visible once."""
    broker = outcome.broker
    event(f"workers: {len(outcome.reasons)}")
    event(f"commits: {min(broker.commits, 10)}")
    event(f"faults met: {sum(broker.calls.values()) and len(broker.faults) < broker.planned}")
    broker.judge("the end")
    for p in outcome.owned:
        committed = broker.group.get(p, (None, ""))[0]
        assert committed is not None and committed >= (broker.logs[p][-1] + 1), (
            f"p{p} committed at {committed}, its last record {broker.logs[p][-1]}"
        )
        if broker.windowed:
            expected = broker.expected(p, broker.ends(p) + 1)
            assert broker.seen(p) == expected, (p, broker.seen(p), expected)


#: Examples per test: 400 in a test run (each run draws new schedules: not derandomized);
#: STREAMHERD_EOS_EXAMPLES=5000 for a long run, as after a change of the run loop. At 1000
#: the file took over 8 minutes of CI's process time once the start dimensions came in.
SETTINGS = settings(
    max_examples=int(os.environ.get("STREAMHERD_EOS_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(SCHEDULE)
# A revoke inside a poll, after that poll handed out p0's record 1: the revoke's transaction
# fails, the abort seeks p0 back to 0 (nothing committed), then the loop folded record 1,
# still in hand, into p0's new state; record 0, read again, is below its next offset and
# skipped. The next commit holds p0's offset 2 and the output of record 1 only.
@example(
    {
        "gaps": [[0], []],
        "initial": [0, 1],
        "events": [Event(2, "revoke", 1, "after")],
        "later_events": [],
        "faults": {("send_offsets", 1): "abortable"},
        "chunk": 1,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 1,
        "serve": [False],
        "produce": {},
        "checkpoints": set(),
    }
)
# The same with a checkpoint committed before: p1 goes back to 2, records 4 and 5 in hand
# are folded, 2 and 3 read again are skipped.
@example(
    {
        "gaps": [[0] * 9, [0] * 9],
        "initial": [0, 1],
        "events": [Event(3, "revoke", 0, "after")],
        "later_events": [],
        "faults": {("send_offsets", 2): "abortable"},
        "chunk": 2,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": {1},
    }
)
# The whole assignment lost inside a poll after it handed out p2's record 1 (nothing
# committed: the open transaction is aborted), p2 assigned again in the same poll, from 0:
# record 1, still in hand, is folded into p2's new state, and record 0, read again, is
# skipped. No fault needed.
@example(
    {
        "gaps": [[], [], [0]],
        "initial": [0, 1, 2],
        "events": [Event(4, "lost", 0, "after"), Event(4, "assign", 2, "after")],
        "later_events": [],
        "faults": {},
        "chunk": 1,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 1,
        "serve": [False],
        "produce": {},
        "checkpoints": set(),
    }
)
# A commit whose outcome is unknown (it did commit), the abort refused: the next worker
# adopts the pending checkpoint the first one left.
@example(
    {
        "gaps": [[0] * 10, [1, 0, 0, 2, 0]],
        "initial": [0, 1],
        "events": [Event(3, "revoke", 1, "after"), Event(5, "lost", 0, "before")],
        "later_events": [],
        "faults": {("commit", 2): "unknown-committed", ("send_offsets", 4): "abortable"},
        "chunk": 3,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [True],
        "produce": {0: 3},
        "checkpoints": {1, 2, 4},
    }
)
def test_committed_outputs_hold_each_record_once(schedule: dict[str, Any]) -> None:
    check_end(run(schedule))


@SETTINGS
@given(SCHEDULE)
# The second schedule above: window [0, 4) of p1 is emitted with records 0, 1 only.
@example(
    {
        "gaps": [[0] * 9, [0] * 9],
        "initial": [0, 1],
        "events": [Event(3, "revoke", 0, "after")],
        "later_events": [],
        "faults": {("send_offsets", 2): "abortable"},
        "chunk": 2,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": {1},
    }
)
# A commit whose outcome is unknown (it did commit: p0 at 6, window [4, 8) holding 4 and 5),
# the abort refused: the next worker adopts the pending checkpoint the first one left, or
# that window is emitted counting 6 and 7 only.
@example(
    {
        "gaps": [[0] * 9],
        "initial": [0],
        "events": [],
        "later_events": [],
        "faults": {("commit", 2): "unknown-committed"},
        "chunk": 3,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": {1, 2},
    }
)
def test_committed_windows_are_each_counted_once_and_whole(schedule: dict[str, Any]) -> None:
    check_end(run(schedule, windowed=True))


# -- dead letters: hostile records go to the dead-letter topic in the same transaction


def check_dead_letters(outcome: Outcome) -> None:
    """check_end, and each committed dead letter is a hostile record (the rule at every
    commit: each hostile record up to the committed offset once, none an output)."""
    check_end(outcome)
    broker = outcome.broker
    event(f"dead letters committed: {min(len(broker.dead), 5)}")
    if broker.changelogged:
        event(f"changelog restores: {min(broker.restores, 3)}")
    assert len(set(broker.dead)) == len(broker.dead), broker.dead


@SETTINGS
@given(HOSTILE)
# A hostile record in a transaction that fails and is aborted (a revoke inside the poll
# after its records were handed out): its dead letter goes with the aborted transaction,
# and the record, read again, is dead-lettered in the next one.
@example(
    {
        "gaps": [[0] * 5, [0] * 5],
        "initial": [0, 1],
        "events": [Event(3, "revoke", 1, "after")],
        "later_events": [],
        "faults": {("send_offsets", 1): "abortable", ("commit", 2): "unknown-committed"},
        "chunk": 2,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": {1, 3},
        "hostile": {(0, 0), (0, 1), (1, 3), (0, 4)},
    }
)
def test_committed_outputs_and_dead_letters_hold_each_record_once(
    schedule: dict[str, Any],
) -> None:
    check_dead_letters(run(schedule))


@SETTINGS
@given(HOSTILE)
def test_committed_windows_and_dead_letters_hold_each_record_once(
    schedule: dict[str, Any],
) -> None:
    check_dead_letters(run(schedule, windowed=True))


# -- the changelog state backend: checkpoints in a compacted topic, in the same transaction


@SETTINGS
@given(HOSTILE)
def test_changelog_outputs_and_dead_letters_hold_each_record_once(
    schedule: dict[str, Any],
) -> None:
    check_dead_letters(run(schedule, changelogged=True))


@SETTINGS
@given(HOSTILE)
# A producer fenced at its second commit (its changelog records aborted with the next
# producer's init_transactions): the next worker restores the windows of the first commit
# from the changelog, and the records after it are counted into them once.
@example(
    {
        "gaps": [[0] * 9, [0] * 3, [0] * 4],
        "initial": [0, 1, 2],
        "events": [],
        "later_events": [],
        "faults": {("commit", 2): "fatal"},
        "chunk": 3,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": {1, 2},
        "hostile": {(0, 1), (0, 2)},
    }
)
# A commit of unknown outcome that did commit, the abort refused: with the changelog there
# is no pending checkpoint to adopt, the next worker restores the committed one.
@example(
    {
        "gaps": [[0] * 9],
        "initial": [0],
        "events": [],
        "later_events": [],
        "faults": {("commit", 2): "unknown-committed"},
        "chunk": 3,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": {1, 2},
        "hostile": {(0, 5)},
    }
)
def test_changelog_windows_and_dead_letters_hold_each_record_once(
    schedule: dict[str, Any],
) -> None:
    check_dead_letters(run(schedule, windowed=True, changelogged=True))


@pytest.mark.parametrize("start_from", ["latest", "earliest"])
def test_a_start_time_is_kept_when_the_committed_lookup_fails_on_assign(start_from: str) -> None:
    """``startFromTimeMs`` is where a partition with no checkpoint and nothing committed
    starts, ``startFrom`` the fallback (workers/config.py). p0 has records 0..9, nothing
    committed, the start time is record 3's; the assignment's stable lookup answers, the
    one after it times out (the coordinator moving): the engine never looked at the start
    time (``_start_from_time`` runs only for the partitions of an answer). Under startFrom:
    latest it held the start as unknown and, once the group answered nothing committed,
    pinned the log end: records 3..9 were never read (helper-124's mutation runs; still so
    on 8fc072d, helper-125). Under startFrom: earliest it did not hold it: the consumer's
    reset started it at the log start, records 0..2 read and folded (a review's finding).
    Now either is held, and the group's answer of nothing committed starts it at its
    time, held until the broker gives that time's offset (_retry_seeks)."""
    schedule = {
        "gaps": [[0] * 9],
        "initial": [0],
        "events": [],
        "later_events": [],
        "faults": {},
        "chunk": 3,
        "start_from": start_from,
        "lookup_failures": 0,
        "failing_lookups": (2,),
        "batch_size": 12,
        "serve": [False],
        "produce": {},
        "checkpoints": set(),
        "preset": {},
        "start_time": 3,
    }
    with patch.object(sys.modules[__name__], "event", lambda _: None):
        check_end(run(schedule))
