"""Exactly-once through the repartition hop, over any schedule.

The sibling of test_worker_exactly_once_schedules.py (its broker, its fake of librdkafka's
transactional producer with its faults, its group consumer of the source topic, its worker
takeovers) for a window keyed by something other than the input's key: the engine re-keys
each record through the repartition topic (docs/engine.md, "Keys and partitions").

What the real code does, and so what the model follows: one Engine per worker, one consumer
in one group subscribed to the source topic *and* the repartition topic (read_committed);
a source partition is an upstream (``Engine._process_upstream``: the stateless steps, then
``Outputs.repartition`` produces format-3 messages to the partition of each key, and
``Engine._mark`` progress markers to every repartition partition), a repartition partition a
downstream (``Engine._process_downstream``: dedupe by source offset, fold, close what the
slowest source partition allows, results to the sink). Everything goes through the one
transactional producer, in the one open transaction: results, dead letters, repartition
records and markers; each commit sends the offsets of both topics' partitions
(``_commit_transaction``, which also writes a marker for every upstream that moved). The
downstream reads what the upstreams wrote only once it is committed: the worker's own open
transaction holds the last stable offset of every repartition partition it wrote to. An
abort rebuilds every owned partition of both topics from its committed checkpoint.

The model: the source side is the sibling's ``GroupConsumer`` as it is (rebalances inside
any poll, records produced meanwhile, lookups that time out, markers served or not); the
repartition topic is a log per partition of transactional entries (open until their
transaction is decided, then committed or aborted, and a control record after them; the
next producer's ``init_transactions`` aborts what is open), read as a read_committed
consumer does: committed records only, never past the first open entry (the last stable
offset), aborted records and control records skipped (the position moved past them when
"served"). Rebalances of the repartition topic's partitions come inside any poll too, before
or after the records are handed out; a lost assignment loses both topics' partitions at
once. Once every scheduled rebalance is done, the group gives the worker back whatever it
does not own (one worker: the group assigns it everything). A worker with nothing left to
read but its own open transaction checkpoints (its interval elapses); checkpoints come at
scheduled loops and, in some schedules, every loop or few, so that windows close and are
committed while the source is still read. Markers are sent with every upstream batch, or
only with commits (``MARKER_SECONDS``). Event times (the records' Kafka timestamps) may go
back and forth in a partition. The window is tumbling or hopping (size, slide) with an
allowed lateness of 0 or more (``window``): a record is counted in each of its windows that
still takes it when it folds, by the largest event time re-keyed before it in its own
partition (what its entry carries) less the lateness; a hopping window's record may miss
only its older windows; one that no window takes is late, dead-lettered downstream. Faults
are the sibling's (by call number), at the k-th send_offsets or commit of a transaction
holding window results, and at the k-th produce of any topic, whose delivery fails: the
record is not written and the transaction becomes abortable (librdkafka refuses what
follows with its error: the next produce ends the worker, a send_offsets or commit aborts).

Several live workers (``pair``, a third of the schedules): at the first worker's poll
``at`` the group moves on and a second worker starts (its own Engine, consumer and
transactional id: ``init_transactions`` fences and aborts only its own id's transactions),
the two loops in threads taking turns at their polls and inside their commits (before
send_offsets and before commit_transaction: one runs at a time, so a schedule replays
exactly). A "handover" revokes some of the first's partitions (cooperative) and assigns
them, with all it does not own, to the second; "a" or "b" leaves ``linger`` polls later
(its close revoking what it has) and the other gets everything back. A "zombie": the
first is left behind (its session timed out: the second gets everything) and goes on
reading, folding and committing as if it owned its partitions; the group's coordinator
refuses its offsets (ILLEGAL_GENERATION, KIP-447: abortable, so it aborts and rewinds to the
second's commits), while a transaction of progress markers alone, which sends no offsets,
commits; ``linger`` polls later it learns that its assignment is lost and leaves. Either
way each one's open transaction holds the last stable offset of the repartition partitions
it wrote to for the other. A worker that ends with its transaction open has it aborted (its
transaction timeout). Records are produced meanwhile only with one worker.

Idleness (``idle``, a third of the schedules): ``idleTimeoutSeconds`` is set, and at the
schedule's loops it has elapsed for every partition: the loop's ``_check_idle`` marks each
source partition with nothing left to read idle (a forced marker saying so, in the open
transaction, with no offsets of its own), and a downstream partition all of whose source
partitions are idle closes every window. Records are not produced meanwhile then: a
partition quiet, then written to, may find its records late by the others' progress, which
the rule (lateness by the record's own partition) does not tell.

The changelog state backend (``changelog``, a third of the schedules) instead of the
volume's files, as the sibling models it: its records join the worker's transaction, in a
model of the compacted topic whose entries stay open until their transaction is decided;
each commit's offsets (of both topics) must have, in the committed changelog, the
checkpoint of that offset and transaction. A restore reads read_committed: another live
worker's open transaction holds it until that worker decides it (the reader lets it run),
its own would hold it for good (a violation).

The rule, at every commit: for each source partition, from where it began up to its
committed offset, each record is re-keyed exactly once in the committed repartition records
(none past it) or, hostile, dead-lettered exactly once; a late record is dead-lettered at
most once, and only once its offset is committed; every window result committed is emitted
once, counts every record of its key and window in every source partition that is neither
hostile nor late (whole), and none of those records is at or past its partition's committed
offset (none ahead). At the end (a worker that met no fault and owned everything), every
window is emitted exactly once and whole, and every late record is dead-lettered (with a
dead-letter topic).

Nothing found (helper-122: some 60,000 schedules over ten seeds). The model catches, as
checked by hand: a downstream partition not sought back by an abort (windows not whole),
a marker one offset ahead (a record dropped as a duplicate, its window not whole), and
repartition records written outside the transaction (a record re-keyed twice).

Helper-126 added the window's kinds, several live workers, the changelog backend, failed
deliveries and idleness, and found no engine defect (some 30,000 schedules over five
seeds). A zombie's commit of markers alone (progress or idle) is harmless, as reasoned: a
worker commits markers without offsets only for partitions it has nothing uncommitted of,
and after a fenced abort it has rewound to the new owner's commit, so its markers never
say more than the group has committed, and a stale one is dropped by the downstream's
clock. The model catches, as checked by hand (the examples below catch the first four in
every run, the search found the others at the default budget): an abort's rewind that
judges other writers' pending checkpoints (Engine._restore: the zombie discarded the new
owner's checkpoint being committed; its next one had nothing to build on), a partition
given away whose changelog records the backend kept (Engine._drop_state without
``state.release``: taken back, it was restored from what it held before the handover, the
other worker's commits missing: windows not whole), hopping windows folded as tumbling
ones and the allowed lateness ignored downstream (workers/rekeying.py ``_fold_entries``),
a source partition made idle with records still to read (Engine._check_idle: windows
closed without them, not whole), and a transactional id new with each Engine rather than
stable per worker (a worker restarted after a failure leaves its predecessor's
transaction open: the repartition topic's last stable offset held, the run never ends;
the model before fenced every producer at any ``init_transactions``).

Not modelled: a partition idle, then written to (see above), a worker that gets a
partition back from a zombie while the zombie runs, more than two live workers, a delivery
failure reported only after its transaction's commit (librdkafka fails the commit),
snapshots, replays and resets, user functions' fan-out, another worker's open transaction
outliving it (the model aborts it at once, as its timeout does later).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from unittest.mock import patch

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
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.kafkaclients import FatalClientError
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.rekeying import HOP_FORMAT, decode_message
from streamherd.workers.repartitioning import read_mark
from streamherd.workers.statebackends import VolumeBackend
from tests.unit.workers.test_worker_exactly_once_schedules import (
    CHANGELOG,
    CHANGELOG_PARTITIONS,
    DEAD,
    FIELDS,
    MAX_WORKERS,
    OUT,
    WINDOW_MS,
    Broker,
    ChangelogMessage,
    ChangelogReader,
    Entry,
    Event,
    FakeProducer,
    GroupConsumer,
    Metadata,
    Phase,
    scratch,
)
from tests.unit.workers.test_worker_input_lost import BASE_TS, TOPIC, gappy_log

# The engine raises the recursion limit when built; once here, before Hypothesis runs.
ensure_recursion_headroom()

RP = "exactly-repartition"
#: The window's key: not the source's (each key in every source partition). Keys 7, 8, 9
#: spread over the repartition partitions (CRC-32 of "7", "8", "9": 0, 1, 1 of 2; 0, 2, 0
#: of 3).
KEY_BY = "o % 3 + 7"
#: At most this many polls of one worker (the sibling's bound is its loop count).
MAX_LOOPS = 600


def key_of(offset: int) -> int:
    return offset % 3 + 7


def start_ms(text: str) -> int:
    """A result's window start (ISO 8601) in Unix ms."""
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class HopEntry(Entry):
    """A repartition partition's entry: a record (with its headers and time), open until
    its transaction is decided, or a control record (``marker``)."""

    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0
    tid: str = ""  # the transactional id of its producer


