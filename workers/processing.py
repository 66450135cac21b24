"""Steps compiled once into batch functions: decode, filter, map, the user function.

The engine (``streamherd.workers.engine``) calls :meth:`Processor.run` once per partition
per consumed batch. Every stage takes a list of items ``(record, message)`` and returns the
surviving items, appending the records it could not handle to ``failures`` (they go to the
dead-letter topic with a reason). Each stage first tries the whole batch in one list
comprehension (the fast path) and only on an exception falls back to one record at a time,
so a single poison record costs a retry of its batch, not a slower engine.

The ``message`` half of an item is the source message (a confluent_kafka ``Message`` or the
generator's :class:`SyntheticMessage`), kept for the dead-letter headers and the window
step's Kafka timestamp. The window step itself lives in ``streamherd.workers.windowing``.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from streamherd.workers.config import MapStep, ProcessorConfig, UserFunction
from streamherd.workers.expressions import compile_expression
from streamherd.workers.limits import LimitError
from streamherd.workers.logs import log_event
from streamherd.workers.values import bytes_as_json
from streamherd.workers.windowing import PartitionWindows, WindowPlan

log = logging.getLogger(__name__)


class SourceMessage(Protocol):
    """What the engine needs from a consumed message (confluent_kafka.Message fits)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def error(self) -> Any: ...


class SyntheticMessage:
    """A generator-made message with the confluent_kafka.Message accessors the engine uses."""

    __slots__ = ("_key", "_offset", "_partition", "_record", "_timestamp", "_topic")

    def __init__(  # noqa: PLR0917 - mirrors the Message accessors, built in one hot loop
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        record: dict[str, Any],
        timestamp_ms: int,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._record = record
        self._timestamp = timestamp_ms

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return orjson.dumps(self._record)

    def record(self) -> dict[str, Any]:
        """The already-decoded record (the generator skips a JSON round trip)."""
        return self._record

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)  # TIMESTAMP_CREATE_TIME

    def error(self) -> None:
        return None


Item = tuple[dict[str, Any], SourceMessage]


#: Characters of an error message kept in a dead letter's header.
MESSAGE_CHARACTERS: Final = 1000

#: What makes an expression's failure a ``limit`` one: a value over its budget
#: (streamherd.workers.limits), or Python running out of stack or memory on the record.
LIMIT_ERRORS: Final = (LimitError, RecursionError, MemoryError)


@dataclass(frozen=True)
class Failure:
    """A record that failed a stage: where it came from, why, and the exception.

    ``reason``: decode | expression | function | late | limit | sink | unkeyed. An ``expression``
    failure whose error is one of :data:`LIMIT_ERRORS` becomes ``limit`` here, in one place
    for both batch paths.
    """

    message: SourceMessage
    reason: str
    error: BaseException
    #: The error's type name and message, written once here: every later reader (the
    #: dead letter's headers, the log) uses these, never the error's own __str__ again.
    kind: str = field(init=False)
    text: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            kind, text = self._written()
        except BaseException as unwritable:  # noqa: BLE001 - a user function's error class
            # Its __str__ failed (read an attribute its __init__ never set, raised a
            # KeyboardInterrupt): the dead letter's text would stop the worker, and every
            # restart meet the record again.
            object.__setattr__(self, "error", UnwritableError(self.error, unwritable))
            kind, text = self._written()
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "text", text)

    def _written(self) -> tuple[str, str]:
        """The error's type name and message (cut to :data:`MESSAGE_CHARACTERS`); whatever
        of a user's error class that raises, raises here."""
        error = self.error
        # Only the type and the message are kept: a traceback's frames hold the record and
        # every value computed from it (megabytes for a hostile record) until the batch ends.
        BaseException.with_traceback(error, None)  # whatever the class overrides
        if self.reason == "expression" and isinstance(error, LIMIT_ERRORS):
            object.__setattr__(self, "reason", "limit")  # frozen: set once, here
        kind, text = type(error).__name__, str(error)
        if type(kind) is not str or type(text) is not str:
            raise TypeError("not a str")
        # Some messages repeat the value (float('x...') quotes all of it): keep what the
        # dead-letter header can hold, and let the error hold no more either.
        if len(text) > MESSAGE_CHARACTERS:
            text = text[:MESSAGE_CHARACTERS] + "..."
            if len(error.args) == 1:
                error.args = (text,)
        return kind, text


