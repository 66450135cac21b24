"""The fused batch function (workers/fusing.py) against the generic path and a naive reference.

For random pipelines of the fusable shape (filters, one tumbling or hopping window, every
event-time format, every aggregate) and random records — good ones, poison ones (invalid
JSON, not an object, wrong types, containers and huge integers in read fields, invalid
UTF-8 in an unread field, a missing value, strings and numbers for one min/max (one order),
sums beyond 64 bits, floats against integers beyond the float range computed by an
expression) — cut into random batches, the fused function must leave the same window state,
dead-letter the same records with the same errors in the same order, and count the same
filtered and late records as the generic stage-by-stage path (``processing.window_batch``)
and as a naive record-by-record reference. The states are compared as checkpoints (orjson,
or the stdlib for integers beyond 64 bits), which must also read back exactly.

The same for the shapes fused later (decision 0158): random pipelines of filter and map
steps (set, select, rename of computed and decoded fields) in any order, tumbling and
hopping windows, with no user function or a record- or batch-mode one (dropping,
duplicating, raising, returning values JSON cannot hold), against the generic path; and a
sweep of every map step and filter with every user function, window and aggregate set.
The same batches also cross a repartition hop twice: the downstream batch fold of format
3 (workers/rekeying.py) must leave the state, the closed windows and the dead letters of
format 1's record-by-record generic fold, bit for bit.
"""

from __future__ import annotations

import json
import math
import struct
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import Checkpoint, decode, encode, fold_windows
from streamherd.workers.config import ProcessorConfig, UserFunction
from streamherd.workers.expressions import compile_expression
from streamherd.workers.fusing import fuse
from streamherd.workers.processing import (
    Failure,
    Processor,
    SourceMessage,
    WindowBatch,
    decode_json,
    kafka_timestamp,
    window_batch,
)
from streamherd.workers.rekeying import fold_hop, rekey
from streamherd.workers.repartitioning import (
    WATERMARK_HEADER,
    UpstreamClock,
    close_windows,
    encode_hop,
    fold_downstream,
    watermark_header,
)
from streamherd.workers.values import canonical_key
from streamherd.workers.windowing import REFUSED, PartitionWindows, WindowPlan
from tests.unit.workers.hopmessages import Msg as HopMsg
from tests.unit.workers.hopmessages import format_1
from tests.unit.workers.sourcemessages import BASE, Msg, batch_paths
from tests.unit.workers.test_worker_exact_results import bits

HOP_PLAN = "h" * 32  # a plan id: layout and detail (rekeying.hop_plan)


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
        if far_ahead(plan, event_ms, state.max_event_ms, kafka_timestamp(m)):
            refused = plan.too_far_ahead(event_ms, state.max_event_ms, kafka_timestamp(m))
            assert refused is not None  # the engine's judgement is this model's
            errors.append((m.offset(), "expression", type(refused).__name__, str(refused)))
            continue
        try:
            if not state.add(key, event_ms, values):
                late.append((m.offset(), event_ms))
        except REFUSED as error:  # a value the window cannot fold (nothing changed)
            errors.append((m.offset(), "expression", type(error).__name__, str(error)))
    failures = decode_f + [f for stage in stage_f for f in stage] + errors
    return failures, late, filtered


def far_ahead(plan: WindowPlan, event_ms: int, top: int | None, kafka_ms: int | None) -> bool:
    """The model of eventTime.maxAhead: more than it ahead of both the partition's largest
    event time (when it has one) and the record's Kafka timestamp (when it has one)."""
    limit = plan.ahead_ms
    return (
        kafka_ms is not None
        and kafka_ms > 0
        and event_ms - kafka_ms > limit
        and (top is None or event_ms - top > limit)  # the first: its timestamp alone
    )