Where = int | tuple[str, int]  # a changelog partition, or ("rp", repartition partition)


class HopBroker(Broker):
    """The sibling's broker with the repartition topic: its partitions' logs and the
    group's committed offsets of them; the group's offsets of the source topic stay in
    ``group`` (by partition), the rule is judged by window key."""

    def __init__(
        self,
        logs: dict[int, list[int]],
        faults: dict[tuple[Any, int], Any],
        *,
        earliest: bool,
        hostile: frozenset[tuple[int, int]],
        partitions: int,
        jitter: dict[tuple[int, int], int],
    ) -> None:
        super().__init__(logs, faults, windowed=True, earliest=earliest, hostile=hostile)
        self.jitter = jitter  # (partition, index in its log): event time - offset - BASE_TS
        self.spec = (WINDOW_MS, WINDOW_MS, 0)  # the window's size, slide, allowed lateness (ms)
        self.rp: dict[int, list[HopEntry]] = {q: [] for q in range(partitions)}
        self.rp_group: dict[int, tuple[int, str]] = {}
        # Windows committed before a worker first found everything read (its end closes
        # every window), and aborted transactions: what a run exercised.
        self.ending = False
        self.early = 0
        self.aborts = 0
        self.aborted_results = 0  # aborted transactions that held window results
        # Faults for the k-th call of a transaction holding window results, by call.
        self.result_faults: dict[tuple[str, int], Any] = {}
        self.result_calls: Counter[str] = Counter()
        # Each transactional id's epoch: a producer fences (and aborts the open
        # transaction of) only the earlier producers of its own id.
        self.epochs: Counter[str] = Counter()
        self.fenced_sends = 0  # send_offsets of a worker the group left behind, refused
        self.zombie_commits = 0  # transactions such a worker committed (markers alone)
        self.behind: set[str] = set()  # the transactional ids of workers left behind
        self.waits: dict[str, Any] = {}  # by transactional id: let the other worker run
        self.lost_deliveries = 0  # produces whose delivery failed (the transaction's error)
        self.idle_marks = 0  # markers saying a source partition is idle, written

    def stable(self, q: int) -> int:
        """The last stable offset: the first entry of a transaction still open."""
        log = self.rp[q]
        return next((i for i, e in enumerate(log) if e.status == "open"), len(log))

    @property
    def open(self) -> bool:
        return any(e.status == "open" for log in self.rp.values() for e in log)

    def decide(self, entries: Sequence[tuple[Any, Entry]], committed: bool) -> None:
        touched: set[Where] = set()
        for where, entry in entries:
            if entry.status == "open":
                entry.status = "committed" if committed else "aborted"
                touched.add(where)
        for where in sorted(touched, key=str):
            if isinstance(where, tuple):
                self.rp[where[1]].append(HopEntry(None, None, "marker"))
            else:
                self.changelog[where].append(Entry(None, None, "marker"))

    def others_wait(self, tid: str) -> None:
        """The worker of ``tid`` waits for another's open transaction: the other runs."""
        wait = self.waits.get(tid)
        if wait is None:
            raise self.violation(f"{tid} waits for a transaction no live worker decides")
        wait()

    def checkpoint_of(self, topic: str, partition: int) -> Any:
        """The checkpoint of ``topic[partition]`` as the committed changelog holds it."""
        records: changelog.Records = {}
        changelog.apply(
            records,
            (
                (e.key, e.value)
                for e in self.changelog[partition % CHANGELOG_PARTITIONS]
                if e.status == "committed" and e.key is not None
            ),
        )
        mine = {k: v for k, v in records.items() if changelog.owner(k) == (topic, partition)}
        return changelog.decode(topic, partition, changelog.live(mine))

    def fence(self, tid: str = "") -> None:
        """A new producer of ``tid`` (or its transaction timed out): its open transaction is
        aborted; other transactional ids' stay open."""
        self.decide(
            [(("rp", q), e) for q, log in self.rp.items() for e in log if e.tid == tid], False
        )
        self.decide(
            [
                (cp, e)
                for cp, log in self.changelog.items()
                for e in log
                if getattr(e, "tid", "") == tid
            ],
            False,
        )

    def commit(
        self,
        outputs: list[dict[str, Any]],
        dead: list[tuple[int, int]],
        offsets: dict[Any, tuple[int, str]],
    ) -> None:
        self.commits += 1
        self.visible.extend(outputs)
        self.dead.extend(dead)
        if not self.ending:
            self.early = len(self.visible)
        for (topic, partition), committed in offsets.items():
            (self.group if topic == TOPIC else self.rp_group)[partition] = committed
            if self.changelogged:
                # The changelog commits with the offsets: the partition's checkpoint there is
                # the one of its committed offset (same offset, same transaction).
                checkpoint = self.checkpoint_of(topic, partition)
                found = checkpoint and (checkpoint.next_offset, checkpoint.generation)
                if found != committed:
                    raise self.violation(
                        f"commit {self.commits + 1}: {topic}[{partition}] committed at "
                        f"{committed}, its changelog checkpoint {found}"
                    )
        self.judge(f"commit {self.commits}")

    # -- the rule

    def event_ms(self, p: int, o: int) -> int:
        """Record ``o`` of partition ``p``'s event time (its Kafka timestamp)."""
        if not self.jitter:
            return BASE_TS + o
        return BASE_TS + o + self.jitter.get((p, self.logs[p].index(o)), 0)

    def placed(self, p: int) -> dict[int, list[tuple[int, int]]]:
        """Each re-keyed record of ``p`` with the windows (key, start ms) it is counted in:
        those containing its event time still open when it folds, by the largest event time
        of the records re-keyed before it in its own partition (what its entry carries, the
        level it folds against downstream, docs/engine.md) and the allowed lateness. None
        of them (its newest window closed): late, dead-lettered downstream; a hopping
        window's record may miss only its older windows."""
        size, slide, lateness = self.spec
        placed: dict[int, list[tuple[int, int]]] = {}
        top: int | None = None
        for o in self.rekeyable(p):
            event_ms = self.event_ms(p, o)
            level = event_ms if top is None else max(top, event_ms)
            last = event_ms - event_ms % slide
            placed[o] = [
                (key_of(o), start)
                for start in range(last - size + slide, last + 1, slide)
                if start + size > level - lateness
            ]
            top = level
        return placed

    def rekeyable(self, p: int, upto: int | None = None) -> list[int]:
        """Partition ``p``'s records from its start (up to ``upto``) that are not hostile:
        the upstream re-keys each."""
        start = self.start.get(p, 0)
        return [
            o
            for o in self.logs[p]
            if o >= start and (upto is None or o < upto) and not self.hostile(p, o)
        ]

    def late(self, p: int) -> set[int]:
        """The records of ``p`` its own partition makes late (no window left to count them).
        Decided downstream, by the maximum carried in the entry."""
        return {o for o, cells in self.placed(p).items() if not cells}

    def records(self, p: int, upto: int | None = None) -> list[int]:
        """The records of ``p`` a window counts (up to ``upto``): neither hostile nor late."""
        late = self.late(p)
        return [o for o in self.rekeyable(p, upto) if o not in late]

    def windows(self) -> Counter[tuple[int, int]]:
        """Each window (key, start ms) with the count of every record it must hold."""
        return Counter(
            cell for p in self.logs for cells in self.placed(p).values() for cell in cells
        )

    def seen_windows(self) -> Counter[tuple[int, int, int]]:
        return Counter((int(r["key"]), start_ms(r["window_start"]), r["n"]) for r in self.visible)

    def rekeyed(self) -> Counter[tuple[int, int]]:
        """(source partition, offset) of every entry of the committed repartition records."""
        found: Counter[tuple[int, int]] = Counter()
        for log in self.rp.values():
            for e in log:
                if e.status == "committed" and e.value and e.value[0] == HOP_FORMAT:
                    _plan, topic, partition, entries = decode_message(e.value)
                    assert topic == TOPIC, topic
                    found.update((partition, entry[0]) for entry in entries)
        return found

    def judge(self, when: str) -> None:
        rekeyed = self.rekeyed()
        committed_at: dict[int, int | None] = {}
        for p in self.logs:
            committed = self.group.get(p, (None, ""))[0]
            committed_at[p] = committed
            if committed is not None and committed > self.ends(p):
                raise self.violation(f"{when}: p{p} committed at {committed}, past the log end")
            upto = committed if committed is not None else -1
            late = self.late(p)
            # Late records are dead-lettered downstream, once it reads them: after their
            # offset is committed, never before; at most once (at the end: once, judged in
            # check_end).
            too_late = Counter(o for q, o in self.dead if q == p and o in late)
            misplaced = [o for o, k in too_late.items() if k > 1 or o >= upto]
            if misplaced:
                raise self.violation(
                    f"{when}: p{p} committed at {committed}: late records dead-lettered "
                    f"twice or past it {sorted(misplaced)}"
                )
            dead = Counter(d for d in self.dead if d[0] == p and d[1] not in late)
            expected_dead = self.expected_dead(p, upto)
            if dead != expected_dead:
                raise self.violation(
                    f"{when}: p{p} committed at {committed} from {self.start.get(p)}: dead "
                    f"letters missing {sorted((expected_dead - dead).elements())}, more than "
                    f"once or past it {sorted((dead - expected_dead).elements())}"
                )
            mine = Counter({k: n for k, n in rekeyed.items() if k[0] == p})
            expected = Counter((p, o) for o in self.rekeyable(p, upto))
            if mine != expected:
                raise self.violation(
                    f"{when}: p{p} committed at {committed} from {self.start.get(p)}: "
                    f"re-keyed records missing {sorted((expected - mine).elements())}, more "
                    f"than once or past it {sorted((mine - expected).elements())}"
                )
        for q, (offset, _) in self.rp_group.items():
            if offset > len(self.rp[q]):
                raise self.violation(f"{when}: rp{q} committed at {offset}, past its log end")
        seen = self.seen_windows()
        counted: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for p in self.logs:
            for o, cells in self.placed(p).items():
                for cell in cells:
                    counted.setdefault(cell, []).append((p, o))
        complete = Counter({w: len(records) for w, records in counted.items()})
        twice = sorted(
            k for k, n in Counter((g, w) for g, w, _ in seen.elements()).items() if n > 1
        )
        wrong = sorted((g, w, n) for g, w, n in seen if complete[(g, w)] != n)
        ahead = sorted(
            (g, w, p, o)
            for g, w, _ in seen
            for p, o in counted.get((g, w), ())
            if (at := committed_at[p]) is None or o >= at
        )
        if twice or wrong or ahead:
            raise self.violation(
                f"{when}: windows (key, window) twice {twice}, (key, window, count) not "
                f"whole {wrong} (whole: { {k: complete[k[:2]] for k in wrong} }), with "
                f"records past the committed offsets (key, window, partition, offset) {ahead}"
            )