class UnwritableError(Exception):
    """An error (a user function's) whose message could not be written, in its place: its
    type's name and why (the text of a dead letter is never allowed to fail)."""

    def __init__(self, error: BaseException, why: BaseException) -> None:
        super().__init__(
            f"{type_name(error)} (its message could not be written: "
            f"{type_name(why)} in its __str__)"
        )


def type_name(value: object) -> str:
    """The name of ``value``'s class, or ``?`` when its metaclass will not say it."""
    try:
        name = type(value).__name__
    except BaseException:  # noqa: BLE001 - a user class's metaclass
        return "?"
    return name if type(name) is str else "?"


class LateRecordError(Exception):
    """A record whose every window had already closed when it arrived."""


class UnkeyedRecordError(Exception):
    """A record without a Kafka key read by a window that trusts its topic's keying."""


def placed_by_key(
    messages: list[SourceMessage], failures: list[Failure], trusted: str
) -> list[SourceMessage]:
    """The messages a producer placed by their key; each keyless one goes to ``failures``.

    A window without a repartition trusts that its topic's partitioner placed every record
    of one window key in one partition (``trusted`` names the declaration that says so).
    A producer places a keyless record anywhere (librdkafka's and Java's default
    partitioners spread them), and an empty key too (librdkafka's default partitioner,
    consistent_random, spreads it as it spreads none; Java's hashes it: which one wrote a
    record cannot be told), so folding one would split its key's window into a partial
    result per partition. Such a record is dead-lettered (``unkeyed``) instead, whatever its
    window key: one loud, lossless verdict instead of quietly wrong numbers. When every record
    has a key (the common case) this costs one list comprehension over the keys, ~18 ns a
    record (operator.methodcaller measured 4x that)."""
    if not [m for m in messages if not m.key()]:
        return messages
    kept: list[SourceMessage] = []
    for m in messages:
        if not m.key():
            failures.append(
                Failure(
                    m,
                    "unkeyed",
                    UnkeyedRecordError(
                        f"the record has no Kafka key (or an empty one), and the window trusts "
                        f"{trusted}: a producer spreads such records over the partitions, so "
                        "its window "
                        "would get a partial result per partition. Produce it with its key, "
                        "or set window.repartition: always to re-key the input (never, if "
                        "your producers choose each record's partition by its window key)"
                    ),
                )
            )
        else:
            kept.append(m)
    return kept


Stage = Callable[[list[Item], list[Failure]], list[Item]]
Decoder = Callable[[list[SourceMessage], list[Failure]], list[Item]]


def decode_json(messages: list[SourceMessage], failures: list[Failure]) -> list[Item]:
    """Each value must be a JSON object; anything else is a decode failure (orjson's
    verdict: a stateless pipeline, whose records go out whole, dead-letters a record with a
    number beyond the double range rather than write it as ``null``)."""
    return _decode_objects(messages, failures, orjson.loads)


def decode_json_wide(messages: list[SourceMessage], failures: list[Failure]) -> list[Item]:
    """:func:`decode_json` for a windowed pipeline, whose output is its windows' results:
    a document orjson refuses only for a number beyond the double range (``1e400``, an
    integer of 309 digits: valid JSON, whose grammar has no range) is read again by
    :func:`read_wide`, that number as an infinity: only a step that reads such a value can
    refuse it, on this path as on the fused one (which skips unread fields)."""
    return _decode_objects(messages, failures, loads_json)


