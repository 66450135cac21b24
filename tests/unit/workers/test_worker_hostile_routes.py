"""Hostile JSON records and window keys of every JSON type through every route of the engine.

The fused batch function, the generic stage path and the repartitioned route (the engine's
own upstream and downstream sides, the repartition topic a list per partition), each with
restores from checkpoints between batches, over JSON *bytes* as a Kafka consumer hands them
over: hostile window keys (every JSON type, ``1`` / ``1.0`` / ``true`` / ``"1"`` / ``-0.0``,
integers beyond 64 bits, arrays, objects, keys near the size limit), event times of every
type and edge (int64 bounds, floats, strings of digits, booleans, before year 1), aggregate
values beyond the double range written as literals, duplicate fields, tombstones and
documents that are not objects. Input keyed by the window key (each key in one source
partition), so every route must give the same windows bit for bit and dead-letter the same
records with the same reasons, each once.
"""

from __future__ import annotations

import io
import json
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamherd.workers import rekeying
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.limits import MAX_KEY_BYTES, ensure_recursion_headroom
from streamherd.workers.processing import SourceMessage, error_headers
from streamherd.workers.repartitioning import close_everything
from streamherd.workers.values import canonical_key, output_key_text
from streamherd.workers.windowing import AggregatePlan, PartitionWindows
from tests.unit.workers import userfuncs
from tests.unit.workers.test_worker_exact_results import round_trip
from tests.unit.workers.test_worker_repartition_parity import (
    Interleaving,
    MemorySink,
    dead_letters,
    hop_partitions,
    markers_on_demand,
    restart,
    results_of,
)

ensure_recursion_headroom()

SOURCE = "src"
PARTITIONS = 3
BASE = 1_767_225_600_000


@dataclass(frozen=True)
class Kmsg:
    """A source message of topic ``src``: any key and value bytes, a create time or none."""

    partition_: int
    offset_: int
    value_: bytes | None
    key_: bytes | None
    stamp: int | None

    def topic(self) -> str:
        return SOURCE

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def timestamp(self) -> tuple[int, int]:
        return (0, 0) if self.stamp is None else (1, self.stamp)

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def error(self) -> None:
        return None


#: Steps before the window: a filter, and map steps whose expressions fail on some values
#: (division by zero, an integer beyond the float range, strings, null).
STEPS: list[list[dict[str, Any]]] = [
    [{"filter": "drop != true"}],
    [
        {"map": {"set": {"r": "v / w", "q": "v // w", "u": "v % w"}}},
        {"filter": "drop != true and (r == null or r > -1e300)"},
        {"map": {"rename": {"r": "v2"}, "set": {"w": "coalesce(w, q, u)"}}},
    ],
]


def config(
    repartition: bool,
    keying: str,
    hopping: bool,
    lateness_ms: int,
    steps: int = 0,
    function: bool = False,
    kafka_time: bool = False,
) -> WorkerConfig:
    window: dict[str, Any] = {
        "keyBy": keying,
        "size": "1s",
        # The Kafka timestamp (none, 0, negative, beyond the year 9999), or the field ``ts``.
        "eventTime": {} if kafka_time else {"field": "ts"},
        "allowedLateness": f"{lateness_ms}ms",
        "aggregates": [
            {"name": "n", "function": "count"},
            {"name": "s", "function": "sum", "expression": "v"},
            {"name": "m", "function": "avg", "expression": "v"},
            {"name": "lo", "function": "min", "expression": "v"},
            {"name": "hi", "function": "max", "expression": "w"},
            {"name": "r", "function": "sum", "expression": "v2"},
        ],
    }
    if hopping:
        window.update(type="hopping", size="2s", slide="1s")
    doc: dict[str, Any] = {
        "pipeline": {"name": "p"},
        "source": {
            "kafka": {"bootstrapServers": "127.0.0.1:9", "topics": [SOURCE], "consumerGroup": "g"}
        },
        "processor": {"steps": [*STEPS[steps], {"window": window}]},
        "sink": {"stdout": {}},
    }
    if repartition:
        doc["repartition"] = {"topic": "rp"}
    if function:
        doc["processor"]["function"] = {"callable": "tests.unit.workers.userfuncs:retype"}
    return WorkerConfig.model_validate(doc)


