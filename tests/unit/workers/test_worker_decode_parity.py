"""Decode parity: the fused and the generic batch paths read any value bytes alike.

Which path runs depends only on the pipeline's keying (a repartitioned pipeline always runs
the generic one), so for ANY value bytes both must fold the same records into the same
windows and dead-letter the same records with the same reason and error. The fused path
decodes with msgspec and only the fields the pipeline reads (skipping the rest); the generic
path decodes the whole document (``processing.decode_json_wide``). This module builds hostile
JSON documents as bytes, with each oddity placed in a field the pipeline reads or in one it
does not: numbers out of the double range (``1e400``, ``-1e400``, integer literals of
hundreds of digits, the rounding edge past the largest double), below it (``1e-400``),
beyond int64/uint64, ``-0``, ``1E5``, long mantissas and arbitrary grammar-valid numbers;
invalid numbers (``NaN``, ``Infinity``, ``01``, ``+1``); lone and paired surrogate escapes,
invalid and overlong UTF-8, raw control characters, invalid escapes; duplicate keys (also
spelled with escapes); nesting up to and past 1024 levels; a BOM, odd whitespace, trailing
garbage, truncation, top-level non-objects and tombstones. Three pipelines cover the
fused function's two record forms (Struct of the read fields; orjson dict) and a numeric
key, tumbling and hopping.

And the rule both paths follow (docs/engine.md: "Windows" and "Dead-letter topic"): an
oddity in a field no step reads changes nothing when the document is valid JSON; a number
beyond the double range reads as an infinity (only a step that reads it can refuse it),
and a document orjson refuses for anything else is refused alike.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig
from streamherd.workers.fusing import FusedBatch, fuse
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.processing import (
    Processor,
    SourceMessage,
    WindowBatch,
    decode_json,
    decode_json_wide,
    window_batch,
)
from streamherd.workers.values import encode_value
from streamherd.workers.windowing import PartitionWindows
from tests.unit.workers.sourcemessages import BASE, Msg

ensure_recursion_headroom()  # what the engine does at start (limits.RECURSION_LIMIT)

AGGREGATES = [
    {"name": "n", "function": "count"},
    {"name": "s", "function": "sum", "expression": "x"},
    {"name": "lo", "function": "min", "expression": "x"},
    {"name": "hi", "function": "max", "expression": "x"},
    {"name": "m", "function": "avg", "expression": "x"},
]


def _pipeline(steps: list[dict[str, Any]], **window: Any) -> ProcessorConfig:
    spec: dict[str, Any] = {
        "keyBy": "user",
        "size": "10s",
        "eventTime": {"field": "ts"},
        "aggregates": AGGREGATES,
        **window,
    }
    if "slide" in window:
        spec["type"] = "hopping"
    return ProcessorConfig.model_validate({"steps": [*steps, {"window": spec}]})


#: (pipeline, the fused record form it must get)
PIPELINES = [
    (_pipeline([{"filter": "x != 13"}]), "struct"),
    # A rename of a decoded field: the fused function holds orjson dicts (its dict form).
    (_pipeline([{"map": {"rename": {"x": "v"}}}, {"map": {"rename": {"v": "x"}}}]), "dict"),
    # A numeric key read from the record (an infinite one is refused), hopping windows.
    (_pipeline([], keyBy="[user, k]", slide="5s", allowedLateness="2s"), "struct"),
]
READ = ["user", "ts", "x", "k"]
UNREAD = ["z", "w", "zz"]

# Numbers: valid JSON whatever their size (RFC 8259's grammar has no range), and invalid.
ODD_NUMBERS = [
    "1e400",
    "-1e400",
    "1E400",
    "1e+400",
    "1e-400",
    "-1e-400",
    "-0",
    "-0.0",
    "0e0",
    "1E5",
    "1e+5",
    "2.5E-3",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1" + "0" * 30,
    "1" + "0" * 308,
    "1" + "0" * 309,
    "-" + "9" * 400,
    "1" + "0" * 5000,
    "1.7976931348623157e308",
    "1.7976931348623158e308",  # rounds down to the largest double
    "1.7976931348623159e308",  # rounds up past it
    "-1.7976931348623159e308",
    "4.9e-324",
    "2.4703282292062328e-324",  # just over half the smallest subnormal: rounds up
    "2.4703282292062327e-324",  # just under: rounds to 0
    "0." + "0" * 400 + "1",
    "1" * 30 + "e-10",
    "0.1000000000000000055511151231257827021181583404541015625",
    "9007199254740993",
    "9007199254740993.0",
    "123456789012345678901234567890.5e-7",
]
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1", "1e", "0x1", "--1", "1_0"]
json_number = st.from_regex(
    r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
STRINGS = [
    b'"\\ud800"',  # lone high surrogate
    b'"\\udc00"',  # lone low surrogate
    b'"\\ud800x"',
    b'"\\ud800\\u0041"',
    b'"\\ud800\\udc00"',  # a pair: one character
    b'"\\u0000"',
    b'"\\/\\b\\f\\n\\r\\t\\"\\\\"',
    b'"\\q"',  # invalid escape
    b'"a\tb"',  # raw control character
    b'"a\x00b"',
    b'"\xef\xbb\xbf"',  # a BOM inside a string: a character like any other
    b'"\xc3\xa9"',  # valid UTF-8
    b'"\xff"',  # invalid UTF-8
    b'"\xc3"',  # truncated sequence
    b'"\xc0\x80"',  # overlong
    b'"\xed\xa0\x80"',  # an encoded surrogate
    b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
]


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


ordinary_value = st.one_of(
    st.integers(-50, 50).map(lambda i: str(i).encode()),
    st.floats(-100, 100).map(lambda f: repr(f).encode()),
    st.sampled_from([b'"a"', b'"b"', b'"\\u00e9"', b"true", b"false", b"null", b"[]", b"{}"]),
)
odd_value = st.one_of(
    st.sampled_from(ODD_NUMBERS).map(str.encode),
    st.sampled_from(BAD_NUMBERS).map(str.encode),
    json_number.map(str.encode),
    st.sampled_from(STRINGS),
    # Nesting: with the record's own object, at most 1024 levels are read (orjson's limit).
    st.sampled_from([1, 2, 1021, 1022, 1023, 1024, 1100]).map(_nested),
    st.sampled_from([b'{"a":{"b":1e400}}', b'[1e400, "\\ud800"]', b'["\xff"]', b"[1,]"]),
)


def _time(ts: int) -> bytes:
    return str(BASE + ts).encode()


@st.composite
def document(draw: st.DrawFn) -> bytes | None:
    """One value's bytes: mostly a record of the read fields and some unread ones, each
    value ordinary or odd, keys sometimes repeated or escaped, then whole-document
    oddities (a BOM, odd blanks, trailing bytes, a cut)."""
    kind = draw(st.integers(0, 20))
    if kind == 0:
        return None  # a tombstone
    if kind == 1:
        return draw(
            st.sampled_from([b"", b" ", b"[1]", b"1e400", b"null", b'"x"', b"\xef\xbb\xbf{}"])
        )
    fields: list[tuple[bytes, bytes]] = [
        (b'"user"', draw(st.sampled_from([b'"a"', b'"b"', b'"\\u0062"']))),
        (b'"ts"', _time(draw(st.integers(0, 30_000)))),
        (b'"x"', draw(ordinary_value)),
        (b'"k"', draw(st.sampled_from([b"1", b"2.5", b'"k"']))),
    ]
    for _ in range(draw(st.integers(0, 3))):  # odd values, read or unread
        name = draw(st.sampled_from(READ + UNREAD + UNREAD))
        fields.append((f'"{name}"'.encode(), draw(odd_value)))
    if draw(st.integers(0, 4)) == 0:  # a key spelled with an escape, or an odd key
        key = draw(
            st.sampled_from([b'"\\u0078"', b'"\\u0074s"', b'"\xff"', b'"\\ud800"', b'"x\\u0000"'])
        )
        fields.append((key, draw(st.one_of(ordinary_value, odd_value))))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    blank = st.sampled_from([b"", b" ", b"\n", b"\t", b"\r\n  "])
    body = b",".join(k + draw(blank) + b":" + draw(blank) + v for k, v in fields)
    raw = b"{" + body + b"}"
    if kind == 2:
        raw = draw(st.sampled_from([b"\xef\xbb\xbf", b" ", b"\n\t", b"\x0c", b"\xc2\xa0"])) + raw
    if kind == 3:
        raw += draw(st.sampled_from([b" ", b"\r\n", b"x", b"\x00", b"\x0c", b",", b"}", b"{}"]))
    if kind == 4:
        raw = raw[: draw(st.integers(0, len(raw)))]
    if kind == 5:
        raw = b"[" + raw + b"]"
    return raw


def _exact(value: Any) -> Any:
    """Results and states comparable exactly: NaN, infinities and big ints as their tags."""
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    return encode_value(value)


def _summary(batch: WindowBatch) -> Any:
    return (
        [
            (f.message.offset(), f.reason, type(f.error).__name__, str(f.error))
            for f in batch.failures
        ],
        [(m.offset(), t) for m, t in batch.late],
        batch.filtered,
    )


def _paths(which: int) -> tuple[Processor, FusedBatch]:
    cfg, form = PIPELINES[which]
    processor = Processor.compile(cfg)
    assert processor.window is not None
    fused = fuse(cfg, processor.window)
    assert fused is not None and fused.records == form
    return processor, fused


def _run_both(which: int, messages: list[SourceMessage], cuts: list[int]) -> Any:
    """Both paths over the same batches, asserting after each that they agree (summary,
    state, closed windows); returns each batch's (summary, closed windows), then both
    states closed entirely."""
    processor, fused = _paths(which)
    assert processor.window is not None
    states = [PartitionWindows(processor.window), PartitionWindows(processor.window)]
    outcome: list[Any] = []
    start = 0
    for cut in [*cuts, len(messages)]:
        batch = messages[start : start + cut]
        start += len(batch)
        if not batch:
            break
        got = [
            _summary(fused(batch, states[0])),
            _summary(window_batch(decode_json_wide, processor, states[1], batch)),
        ]
        assert got[0] == got[1]
        assert _exact(states[0].to_json()) == _exact(states[1].to_json())
        closed = [_exact(s.close()) for s in states]
        assert closed[0] == closed[1]
        outcome.append((got[0], closed[0]))
    outcome.append([_exact(s.close(everything=True)) for s in states])
    assert outcome[-1][0] == outcome[-1][1]
    return outcome


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    values=st.lists(document(), min_size=1, max_size=12),
    which=st.integers(0, len(PIPELINES) - 1),
    cuts=st.lists(st.integers(1, 6), max_size=3),
)
def test_fused_and_generic_read_any_bytes_alike(
    values: list[bytes | None], which: int, cuts: list[int]
) -> None:
    messages: list[SourceMessage] = [Msg(i, v) for i, v in enumerate(values)]
    for batch, _ in _run_both(which, messages, cuts)[:-1]:
        for _, reason, error, _ in batch[0]:  # what the documents exercised
            event(f"{reason}: {error}")


# Valid JSON values whose oddity must not matter in a field no step reads.
VALID_ODDITIES = [
    *ODD_NUMBERS,
    '"\\ud800\\udc00"',
    '"\\u0000"',
    '"\xe9"',
    '{"a":{"b":1e400}}',
    "[1e400, -1e400]",
    '{"x":1e400,"x":2}',
    "[" * 1000 + "1e400" + "]" * 1000,
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    xs=st.lists(st.integers(-50, 50), min_size=1, max_size=8),
    oddities=st.lists(st.sampled_from(VALID_ODDITIES), min_size=8, max_size=8),
    which=st.integers(0, len(PIPELINES) - 1),
)
def test_an_unread_valid_value_changes_nothing(
    xs: list[int], oddities: list[str], which: int
) -> None:
    plain: list[SourceMessage] = []
    odd: list[SourceMessage] = []
    for i, (x, oddity) in enumerate(zip(xs, oddities, strict=False)):
        body = f'"user":"a","ts":{BASE + i * 1000},"x":{x},"k":1'
        plain.append(Msg(i, ("{" + body + "}").encode()))
        odd.append(Msg(i, ('{"z":' + oddity + "," + body + "}").encode()))
    without = _run_both(which, plain, [])
    assert without[0][0][0] == []  # nothing dead-lettered
    assert _run_both(which, odd, []) == without


@pytest.mark.parametrize("which", range(len(PIPELINES)))
@pytest.mark.parametrize(
    ("number", "read_as"),
    [
        ("1e400", float("inf")),
        ("-1e400", float("-inf")),
        ("1.7976931348623159e308", float("inf")),
        ("1" + "0" * 400, float("inf")),
        ("-" + "9" * 5000, float("-inf")),
        ("1e-400", 0.0),
        ("18446744073709551616", 18446744073709551616.0),  # beyond 64 bits: a float
        ("18446744073709551615", 18446744073709551615),
    ],
)
def test_a_number_beyond_the_double_range_reads_as_an_infinity_on_both_paths(
    which: int, number: str, read_as: float
) -> None:
    # Unread: the record is folded as if the field were not there.
    unread = Msg(0, f'{{"user":"a","ts":{BASE},"x":1,"k":1,"z":{number}}}'.encode())
    outcome = _run_both(which, [unread], [])
    assert outcome[0][0][0] == []  # no dead letter
    rows = [row for _, row in outcome[-1][0]]
    assert rows and all(row["n"] == 1 and row["s"] == 1 for row in rows)
    # Read: the same value on both paths, as decode_json_wide reads it (an infinite sum is exact
    # in the state).
    failures: list[Any] = []
    record = Msg(0, f'{{"user":"a","ts":{BASE},"x":{number},"k":1}}'.encode())
    ((decoded, _),) = decode_json_wide([record], failures)
    assert failures == []
    assert type(decoded["x"]) is type(read_as)
    assert _exact(decoded["x"]) == _exact(read_as)
    outcome = _run_both(which, [record], [])
    assert outcome[0][0][0] == []
    rows = [row for _, row in outcome[-1][0]]
    assert rows and all(row["s"] == _exact(read_as) for row in rows)


@pytest.mark.parametrize("which", range(len(PIPELINES)))
@pytest.mark.parametrize(
    ("tail", "why"),
    [  # invalid JSON after the number: refused, for what it is
        (b',"w":NaN}', "NaN is not JSON"),
        (b',"w":"\xff"}', "not valid UTF-8"),
        (b',"w":"\\ud800"}', "surrogate"),
        (b',"w":' + _nested(1100) + b"}", "depth limit exceeded"),
        (b"} x", "Extra data"),
    ],
)
def test_a_record_with_a_big_number_and_invalid_json_after_it_is_refused_alike(
    which: int, tail: bytes, why: str
) -> None:
    raw = b'{"user":"a","ts":%d,"x":1,"z":1e400' % BASE + tail
    outcome = _run_both(which, [Msg(0, raw)], [])
    ((_, reason, error, message),) = outcome[0][0][0]
    assert (reason, error) == ("decode", "JSONDecodeError")
    assert why in message


def test_a_stateless_pipeline_dead_letters_a_number_beyond_the_double_range() -> None:
    """Its records go out whole: written as ``null`` the number would be lost, so the record
    goes to the dead-letter topic with its bytes, as orjson refuses it."""
    failures: list[Any] = []
    record = Msg(0, f'{{"user":"a","ts":{BASE},"z":1e400}}'.encode())
    assert decode_json([record], failures) == []
    ((_, reason, error),) = [(f.message, f.reason, f.error) for f in failures]
    assert reason == "decode" and "infinity" in str(error)
    assert decode_json_wide([record], []) != []