def _decode_objects(
    messages: list[SourceMessage], failures: list[Failure], loads_one: Callable[[bytes], Any]
) -> list[Item]:
    loads = orjson.loads
    try:
        records = [loads(m.value()) for m in messages]  # type: ignore[arg-type]
        # map/set/zip run in C: no Python-level step per record (profiled)
        if set(map(type, records)) <= {dict}:
            return list(zip(records, messages, strict=True))
    except (orjson.JSONDecodeError, TypeError):
        pass
    items: list[Item] = []
    for m in messages:
        try:
            record = loads_one(m.value())  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError) as error:
            failures.append(Failure(m, "decode", error))
            continue
        if type(record) is not dict:
            failures.append(
                Failure(m, "decode", ValueError(f"not a JSON object: {type(record).__name__}"))
            )
            continue
        items.append((record, m))
    return items


#: orjson reads JSON nested at most this deep (the record's own object is level 1): a
#: deeper document is a decode failure (the fused path's slow lane takes any record that
#: may be that deep; :func:`read_wide` refuses it as well).
ORJSON_MAX_DEPTH: Final = 1024

#: orjson's refusal of a number beyond the double range, the one it makes that the JSON
#: grammar does not (pinned by tests/unit/workers/test_worker_decode_parity.py).
_BEYOND_DOUBLE: Final = "number is infinity when parsed as double"


def loads_json(value: bytes) -> Any:
    """One document as the decode reads it: orjson, or :func:`read_wide` for a number
    beyond the double range. Raises orjson's JSONDecodeError (or TypeError for None)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as error:
        if error.msg != _BEYOND_DOUBLE:
            raise
    return read_wide(value)


def _orjson_int(text: str) -> int | float:
    """An integer literal as orjson reads it: an int from -2**63 to 2**64 - 1, else the
    nearest float (an infinity beyond the double range)."""
    if len(text) <= 20:  # no int() of thousands of digits
        value = int(text)
        if -(2**63) <= value <= 2**64 - 1:
            return value
    return float(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# The stdlib reader with orjson's number rules (floats: float(), correctly rounded like
# orjson's, ``1e400`` inf, ``1e-400`` 0.0); NaN and Infinity refused. It reads only what
# orjson refused for a number's range, so it is never on a good record's way.
_WIDE: Final = json.JSONDecoder(parse_int=_orjson_int, parse_constant=_no_constant)


def read_wide(value: bytes) -> Any:
    """``value`` read as orjson reads it, except that a number beyond the double range is
    ±infinity instead of a refusal. Everything else orjson refuses is refused: invalid UTF-8
    (strict decoding), a lone surrogate escape, nesting deeper than
    :data:`ORJSON_MAX_DEPTH` (checked on the result), and the rest of the grammar (the
    stdlib decoder, strict). Raises orjson.JSONDecodeError with the reason."""
    pos: int | None  # where, when the reader knows it
    try:
        text = value.decode()
    except UnicodeDecodeError as error:
        reason, pos, text = "str is not valid UTF-8", error.start, ""
    else:
        try:
            document = _WIDE.decode(text)
        except ValueError as error:  # json.JSONDecodeError, or _no_constant's
            reason = getattr(error, "msg", str(error))
            pos = getattr(error, "pos", None)
        except RecursionError:  # nested past the interpreter's limit: past orjson's too
            reason, pos = "depth limit exceeded", None
        else:
            refused = _orjson_refuses(document)
            if refused is None:
                return document
            reason, pos = refused, None
    # Raised here, outside the except blocks: no chained error holding the document.
    refusal = orjson.JSONDecodeError(reason, text, pos or 0)
    if pos is None:
        refusal.args = (reason,)  # no made-up "line 1 column 1"
    raise refusal


def _orjson_refuses(document: Any) -> str | None:
    """What orjson refuses in a document the stdlib read (nesting past
    :data:`ORJSON_MAX_DEPTH`, a lone surrogate in a string or a name), or None."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is str:
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    return "lone surrogate in string"
        elif kind is dict or kind is list:
            if depth > ORJSON_MAX_DEPTH:
                return "depth limit exceeded"
            if kind is dict:
                stack.extend((name, depth) for name in value)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)
    return None