class HopProducer(FakeProducer):
    """The sibling's transactional producer, writing the repartition topic too (records
    and progress markers join the open transaction) and taking both topics' offsets."""

    broker: HopBroker

    def __init__(self, broker: HopBroker, conf: dict[str, Any]) -> None:
        super().__init__(broker, conf)
        self.tid = str(conf["transactional.id"])
        # Two live workers (Pair): another may run while this one's transaction is being
        # committed (its pending checkpoints written, its offsets sent or not yet).
        self.turn: Any = None

    def init_transactions(self, timeout: float = -1) -> None:
        # Fences the earlier producers of its own transactional id only, aborting their
        # open transaction; another worker's (another id) stays open.
        self.broker.epochs[self.tid] += 1
        self.epoch = self.broker.epochs[self.tid]
        self.broker.fence(self.tid)
        self.state = "ready"

    def _require(self, call: str, *states: str) -> None:
        if self.epoch != self.broker.epochs[self.tid] and self.state != "fatal":
            self._raise(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
        if self.state in states:
            return
        if self.state in ("fatal", "abortable") and self.error is not None:
            raise KafkaException(self.error)
        self.broker.violation(f"{call} in state {self.state}")
        self._raise(KafkaError._STATE, f"Operation not valid in state {self.state}")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        key: bytes | None = None,
        partition: int = -1,
        timestamp: int = 0,
        **kwargs: Any,
    ) -> None:
        self._require("produce", "in")
        if self.broker.fault("produce") is not None:  # type: ignore[arg-type]
            # Its delivery failed (retries or message.timeout.ms spent): the record is not
            # written, librdkafka makes the transaction abortable, and refuses what follows
            # (the next produce, send_offsets or commit raises its error).
            self.broker.lost_deliveries += 1
            self.state = "abortable"
            self.error = KafkaError(KafkaError._MSG_TIMED_OUT, "injected", txn_requires_abort=True)
            return
        if topic == DEAD:
            origin = dict(headers)
            p = int(origin["streamherd.source.partition"])
            o = int(origin["streamherd.source.offset"])
            if o in self.broker.late(p) and not self.broker.hostile(p, o):
                self._require("produce", "in")
                self.dead.append((p, o))
                return
        if topic == CHANGELOG:
            self._require("produce", "in")
            assert self.broker.changelogged and 0 <= partition < CHANGELOG_PARTITIONS, partition
            record = HopEntry(key, value, "open", tid=self.tid)
            self.broker.changelog[partition].append(record)
            self.changes.append((partition, record))
            return
        if topic != RP:
            super().produce(topic, value, headers, key, partition, **kwargs)
            return
        self._require("produce", "in")
        assert 0 <= partition < len(self.broker.rp), partition
        entry = HopEntry(key, value, "open", list(headers or ()), timestamp, self.tid)
        if not value and read_mark(entry.headers).idle:
            self.broker.idle_marks += 1
        self.broker.rp[partition].append(entry)
        self.changes.append((("rp", partition), entry))  # type: ignore[arg-type]

    def _with_results(self, call: str) -> None:
        """A fault planned for the k-th such call of a transaction holding window results,
        injected into the sibling's faults (by call number) when this is that call."""
        if not self.outputs or self.state != "in":
            return
        self.broker.result_calls[call] += 1
        fault = self.broker.result_faults.pop((call, self.broker.result_calls[call]), None)
        if fault is not None:
            self.broker.faults[(call, self.broker.calls[call] + 1)] = fault  # type: ignore[index]
            self.broker.planned += 1

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        if self.turn is not None:
            self.turn()
        self._with_results("send_offsets")
        self._require("send_offsets_to_transaction", "in")
        if group_metadata.consumer.left_behind:
            # KIP-447: the group's coordinator refuses offsets of a generation it moved on
            # from (ILLEGAL_GENERATION): the transaction must abort.
            self.broker.fenced_sends += 1
            self._raise(KafkaError.ILLEGAL_GENERATION, "left behind", txn_requires_abort=True)
        super().send_offsets_to_transaction(positions, group_metadata, timeout)

    def commit_transaction(self, timeout: float = -1) -> None:
        if self.turn is not None:
            self.turn()
        self._with_results("commit")
        left_behind = self.state == "in" and self.tid in self.broker.behind
        super().commit_transaction(timeout)
        self.broker.zombie_commits += left_behind

    def abort_transaction(self, timeout: float = -1) -> None:
        results = bool(self.outputs)
        super().abort_transaction(timeout)
        self.broker.aborts += 1
        self.broker.aborted_results += results

    def _take_offsets(self, positions: list[TopicPartition], consumer: Any) -> None:
        for tp in positions:
            if not consumer.owns(tp.topic, tp.partition):
                raise self.broker.violation(
                    f"offsets sent for {tp.topic}[{tp.partition}], not owned"
                )
            self.offsets[(tp.topic, tp.partition)] = (  # type: ignore[index]
                tp.offset,
                tp.metadata or "",
            )