#: Literal JSON texts (some beyond what Python writes: 1e400, -0, 1E2, duplicate names).
KEYS = [
    "null", "true", "false", "0", "1", "-0", "-0.0", "0.0", "1.0", "1E0", "1e400", "-1e400",
    '"1"', '"true"', '"null"', '""', '"[1]"', '"\\u0000"', '"\\ud83d\\ude00"', '"\\u00e9"',
    "18446744073709551615", "18446744073709551616", "-9223372036854775809",
    "1" + "0" * 30, "1" + "0" * 400, "5e-324", "1e16", "[]", "[1]", "[1.0]", "[true]",
    "[[]]", '[null, "a"]', '{"a": 1}', '"' + "x" * (MAX_KEY_BYTES - 2) + '"',
    '"' + "x" * (MAX_KEY_BYTES - 1) + '"', "[" + ",".join(["1"] * 200) + "]",
]  # fmt: skip
TIMES = [
    str(BASE), str(BASE + 10), str(BASE + 999), str(BASE + 1000), str(BASE + 2500),
    f"{BASE}.5", f"{BASE + 1}.999", f'"{BASE}"', f'"{BASE + 700}"', f'" {BASE}"',
    "true", "null", "-1", "0", "9223372036854775807", "-9223372036854775808",
    "18446744073709551616", "1e400", "-62135596800000", "253402300799999", "[1]",
    f"{BASE}e0", f"{BASE // 1000}e3",
]  # fmt: skip
VALUES = [
    "0", "1", "-1", "2.5", "-0.0", "-0", "1e308", "1e400", "-1e400", "1e-400",
    "9223372036854775807", "18446744073709551616", "1" + "0" * 400, '"a"', '"1"',
    "true", "null", "[]", "{}", "0.1", "1E2",
]  # fmt: skip


RETYPES = ["whole", "text", "real", "decimal", "fraction", "tuple", "bytes", "bytearray",
           "set", "nan", "huge", "vast"]  # fmt: skip


@st.composite
def record(draw: st.DrawFn) -> tuple[str | None, bytes | None]:
    """A source record: (its window key's JSON text, or None when it has none; its value)."""
    kind = draw(st.integers(0, 20))
    if kind == 0:
        return None, None  # a tombstone
    if kind == 1:
        return None, draw(st.sampled_from([b"", b"[]", b"1", b'"x"', b"{", b"\xef\xbb\xbf{}"]))
    key = draw(st.sampled_from(KEYS))
    fields = [("k", key), ("ts", draw(st.sampled_from(TIMES)))]
    if draw(st.booleans()):
        fields.append(("v", draw(st.sampled_from(VALUES))))
    if draw(st.booleans()):
        fields.append(("w", draw(st.sampled_from(VALUES))))
    if draw(st.integers(0, 5)) == 0:
        fields.append(("drop", "true"))
    for name in ("kt", "vt", "tst"):  # what userfuncs.retype makes of k, v and ts
        if draw(st.integers(0, 3)) == 0:
            fields.append((name, json.dumps(draw(st.sampled_from(RETYPES)))))
    if draw(st.integers(0, 5)) == 0:  # a duplicate name: the last one counts
        name = draw(st.sampled_from(["k", "ts", "v"]))
        fields.insert(0, (name, draw(st.sampled_from(["1", '"b"', "null", str(BASE)]))))
    text = "{" + ", ".join(f"{json.dumps(n)}: {t}" for n, t in fields) + "}"
    return key, text.encode()