def decode_raw(messages: list[SourceMessage], failures: list[Failure]) -> list[Item]:
    """Raw format: the value bytes pass through as the record's ``value`` field."""
    return [({"value": m.value(), "key": m.key()}, m) for m in messages]


def decode_synthetic(messages: list[SourceMessage], failures: list[Failure]) -> list[Item]:
    # Copy: steps may add fields, and the generator's dicts must not change under it.
    return [(dict(m.record()), m) for m in messages]  # type: ignore[attr-defined]


def _per_record(
    items: list[Item],
    failures: list[Failure],
    reason: str,
    apply: Callable[[Item, list[Item]], None],
) -> list[Item]:
    out: list[Item] = []
    for item in items:
        try:
            apply(item, out)
        except BaseException as error:  # noqa: BLE001 - user code: any error is the record's
            failures.append(Failure(item[1], reason, error))
    return out


def filter_stage(text: str) -> Stage:
    predicate = compile_expression(text).function  # the bare function: no wrapper call

    def run(items: list[Item], failures: list[Failure]) -> list[Item]:
        try:
            return [item for item in items if predicate(item[0])]
        except Exception:  # noqa: BLE001, S110 - retried record by record below
            pass

        def one(item: Item, out: list[Item]) -> None:
            if predicate(item[0]):
                out.append(item)

        return _per_record(items, failures, "expression", one)

    return run


