"""Keyed event-time window aggregation: the engine's only stateful operator.

``WindowPlan`` is compiled once from a ``WindowSpec`` (workers/config.py);
``PartitionWindows`` holds the open windows of ONE source partition and is what the engine
checkpoints together with that partition's next offset (``streamherd.workers.checkpointing``).
It also tracks which windows changed since the last successful checkpoint (opened, updated,
or closed and emitted), so a checkpoint writes only those (:meth:`PartitionWindows.changes`,
decision 0095): its cost follows the changes, not the number of open windows.

Semantics (docs/engine.md has the long form):
- windows are aligned to the epoch: tumbling ``[k*size, (k+1)*size)``, hopping windows of
  ``size`` starting every ``slide``; a record belongs to every window containing its time;
- the watermark of a partition is the maximum event time seen in it minus the allowed
  lateness; it is advanced record by record, so which records are late depends only on the
  order of the partition, never on how it was cut into batches (replays are identical);
- a record is late when every window it belongs to has already closed (end <= watermark);
- windows close, and are emitted once, when the watermark reaches their end;
- only windows that received a record exist, so empty windows are never emitted;
- a record is refused by its values alone (:meth:`WindowPlan.values`), never by what a window
  holds: a value an aggregate cannot take (a string for sum, a boolean for min) raises
  TypeError, and an integer beyond the float range for an avg (whose result is a float)
  raises OverflowError; the caller dead-letters the record, and nothing changed, not even
  the watermark. Folding values that passed cannot fail. So whether a record is refused does
  not depend on the order of arrival, and the repartition hop's upstream side can decide it
  before the hop (docs/engine.md);
- a window's result does not depend on the order of its records (a repartitioned window
  receives them interleaved differently on every run, decision 0130): ``sum`` and ``avg``
  keep their totals exactly (``streamherd.workers.summing``) and round once, and ``min`` and
  ``max`` follow one total order over every value they take (:func:`settle`: numbers below
  strings, equal values by a fixed order, NaN propagating: always the same NaN).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from streamherd.workers.config import WindowSpec, duration_ms, parse_duration
from streamherd.workers.expressions import compile_expression
from streamherd.workers.limits import check_window_count
from streamherd.workers.summing import (
    CANONICAL_NAN,
    add,
    from_float,
    is_nan,
    is_total,
    mean,
    total,
)
from streamherd.workers.values import (
    KEY_QUICK_CHARS,
    canonical_key,
    check_held_string,
    decode_value,
    encode_value,
    key_text,
    key_value,
    output_key_text,
    restored_key,
    window_key,
)

Record = Mapping[str, Any]
ValueFn = Callable[[Record], Any]

# 3: a sum's and an avg's total in the exact form of workers/summing.py (a float total as
# ``[n, k, flags]``), an avg's empty total as null. 2 (read too): values written by
# values.encode_value (exact floats, integers, bytes), keys as their JSON value, float totals
# as running floats. 1 (read too): plain JSON, whose non-finite floats had become null.
STATE_VERSION: Final = 3
READ_VERSIONS: Final = (1, 2, STATE_VERSION)

# The largest float as an int: an avg takes integers up to it, so its mean (a float) exists.
FLOAT_MAX: Final = int(sys.float_info.max)
FLOAT_MIN: Final = -FLOAT_MAX

# What reading a record's aggregate values can raise (WindowPlan.values: the record's fault).
REFUSED: Final = (TypeError, OverflowError)


def _rank(value: Any) -> int:
    """The order of equal values a min or max settles by: ``-0.0``, other floats, ints."""
    if type(value) is float:
        return 0 if value == 0.0 and math.copysign(1.0, value) < 0.0 else 1
    return 2 if type(value) is int else 1  # a str equals only itself


def settle(prev: Any, value: Any, is_min: bool) -> Any:
    """What a min (``is_min``) or max holding ``prev`` holds after ``value``, when their own
    comparison does not say which is below (min) or above (max): they are equal, one is NaN,
    or one is a number and the other a string (Python cannot compare those).

    This completes the one total order of min/max values (docs/engine.md, "Windows"):
    numbers below strings; numbers by value, equal ones ``-0.0`` < ``0.0`` (and every other
    float) < the int of the same value; strings by code point. A min keeps the lowest
    (``min(0, -0.0) = -0.0``, ``min(1, 1.0) = 1.0``, ``min(7, 'a') = 7``), a max the
    highest (``max(0.0, -0.0) = 0.0``, ``max(1, 1.0) = 1``, ``max(7, 'a') = 'a'``),
    whichever came first. NaN propagates (IEEE 754-2019 ``minimum``/``maximum``), against
    strings too: the result is :data:`~streamherd.workers.summing.CANONICAL_NAN`."""
    if is_nan(prev):
        return prev
    if is_nan(value):
        return CANONICAL_NAN
    if (type(value) is str) is not (type(prev) is str):  # a number and a string
        number, text = (prev, value) if type(value) is str else (value, prev)
        return number if is_min else text
    ranked, held = _rank(value), _rank(prev)
    return value if (ranked < held if is_min else ranked > held) else prev


def ordered_value(value: Any) -> bool:
    """Whether ``value`` is one of the values a min/max holds (the total order of
    :func:`settle`): an int (not a bool), a float (NaN included) or a string."""
    kind = type(value)
    return kind is int or kind is float or kind is str


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with millisecond precision: 2026-01-01T00:00:10.000Z.

    The year always has four digits (`0999-...`): strftime's `%Y` does not pad on glibc,
    and `999-12-31` is not ISO 8601, sorts after `1970-...` as text, and PostgreSQL reads
    `1-01-01` as 2001. Integer arithmetic, no float seconds."""
    m = _EPOCH + timedelta(milliseconds=epoch_ms)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond // 1000:03d}Z"
    )


