"""Hostile records and hostile expressions against both batch paths, checkpoints and restarts.

Records carry huge strings (format strings, digit strings, non-ASCII), integers beyond 64
bits, NaN and infinity literals, values nested up to and past the decoder's 1024 levels,
wrong types and missing fields; pipelines use the operations a hostile record can make
expensive (``%``, joins, ``int()``, ``str()``, ``round()``, ``upper()``, list-literal keys,
``float()`` keys that may be NaN). For every batch:

- neither the fused nor the generic batch function raises;
- both leave the same state and give the same dead letters (reason, error, message), late
  records and filtered counts;
- every record is accounted for: read = folded + filtered + dead-lettered + late, where
  folded is measured independently (the ``count`` of every window, open or emitted);
- the state survives a checkpoint bit for bit: to_json -> encode -> file -> decode ->
  from_json gives the same state and the same window results (NaN, infinities, big ints,
  composite keys included);

and a run checkpointed and restored (from real checkpoint files) at random points gives
exactly the results of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamherd.workers import changelog
from streamherd.workers.checkpointing import Checkpoint, CheckpointStore, decode, encode
from streamherd.workers.config import ProcessorConfig
from streamherd.workers.fusing import fuse
from streamherd.workers.limits import (
    MAX_HELD_STRING_BYTES,
    MAX_HOP_ENTRY_BYTES,
    MAX_KEY_BYTES,
    MAX_STRING_LENGTH,
    LimitError,
    ensure_recursion_headroom,
)
from streamherd.workers.processing import (
    Processor,
    SourceMessage,
    SyntheticMessage,
    WindowBatch,
    decode_json,
    decode_raw,
    window_batch,
)
from streamherd.workers.rekeying import rekey
from streamherd.workers.summing import CANONICAL_NAN
from streamherd.workers.values import (
    WindowKeyError,
    canonical_key,
    encode_value,
    json_bytes,
    key_value,
    window_key,
)
from streamherd.workers.windowing import PartitionWindows, output_key
from tests.unit.workers.sourcemessages import BASE, Msg, batch_paths

ensure_recursion_headroom()  # what the engine does at start (limits.RECURSION_LIMIT)


def pipeline(
    filters: list[str],
    key: str,
    aggregates: list[dict[str, Any]],
    **window: Any,
) -> ProcessorConfig:
    spec: dict[str, Any] = {
        "keyBy": key,
        "size": "10s",
        "eventTime": {"field": "ts"},
        "aggregates": [{"name": "n", "function": "count"}, *aggregates],
        **window,
    }
    if "slide" in window:
        spec["type"] = "hopping"
    return ProcessorConfig.model_validate(
        {"steps": [*({"filter": f} for f in filters), {"window": spec}]}
    )


PIPELINES = [
    pipeline(["uid % 10 == 0"], "user", [{"name": "s", "function": "sum", "expression": "x"}]),
    pipeline(
        ["len(s + s) >= 0"],
        "[user, uid]",
        [
            {"name": "lo", "function": "min", "expression": "s"},
            {"name": "hi", "function": "max", "expression": "x * x"},
        ],
    ),
    pipeline(
        [],
        "float(s)",
        [
            {"name": "s", "function": "sum", "expression": "int(s)"},
            {"name": "m", "function": "avg", "expression": "x"},
        ],
        allowedLateness="2s",
    ),
    pipeline(
        ["not (x > 5)"],
        "x",
        [
            {"name": "up", "function": "max", "expression": "upper(s)"},
            {"name": "r", "function": "sum", "expression": "round(x, uid)"},
        ],
        slide="2s",
        allowedLateness="1s",
    ),
    pipeline(
        ["str(deep) != ''"],
        "user",
        [
            {"name": "f", "function": "sum", "expression": "float(s)"},
            {"name": "hi", "function": "max", "expression": "float(s) * 2"},
        ],
    ),
    pipeline(
        ["deep == deep or deep == null"],
        "[deep, user]",
        [{"name": "j", "function": "max", "expression": "str(uid) + s"}],
        allowedLateness="5s",
    ),
]
TUMBLING = [
    i
    for i, p in enumerate(PIPELINES)
    if p.steps[-1].window and p.steps[-1].window.type == "tumbling"
]


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


huge_string = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["a", "%s", "9", "ß", "\u2603", "-"]),
    st.sampled_from([0, 1, 40, 2000, MAX_STRING_LENGTH // 2 + 1, MAX_STRING_LENGTH + 1]),
)
special_string = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "1e999", "%d%s%x", "9" * 1300, "9" * 5000, "1", "1.0", "true"]
)
hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**200), 2**200),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN/Infinity literals: invalid JSON
    st.floats(-1e6, 1e6),
    huge_string,
    special_string,
    st.text(max_size=5),
    st.sampled_from([0, 1, 2, 30, 500, 1022, 1100]).map(nested),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 12))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.sampled_from([b"", b"{", b"[1]", b'{"x": NaN}', b"\xff\xfe", b"null"]))
    fields = {
        "user": st.sampled_from(["a", "b", "\u00e9"]),
        "ts": st.integers(0, 40_000).map(lambda t: BASE + t),
        "x": st.one_of(st.integers(-10, 10), st.floats(-100, 100)),
        "s": st.sampled_from(["1", "2.5", "ab", "nan", ""]),
        "uid": st.integers(0, 30),
        "deep": st.sampled_from([None, [1], [[2]]]),
    }
    record: dict[str, Any] = {}
    for name, good in fields.items():
        choice = draw(st.integers(0, 5))
        if choice == 0:
            continue  # missing
        record[name] = draw(hostile if choice == 1 else good)
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode()


def exact(value: Any) -> Any:
    """A comparable form of results and states: NaN and infinities as their bits."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [exact(v) for v in value]
    return encode_value(value)


