"""min/max follow one total order over every value they take, so no result depends on the
order of arrival (docs/engine.md, "Windows"; ``windowing.settle``).

The order: numbers below strings; numbers by value, equal ones ``-0.0`` < ``0.0`` (and any
other float) < the int of the same value; strings by code point; NaN propagates. For any
multiset of mixed values (integers of any size, every float with NaN of any sign and payload,
the infinities and ``-0.0``, strings; in the fused function NaN and infinities from an
expression) and of values outside the order (booleans, bytes, arrays, objects: refused by
the value alone, whatever the window holds), any permutation, any cut into batches, any
checkpoint and restore between batches, tumbling or hopping, the generic fold and the fused
batch function give the result of one reference: a sort by that order. The values the order
leaves out are refused whatever came before them.
"""

from __future__ import annotations

import math
import random
import struct
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers import checkpointing
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import ProcessorConfig, WindowSpec
from streamherd.workers.expressions import compile_expression
from streamherd.workers.fusing import fuse
from streamherd.workers.processing import (
    Processor,
    SourceMessage,
    decode_json,
    window_batch,
)
from streamherd.workers.windowing import PartitionWindows, WindowPlan
from tests.unit.workers.sourcemessages import BASE, Msg

NEGATIVE_NAN = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]
AGGREGATES = [
    {"name": "n", "function": "count"},
    {"name": "lo", "function": "min", "expression": "v"},
    {"name": "hi", "function": "max", "expression": "v"},
]


def bits(value: Any) -> Any:
    """A value with its floats as their bits (NaN payloads and -0.0 compared exactly)."""
    if type(value) is float:
        return ("f", struct.pack(">d", value).hex())
    return (type(value).__name__, value)


def order_key(value: Any) -> tuple[Any, ...]:
    """The documented order, written independently of ``settle``: numbers (exact value,
    then -0.0 < other floats < ints) below strings (code points)."""
    if type(value) is str:
        return (1, value)
    if type(value) is float:
        if math.isinf(value):
            return (0, 1 if value > 0 else -1, 0, 1)
        rank = 0 if value == 0.0 and math.copysign(1.0, value) < 0.0 else 1
    else:
        rank = 2
    return (0, 0, Fraction(value), rank)


def in_order(value: Any) -> bool:
    return type(value) in (int, float, str)


def reference(values: list[Any], is_min: bool) -> Any:
    taken = [v for v in values if in_order(v)]
    if not taken:
        return None
    if any(type(v) is float and math.isnan(v) for v in taken):
        return math.nan  # always the same NaN (0x7ff8000000000000)
    return (min if is_min else max)(taken, key=order_key)


def plan_for(hopping: bool) -> WindowPlan:
    spec: dict[str, Any] = {
        "keyBy": "k",
        "size": "2s" if hopping else "1s",
        "eventTime": {"field": "ts"},
        "allowedLateness": "1000000s",  # no record is late: only the values decide
        "aggregates": AGGREGATES,
    }
    if hopping:
        spec.update(type="hopping", slide="1s")
    return WindowPlan.compile(WindowSpec.model_validate(spec))


def restored(windows: PartitionWindows) -> PartitionWindows:
    """The state through a checkpoint file and back, as a restart reads it."""
    checkpoint = Checkpoint("in", 0, 7, windows.to_json(), written_at=1.0, fingerprint="f")
    state = checkpointing.decode(checkpointing.encode(checkpoint)).state
    return PartitionWindows.from_json(windows.plan, state, base=True)


ordered_values = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**80), 2**80),
    st.sampled_from([0, 1, 2**64, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 5e-324, math.inf, -math.inf, math.nan, NEGATIVE_NAN]),
    st.text(max_size=3),
    st.sampled_from(["", "0", "1", "a", "é", "\U0001f600", "-1"]),
)
outside = st.sampled_from([True, False, b"x", b"", [1], ["a"], {"a": 1}])
mixed = st.one_of(ordered_values, ordered_values, ordered_values, outside, st.none())


def rows_of(values: list[Any], keys: list[str]) -> list[dict[str, Any]]:
    return [
        {"k": k, "ts": i % 1000, "v": v} for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(mixed, max_size=30),
    hopping=st.booleans(),
    data=st.data(),
)
def test_any_order_batching_and_restore_give_the_reference_min_and_max(
    values: list[Any], hopping: bool, data: st.DataObject
) -> None:
    plan = plan_for(hopping)
    keys = data.draw(st.lists(st.sampled_from(["a", "b"]), min_size=len(values)))[: len(values)]
    rows = rows_of(values, keys)
    order = data.draw(st.permutations(range(len(rows))))
    windows = PartitionWindows(plan)
    refused: list[int] = []
    i = 0
    while i < len(order):
        n = data.draw(st.integers(1, 8), label="batch")
        errors, late = windows.fold([(rows[j], j) for j in order[i : i + n]], lambda _: None)
        assert late == []
        refused += [source for source, _ in errors]
        if data.draw(st.booleans(), label="restart"):
            windows = restored(windows)
        i += n
    # Refused by the value alone: exactly the values the order leaves out, in any order.
    assert sorted(refused) == [j for j, v in enumerate(values) if not (in_order(v) or v is None)]
    results = {(r["key"], r["window_start"]): r for _, r in windows.close(everything=True)}
    for key in ("a", "b"):
        kept = [
            v for k, v in zip(keys, values, strict=True) if k == key and (in_order(v) or v is None)
        ]
        starts = ["1970-01-01T00:00:00.000Z"]
        if hopping:
            starts.insert(0, "1969-12-31T23:59:59.000Z")
        for start in starts:
            row = results.pop((key, start), None)
            if not kept:
                assert row is None
                continue
            assert row is not None
            assert row["n"] == len(kept)
            assert bits(row["lo"]) == bits(reference(kept, True))
            assert bits(row["hi"]) == bits(reference(kept, False))
    assert results == {}