def output_key(key: Any, window_start_ms: int) -> str:
    """Deterministic output key ``<key>|<window_start>`` of a key in state form
    (``values.canonical_key``): a replayed window overwrites."""
    return f"{output_key_text(key)}|{iso_ms(window_start_ms)}"


class EventTimeError(ValueError):
    """A record whose event time is missing or unreadable."""


class EventTimeAheadError(EventTimeError):
    """A record whose event time is further ahead than ``eventTime.maxAhead`` of both its
    partition's largest event time and its own Kafka timestamp
    (:meth:`WindowPlan.too_far_ahead`)."""


class StateVersionError(ValueError):
    """A window state in a version this worker cannot read: written by a newer streamherd
    (or not a window state at all). The engine holds the partition rather than fail."""


# Window starts and ends are written as ISO 8601 (iso_ms), which has the years 1 to 9999.
ISO_MIN_MS: Final = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
ISO_MAX_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def time_bounds(spec: WindowSpec) -> tuple[int, int]:
    """The event times (epoch ms) whose windows start and end within :data:`ISO_MIN_MS`
    and :data:`ISO_MAX_MS`: a record beyond them is refused, else closing its window
    would fail (and fail again after every restart from the checkpoint)."""
    size = round(parse_duration(spec.size) * 1000)
    return ISO_MIN_MS + size, ISO_MAX_MS - size


_ONE_MS: Final = timedelta(milliseconds=1)


def floor_ms(value: float) -> int:
    """The whole millisecond a time of `value` ms falls in: its floor, except that a value
    within one unit in the last place of a whole number is that number (the error of the
    float product ``seconds * 1000``, at most half a unit for the seconds and half for the
    product: 1.001 s is 1001 ms, not 1000). A microsecond stays told apart up to 2**41 ms
    (the year 2039); beyond, a float's seconds hold less. Raises OverflowError (infinities)
    or ValueError (NaN)."""
    whole = round(value)
    if abs(value - whole) <= math.ulp(value):
        return whole
    return math.floor(value)


def time_converter(
    field: str, fmt: str, bounds: tuple[int, int] = (ISO_MIN_MS, ISO_MAX_MS)
) -> Callable[[Any], int]:
    """The event time in epoch ms of a field's value in format ``fmt``, within ``bounds``
    (:func:`time_bounds`); raises EventTimeError."""
    low, high = bounds

    def convert(value: Any) -> int:
        if value is None:
            raise EventTimeError(f"event time field {field!r} is missing")
        try:
            # An event time is the millisecond it falls in (floored, as a window is
            # [start, end)): 59.9996 s is in the minute that ends at 60 s, in every format.
            if fmt == "epochMillis":
                if isinstance(value, bool):
                    raise TypeError("bool")
                ms = floor_ms(value) if isinstance(value, float) else int(value)
            elif fmt == "epochSeconds":
                if isinstance(value, bool):
                    raise TypeError("bool")
                ms = floor_ms(float(value) * 1000)
            else:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                ms = (moment - _EPOCH) // _ONE_MS  # exact: microseconds, no float
        except (TypeError, ValueError, OverflowError) as error:  # Overflow: inf, 1e400
            raise EventTimeError(
                f"event time field {field!r}={value!r} is not {fmt}: {error}"
            ) from None
        if not low <= ms <= high:
            raise EventTimeError(
                f"event time field {field!r}={value!r} is beyond the years 1 to 9999 "
                "(window start and end are written as ISO 8601 times)"
            )
        return ms

    return convert


def _time_reader(spec: WindowSpec) -> Callable[[Record, int | None], int]:
    field = spec.event_time.field
    low, high = bounds = time_bounds(spec)
    if field is None:

        def kafka_time(record: Record, timestamp_ms: int | None) -> int:
            if timestamp_ms is None or timestamp_ms < 0:
                raise EventTimeError("record has no Kafka timestamp")
            if timestamp_ms > high:  # any int64 can be set by a producer
                raise EventTimeError(
                    f"Kafka timestamp {timestamp_ms} is beyond the year 9999 "
                    "(window start and end are written as ISO 8601 times)"
                )
            return timestamp_ms

        return kafka_time
    getter = compile_expression(field).function
    convert = time_converter(field, spec.event_time.format, bounds)

    if spec.event_time.format == "epochMillis":

        def millis_time(record: Record, timestamp_ms: int | None) -> int:
            # Hot path (profiled): an int in range needs no conversion; the rest is checked.
            value = getter(record)
            return value if type(value) is int and low <= value <= high else convert(value)

        return millis_time

    def field_time(record: Record, timestamp_ms: int | None) -> int:
        return convert(getter(record))

    return field_time