def summary(batch: WindowBatch) -> Any:
    return (
        [
            (f.message.offset(), f.reason, type(f.error).__name__, str(f.error))
            for f in batch.failures
        ],
        [(m.offset(), t) for m, t in batch.late],
        batch.filtered,
    )


def counted(state: PartitionWindows, emitted: list[Any]) -> int:
    """Records folded so far: the count of every window (tumbling: one window per record)."""
    open_total: int = sum(acc[0] for acc in state.windows.values())
    emitted_total: int = sum(row["n"] for _, row in emitted)
    return open_total + emitted_total


def round_trip(state: PartitionWindows, offset: int) -> PartitionWindows:
    data = encode(Checkpoint("in", 0, offset, state.to_json(), written_at=1.0))
    return PartitionWindows.from_json(state.plan, decode(data).state)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    values=st.lists(record_bytes(), min_size=1, max_size=25),
    which=st.integers(0, len(PIPELINES) - 1),
    cuts=st.lists(st.integers(1, 9), max_size=4),
)
def test_hostile_records_never_escape_and_both_paths_agree(
    values: list[bytes | None], which: int, cuts: list[int]
) -> None:
    cfg = PIPELINES[which]
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    messages: list[SourceMessage] = [Msg(i, v) for i, v in enumerate(values)]
    states = [PartitionWindows(plan), PartitionWindows(plan)]
    emitted: list[Any] = []
    read = accounted = 0
    start = 0
    for cut in [*cuts, len(messages)]:
        batch = messages[start : start + cut]
        start += len(batch)
        if not batch:
            break
        got_fused = fused(batch, states[0])
        got_generic = window_batch(decode_json, processor, states[1], batch)
        assert summary(got_fused) == summary(got_generic)
        assert exact(states[0].to_json()) == exact(states[1].to_json())
        reasons = {f.reason for f in got_fused.failures}
        assert reasons <= {"decode", "expression", "limit"}, reasons
        for failure in got_fused.failures:  # what the generated records exercised
            event(f"{failure.reason}: {type(failure.error).__name__}")
        read += len(batch)
        accounted += got_fused.filtered + len(got_fused.failures) + len(got_fused.late)
        # The checkpoint holds exactly this state, and closes into exactly these results.
        restored = round_trip(states[0], start)
        assert exact(restored.to_json()) == exact(states[0].to_json())
        assert restored.max_event_ms == states[0].max_event_ms
        assert exact(copy.deepcopy(states[0]).close(everything=True)) == exact(
            restored.close(everything=True)
        )
        closed = [s.close() for s in states]
        assert exact(closed[0]) == exact(closed[1])
        emitted += closed[0]
    if which in TUMBLING:
        assert read == accounted + counted(states[0], emitted)


