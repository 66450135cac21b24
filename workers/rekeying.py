"""The repartition record: what crosses the hop, and the two ends that write and fold it.

Used by ``streamherd.workers.engine`` for repartitioned pipelines (the hop itself, its
clock, markers and topic: ``streamherd.workers.repartitioning``).

**Upstream** (:func:`rekey`) evaluates, once per surviving record, exactly what the window
needs: its key (``values.canonical_key``), its event time and the values of its aggregate
expressions (``WindowPlan.values``, with their checks). A record whose key, event time or
value fails is dead-lettered there, with its own source coordinates, and does not move its
partition's maximum event time (as in an unpartitioned window). What is produced is a
compact record, format :data:`~streamherd.workers.fingerprint.REPARTITION_FORMAT`::

    value = bytes([FORMAT, tagged]) + msgpack([topic, partition, offset, max_before,
                                               key, event_ms, values, source_key, source_value])

``max_before`` is the source partition's largest event time before the record (None: no
record yet), ``key`` the key's JSON value (``values.key_value``), ``values`` one entry per
aggregate (None for a count). msgpack keeps every value's type and bits: NaN (with its
payload), infinities, ``-0.0``, integers within 64 bits (signed or not), unicode, bytes.
Anything it cannot carry (integers beyond 64 bits) makes the record ``tagged``: key and
values go through ``values.encode_value`` (the checkpoints' exact encoding), undone by
``decode_value``. ``source_key`` and ``source_value`` are the source record's own bytes, so
that a record dead-lettered downstream (late, or refused by its window) holds the same key
and value as in an unpartitioned pipeline, with the same source coordinates.

**Downstream** (:func:`fold_rekeyed`) folds those values straight into the window: no JSON
decode, no expression, no per-record stage; tumbling windows inline (like the fused batch
function, workers/fusing.py), hopping ones through ``PartitionWindows.add``. Dedupe,
lateness per source partition and closing are the hop's rules (repartitioning.py).

**Versions.** The first byte is the format. Format 1 (a JSON copy of the whole record with a
``streamherd.upstream`` header, evaluated again downstream; its floats NaN and infinities
became null) and any unknown format are dead-lettered with reason ``decode`` and an error
that names the format, never read as something else. The format is part of the state
fingerprint (workers/fingerprint.py), so a worker of another format does not take over
this one's state either. Progress markers (an empty value and a ``streamherd.watermark``
header) are unchanged.
"""

from __future__ import annotations

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
    "RekeyedMessage",
    "Row",
    "decode_record",
    "encode_record",
    "fold_rekeyed",
    "rekey",
]

#: The record's first two bytes: the format, then whether key and values are tagged.
_PLAIN: Final = bytes((REPARTITION_FORMAT, 0))
_TAGGED: Final = bytes((REPARTITION_FORMAT, 1))
_FIELDS: Final = 9

#: A repartition row for ``Sink.repartition``: (key text, value, timestamp ms, source
#: offset, headers).
Row = tuple[str, bytes, int, int, list[tuple[str, bytes]]]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def encode_record(  # noqa: PLR0917 - the record's fields, in its order
    topic: str,
    partition: int,
    offset: int,
    max_before: int | None,
    key: Any,
    event_ms: int,
    values: list[Any],
    source_key: bytes | None,
    source_value: bytes | None,
) -> bytes:
    """The repartition record of one source record (``key`` in state form); raises
    ValueError when a value cannot be carried at all (a string with a lone surrogate)."""
    json_key = key_value(key)
    try:
        return _PLAIN + _encode(
            (topic, partition, offset, max_before, json_key, event_ms, values,
             source_key, source_value)
        )  # fmt: skip
    except OverflowError:  # an integer beyond 64 bits: the checkpoints' exact encoding
        pass
    except UnicodeEncodeError as error:
        raise ValueError(f"a value cannot be written to the repartition topic: {error}") from None
    return _TAGGED + _encode(
        (topic, partition, offset, max_before, encode_value(json_key), event_ms,
         encode_value(values), source_key, source_value)
    )  # fmt: skip


