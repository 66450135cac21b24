"""Re-keying through an internal topic, so that a window sees every record of its key.

A window's state lives with a partition. When the input topic is not keyed by the window's
``keyBy`` (a click stream keyed by user, counted per page), each source partition holds a
part of every key, and per-partition windows give one partial result per partition. The
engine (``streamherd.workers.engine``) then runs the pipeline in two stages, in the same
worker pool and the same consumer group (the Kafka Streams shape):

1. **upstream** (the source partitions): decode, the stateless steps, the window's key,
   event time and aggregate values (a record they refuse is dead-lettered here and moves no
   event time, as in an unpartitioned window); each surviving record goes to the
   repartition partition of its key (CRC-32 of
   :func:`~streamherd.workers.windowing.key_text`), named by its source partition and offset
   and carrying the largest event time of that source partition *before* it;
2. **downstream** (the repartition partitions): the window, folded per record with the
   lateness its source partition alone decides, and closed by the slowest source partition.

What crosses, and the batch fold downstream, is ``streamherd.workers.rekeying``'s (format 3:
one message per source batch and repartition partition, named by its plan). This module
holds the rules both formats share (:class:`UpstreamClock`, the progress markers, closing,
the topic) and format 1, which earlier workers wrote and a rolling upgrade leaves on the
topic: one JSON message per record with an :data:`UPSTREAM_HEADER` (:func:`encode_hop`,
:func:`fold_downstream`, record by record through the generic path).

Why the results do not depend on timing (restarts, rebalances, batch sizes, interleaving):

- *lateness* is decided by the record's own source partition: the header carries that
  partition's running maximum event time before the record, computed upstream in offset
  order (and checkpointed with the offset), so a record is late exactly when it would be
  late in an unpartitioned run of that source partition;
- *closing* uses the minimum over every source partition's maximum (records and
  :data:`WATERMARK_HEADER` markers tell each downstream partition how far every upstream
  has got), so a window closes only once no source partition can still add to it: a
  window's end is at most every upstream's own watermark, so a record that could land in a
  closed window is late by its own partition's rule;
- *duplicates* (an upstream replayed after a crash, or a zombie's late writes) carry the
  same source offsets: each downstream partition keeps the last offset it took from every
  source partition and drops anything at or below it. An upstream writes one source
  partition's records in offset order, so this is exact, in at-least-once mode too.

The one rule that depends on wall-clock time is idleness (Flink's ``withIdleness``): a
source partition with nothing new for ``idleTimeout`` says so in a marker, and the
downstream partitions stop waiting for it. If every upstream is idle, the open windows
close; records that arrive later for a closed window are late.

Format 1 records cross as JSON (:func:`encode_hop`), with the values JSON cannot hold exactly
(NaN, infinities, integers beyond 64 bits, bytes) in an :data:`EXACT_HEADER` that puts them
back (:func:`decode_hop`), so the window downstream sees the record the upstream had. A
message without that header (every record holding none of those values, and every record a
version before the header wrote) is read as plain JSON. The arrival order, which interleaves source
partitions differently on every run, changes no result: sums and averages are exact and
min/max follow one total order (``streamherd.workers.summing``, ``windowing.settle``,
decision 0130).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# The same class as confluent_kafka.admin.NewTopic, whose type stub does not re-export it.
from confluent_kafka.cimpl import NewTopic

from streamherd.workers.config import topic_matcher
from streamherd.workers.processing import (
    Failure,
    LateRecordError,
    encode_output,
    kafka_timestamp,
)
from streamherd.workers.values import decode_value, encode_value
from streamherd.workers.windowing import PartitionWindows

log = logging.getLogger("streamherd.worker")

#: Header of a re-keyed record: ``topic SEP partition SEP offset SEP max event ms before``.
UPSTREAM_HEADER: Final = "streamherd.upstream"
#: Header of a progress marker: ``topic SEP partition SEP offset SEP max event ms SEP idle``.
WATERMARK_HEADER: Final = "streamherd.watermark"
#: Header of a re-keyed record holding values JSON cannot (NaN, an infinity, an integer beyond
#: 64 bits, bytes): a JSON array of ``[path, value]``, ``path`` the object keys and array
#: indexes leading to the value, ``value`` in ``values.encode_value``'s exact form.
EXACT_HEADER: Final = "streamherd.exact"
#: Header of every repartition message and marker of this version: who wrote it,
#: ``<state fingerprint>/<spec generation>`` (the generation empty when the writer's config
#: names none: ``state.specGeneration`` is rendered under the reset and replay policies). A
#: downstream partition a replay emptied skips what was written before that replay
#: (:attr:`UpstreamClock.since`, :func:`superseded`).
WRITER_HEADER: Final = "streamherd.writer"
#: Header of a repartition message or marker whose writer's config names a state epoch
#: (``state.epoch``: the generation whose roll last started the pipeline's state anew,
#: decision 0175): that generation, in decimal. A downstream partition emptied in that
#: epoch skips what writers of an earlier one (or of none) wrote (:func:`superseded`).
EPOCH_HEADER: Final = "streamherd.epoch"
_SEP: Final = "\x1f"

Upstream = tuple[str, int]


class RepartitionError(ValueError):
    """A record on the repartition topic that no streamherd upstream wrote."""


def upstream_header(topic: str, partition: int, offset: int, max_before: int | None) -> bytes:
    return _SEP.join((topic, str(partition), str(offset), _opt(max_before))).encode()


def watermark_header(
    topic: str, partition: int, offset: int, max_event_ms: int | None, idle: bool
) -> bytes:
    return _SEP.join(
        (topic, str(partition), str(offset), _opt(max_event_ms), "1" if idle else "0")
    ).encode()


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def encode_hop(record: Mapping[str, Any]) -> tuple[bytes, bytes | None]:
    """A record as the value of a repartition message, and its :data:`EXACT_HEADER` (None
    when JSON holds it exactly, the common case: no walk over the record).

    The value is the record's JSON with null where the header holds the exact value, so any
    reader can parse it (a reader without the header sees null, as NaN and infinities always
    were; an integer beyond the float range written as a JSON number was refused by orjson
    downstream). Only a record whose JSON holds a null (orjson's NaN and infinities), or that
    orjson cannot write alone (an integer beyond 64 bits, bytes), is walked."""
    try:
        value = orjson.dumps(record)
    except TypeError:  # orjson.JSONEncodeError: bytes, an integer beyond 64 bits, ...
        found: list[list[Any]] = []
        plain = _walk(record, [], found)
        return encode_output(plain), (orjson.dumps(found) if found else None)
    if b"null" in value:
        found = []
        _walk(record, [], found)
        return value, (orjson.dumps(found) if found else None)
    return value, None


def _walk(value: Any, path: list[Any], found: list[list[Any]]) -> Any:
    """``value`` with None for each value JSON cannot hold, noted in ``found`` as ``[path,
    exact form]``."""
    kind = type(value)
    if kind is dict:
        return {
            name: _walk(item, [*path, name], found) if type(name) is str else item
            for name, item in value.items()  # JSON names only: what a reader's path follows
        }
    if kind is list or kind is tuple:
        return [_walk(item, [*path, index], found) for index, item in enumerate(value)]
    if kind is float or kind is int or kind is bytes or kind is bytearray:
        exact = encode_value(bytes(value) if kind is bytearray else value)
        if type(exact) is dict:  # encode_value's tagged forms: not plain JSON
            found.append([path, exact])
            return None
    return value


def decode_hop(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> Any:
    """The record of a repartition message (:func:`encode_hop`); raises orjson's
    JSONDecodeError, TypeError or ValueError (a decode failure of the record)."""
    record = orjson.loads(value)  # type: ignore[arg-type]
    if type(record) is not dict:
        raise ValueError(f"not a JSON object: {type(record).__name__}")
    for name, raw in headers or ():
        if name == EXACT_HEADER and raw is not None:
            _put_back(record, orjson.loads(raw))
    return record


def _put_back(record: dict[str, Any], found: Any) -> None:
    try:
        for path, exact in found:
            container: Any = record
            for step in path[:-1]:
                container = container[step]
            last = path[-1]
            in_object = type(container) is dict and type(last) is str and last in container
            in_array = type(container) is list and type(last) is int and 0 <= last < len(container)
            if not (in_object or in_array):
                raise ValueError(f"no value at {path!r}")
            container[last] = decode_value(exact)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ValueError(f"malformed {EXACT_HEADER} header: {error!r}") from None


@dataclass(frozen=True)
class Mark:
    """What one repartition message says about its upstream (record or marker)."""

    upstream: Upstream
    offset: int
    max_event_ms: int | None
    marker: bool
    idle: bool = False


def read_mark(headers: Sequence[tuple[str, bytes | None]] | None) -> Mark:
    """The upstream of a repartition message, from its header; RepartitionError if none."""
    for name, raw in headers or ():
        if name not in (UPSTREAM_HEADER, WATERMARK_HEADER) or raw is None:
            continue
        try:
            parts = raw.decode().split(_SEP)
            marker = name == WATERMARK_HEADER
            topic, partition, offset, top = parts[:4]
            if len(parts) != (5 if marker else 4):
                raise ValueError(f"{len(parts)} fields")
            return Mark(
                (topic, int(partition)),
                int(offset),
                int(top) if top else None,
                marker,
                marker and parts[4] == "1",
            )
        except (UnicodeDecodeError, ValueError) as error:
            raise RepartitionError(f"malformed {name} header: {error}") from None
    raise RepartitionError("a record on the repartition topic without a streamherd header")


#: ``UpstreamState.sub`` of an offset whose records all count as taken.
WHOLE: Final = 2**62


@dataclass
class UpstreamState:
    """What a downstream partition knows of one source partition."""

    offset: int = -1  # the last source offset taken (records) or reported (markers)
    max_event_ms: int | None = None
    idle: bool = False
    #: The sub-index within ``offset`` of the last record taken (a user function's records of
    #: one source record: 0, 1, 2... in its order); :data:`WHOLE` when every record of
    #: ``offset`` counts as taken (a marker, a format-1 record, a clock from before).
    sub: int = 0

    def behind(self, offset: int, sub: int) -> bool:
        """Whether the record ``(offset, sub)`` was taken already (or a later one was)."""
        return offset < self.offset or (offset == self.offset and sub <= self.sub)


@dataclass
class UpstreamClock:
    """One downstream partition's view of every source partition: dedupe and watermark.

    ``floor`` is the event-time level up to which windows were closed (as a maximum event
    time, like ``PartitionWindows.max_event_ms``): a record below it is late.
    """

    upstreams: dict[Upstream, UpstreamState] = field(default_factory=dict)
    known: frozenset[Upstream] = frozenset()
    floor: int | None = None
    # Whether the source still reads a topic (``topic_matcher``). An upstream of a topic an
    # edit removed from ``source.kafka.topics`` no longer holds the watermark: its last
    # event time would hold it, and so every window, forever (nothing of it will ever come
    # to move it again). Its records still in the repartition topic are folded as ever.
    reads: Callable[[str], bool] = field(default=lambda _topic: True, compare=False)
    #: Who the replay (or the discard of state from before the epoch) that emptied this
    #: partition was (None: none did): what was written before it is skipped
    #: (:func:`superseded`), as the replaying upstreams write its source records again
    #: under the new spec; the earlier entries (the old spec's steps, and lateness and
    #: progress measured from before the replay time) would otherwise fold first and turn
    #: the new ones into duplicates (decision 0172). Checkpointed.
    since: Since | None = None

    def take(self, mark: Mark) -> bool:
        """Record ``mark``; False for a duplicate (or stale) message, which must be dropped."""
        st = self.upstreams.get(mark.upstream)
        if st is None:
            st = self.upstreams[mark.upstream] = UpstreamState()
        if mark.marker:
            if mark.offset < st.offset:
                return False  # a replayed upstream's old marker: it says nothing new
            st.offset = mark.offset
            st.sub = WHOLE  # the upstream is past every record of this offset
            st.idle = mark.idle
        else:
            # Format 1 carries no sub-index: its first record of an offset is taken.
            if st.behind(mark.offset, 0):
                return False
            st.offset = mark.offset
            st.sub = 0
            st.idle = False
        if mark.max_event_ms is not None and (
            st.max_event_ms is None or mark.max_event_ms > st.max_event_ms
        ):
            st.max_event_ms = mark.max_event_ms
        return True

    def level_before(self, mark: Mark) -> int | None:
        """The max event time a record of ``mark`` folds against: its upstream's, or the
        floor of windows already closed, whichever is higher."""
        top, floor = mark.max_event_ms, self.floor
        if floor is None:
            return top
        return floor if top is None or floor > top else top

    def closing_level(self) -> int | bool | None:
        """The max event time up to which windows may close: the minimum over the known,
        non-idle source partitions; None when one has said nothing yet; True when every
        source partition is idle (close everything)."""
        if not self.known:
            return None  # the source's partitions are not known: nothing may close yet
        level: int | None = None
        active = 0
        heard = {u for u in self.upstreams if self.reads(u[0])}
        for upstream in self.known | heard:
            st = self.upstreams.get(upstream)
            if st is not None and st.idle:
                continue
            active += 1
            if st is None or st.max_event_ms is None:
                return None
            if level is None or st.max_event_ms < level:
                level = st.max_event_ms
        if active == 0:
            return True if heard or self.known else None
        return level

    def to_json(self) -> dict[str, Any]:
        return {
            # The sub-index is a sixth field, only when it is not WHOLE: a clock with none
            # (every upstream at a whole offset) is written as before.
            "upstreams": [
                [t, p, st.offset, st.max_event_ms, st.idle]
                if st.sub == WHOLE
                else [t, p, st.offset, st.max_event_ms, st.idle, st.sub]
                for (t, p), st in sorted(self.upstreams.items())
            ],
            "floor": self.floor,
            # Only when set: a clock without it is written as before.
            **({} if self.since is None else {"since": self.since.to_json()}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> UpstreamClock:
        clock = cls()
        if not data:
            return clock
        for topic, partition, offset, top, idle, *rest in data.get("upstreams", ()):
            # Without a sub-index (a clock written before): every record of the offset taken.
            sub = int(rest[0]) if rest else WHOLE
            clock.upstreams[(str(topic), int(partition))] = UpstreamState(
                int(offset), None if top is None else int(top), bool(idle), sub
            )
        floor = data.get("floor")
        clock.floor = None if floor is None else int(floor)
        since = data.get("since")
        clock.since = None if since is None else Since.from_json(since)
        return clock


@dataclass(frozen=True)
class Since:
    """What a downstream partition's state started anew with: the state fingerprint of the
    spec it replays or resets to, the spec generation of the last writer of the state it
    discarded (None when that checkpoint names none), and the state epoch it started in
    (``state.epoch``, decision 0175; None when the config names none). ``also``: the
    fingerprints the same state had by earlier rules (a worker adopted its checkpoint as
    its own: ``fingerprint.same_state``); writers of an earlier image in flight across
    that upgrade name them (a review's finding: their records were skipped as written
    before the replay)."""

    fingerprint: str
    generation: int | None = None
    epoch: int | None = None
    also: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"fingerprint": self.fingerprint, "generation": self.generation}
        if self.epoch is not None:
            doc["epoch"] = self.epoch
        if self.also:
            doc["also"] = list(self.also)
        return doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Since:
        generation, epoch = data.get("generation"), data.get("epoch")
        also = data.get("also")
        return cls(
            str(data["fingerprint"]),
            None if generation is None else int(generation),
            None if epoch is None else int(epoch),
            tuple(str(f) for f in also) if isinstance(also, list) else (),
        )

    def names(self, fingerprint: str | None) -> bool:
        """Whether a writer of ``fingerprint`` wrote this state (by any rules)."""
        return fingerprint == self.fingerprint or fingerprint in self.also

    def restored_by(self, generation: int | None, epoch: int | None = None) -> Since:
        """This, as a worker of spec ``generation`` and state ``epoch`` restores it. The
        replay's workers are of later generations than the state it discarded: a worker of
        that generation or an earlier one is of another pipeline of that name (one deleted
        with ``retainOnDelete`` counts from 1 again), whose generations order nothing of
        this one's: the fingerprint alone then judges. Likewise an epoch later than the
        worker's own (or one when the worker names none) is another pipeline's (a snapshot
        of it restored): kept, it would skip every writer of this one."""
        since = self
        if (
            since.generation is not None
            and generation is not None
            and generation <= since.generation
        ):
            since = Since(since.fingerprint, None, since.epoch, since.also)
        if since.epoch is not None and (epoch is None or epoch < since.epoch):
            since = Since(since.fingerprint, since.generation, None, since.also)
        return since


def writer_header(fingerprint: str, generation: int | None) -> bytes:
    """The :data:`WRITER_HEADER` value of a worker of ``fingerprint`` and ``generation``."""
    return f"{fingerprint}/{'' if generation is None else generation}".encode()


def epoch_header(epoch: int) -> bytes:
    """The :data:`EPOCH_HEADER` value of a worker of state ``epoch``."""
    return str(epoch).encode()


def read_epoch(headers: Sequence[tuple[str, bytes | None]] | None) -> int | None:
    """The state epoch a message's :data:`EPOCH_HEADER` names; None when it has none (its
    writer's config names none, or a worker before this version) or a malformed one."""
    for name, raw in headers or ():
        if name == EPOCH_HEADER and raw is not None:
            try:
                return int(raw)
            except ValueError:
                return None
    return None


def read_writer(
    headers: Sequence[tuple[str, bytes | None]] | None,
) -> tuple[str | None, int | None]:
    """(fingerprint, generation) a message's :data:`WRITER_HEADER` names; (None, None) when
    it has none (a worker before this version) or a malformed one."""
    for name, raw in headers or ():
        if name == WRITER_HEADER and raw is not None:
            fingerprint, sep, generation = raw.decode(errors="replace").partition("/")
            if not sep:
                return None, None
            try:
                return fingerprint, int(generation) if generation else None
            except ValueError:
                return None, None
    return None, None


def superseded(clock: UpstreamClock, headers: Sequence[tuple[str, bytes | None]] | None) -> bool:
    """Whether a message (record or marker) was written before the replay that emptied this
    partition (:attr:`UpstreamClock.since`): skipped, without moving the clock.

    A writer of another fingerprint, or of none (a worker before this version), ran another
    spec: a replay follows an edit of the state fingerprint, and the edits after it that the
    policy lets run keep it (another edit of it is a reset or replay of its own, which
    starts the partition again). A writer of the replay's fingerprint is of the replay
    unless its generation is at most that of the state the replay discarded: then it ran
    that fingerprint before an edit away from it and back (A -> B -> A). Every generation of
    the replay's spec folds, however many edits its rollout saw (a review found that the
    replaying worker's own generation, used as the floor, dropped what an earlier
    generation of the same spec wrote in the same rollout: a loss).

    The state epoch (decision 0175) closes what the generations cannot: that A -> B -> A
    when A's earlier writers name no generation (the refuse policy then). Under an operator
    that names epochs, every writer since the state started anew names that epoch; a writer
    of the fingerprint naming an earlier one, or none, wrote before it."""
    since = clock.since
    if since is None:
        return False
    fingerprint, generation = read_writer(headers)
    if not since.names(fingerprint):
        return True
    if since.epoch is not None:
        epoch = read_epoch(headers)
        if epoch is None or epoch < since.epoch:
            return True
    return (
        since.generation is not None and generation is not None and generation <= since.generation
    )


def fold_downstream(
    windows: PartitionWindows, clock: UpstreamClock, messages: Sequence[Any]
) -> tuple[list[Failure], int, int, int]:
    """Fold one batch of a repartition partition: drop replays, fold each record with its
    source partition's lateness. Returns the failures (decode, expression and late ones,
    naming the source record), how many were late, how many were duplicates (taken before,
    or :func:`superseded`), and how many records were taken (folded, late or failed: each
    once)."""
    failures: list[Failure] = []
    late = 0
    duplicates = 0
    taken = 0
    since = clock.since
    for m in messages:
        if since is not None and superseded(clock, m.headers()):
            duplicates += bool(m.value())  # a record (not a marker) the replay writes again
            continue
        try:
            mark = read_mark(m.headers())
        except RepartitionError as error:
            failures.append(Failure(m, "decode", error))
            continue
        if not clock.take(mark):
            duplicates += not mark.marker
            continue
        if mark.marker:
            continue
        taken += 1
        source = UpstreamMessage(m, mark)
        try:
            record = decode_hop(m.value(), m.headers())
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            failures.append(Failure(source, "decode", error))
            continue
        windows.max_event_ms = clock.level_before(mark)
        # Not judged against eventTime.maxAhead here: a writer of this format (before format
        # 3) had no such rule, and the level it is folded against moves with closes.
        errors, late_ones = windows.fold([(record, source)], kafka_timestamp, judge_ahead=False)
        failures.extend(Failure(s, "expression", e) for s, e in errors)
        for s, event_ms in late_ones:
            late += 1
            failures.append(
                Failure(
                    s,
                    "late",
                    LateRecordError(
                        f"event time {event_ms} is behind its source partition's "
                        "watermark by more than the allowed lateness"
                    ),
                )
            )
    return failures, late, duplicates, taken


def close_windows(
    windows: PartitionWindows, clock: UpstreamClock
) -> list[tuple[str, dict[str, Any]]]:
    """Close what the slowest upstream allows (everything when all are idle)."""
    level = clock.closing_level()
    if level is None:
        return []
    saved = windows.max_event_ms
    try:
        if level is True:
            rows, top = close_everything(windows)
            if top is not None and (clock.floor is None or top > clock.floor):
                clock.floor = top
            return rows
        windows.max_event_ms = level
        rows = windows.close()
        if clock.floor is None or level > clock.floor:
            clock.floor = level
        return rows
    finally:
        windows.max_event_ms = saved


def close_everything(
    windows: PartitionWindows,
) -> tuple[list[tuple[str, dict[str, Any]]], int | None]:
    """Close every open window (idleness); returns the rows and the max event time level
    from which each closed window counts as closed (a later record for it is late)."""
    level = past_open_windows(windows)
    if level is None:
        return [], None
    return windows.close(everything=True), level


def past_open_windows(windows: PartitionWindows) -> int | None:
    """The max event time level from which every open window counts as closed (its end plus
    the allowed lateness); None when none is open."""
    if not windows.windows:
        return None
    plan = windows.plan
    return max(start for _, start in windows.windows) + plan.size_ms + plan.lateness_ms


def pass_open_windows(windows: PartitionWindows) -> None:
    """An unpartitioned window's partition went quiet: move its watermark past every open
    window, so that each is due (its next ``close()`` emits it) and a record for one of
    them is late. Recorded in a checkpoint before the windows close, a restart closes them
    again with the same values rather than folding a late record into them."""
    top = past_open_windows(windows)
    if top is not None and (windows.max_event_ms is None or top > windows.max_event_ms):
        windows.max_event_ms = top


#: A topic creation refused for the settings it asked for.
CONFIG_REFUSED: Final = frozenset({KafkaError.POLICY_VIOLATION, KafkaError.INVALID_CONFIG})


class TopicNotReadyError(RuntimeError):
    """A topic :func:`ensure_topic` made or found did not show every partition with a leader
    (and one partition count) in time: the broker is away or still electing; waiting cures
    it."""


def ensure_topic(
    admin: AdminClient,
    name: str,
    partitions: int,
    retention_ms: int,
    timeout: float = 30.0,
    *,
    config: Mapping[str, str] | None = None,
    required: Collection[str] | None = None,
    what: str = "repartition",
) -> int:
    """Create the repartition topic if it is missing; its partition count either way.
    ``config`` replaces its topic configuration (the changelog topic: compacted). A broker
    that refuses a creation for its settings (``POLICY_VIOLATION``, ``INVALID_CONFIG``: a
    ``CreateTopicPolicy``, MSK Serverless) is asked again with the ``required`` entries
    alone when they are named, the others being tuning (decision 0193, as the operator
    does): the topic is made without them and a warning says so.

    Every worker must partition by the same count, or one key's records would meet two
    window states: so the count is read only once the broker shows every partition with a
    leader, and (for a topic another worker is creating at the same moment) the same count
    twice in a row."""
    topic_config = (
        dict(config)
        if config is not None
        else {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}
    )
    created = False
    refused: str | None = None  # why the broker refused the first settings
    while True:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, config=topic_config)],
            request_timeout=timeout,
        )
        try:
            futures[name].result(timeout)
            created = True
            log.info("%s topic %s created with %d partitions", what, name, partitions)
            if refused is not None:
                log.warning(
                    "the broker refused the settings of %s topic %s (%s): created with %s alone",
                    what, name, refused, ", ".join(sorted(topic_config)) or "none",
                )  # fmt: skip
        except KafkaException as error:
            code = error.args[0].code()
            kept = {k: v for k, v in topic_config.items() if k in (required or ())}
            if code in CONFIG_REFUSED and required is not None and kept != topic_config:
                refused, topic_config = error.args[0].str(), kept
                continue  # at most once: the next refusal has nothing left to drop
            if code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        break
    deadline = time.monotonic() + timeout
    last: int | None = None
    while True:
        topic = admin.list_topics(name, timeout=timeout).topics.get(name)
        count: int | None = None
        if (
            topic is not None
            and topic.error is None
            and topic.partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            count = len(topic.partitions)
        if count is not None and (count == partitions if created else count == last):
            return count
        if time.monotonic() > deadline:
            raise TopicNotReadyError(
                f"{what} topic {name} is not ready: {topic.error if topic else 'missing'}"
            )
        last = count
        time.sleep(0.2)


class TopicLister(Protocol):
    """What ``source_partitions`` asks of an admin client (confluent-kafka's fits)."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


def source_partitions(
    admin: TopicLister, topics: Iterable[str], timeout: float = 30.0, *, wait: bool = True
) -> frozenset[Upstream]:
    """Every partition of the source topics (the upstreams a downstream partition waits
    for); a topic starting with ``^`` is a pattern, as in the consumer's subscription.
    Waits (`wait`) until every named topic shows its partitions, each with a leader: a
    partial list would let windows close before a source partition had its say. What it
    does not see yet (a topic created later, one a pattern matches later, partitions
    added) the engine asks for again (``Engine._retry_upstreams``)."""
    names = {t for t in topics if not t.startswith("^")}
    deadline = time.monotonic() + timeout
    while True:
        out = upstreams_in(admin.list_topics(timeout=timeout), topics)
        if not wait or names <= {t for t, _ in out} or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def upstreams_in(metadata: Any, topics: Iterable[str]) -> frozenset[Upstream]:
    """The partitions of `topics` (names and ``^`` patterns) in a cluster's metadata, of
    the topics that show all their partitions, each with a leader."""
    wanted = topic_matcher(topics)
    out: set[Upstream] = set()
    for name, topic in metadata.topics.items():
        if topic.error is not None or not topic.partitions:
            continue
        if any(p.leader < 0 for p in topic.partitions.values()):
            continue
        if wanted(name):
            out.update((name, p) for p in topic.partitions)
    return frozenset(out)


class UpstreamMessage:
    """A repartition message seen as the source record it came from (dead-letter headers
    name the source topic, partition and offset); everything else is the message's own."""

    __slots__ = ("_mark", "_message")

    def __init__(self, message: Any, mark: Mark) -> None:
        self._message = message
        self._mark = mark

    def topic(self) -> str:
        return self._mark.upstream[0]

    def partition(self) -> int:
        return self._mark.upstream[1]

    def offset(self) -> int:
        return self._mark.offset

    def key(self) -> bytes | None:
        key: bytes | None = self._message.key()
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self._message.value()
        return value

    def timestamp(self) -> tuple[int, int]:
        stamp: tuple[int, int] = self._message.timestamp()
        return stamp

    def headers(self) -> Any:
        return self._message.headers()

    def error(self) -> None:
        return None