def test_limit_failures_are_reason_limit_on_both_paths() -> None:
    cfg = pipeline(["len(s + s) > 0"], "user", [])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    big = "%s" * (MAX_STRING_LENGTH // 2 + 1)
    records = [
        {"user": "a", "ts": BASE, "s": big},  # the join is over the limit
        {"user": "a", "ts": BASE, "s": "ok"},
    ]
    messages: list[SourceMessage] = [Msg(i, json.dumps(r).encode()) for i, r in enumerate(records)]
    for run in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        failures, late, filtered = summary(run(messages, state))
        assert [(o, reason, kind) for o, reason, kind, _ in failures] == [
            (0, "limit", "LimitError")
        ]
        assert (late, filtered) == ([], 0)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("x", [1, 1.0, True, -0.0, 0.0, 0], ["1", "1.0", "true", "0.0", "0"]),
        ("[user, x]", [1, 1.0], ['["a",1]', '["a",1.0]']),
        ("x", [2**64 + 1], ["18446744073709551617"]),
    ],
)
def test_keys_are_told_apart_by_json_type_and_value(
    key: str, value: list[Any], expected: list[str]
) -> None:
    # 1, 1.0 and true are three windows; -0.0 and 0.0 one (equal values, written 0.0).
    cfg = pipeline([], key, [])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    messages: list[SourceMessage] = [
        Msg(i, json.dumps({"user": "a", "ts": BASE + i, "x": v}).encode())
        for i, v in enumerate(value)
    ]
    for run in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        run(messages, state)
        restored = round_trip(state, len(messages))
        rows = restored.close(everything=True)
        got = sorted(k.split("|")[0] for k, _ in rows)
        if value == [2**64 + 1]:  # orjson reads an integer beyond 64 bits as a float
            assert got == ["1.8446744073709552e+19"]
        else:
            assert got == sorted(expected)
        assert [type(r["key"]) for _, r in rows] != []


def test_nan_and_infinite_keys_are_dead_lettered() -> None:
    cfg = pipeline([], "float(s)", [])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    messages: list[SourceMessage] = [
        Msg(i, json.dumps({"ts": BASE, "s": s}).encode())
        for i, s in enumerate(["nan", "inf", "-inf", "2"])
    ]
    for run in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        failures, _, _ = summary(run(messages, state))
        assert [(o, kind) for o, _, kind, _ in failures] == [
            (0, "WindowKeyError"),
            (1, "WindowKeyError"),
            (2, "WindowKeyError"),
        ]
        assert [k for k, _ in state.close(everything=True)] == ["2.0|2026-01-01T00:00:00.000Z"]