def decode_record(value: bytes) -> list[Any]:
    """The fields of a repartition record (key in state form); RepartitionError for a record
    of another format or a malformed one."""
    head = value[:1]
    if head != _PLAIN[:1]:
        raise RepartitionError(_foreign(value))
    try:
        fields: Any = _decode(value[2:])
        if type(fields) is not list or len(fields) != _FIELDS:
            raise ValueError(f"not a list of {_FIELDS} fields")
        topic, partition, offset, top, key, event_ms, values, _k, _v = fields
        if value[1] == 1:
            key = decode_value(key)
            values = decode_value(values)
        elif value[1] != 0:
            raise ValueError(f"unknown flags {value[1]}")
        if (
            type(topic) is not str
            or type(partition) is not int
            or type(offset) is not int
            or (top is not None and type(top) is not int)
            or type(event_ms) is not int
            or type(values) is not list
        ):
            raise ValueError("a field of the wrong type")
        fields[4] = key if type(key) is str else canonical_key(key)
        fields[6] = values
    except (msgspec.DecodeError, ValueError, TypeError, IndexError) as error:
        raise RepartitionError(
            f"malformed repartition record (format {REPARTITION_FORMAT}): {error}"
        ) from None
    return fields


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
) -> tuple[list[Row], int | None]:
    """The repartition rows of one source partition's surviving records (in offset order),
    and its new maximum event time. A record whose key, event time or values fail, or whose
    values cannot be carried, is appended to ``failures`` (``expression``) and moves
    nothing."""
    key_of, time_of, values_of, kafka_time = plan.key, plan.event_time, plan.values, plan.kafka_time
    top = max_event_ms
    rows: list[Row] = []
    append = rows.append
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
            value = encode_record(
                topic, partition, offset, top, key, event_ms, values, m.key(), m.value()
            )
        except Exception as error:  # noqa: BLE001 - the record's fault: dead-letter it
            failures.append(Failure(m, "expression", error.with_traceback(None)))
            continue
        when = stamp if stamp is not None and stamp > 0 else 0  # 0: the producer's clock
        append((key_text(key), value, when, offset, []))
        if top is None or event_ms > top:
            top = event_ms
    return rows, top


class RekeyedMessage:
    """A repartition record seen as the source record it came from: dead letters name the
    source topic, partition and offset and hold the source key and value."""

    __slots__ = ("_key", "_message", "_offset", "_partition", "_topic", "_value")

    def __init__(self, message: Any, fields: list[Any]) -> None:
        self._message = message
        self._topic: str = fields[0]
        self._partition: int = fields[1]
        self._offset: int = fields[2]
        self._key: bytes | None = fields[7]
        self._value: bytes | None = fields[8]

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

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
    """Fold one batch of a repartition partition: markers into the clock, replays dropped,
    each record's values folded with its source partition's lateness. Returns the failures
    (in message order: foreign or malformed records, refused values, late records), how
    many were late, how many were duplicates, and how many records were taken (folded,
    late or refused: each once)."""
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
            fields = decode_record(value)
            if len(fields[6]) != n_values:
                raise RepartitionError(
                    f"a repartition record with {len(fields[6])} values for {n_values} aggregates"
                )
        except RepartitionError as error:
            source = _format_one(m) if value[:1] == b"{" else m
            failures.append(Failure(source, "decode", error))
            continue
        upstream = (fields[0], fields[1])
        offset, before = fields[2], fields[3]
        st = upstreams.get(upstream)
        if st is None:
            st = upstreams[upstream] = UpstreamState()
        if offset <= st.offset:
            duplicates += 1
            continue
        st.offset = offset
        st.idle = False
        if before is not None and (st.max_event_ms is None or before > st.max_event_ms):
            st.max_event_ms = before
        taken += 1
        key, event_ms, values = fields[4], fields[5], fields[6]
        # The level this record folds against: its source partition's maximum before it, or
        # the level of windows already closed, whichever is higher (UpstreamClock.level_before).
        level = before if floor is None or (before is not None and before > floor) else floor
        if tumbling:
            top = level if level is not None and event_ms <= level else event_ms
            start = event_ms - event_ms % size
            if start + size <= top - lateness:
                late += 1
                failures.append(_late(RekeyedMessage(m, fields), event_ms))
                continue
            acc = get((key, start))
            if acc is None:
                acc = open_window(key, start)
            try:
                update(acc, values)
            except REFUSED as error:  # all or nothing: the window is as it was
                failures.append(
                    Failure(RekeyedMessage(m, fields), "expression", error.with_traceback(None))
                )
            continue
        windows.max_event_ms = level
        try:
            if not windows.add(key, event_ms, values):
                late += 1
                failures.append(_late(RekeyedMessage(m, fields), event_ms))
        except REFUSED as error:  # add() changed nothing
            failures.append(
                Failure(RekeyedMessage(m, fields), "expression", error.with_traceback(None))
            )
    return failures, late, duplicates, taken