def placement(key: str | None) -> int:
    """The source partition of a record keyed by ``key`` (JSON text): every record of one
    window key in one partition, whatever JSON spells the key (1E0 and 1.0 are one)."""
    if key is None:
        return 0
    try:
        value = json.loads(key)
        # orjson's reading: an integer beyond 64 bits is a float.
        if type(value) is int and not -(2**63) <= value < 2**64:
            value = float(value)
        return zlib.crc32(output_key_text(canonical_key(value)).encode()) % PARTITIONS
    except Exception:
        return 0


#: Kafka timestamps besides ordinary ones: none, 0, -1, int64's bounds, the year 10000.
STAMPS = [None, 0, -1, 1, 2**63 - 1, -(2**63), 253_402_300_800_000, BASE - 5000, BASE, None,
          BASE + 10**9]  # fmt: skip


def sources(records: list[tuple[str | None, bytes | None]]) -> list[list[SourceMessage]]:
    out: list[list[SourceMessage]] = [[] for _ in range(PARTITIONS)]
    for i, (key, value) in enumerate(records):
        p = placement(key)
        stamp = STAMPS[i % 11] if i % 3 == 2 else BASE + 97 * i
        # Every record with a Kafka key: a keyless one is refused on the direct route alone,
        # by design (docs/decisions/0163-keyless-records-under-trusted-keying.md).
        kafka_key = b"-" if key is None else key.encode()
        out[p].append(Kmsg(p, len(out[p]), value, kafka_key, stamp))
    return out


def engine(cfg: WorkerConfig, sink: MemorySink, fused: bool) -> Engine:
    built = Engine(cfg, stop=threading.Event(), out=io.StringIO(), fused=fused)
    built.outputs = sink
    return built


def direct_run(
    cfg: WorkerConfig, fused: bool, parts: list[list[SourceMessage]], data: st.DataObject
) -> MemorySink:
    sink = MemorySink(0)
    eng = engine(cfg, sink, fused)
    assert eng.fused is fused
    for p, messages in enumerate(parts):
        state = PartitionState(SOURCE, p)
        state.windows = PartitionWindows(eng.processor.window)  # type: ignore[arg-type]
        i = 0
        while i < len(messages):
            n = data.draw(st.integers(1, 5), label="direct batch")
            eng._process_partition(state, messages[i : i + n])
            if data.draw(st.booleans(), label="direct restart"):
                restart(state)
            i += n
        sink.rows += state.windows.close(everything=True)
    return sink


@markers_on_demand()
def hop_run(
    cfg: WorkerConfig, parts: list[list[SourceMessage]], queues: int, data: st.DataObject
) -> MemorySink:
    sink = MemorySink(queues)
    hop = engine(cfg, sink, fused=False)
    ups, downs = hop_partitions(hop, queues)
    known = frozenset((up.topic, up.partition) for up in ups)
    lanes = Interleaving(parts, sink, 5)
    while (step := lanes.next(data)) is not None:
        side, index, batch = step
        if side == "up":
            hop._process_partition(ups[index], batch)
            hop._mark(ups[index], batch[-1].offset(), force=True)
        else:
            down = downs[index]
            hop._process_partition(down, list[SourceMessage](batch))
            how = data.draw(st.sampled_from([None, "volume", "changelog"]), label="restore")
            if how is not None:
                assert down.windows is not None and down.clock is not None
                down.windows, down.clock = round_trip(down.windows, down.clock, how)
                down.clock.known = known
    for down in downs:
        assert down.windows is not None
        sink.rows += close_everything(down.windows)[0]
    return sink


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    records=st.lists(record(), max_size=40),
    keying=st.sampled_from(["k", "[k, 1]", "coalesce(k, 'none')"]),
    hopping=st.booleans(),
    lateness=st.sampled_from([0, 1500]),
    queues=st.integers(1, 3),
    steps=st.integers(0, len(STEPS) - 1),
    function=st.booleans(),
    kafka_time=st.booleans(),
    data=st.data(),
)
def test_hostile_records_and_keys_give_one_result_on_every_route(
    records: list[tuple[str | None, bytes | None]],
    keying: str,
    hopping: bool,
    lateness: int,
    queues: int,
    steps: int,
    function: bool,
    kafka_time: bool,
    data: st.DataObject,
) -> None:
    parts = sources(records)
    direct = config(False, keying, hopping, lateness, steps, function, kafka_time)
    fused = direct_run(direct, True, parts, data)
    generic = direct_run(direct, False, parts, data)
    hopped = hop_run(
        config(True, keying, hopping, lateness, steps, function, kafka_time), parts, queues, data
    )

    want = results_of(generic.rows)
    event(f"windows: {min(len(want), 5)}")
    for reason in sorted({f.reason for f in generic.dead}):
        event(f"dead-lettered: {reason}")
    assert results_of(fused.rows) == want
    assert results_of(hopped.rows) == want
    assert dead_letters(fused.dead) == dead_letters(generic.dead)
    assert dead_letters(hopped.dead) == dead_letters(generic.dead)
    # Each record's fate once: a dead letter names its source record once.
    assert len({d[:3] for d in dead_letters(generic.dead)}) == len(generic.dead)