def test_inf_nan_and_big_int_state_survives_a_checkpoint_exactly() -> None:
    # The cases that did not round-trip: inf written as null (restored as "no value"), an
    # integer sum past 64 bits, NaN; a list-literal key (restored as a list: unhashable).
    cfg = pipeline(
        [],
        "[user, 1]",
        [
            {"name": "hi", "function": "max", "expression": "float(s)"},
            {"name": "big", "function": "sum", "expression": "int(x) * 18446744073709551616"},
            {"name": "m", "function": "avg", "expression": "float(s)"},
        ],
    )
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    state = PartitionWindows(plan)
    records = [{"user": "a", "ts": BASE + i, "s": s, "x": 3} for i, s in enumerate(["inf", "nan"])]
    window_batch(
        decode_json,
        processor,
        state,
        [Msg(i, json.dumps(r).encode()) for i, r in enumerate(records)],
    )
    restored = round_trip(state, 2)
    ((key, row),) = restored.close(everything=True)
    assert key == '["a",1]|2026-01-01T00:00:00.000Z'
    assert row["key"] == ["a", 1]
    # max(inf, nan): NaN propagates, whatever came first (decision 0130); one NaN's bits.
    assert struct.pack(">d", row["hi"]) == struct.pack(">d", CANONICAL_NAN)
    assert row["big"] == 6 * 2**64
    assert struct.pack(">d", row["m"]) == struct.pack(">d", CANONICAL_NAN)  # inf + nan
    # The infinity alone survives too (it is not "no value").
    state = PartitionWindows(plan)
    window_batch(decode_json, processor, state, [Msg(0, json.dumps(records[0]).encode())])
    ((_, row),) = round_trip(state, 2).close(everything=True)
    assert (row["hi"], row["m"]) == (float("inf"), float("inf"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(record_bytes(), min_size=1, max_size=30),
    which=st.integers(0, len(PIPELINES) - 1),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=6),
    restarts=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_checkpoint_and_restore_at_random_points_gives_the_uninterrupted_results(
    values: list[bytes | None], which: int, cuts: list[int], restarts: list[bool]
) -> None:
    cfg = PIPELINES[which]
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    messages: list[SourceMessage] = [Msg(i, v, BASE + 1000 * i) for i, v in enumerate(values)]
    _, generic = batch_paths(fused, processor)
    batches = []
    start = 0
    for cut in [*cuts, len(messages)]:
        if start < len(messages):
            batches.append(messages[start : start + cut])
            start += cut

    # Uninterrupted, on the fused path.
    state = PartitionWindows(plan)
    straight: list[Any] = []
    for batch in batches:
        fused(batch, state)
        straight += state.close()
    straight += state.close(everything=True)

    # Stopped and restored from its checkpoint file between batches, on the generic path.
    with tempfile.TemporaryDirectory() as directory:
        store = CheckpointStore(directory)
        state = PartitionWindows(plan)
        interrupted: list[Any] = []
        read = 0  # the offsets are 0, 1, 2...: the next offset is the count read so far
        for i, batch in enumerate(batches):
            generic(batch, state)
            read += len(batch)
            interrupted += state.close()
            if restarts[i % len(restarts)]:
                store.save([Checkpoint("in", 0, read, state.to_json())])
                loaded = store.load("in", 0)
                assert loaded is not None and loaded.next_offset == read
                state = PartitionWindows.from_json(plan, loaded.state)
        interrupted += state.close(everything=True)
    assert exact(interrupted) == exact(straight)


def test_ordinary_records_take_the_fast_lane() -> None:
    # The slow lane gives the same results (so the equality tests cannot see it), only
    # slower: a mistake in the fast lane's checks would send every record there unnoticed.
    cfg = pipeline(["uid % 10 == 0"], "user", [{"name": "s", "function": "sum", "expression": "x"}])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    lanes: list[Any] = []
    fused.function.__globals__["__sh_slow"] = lambda m, failures: lanes.append(m.offset())
    records = [
        {"user": "a", "ts": BASE, "uid": 10, "x": 1},
        {"user": "b", "ts": BASE, "uid": 20, "x": 2, "text": "ab" * 3000},  # long, flat
        {"user": "c", "ts": BASE, "uid": 30, "x": 3, "deep": nested(1100)},  # too deep
    ]
    messages: list[SourceMessage] = [Msg(i, json.dumps(r).encode()) for i, r in enumerate(records)]
    fused(messages, PartitionWindows(plan))
    assert lanes == [2]


def test_raw_format_byte_keys_survive_a_checkpoint() -> None:
    # format: raw gives the Kafka key as bytes (keyBy: key): a window key JSON cannot hold.
    cfg = ProcessorConfig.model_validate(
        {
            "steps": [
                {
                    "window": {
                        "keyBy": "key",
                        "size": "10s",
                        "aggregates": [{"name": "n", "function": "count"}],
                    }
                }
            ]
        }
    )
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    messages: list[SourceMessage] = [
        SyntheticMessage("in", 0, i, k, {}, BASE + i) for i, k in enumerate([b"\xff\x00", b"a"])
    ]

    state = PartitionWindows(plan)
    window_batch(decode_raw, processor, state, messages)
    restored = round_trip(state, 2)
    # UTF-8 bytes are the string key (one window and one output key with the string "a");
    # other bytes stay bytes, and are restored as such.
    assert set(restored.windows) == {(b"\xff\x00", BASE), ("a", BASE)}
    rows = restored.close(everything=True)
    # Bytes that are not UTF-8 are named by their base64 in the output key (replacing them
    # made b"\xff\x00" and b"\xfe\x00" one output key).
    assert [k for k, _ in rows] == [
        "a|2026-01-01T00:00:00.000Z",
        '{"bytes":"/wA="}|2026-01-01T00:00:00.000Z',
    ]


STATELESS = ProcessorConfig.model_validate(
    {
        "steps": [
            {"filter": "not (x > 5)"},
            {"map": {"set": {"y": "s + s", "z": "int(s) % 7", "k": "[user, x]", "u": "upper(s)"}}},
            {"filter": "str(deep) != '' or z == 1"},
        ]
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(record_bytes(), min_size=1, max_size=25))
def test_hostile_records_in_a_stateless_pipeline_each_have_one_fate(
    values: list[bytes | None],
) -> None:
    processor = Processor.compile(STATELESS)
    messages: list[SourceMessage] = [Msg(i, v) for i, v in enumerate(values)]
    failures: list[Any] = []
    items = processor.run(decode_json(messages, failures), failures)
    failed = [f.message.offset() for f in failures]
    kept = [m.offset() for _, m in items]
    assert len(set(failed)) == len(failed)  # one dead letter per failed record
    assert not set(failed) & set(kept)
    assert {f.reason for f in failures} <= {"decode", "expression", "limit"}
    for record, _ in items:  # a kept record has its computed fields, exactly
        text = record.get("s")
        assert record["y"] == (None if text is None else text + text)
        assert record["k"] == (record.get("user"), record.get("x"))


def bits(value: Any) -> Any:
    """A form that tells apart every float bit pattern (NaN payloads, -0.0) and type."""
    if isinstance(value, float):
        return ("f", struct.pack(">d", value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [bits(v) for v in value])
    return (type(value).__name__, value)


any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**64 - 1).map(lambda b: struct.unpack(">d", b.to_bytes(8, "big"))[0]),
    st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan")]),
)
any_int = st.one_of(
    st.integers(), st.integers(-(2**20000), 2**20000), st.sampled_from([2**63, -(2**63) - 1, 2**64])
)
scalar_key = st.one_of(
    st.text(max_size=5), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=4),
)  # fmt: skip
any_key = st.recursive(scalar_key, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
slot = st.one_of(any_int, any_float, st.text(max_size=5), st.none())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    windows=st.lists(
        st.tuples(any_key, st.integers(-(10**12), 10**12), st.lists(slot, min_size=1, max_size=4)),
        max_size=6,
    ),
    avg=st.tuples(st.one_of(any_int, any_float), st.integers(0, 2**40)),
    max_event=st.one_of(st.none(), st.integers(-(10**14), 10**14)),
)
def test_random_states_survive_a_checkpoint_bit_for_bit(
    windows: list[tuple[Any, int, list[Any]]], avg: tuple[Any, int], max_event: int | None
) -> None:
    plan = Processor.compile(PIPELINES[0]).window
    assert plan is not None
    state = PartitionWindows(plan)
    state.max_event_ms = max_event
    for key, start, acc in windows:
        state.windows[(canonical_key(key), start)] = [*acc, list(avg)]  # an avg's [total, n]
    restored = round_trip(state, 7)
    assert restored.max_event_ms == max_event
    assert [(bits(list(k)), bits(v)) for k, v in restored.windows.items()] == [
        (bits(list(k)), bits(v)) for k, v in state.windows.items()
    ]