def map_transform(step: MapStep) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One map step on one record: a new dict (``set``, then ``select``, then ``rename``).

    Also called per record by the fused batch functions that hold records as dicts
    (``streamherd.workers.fusing``), so both paths map with this one function."""
    sets = [(name, compile_expression(text).function) for name, text in step.set.items()]
    select = list(step.select) if step.select is not None else None
    renames = list(step.rename.items())

    def transform(record: dict[str, Any]) -> dict[str, Any]:
        new = dict(record)
        for name, fn in sets:
            new[name] = fn(record)  # against the record before this step
        if select is not None:
            new = {k: new[k] for k in select if k in new}
        for old, to in renames:
            if old in new:
                new[to] = new.pop(old)
        return new

    return transform


def map_stage(step: MapStep) -> Stage:
    transform = map_transform(step)

    def run(items: list[Item], failures: list[Failure]) -> list[Item]:
        try:
            return [(transform(r), m) for r, m in items]
        except Exception:  # noqa: BLE001, S110 - retried record by record below
            pass
        return _per_record(
            items, failures, "expression", lambda it, out: out.append((transform(it[0]), it[1]))
        )

    return run


class UserFunctionError(ValueError):
    """``processor.function.callable`` names nothing this image can call: the config's
    error (the worker logs ``event=bad-config`` and exits 2), not a crash with a traceback."""


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:callable``; :class:`UserFunctionError` says which part failed (the
    module's own error, whatever its import raised, is its cause)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UserFunctionError(
            f"processor.function.callable {spec!r}: cannot import module {module_name!r} "
            f"({type(e).__name__}: {e}); is it in the worker image?"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserFunctionError(
            f"processor.function.callable {spec!r}: module {module_name!r} has no {attr!r}"
        )
    if not callable(fn):
        raise UserFunctionError(f"processor.function.callable {spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _records_from(result: Any) -> list[dict[str, Any]]:
    if result is None:
        return []
    if isinstance(result, dict):
        return [result]
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return result
    raise TypeError(f"user function returned {type(result).__name__}, not dict/list/None")


def _batch_outputs(result: Any, items: list[Item]) -> tuple[list[Item], bool]:
    """A batch function's answer for ``items``, each output with the source it is
    attributed to, and whether a flat list of another count was attributed to the last
    record (the one case that depends on where batches are cut). The answer is flat (a
    dict, None, or a list of dicts only: 1:1 when of as many dicts as records) or per
    record (a list with any other entry: one entry per record, each what a record function
    returns). Raises TypeError on anything else."""
    if not isinstance(result, list):
        flat = _records_from(result)
    elif all(isinstance(r, dict) for r in result):
        flat = result
    else:
        if len(result) != len(items):
            raise TypeError(
                f"batch function returned {len(result)} entries for {len(items)} records: a "
                "list that is not of dicts only is per record (a dict, a list of dicts or "
                "None each)"
            )
        # Per record: each output stays with its own source record, so its place among
        # that record's outputs is the same however the batches are cut.
        return [(r, m) for answer, (_, m) in zip(result, items, strict=True)
                for r in _records_from(answer)], False  # fmt: skip
    if len(flat) == len(items):
        return [(r, m) for r, (_, m) in zip(flat, items, strict=True)], False
    # A flat list of another length: the outputs cannot be told apart by record, so all are
    # the batch's last one's (docs/engine.md: exact behind a hop only exactly-once).
    last = items[-1][1]
    return [(r, last) for r in flat], bool(flat) and len(items) > 1


def function_stage(spec: UserFunction) -> Stage:
    fn = load_callable(spec.callable)
    if spec.mode == "record":

        def one(item: Item, out: list[Item]) -> None:
            for record in _records_from(fn(item[0])):
                out.append((record, item[1]))

        def run_records(items: list[Item], failures: list[Failure]) -> list[Item]:
            return _per_record(items, failures, "function", one)

        return run_records

    def alone(item: Item, out: list[Item]) -> None:
        out.extend(_batch_outputs(fn([item[0]]), [item])[0])

    warned = False

    def run_batch(items: list[Item], failures: list[Failure]) -> list[Item]:
        nonlocal warned
        if not items:
            return items
        try:
            out, unattributed = _batch_outputs(fn([r for r, _ in items]), items)
        except BaseException:  # noqa: BLE001 - isolate the poison record(s) one by one
            return _per_record(items, failures, "function", alone)
        if unattributed and not warned:
            warned = True  # said once per stage: a fact of the function, not of a batch
            log_event(
                log,
                logging.WARNING,
                "batch-function-unattributed",
                callable=spec.callable,
                given=len(items),
                returned=len(out),
                detail="a flat list of another count is attributed to the batch's last "
                "record: behind a repartition hop it is exact only with delivery "
                "exactlyOnce; answer per record (one entry per record given) to keep each "
                "output with its record (docs/engine.md, User functions)",
            )
        return out

    return run_batch


@dataclass(frozen=True)
class Processor:
    """A ProcessorConfig compiled once: stateless stages and the optional window plan.

    ``one_to_one``: every stage keeps or drops each record (no user function, which may
    turn one record into several), so surviving items and source records correspond.
    """

    stages: tuple[Stage, ...]
    window: WindowPlan | None
    one_to_one: bool = True

    @classmethod
    def compile(cls, config: ProcessorConfig) -> Processor:
        stages: list[Stage] = []
        window: WindowPlan | None = None
        for step in config.steps:
            if step.filter is not None:
                stages.append(filter_stage(step.filter))
            elif step.map is not None:
                stages.append(map_stage(step.map))
        if config.function is not None:
            stages.append(function_stage(config.function))
        for step in config.steps:
            if step.window is not None:
                window = WindowPlan.compile(step.window)
        return cls(tuple(stages), window, config.function is None)

    def survivors(self, items: list[Item]) -> int:
        """How many source records have at least one item in ``items``."""
        return len(items) if self.one_to_one else len({id(m) for _, m in items})

    def run(self, items: list[Item], failures: list[Failure]) -> list[Item]:
        for stage in self.stages:
            if not items:
                break
            items = stage(items, failures)
        return items


@dataclass(frozen=True)
class WindowBatch:
    """What one partition's batch did to its window state (state changed in place).

    ``failures`` holds the decode failures, then each stage's, then the window's key, event
    time and value errors, each in record order; ``late`` the late records with their event
    time; ``filtered`` how many records the filters (or a user function) dropped. Every
    other record was folded into the state (:func:`contributing`).
    """

    failures: list[Failure]
    late: list[tuple[SourceMessage, int]]
    filtered: int


def contributing(n_in: int, filtered: int, failed: int) -> int:
    """Records of a batch that reached the window or the sink: the rest of
    ``in = contributing + filtered + dead-lettered`` (late records are dead-lettered)."""
    return n_in - filtered - failed


def window_batch(
    decode: Decoder,
    processor: Processor,
    windows: PartitionWindows,
    messages: list[SourceMessage],
) -> WindowBatch:
    """The generic (reference) path: decode, every stage, then the fold, stage by stage.

    ``streamherd.workers.fusing`` generates one function doing the same for every JSON
    pipeline with a window step; this path runs the others (the raw format, the generator,
    ``fused=False``) and is what the fused one is tested against.
    """
    failures: list[Failure] = []
    with gc_paused():
        items = decode(messages, failures)
        n_decoded = len(items)
        items = processor.run(items, failures)
        stage_failures = len(failures) - (len(messages) - n_decoded)
        filtered = n_decoded - processor.survivors(items) - stage_failures
        errors, late = windows.fold(items, kafka_timestamp)
        # Freed while the collector is still paused: its count of new objects drops by as
        # many, so resuming it does not start a collection that scans the whole dead batch.
        del items
    failures.extend(Failure(m, "expression", error) for m, error in errors)
    return WindowBatch(failures, late, filtered)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for a batch of dict records.

    A batch keeps thousands of dicts and tuples alive from the decode to the fold, so the
    collector (every 700 new container objects) scanned the young ones about ten times per
    batch of 5000 (profiled: a quarter of the generic path's time) and found nothing: JSON
    records hold no cycles. Paused, it runs once when the batch is done (the count of new
    objects is kept), which also collects any cycle a user function made. Reference
    counting frees everything as usual."""
    if not gc.isenabled():  # someone else paused it: theirs to resume
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def kafka_timestamp(message: SourceMessage) -> int | None:
    """The message's Kafka timestamp in ms, or None when it has none."""
    kind, ms = message.timestamp()
    return ms if kind else None  # TIMESTAMP_NOT_AVAILABLE (0): none