def function_config(callable_: str, mode: str, window: bool, repartition: bool) -> WorkerConfig:
    steps: list[dict[str, Any]] = []
    if window:
        aggregates = [{"name": "n", "function": "count"}]
        spec = {"keyBy": "k", "size": "1s", "eventTime": {"field": "ts"}, "aggregates": aggregates}
        steps.append({"window": spec})
    doc: dict[str, Any] = {
        "pipeline": {"name": "p"},
        "source": {
            "kafka": {"bootstrapServers": "127.0.0.1:9", "topics": [SOURCE], "consumerGroup": "g"}
        },
        "processor": {"steps": steps, "function": {"callable": callable_, "mode": mode}},
        "sink": {"stdout": {}},
    }
    if repartition:
        doc["repartition"] = {"topic": "rp"}
    return WorkerConfig.model_validate(doc)


@pytest.mark.parametrize("mode", ["record", "batch"])
@pytest.mark.parametrize(
    ("route", "fused"),
    [("direct", True), ("direct", False), ("upstream", False), ("stateless", False)],
)
@pytest.mark.parametrize("error", ["unprintable", "oneshot"])
def test_a_user_functions_error_that_cannot_be_written_is_still_the_records_dead_letter(
    mode: str, route: str, fused: bool, error: str
) -> None:
    """A user function raised an exception whose ``str()`` itself raised (its class's
    ``__str__`` read an attribute never set), or raises the second time (``oneshot``): the
    dead letter's text, or the log line after it, stopped the worker, on every route, and
    every restart met the same record. The record is dead-lettered (reason ``function``)
    with a text that says so, or with the text written once; the others go on."""
    name = error if mode == "record" else f"{error}_batch"
    cfg = function_config(f"tests.unit.workers.userfuncs:{name}", mode, route != "stateless",
                          route == "upstream")  # fmt: skip
    sink = MemorySink(1)
    eng = engine(cfg, sink, fused)
    assert eng.fused is fused
    if route == "upstream":
        state = hop_partitions(eng, 1)[0][0]
    else:
        state = PartitionState(SOURCE, 0)
        if route == "direct":
            state.windows = PartitionWindows(eng.processor.window)  # type: ignore[arg-type]
    good, bad = ({"k": "a", "ts": BASE}, {"k": "a", "ts": BASE, "bad": True})
    messages: list[SourceMessage] = [
        Kmsg(0, i, orjson.dumps(r), b"a", BASE) for i, r in enumerate([good, bad, good])
    ]
    eng._process_partition(state, messages)

    assert [(f.message.offset(), f.reason) for f in sink.dead] == [(1, "function")]
    text = dict(error_headers(sink.dead[0], "p"))
    if error == "unprintable":
        assert text["streamherd.error.message"].startswith(b"Unprintable")
        assert b"could not be written" in text["streamherd.error.message"]
    else:
        assert text["streamherd.error"] == b"OneShot"
        assert text["streamherd.error.message"] == b"failed once"
    if route == "direct":
        assert state.windows is not None
        assert [row["n"] for _, row in state.windows.close(everything=True)] == [2]
    elif route == "upstream":
        assert eng.counters.repartitioned == 2  # both good records cross the hop
    else:
        assert [row for _, row in sink.rows] == [good, good]