class Hop:
    """The window behind a repartition hop (one source partition, one repartition
    partition), fed each batch twice: format 3 (``rekey``, then ``fold_hop``, the batch fold)
    and format 1 (the JSON record and its headers, then ``fold_downstream``, record by
    record through the generic path). Both must leave the same state and dead letters.

    Only while no source record fans out to several records: format 1 names a record by its
    source offset alone, so it keeps one of them (format 3 keeps each, by its place in the
    fan-out; test_worker_repartition_parity.py proves that against the unpartitioned
    window). The first fan-out ends the comparison for the rest of the run."""

    def __init__(self, plan: WindowPlan) -> None:
        known = frozenset({("src", 1)})
        self.plan = plan
        self.ours = (PartitionWindows(plan), UpstreamClock(known=known))
        self.reference = (PartitionWindows(plan), UpstreamClock(known=known))
        self.top: int | None = None
        self.comparable = True

    def batch(self, processor: Processor, batch: list[SourceMessage], close: bool) -> None:
        if not self.comparable:
            return
        decoded: list[Failure] = []
        items = processor.run(decode_json(batch, decoded), decoded)
        offsets = [m.offset() for _, m in items]
        if len(offsets) != len(set(offsets)):  # a fan-out: format 1 cannot carry it
            self.comparable = False
            return
        # Format 1 cannot carry a record nested deeper than its JSON encoder goes (it is
        # dead-lettered upstream); format 3 carries its values: compared on the others.
        items = [item for item in items if carried_by_format_1(item[0])]
        dead: list[list[Failure]] = [list(decoded), list(decoded)]
        rows, top, _ = rekey(
            self.plan,
            items,
            plan_id=HOP_PLAN,
            topic="src",
            partition=1,
            max_event_ms=self.top,
            failures=dead[0],
            partitions=1,
        )
        written, top1 = format_1(self.plan, items, partition=1, top=self.top, failures=dead[1])
        assert top == top1
        self.top = top
        last = batch[-1].offset()
        assert last is not None
        marker = HopMsg(b"", [(WATERMARK_HEADER, watermark_header("src", 1, last, top, close))])
        ours = [HopMsg(value, headers) for _, value, _, _, headers in rows]
        dead[0] += fold_hop(*self.ours, [*ours, marker], HOP_PLAN)[0]
        dead[1] += fold_downstream(*self.reference, [*(m for _, m in written), marker])[0]
        assert {hop_failure(f) for f in dead[0]} == {hop_failure(f) for f in dead[1]}
        assert len(dead[0]) == len(dead[1])
        for (windows, _), (again, _) in [(self.ours, self.reference)]:
            assert bits(list(windows.windows.items())) == bits(list(again.windows.items()))
            assert windows.changed == again.changed
        closed = [close_windows(*self.ours), close_windows(*self.reference)]
        assert bits(closed[0]) == bits(closed[1])
        for windows, clock in (self.ours, self.reference):  # as the engine does after a batch
            level = clock.closing_level()
            windows.max_event_ms = level if type(level) is int else None
        assert bits(self.ours[0].to_json()) == bits(self.reference[0].to_json())
        assert self.ours[1].to_json() == self.reference[1].to_json()


def carried_by_format_1(record: Any) -> bool:
    try:
        encode_hop(record)
    except RecursionError:
        return False
    return True


def hop_failure(f: Failure) -> tuple[Any, ...]:
    return (f.message.offset(), f.reason, type(f.error).__name__, str(f.error))