class HopChangelogReader(ChangelogReader):
    """The sibling's changelog reader, of one worker among several: a transaction of
    another worker still open holds its read (read_committed, up to the last stable
    offset) until that worker decides it (here: the reader lets the other worker run);
    its own open transaction would hold it for good (a violation, as in the sibling)."""

    def __init__(self, broker: HopBroker, conf: dict[str, Any]) -> None:
        super().__init__(broker, conf)
        self.hop = broker
        # The backend's group id: the worker's transactional id, ".changelog.restore".
        self.tid = str(conf["group.id"]).removesuffix(".restore").removesuffix(".changelog")

    def consume(self, num_messages: int, timeout: float) -> list[ChangelogMessage]:
        assert self.cp is not None
        log = self.hop.changelog[self.cp]
        out: list[ChangelogMessage] = []
        while self.pos < len(log) and len(out) < num_messages:
            entry = log[self.pos]
            if entry.status == "open" and self.committed_only:
                if getattr(entry, "tid", "") == self.tid:
                    raise self.hop.violation(
                        f"a restore of changelog {self.cp} waits for the worker's own open "
                        f"transaction (at {self.pos})"
                    )
                self.hop.others_wait(self.tid)  # the other worker decides it meanwhile
                return out
            if entry.key is not None and (entry.status == "committed" or not self.committed_only):
                out.append(ChangelogMessage(self.pos, entry.key, entry.value))
            self.pos += 1
        if self.pos >= len(log):
            out.append(ChangelogMessage(self.pos, eof=True))
        return out


class HopMessage:
    """A record of the repartition topic as the consumer hands it out."""

    __slots__ = ("_entry", "_offset", "_partition")

    def __init__(self, partition: int, offset: int, entry: HopEntry) -> None:
        self._partition, self._offset, self._entry = partition, offset, entry

    def topic(self) -> str:
        return RP

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._entry.key

    def value(self) -> bytes | None:
        return self._entry.value

    def headers(self) -> list[tuple[str, bytes]]:
        return list(self._entry.headers)

    def timestamp(self) -> tuple[int, int]:
        return 1, self._entry.timestamp or BASE_TS

    def error(self) -> None:
        return None