class WholeBatches:
    """Draws for :func:`direct_run` and :func:`hop_run`: whole batches, no restart, the
    first partition ready (a run with no choices)."""

    def draw(self, strategy: Any, label: str) -> Any:
        if label in {"direct batch", "batch"}:
            return 1000
        if label in {"direct restart", "restore"}:
            return False if label == "direct restart" else None
        return strategy.elements[0]  # "next": st.sampled_from(ready)


def on_every_route(
    parts: list[list[SourceMessage]], keying: str, *, function: bool = False
) -> dict[str, tuple[dict[Any, Any], list[tuple[Any, ...]]]]:
    """(results, dead letters) of the fused, generic and hop routes over ``parts`` in
    whole batches, asserted to be the same on all three."""
    routes = {}
    for route in ("fused", "generic", "hop"):
        cfg = config(route == "hop", keying, False, 0, function=function)
        draws: Any = WholeBatches()
        sink = (
            hop_run(cfg, parts, 2, draws)
            if route == "hop"
            else direct_run(cfg, route == "fused", parts, draws)
        )
        routes[route] = (results_of(sink.rows), dead_letters(sink.dead))
    assert routes["fused"] == routes["generic"]
    assert routes["hop"] == routes["generic"]
    return routes


def test_numbers_of_a_subclass_from_a_user_function_fold_alike_on_every_route() -> None:
    """A user function returned an ``int`` subclass (an ``IntEnum``) or a ``float`` one
    (numpy's float64): the direct routes folded the object as it was, the repartition hop
    its base value (msgpack writes no subclass), so the routes disagreed: a sum of
    ``Whole(3)`` was ``3.0`` directly (summed as a float) and ``3`` behind the hop; a min of
    ``Whole(1)`` and ``1.0`` was whichever came first directly (a subclass ranked as a
    float) and ``1.0`` behind the hop. Every route now folds the base value."""
    rows: list[tuple[str, dict[str, Any]]] = [
        ("a", {"v": 3, "vt": "whole"}),
        ("b", {"v": 1, "vt": "whole"}),
        ("b", {"v": 1.0}),
        ("c", {"v": 1.0, "vt": "real"}),
        ("c", {"v": 1}),
        ("d", {"v": 2**62, "vt": "huge"}),  # an int beyond 64 bits: summed exactly
    ]
    records: list[tuple[str | None, bytes | None]] = [
        (f'"{key}"', json.dumps({"k": key, "ts": BASE, "w": 1, **fields}).encode())
        for key, fields in rows
    ]
    parts = sources(records)
    routes = on_every_route(parts, "k", function=True)
    results = {dict(row)["key"][1]: dict(row) for row in routes["generic"][0].values()}
    one = ("f", "3ff0000000000000")  # 1.0
    assert (results["a"]["s"], results["a"]["lo"]) == (("int", 3), ("int", 3))
    assert (results["b"]["lo"], results["c"]["lo"]) == (one, one)  # 1.0 is below the int 1
    assert results["d"]["s"] == ("int", 2**62 * 10**30)
    assert routes["generic"][1] == []


