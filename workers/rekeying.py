"""The repartition record: what crosses the hop, and the two ends that write and fold it.

Used by ``streamherd.workers.engine`` for repartitioned pipelines (the hop itself, its
clock, markers and topic: ``streamherd.workers.repartitioning``).

**Upstream** (:func:`rekey`) evaluates, once per surviving record, exactly what the window
needs: its key (``values.canonical_key``), its event time and the values of its aggregate
expressions (``WindowPlan.values``, with their checks). A record whose key, event time or
value fails is dead-lettered there, with its own source coordinates, and does not move its
partition's maximum event time (as in an unpartitioned window). What is produced is, per
repartition partition and per batch of the source partition, one compact message of format
:data:`~streamherd.workers.fingerprint.REPARTITION_FORMAT`::

    value = bytes([FORMAT]) + msgpack([topic, partition, entry, entry, ...])
    entry = [offset, max_before, key, event_ms, values, source_key, source_value(, 1)]

Entries are in offset order; ``max_before`` is the source partition's largest event time
before the record (None: no record yet), ``key`` the key's JSON value
(``values.key_value``), ``values`` one per aggregate (None for a count). msgpack keeps every
value's type and bits: NaN (with its payload), infinities, ``-0.0``, integers within 64 bits,
unicode, bytes. An entry with an integer beyond 64 bits ends with a ``1`` (tagged): its key
and values went through ``values.encode_value`` (the checkpoints' exact encoding), undone by
``decode_value``. ``source_key`` and ``source_value`` are the source record's own bytes, so
that a record dead-lettered downstream (late, or refused by its window) holds the same key
and value as in an unpartitioned pipeline, with the same source coordinates. One message
per partition and batch (at most :data:`MESSAGE_BYTES` of entries; the message key is its
first entry's key text, which picks that partition) spares a produce and a consume per
record: those were most of the hop's cost (docs/benchmarks.md).

**Downstream** (:func:`fold_rekeyed`) folds those values straight into the window: no JSON
decode, no expression, no per-record stage; tumbling windows inline (like the fused batch
function, workers/fusing.py), hopping ones through ``PartitionWindows.add``. Dedupe (per
entry: a replayed batch may be cut elsewhere), lateness per source partition and closing
are the hop's rules (repartitioning.py).

**Versions.** The first byte is the format. Format 1 (a JSON copy of the whole record with a
``streamherd.upstream`` header, evaluated again downstream; its floats NaN and infinities
became null) and any unknown format are dead-lettered with reason ``decode`` and an error
that names the format, never read as something else. The format is part of the state
fingerprint (workers/fingerprint.py), so a worker of another format does not take over
this one's state either. Progress markers (an empty value and a ``streamherd.watermark``
header) are unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from streamherd.workers.fingerprint import REPARTITION_FORMAT
from streamherd.workers.processing import Failure, Item, LateRecordError, kafka_timestamp
from streamherd.workers.repartitioning import (
    Mark,
    RepartitionError,
    UpstreamClock,
    UpstreamState,
    read_mark,
)
from streamherd.workers.values import (
    canonical_key,
    decode_value,
    encode_value,
    key_text,
    key_value,
)
from streamherd.workers.windowing import REFUSED, PartitionWindows, WindowPlan

__all__ = [
    "MESSAGE_BYTES",
    "RekeyedMessage",
    "Row",
    "decode_message",
    "encode_entry",
    "encode_message",
    "fold_rekeyed",
    "rekey",
]

_FORMAT: Final = bytes((REPARTITION_FORMAT,))
_ENTRY_FIELDS: Final = 7
#: Bytes of entries in one message at most (a larger entry is a message of its own): well
#: under the producer's and the broker's default message.max.bytes (1 MB).
MESSAGE_BYTES: Final = 256 * 1024

#: A repartition row for ``Sink.repartition``: (key text, value, timestamp ms, source
#: offset, headers).
Row = tuple[str, bytes, int, int, list[tuple[str, bytes]]]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def encode_entry(  # noqa: PLR0917 - the entry's fields, in its order
    offset: int,
    max_before: int | None,
    key: Any,
    event_ms: int,
    values: list[Any],
    source_key: bytes | None,
    source_value: bytes | None,
) -> bytes:
    """One source record's entry (``key`` in state form); raises ValueError when a value
    cannot be carried at all (a string with a lone surrogate)."""
    json_key = key_value(key)
    try:
        return _encode((offset, max_before, json_key, event_ms, values, source_key, source_value))
    except OverflowError:  # an integer beyond 64 bits: the checkpoints' exact encoding
        pass
    except UnicodeEncodeError as error:
        raise ValueError(f"a value cannot be written to the repartition topic: {error}") from None
    return _encode(
        (offset, max_before, encode_value(json_key), event_ms, encode_value(values),
         source_key, source_value, 1)
    )  # fmt: skip


def _array_head(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_message(topic: str, partition: int, entries: list[bytes]) -> bytes:
    """The message of a source partition's entries (from :func:`encode_entry`)."""
    return b"".join(
        (_FORMAT, _array_head(2 + len(entries)), _encode(topic), _encode(partition), *entries)
    )