def error_headers(failure: Failure, pipeline: str) -> list[tuple[str, bytes]]:
    """Dead-letter headers naming the error and the record's origin."""
    m = failure.message
    return [
        ("streamherd.error", failure.kind.encode(errors="replace")),
        ("streamherd.error.reason", failure.reason.encode()),
        ("streamherd.error.message", failure.text[:MESSAGE_CHARACTERS].encode(errors="replace")),
        ("streamherd.source.topic", (m.topic() or "").encode()),
        ("streamherd.source.partition", str(m.partition()).encode()),
        ("streamherd.source.offset", str(m.offset()).encode()),
        ("streamherd.pipeline", pipeline.encode()),
    ]


def encode_output(value: Mapping[str, Any] | bytes) -> bytes:
    """An output record as bytes: raw values pass through, records become JSON."""
    if isinstance(value, bytes):
        return value
    try:
        return orjson.dumps(value, default=_json_default)
    except TypeError:  # orjson.JSONEncodeError; an integer beyond 64 bits (a large sum)
        pass
    # The stdlib writes integers of any size; it is slower, so only for such a record. Same
    # output otherwise: compact, UTF-8, NaN and infinities as null (what orjson writes).
    text = json.dumps(
        _finite(value), ensure_ascii=False, separators=(",", ":"), default=_json_default
    )
    return text.encode()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (the stdlib would write invalid JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        # As keys are written: the invalid bytes replaced would lose a binary value.
        return bytes_as_json(bytes(value))
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