class HopConsumer:
    """The worker's one group consumer of both topics: the source topic through the
    sibling's ``GroupConsumer``, the repartition topic read_committed here."""

    name = "kafka"
    group_offsets = True
    cluster_id: str | None = None
    origin_ms: int | None = None
    left_behind = False  # the group moved on from this worker's generation (a zombie)

    def __init__(
        self,
        broker: HopBroker,
        *,
        initial: Sequence[int],
        rp_initial: Sequence[int],
        events: Sequence[Event],
        rp_events: Sequence[Event],
        chunk: int,
        serve: Sequence[bool],
        produce: dict[int, int],
        lookup_failures: int,
        order: Sequence[bool],
    ) -> None:
        self.broker = broker
        # Its own lookups never fail: this consumer's do (a lookup asks both topics).
        self.up = GroupConsumer(broker, initial=[], events=events, chunk=chunk, serve=serve,
                                produce=produce, lookup_failures=0)  # fmt: skip
        self.initial = [TopicPartition(TOPIC, p) for p in initial] + [
            TopicPartition(RP, q) for q in rp_initial
        ]
        self.events = sorted(rp_events, key=lambda e: (e.at, e.phase == "after"))
        self.chunk, self.serve, self.order = chunk, list(serve) or [False], list(order) or [False]
        self.lookup_failures = lookup_failures
        self.fetch: dict[int, int] = {}  # owned repartition partitions: next entry to fetch
        self.pos: dict[int, int] = {}
        self.paused: set[int] = set()
        self.polls = 0
        self.generation = 0
        self.handed = 0  # records the last poll handed out
        self.owned_at_end: set[tuple[str, int]] = set()

    # -- the group

    def owns(self, topic: str, partition: int) -> bool:
        return partition in (self.up.queue if topic == TOPIC else self.fetch)

    def _owned(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in sorted(self.up.queue)] + [
            TopicPartition(RP, q) for q in sorted(self.fetch)
        ]

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        def lose_all(partitions: list[TopicPartition]) -> None:
            # librdkafka loses the whole assignment, both topics' partitions.
            lost(partitions + [TopicPartition(RP, q) for q in sorted(self.fetch)])

        self.callbacks = {"assign": assigned, "revoke": revoked, "lost": lose_all}
        self.up.open(assigned, revoked, lose_all)
        self.generation += 1
        if self.initial:
            assigned(list(self.initial))

    def adopt_origin(self, origin_ms: int) -> None:
        pass

    def _events(self, phase: Phase) -> None:
        due = (self.polls, phase == "after")
        while self.events and (self.events[0].at, self.events[0].phase == "after") <= due:
            event = self.events.pop(0)
            if (event.kind == "assign") == (event.partition in self.fetch):
                continue
            self.generation += 1
            if event.kind == "lost":
                self.callbacks["lost"]([TopicPartition(TOPIC, p) for p in sorted(self.up.queue)])
            else:
                self.callbacks[event.kind]([TopicPartition(RP, event.partition)])

    def _missing(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in self.broker.logs if p not in self.up.queue] + [
            TopicPartition(RP, q) for q in self.broker.rp if q not in self.fetch
        ]

    def _read(self, room: int) -> list[HopMessage]:
        batch: list[HopMessage] = []
        for q in sorted(self.fetch):
            if q in self.paused:
                continue
            log, stable = self.broker.rp[q], self.broker.stable(q)
            i, taken = self.fetch[q], 0
            while i < stable and taken < min(self.chunk, room - len(batch)):
                if log[i].status == "committed":
                    batch.append(HopMessage(q, i, log[i]))
                    taken += 1
                    self.pos[q] = i + 1
                i += 1
            self.fetch[q] = i
            if self.serve[self.polls % len(self.serve)]:
                # Past the aborted records and control records that follow, to the next
                # record or the last stable offset.
                while i < stable and log[i].status != "committed":
                    i += 1
                self.fetch[q] = self.pos[q] = i
        return batch

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        self.polls += 1
        if not self.up.events and not self.events and (missing := self._missing()):
            self.generation += 1
            self.callbacks["assign"](missing)  # the group gives the worker everything back
        rp_first = self.order[self.polls % len(self.order)]
        batch: list[Any] = []
        if rp_first:
            self._events("before")
            batch += self._read(max_records)
            self._events("after")
        for m in self.up.poll(max_records - len(batch), timeout):
            # The record with its event time (the sibling's is its offset's).
            p, o = m.partition(), m.offset()
            batch.append(type(m)(TOPIC, p, o, m.key(), m.record(), self.broker.event_ms(p, o)))
        if not rp_first:
            self._events("before")
            batch += self._read(max_records - len(batch))
            self._events("after")
        self.handed = len(batch)
        return batch

    @property
    def exhausted(self) -> bool:
        done = (
            self.up.exhausted
            and not self.events
            and not self._missing()
            and not self.broker.open
            and all(
                all(e.status != "committed" for e in self.broker.rp[q][i:])
                for q, i in self.fetch.items()
            )
        )
        self.broker.ending = self.broker.ending or done
        return done

    @property
    def waits_for_its_transaction(self) -> bool:
        """Nothing handed out, and records of its own open transaction to read."""
        return self.handed == 0 and self.broker.open

    def describe(self) -> dict[str, Any]:
        return {"source": self.name}

    # -- the partitions, by topic

    @staticmethod
    def _split(
        partitions: list[TopicPartition],
    ) -> tuple[list[TopicPartition], list[TopicPartition]]:
        return [tp for tp in partitions if tp.topic == TOPIC], [
            tp for tp in partitions if tp.topic == RP
        ]

    def _start(self, tp: TopicPartition) -> int:
        if tp.offset >= 0:
            return int(tp.offset)
        if tp.offset == OFFSET_BEGINNING:
            return 0
        if tp.offset == OFFSET_END:
            return self.broker.stable(tp.partition)
        assert tp.offset == OFFSET_INVALID, tp
        committed = self.broker.rp_group.get(tp.partition)
        return committed[0] if committed else 0  # auto.offset.reset: earliest

    def assign(self, start: list[TopicPartition]) -> None:
        source, rp = self._split(start)
        if source:
            self.up.assign(source)
        for tp in rp:
            self.fetch[tp.partition] = self._start(tp)
            self.pos[tp.partition] = -1001

    def unassign(self, partitions: list[TopicPartition]) -> None:
        source, rp = self._split(partitions)
        self.up.unassign(source)
        for tp in rp:
            self.fetch.pop(tp.partition, None)
            self.pos.pop(tp.partition, None)
            self.paused.discard(tp.partition)

    def pause(self, partitions: list[TopicPartition]) -> None:
        source, rp = self._split(partitions)
        self.up.pause(source)
        for tp in rp:
            self.paused.add(tp.partition)
            if self.pos.get(tp.partition, -1) >= 0:
                self.fetch[tp.partition] = self.pos[tp.partition]

    def resume(self, partitions: list[TopicPartition]) -> None:
        source, rp = self._split(partitions)
        self.up.resume(source)
        self.paused.difference_update(tp.partition for tp in rp)

    def seek(self, partition: TopicPartition) -> None:
        if partition.topic == TOPIC:
            self.up.seek(partition)
            return
        q = partition.partition
        assert q in self.fetch, partition
        self.fetch[q] = self._start(partition)
        if self.pos.get(q, -1001) >= 0:
            self.pos[q] = self.fetch[q]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.lookup_failures > 0:
            self.lookup_failures -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        answer = []
        for tp in partitions:
            group = self.broker.group if tp.topic == TOPIC else self.broker.rp_group
            offset, metadata = group.get(tp.partition, (OFFSET_INVALID, ""))
            answer.append(TopicPartition(tp.topic, tp.partition, offset, metadata=metadata))
        return answer

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        raise self.broker.violation(f"offsets committed outside a transaction: {offsets}")

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        raise AssertionError("no start time here")

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        if partition.topic == TOPIC:
            return self.up.watermarks(partition, fresh=fresh)
        return 0, self.broker.stable(partition.partition)  # read_committed: the stable end

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        source, rp = self._split(partitions)
        return self.up.positions(source) + [
            TopicPartition(RP, tp.partition, self.pos.get(tp.partition, -1001)) for tp in rp
        ]

    def group_metadata(self) -> Any:
        return Metadata(self, self.generation)  # type: ignore[arg-type]

    def describe_logs(self, topics: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        return {TOPIC: (None, len(self.broker.logs)), RP: (None, len(self.broker.rp))}

    def close(self) -> None:
        owned = self._owned()
        self.owned_at_end = {(tp.topic, tp.partition) for tp in owned}
        if owned:
            self.callbacks["revoke"](owned)


class Pair:
    """Two live workers of the group at once, each its own Engine, consumer and
    transactional id, their loops in threads taking turns at their polls (one runs at a
    time: a schedule is replayed exactly): at each poll the worker polling hands over to
    the other or goes on, by ``turns``."""

    def __init__(self, turns: Sequence[bool]) -> None:
        self.cond = threading.Condition()
        self.turns = [*turns, True]  # never one worker alone for good
        self.k = 0
        self.holder = "a"
        self.live = {"a"}

    def alone(self, name: str) -> bool:
        return self.live <= {name}

    def join(self, name: str) -> None:
        with self.cond:
            self.live.add(name)

    def turn(self, name: str) -> None:
        """Poll time: maybe hand over to the other live worker; back once it hands over."""
        with self.cond:
            others = sorted(self.live - {name})
            if others and self.turns[self.k % len(self.turns)]:
                self.holder = others[0]
                self.cond.notify_all()
            self.k += 1
            self.cond.wait_for(lambda: self.holder == name)

    def switch(self, name: str) -> None:
        """Hand over to the other live worker (if any); back once it hands over."""
        with self.cond:
            others = sorted(self.live - {name})
            if others:
                self.holder = others[0]
                self.cond.notify_all()
            self.cond.wait_for(lambda: self.holder == name)

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.holder == name)

    def leave(self, name: str) -> None:
        with self.cond:
            self.live.discard(name)
            if self.holder == name and self.live:
                self.holder = sorted(self.live)[0]
            self.cond.notify_all()