def run_all(cfg: ProcessorConfig, messages: list[SourceMessage], cuts: list[int]) -> None:
    """Feed the same batches to fused, generic and naive (which knows filters, not map steps
    or user functions); compare after every batch. And to the repartition hop's two formats
    (:class:`Hop`), compared with each other."""
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    with_naive = cfg.function is None and all(s.map is None for s in cfg.steps)
    states = [PartitionWindows(plan) for _ in range(3 if with_naive else 2)]
    mirrors: list[dict[bytes, list[Any]]] = [{} for _ in states]
    hop = Hop(plan)
    start = 0
    for n, cut in enumerate([*cuts, len(messages)]):
        batch = messages[start : start + cut] if cut else []
        start += len(batch)
        if not batch:
            continue
        hop.batch(processor, batch, close=n % 2 == 1)  # idle now and then: all windows close
        got_fused = summary(fused(batch, states[0]))
        got_generic = summary(window_batch(decode_json, processor, states[1], batch))
        assert got_fused == got_generic
        if with_naive:
            assert got_fused == naive(cfg, plan, states[2], batch)
        closed = [s.close() for s in states]
        assert all(c == closed[0] for c in closed)
        # Each path tracks every window it changed or closed (decision 0095): the changes
        # applied to the last checkpoint's windows give the windows now.
        for s, mirror in zip(states, mirrors, strict=True):
            fold_windows(mirror, s.changes())
            assert mirror == fold_windows({}, s.to_json()["windows"])
            s.checkpointed()
        # As checkpoints: orjson, or the stdlib when a sum went beyond 64 bits.
        dumps = [encode(Checkpoint("in", 1, start, s.to_json(), written_at=1.0)) for s in states]
        assert all(d == dumps[0] for d in dumps)
        restored = PartitionWindows.from_json(plan, decode(dumps[0]).state)
        assert restored.to_json() == states[0].to_json()  # exactly: ints stay ints
        assert restored.max_event_ms == states[0].max_event_ms
        if start >= len(messages):
            break


def test_fuse_every_pipeline_with_a_window() -> None:
    plan_cfg = config(["status == 200"])
    plan = Processor.compile(plan_cfg).window
    assert plan is not None
    fused = fuse(plan_cfg, plan)
    assert fused is not None
    assert fused.records == "struct"
    assert fused.fields == ("bytes", "status", "ts", "user")
    assert "rec.f0 == 200" in fused.source  # the filter is inlined, not called
    steps = plan_cfg.model_dump(by_alias=True)["steps"]
    # A map step's computed fields are locals, read where the record would be.
    with_map = ProcessorConfig.model_validate(
        {"steps": [{"map": {"set": {"bytes": "bytes * 2"}, "select": ["user", "ts"]}}, *steps]}
    )
    fused = fuse(with_map, plan)
    assert fused is not None
    assert fused.records == "struct"
    assert fused.fields == ("bytes", "ts", "user")  # status: dropped by select, never read
    assert "m0_0 = __sh_mul(rec.f0, 2)" in fused.source
    # Renaming a decoded field depends on the record having it: records as dicts.
    with_rename = ProcessorConfig.model_validate(
        {"steps": [{"map": {"rename": {"bytes": "b"}}}, *steps]}
    )
    fused = fuse(with_rename, plan)
    assert fused is not None
    assert fused.records == "dict"
    for mode in ("batch", "record"):
        with_function = plan_cfg.model_copy(
            update={
                "function": UserFunction(
                    callable="tests.unit.workers.userfuncs:tag_batch", mode=mode
                )
            }
        )
        fused = fuse(with_function, plan)
        assert fused is not None
        assert fused.records == "dict"
    hopping = config([], slide="5s")
    hopping_plan = Processor.compile(hopping).window
    assert hopping_plan is not None
    fused = fuse(hopping, hopping_plan)
    assert fused is not None
    assert " add(key" not in fused.source  # folded inline (no min/max: nothing can refuse)
    stateless = ProcessorConfig.model_validate({"steps": [{"filter": "status == 200"}]})
    assert fuse(stateless, plan) is None


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
def test_min_max_of_strings_and_numbers_follow_one_order_on_both_paths(hopping: bool) -> None:
    # Hopping 10 s / 5 s, lateness 5 s: the string record at +3 s belongs to a new window
    # [-5 s, 5 s) and to [0, 10 s), which holds numbers. Numbers order below strings: a min
    # keeps the number, a max the string, whichever came first; nothing is refused.
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
    results = []
    for batch_of in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        batch_of([good], state)
        assert summary(batch_of(mixed, state)) == ([], [], 0)
        assert summary(batch_of([later], state)) == ([], [], 0)
        assert state.max_event_ms == BASE + 9000
        rows = [r for _, r in state.close(everything=True)]
        results.append(rows)
        # [0, 10 s) got 5, "x", "y" and 2; hopping: [-5 s, 5 s) only "x"; [5 s, 15 s) 5,
        # "y" and 2.
        expected: list[tuple[int, Any, Any, int]] = [(4, 2, "y", 800)]
        if hopping:
            expected = [(1, "x", "x", 200), (4, 2, "y", 800), (3, 2, "y", 600)]
        assert [(r["n"], r["lo"], r["hi"], r["s"]) for r in rows] == expected
    assert results[0] == results[1]


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