def _ahead_ms(spec: WindowSpec) -> float:
    """:attr:`WindowPlan.ahead_ms` of a window spec."""
    text = spec.event_time.max_ahead
    ahead = 0 if text is None else round(parse_duration(text) * 1000)
    return math.inf if spec.event_time.field is None or ahead <= 0 else ahead


def _span(ms: float) -> str:
    """A duration in ms as a readable text: ``168h``, ``90m``, ``1500ms``."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{int(ms // size)}{unit}"
    return f"{int(ms)}ms"


#: The number types whose subclasses :meth:`AggregatePlan.check` reads as their base value.
_NUMBERS: Final = (int, float)


@dataclass(frozen=True)
class AggregatePlan:
    name: str
    function: str
    value: ValueFn | None

    def check(self, value: Any) -> Any:
        """``value`` if this aggregate can take it.

        Callers pass floats, None and ints through, except an avg's ints beyond the float
        range, which raise OverflowError here: the mean is a float, it would not exist. A
        number of a subclass of int or float is returned as its base value.
        """
        # min/max also take strings (settle's total order); sum/avg need numbers. Anything
        # else is the record's error (dead-lettered), whatever the window holds. The exact
        # types first: a min/max's strings come here on every record (the hot path).
        kind = type(value)
        if kind is str:
            if self.function in ("min", "max"):
                return check_held_string(self.name, value)
        elif kind is int:
            if self.function == "avg" and not FLOAT_MIN <= value <= FLOAT_MAX:
                raise OverflowError(
                    f"aggregate {self.name!r} (avg) takes numbers within the float range, "
                    f"got an integer of {value.bit_length()} bits"
                )
            return value
        elif kind is float:
            return value
        elif kind is not bool and isinstance(value, _NUMBERS):
            # A subclass (a user function's IntEnum, numpy's float64): its base value, as
            # the repartition hop carries it (msgpack has no subclasses), so that every
            # route folds, orders and checkpoints the same number (decision 0183). The
            # stored value itself: int.__int__ and float.__float__ run no override.
            return self.check(
                int.__int__(value) if isinstance(value, int) else float.__float__(value)
            )
        wanted = "a number or a string" if self.function in ("min", "max") else "a number"
        raise TypeError(
            f"aggregate {self.name!r} ({self.function}) needs {wanted}, got {kind.__name__}"
        )


@dataclass(frozen=True)
class WindowPlan:
    """A compiled window step."""

    size_ms: int
    slide_ms: int
    lateness_ms: int
    key: ValueFn
    event_time: Callable[[Record, int | None], int]
    aggregates: tuple[AggregatePlan, ...]
    kafka_time: bool = False  # event time is the Kafka timestamp, not a field
    # An epochMillis event-time field: its reader and the bounds an int needs no conversion
    # within (fold() reads it inline: the hot path); None for other event times.
    millis: tuple[ValueFn, int, int] | None = field(default=None, repr=False, compare=False)
    # eventTime.maxAhead in ms; infinity when off (unset, 0s, or no event-time field):
    # ``event_ms - max_ms > ahead_ms`` is then never true, so the folds test it unguarded.
    ahead_ms: float = math.inf

    # (index, is_min) of the min/max aggregates with a value: their comparisons can fail
    # (types without an order). Derived from ``aggregates``, like the two below.
    ordered: tuple[tuple[int, bool], ...] = field(init=False, repr=False, compare=False)
    # (index, is_avg) of the sum/avg aggregates with a value (exact totals: cannot fail).
    added: tuple[tuple[int, bool], ...] = field(init=False, repr=False, compare=False)
    counted: tuple[int, ...] = field(init=False, repr=False, compare=False)
    # (index, aggregate, its value expression) of the aggregates with one.
    valued: tuple[tuple[int, AggregatePlan, ValueFn], ...] = field(
        init=False, repr=False, compare=False
    )
    # values() and update() compiled for these aggregates, the loops unrolled, from the
    # source the fused batch functions are built from (the fold source below): what the
    # generic folds run per record. The methods stay the readable reference the tests hold
    # them to.
    fold_values: Callable[[Record], list[Any]] = field(init=False, repr=False, compare=False)
    fold_update: Callable[[list[Any], list[Any]], None] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        aggregates = list(enumerate(self.aggregates))
        ordered = tuple(
            (i, agg.function == "min")
            for i, agg in aggregates
            if agg.function in ("min", "max") and agg.value is not None
        )
        added = tuple(
            (i, agg.function == "avg")
            for i, agg in aggregates
            if agg.function in ("sum", "avg") and agg.value is not None
        )
        # frozen: set once, here
        object.__setattr__(self, "ordered", ordered)
        object.__setattr__(self, "added", added)
        object.__setattr__(
            self, "counted", tuple(i for i, a in aggregates if a.function == "count")
        )
        object.__setattr__(
            self, "valued", tuple((i, a, a.value) for i, a in aggregates if a.value is not None)
        )
        values, update = _compiled_fold(self.aggregates)
        object.__setattr__(self, "fold_values", values)
        object.__setattr__(self, "fold_update", update)

    @classmethod
    def compile(cls, spec: WindowSpec) -> WindowPlan:
        size = duration_ms(spec.size)
        slide = duration_ms(spec.slide) if spec.type == "hopping" and spec.slide else size
        check_window_count(size, slide)
        return cls(
            size_ms=size,
            slide_ms=slide,
            lateness_ms=round(parse_duration(spec.allowed_lateness) * 1000),
            key=compile_expression(spec.key_by).function,
            event_time=_time_reader(spec),
            aggregates=tuple(
                AggregatePlan(
                    a.name,
                    a.function,
                    compile_expression(a.expression).function
                    if a.function != "count" and a.expression
                    else None,
                )
                for a in spec.aggregates
            ),
            kafka_time=spec.event_time.field is None,
            ahead_ms=_ahead_ms(spec),
            millis=(compile_expression(spec.event_time.field).function, *time_bounds(spec))
            if spec.event_time.field is not None and spec.event_time.format == "epochMillis"
            else None,
        )

    def too_far_ahead(
        self, event_ms: int, max_ms: float | None, kafka_ms: int | None
    ) -> EventTimeAheadError | None:
        """Why a record with event time ``event_ms`` is not folded into a partition whose
        largest event time is ``max_ms`` (None, or -infinity: no record yet), the record's
        Kafka timestamp being ``kafka_ms``: it is more than ``eventTime.maxAhead`` ahead of
        both (of its Kafka timestamp alone when the partition has no event time yet: it
        would be the one every later record is judged by). Else None.

        Folded, such a record would move the watermark to its time, close every open
        window of the partition and make every later record late: one wrong clock, and the
        partition's results are gone until real time catches up, if it ever does. Both
        bounds are needed: a real jump in event time (the producers stopped for a week) is
        not ahead of its own Kafka timestamps. Both are in the log or the checkpoint, so
        a replay judges alike (an idle close, which raises the maximum by the wall clock,
        can only make a record foldable that was not). A refused record leaves the maximum
        where it was: records set ahead of their production on purpose by more than
        ``maxAhead`` are refused after a pause of more than it, all of them, which is why
        the check is opt-in (decision 0182). The folds call this only when the partition has
        no event time yet or ``event_ms - max_ms > ahead_ms``."""
        if kafka_ms is None or kafka_ms <= 0:
            return None  # no timestamp (0: none, as the repartition writes)
        limit = self.ahead_ms
        if event_ms - kafka_ms <= limit:
            return None
        if max_ms is None or max_ms == -math.inf:
            than = "its Kafka timestamp, and it would be its partition's first event time"
        elif event_ms - max_ms > limit:
            than = (
                f"both its partition's latest event time {iso_ms(int(max_ms))} and its "
                "Kafka timestamp"
            )
        else:
            return None
        return EventTimeAheadError(
            f"event time {iso_ms(event_ms)} is more than eventTime.maxAhead "
            f"({_span(limit)}) ahead of {than} {iso_ms(kafka_ms)}: a clock gone wrong? Not "
            "folded, so that it does not close every open window of the partition (raise or "
            "remove eventTime.maxAhead if such times are meant)"
        )

    def window_starts(self, event_ms: int) -> range:
        """Starts of every window containing ``event_ms``, oldest first."""
        last = event_ms - event_ms % self.slide_ms
        first = last - self.size_ms + self.slide_ms
        return range(first, last + 1, self.slide_ms)

    def new_accumulator(self) -> list[Any]:
        acc: list[Any] = []
        for agg in self.aggregates:
            if agg.function == "count":
                acc.append(0)
            elif agg.function == "avg":
                acc.append([None, 0])  # [total (summing.add), count]
            else:
                acc.append(None)
        return acc

    def values(self, record: Record) -> list[Any]:
        """The aggregated values of one record (evaluated once, shared by hopping windows)."""
        out: list[Any] = [None] * len(self.aggregates)  # a count's, or no expression: None
        for i, agg, value_of in self.valued:
            value = value_of(record)
            kind = type(value)
            # int/float first: the hot path (profiled); the rest is checked, and so are an
            # avg's integers beyond the float range (see check()).
            if (kind is not int and kind is not float and value is not None) or (
                kind is int and (value > FLOAT_MAX or value < FLOAT_MIN)
            ):
                value = agg.check(value)
            out[i] = value
        return out

    def prepare(self, acc: list[Any], values: list[Any]) -> list[tuple[int, Any]]:
        """The min/max changes of one record to a window, ``(aggregate, new value)``; changes
        nothing. A min/max appears when its value replaces the window's in the total order
        of :func:`settle` (which decides equal values, NaN and a number against a string);
        counts, sums and averages are not listed. Never raises: whether a record is refused
        is decided by its values alone (:meth:`values`), never by what a window holds, so it
        does not depend on the order of arrival.
        """
        changes: list[tuple[int, Any]] = []
        for i, is_min in self.ordered:
            value = values[i]
            if value is None:
                continue
            prev = acc[i]
            if prev is None:
                changes.append((i, CANONICAL_NAN if is_nan(value) else value))
                continue
            try:
                if value < prev if is_min else value > prev:
                    changes.append((i, value))
                    continue
                if value > prev if is_min else value < prev:
                    continue
            except TypeError:  # a number and a string: settle() orders them
                pass
            new = settle(prev, value, is_min)  # equal, a NaN, or a number and a string
            if new is not prev:
                changes.append((i, new))
        return changes

    def update(self, acc: list[Any], values: list[Any]) -> None:
        """Fold one record's values (from :meth:`values`) into a window; cannot fail."""
        self.apply(acc, self.prepare(acc, values), values)

    def apply(self, acc: list[Any], changes: list[tuple[int, Any]], values: list[Any]) -> None:
        """Fold one record: the min/max changes :meth:`prepare` found for ``values``, its
        count and its sums and averages (exact: cannot fail)."""
        for i in self.counted:
            acc[i] += 1
        for i, new in changes:
            acc[i] = new
        for i, is_avg in self.added:
            value = values[i]
            if value is None:
                continue
            if is_avg:
                slot = acc[i]
                slot[0] = add(slot[0], value)
                slot[1] += 1
            else:
                held = acc[i]
                if type(value) is int and type(held) is not list:  # summing.add's int case
                    acc[i] = value if held is None else held + value
                else:
                    acc[i] = add(held, value)

    def result(
        self, key: Any, start_ms: int, acc: list[Any], texts: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """The output record of a window; ``texts``: its start and end already as text."""
        start, end = texts or (iso_ms(start_ms), iso_ms(start_ms + self.size_ms))
        out: dict[str, Any] = {"key": key_value(key), "window_start": start, "window_end": end}
        for i, agg in enumerate(self.aggregates):
            function = agg.function
            if function == "avg":
                out[agg.name] = mean(*acc[i])
            elif function == "sum":
                out[agg.name] = total(acc[i])
            else:
                out[agg.name] = acc[i]
        return out


# --------------------------------------------------------------------------- fold source
#
# The per-record code of a fold, as Python source lines (indented from column 0): one
# declaration for the generic fold (compiled once per plan below) and the fused batch
# functions (workers/fusing.py), which splice it into theirs. ``a<i>`` is aggregate i's
# value for the record, ``acc`` the window's accumulators; the names the lines use besides
# are those of FOLD_NAMES.


def value_check_source(i: int, bounded: bool) -> list[str]:
    """Check ``a<i>`` as :meth:`WindowPlan.values` does: an int or a float passes as it is
    (an int beyond the float range too, unless ``bounded``: an avg's, which refuses it),
    anything else goes through the aggregate's check (which may convert it or raise)."""
    return [
        f"if type(a{i}) is not int and type(a{i}) is not float and a{i} is not None"
        + (f" or type(a{i}) is int and not fmin <= a{i} <= fmax:" if bounded else ":"),
        f"    a{i} = checks[{i}](a{i})",
    ]


def update_source(i: int, function: str, has_value: bool) -> list[str]:
    """:meth:`WindowPlan.update` for aggregate ``i`` (same order, same arithmetic)."""
    if function == "count":
        return [f"acc[{i}] += 1"]
    if not has_value:
        return []  # no expression: the value is always null, the accumulator never moves
    head = [f"if a{i} is not None:", f"    prev = acc[{i}]"]
    if function == "sum":  # summing.add, its integer case inline
        return [
            *head,
            f"    if type(a{i}) is int and type(prev) is not list:",
            f"        acc[{i}] = a{i} if prev is None else prev + a{i}",
            "    else:",
            f"        acc[{i}] = sadd(prev, a{i})",
        ]
    if function in ("min", "max"):
        return [*head, *settled_source(i, function, "prev", f"acc[{i}]")]
    return [  # avg: [total, count]
        *head,
        "    held = prev[0]",
        f"    if type(a{i}) is int and type(held) is not list:",
        f"        prev[0] = a{i} if held is None else held + a{i}",
        "    else:",
        f"        prev[0] = sadd(held, a{i})",
        "    prev[1] += 1",
    ]


def settled_source(i: int, function: str, held: str, target: str) -> list[str]:
    """A min/max (:meth:`WindowPlan.prepare`): ``target`` = what it holds after ``a<i>``,
    given that it holds ``held``; a number against a string (no comparison) goes to
    :func:`settle`. Indented for the body of an ``if a<i> is not None:``."""
    op, other = ("<", ">") if function == "min" else (">", "<")
    is_min = function == "min"
    return [
        f"    if {held} is None:",
        # summing.is_nan: only a float's NaN is canonical (a float subclass a user function
        # returns is its base float by now: AggregatePlan.check, decision 0183)
        f"        {target} = a{i} if a{i} == a{i} or type(a{i}) is not float else NAN",
        "    else:",
        "        try:",
        f"            if a{i} {op} {held}:",
        f"                {target} = a{i}",
        f"            elif not a{i} {other} {held}:  # equal, or a NaN",
        f"                {target} = settle({held}, a{i}, {is_min})",
        "        except __sh_TypeError:  # a number and a string",
        f"            {target} = settle({held}, a{i}, {is_min})",
    ]


def indent(lines: list[str], by: int) -> list[str]:
    return [" " * by + line for line in lines]


#: What the fold source's lines use besides ``a<i>``, ``acc``, ``prev``, ``held`` and
#: ``checks`` (the aggregates' own: ``AggregatePlan.check``).
FOLD_NAMES: Final[Mapping[str, Any]] = {
    "type": type,
    "int": int,
    "float": float,
    "list": list,
    "__sh_TypeError": TypeError,
    "fmin": FLOAT_MIN,
    "fmax": FLOAT_MAX,
    "sadd": add,
    "settle": settle,
    "NAN": CANONICAL_NAN,
}


def _compiled_fold(
    aggregates: tuple[AggregatePlan, ...],
) -> tuple[Callable[[Record], list[Any]], Callable[[list[Any], list[Any]], None]]:
    """:meth:`WindowPlan.values` and :meth:`WindowPlan.update` for ``aggregates``, from the
    fold source: the loops over the aggregates unrolled (profiled: a quarter of the generic
    fold's time went to them). The source is ours; the value expressions are the compiled
    functions themselves, passed in by name, never text."""
    read = [(i, a) for i, a in enumerate(aggregates) if a.value is not None]
    values = ["def values(record):"]
    for i, a in read:
        values += [
            f"    a{i} = value{i}(record)",
            *indent(value_check_source(i, a.function == "avg"), 4),
        ]
    listed = {i for i, _ in read}
    values.append(
        "    return ["
        + ", ".join(f"a{i}" if i in listed else "None" for i in range(len(aggregates)))
        + "]"
    )
    update = ["def update(acc, values):"]
    update += [f"    a{i} = values[{i}]" for i, a in read]
    for i, a in enumerate(aggregates):
        update += indent(update_source(i, a.function, a.value is not None), 4)
    update.append("    return None")
    env: dict[str, Any] = {
        "__builtins__": {},
        **FOLD_NAMES,
        "checks": [a.check for a in aggregates],
        **{f"value{i}": a.value for i, a in read},
    }
    exec(compile("\n".join([*values, *update]) + "\n", "<streamherd fold>", "exec"), env)  # noqa: S102 - our source, no manifest text
    return env["values"], env["update"]


class PartitionWindows:
    """Open windows of one partition plus its watermark; checkpointed as one JSON value."""

    __slots__ = ("based", "changed", "first_end", "max_event_ms", "plan", "windows")

    def __init__(self, plan: WindowPlan) -> None:
        self.plan = plan
        self.max_event_ms: int | None = None
        # (key, window start) -> accumulator; keys in values.canonical_key's form. Windows are
        # only created through open_window(), which keeps first_end.
        self.windows: dict[tuple[Any, int], list[Any]] = {}
        # The smallest end of an open window (None: none open), so that close() after each
        # batch costs nothing until a window is due (profiled: it scanned every window).
        self.first_end: int | None = None
        # The windows opened, updated or closed since the last successful checkpoint (a
        # closed one is no longer in ``windows``: a delete). Cleared only by checkpointed().
        self.changed: set[tuple[Any, int]] = set()
        # Whether the backend's committed checkpoint of this partition holds exactly this
        # state minus ``changed`` (restored from it, or checkpointed since): only then may a
        # checkpoint be written as the changes alone; else it must be a full one.
        self.based = False

    def open_window(self, key: Any, start: int) -> list[Any]:
        """A new, empty accumulator for window ``(key, start)`` (which must not exist)."""
        acc = self.windows[(key, start)] = self.plan.new_accumulator()
        end = start + self.plan.size_ms
        if self.first_end is None or end < self.first_end:
            self.first_end = end
        return acc

    @property
    def watermark_ms(self) -> int | None:
        if self.max_event_ms is None:
            return None
        return self.max_event_ms - self.plan.lateness_ms

    def add(self, key: Any, event_ms: int, values: list[Any]) -> bool:
        """Fold one record's values (from :meth:`WindowPlan.values`) in; False (and no
        change) when it is late. Cannot fail."""
        plan = self.plan
        top = self.max_event_ms
        if top is None or event_ms > top:
            top = event_ms  # the record moves the watermark, once it is folded
        watermark = top - plan.lateness_ms
        size = plan.size_ms
        if size == plan.slide_ms:  # tumbling: exactly one window, the common case
            start = event_ms - event_ms % size
            if start + size <= watermark:
                self.max_event_ms = top
                return False
            acc = self.windows.get((key, start))
            if acc is None:
                acc = self.open_window(key, start)
            plan.update(acc, values)
            self.changed.add((key, start))
            self.max_event_ms = top
            return True
        starts = plan.window_starts(event_ms)
        windows = self.windows
        if starts[-1] + size <= watermark:
            self.max_event_ms = top
            return False
        # Every window still open; those that closed already (older, overlapping ones) are
        # skipped.
        changed = self.changed
        for start in starts:
            if start + size > watermark:
                acc = windows.get((key, start))
                plan.update(self.open_window(key, start) if acc is None else acc, values)
                changed.add((key, start))
        self.max_event_ms = top
        return True

    def fold(
        self,
        items: Iterable[tuple[Record, Any]],
        kafka_time: Callable[[Any], int | None],
        *,
        judge_ahead: bool = True,
    ) -> tuple[list[tuple[Any, BaseException]], list[tuple[Any, int]]]:
        """Fold a batch of ``(record, source)`` in order, the engine's hot loop.

        Same result as :meth:`add` per record (the tumbling case is inlined, locals bound
        once: profiling showed the per-record calls dominating). Returns the sources whose
        key, event time or values failed or were refused (with the error: the record alone
        decides, see :meth:`WindowPlan.values`), and the late ones (with their event time);
        neither changed the state.
        ``kafka_time(source)`` is only called when the plan takes event time from the Kafka
        timestamp, or a record is more than ``eventTime.maxAhead`` ahead of the partition's
        largest event time (:meth:`WindowPlan.too_far_ahead`, which :meth:`add`, having no
        Kafka timestamp, leaves to its callers: a refused record is among the failures);
        ``judge_ahead`` False: never (records an upstream judged, or wrote before the rule).
        """
        plan = self.plan
        key_of, time_of = plan.key, plan.event_time
        values_of, update = plan.fold_values, plan.fold_update
        millis_of, low, high = plan.millis or (None, 0, 0)
        open_window = self.open_window
        use_kafka_time = plan.kafka_time
        size, lateness = plan.size_ms, plan.lateness_ms
        ahead = plan.ahead_ms if judge_ahead else math.inf
        tumbling = size == plan.slide_ms
        windows = self.windows
        get = windows.get
        mark = self.changed.add
        errors: list[tuple[Any, BaseException]] = []
        late: list[tuple[Any, int]] = []
        max_ms = self.max_event_ms
        start = end = 0  # the window of the previous record (tumbling), reused while t is in it
        for record, source in items:
            try:
                key = key_of(record)
                # values.window_key: 1, 1.0, true differ; a key too long is refused
                if type(key) is not str or len(key) > KEY_QUICK_CHARS:
                    key = window_key(key)
                if millis_of is not None:  # an int in range needs no conversion
                    event_ms = millis_of(record)
                    if type(event_ms) is not int or not low <= event_ms <= high:
                        event_ms = time_of(record, None)  # the same read, converted
                else:
                    event_ms = time_of(record, kafka_time(source) if use_kafka_time else None)
                values = values_of(record)
            except BaseException as error:  # noqa: BLE001 - the record's fault: dead-letter it
                # Its frames hold the record; BaseException's own method, as a user's error
                # class may override with_traceback.
                errors.append((source, BaseException.with_traceback(error, None)))
                continue
            if (max_ms is None and ahead != math.inf) or (
                max_ms is not None and event_ms - max_ms > ahead
            ):
                refused = plan.too_far_ahead(event_ms, max_ms, kafka_time(source))
                if refused is not None:
                    errors.append((source, refused))
                    continue
            if not tumbling:
                self.max_event_ms = max_ms
                if not self.add(key, event_ms, values):
                    late.append((source, event_ms))
                max_ms = self.max_event_ms
                continue
            top = max_ms if max_ms is not None and event_ms <= max_ms else event_ms
            if not start <= event_ms < end:  # epoch ms are 2-digit ints: spare the arithmetic
                start = event_ms - event_ms % size
                end = start + size
            if end <= top - lateness:
                late.append((source, event_ms))
                continue
            window = (key, start)
            acc = get(window)
            if acc is None:
                acc = open_window(key, start)
            update(acc, values)
            mark(window)
            max_ms = top
        self.max_event_ms = max_ms
        return errors, late

    def close(self, everything: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Remove and return the closed windows as (output key, result), in a stable order."""
        watermark = self.watermark_ms
        first_end = self.first_end
        if first_end is None:
            return []
        if not everything and (watermark is None or first_end > watermark):
            return []
        plan = self.plan
        size = plan.size_ms
        windows = self.windows
        closed = [
            kw
            for kw in windows
            if everything or kw[1] + size <= watermark  # type: ignore[operator]
        ]
        closed.sort(key=lambda kw: (kw[1], key_text(kw[0])))
        texts: dict[int, tuple[str, str]] = {}  # window start -> its start and end as text
        out = []
        self.changed.update(closed)  # emitted: deleted from the state at the next checkpoint
        for kw in closed:
            key, start = kw
            acc = windows.pop(kw)
            text = texts.get(start)
            if text is None:
                text = texts[start] = (iso_ms(start), iso_ms(start + size))
            out.append((f"{output_key_text(key)}|{text[0]}", plan.result(key, start, acc, text)))
        self.first_end = min(s for _, s in windows) + size if windows else None
        return out

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON, exactly (``values.encode_value``): keys as their JSON
        value, accumulators with their NaN, infinities and integers of any size."""
        return {
            **self.head_json(),
            "windows": [
                [encode_value(key_value(k)), s, encode_value(acc)]
                for (k, s), acc in self.windows.items()
            ],
        }

    def head_json(self) -> dict[str, Any]:
        """The state without its windows (an incremental checkpoint's, with
        :meth:`changes`)."""
        return {"v": STATE_VERSION, "maxEventMs": self.max_event_ms}

    def changes(self) -> list[list[Any]]:
        """The windows changed since the last successful checkpoint, in the state form of
        :meth:`to_json`: ``[key, start, accumulator]``, or ``[key, start, None]`` for a
        window that closed (a delete). Changes nothing: a checkpoint that fails keeps them."""
        windows = self.windows
        out: list[list[Any]] = []
        for kw in self.changed:
            acc = windows.get(kw)
            out.append(
                [encode_value(key_value(kw[0])), kw[1], None if acc is None else encode_value(acc)]
            )
        return out

    def checkpointed(self) -> None:
        """A checkpoint of this state (full, or :meth:`changes`) is committed: it is the base
        of the next one, and nothing has changed since."""
        self.changed.clear()
        self.based = True

    @classmethod
    def from_json(
        cls, plan: WindowPlan, data: Mapping[str, Any] | None, *, base: bool = False
    ) -> PartitionWindows:
        """The state of ``data`` (:meth:`to_json`'s form). ``base``: ``data`` is the state
        backend's committed checkpoint of the partition, so the next checkpoint may be its
        changes alone; else (a snapshot, a reset, nothing) the next one is full. A version 1
        state is never a base: its keys may be written differently now."""
        state = cls(plan)
        if not data:
            return state
        version = data.get("v")
        state.based = base and version == STATE_VERSION
        if version not in READ_VERSIONS:
            raise StateVersionError(
                f"unsupported window state version {version!r}: this worker reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}, so a newer streamherd wrote it"
            )
        state.max_event_ms = data.get("maxEventMs")
        legacy = version != STATE_VERSION and bool(plan.added)  # running float totals
        moved: list[tuple[Any, Any, int, list[Any]]] = []
        for stored, start, held in data.get("windows", ()):
            # Version 1 wrote keys as they were held: a list-literal key as an array.
            acc = decode_value(held)
            if legacy:
                _exact_totals(plan, acc)
            _ordered_values(plan, acc)
            key, written = restored_key(stored)
            if written is None:
                state.windows[(key, int(start))] = acc
            else:
                moved.append((key, written, int(start), acc))
        if moved:
            # Keys held as UTF-8 bytes, written before such bytes were read as their string
            # (values.restored_key): their windows are written under the string now, so the
            # next checkpoint is whole (the entries of the old form go; changes alone would
            # leave them, to come back at every restore). A window that meets its string's
            # window of the same start stays apart under its old form: emitted once, with
            # the same output key, as before, rather than lose either's values.
            state.based = False
            for key, written, start, acc in moved:
                state.windows[(key if (key, start) not in state.windows else written, start)] = acc
        if state.windows:
            state.first_end = min(s for _, s in state.windows) + plan.size_ms
        return state


def _ordered_values(plan: WindowPlan, acc: list[Any]) -> None:
    """Check that a restored accumulator's min/max hold values of the total order (see
    :func:`settle`), and give a NaN the one NaN a window holds: a restored state folds on
    exactly as the state that was saved, whatever wrote it."""
    for i, _ in plan.ordered:
        held = acc[i]
        if held is None:
            continue
        if not ordered_value(held):
            raise ValueError(f"not a min/max value in window state: {held!r}")
        if is_nan(held):
            acc[i] = CANONICAL_NAN


def _exact_totals(plan: WindowPlan, acc: list[Any]) -> None:
    """Turn the running float totals of a version 1 or 2 accumulator into the exact form of
    version 3 (the same value); refuse a total of neither form."""
    for i, is_avg in plan.added:
        if is_avg and (type(acc[i]) is not list or len(acc[i]) != 2):
            raise ValueError(f"an avg accumulator must be [total, count], got {acc[i]!r}")
        held = acc[i][0] if is_avg else acc[i]
        if is_avg and acc[i][1] == 0:
            held = None  # versions 1 and 2 began an avg at [0, 0]: no value yet
        elif type(held) is float:
            held = from_float(held)
        elif not is_total(held):
            raise ValueError(f"not a total in window state: {held!r}")
        if is_avg:
            acc[i][0] = held
        else:
            acc[i] = held


def reference_aggregate(
    plan: WindowPlan, records: Iterable[tuple[Any, int, list[Any]]]
) -> dict[str, dict[str, Any]]:
    """Naive reference (no lateness, every window): output key -> result. Used by tests."""
    accs: dict[tuple[Any, int], list[Any]] = {}
    for raw_key, event_ms, values in records:
        key = canonical_key(raw_key)
        for start in plan.window_starts(event_ms):
            acc = accs.setdefault((key, start), plan.new_accumulator())
            plan.update(acc, values)  # values from plan.values(): the caller's
    return {output_key(k, s): plan.result(k, s, acc) for (k, s), acc in accs.items()}