json_looking_text = st.one_of(
    st.text(max_size=5),
    st.sampled_from(["1", "1.0", "-0", "true", "false", "null", '"a"', '["a"]', "[1]", " 1",
                     "{}", '""', "1e3", "\\u0000"]),
    st.builds(lambda v: orjson.dumps(v).decode(), st.recursive(
        st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=2), max_leaves=3)),
)  # fmt: skip
text_key = st.recursive(
    st.one_of(json_looking_text, scalar_key), lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=500)
@given(text_key, text_key)
def test_two_keys_never_share_an_output_key(a: Any, b: Any) -> None:
    """One output key per key: the string "1" and the number 1 (or "true" and true, '["a"]'
    and ["a"]) wrote the same `1|<start>`, so a compacted topic or an upserting table kept
    only one of two windows, and a PostgreSQL batch holding both failed for good."""
    try:
        ka, kb = canonical_key(a), canonical_key(b)
    except (WindowKeyError, LimitError):
        return  # refused keys have no output key
    if output_key(ka, 0) == output_key(kb, 0):
        # A bytes key (raw sources only) and a string key of its UTF-8 text are one key.
        assert _as_text(ka) == _as_text(kb), (a, b)


def _as_text(key: Any) -> Any:
    if type(key) is bytes:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key
    if type(key) is tuple and key[0] == "a":  # an array: ("a", items)
        return ("a", tuple(_as_text(k) for k in key[1]))
    return key