class MemberConsumer(HopConsumer):
    """A consumer of one of two live workers (``Pair``). Worker "a" is the first; at its
    poll ``at`` the group moves on: "handover" revokes some of its partitions (cooperative)
    and gives them, with every partition it does not own, to worker "b"; "zombie" leaves
    "a" behind (its session timed out, it does not know yet) and gives everything to "b":
    "a" reads and commits on as it was, its offsets fenced by the group's generation
    (KIP-447), while what it commits without offsets (progress markers) is not. After
    ``linger`` more polls one leaves (a zombie, "a", learns that its assignment is lost;
    after a handover, "a" or "b" stops, its close revoking what it owns), and the other,
    then alone, gets every partition back: "a" those it handed over, where "b" committed
    meanwhile."""

    def __init__(self, broker: HopBroker, pair: Pair, who: str, plan: dict[str, Any],
                 on_move: Any = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(broker, **kwargs)
        self.pair, self.who, self.plan, self.on_move = pair, who, plan, on_move
        self.moved_at: int | None = None
        self.stop: threading.Event | None = None
        self.tid = ""
        self.other: MemberConsumer | None = None
        zombie = plan["kind"] == "zombie"
        self.leaver = "a" if zombie else plan.get("leaves", "a")
        self.left = False

    def _missing(self) -> list[TopicPartition]:
        return super()._missing() if self.pair.alone(self.who) else []

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        self.pair.turn(self.who)
        if self.who == "a":
            mine = self.polls + 1
            if self.moved_at is None and mine >= self.plan["at"]:
                self._move()
                self.moved_at = mine
            elif (
                self.moved_at is not None
                and not self.left
                and mine >= self.moved_at + self.plan["linger"]
            ):
                self.left = True
                self._leave()
        return super().poll(max_records, timeout)

    def _move(self) -> None:
        n, queues = len(self.broker.logs), len(self.broker.rp)
        if self.plan["kind"] == "zombie":
            self.left_behind = True
            self.broker.behind.add(self.tid)
            given = [TopicPartition(TOPIC, p) for p in range(n)] + [
                TopicPartition(RP, q) for q in range(queues)
            ]
        else:
            moved = [
                TopicPartition(TOPIC, p)
                for p in sorted({p % n for p in self.plan["moved"]})
                if p in self.up.queue
            ] + [
                TopicPartition(RP, q)
                for q in sorted({q % queues for q in self.plan["rp_moved"]})
                if q in self.fetch
            ]
            try:
                if moved:
                    self.generation += 1
                    self.callbacks["revoke"](moved)
            finally:
                # Its revoke's commit may end the worker (a fault): the second starts with
                # what it was given, then everything once the first is gone.
                self.on_move(self._missing_any())
            return
        self.on_move(given)

    def _missing_any(self) -> list[TopicPartition]:
        return HopConsumer._missing(self)

    def _leave(self) -> None:
        if self.leaver == "b":
            assert self.other is not None and self.other.stop is not None
            self.other.stop.set()  # it stops at its next turn, its close revokes everything
            return
        if self.left_behind:
            owned = [TopicPartition(TOPIC, p) for p in sorted(self.up.queue)]
            self.generation += 1
            self.callbacks["lost"](owned)
            self.left_behind = False
            self.broker.behind.discard(self.tid)
        assert self.stop is not None
        self.stop.set()

    @property
    def exhausted(self) -> bool:
        if self.who == self.leaver:
            return False  # it leaves (stops) after its polls
        return self.pair.alone(self.who) and super().exhausted


def config(
    batch_size: int,
    start_from: str,
    directory: str,
    *,
    dead_letters: bool,
    window: tuple[int, int, int] = (WINDOW_MS, WINDOW_MS, 0),
    changelogged: bool = False,
    idle: bool = False,
) -> WorkerConfig:
    size, slide, lateness = window
    checkpoint: dict[str, Any] = {"directory": directory, "intervalSeconds": 600}
    if changelogged:
        checkpoint["changelog"] = {"topic": CHANGELOG, "partitions": CHANGELOG_PARTITIONS}
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
                    # Never of itself in a test's time: the schedule's loops make them quiet.
                    **({"idleTimeoutSeconds": 3600} if idle else {}),
                }
            },
            "processor": {
                "steps": [
                    {"filter": "o / d >= 0"},
                    {
                        "window": {
                            "keyBy": KEY_BY,
                            "size": f"{size}ms",
                            **({"type": "hopping", "slide": f"{slide}ms"} if slide != size else {}),
                            "allowedLateness": f"{lateness}ms",
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    },
                ]
            },
            "repartition": {"topic": RP},
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


@dataclass
class Outcome:
    broker: HopBroker
    owned: set[tuple[str, int]]  # the partitions the last worker owned at its end
    reasons: list[str]


def launch(
    broker: HopBroker,
    schedule: dict[str, Any],
    directory: str,
    consumer: HopConsumer,
    worker_id: str,
) -> tuple[Engine, threading.Event, list[int]]:
    """A worker's Engine (its transactional id ``worker_id``'s) over ``consumer``."""
    stop = threading.Event()
    cfg = config(schedule["batch_size"], schedule["start_from"], directory,
                 dead_letters="hostile" in schedule, window=broker.spec,
                 changelogged=broker.changelogged,
                 idle=bool(schedule.get("idle")))  # fmt: skip
    with patch.dict(os.environ, {"STREAMHERD_WORKER_ID": worker_id}):
        engine = Engine(
            cfg, stop=stop, out=sys.stdout, metrics=EngineMetrics("exactly"), source=consumer,
            state=None if broker.changelogged else VolumeBackend(directory),
        )  # fmt: skip
    # What Engine._topics learns from the cluster (the source is given here).
    engine._repartition_partitions = len(broker.rp)
    engine._upstreams = frozenset((TOPIC, p) for p in range(len(broker.logs)))
    return engine, stop, [0]


def drive(
    engine: Engine, stop: threading.Event, loops: list[int], consumer: HopConsumer,
    schedule: dict[str, Any],
) -> str | None:  # fmt: skip
    """Run the worker to its end: its reason, or None when it stopped on a client's error
    (the error's text appended to ``reasons`` by the caller)."""
    interval = engine._maybe_checkpoint

    def maybe_checkpoint() -> None:
        loops[0] += 1
        every = schedule["every"]
        if (
            loops[0] in schedule["checkpoints"]
            or (every is not None and loops[0] % every == 0)
            or consumer.waits_for_its_transaction
        ):
            engine._last_checkpoint = float("-inf")
        interval()
        if loops[0] in (schedule.get("idle") or ()):
            # idleTimeout elapsed for every partition since its last record: the loop's
            # _check_idle (after this) marks those with nothing left to read idle.
            for st in engine.partitions.values():
                st.last_record_at = -math.inf
        if loops[0] >= MAX_LOOPS:
            stop.set()

    with (
        patch.object(engine, "_list_topics", lambda timeout=10.0: []),
        patch.object(engine, "_maybe_checkpoint", maybe_checkpoint),
    ):
        summary = engine.run()
    return summary.reason


def consumer_of(
    broker: HopBroker, schedule: dict[str, Any], first: bool, **member: Any
) -> HopConsumer:
    n, queues = len(broker.logs), len(broker.rp)
    pair = schedule.get("pair") if first else None
    cut = pair["at"] if pair is not None else math.inf  # the first's events before the move
    kwargs: dict[str, Any] = dict(
        initial=sorted({p % n for p in schedule["initial"]}) if first else range(n),
        rp_initial=sorted({q % queues for q in schedule["rp_initial"]}) if first else range(queues),
        events=[
            Event(e.at, e.kind, e.partition % n, e.phase)
            for e in schedule["events" if first else "later_events"]
            if e.at < cut
        ],
        rp_events=[
            Event(e.at, e.kind, e.partition % queues, e.phase)
            for e in schedule["rp_events" if first else "rp_later_events"]
            if e.at < cut
        ],
        chunk=schedule["chunk"],
        serve=schedule["serve"],
        # Records produced meanwhile only with one worker (another's queue would miss them).
        # Nor with idleness: a partition quiet, then written to, makes records late by the
        # other partitions' progress, which the rule (lateness by the record's own partition)
        # does not tell.
        produce={p % n: k for p, k in schedule["produce"].items()}
        if first and not pair and not schedule.get("idle")
        else {},
        lookup_failures=schedule["lookup_failures"] if first else 0,
        order=schedule["order"],
    )
    if member:
        return MemberConsumer(broker, **member, **kwargs)
    return HopConsumer(broker, **kwargs)


def run_pair(
    broker: HopBroker, schedule: dict[str, Any], directory: str, reasons: list[str]
) -> tuple[MemberConsumer | None, str | None]:
    """The first worker and, once the group moves on, a second one with its own
    transactional id, both live: the consumer of the one that stays and its reason (None:
    an error, or the group never moved on)."""
    plan = schedule["pair"]
    pair = Pair(plan["turns"])
    b = MemberConsumer(broker, pair, "b", plan, **_idle_kwargs(schedule))
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    ends: dict[str, str | None] = {}

    def on_move(given: list[TopicPartition]) -> None:
        b.initial = given
        pair.join("b")
        threads.append(threading.Thread(target=body, args=("b", b, engine_b, stop_b, loops_b)))
        threads[-1].start()

    a = consumer_of(broker, schedule, True, pair=pair, who="a", plan=plan, on_move=on_move)
    assert isinstance(a, MemberConsumer)
    engine_a, stop_a, loops_a = launch(broker, schedule, directory, a, "a")
    engine_b, stop_b, loops_b = launch(broker, schedule, directory, b, "b")
    a.stop, b.stop = stop_a, stop_b
    a.other = b
    a.tid = engine_a.outputs.transaction.tid
    b.tid = engine_b.outputs.transaction.tid
    engine_a.outputs.transaction.turn = lambda: pair.turn("a")
    engine_b.outputs.transaction.turn = lambda: pair.turn("b")
    broker.waits[a.tid] = lambda: pair.switch("a")
    broker.waits[b.tid] = lambda: pair.switch("b")

    def body(who: str, consumer: HopConsumer, engine: Engine, stop: threading.Event,
             loops: list[int]) -> None:  # fmt: skip
        try:
            pair.wait(who)
            ends[who] = drive(engine, stop, loops, consumer, schedule)
        except (FatalClientError, KafkaException) as error:
            reasons.append(f"{who}: {type(error).__name__}: {error}")
            engine.outputs.discard()
            ends[who] = None
        except BaseException as error:  # raised again in the test's thread
            errors.append(error)
            ends[who] = None
        finally:
            # Its transaction, if still open, ends with its timeout (the coordinator aborts
            # it), or with its restart's init_transactions.
            broker.fence(engine.outputs.transaction.tid)
            pair.leave(who)

    threads.insert(0, threading.Thread(target=body, args=("a", a, engine_a, stop_a, loops_a)))
    threads[0].start()
    while threads:
        thread = threads.pop(0)
        thread.join(120)
        assert not thread.is_alive(), "a worker of the pair never ended"
    if errors:
        raise errors[0]
    if "b" not in ends:
        if ends.get("a") is not None:
            reasons.append(f"a: {ends['a']}")
        return None, None  # it never moved on (the first stopped on an error before)
    event(f"pair: {plan['kind']}, {a.leaver} leaves")
    # The one that stays ends once it has read everything (it is never stopped).
    stays, loops = (b, loops_b) if a.leaver == "a" else (a, loops_a)
    assert loops[0] < MAX_LOOPS, f"the worker that stays never ended ({ends})"
    left = "b" if stays is a else "a"
    if ends.get(left) is not None:
        reasons.append(f"{left}: {ends[left]}")
    return stays, ends[stays.who]


def _idle_kwargs(schedule: dict[str, Any]) -> dict[str, Any]:
    return dict(
        initial=[], rp_initial=[], events=[], rp_events=[], chunk=schedule["chunk"],
        serve=schedule["serve"], produce={}, lookup_failures=0, order=schedule["order"],
    )  # fmt: skip


def run(schedule: dict[str, Any]) -> Outcome:
    logs = gappy_log(schedule["gaps"])
    n, queues = len(logs), schedule["rp_partitions"]
    broker = HopBroker(
        logs,
        {(call, k): fault for (call, k), fault in schedule["faults"].items()},
        earliest=schedule["start_from"] == "earliest",
        hostile=frozenset((p % n, o) for p, o in schedule.get("hostile", ())),
        partitions=queues,
        jitter={
            (p, i): ms for p, row in enumerate(schedule["jitter"][:n]) for i, ms in enumerate(row)
        },
    )
    broker.result_faults = dict(schedule["result_faults"])
    broker.spec = schedule.get("window", broker.spec)
    broker.changelogged = schedule.get("changelog", False)
    reasons: list[str] = []
    owned: set[tuple[str, int]] = set()
    worker_id = "a"
    consumer: HopConsumer
    with (
        scratch() as directory,
        patch("streamherd.workers.sinks.topic_limits", lambda *a, **k: {}),
        patch(
            "streamherd.workers.sinks.TransactionalProducer",
            lambda conf: HopProducer(broker, conf),
        ),
        patch("streamherd.workers.engine.LAG_REFRESH_SECONDS", 0.0),
        # The changelog backend's topic and consumers (its producer is the engine's).
        patch.object(changelog, "AdminClient", lambda conf: None),
        patch.object(changelog, "ensure_topic", lambda *a, **k: CHANGELOG_PARTITIONS),
        patch.object(changelog, "Consumer", lambda conf: HopChangelogReader(broker, conf)),
        patch(
            "streamherd.workers.engine.MARKER_SECONDS",
            0.0 if schedule["markers"] == "batch" else math.inf,
        ),
    ):
        for worker in range(MAX_WORKERS):
            first = worker == 0
            broker.faulted = False
            if first and schedule.get("pair") is not None:
                member, reason = run_pair(broker, schedule, directory, reasons)
                if member is not None:
                    worker_id = member.who  # its restarts are of its pod: its id
                if member is None or reason is None:
                    continue  # stopped on an error: the next worker goes on
                consumer = member
            else:
                consumer = consumer_of(broker, schedule, first)
                engine, stop, loops = launch(broker, schedule, directory, consumer, worker_id)
                try:
                    reason = drive(engine, stop, loops, consumer, schedule)
                except (FatalClientError, KafkaException) as error:
                    reasons.append(f"{type(error).__name__}: {error}")
                    engine.outputs.discard()
                    continue
                assert loops[0] < MAX_LOOPS, f"the run never ended ({reason})"
            reasons.append(str(reason))
            owned = consumer.owned_at_end
            if broker.faulted:
                continue
            break
        else:
            raise AssertionError(f"no worker ended cleanly: {reasons}")
    assert not broker.violations, broker.violations
    return Outcome(broker, owned, reasons)


def check_end(outcome: Outcome) -> None:
    """Every window is emitted once and whole; every record re-keyed or dead-lettered."""
    broker = outcome.broker
    event(f"workers: {len(outcome.reasons)}")
    event(f"commits: {min(broker.commits, 10)}")
    event(f"faults met: {len(broker.faults) < broker.planned}")
    event(f"windows emitted: {min(len(broker.visible), 8)}")
    event(f"windows committed before the end: {min(broker.early, 4)}")
    event(f"aborts: {min(broker.aborts, 3)}")
    event(f"aborts of window results: {min(broker.aborted_results, 2)}")
    event(f"deliveries failed: {min(broker.lost_deliveries, 2)}")
    event(f"idle markers: {min(broker.idle_marks, 2)}")
    if broker.changelogged:
        event(f"changelog restores: {min(broker.restores, 3)}")
    if broker.behind or broker.fenced_sends or broker.zombie_commits:
        event(f"zombie: offsets fenced {min(broker.fenced_sends, 2)}")
        event(f"zombie: transactions committed {min(broker.zombie_commits, 2)}")
    broker.judge("the end")
    assert outcome.owned == {(TOPIC, p) for p in broker.logs} | {(RP, q) for q in broker.rp}, (
        outcome.owned
    )
    for p, records in broker.logs.items():
        committed = broker.group.get(p, (None, ""))[0]
        assert committed is not None and committed >= records[-1] + 1, (p, committed, records)
    expected = Counter((g, w, n) for (g, w), n in broker.windows().items())
    assert broker.seen_windows() == expected, (broker.seen_windows(), expected)
    assert len(set(broker.dead)) == len(broker.dead), broker.dead
    late = {(p, o) for p in broker.logs for o in broker.late(p)}
    event(f"late records: {min(len(late), 3)}")
    if broker.hostile_at:  # a dead-letter topic: every late record is there once
        assert late <= set(broker.dead), sorted(late - set(broker.dead))


def events(last: int, most: int) -> st.SearchStrategy[list[Event]]:
    """Rebalances at polls 1 to ``last`` (a partition number is taken modulo the topic's)."""
    return st.lists(
        st.builds(
            Event,
            st.integers(1, last),
            st.sampled_from(["assign", "revoke", "lost"]),
            st.integers(0, 2),
            st.sampled_from(["before", "after"]),
        ),
        max_size=most,
    )


HOP_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **FIELDS,
    # Longer logs than the sibling's at least, and more polls and commits in a run: its
    # rebalances and faults over more of them.
    "gaps": st.lists(
        st.lists(st.sampled_from([0, 0, 0, 1, 1, 2]), min_size=3, max_size=20),
        min_size=1,
        max_size=3,
    ),
    "events": events(20, 6),
    # A produce (of any topic) by number: its delivery fails (any fault kind).
    "faults": st.dictionaries(
        st.tuples(
            st.sampled_from(["send_offsets", "commit", "abort", "produce"]), st.integers(1, 12)
        ),
        st.sampled_from(
            ["abortable", "retriable", "fatal", "unknown-committed", "unknown-aborted"]
        ),
        max_size=4,
    ),
    # Faults of the k-th send_offsets or commit of a transaction holding window results.
    "result_faults": st.dictionaries(
        st.tuples(st.sampled_from(["send_offsets", "commit"]), st.integers(1, 4)),
        st.sampled_from(
            ["abortable", "retriable", "fatal", "unknown-committed", "unknown-aborted"]
        ),
        max_size=2,
    ),
    "rp_partitions": st.integers(1, 3),
    "rp_initial": st.lists(st.integers(0, 2), max_size=3, unique=True),
    "rp_events": events(20, 4),
    "rp_later_events": events(8, 2),
    "markers": st.sampled_from(["batch", "commit"]),
    # Event times out of offset order: per partition, per record (by its index in the log),
    # ms added to its offset's. A record behind an earlier one by a window is late (dead-lettered
    # downstream); one ahead makes later ones late.
    "jitter": st.lists(
        st.lists(st.sampled_from([0, 0, 0, 0, 0, -1, -5, -9, 2, 6]), max_size=20), max_size=3
    ),
    # A checkpoint every so many loops besides those at ``checkpoints``: windows close and
    # are emitted while the source is still read.
    "every": st.sampled_from([None, 1, 1, 2, 3]),
    # Per poll: the repartition topic's records handed out before the source's.
    "order": st.lists(st.booleans(), min_size=1, max_size=4),
    # The window (size, slide, allowed lateness in ms): tumbling or hopping, some late
    # records accepted or none.
    "window": st.sampled_from(
        [
            (WINDOW_MS, WINDOW_MS, 0),
            (WINDOW_MS, WINDOW_MS, 0),
            (WINDOW_MS, WINDOW_MS, 3),
            (WINDOW_MS, 2, 0),
            (WINDOW_MS, 2, 5),
            (6, 2, 1),
            (WINDOW_MS, 1, 2),
        ]
    ),
    # idleTimeout: loops at which it has elapsed for every partition (a third of the runs).
    "idle": st.one_of(st.none(), st.none(), st.sets(st.integers(1, 20), min_size=1, max_size=4)),
    # The changelog state backend (checkpoint.changelog) instead of the volume's files, in
    # a third of the runs.
    "changelog": st.sampled_from([False, False, True]),
    # In a third of the runs, two live workers (MemberConsumer): at the first one's poll
    # ``at`` the group moves on (some partitions handed over, or the first left behind, a
    # zombie), the first leaves ``linger`` polls later; ``turns``: at each poll, whether the
    # worker polling lets the other run.
    "pair": st.one_of(
        st.none(),
        st.none(),
        st.fixed_dictionaries(
            {
                "kind": st.sampled_from(["zombie", "handover"]),
                "at": st.integers(1, 12),
                "linger": st.integers(0, 16),
                "moved": st.lists(st.integers(0, 2), max_size=3),
                "rp_moved": st.lists(st.integers(0, 2), max_size=3),
                "leaves": st.sampled_from(["a", "b"]),  # after a handover
                "turns": st.lists(st.booleans(), min_size=1, max_size=5),
            }
        ),
    ),
}
SCHEDULE = st.fixed_dictionaries(HOP_FIELDS)
HOSTILE = st.fixed_dictionaries(
    {
        **HOP_FIELDS,
        "hostile": st.sets(st.tuples(st.integers(0, 2), st.integers(0, 6)), min_size=1, max_size=8),
    }
)
#: STREAMHERD_EOS_EXAMPLES=3000 for a long run (about 4 minutes here).
SETTINGS = settings(
    max_examples=int(os.environ.get("STREAMHERD_EOS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: Two source partitions of 11 records, two repartition partitions, a checkpoint every loop:
#: windows close and are committed while the source is read.
STEADY: dict[str, Any] = {
    "gaps": [[0] * 11, [0] * 11],
    "initial": [0, 1],
    "events": [],
    "later_events": [],
    "faults": {},
    "chunk": 2,
    "start_from": "earliest",
    "lookup_failures": 0,
    "batch_size": 12,
    "serve": [False],
    "produce": {},
    "checkpoints": set(),
    "result_faults": {},
    "rp_partitions": 2,
    "rp_initial": [0, 1],
    "rp_events": [],
    "rp_later_events": [],
    "markers": "commit",
    "jitter": [],
    "every": 1,
    "order": [False],
}

#: A handover at the first worker's second poll: source partition 0 and repartition
#: partition 0 to a second worker, which leaves 4 polls later; each lets the other run
#: every second poll.
PAIR: dict[str, Any] = {
    "kind": "handover",
    "at": 2,
    "linger": 4,
    "moved": [0],
    "rp_moved": [0],
    "leaves": "a",
    "turns": [False, True],
}


@SETTINGS
@given(SCHEDULE)
# Windows committed, then a transaction holding more of them aborted (its commit refused):
# every partition of both topics goes back to its commit, the windows are emitted again once.
@example({**STEADY, "result_faults": {("commit", 2): "abortable"}})
# The first transaction holding windows commits, its outcome unknown to the worker (the abort
# is refused): the next worker adopts the pending checkpoints of both topics' partitions.
@example({**STEADY, "result_faults": {("commit", 1): "unknown-committed"}})
# A repartition partition revoked inside a poll after its records were handed out, the
# revoke's transaction refused (send_offsets): aborted, every partition rewound, the
# partition given back later.
@example(
    {
        **STEADY,
        "every": None,
        "checkpoints": {2, 4},
        "rp_events": [Event(6, "revoke", 1, "after")],
        "faults": {("send_offsets", 3): "abortable"},
    }
)
# A zombie: the group moves on from the first worker at its second poll and gives everything
# to a second one (its own transactional id); the first, left behind, reads and commits on:
# its offsets are fenced (KIP-447), its transactions abort, and each abort rewinds it to the
# second one's commits. Its rewind must not judge the second one's pending checkpoints (one
# being committed: discarded, the second's next checkpoint had nothing to build on).
@example({**STEADY, "pair": {**PAIR, "kind": "zombie", "at": 2, "linger": 2}})
# The zombie commits a transaction of progress markers alone (no offsets: not fenced).
@example(
    {
        **STEADY,
        "changelog": True,
        "pair": {**PAIR, "kind": "zombie", "at": 4, "linger": 8, "turns": [False, False, True]},
    }
)
# With the changelog backend: the first worker hands partitions over to a second, which
# commits them and leaves; the first, alone again, restores them from the changelog (not
# from what it held before the handover).
@example({**STEADY, "changelog": True, "pair": {**PAIR, "leaves": "b"}})
def test_repartitioned_windows_are_each_counted_once_and_whole(schedule: dict[str, Any]) -> None:
    check_end(run(schedule))


@SETTINGS
@given(HOSTILE)
# A hostile record dead-lettered upstream and late records dead-lettered downstream (event
# times behind their partition's by a window), in a transaction holding windows that aborts:
# each dead letter committed once, by the transaction after.
@example(
    {
        **STEADY,
        "jitter": [[0, 0, 0, 0, 0, -5], [0, 0, 0, 0, 0, 0, -9]],
        "hostile": {(0, 2)},
        "result_faults": {("commit", 1): "abortable"},
    }
)
# The same in hopping windows (4 ms, every 2 ms) with 5 ms of allowed lateness: a record
# behind its partition by a window is counted in its newest windows only, or is late.
@example(
    {
        **STEADY,
        "jitter": [[0, 0, 0, 0, 0, -5, 0, -9], [0, 0, 0, 0, 0, 0, -9, -7]],
        "hostile": {(0, 2)},
        "result_faults": {("commit", 1): "abortable"},
        "window": (WINDOW_MS, 2, 5),
    }
)
# Tumbling windows with 3 ms of allowed lateness: a record behind by less is still counted.
@example(
    {
        **STEADY,
        "jitter": [[0, 0, 0, 0, 0, -5, 0, -9], [0, 0, 0, 0, 0, 0, -9, -7]],
        "hostile": {(0, 2)},
        "window": (WINDOW_MS, WINDOW_MS, 3),
    }
)
def test_repartitioned_windows_and_dead_letters_hold_each_record_once(
    schedule: dict[str, Any],
) -> None:
    outcome = run(schedule)
    check_end(outcome)
    event(f"dead letters committed: {min(len(outcome.broker.dead), 5)}")