# Mostly small ints; some floats; some strings (a min/max then orders a string against a
# number: numbers below strings) and some near +-2**63: sums beyond 64 bits (orjson writes
# -2**63 .. 2**64 - 1).
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
def record_bytes(draw: st.DrawFn, flags: bool = False) -> bytes | None:
    """A record's value; ``flags``: also the fields the map steps and user functions of
    SHAPES read (a field to rename onto, the user functions' drop/twice/boom/wide/pair)."""
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
    if flags:
        if draw(st.booleans()):
            record["b2"] = draw(bytes_value)
        if draw(st.integers(0, 3)) == 0:
            record["kb"] = draw(field_value)
        if draw(st.integers(0, 3)) == 0:  # rare: drop and boom end a record's way early
            record[draw(st.sampled_from(FLAGS))] = draw(st.sampled_from([True, 1, 0, None]))
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
    # eventTime.maxAhead within the drawn times (records' 0-60 s, Kafka timestamps' -5 ms to
    # 80 s): a record far ahead of both its partition's maximum and its timestamp is refused.
    config(["status == 200"], event_time={"field": "ts", "maxAhead": "5s"}),
    config([], slide="5s", lateness="2s", event_time={"field": "ts", "maxAhead": "3s"}),
    config(
        ["bytes != 0"],
        event_time={"field": "ts / 1000", "format": "epochSeconds", "maxAhead": "10s"},
        lateness="4s",
    ),
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


# --------------------------------------------------------------------------- new shapes

# No "real" here: a float subclass's NaN cannot be compared with == nor checkpointed exactly
# (see test_a_float_subclass_nan_from_a_user_function_is_its_base_float_on_both_paths)
FLAGS = ["drop", "twice", "boom", "wide", "pair"]

FILTERS = ["status == 200", "bytes > 0", "coalesce(bytes, 0) >= 0", "kb != 3", "b2 == null"]
MAPS: list[dict[str, Any]] = [
    {"set": {"kb": "bytes / 1024"}},
    {"set": {"bytes": "bytes * 2", "user": "str(user) + '!'"}},
    {"select": ["user", "ts", "bytes", "status"]},
    {"select": ["user", "ts", "kb"]},  # bytes and status absent from here on
    {"set": {"u2": "user", "user": "b2"}, "rename": {"u2": "user"}},  # computed: a local
    {"set": {"b2": "bytes"}, "select": ["b2", "user", "ts"], "rename": {"b2": "bytes"}},
    {"rename": {"bytes": "b2"}},  # a decoded field: moves only if the record has it
    {"rename": {"b2": "bytes", "kb": "ts"}},
    {"set": {"ts": "ts + 1000"}},  # a string or null ts: the map step fails
    {"set": {"status": "coalesce(status, 200)", "bytes": "coalesce(b2, bytes)"}},
    {"select": []},  # nothing left: key and event time null, dead-lettered
    {"set": {"kb": "bytes"}, "rename": {"kb": "b2"}},  # kb (a sum reads it) gone again
    {"set": {"kb": "bytes"}, "rename": {"kb": "kb"}},  # onto itself: stays
]
FUNCTIONS = [
    None,
    UserFunction(callable="tests.unit.workers.userfuncs:tag", mode="record"),
    UserFunction(callable="tests.unit.workers.userfuncs:tag_batch", mode="batch"),
    UserFunction(callable="tests.unit.workers.userfuncs:widen_batch", mode="batch"),
]
AGGREGATE_SETS: list[list[dict[str, Any]]] = [
    [{"name": "n", "function": "count"}, {"name": "s", "function": "sum", "expression": "bytes"}],
    [
        {"name": "mean", "function": "avg", "expression": "bytes"},
        {"name": "s", "function": "sum", "expression": "kb"},
        {"name": "n", "function": "count"},
    ],
    [  # min/max: hopping windows go through PartitionWindows.add()
        {"name": "lo", "function": "min", "expression": "bytes"},
        {"name": "hi", "function": "max", "expression": "user"},
        {"name": "s", "function": "sum", "expression": "status"},
    ],
]
WINDOWS: list[dict[str, Any]] = [
    {},
    {"lateness": "3s"},
    {"slide": "5s"},
    {"slide": "2s", "lateness": "3s"},
    {"size": "20s", "slide": "10s", "event_time": {}},  # the Kafka timestamp
]