def hop(plan: Any, items: list[Any]) -> tuple[list[Any], int, list[Any]]:
    """One source batch's upstream side of the repartition hop: (rows, records carried,
    failures)."""
    failures: list[Any] = []
    rows, _, carried = rekey(
        plan,
        items,
        plan_id="p",
        topic="in",
        partition=0,
        max_event_ms=None,
        failures=failures,
        partitions=1,
    )
    return rows, carried, failures


def test_a_record_whose_state_would_not_fit_a_checkpoint_record_is_refused_on_every_path() -> None:
    """A window's entry is one changelog record: one record's key and min/max strings are
    bounded by their JSON form (escapes counted), at the limit accepted, one character past
    it refused with reason ``limit``, alike on the fused path, the generic path and the
    repartition hop's upstream side (decision 0168)."""
    cfg = pipeline([], "user", [{"name": "lo", "function": "min", "expression": "s"}])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    fits = (MAX_KEY_BYTES - 2) // 6  # "\u0001" is 6 bytes in JSON
    held = (MAX_HELD_STRING_BYTES - 2) // 2  # "é" is 2 bytes of UTF-8
    records = [
        {"user": "\x01" * fits, "ts": BASE, "s": "x"},
        {"user": "\x01" * (fits + 1), "ts": BASE, "s": "x"},  # refused
        {"user": "a" * (MAX_KEY_BYTES - 2), "ts": BASE, "s": "x"},
        {"user": "a" * (MAX_KEY_BYTES - 1), "ts": BASE, "s": "x"},  # refused
        {"user": "b", "ts": BASE, "s": "\u00e9" * held},
        {"user": "b", "ts": BASE, "s": "\u00e9" * (held + 1)},  # refused
        {"user": ["c", "d" * 40_000, "e" * 30_000], "ts": BASE, "s": "x"},  # refused
        {"user": ["c", "d" * 30_000, "e" * 30_000], "ts": BASE, "s": "x"},
    ]
    refused = [1, 3, 5, 6]
    messages: list[SourceMessage] = [Msg(i, orjson.dumps(r)) for i, r in enumerate(records)]
    for run in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        failures, late, filtered = summary(run(messages, state))
        assert [(o, reason, kind) for o, reason, kind, _ in failures] == [
            (o, "limit", "LimitError") for o in refused
        ]
        assert (late, filtered) == ([], 0)
        assert sum(acc[0] for acc in state.windows.values()) == len(records) - len(refused)
    _, _, hop_failures = hop(plan, list(zip(records, messages, strict=True)))
    assert [(f.message.offset(), f.reason) for f in hop_failures] == [(o, "limit") for o in refused]


