"""User functions (`module:callable`) the engine tests load, as a custom image would ship."""

from __future__ import annotations

import decimal
import fractions
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any


def tag(record: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Record mode: drop `drop`, duplicate `twice`, raise on `boom`, else add a field."""
    if record.get("boom"):
        raise RuntimeError(f"boom on {record.get('id')}")
    if record.get("drop"):
        return None
    out = {**record, "tagged": True}
    return [out, dict(out)] if record.get("twice") else out


def tag_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: same rules as tag, over a list."""
    out: list[dict[str, Any]] = []
    for record in records:
        result = tag(record)
        if isinstance(result, dict):
            out.append(result)
        elif result:
            out.extend(result)
    return out


not_callable = 42


class Real(float):
    """A float subclass (as numpy's float64 is): a number, but not exactly a float."""


def widen_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: values JSON cannot hold. ``wide``: ``bytes`` times 10**320 (an integer
    beyond the float range); ``pair``: ``bytes`` as a tuple; ``real``: a number or
    ``"nan"`` in ``bytes`` as a :class:`Real`; ``boom``: raise."""
    out = []
    for record in records:
        if record.get("boom"):
            raise RuntimeError(f"boom on {record.get('id')}")
        new = dict(record)
        if record.get("wide") and type(record.get("bytes")) is int:
            new["bytes"] = record["bytes"] * 10**320
        if record.get("pair"):
            new["bytes"] = (record.get("bytes"), 1)
        held = record.get("bytes")
        if record.get("real") and (
            (isinstance(held, (int, float)) and type(held) is not bool) or held == "nan"
        ):
            new["bytes"] = Real(held)
        out.append(new)
    return out


def fan_out(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Record mode: ``fan`` (0 to 3) records, the first with the record's key ``k``, the
    others with keys derived from it (``k/1``, ``k/2``: other repartition partitions, but
    the same source partition as ``k``), their event times ``i * 300`` ms apart."""
    k = record.get("k")
    return [
        {**record, "k": k if i == 0 else f"{k}/{i}", "ts": record["ts"] + i * 300}
        for i in range(int(record.get("fan", 1)))
    ]


def fan_out_batch(records: list[dict[str, Any]]) -> list[list[dict[str, Any]] | None]:
    """Batch mode, per record: :func:`fan_out` of each record, an empty fan as None (the
    batch's outputs are of another count than its records, each kept with its own)."""
    return [fan_out(r) or None for r in records]


def split_batch(
    records: list[dict[str, Any]],
) -> list[dict[str, Any] | list[dict[str, Any]] | None]:
    """Batch mode, per record: None for ``drop``, two records for ``twice``, else the record
    tagged (the answers of :func:`tag`, one entry per record given)."""
    return [
        None if r.get("drop") else [r, {**r, "copy": True}] if r.get("twice") else {**r, "t": 1}
        for r in records
    ]


def miscount_batch(records: list[dict[str, Any]]) -> list[list[dict[str, Any]] | None]:
    """Batch mode, per record but one entry too many: no record can be told its outputs."""
    return [None, *([r] for r in records)]


def fan_flat_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode, flat: each record twice, in one list (not attributable per record)."""
    return [r for r in records for _ in range(2)]


def answer_batch(records: list[dict[str, Any]]) -> list[Any]:
    """Batch mode, per record: each record's own ``answer`` field, whatever it holds (a
    dict, a list, None, or something no function may return)."""
    return [r.get("answer") for r in records]


def complain(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: raise with the text of `say` as the error message, when it is there."""
    if "say" in record:
        raise ValueError(record["say"])
    return record


class Unprintable(Exception):
    """An error whose message cannot be written: its ``__str__`` reads an attribute its
    ``__init__`` never set (as a user's exception class may)."""

    detail: str

    def __init__(self) -> None:  # no super().__init__(): no args either
        pass

    def __str__(self) -> str:
        return f"failed: {self.detail}"  # AttributeError


