"""The repartition message of format 3: records pre-evaluated upstream, batched, named by plan.

Used by ``streamherd.workers.engine`` for repartitioned pipelines; the hop's rules (source
partition lateness, dedupe by source offset, closing by the slowest source partition, the
progress markers) are ``streamherd.workers.repartitioning``'s, unchanged.

**Upstream** (:func:`rekey`) evaluates, once per surviving record, what the window needs:
its key (``values.canonical_key``), its event time and its aggregate values
(``WindowPlan.values``). What it produces is, per repartition partition and per batch of a
source partition, one message (decision 0157)::

    value = b"\\x03" + msgpack([plan, topic, partition, entry, entry, ...])
    entry = [offset, max_before, key, event_ms, values, source_key, source_value(, 1)]
    entry = [offset, max_before, key, event_ms, values, source_key, source_value, 0|1, sub]

``plan`` is :func:`hop_plan` of the writer's spec: the *layout* (a hash of what the window
makes of an entry: its key, event time and aggregate expressions, normalized) and a hash of
everything else the entries were evaluated under (the source format, the steps before the
window, the user function). Entries are in offset order;
``max_before`` is the source partition's largest event time before the record (None: no
record yet), ``sub`` the record's place among the records a user function made of that
source record (0, 1, 2... in the order it returned them; written only when not 0, as the
second form, whose eighth field is 0 or the ``1`` below), ``key`` the key's JSON value
(``values.key_value``), ``values`` one per aggregate (None for a count). msgpack keeps
every value's type and bits: NaN with its payload, infinities, ``-0.0``, integers within
64 bits, unicode, bytes; an entry with an integer beyond 64 bits ends with a ``1``: its
key and values went through
``values.encode_value`` (the checkpoints' exact encoding). The downstream dedupe orders
``(offset, sub)``, so every record a source record fans out to folds once, even when they
go to different repartition partitions (an entry without ``sub``, of a worker before it, is
sub 0: of its fan-out only the first folds, as before). ``source_key`` and
``source_value`` are the source record's own bytes, so that a record dead-lettered
downstream (late, refused by its window, or of another layout) holds what an unpartitioned
pipeline's dead letter holds, under the same source coordinates. One message per partition
and batch (at most :data:`MESSAGE_BYTES` of entries; the message key is the first entry's
key text, which picks the partition every entry of it belongs to) spares a produce and a
consume per record, and no header is parsed (one is written: who wrote the message, read
only by a partition a replay emptied, decision 0172): those were most of the hop's cost
(docs/benchmarks.md).

Errors are decided where an unpartitioned window decides them, with the same reasons: a
key or event time that fails is dead-lettered upstream and moves nothing; values that fail
(``WindowPlan.check``: the record alone decides, never what a window holds) are
dead-lettered upstream too, and move nothing either, as an unpartitioned window refuses
them (format 1's upstream side evaluates them the same way).

**Downstream** (:func:`fold_hop`) folds the values straight into the window: no JSON decode,
no expression, no header; tumbling windows inline (the shape of ``PartitionWindows.fold``),
hopping ones through ``PartitionWindows.add``. The window state, the dead letters and the
counts are those of the record-by-record path (``repartitioning.fold_downstream``), bit for
bit (tests/unit/workers/test_worker_rekeying.py).

**Versions.** The first byte is the format. A message of format 1 (a JSON record and a
``streamherd.upstream`` header, what an earlier worker writes during a rolling upgrade) is
folded by ``fold_downstream``, as before; a progress marker (empty, with a
``streamherd.watermark`` header) too, unless its :data:`PLAN_HEADER` names a plan of another
layout (:func:`same_layout`): that one is skipped. A format-3 message of another layout is
never folded: each of its entries is
dead-lettered (reason ``decode``, an error naming both plans) under its source coordinates,
with its source record, so it can be replayed; a malformed one is dead-lettered whole.
Neither moves the clock, so when this plan's upstream re-keys the same source records (a
restore or a replay rewound it), they fold. Anything else (the reverted format 2, a foreign
producer) takes the format-1 path, where no ``streamherd.upstream`` header or no JSON object
makes it a decode failure: never a misread.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from streamherd.workers.config import EventTime, ProcessorConfig, Step
from streamherd.workers.fingerprint import normalize_expression
from streamherd.workers.limits import MAX_HOP_ENTRY_BYTES, LimitError
from streamherd.workers.processing import Failure, Item, LateRecordError
from streamherd.workers.repartitioning import (
    RepartitionError,
    UpstreamClock,
    UpstreamState,
    fold_downstream,
    superseded,
)
from streamherd.workers.values import (
    HELD_QUICK_CHARS,
    KEY_QUICK_CHARS,
    canonical_key,
    check_held_string,
    decode_value,
    encode_value,
    key_text,
    key_value,
    state_key,
    window_key,
)
from streamherd.workers.windowing import (
    ISO_MAX_MS,
    ISO_MIN_MS,
    REFUSED,
    PartitionWindows,
    WindowPlan,
)

__all__ = [
    "HOP_FORMAT",
    "MESSAGE_BYTES",
    "PLAN_HEADER",
    "RekeyedMessage",
    "Row",
    "decode_message",
    "encode_entry",
    "encode_message",
    "fold_hop",
    "hop_plan",
    "rekey",
    "same_layout",
]

#: Header of a progress marker naming the plan of the upstream that wrote it (a marker of
#: format 1 has none): a downstream of another layout skips it.
PLAN_HEADER: Final = "streamherd.plan"
#: The format this module writes: the first byte of its messages (format 1 is a JSON object).
HOP_FORMAT: Final = 3
_FORMAT: Final = bytes((HOP_FORMAT,))
_ENTRY_FIELDS: Final = 7
#: Bytes of entries in one message at most (a larger entry is a message of its own): well
#: under the producer's and the broker's default message.max.bytes (1 MB).
MESSAGE_BYTES: Final = 256 * 1024
#: Hex digits of each of a plan's two SHA-256 parts (layout, detail) kept in each message
#: (as the state fingerprint: 64 bits each).
PLAN_DIGITS: Final = 16

#: A repartition row for ``Sink.repartition``: (key text, value, timestamp ms, source
#: offset, headers).
Row = tuple[str, bytes, int, int, list[tuple[str, bytes]]]


def _base_scalar(value: Any) -> Any:
    """msgspec's hook for what it cannot encode: a subclass of a JSON scalar (a user
    function's numpy float, an ``IntEnum``, a ``str`` subclass) crosses as its base type,
    the same bits (the stored value: ``float.__float__`` and the others run no override of
    the subclass's); anything else is the record's error (dead-lettered upstream)."""
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"a {type(value).__name__} cannot be written to the repartition topic")


_encode = msgspec.msgpack.Encoder(enc_hook=_base_scalar).encode
_decode = msgspec.msgpack.Decoder().decode


def _step(step: Step) -> Any:
    """What one step contributes to the values of an entry (see :func:`hop_plan`)."""
    if step.filter is not None:
        return {"filter": step.filter}
    if step.map is not None:
        m = step.map
        # Pairs, not objects: the description is hashed with sorted keys, and the order of
        # a map's renames is the spec's.
        return {
            "map": {
                "select": m.select,
                "rename": [list(pair) for pair in m.rename.items()],
                "set": [list(pair) for pair in m.set.items()],
            }
        }
    w = step.window
    assert w is not None
    return {
        "window": {
            "keyBy": w.key_by,
            "eventTime": {"field": w.event_time.field, "format": w.event_time.format},
            # An aggregate's name is not in an entry; its position, function and expression
            # decide its value (the function: which values WindowPlan.check lets through).
            "aggregates": [
                [a.function, None if a.function == "count" else a.expression] for a in w.aggregates
            ],
        }
    }


def hop_plan(processor: ProcessorConfig, source_format: str) -> str:
    """The plan an entry is evaluated under, in two parts of :data:`PLAN_DIGITS` each.

    - The *layout*: what an entry's key, event time and values mean to the window: the
      window's key expression, its event time and its aggregates' functions and
      expressions, normalized as the state fingerprint normalizes them (spacing and
      ``60s``/``1m`` do not count). A downstream folds an entry of its own layout
      (:func:`same_layout`), whichever spec evaluated it, and dead-letters another's.
    - The *detail*: a hash of the exact text of the source format, every step before the
      window and the user function's name: what chose the records and computed the values.

    So an edit the state fingerprint calls compatible (a filter, a map step, the user
    function, spacing) keeps the layout: the entries an upstream of the old spec re-keyed
    before the roll fold as that spec evaluated them, as an unpartitioned pipeline folds the
    records it read before the roll (before this split, they were dead-lettered: the
    records were missing from the results). An edit of the key, the event time or an
    aggregate changes the state fingerprint too (reset or replay): the old entries in flight
    are dead-lettered with their source records, never misread. Not in either part: the
    window's size, slide and lateness, which the downstream applies itself, and aggregate
    names (an entry carries values by position). A user function is named, not hashed: new
    code under the same name is the same plan (the image is the user's to version)."""
    function = processor.function
    window = next((s.window for s in processor.steps if s.window is not None), None)
    layout = {
        "hop": HOP_FORMAT,
        "window": None
        if window is None
        else {
            "keyBy": normalize_expression(window.key_by),
            "eventTime": _event_time_layout(window.event_time),
            "aggregates": [
                [a.function, None if a.function == "count" else normalize_expression(a.expression)]
                for a in window.aggregates
            ],
        },
    }
    detail = {
        "hop": HOP_FORMAT,
        "format": source_format,
        "steps": [_step(s) for s in processor.steps],
        "function": None if function is None else [function.callable, function.mode],
    }
    return _digest(layout) + _digest(detail)


def _event_time_layout(event_time: EventTime) -> dict[str, str | None]:
    """The event time as the layout names it. Without a field the Kafka timestamp is read
    and the format means nothing: named as the default, as the state fingerprint ignores it,
    so an edit of that format alone (compatible) keeps the layout; before, it made every
    entry in flight another layout's, dead-lettered."""
    if event_time.field is None:
        return {"field": None, "format": "epochMillis"}
    return {"field": event_time.field, "format": event_time.format}


def _digest(description: dict[str, Any]) -> str:
    text = json.dumps(description, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()[:PLAN_DIGITS]


def same_layout(plan: str, plan_id: str) -> bool:
    """Whether entries written under `plan` mean to this downstream (of `plan_id`) what its
    own mean: the same layout (see :func:`hop_plan`). A plan of a worker before the layout
    (one part) was the hash of what is now the detail: it is this plan's when it is this
    plan's detail (the same spec, across the upgrade), else another layout."""
    if len(plan_id) != 2 * PLAN_DIGITS:
        return plan == plan_id
    if len(plan) == PLAN_DIGITS:
        return plan == plan_id[PLAN_DIGITS:]
    return len(plan) == 2 * PLAN_DIGITS and plan[:PLAN_DIGITS] == plan_id[:PLAN_DIGITS]


def encode_entry(  # noqa: PLR0917 - the entry's fields, in its order
    offset: int,
    max_before: int | None,
    key: Any,
    event_ms: int,
    values: list[Any],
    source_key: bytes | None,
    source_value: bytes | None,
    sub: int = 0,
) -> bytes:
    """One source record's entry (``key`` in state form); the exact form (the flag) when a
    key or value is an integer beyond 64 bits, a float msgpack would not keep, or a string
    with a lone surrogate (msgpack writes only valid UTF-8)."""
    json_key = key_value(key)
    try:
        if sub:
            return _encode(
                (offset, max_before, json_key, event_ms, values, source_key, source_value, 0,
                 sub)
            )  # fmt: skip
        return _encode((offset, max_before, json_key, event_ms, values, source_key, source_value))
    except (OverflowError, UnicodeEncodeError):
        pass
    exact = (offset, max_before, _exact(json_key), event_ms, _exact(values),
             source_key, source_value, 1)  # fmt: skip
    return _encode((*exact, sub) if sub else exact)


def _exact(value: Any) -> Any:
    """The checkpoints' exact form of a JSON value (:func:`values.encode_value`), with a
    string holding a lone surrogate (an expression's string literal, a user function's
    string) as its ``surrogatepass`` UTF-8 bytes, tagged: the direct routes fold and keep
    such strings (decision 0168), so the hop carries them too (it refused the record)."""
    kind = type(value)
    if kind is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            return {"surrogates": value.encode("utf-8", "surrogatepass").hex()}
        return value
    if kind is list or kind is tuple:
        return [_exact(item) for item in value]
    return encode_value(value)


def _array_head(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_message(plan: str, topic: str, partition: int, entries: list[bytes]) -> bytes:
    """The message of a source partition's entries (from :func:`encode_entry`)."""
    return b"".join(
        (
            _FORMAT,
            _array_head(3 + len(entries)),
            _encode(plan),
            _encode(topic),
            _encode(partition),
            *entries,
        )
    )


def decode_message(value: bytes) -> tuple[str, str, int, list[list[Any]]]:
    """The plan, source topic, partition and entries (keys in state form) of a format-3
    message; RepartitionError for a malformed one."""
    try:
        if value[:1] != _FORMAT:
            raise ValueError(f"format {value[0] if value else None}, not {HOP_FORMAT}")
        fields: Any = _decode(value[1:])
        if type(fields) is not list or len(fields) < 4:
            raise ValueError("not a list of a plan, a topic, a partition and entries")
        plan, topic, partition = fields[0], fields[1], fields[2]
        if type(plan) is not str or type(topic) is not str or type(partition) is not int:
            raise ValueError("a field of the wrong type")
        entries = fields[3:]
        for entry in entries:
            if type(entry) is not list:
                raise ValueError("an entry that is not a list")
            n = len(entry)
            sub = 0
            if n == _ENTRY_FIELDS + 2:  # a sub-index: after the exact flag, 0 or 1
                sub = entry.pop()
                if type(sub) is not int or sub < 0 or entry[_ENTRY_FIELDS] not in {0, 1}:
                    raise ValueError("a malformed sub-index or exact flag")
                if entry[_ENTRY_FIELDS] == 0:
                    entry.pop()
            if len(entry) != _ENTRY_FIELDS:
                if len(entry) != _ENTRY_FIELDS + 1 or entry[_ENTRY_FIELDS] != 1:
                    raise ValueError(f"an entry of {n} fields")
                entry.pop()
                entry[2] = decode_value(entry[2])
                entry[4] = decode_value(entry[4])
            offset, top, key, event_ms, values, source_key, source_value = entry
            entry.append(sub)  # entries decoded: the seven fields and the sub-index
            if (
                type(offset) is not int
                or (top is not None and type(top) is not int)
                or type(event_ms) is not int
                or type(values) is not list
                or (source_key is not None and type(source_key) is not bytes)
                or (source_value is not None and type(source_value) is not bytes)
            ):
                raise ValueError("a field of the wrong type")
            for v in values:  # what WindowPlan.check lets through, and None
                kind = type(v)
                if kind is not int and kind is not float and kind is not str and v is not None:
                    raise ValueError(f"an aggregate value of type {kind.__name__}")
            if type(key) is not str:
                entry[2] = canonical_key(key)
    # ArithmeticError: values.LimitError, a key nested deeper than a key may be.
    # struct.error: an exact float's tag of the wrong length; RecursionError: an exact
    # entry's value nested deeper than the stack (decode_value walks it before the key's
    # depth is judged). Both are another producer's bytes, dead-lettered like the rest.
    except (
        msgspec.DecodeError,
        ValueError,
        TypeError,
        IndexError,
        ArithmeticError,
        struct.error,
        RecursionError,
    ) as error:
        raise RepartitionError(
            f"malformed repartition message (format {HOP_FORMAT}): {error}"
        ) from None
    return plan, topic, partition, entries


def rekey(
    plan: WindowPlan,
    items: list[Item],
    *,
    plan_id: str,
    topic: str,
    partition: int,
    max_event_ms: int | None,
    failures: list[Failure],
    partitions: int,
    headers: Sequence[tuple[str, bytes]] = (),
) -> tuple[list[Row], int | None, int]:
    """The repartition messages of one source partition's surviving records (in offset
    order; one per repartition partition of ``partitions`` and :data:`MESSAGE_BYTES`), its
    new maximum event time, and how many records they carry. A record whose key, event time
    or values fail, or that cannot be carried, is appended to ``failures`` (``expression``).
    Each message carries ``headers`` (the writer's spec generation, when it has one)."""
    key_of, time_of, values_of = plan.key, plan.event_time, plan.fold_values
    kafka_time, ahead = plan.kafka_time, plan.ahead_ms
    top = max_event_ms
    rows: list[Row] = []
    carried = 0
    # repartition partition -> [first key text, entries, bytes, last offset, timestamp]
    open_: dict[int, list[Any]] = {}
    # key -> (repartition partition, key text, its UTF-8 bytes), for this batch (keys repeat:
    # CRC-32 once)
    targets: dict[Any, tuple[int, str, int]] = {}
    crc32, encode = zlib.crc32, _encode
    last_source: Any = None
    sub = 0
    for record, m in items:
        offset = m.offset()
        assert offset is not None
        # A user function's records of one source record are consecutive, in its order:
        # each is named by its place among them (failed ones too: the count is the same
        # whatever fails downstream of the function).
        if m is last_source:
            sub += 1
        else:
            last_source, sub = m, 0
        kind, ms = m.timestamp()
        stamp = ms if kind else None  # processing.kafka_timestamp, inline
        try:
            key = key_of(record)
            if type(key) is not str or len(key) > KEY_QUICK_CHARS:
                key = window_key(key)  # NaN, objects, too long: the record's error
            event_ms = time_of(record, stamp if kafka_time else None)
        except BaseException as error:  # noqa: BLE001 - the record's fault: dead-letter it
            failures.append(Failure(m, "expression", error))  # its traceback cleared there
            continue
        try:
            values = values_of(record)
        except BaseException as error:  # noqa: BLE001 - refused by its window (see the docstring)
            failures.append(Failure(m, "expression", error))
            continue  # before moving top, as an unpartitioned window refuses it
        if (top is None and ahead != math.inf) or (top is not None and event_ms - top > ahead):
            # As PartitionWindows.fold judges it.
            refused = plan.too_far_ahead(event_ms, top, stamp)
            if refused is not None:
                failures.append(Failure(m, "expression", refused))
                continue
        before = top
        if top is None or event_ms > top:
            top = event_ms
        try:
            if sub:
                raise OverflowError  # encode_entry writes the sub-index
            entry = encode(  # encode_entry's common case, inline
                (offset, before, key if type(key) is not tuple else key_value(key), event_ms,
                 values, m.key(), m.value())
            )  # fmt: skip
        except (OverflowError, UnicodeEncodeError, TypeError):
            try:
                entry = encode_entry(offset, before, key, event_ms, values, m.key(), m.value(), sub)
            except (ValueError, TypeError) as error:
                failures.append(Failure(m, "expression", error))
                top = before  # nothing crossed: as if the record had not come
                continue
        found = targets.get(key)
        if found is None:
            text = key_text(key)
            raw = text.encode("utf-8", errors="surrogatepass")
            # The partition Sink.repartition picks for this key text (CRC-32, stable), and
            # the key text's size in the message.
            found = targets[key] = (crc32(raw) % partitions, text, len(raw))
        if len(entry) + found[2] > MAX_HOP_ENTRY_BYTES:
            # No Kafka message would carry it with its key: refused alone, before anything
            # is produced.
            failures.append(
                Failure(
                    m,
                    "limit",
                    LimitError(
                        f"the record's repartition entry and key are {len(entry) + found[2]} "
                        f"bytes (at most {MAX_HOP_ENTRY_BYTES}: one Kafka message): too large "
                        "to cross the repartition topic"
                    ),
                )
            )
            top = before
            continue
        carried += 1
        target = found[0]
        when = stamp if stamp is not None and stamp > 0 else 0  # 0: the producer's clock
        group = open_.get(target)
        if group is not None and group[2] + len(entry) > MESSAGE_BYTES:
            rows.append(_row(plan_id, topic, partition, group, headers))
            group = None
        if group is None:
            open_[target] = [found[1], [entry], len(entry), offset, when]
            continue
        group[1].append(entry)
        group[2] += len(entry)
        group[3] = offset
        group[4] = max(group[4], when)
    rows.extend(_row(plan_id, topic, partition, group, headers) for group in open_.values())
    return rows, top, carried


def _row(
    plan_id: str,
    topic: str,
    partition: int,
    group: list[Any],
    headers: Sequence[tuple[str, bytes]],
) -> Row:
    text, entries, _size, offset, when = group
    return (text, encode_message(plan_id, topic, partition, entries), when, offset, [*headers])


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


def _refused(plan: WindowPlan, entry: list[Any]) -> RepartitionError:
    """Why an entry of this plan cannot be folded (only a producer that is not a streamherd
    upstream of the plan writes one)."""
    values, event_ms = entry[4], entry[3]
    if len(values) != len(plan.aggregates):
        why = f"{len(values)} values for {len(plan.aggregates)} aggregates"
    elif any(type(values[i]) is str for i, _ in plan.added):
        why = "a string for a sum or an average"
    else:
        why = f"event time {event_ms}, beyond the years 1 to 9999 for this window"
    return RepartitionError(f"a repartition entry with {why}")


def _over_limits(plan: WindowPlan, key: Any, values: list[Any]) -> LimitError | None:
    """Why an entry's window could not be written to a checkpoint record (its key, a
    min/max string: limits.py), or None. The upstream refuses such a record before the hop;
    an entry written by an upstream older than the limits, or by another producer, is
    judged again here, else its window would fail every checkpoint after it."""
    try:
        if type(key) is not str or len(key) > KEY_QUICK_CHARS:
            state_key(key)
        for i, _ in plan.ordered:
            value = values[i]
            if type(value) is str and len(value) > HELD_QUICK_CHARS:
                check_held_string(plan.aggregates[i].name, value)
    except LimitError as error:
        return error
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


def fold_hop(
    windows: PartitionWindows, clock: UpstreamClock, messages: Sequence[Any], plan_id: str
) -> tuple[list[Failure], int, int, int]:
    """Fold one batch of a repartition partition, messages of either format in order:
    markers into the clock, replayed entries dropped, each entry's values folded with its
    source partition's lateness. Returns what ``fold_downstream`` returns: the failures (in
    order), how many were late, how many were duplicates, and how many records were taken
    (folded, late, refused or of another layout: each once)."""
    failures: list[Failure] = []
    late = duplicates = taken = 0
    since = clock.since  # a replay emptied the partition: what came before it is skipped
    run_start = 0  # the first message of a run of other messages (format 1, markers)
    for i, m in enumerate(messages):
        value = m.value()
        if not value:  # a progress marker: another layout's says nothing about this one's
            if not any(
                n == PLAN_HEADER and not same_layout(raw.decode(errors="replace"), plan_id)
                for n, raw in m.headers() or ()
                if raw is not None
            ):
                continue
        elif value[0] != HOP_FORMAT:
            continue
        if run_start < i:
            counts = fold_downstream(windows, clock, messages[run_start:i])
            failures += counts[0]
            late, duplicates, taken = late + counts[1], duplicates + counts[2], taken + counts[3]
        run_start = i + 1
        if not value:
            continue  # another layout's marker: skipped
        if since is not None and superseded(clock, m.headers()):
            duplicates += _entries_in(value)
            continue
        try:
            plan, topic, partition, entries = decode_message(value)
        except RepartitionError as error:
            failures.append(Failure(m, "decode", error))
            continue
        if not same_layout(plan, plan_id):
            d, t = _foreign(
                clock,
                m,
                plan=plan,
                plan_id=plan_id,
                topic=topic,
                partition=partition,
                entries=entries,
                failures=failures,
            )
        else:
            d, t, n_late = _fold_entries(
                windows,
                clock,
                m,
                topic=topic,
                partition=partition,
                entries=entries,
                failures=failures,
            )
            late += n_late
        duplicates += d
        taken += t
    if run_start < len(messages):
        counts = fold_downstream(windows, clock, messages[run_start:])
        failures += counts[0]
        late, duplicates, taken = late + counts[1], duplicates + counts[2], taken + counts[3]
    return failures, late, duplicates, taken


def _entries_in(value: bytes) -> int:
    """How many entries a format-3 message holds (1 for a malformed one: it stood for at
    least one record)."""
    try:
        return len(decode_message(value)[3])
    except RepartitionError:
        return 1


def _state(clock: UpstreamClock, topic: str, partition: int) -> UpstreamState:
    upstreams = clock.upstreams
    st = upstreams.get((topic, partition))
    if st is None:
        st = upstreams[(topic, partition)] = UpstreamState()
    return st


def _foreign(
    clock: UpstreamClock,
    m: Any,
    *,
    plan: str,
    plan_id: str,
    topic: str,
    partition: int,
    entries: list[list[Any]],
    failures: list[Failure],
) -> tuple[int, int]:
    """Dead-letter the entries of a message of another layout: their values were evaluated
    under another spec, so they are not this window's. Returns (duplicates, taken)."""
    st = _state(clock, topic, partition)
    duplicates = taken = 0
    error = RepartitionError(
        f"a repartition record written under plan {plan}; this worker's plan is {plan_id} "
        "(its spec evaluates keys, event times or values differently): not folded"
    )
    for entry in entries:
        if st.behind(entry[0], entry[7]):  # a record this window has (its own plan's entries)
            duplicates += 1
            continue
        # The clock does not move: if this plan's upstream re-keys the same source offsets
        # (a restore or replay rewound it), those entries fold.
        taken += 1
        failures.append(Failure(RekeyedMessage(m, topic, partition, entry), "decode", error))
    return duplicates, taken


def _fold_entries(
    windows: PartitionWindows,
    clock: UpstreamClock,
    m: Any,
    *,
    topic: str,
    partition: int,
    entries: list[list[Any]],
    failures: list[Failure],
) -> tuple[int, int, int]:
    """Fold one message's entries (the rules of ``fold_downstream``, the tumbling fold of
    ``PartitionWindows.fold`` inline). Returns (duplicates, taken, late)."""
    plan = windows.plan
    update = plan.update
    size, lateness = plan.size_ms, plan.lateness_ms
    tumbling = size == plan.slide_ms
    get, open_window, mark = windows.windows.get, windows.open_window, windows.changed.add
    floor = clock.floor  # only close_windows() raises it, between batches
    n_values = len(plan.aggregates)
    # A min/max through update() (prepare, then apply); the rest through the compiled
    # fold, the generic fold's own.
    ordered, fold = plan.ordered, plan.fold_update
    numeric = tuple(i for i, _ in plan.added)
    # The event times whose windows this plan can write (windowing.time_bounds): the writer
    # checked its own, and a window size is not part of the plan.
    low, high = ISO_MIN_MS + size, ISO_MAX_MS - size
    st = _state(clock, topic, partition)
    duplicates = taken = late = 0
    max_ms = windows.max_event_ms  # what fold_downstream leaves there (see below)
    for entry in entries:
        offset, before, key, event_ms, values = entry[0], entry[1], entry[2], entry[3], entry[4]
        sub = entry[7]
        if offset < st.offset or (offset == st.offset and sub <= st.sub):  # st.behind, inline
            duplicates += 1
            continue
        st.offset = offset
        st.sub = sub
        st.idle = False
        if before is not None and (st.max_event_ms is None or before > st.max_event_ms):
            st.max_event_ms = before
        taken += 1
        refused = len(values) != n_values or not low <= event_ms <= high
        if not refused:
            for i in numeric:  # a string for a sum or an average
                if type(values[i]) is str:
                    refused = True
        if refused:
            failures.append(
                Failure(RekeyedMessage(m, topic, partition, entry), "decode", _refused(plan, entry))
            )
            continue
        if ordered or type(key) is not str or len(key) > KEY_QUICK_CHARS:
            over = _over_limits(plan, key, values)
            if over is not None:  # what the upstream refuses since limits.py, judged again
                failures.append(Failure(RekeyedMessage(m, topic, partition, entry), "limit", over))
                continue
        # The level this record folds against: its source partition's maximum before it, or
        # the level of windows already closed, whichever is higher (level_before).
        level = before if floor is None or (before is not None and before > floor) else floor
        if not tumbling:
            windows.max_event_ms = level
            try:
                if not windows.add(key, event_ms, values):
                    late += 1
                    failures.append(_late(RekeyedMessage(m, topic, partition, entry), event_ms))
            except REFUSED as error:  # add() changed nothing
                failures.append(
                    Failure(
                        RekeyedMessage(m, topic, partition, entry),
                        "expression",
                        error.with_traceback(None),
                    )
                )
            max_ms = windows.max_event_ms
            continue
        top = level if level is not None and event_ms <= level else event_ms
        start = event_ms - event_ms % size
        max_ms = level
        if start + size <= top - lateness:
            late += 1
            failures.append(_late(RekeyedMessage(m, topic, partition, entry), event_ms))
            continue
        acc = get((key, start))
        if acc is None:  # a new accumulator takes any value: nothing to compare with
            acc = open_window(key, start)
        if ordered:
            try:
                update(acc, values)
            except REFUSED as error:  # all or nothing: the window is as it was
                failures.append(
                    Failure(
                        RekeyedMessage(m, topic, partition, entry),
                        "expression",
                        error.with_traceback(None),
                    )
                )
                continue
        else:  # counts, sums, averages (numbers, checked above): cannot fail
            fold(acc, values)
        mark((key, start))
        max_ms = top
    # fold_downstream sets the window's maximum to each record's level and folds it: what it
    # leaves is the last record's (moved by it when it folded). close_windows() and the
    # engine replace it before anything reads it; kept equal so the states compare equal.
    windows.max_event_ms = max_ms
    return duplicates, taken, late