@st.composite
def shapes(draw: st.DrawFn) -> ProcessorConfig:
    """A pipeline of the newly fused shapes: filter and map steps in any order, tumbling or
    hopping windows, with or without a user function (record or batch mode)."""
    steps = draw(
        st.lists(
            st.one_of(
                st.sampled_from(FILTERS).map(lambda f: {"filter": f}),
                st.sampled_from(MAPS).map(lambda m: {"map": m}),
            ),
            max_size=3,
        )
    )
    window = draw(st.sampled_from(WINDOWS))
    base = config([], aggregates=draw(st.sampled_from(AGGREGATE_SETS)), **window)
    cfg = ProcessorConfig.model_validate(
        {"steps": [*steps, *base.model_dump(by_alias=True, exclude_none=True)["steps"]]}
    )
    function = draw(st.sampled_from(FUNCTIONS))
    return cfg if function is None else cfg.model_copy(update={"function": function})


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    cfg=shapes(),
    values=st.lists(record_bytes(flags=True), max_size=40),
    times=st.lists(st.integers(-5, 80_000), min_size=40, max_size=40),
    cuts=st.lists(st.integers(1, 15), max_size=4),
)
def test_fused_equals_generic_for_map_steps_hopping_windows_and_user_functions(
    cfg: ProcessorConfig, values: list[bytes | None], times: list[int], cuts: list[int]
) -> None:
    messages: list[SourceMessage] = [
        Msg(i, v, BASE + t if t >= 0 else -1)
        for i, (v, t) in enumerate(zip(values, times, strict=False))
    ]
    run_all(cfg, messages, cuts)