def decode_message(value: bytes) -> tuple[str, int, list[list[Any]]]:
    """The source topic, partition and entries (keys in state form) of a repartition
    message; RepartitionError for one of another format or a malformed one."""
    if value[:1] != _FORMAT:
        raise RepartitionError(_foreign(value))
    try:
        fields: Any = _decode(value[1:])
        if type(fields) is not list or len(fields) < 3:
            raise ValueError("not a list of a topic, a partition and entries")
        topic, partition = fields[0], fields[1]
        if type(topic) is not str or type(partition) is not int:
            raise ValueError("a field of the wrong type")
        entries = fields[2:]
        for entry in entries:
            if type(entry) is not list:
                raise ValueError("an entry that is not a list")
            if len(entry) != _ENTRY_FIELDS:
                if len(entry) != _ENTRY_FIELDS + 1 or entry[_ENTRY_FIELDS] != 1:
                    raise ValueError(f"an entry of {len(entry)} fields")
                entry.pop()
                entry[2] = decode_value(entry[2])
                entry[4] = decode_value(entry[4])
            offset, top, key, event_ms, values = entry[:5]
            if (
                type(offset) is not int
                or (top is not None and type(top) is not int)
                or type(event_ms) is not int
                or type(values) is not list
            ):
                raise ValueError("a field of the wrong type")
            if type(key) is not str:
                entry[2] = canonical_key(key)
    except (msgspec.DecodeError, ValueError, TypeError, IndexError) as error:
        raise RepartitionError(
            f"malformed repartition message (format {REPARTITION_FORMAT}): {error}"
        ) from None
    return topic, partition, entries


def _foreign(value: bytes) -> str:
    if not value:
        return "an empty repartition record without a progress marker header"
    if value[:1] == b"{":
        return (
            "a repartition record of format 1 (a JSON record, written by an earlier "
            f"streamherd); this worker reads format {REPARTITION_FORMAT} only: not folded"
        )
    return (
        f"a repartition record of unknown format {value[0]}; this worker reads format "
        f"{REPARTITION_FORMAT} only: not folded"
    )


def rekey(
    plan: WindowPlan,
    topic: str,
    partition: int,
    max_event_ms: int | None,
    items: list[Item],
    *,
    failures: list[Failure],
    partitions: int,
) -> tuple[list[Row], int | None]:
    """The repartition messages of one source partition's surviving records (in offset
    order; one per repartition partition of ``partitions`` and :data:`MESSAGE_BYTES`), and
    its new maximum event time. A record whose key, event time or values fail, or whose
    values cannot be carried, is appended to ``failures`` (``expression``) and moves
    nothing."""
    key_of, time_of, values_of, kafka_time = plan.key, plan.event_time, plan.values, plan.kafka_time
    top = max_event_ms
    rows: list[Row] = []
    # repartition partition -> [first key text, entries, bytes, last offset, timestamp]
    open_: dict[int, list[Any]] = {}
    crc32 = zlib.crc32
    for record, m in items:
        offset = m.offset()
        assert offset is not None
        try:
            key = key_of(record)
            if type(key) is not str:
                key = canonical_key(key)  # NaN, objects: the record's error
            stamp = kafka_timestamp(m)
            event_ms = time_of(record, stamp if kafka_time else None)
            values = values_of(record)
            entry = encode_entry(offset, top, key, event_ms, values, m.key(), m.value())
        except Exception as error:  # noqa: BLE001 - the record's fault: dead-letter it
            failures.append(Failure(m, "expression", error.with_traceback(None)))
            continue
        if top is None or event_ms > top:
            top = event_ms
        text = key_text(key)
        # The partition Sink.repartition picks for this key text (CRC-32, stable).
        target = crc32(text.encode("utf-8", errors="surrogatepass")) % partitions
        when = stamp if stamp is not None and stamp > 0 else 0  # 0: the producer's clock
        group = open_.get(target)
        if group is not None and group[2] + len(entry) > MESSAGE_BYTES:
            rows.append(_row(topic, partition, group))
            group = None
        if group is None:
            open_[target] = [text, [entry], len(entry), offset, when]
            continue
        group[1].append(entry)
        group[2] += len(entry)
        group[3] = offset
        group[4] = max(group[4], when)
    rows.extend(_row(topic, partition, group) for group in open_.values())
    return rows, top


def _row(topic: str, partition: int, group: list[Any]) -> Row:
    text, entries, _size, offset, when = group
    return (text, encode_message(topic, partition, entries), when, offset, [])


