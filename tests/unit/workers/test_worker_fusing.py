"""The fused batch function (workers/fusing.py) against the generic path and a naive reference.

For random pipelines of the fusable shape (filters, one tumbling or hopping window, every
event-time format, every aggregate) and random records — good ones, poison ones (invalid
JSON, not an object, wrong types, containers and huge integers in read fields, invalid
UTF-8 in an unread field, a missing value, strings and numbers for one min/max, sums beyond
64 bits, floats against integers beyond the float range computed by an expression) — cut
into random batches, the fused function must leave the same window state, dead-letter the
same records with the same errors in the same order, and count the same filtered and late
records as the generic stage-by-stage path (``processing.window_batch``) and as a naive
record-by-record reference. The states are compared as checkpoints (orjson, or the stdlib
for integers beyond 64 bits), which must also read back exactly.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import Checkpoint, decode, encode, fold_windows
from streamherd.workers.config import ProcessorConfig
from streamherd.workers.expressions import compile_expression
from streamherd.workers.fusing import fuse
from streamherd.workers.processing import (
    Processor,
    SourceMessage,
    WindowBatch,
    decode_json,
    kafka_timestamp,
    window_batch,
)
from streamherd.workers.values import canonical_key
from streamherd.workers.windowing import REFUSED, PartitionWindows, WindowPlan
from tests.unit.workers.sourcemessages import BASE, Msg, batch_paths


def config(
    filters: list[str],
    *,
    size: str = "10s",
    slide: str | None = None,
    lateness: str = "0s",
    event_time: dict[str, Any] | None = None,
    aggregates: list[dict[str, Any]] | None = None,
    key: str = "user",
) -> ProcessorConfig:
    window: dict[str, Any] = {
        "keyBy": key,
        "size": size,
        "allowedLateness": lateness,
        "eventTime": event_time if event_time is not None else {"field": "ts"},
        "aggregates": aggregates
        or [
            {"name": "n", "function": "count"},
            {"name": "total", "function": "sum", "expression": "bytes"},
        ],
    }
    if slide is not None:
        window["type"] = "hopping"
        window["slide"] = slide
    steps: list[dict[str, Any]] = [{"filter": f} for f in filters]
    return ProcessorConfig.model_validate({"steps": [*steps, {"window": window}]})


def summary(batch: WindowBatch) -> tuple[Any, ...]:
    return (
        [
            (f.message.offset(), f.reason, type(f.error).__name__, str(f.error))
            for f in batch.failures
        ],
        [(m.offset(), t) for m, t in batch.late],
        batch.filtered,
    )


def naive(
    cfg: ProcessorConfig, plan: WindowPlan, state: PartitionWindows, messages: list[SourceMessage]
) -> tuple[Any, ...]:
    """Record by record: orjson, each filter, then key/time/values and ``add()``."""
    filters = [compile_expression(s.filter).function for s in cfg.steps if s.filter]
    decode_f: list[Any] = []
    stage_f: list[list[Any]] = [[] for _ in filters]
    errors: list[Any] = []
    late: list[Any] = []
    filtered = 0
    for m in messages:
        try:
            # A tombstone's None too, as decode_json does: orjson's own TypeError for it.
            record = orjson.loads(m.value())  # type: ignore[arg-type]
            if type(record) is not dict:
                raise ValueError(f"not a JSON object: {type(record).__name__}")
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            decode_f.append((m.offset(), "decode", type(error).__name__, str(error)))
            continue
        dropped = False
        for i, predicate in enumerate(filters):
            try:
                keep = predicate(record)
            except Exception as error:
                stage_f[i].append((m.offset(), "expression", type(error).__name__, str(error)))
                dropped = True
                break
            if not keep:
                filtered += 1
                dropped = True
                break
        if dropped:
            continue
        try:
            key = plan.key(record)
            if type(key) is not str:
                key = canonical_key(key)
            event_ms = plan.event_time(record, kafka_timestamp(m) if plan.kafka_time else None)
            values = plan.values(record)
        except Exception as error:
            errors.append((m.offset(), "expression", type(error).__name__, str(error)))
            continue
        try:
            if not state.add(key, event_ms, values):
                late.append((m.offset(), event_ms))
        except REFUSED as error:  # a value the window cannot fold (nothing changed)
            errors.append((m.offset(), "expression", type(error).__name__, str(error)))
    failures = decode_f + [f for stage in stage_f for f in stage] + errors
    return failures, late, filtered


def run_all(cfg: ProcessorConfig, messages: list[SourceMessage], cuts: list[int]) -> None:
    """Feed the same batches to fused, generic and naive; compare after every batch."""
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    states = [PartitionWindows(plan) for _ in range(3)]
    mirrors: list[dict[bytes, list[Any]]] = [{}, {}, {}]
    start = 0
    for cut in [*cuts, len(messages)]:
        batch = messages[start : start + cut] if cut else []
        start += len(batch)
        if not batch:
            continue
        got_fused = summary(fused(batch, states[0]))
        got_generic = summary(window_batch(decode_json, processor, states[1], batch))
        got_naive = naive(cfg, plan, states[2], batch)
        assert got_fused == got_generic
        assert got_fused == got_naive
        closed = [s.close() for s in states]
        assert closed[0] == closed[1] == closed[2]
        # Each path tracks every window it changed or closed (decision 0095): the changes
        # applied to the last checkpoint's windows give the windows now.
        for s, mirror in zip(states, mirrors, strict=True):
            fold_windows(mirror, s.changes())
            assert mirror == fold_windows({}, s.to_json()["windows"])
            s.checkpointed()
        # As checkpoints: orjson, or the stdlib when a sum went beyond 64 bits.
        dumps = [encode(Checkpoint("in", 1, start, s.to_json(), written_at=1.0)) for s in states]
        assert dumps[0] == dumps[1] == dumps[2]
        restored = PartitionWindows.from_json(plan, decode(dumps[0]).state)
        assert restored.to_json() == states[0].to_json()  # exactly: ints stay ints
        assert restored.max_event_ms == states[0].max_event_ms
        if start >= len(messages):
            break


def test_fuse_only_the_fusable_shape() -> None:
    plan_cfg = config(["status == 200"])
    plan = Processor.compile(plan_cfg).window
    assert plan is not None
    fused = fuse(plan_cfg, plan)
    assert fused is not None
    assert fused.fields == ("bytes", "status", "ts", "user")
    assert "rec.f1 == 200" in fused.source  # the filter is inlined, not called
    with_map = ProcessorConfig.model_validate(
        {"steps": [{"map": {"set": {"x": "1"}}}, *plan_cfg.model_dump(by_alias=True)["steps"]]}
    )
    assert fuse(with_map, plan) is None
    with_function = plan_cfg.model_copy(
        update={"function": {"callable": "tests.unit.workers.userfuncs:tag"}}
    )
    assert fuse(with_function, plan) is None


POISON = [
    b"{not json",
    b"[1, 2]",
    b"null",
    b"",
    b'{"user": "u1", "ts": 1767225600001, "bytes": "many", "status": 200}',  # sum of a string
    b'{"user": ["a"], "ts": 1767225600002, "bytes": 1, "status": 200}',  # array: composite key
    b'{"user": {"x": 1}, "ts": 1767225600003, "bytes": 1, "status": 200}',  # dict key
    b'{"user": "u1", "ts": "soon", "bytes": 1, "status": 200}',  # bad event time
    b'{"user": "u1", "bytes": 1, "status": 200}',  # no event time
    b'{"user": "u1", "ts": 1767225600004, "bytes": 1, "status": "x"}',  # filter on a string
    b'{"user": "u2", "ts": 1767225600005, "bytes": 123456789012345678901234567890, '
    b'"status": 200}',  # orjson: a float beyond 64 bits
    b'{"user": "u2", "ts": 1767225600006, "bytes": 18446744073709551615, "status": 200}',
    b'{"user": "u2", "ts": 1767225600007, "bytes": 1, "status": 200, "page": "\xff"}',
    b'{"user": "u\xc3\xa9", "ts": 1767225600008, "bytes": 2, "status": 200}',  # valid UTF-8
    b'{"user": "u3", "ts": 1767225600009, "bytes": 3.5, "status": 200, "status": 404}',
    b'{"user": "u3", "ts": 1767225600010, "bytes": true, "status": 200}',  # bool is no number
    b'{"user": "u3", "ts": 1767225600011.7, "bytes": 1, "status": 200}',  # float ms
    b'{"user": "u3", "ts": 1767225600012, "bytes": 1, "status": 200, "x": ['
    + b"[" * 1010
    + b"]" * 1010
    + b"]}",  # deep nesting in an unread field
    b'{"user": "u4", "ts": 1767225600013, "bytes": 1, "status": 200}   ',
    b'{"user": "u4", "ts": 1767225590000, "bytes": 1, "status": 200}',  # late by 10 s
    None,  # a tombstone
]


@pytest.mark.parametrize("cuts", [[100], [1], [3, 2, 7]])
def test_poison_records_are_routed_like_the_generic_path(cuts: list[int]) -> None:
    good = [
        orjson.dumps({"user": f"u{i % 3}", "ts": BASE + i * 700, "bytes": i, "status": 200})
        for i in range(20)
    ]
    values = [v for pair in zip(good, POISON, strict=False) for v in pair] + good[len(POISON) :]
    messages: list[SourceMessage] = [Msg(i, v) for i, v in enumerate(values)]
    run_all(config(["status == 200"]), messages, cuts)
    run_all(config(["status == 200"], lateness="5s", slide="2s"), messages, cuts)
    run_all(MIN_MAX, messages, cuts)  # "many" and true against numbers
    run_all(MIN_MAX.model_copy(update={"steps": MIN_MAX.steps[1:]}), messages, cuts)


MIN_MAX_AGGREGATES = [
    {"name": "n", "function": "count"},
    {"name": "lo", "function": "min", "expression": "bytes"},
    {"name": "hi", "function": "max", "expression": "bytes"},
    {"name": "s", "function": "sum", "expression": "status"},
]
MIN_MAX = config(["status == 200"], aggregates=MIN_MAX_AGGREGATES)


@pytest.mark.parametrize("hopping", [False, True])
def test_min_max_of_a_string_and_numbers_is_dead_lettered_and_changes_nothing(
    hopping: bool,
) -> None:
    # Hopping 10 s / 5 s, lateness 5 s: the string record at +3 s belongs to a new window
    # [-5 s, 5 s) and to [0, 10 s), which holds numbers: refused before the new one opens.
    cfg = (
        config([], slide="5s", lateness="5s", aggregates=MIN_MAX_AGGREGATES) if hopping else MIN_MAX
    )
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    good = Msg(0, orjson.dumps({"user": "a", "ts": BASE + 7000, "bytes": 5, "status": 200}))
    mixed: list[SourceMessage] = [
        Msg(1, orjson.dumps({"user": "a", "ts": BASE + 3000, "bytes": "x", "status": 200})),
        Msg(2, orjson.dumps({"user": "a", "ts": BASE + 9000, "bytes": "y", "status": 200})),
    ]
    later = Msg(3, orjson.dumps({"user": "a", "ts": BASE + 8000, "bytes": 2, "status": 200}))
    for batch_of in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        batch_of([good], state)
        before = state.to_json()
        batch = batch_of(mixed, state)
        assert summary(batch) == (
            [
                (
                    i,
                    "expression",
                    "TypeError",
                    "aggregate 'lo' (min) cannot compare str with the int this window holds",
                )
                for i in (1, 2)
            ],
            [],
            0,
        )
        assert state.to_json() == before  # no window, count, sum or watermark moved
        assert summary(batch_of([later], state)) == ([], [], 0)
        assert state.max_event_ms == BASE + 8000
        rows = [r for _, r in state.close(everything=True)]
        assert [(r["n"], r["lo"], r["hi"], r["s"]) for r in rows] == (
            [(2, 2, 5, 400)] * 2 if hopping else [(2, 2, 5, 400)]
        )


# An integer beyond the float range (about 1.8e308) cannot come from JSON (orjson reads a
# long integer as a float, or refuses it as infinity), but an expression can compute one:
# here 5 * int(1e300) * 1e8, about 5e308, as an exact int. Integral values only: a float
# times 1e308 is a float infinity, which is no error (and which a checkpoint cannot hold:
# orjson writes null), not what these tests are about.
HUGE = "int(bytes) * int(1e300) * 100000000 if bytes > 4 and int(bytes) == bytes else bytes"
FIVE_E308 = 5 * int(1e300) * 100000000


# --------------------------------------------------------------------------- property

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
field_value = st.one_of(
    scalar, st.lists(scalar, max_size=2), st.dictionaries(st.text(max_size=2), scalar, max_size=2)
)


def json_bytes(value: Any) -> bytes:
    # The stdlib writes integers of any size (orjson refuses those beyond 64 bits).
    return json.dumps(value, ensure_ascii=False).encode()


# Mostly small ints; some floats; some strings (a min/max then compares a string with a
# number: the record is dead-lettered, the window intact) and some near +-2**63: sums beyond
# 64 bits (orjson writes -2**63 .. 2**64 - 1).
bytes_value = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-1000, 1000),
    st.integers(-1000, 1000),
    st.floats(-1000, 1000),
    st.sampled_from([1.5, -0.25, 120.0]),
    st.sampled_from([7, 150, 150, 400]),  # see HUGE_MIX (twice: mixes in one window)
    st.sampled_from([7, 150, 150, 400]),
    st.sampled_from(["a", "zz", "", "5"]),
    st.integers(2**62, 2**63 - 1),
    st.integers(-(2**63), -(2**62)),
)


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=30))
    if kind == 2:
        return json_bytes(draw(field_value))  # a JSON value that is not a record (mostly)
    record: dict[str, Any] = {
        "user": draw(st.one_of(st.sampled_from(["a", "b", "c", "é"]), field_value))
        if kind == 3
        else draw(st.sampled_from(["a", "b", "c", "é"])),
        "ts": BASE + draw(st.integers(0, 60_000)) if kind != 4 else draw(field_value),
        "bytes": draw(bytes_value) if kind != 5 else draw(field_value),
        "status": draw(st.sampled_from([200, 200, 200, 404])) if kind != 6 else draw(scalar),
    }
    if kind == 7:
        del record["ts"]
    if draw(st.booleans()):
        record["extra"] = draw(field_value)
    raw = json_bytes(record)
    if kind == 8:  # invalid UTF-8 or a stray byte somewhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"}", b",", b" "])) + raw[at:]
    return raw


# Integers beyond the float range (HUGE: from bytes 5 on) and just within it (bytes 100 to
# 179: two make an avg's total leave the float range; 180 on: beyond it), mixed with floats.
NEAR_MAX = "int(bytes) * int(1e300) * 1000000 if bytes >= 100 and int(bytes) == bytes else bytes"
HUGE_MIX = [
    {"name": "n", "function": "count"},
    {"name": "lo", "function": "min", "expression": "bytes"},
    {"name": "s", "function": "sum", "expression": HUGE},
    {"name": "mean", "function": "avg", "expression": NEAR_MAX},
    {"name": "s2", "function": "sum", "expression": NEAR_MAX},
]

PIPELINES = [
    config(["status == 200"]),
    config(["status == 200", "bytes > 0"], lateness="3s"),
    config([], slide="5s", lateness="2s"),
    config(
        ["status != 404"],
        event_time={"field": "ts / 1000", "format": "epochSeconds"},
        aggregates=[
            {"name": "lo", "function": "min", "expression": "bytes"},
            {"name": "hi", "function": "max", "expression": "bytes * 2"},
            {"name": "mean", "function": "avg", "expression": "bytes"},
        ],
        key="user + ':' + str(status)",
    ),
    config(["coalesce(bytes, 0) >= 0"], event_time={}, size="20s", slide="10s"),
    config(  # min/max of strings and numbers; two comparisons per record; a sum after them
        ["status == 200"],
        aggregates=[
            {"name": "n", "function": "count"},
            {"name": "lo", "function": "min", "expression": "bytes"},
            {"name": "hi", "function": "max", "expression": "bytes"},
            {"name": "s", "function": "sum", "expression": "status"},
            {"name": "top", "function": "max", "expression": "user"},
        ],
    ),
    config(
        [],
        slide="2s",
        lateness="3s",
        aggregates=[
            {"name": "hi", "function": "max", "expression": "bytes"},
            {"name": "lo", "function": "min", "expression": "coalesce(extra, 0)"},
        ],
    ),
    config(["status == 200"], aggregates=HUGE_MIX),
    config(  # the sum is the last aggregate that can refuse; the avg of a field read as is
        [],
        slide="5s",
        lateness="2s",
        aggregates=[
            {"name": "hi", "function": "max", "expression": "bytes"},
            {"name": "mean", "function": "avg", "expression": "bytes"},
            {"name": "s", "function": "sum", "expression": HUGE},
            {"name": "n", "function": "count"},
        ],
    ),
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    values=st.lists(record_bytes(), max_size=40),
    times=st.lists(st.integers(-5, 80_000), min_size=40, max_size=40),
    pipeline=st.integers(0, len(PIPELINES) - 1),
    cuts=st.lists(st.integers(1, 15), max_size=4),
)
def test_fused_equals_generic_equals_naive(
    values: list[bytes | None], times: list[int], pipeline: int, cuts: list[int]
) -> None:
    # Kafka timestamps (used by the pipeline without an event-time field), some missing.
    messages: list[SourceMessage] = [
        Msg(i, v, BASE + t if t >= 0 else -1)
        for i, (v, t) in enumerate(zip(values, times, strict=False))
    ]
    run_all(PIPELINES[pipeline], messages, cuts)


def _fold_each_way(cfg: ProcessorConfig, records: list[dict[str, Any]]) -> Any:
    """Fused, then generic (must agree): the batch summary, the watermark, the closed rows."""
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    messages: list[SourceMessage] = [Msg(i, orjson.dumps(r)) for i, r in enumerate(records)]
    out = []
    for batch_of in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        got = summary(batch_of(messages, state))
        rows = [r for _, r in state.close(everything=True)]
        out.append((got, state.max_event_ms, rows))
    assert out[0] == out[1]
    return out[0]


@pytest.mark.parametrize("hopping", [False, True])
def test_a_float_and_an_integer_beyond_the_float_range_add_up_exactly(hopping: bool) -> None:
    # 1.5 + 5e308 (an int) has no float sum in Python; an exact total has one (decision
    # 0130): nothing is refused, whatever the order, and the float result is the exact
    # total rounded once (beyond the float range: inf, as IEEE 754 rounds it).
    aggregates = [
        {"name": "n", "function": "count"},
        {"name": "lo", "function": "min", "expression": "bytes"},
        {"name": "s", "function": "sum", "expression": HUGE},
        {"name": "mean", "function": "avg", "expression": "bytes"},
    ]
    cfg = (
        config([], aggregates=aggregates, slide="5s", lateness="5s")
        if hopping
        else config([], aggregates=aggregates)
    )
    records = [
        {"user": "a", "ts": BASE + 6000, "bytes": 1.5},
        {"user": "a", "ts": BASE + 9000, "bytes": 5},  # sum: 1.5 + 5e308
        {"user": "a", "ts": BASE + 8000, "bytes": 2.0},
    ]
    (failures, late, filtered), max_ms, rows = _fold_each_way(cfg, records)
    assert (failures, late, filtered, max_ms) == ([], [], 0, BASE + 9000)
    expected = (3, 1.5, math.inf, 8.5 / 3)
    assert [(r["n"], r["lo"], r["s"], r["mean"]) for r in rows] == [expected] * (1 + hopping)


def test_a_sum_beyond_the_float_range_stays_an_exact_integer_until_a_float_comes() -> None:
    cfg = config([], aggregates=[{"name": "s", "function": "sum", "expression": HUGE}])
    ints = [{"user": "a", "ts": BASE + 6000 + i, "bytes": b} for i, b in enumerate([5, 3])]
    (failures, _, _), _, rows = _fold_each_way(cfg, ints)
    assert failures == []
    assert [r["s"] for r in rows] == [FIVE_E308 + 3]  # an int, exact
    # 5e308 + 1.5 - 5e308: the float total is exact, 1.5 (a running float would be inf).
    mixed = [{"user": "a", "ts": BASE + 6000 + i, "bytes": b} for i, b in enumerate([5, 1.5, -5])]
    cfg = config(
        [],
        aggregates=[
            {
                "name": "s",
                "function": "sum",
                "expression": "int(bytes) * int(1e300) * 100000000 if int(bytes) == bytes "
                "else bytes",
            }
        ],
    )
    (failures, _, _), _, rows = _fold_each_way(cfg, mixed)
    assert failures == []
    assert [r["s"] for r in rows] == [1.5]


def test_an_avg_refuses_an_integer_beyond_the_float_range() -> None:
    # Its result is a float: 5e308 / 1 would raise OverflowError when the window closes
    # (and again after every restart from the checkpoint), so the record is refused.
    cfg = config(
        [],
        aggregates=[
            {"name": "n", "function": "count"},
            {"name": "mean", "function": "avg", "expression": HUGE},
        ],
    )
    records = [
        {"user": "a", "ts": BASE + 6000, "bytes": 5},
        {"user": "a", "ts": BASE + 7000, "bytes": 3},
        {"user": "a", "ts": BASE + 8000, "bytes": -6},
    ]
    (failures, _, _), _, rows = _fold_each_way(cfg, records)
    assert failures == [
        (
            0,
            "expression",
            "OverflowError",
            "aggregate 'mean' (avg) takes numbers within the float range, "
            "got an integer of 1026 bits",
        )
    ]
    assert [(r["n"], r["mean"]) for r in rows] == [(2, -1.5)]


def test_an_avg_whose_total_left_the_float_range_is_exact() -> None:
    # Two values of about 1e308 (each within the float range) make a total of 2e308; a float
    # adds to it exactly, and the mean (within the float range) is rounded once.
    near_max = "bytes * int(1e300) * 1000000 if bytes > 50 else bytes"
    cfg = config(
        [],
        aggregates=[
            {"name": "n", "function": "count"},
            {"name": "mean", "function": "avg", "expression": near_max},
        ],
    )
    records = [
        {"user": "a", "ts": BASE + 6000 + i, "bytes": b} for i, b in enumerate([100, 100, 1.5, 100])
    ]
    (failures, _, _), _, rows = _fold_each_way(cfg, records)
    assert failures == []
    value = 100 * int(1e300) * 1000000
    assert [(r["n"], r["mean"]) for r in rows] == [(4, float((3 * value + Fraction(3, 2)) / 4))]


@pytest.mark.parametrize(
    ("event_time", "bad"),
    [
        ({"field": "ts"}, {"ts": 9_000_000_000_000_000_000}),  # year 285 million
        ({"field": "ts"}, {"ts": -(2**63)}),
        ({"field": "ts"}, {"ts": 253_402_300_799_999}),  # 9999-12-31: its window ends after
        ({"field": "ts", "format": "epochSeconds"}, {"ts": 1e15}),
        ({"field": "ts", "format": "epochSeconds"}, {"ts": 1e300}),
        ({"field": "ts", "format": "iso8601"}, {"ts": "0001-01-01T00:00:01"}),
        ({}, {"kafka": 2**63 - 1}),  # a producer may set any int64 timestamp
    ],
)
def test_an_event_time_beyond_the_years_1_to_9999_is_dead_lettered(
    event_time: dict[str, Any], bad: dict[str, Any]
) -> None:
    # Its window's start or end cannot be written as ISO 8601: closing it would fail (and
    # fail again after every restart from the checkpoint holding it).
    cfg = config([], event_time=event_time, aggregates=[{"name": "n", "function": "count"}])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    fmt = event_time.get("format", "epochMillis")
    good = {"epochMillis": BASE, "epochSeconds": BASE / 1000, "iso8601": "2026-01-01T00:00:00"}
    values = [{"user": "a", "ts": bad.get("ts", good[fmt])}, {"user": "a", "ts": good[fmt]}]
    times = [bad.get("kafka", BASE), BASE]
    messages: list[SourceMessage] = [
        Msg(i, orjson.dumps(v), t) for i, (v, t) in enumerate(zip(values, times, strict=True))
    ]
    results = []
    for batch_of in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        failures, late, filtered = summary(batch_of(messages, state))
        rows = [r for _, r in state.close(everything=True)]
        results.append((failures, late, filtered, rows))
        assert [(o, reason, kind) for o, reason, kind, _ in failures] == [
            (0, "expression", "EventTimeError")
        ]
        assert "beyond the year" in failures[0][3] or "is not epochSeconds" in failures[0][3]
        assert [(r["n"], r["window_start"]) for r in rows] == [(1, "2026-01-01T00:00:00.000Z")]
    assert results[0] == results[1]