# What JSON can carry to the fused function: msgspec reads int64, finite floats, strings,
# booleans and null; containers and bigger integers take the slow lane (orjson). NaN and the
# infinities come from the expression (float('nan'), ...), a failing one (float('a')) refuses.
EXPRESSION = "float(v) if t else v"
json_values = st.one_of(
    st.sampled_from(["nan", "-nan", "inf", "-inf", "-0.0", "1e400", "2.5"]),
    st.integers(-5, 5),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 0, 1]),
    st.text(max_size=3),
    st.sampled_from(["", "0", "a", "é"]),
    st.sampled_from([True, False, None, [1], {"a": "b"}]),
)


@pytest.mark.parametrize("hopping", [False, True])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(json_values, st.sampled_from([False, False, True])), max_size=25),
    data=st.data(),
)
def test_the_fused_and_generic_paths_give_the_reference_in_any_order(
    hopping: bool, rows: list[tuple[Any, bool]], data: st.DataObject
) -> None:
    window: dict[str, Any] = {
        "keyBy": "user",
        "size": "2s" if hopping else "1s",
        "eventTime": {"field": "ts"},
        "allowedLateness": "1000000s",
        "aggregates": [
            {"name": "n", "function": "count"},
            {"name": "lo", "function": "min", "expression": EXPRESSION},
            {"name": "hi", "function": "max", "expression": EXPRESSION},
        ],
    }
    if hopping:
        window.update(type="hopping", slide="1s")
    cfg = ProcessorConfig.model_validate({"steps": [{"window": window}]})
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    records = [{"user": "a", "ts": BASE + i, "v": v, "t": t} for i, (v, t) in enumerate(rows)]
    messages: list[SourceMessage] = [
        Msg(i, orjson.dumps(r), BASE, 1) for i, r in enumerate(records)
    ]
    # Each record's value as the expression gives it (orjson's decoding first: the same
    # record both paths read), or None when it fails.
    evaluate = compile_expression(EXPRESSION).function
    values: list[Any] = []
    failing: set[int] = set()
    for i, record in enumerate(records):
        try:
            values.append(evaluate(orjson.loads(orjson.dumps(record))))
        except Exception:  # the record's own error: refused on both paths
            values.append(None)
            failing.add(i)
    seed = data.draw(st.integers(0, 2**32))
    outcomes: list[tuple[list[int], list[Any]]] = []
    for path in ("fused", "generic"):
        shuffled = list(messages)
        random.Random(seed + (path == "generic")).shuffle(shuffled)  # another order per path
        state = PartitionWindows(plan)
        refused: list[int] = []
        i = 0
        while i < len(shuffled):
            n = data.draw(st.integers(1, 8), label="batch")
            batch = shuffled[i : i + n]
            if path == "fused":
                result = fused(batch, state)
            else:
                result = window_batch(decode_json, processor, state, batch)
            refused += [o for f in result.failures if (o := f.message.offset()) is not None]
            assert result.late == []
            i += n
        closed = [r for _, r in state.close(everything=True)]
        outcomes.append((sorted(refused), [(r["n"], bits(r["lo"]), bits(r["hi"])) for r in closed]))
    assert outcomes[0] == outcomes[1]
    kept = [v for i, v in enumerate(values) if i not in failing and (in_order(v) or v is None)]
    assert outcomes[0][0] == [
        i for i, v in enumerate(values) if i in failing or not (in_order(v) or v is None)
    ]
    expected = (len(kept), bits(reference(kept, True)), bits(reference(kept, False)))
    assert outcomes[0][1] == ([expected] * (2 if hopping else 1) if kept else [])


def test_a_restore_takes_only_values_of_the_order_and_the_one_nan() -> None:
    plan = plan_for(False)
    state = PartitionWindows.from_json(
        plan,
        {"v": 3, "maxEventMs": 5, "windows": [["a", 0, [2, {"f64": "fff8000000000001"}, "z"]]]},
    )
    [(_, row)] = state.close(everything=True)
    assert bits(row["lo"]) == bits(math.nan) and row["hi"] == "z"
    for bad in (True, [1], {"bytes": "eA=="}):
        with pytest.raises(ValueError, match="not a min/max value in window state"):
            PartitionWindows.from_json(
                plan, {"v": 3, "maxEventMs": 5, "windows": [["a", 0, [1, bad, None]]]}
            )