class RekeyedMessage:
    """An entry of a repartition message seen as the source record it came from: dead
    letters name the source topic, partition and offset and hold the source key and value."""

    __slots__ = ("_entry", "_message", "_partition", "_topic")

    def __init__(self, message: Any, topic: str, partition: int, entry: list[Any]) -> None:
        self._message = message
        self._topic = topic
        self._partition = partition
        self._entry = entry

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        offset: int = self._entry[0]
        return offset

    def key(self) -> bytes | None:
        key: bytes | None = self._entry[5]
        return key

    def value(self) -> bytes | None:
        value: bytes | None = self._entry[6]
        return value

    def timestamp(self) -> tuple[int, int]:
        stamp: tuple[int, int] = self._message.timestamp()
        return stamp

    def headers(self) -> Any:
        return self._message.headers()

    def error(self) -> None:
        return None


def _late(source: Any, event_ms: int) -> Failure:
    return Failure(
        source,
        "late",
        LateRecordError(
            f"event time {event_ms} is behind its source partition's "
            "watermark by more than the allowed lateness"
        ),
    )


def _format_one(message: Any) -> Any:
    """The source record a format-1 record names (its header), else the message itself."""
    try:
        mark = read_mark(message.headers())
    except RepartitionError:
        return message
    return _Named(message, mark)


class _Named:
    """A format-1 record, dead-lettered under its source coordinates (its own bytes)."""

    __slots__ = ("_mark", "_message")

    def __init__(self, message: Any, mark: Mark) -> None:
        self._message, self._mark = message, mark

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


def fold_rekeyed(
    windows: PartitionWindows, clock: UpstreamClock, messages: Sequence[Any]
) -> tuple[list[Failure], int, int, int]:
    """Fold one batch of a repartition partition: markers into the clock, replayed entries
    dropped, each entry's values folded with its source partition's lateness. Returns the
    failures (in order: foreign or malformed messages, refused values, late records), how
    many were late, how many were duplicates, and how many records were taken (folded, late
    or refused: each once)."""
    failures: list[Failure] = []
    late = duplicates = taken = 0
    plan = windows.plan
    update = plan.update
    size, lateness = plan.size_ms, plan.lateness_ms
    tumbling = size == plan.slide_ms
    get, open_window = windows.windows.get, windows.open_window
    upstreams = clock.upstreams
    floor = clock.floor  # only close_windows() raises it, between batches
    n_values = len(plan.aggregates)
    for m in messages:
        value = m.value()
        if not value:  # a progress marker
            try:
                mark = read_mark(m.headers())
            except RepartitionError as error:
                failures.append(Failure(m, "decode", error))
                continue
            if mark.marker:
                clock.take(mark)
            else:  # a format-1 record with an empty value: not ours to read
                failures.append(Failure(_format_one(m), "decode", RepartitionError(_foreign(b"{"))))
            continue
        try:
            topic, partition, entries = decode_message(value)
            for entry in entries:
                if len(entry[4]) != n_values:
                    raise RepartitionError(
                        f"a repartition entry with {len(entry[4])} values for {n_values} aggregates"
                    )
        except RepartitionError as error:
            source = _format_one(m) if value[:1] == b"{" else m
            failures.append(Failure(source, "decode", error))
            continue
        upstream = (topic, partition)
        st = upstreams.get(upstream)
        if st is None:
            st = upstreams[upstream] = UpstreamState()
        for entry in entries:
            offset, before, key, event_ms, values = entry[0], entry[1], entry[2], entry[3], entry[4]
            if offset <= st.offset:
                duplicates += 1
                continue
            st.offset = offset
            st.idle = False
            if before is not None and (st.max_event_ms is None or before > st.max_event_ms):
                st.max_event_ms = before
            taken += 1
            # The level this record folds against: its source partition's maximum before it,
            # or the level of windows already closed, whichever is higher
            # (UpstreamClock.level_before).
            level = before if floor is None or (before is not None and before > floor) else floor
            if tumbling:
                top = level if level is not None and event_ms <= level else event_ms
                start = event_ms - event_ms % size
                if start + size <= top - lateness:
                    late += 1
                    failures.append(_late(RekeyedMessage(m, topic, partition, entry), event_ms))
                    continue
                acc = get((key, start))
                if acc is None:
                    acc = open_window(key, start)
                try:
                    update(acc, values)
                except REFUSED as error:  # all or nothing: the window is as it was
                    failures.append(_refused(m, topic, partition, entry, error))
                continue
            windows.max_event_ms = level
            try:
                if not windows.add(key, event_ms, values):
                    late += 1
                    failures.append(_late(RekeyedMessage(m, topic, partition, entry), event_ms))
            except REFUSED as error:  # add() changed nothing
                failures.append(_refused(m, topic, partition, entry, error))
    return failures, late, duplicates, taken


def _refused(
    message: Any, topic: str, partition: int, entry: list[Any], error: Exception
) -> Failure:
    return Failure(
        RekeyedMessage(message, topic, partition, entry),
        "expression",
        error.with_traceback(None),
    )
