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
back and forth in a partition: a record whose window ends at or before the largest event
time re-keyed before it in its own partition is late, dead-lettered downstream. Faults are
the sibling's (by call number), and besides at the k-th send_offsets or commit of a
transaction holding window results.

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

Not modelled: idleness (``idleTimeout``), several live workers at once (each with its own
transactional id: another worker's open transaction holding a repartition partition's last
stable offset, a zombie's commit of markers alone, which sends no offsets and so is not
fenced by the group's generation), delivery failures of a produce, the changelog state
backend, snapshots, replays and resets, user functions' fan-out, hopping windows and
allowed lateness.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
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

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.kafkaclients import FatalClientError
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.rekeying import HOP_FORMAT, decode_message
from streamherd.workers.statebackends import VolumeBackend
from tests.unit.workers.test_worker_exactly_once_schedules import (
    DEAD,
    FIELDS,
    MAX_WORKERS,
    OUT,
    WINDOW_MS,
    Broker,
    Entry,
    Event,
    FakeProducer,
    GroupConsumer,
    Metadata,
    Phase,
    scratch,
    window_index,
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


@dataclass
class HopEntry(Entry):
    """A repartition partition's entry: a record (with its headers and time), open until
    its transaction is decided, or a control record (``marker``)."""

    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0


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

    def fence(self) -> None:
        super().fence()
        self.decide([(("rp", q), e) for q, log in self.rp.items() for e in log], False)

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
        self.judge(f"commit {self.commits}")

    # -- the rule

    def event_ms(self, p: int, o: int) -> int:
        """Record ``o`` of partition ``p``'s event time (its Kafka timestamp)."""
        if not self.jitter:
            return BASE_TS + o
        return BASE_TS + o + self.jitter.get((p, self.logs[p].index(o)), 0)

    def window(self, p: int, o: int) -> tuple[int, int]:
        """The window (key, window) of record ``o`` of partition ``p``."""
        return key_of(o), self.event_ms(p, o) // WINDOW_MS

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
        """The records of ``p`` its own partition makes late: a window ends at or before the
        largest event time of the records re-keyed before it (lateness 0). Decided
        downstream, by that maximum carried in the entry (docs/engine.md)."""
        late, top = set(), None
        for o in self.rekeyable(p):
            event_ms = self.event_ms(p, o)
            if top is not None and event_ms - event_ms % WINDOW_MS + WINDOW_MS <= top:
                late.add(o)
            top = event_ms if top is None else max(top, event_ms)
        return late

    def records(self, p: int, upto: int | None = None) -> list[int]:
        """The records of ``p`` a window counts (up to ``upto``): neither hostile nor late."""
        late = self.late(p)
        return [o for o in self.rekeyable(p, upto) if o not in late]

    def windows(self) -> Counter[tuple[int, int]]:
        """Each window (key, window) with the count of every record it must hold."""
        return Counter(self.window(p, o) for p in self.logs for o in self.records(p))

    def seen_windows(self) -> Counter[tuple[int, int, int]]:
        return Counter(
            (int(r["key"]), window_index(r["window_start"]), r["n"]) for r in self.visible
        )

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
            for o in self.records(p):
                counted.setdefault(self.window(p, o), []).append((p, o))
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
        if topic == DEAD:
            origin = dict(headers)
            p = int(origin["streamherd.source.partition"])
            o = int(origin["streamherd.source.offset"])
            if o in self.broker.late(p) and not self.broker.hostile(p, o):
                self._require("produce", "in")
                self.dead.append((p, o))
                return
        if topic != RP:
            super().produce(topic, value, headers, key, partition, **kwargs)
            return
        self._require("produce", "in")
        assert 0 <= partition < len(self.broker.rp), partition
        entry = HopEntry(key, value, "open", list(headers or ()), timestamp)
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
        self._with_results("send_offsets")
        super().send_offsets_to_transaction(positions, group_metadata, timeout)

    def commit_transaction(self, timeout: float = -1) -> None:
        self._with_results("commit")
        super().commit_transaction(timeout)

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


def config(batch_size: int, start_from: str, directory: str, *, dead_letters: bool) -> WorkerConfig:
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
                }
            },
            "processor": {
                "steps": [
                    {"filter": "o / d >= 0"},
                    {
                        "window": {
                            "keyBy": KEY_BY,
                            "size": f"{WINDOW_MS}ms",
                            "aggregates": [{"name": "n", "function": "count"}],
                        }
                    },
                ]
            },
            "repartition": {"topic": RP},
            "sink": {"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": OUT}},
            "checkpoint": {"directory": directory, "intervalSeconds": 600},
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
    reasons: list[str] = []
    owned: set[tuple[str, int]] = set()
    with scratch() as directory:
        for worker in range(MAX_WORKERS):
            first = worker == 0
            broker.faulted = False
            stop = threading.Event()
            consumer = HopConsumer(
                broker,
                initial=sorted({p % n for p in schedule["initial"]}) if first else range(n),
                rp_initial=sorted({q % queues for q in schedule["rp_initial"]})
                if first
                else range(queues),
                events=[
                    Event(e.at, e.kind, e.partition % n, e.phase)
                    for e in schedule["events" if first else "later_events"]
                ],
                rp_events=[
                    Event(e.at, e.kind, e.partition % queues, e.phase)
                    for e in schedule["rp_events" if first else "rp_later_events"]
                ],
                chunk=schedule["chunk"],
                serve=schedule["serve"],
                produce={p % n: k for p, k in schedule["produce"].items()} if first else {},
                lookup_failures=schedule["lookup_failures"] if first else 0,
                order=schedule["order"],
            )
            cfg = config(schedule["batch_size"], schedule["start_from"], directory,
                         dead_letters="hostile" in schedule)  # fmt: skip
            with (
                patch("streamherd.workers.sinks.topic_limits", lambda *a, **k: {}),
                patch(
                    "streamherd.workers.sinks.TransactionalProducer",
                    lambda conf: HopProducer(broker, conf),
                ),
            ):
                engine = Engine(
                    cfg, stop=stop, out=sys.stdout, metrics=EngineMetrics("exactly"),
                    source=consumer, state=VolumeBackend(directory),
                )  # fmt: skip
            # What Engine._topics learns from the cluster (the source is given here).
            engine._repartition_partitions = queues
            engine._upstreams = frozenset((TOPIC, p) for p in range(n))
            loops = [0]
            interval = engine._maybe_checkpoint

            def maybe_checkpoint(
                engine: Engine = engine, interval: Any = interval, loops: list[int] = loops,
                stop: threading.Event = stop, consumer: HopConsumer = consumer,
            ) -> None:  # fmt: skip
                loops[0] += 1
                every = schedule["every"]
                if (
                    loops[0] in schedule["checkpoints"]
                    or (every is not None and loops[0] % every == 0)
                    or consumer.waits_for_its_transaction
                ):
                    engine._last_checkpoint = float("-inf")
                interval()
                if loops[0] >= MAX_LOOPS:
                    stop.set()

            with (
                patch("streamherd.workers.engine.LAG_REFRESH_SECONDS", 0.0),
                patch(
                    "streamherd.workers.engine.MARKER_SECONDS",
                    0.0 if schedule["markers"] == "batch" else math.inf,
                ),
                patch.object(engine, "_list_topics", lambda timeout=10.0: []),
                patch.object(engine, "_maybe_checkpoint", maybe_checkpoint),
            ):
                try:
                    summary = engine.run()
                except (FatalClientError, KafkaException) as error:
                    reasons.append(f"{type(error).__name__}: {error}")
                    engine.outputs.discard()
                    continue
            assert loops[0] < MAX_LOOPS, f"the run never ended ({summary.reason})"
            reasons.append(summary.reason)
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
    "faults": st.dictionaries(
        st.tuples(st.sampled_from(["send_offsets", "commit", "abort"]), st.integers(1, 12)),
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
def test_repartitioned_windows_and_dead_letters_hold_each_record_once(
    schedule: dict[str, Any],
) -> None:
    outcome = run(schedule)
    check_end(outcome)
    event(f"dead letters committed: {min(len(outcome.broker.dead), 5)}")