@settings(max_examples=300, deadline=None)
@given(
    key=st.recursive(
        st.one_of(
            st.text(st.characters(exclude_categories=())),  # lone surrogates too
            st.integers(),
            st.booleans(),
            st.none(),
            st.binary(),
        ),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=8,
    ),
    scale=st.sampled_from([1, 100, 2_000, 6_000, 11_000, 30_000]),
)
def test_a_window_key_is_refused_exactly_when_its_checkpoint_form_is_over_the_limit(
    key: Any, scale: int
) -> None:
    """values.window_key's cheap bound never lets a key over MAX_KEY_BYTES through, nor
    refuses one within it: the size is the JSON form a checkpoint writes (json_bytes)."""

    def grow(value: Any) -> Any:
        if isinstance(value, str | bytes):
            return value * scale
        if isinstance(value, list):
            return [grow(v) for v in value]
        return value

    key = grow(key)
    try:
        canon = canonical_key(key)
    except (WindowKeyError, LimitError):
        return  # not a key at all (an array too deep, ...): window_key refuses it too
    size = json_bytes(key_value(canon))
    if size > MAX_KEY_BYTES:
        with pytest.raises(LimitError):
            window_key(key)
    else:
        assert window_key(key) == canon


def test_a_record_too_large_to_cross_the_repartition_topic_is_refused_before_it_is_produced() -> (
    None
):
    """The hop carries each record's source key and value (a dead letter downstream holds
    them): an entry no Kafka message can carry is refused upstream (``limit``), alone, and
    nothing of it is produced; the records around it cross. Before, the producer's refusal
    stopped the worker, and every restart met the same record."""
    cfg = pipeline([], "user", [])
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    blob = "z" * (MAX_HOP_ENTRY_BYTES - 200)  # a field no step reads
    records = [
        {"user": "a", "ts": BASE, "blob": "small"},
        {"user": "a", "ts": BASE, "blob": blob + "z" * 400},  # refused
        {"user": "a", "ts": BASE, "blob": blob[: MAX_HOP_ENTRY_BYTES // 2]},
    ]
    messages: list[SourceMessage] = [Msg(i, orjson.dumps(r)) for i, r in enumerate(records)]
    rows, carried, failures = hop(plan, list(zip(records, messages, strict=True)))
    assert [(f.message.offset(), f.reason) for f in failures] == [(1, "limit")]
    assert carried == 2
    assert all(len(value) < 1_000_000 - MAX_KEY_BYTES for _, value, *_ in rows)


@dataclass(frozen=True)
class KeyedMsg(Msg):
    key_: bytes = b"k"

    def key(self) -> bytes:
        return self.key_


def test_a_raw_key_of_invalid_utf8_counts_its_message_key_text_at_the_hop() -> None:
    """A raw source's key that is not UTF-8 stays bytes in state (base64 in a checkpoint,
    4/3 of its size) but names its repartition message by its text, where each invalid byte
    is U+FFFD (3 bytes): the hop counts that text, so the message stays one Kafka message."""
    cfg = ProcessorConfig.model_validate(
        {
            "steps": [
                {
                    "window": {
                        "keyBy": "key",
                        "size": "10s",
                        "eventTime": {},  # the Kafka timestamp
                        "aggregates": [{"name": "n", "function": "count"}],
                    }
                }
            ]
        }
    )
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    key = b"\xff" * 49_000  # 65,356 bytes as state (accepted), 147,000 as message key text
    message = KeyedMsg(0, b"v" * 800_000, key_=key)
    records = decode_raw([message], [])
    rows, carried, failures = hop(plan, records)
    assert [(f.message.offset(), f.reason) for f in failures] == [(0, "limit")]
    assert (rows, carried) == ([], 0)


def test_state_holding_lone_surrogates_survives_both_backends_exactly(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A lone surrogate (an expression's string literal, a user function's output) in a
    window key and a min/max value: the volume checkpoint used to fail to encode it (the
    worker then exited at every checkpoint); both backends now write it and read it back
    exactly."""
    state = {
        "v": 2,
        "maxEventMs": 0,
        "windows": [["k\ud800", 0, [1, "x\udfff\u00e9"]], [["a", "\ud83d"], 0, [2, "y"]]],
    }
    checkpoint = Checkpoint("t", 0, 5, state)
    directory = tmp_path_factory.mktemp("surrogates")
    CheckpointStore(directory).save([checkpoint])
    loaded = CheckpointStore(directory).load("t", 0)
    assert loaded is not None and loaded.state == state
    records = changelog.encode(checkpoint)
    decoded = changelog.decode("t", 0, records)
    assert decoded is not None and decoded.state == state