def unprintable(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: raise :class:`Unprintable` on ``bad``, else the record."""
    if record.get("bad"):
        raise Unprintable
    return record


def unprintable_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: :func:`unprintable` over a list."""
    return [unprintable(r) for r in records]


class OneShot(Exception):
    """An error whose message can be written once (read from a one-shot stream, say): its
    second ``__str__`` raises StopIteration."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = iter(["failed once"])

    def __str__(self) -> str:
        return next(self.parts)


def oneshot(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: raise :class:`OneShot` on ``bad``, else the record."""
    if record.get("bad"):
        raise OneShot
    return record


def oneshot_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: :func:`oneshot` over a list."""
    return [oneshot(r) for r in records]


class Whole(int):
    """An int subclass (an ``IntEnum``'s kind): a number, but not exactly an int."""


class Text(str):
    """A str subclass: a string, but not exactly a str."""

    __slots__ = ()


def _retyped(value: Any, kind: str) -> Any:
    """``value`` as a Python value no JSON decode gives (:func:`retype`)."""
    if kind == "whole" and type(value) is int:
        return Whole(value)
    if kind == "text" and type(value) is str:
        return Text(value)
    if kind == "real" and type(value) in {int, float}:
        return Real(value)
    if kind == "decimal" and type(value) in {int, float, str}:
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation:
            return value
    if kind == "fraction" and type(value) is int:
        return fractions.Fraction(value, 3)
    if kind == "tuple" and type(value) is list:
        return tuple(value)
    if kind == "bytes" and type(value) is str:
        return value.encode()
    if kind == "bytearray" and type(value) is str:
        return bytearray(value.encode())
    if kind == "set" and type(value) is list:
        try:
            return frozenset(value)
        except TypeError:
            return value
    if kind == "nan":
        return math.nan
    if kind == "huge" and type(value) is int:
        return value * 10**30
    if kind == "vast" and type(value) is int:
        return value * 10**5000  # more digits than Python writes as text (4300)
    return value


def retype(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: each of ``k``, ``v`` and ``ts`` as the Python type its ``<name>t`` field
    names (``whole``, ``text``, ``real``, ``decimal``, ``fraction``, ``tuple``, ``bytes``,
    ``bytearray``, ``set``, ``nan``, ``huge``, ``vast``): values a user function may return."""
    out = dict(record)
    for name in ("k", "v", "ts"):
        kind = record.get(name + "t")
        if name in record and type(kind) is str:
            out[name] = _retyped(record[name], kind)
    return out


class Boom(BaseException):
    """A user's own BaseException subclass: not an Exception."""


class UnprintableBase(BaseException):
    """A BaseException whose ``__str__`` raises one too (a KeyboardInterrupt)."""

    def __str__(self) -> str:
        raise KeyboardInterrupt


#: What a record's ``leave`` (or ``trap``) field has :func:`leave` raise: every kind of
#: BaseException that is no Exception, each of which stopped the worker.
LEAVES: dict[str, Callable[[], BaseException]] = {
    "exit0": lambda: SystemExit(0),
    "exit3": lambda: SystemExit(3),
    "exittext": lambda: SystemExit("text"),
    "interrupt": KeyboardInterrupt,
    "generatorexit": GeneratorExit,
    "boom": lambda: Boom("boom"),
    "unprintable": UnprintableBase,
}


class Trap(dict[str, Any]):
    """A record (a dict subclass) whose every read by ``get`` raises what its ``trap``
    field names: user code that runs where the window reads the record (its key, event
    time and values: the fold, the repartition hop's re-keying, the sink's key)."""

    def get(self, name: str, default: Any = None) -> Any:
        raise LEAVES[dict.__getitem__(self, "trap")]()


def leave(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: raise what ``leave`` names (:data:`LEAVES`); a :class:`Trap` of the
    record when it has ``trap``; else the record."""
    if "leave" in record:
        raise LEAVES[record["leave"]]()
    return Trap(record) if "trap" in record else record


def leave_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: :func:`leave` over a list (the whole batch raises when one record does)."""
    return [leave(r) for r in records]


def leave_clicks(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode, on the generator's clicks: a click whose ``bytes`` is a multiple of 7
    raises one of :data:`LEAVES` (chosen by its bytes); the others pass as they are."""
    size = record["bytes"]
    if size % 7:
        return record
    kinds = sorted(LEAVES)
    raise LEAVES[kinds[size // 7 % len(kinds)]]()


def dawdle_batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch mode: the records, a millisecond a record later but a fifth of a second a batch
    at most: a run spends its time in user code, where a signal then lands, and the batch in
    hand ends soon whatever its size. (A millisecond a record without the cap: on a loaded
    machine the function fell behind the generator's rate, batches grew to the engine's
    5000 records, and a graceful stop waited more than 10 s for the one in hand.)"""
    time.sleep(min(len(records), 200) / 1000)
    return records


#: Whether :func:`interrupt_once` has sent its SIGINT (a test clears it).
INTERRUPTED: list[bool] = []


def interrupt_once(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: the first call sends this process a real SIGINT (a Ctrl-C that lands
    inside user code) and gives its handler time to run; the record passes."""
    if not INTERRUPTED:
        INTERRUPTED.append(True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    return record


def linger(record: dict[str, Any]) -> dict[str, Any]:
    """Record mode: says so on stderr, then takes a minute over the record: a graceful stop
    waits for it (the batch in hand is finished)."""
    print("lingering", file=sys.stderr, flush=True)
    time.sleep(60)
    return record