# Every field the shapes read, present and absent; every user-function flag; values JSON
# cannot hold (from widen_batch); a record exactly at a hopping window's closing edge (the
# window [+5 s, +15 s) closes when +15 s arrives: +12 s folds into [+10 s, +20 s) only).
SWEEP: list[dict[str, Any] | bytes] = [
    {"user": "a", "ts": BASE + 1000, "bytes": 5, "status": 200, "kb": 3},
    {"user": "a", "ts": BASE + 2000, "bytes": 7.5, "status": 200, "b2": 4},
    {"user": "b", "ts": BASE + 3000, "bytes": 2, "status": 200, "wide": True, "kb": 1.5},
    {"user": "b", "ts": BASE + 3500, "bytes": 2, "status": 200, "pair": True},
    {"user": "b", "ts": BASE + 3700, "bytes": 2, "status": 200, "real": True},
    {"user": "c", "ts": BASE + 4000, "bytes": 1, "status": 200, "twice": True, "b2": None},
    {"user": "c", "ts": BASE + 4500, "bytes": 1, "status": 404, "drop": True},
    {"user": 1, "ts": BASE + 5000, "b2": -3, "status": 200},
    {"user": "a", "ts": BASE + 6000, "bytes": "x", "status": 200},
    {"user": "a", "ts": "soon", "bytes": 3, "status": 200},
    {"user": "d", "ts": BASE + 15000, "bytes": 9, "status": 200, "kb": 2**70},
    {"user": "d", "ts": BASE + 12000, "bytes": 4, "status": 200},
    {"user": "d", "ts": BASE + 7000, "bytes": 4, "status": 200, "boom": True},
    {"ts": BASE + 16000, "bytes": 4, "status": 200, "b2": 6},
    b"[1]",
]


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f and f.callable.split(":")[1])
@pytest.mark.parametrize("step", range(len(MAPS) + len(FILTERS)))
def test_each_new_shape_folds_like_the_generic_path(
    step: int, function: UserFunction | None
) -> None:
    # Every map step (and filter) alone, with every user function, window and aggregate set:
    # the cases the random pipelines above reach only now and then.
    steps = [{"map": MAPS[step]} if step < len(MAPS) else {"filter": FILTERS[step - len(MAPS)]}]
    messages: list[SourceMessage] = [
        Msg(i, r if type(r) is bytes else json_bytes(r)) for i, r in enumerate(SWEEP)
    ]
    for window in WINDOWS:
        for aggregates in AGGREGATE_SETS:
            base = config([], aggregates=aggregates, **window)
            cfg = ProcessorConfig.model_validate(
                {"steps": [*steps, *base.model_dump(by_alias=True, exclude_none=True)["steps"]]}
            )
            cfg = cfg if function is None else cfg.model_copy(update={"function": function})
            for cuts in ([100], [1, 3, 2]):
                run_all(cfg, messages, cuts)


def _exact(value: Any) -> Any:
    """``value`` with every float (of any subclass) as its type and bits: NaN compares."""
    if isinstance(value, float):
        return (type(value).__name__, struct.pack(">d", value).hex())
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_exact(v) for v in value])
    return value


@pytest.mark.parametrize("slide", [None, "5s"])
def test_a_float_subclass_nan_from_a_user_function_is_its_base_float_on_both_paths(
    slide: str | None,
) -> None:
    # WindowPlan.prepare canonicalizes only a float's NaN (summing.is_nan); a float subclass
    # (numpy's float64 is one) is taken as its base float (AggregatePlan.check, as the
    # repartition hop carries it: decision 0183), on both paths.
    aggregates = [
        {"name": "lo", "function": "min", "expression": "bytes"},
        {"name": "hi", "function": "max", "expression": "bytes"},
        {"name": "s", "function": "sum", "expression": "bytes"},
    ]
    cfg = config([], aggregates=aggregates, slide=slide).model_copy(
        update={"function": FUNCTIONS[3]}
    )
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    records = [
        {"user": "a", "ts": BASE + 1000, "bytes": "nan", "real": True},  # Real("nan")
        {"user": "a", "ts": BASE + 2000, "bytes": 2, "real": True},
        {"user": "a", "ts": BASE + 3000, "bytes": 1.5},
        {"user": "b", "ts": BASE + 3000, "bytes": 4},
        {"user": "b", "ts": BASE + 4000, "bytes": "nan", "real": True},
    ]
    messages: list[SourceMessage] = [Msg(i, orjson.dumps(r)) for i, r in enumerate(records)]
    out = []
    for batch_of in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        got = summary(batch_of(messages, state))
        out.append((got, _exact(state.close(everything=True))))
    assert out[0] == out[1]
    assert out[0][0] == ([], [], 0)
    # _exact(close()): ("list", [("tuple", [output key, result]), ...]); user a's window:
    # the Real NaN first (as the canonical float NaN), then 2 and 1.5 (neither replaces a
    # NaN it cannot order against)
    results = {row[1][1]["key"]: row[1][1] for row in out[0][1][1]}
    nan_bits = struct.pack(">d", float("nan")).hex()
    assert results["a"]["lo"] == ("float", nan_bits)