@pytest.mark.parametrize("keying", ["k", "[k, 1]"])
def test_a_key_of_more_digits_than_python_writes_is_refused_on_every_route(keying: str) -> None:
    """A user function's integer key of more than 4300 decimal digits (an expression's are
    at most 4096 bits): every route folded it and then raised at the window's close, when
    its results were named (Python writes no such integer as text), and again at every
    start from the checkpoint that held it; the hop raised at once. It is the record's
    dead letter now (a limit), on every route alike, and the other windows are whole."""
    rows: list[tuple[str, dict[str, Any]]] = [
        ("1", {"k": 1, "v": 2}),
        ("1", {"k": 1, "v": 3, "kt": "vast"}),  # 10**5000
        ("2", {"k": 2, "v": 4, "kt": "huge"}),  # 2 * 10**30: written as text
    ]
    records: list[tuple[str | None, bytes | None]] = [
        (key, json.dumps({"ts": BASE, **fields}).encode()) for key, fields in rows
    ]
    parts = sources(records)
    routes = on_every_route(parts, keying, function=True)
    results, dead = routes["generic"]
    assert len(results) == 2
    ((*_, reason, kind, message),) = dead
    assert (reason, kind) == ("limit", "LimitError")
    assert "integer of more than 4300 digits" in message


@pytest.mark.parametrize("keying", ["k + '\\ud800'", "[k + '\\udfff', 1]", "k"])
def test_a_key_with_a_lone_surrogate_gives_one_result_on_every_route(keying: str) -> None:
    """An expression's string literal may hold a lone surrogate escape, and so the key it
    computes: the direct routes folded it (decision 0168: such state round-trips), the hop
    refused the record (msgpack writes only valid UTF-8), so the routes disagreed (a
    helper's finding). The hop carries it in its exact form now."""
    rows = [("a", 1), ("a", 2), ("b", 4)]
    records: list[tuple[str | None, bytes | None]] = [
        (f'"{key}"', json.dumps({"k": key, "ts": BASE, "v": v, "w": "z"}).encode())
        for key, v in rows
    ]
    parts = sources(records)
    routes = on_every_route(parts, keying)
    results, dead = routes["generic"]
    assert len(results) == 2 and dead == []


class Lying(int):
    """An int subclass whose ``__int__`` says another number (and a float one below)."""

    def __int__(self) -> int:
        return 1000


class LyingReal(float):
    def __float__(self) -> float:
        return 99.5


class LyingText(str):
    __slots__ = ()

    def __str__(self) -> str:
        return "lie"


def test_a_subclass_is_folded_as_its_stored_value_not_what_its_overrides_say() -> None:
    """The base value is the number stored (int.__int__, float.__float__), not what a
    subclass's own ``__int__``/``__float__`` returns (a sum of ``Lying(3)`` was 1000); the
    repartition hop's encoder writes the stored value too."""
    numbers: list[tuple[Any, Any]] = [(Lying(3), 3), (LyingReal(2.5), 2.5)]
    for function in ("sum", "min", "avg"):
        plan = AggregatePlan("v", function, None)
        for value, stored in numbers:
            got = plan.check(value)
            assert (type(got), got) == (type(stored), stored), (function, value, got)
    for value, stored in [*numbers, (LyingText("x"), "x")]:
        got = rekeying._base_scalar(value)
        assert (type(got), got) == (type(stored), stored), (value, got)


#: The dead letter's text of a :class:`userfuncs.UnprintableBase`.
UNWRITABLE = "UnprintableBase (its message could not be written: KeyboardInterrupt in its __str__)"


def leave_config(mode: str, window: bool, repartition: bool) -> WorkerConfig:
    """:func:`function_config` of ``userfuncs.leave`` (``leave_batch``): a count per key ``k``
    and a sum of ``v``, late records impossible (an hour of lateness)."""
    name = "leave" if mode == "record" else "leave_batch"
    cfg = function_config(f"tests.unit.workers.userfuncs:{name}", mode, window, repartition)
    if not window:
        return cfg
    doc = cfg.model_dump(by_alias=True, mode="json", exclude_none=True)
    spec = doc["processor"]["steps"][0]["window"]
    spec["allowedLateness"] = "3600s"
    spec["aggregates"].append({"name": "s", "function": "sum", "expression": "v"})
    return WorkerConfig.model_validate(doc)


@st.composite
def leaving(draw: st.DrawFn) -> tuple[str | None, bytes | None]:
    """A record for :func:`userfuncs.leave`: its key ``k``, a value ``v``, and maybe the
    BaseException it has the function raise (``leave``) or its window's reads raise
    (``trap``)."""
    key = draw(st.sampled_from(["a", "b", "c", "d"]))
    fields: dict[str, Any] = {"k": key, "ts": BASE + draw(st.integers(0, 3000)), "v": 1}
    for name in ("leave", "trap"):
        if draw(st.integers(0, 3)) == 0:
            fields[name] = draw(st.sampled_from(sorted(userfuncs.LEAVES)))
    return json.dumps(key), json.dumps(fields).encode()


def stateless_run(
    cfg: WorkerConfig, parts: list[list[SourceMessage]], data: st.DataObject
) -> MemorySink:
    sink = MemorySink(0)
    eng = engine(cfg, sink, fused=False)
    for p, messages in enumerate(parts):
        state = PartitionState(SOURCE, p)
        i = 0
        while i < len(messages):
            n = data.draw(st.integers(1, 5), label="stateless batch")
            eng._process_partition(state, messages[i : i + n])
            i += n
    return sink


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    records=st.lists(leaving(), max_size=30),
    mode=st.sampled_from(["record", "batch"]),
    queues=st.integers(1, 3),
    data=st.data(),
)
def test_a_user_functions_base_exception_is_the_records_dead_letter_on_every_route(
    records: list[tuple[str | None, bytes | None]],
    mode: str,
    queues: int,
    data: st.DataObject,
) -> None:
    """A user function raised a BaseException that is no Exception (SystemExit with a code
    or a text, KeyboardInterrupt, GeneratorExit, a user's own subclass, one whose
    ``__str__`` raises), or returned a record whose reads raise one: it left the worker,
    and every restart met the record again. Each such record is dead-lettered (reason
    ``function``, or ``expression`` where the window read it) alike on every route (fused,
    generic, the repartition hop, a stateless pipeline), each once, and the worker goes on:
    every other record is counted in its window."""
    parts = sources(records)
    fused = direct_run(leave_config(mode, True, False), True, parts, data)
    generic = direct_run(leave_config(mode, True, False), False, parts, data)
    hopped = hop_run(leave_config(mode, True, True), parts, queues, data)
    stateless = stateless_run(leave_config(mode, False, False), parts, data)

    want: list[tuple[Any, ...]] = []
    good = 0
    for p, messages in enumerate(parts):
        for m in messages:
            fields = json.loads(m.value() or b"")
            name = fields.get("leave") or fields.get("trap")
            if name is None:
                good += 1
                continue
            raised = userfuncs.LEAVES[name]()
            reason = "function" if "leave" in fields else "expression"
            kind, text = type(raised).__name__, ""
            if name == "unprintable":
                kind, text = "UnwritableError", UNWRITABLE
            else:
                text = str(raised)
            want.append((p, m.offset(), reason, kind, text))
    got = [
        (f.message.partition(), f.message.offset(), f.reason, f.kind, f.text) for f in generic.dead
    ]
    assert sorted(got) == sorted(want)
    event(f"dead-lettered: {len(want)}")
    assert results_of(fused.rows) == results_of(generic.rows)
    assert results_of(hopped.rows) == results_of(generic.rows)
    assert dead_letters(fused.dead) == dead_letters(generic.dead)
    assert dead_letters(hopped.dead) == dead_letters(generic.dead)
    assert dead_letters(stateless.dead) == [d for d in dead_letters(generic.dead)
                                            if d[3] == "function"]  # fmt: skip
    # The worker went on: every other record is in its window (and a stateless sink).
    assert sum(row["n"] for _, row in generic.rows) == good
    assert len(stateless.rows) == len(records) - len(stateless.dead)
