"""The engine's limits (workers/limits.py): what an expression, a record and a window may cost.

Static: any text given to ``compile_expression`` either compiles or raises ExpressionError
with a position inside the text (never RecursionError, MemoryError, ValueError): deep unary
chains, long dotted paths, huge literals. Run time: no string repetition or ``%``
formatting, integers and strings within their budget, ``round`` digits bounded, and a record
over budget fails with LimitError (dead-lettered with reason ``limit``). Windows: a hopping
window putting a record into more than MAX_WINDOWS_PER_RECORD windows is refused.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WindowSpec
from streamherd.workers.expressions import ExpressionError, compile_expression
from streamherd.workers.limits import (
    MAX_EXPRESSION_DEPTH,
    MAX_INT_BITS,
    MAX_NUMBER_LITERAL,
    MAX_ROUND_DIGITS,
    MAX_STRING_LENGTH,
    MAX_STRING_LITERAL,
    MAX_WINDOWS_PER_RECORD,
    LimitError,
    check_window_count,
    windows_per_record,
)
from streamherd.workers.main import main
from streamherd.workers.processing import Failure, SyntheticMessage
from streamherd.workers.windowing import WindowPlan


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-" * 3000 + "x", "nested too deeply"),
        ("+" * 3000 + "1", "nested too deeply"),
        ("not " * 1000 + "x", "nested too deeply"),
        ("+".join(["a"] * 2000), "nested too deeply"),
        (".".join(["a"] * 1000), "dotted path of 1000 segments"),
        (".".join(["a"] * (MAX_EXPRESSION_DEPTH + 1)), "nested too deeply"),
        ("x == '" + "a" * (MAX_STRING_LITERAL + 1) + "'", "string literal of 1025 characters"),
        ("x == " + "9" * (MAX_NUMBER_LITERAL + 1), "number literal of 65 characters"),
        ("(" * 300 + "x" + ")" * 300, "too many nested parentheses"),
        ("x\x00", "null bytes"),
        ("a" * 5000, "longer than 4096"),
    ],
)
def test_costly_expressions_are_refused_with_a_position(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert message in str(caught.value)
    assert 0 <= caught.value.position <= len(text)


def test_deep_chains_point_near_where_the_limit_is_passed() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression("x + " + "-" * 3000 + "y")
    assert 4 + MAX_EXPRESSION_DEPTH - 8 <= caught.value.position <= 4 + MAX_EXPRESSION_DEPTH + 8


TOKENS = [
    "-", "not ", "(", ")", "[", "]", "a", ".", "b", "+", "*", "%", "1", "'x'", " ", ",",
    "lower(", "x.y", " if ", " else ", "==", "<", " in ", "9" * 70, "'" + "s" * 1100 + "'",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(st.sampled_from(TOKENS), st.integers(1, 400)), min_size=1, max_size=12)
)
def test_any_text_compiles_or_raises_expression_error(parts: list[tuple[str, int]]) -> None:
    text = "".join(token * times for token, times in parts)
    try:
        compiled = compile_expression(text)
    except ExpressionError as error:
        assert 0 <= error.position <= max(len(text), 1)
        return
    record: dict[str, Any] = {"a": "%s" * 10, "b": 2**62, "x": {"y": [1]}}
    # A record error (an Exception) is dead-lettered; anything else would escape the batch.
    with contextlib.suppress(Exception):
        compiled(record)


@pytest.mark.parametrize(
    ("text", "record", "error"),
    [
        ("uid % 10 == 0", {"uid": "%s" * 100}, TypeError),  # no % formatting
        ("s * 3", {"s": "ab"}, TypeError),  # no string repetition
        ("3 * tags", {"tags": [1, 2]}, TypeError),  # nor array repetition
        ("x * x * x", {"x": 2 ** (MAX_INT_BITS // 2)}, LimitError),
        ("int(s)", {"s": "9" * 5000}, LimitError),  # Python: ValueError past 4300 digits
        ("int(s) * int(s) * int(s) * int(s)", {"s": "9" * 1300}, LimitError),
        ("round(x, d)", {"x": 5, "d": -(10**9)}, LimitError),  # would compute 10**10**9
        ("round(x, d)", {"x": 5, "d": MAX_ROUND_DIGITS + 1}, LimitError),
        ("s + s", {"s": "a" * (MAX_STRING_LENGTH // 2 + 1)}, LimitError),
        ("upper(s)", {"s": "\u00df" * (MAX_STRING_LENGTH // 2 + 1)}, LimitError),  # ß -> SS
        ("str(xs)", {"xs": list(range(70_000))}, LimitError),
        ("floor(x)", {"x": float("inf")}, OverflowError),
    ],
)
def test_a_record_over_budget_fails_with_a_record_error(
    text: str, record: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        compile_expression(text)(record)


@pytest.mark.parametrize(
    ("text", "record", "value"),
    [
        ("uid % 10", {"uid": 23}, 3),
        ("x * 2.5", {"x": 2}, 5.0),
        ("s + '!'", {"s": "hi"}, "hi!"),
        ("s + s", {"s": "a" * (MAX_STRING_LENGTH // 2)}, "a" * MAX_STRING_LENGTH),
        ("round(x, 2)", {"x": 1.23456}, 1.23),
        ("int(s)", {"s": "9" * 1000}, int("9" * 1000)),
        ("x % 3", {}, None),
    ],
)
def test_ordinary_expressions_are_unchanged(text: str, record: dict[str, Any], value: Any) -> None:
    assert compile_expression(text)(record) == value


def test_limit_errors_are_dead_lettered_with_reason_limit() -> None:
    message = SyntheticMessage("t", 0, 1, None, {}, 0)
    assert Failure(message, "expression", LimitError("x")).reason == "limit"
    assert Failure(message, "expression", RecursionError()).reason == "limit"
    assert Failure(message, "expression", TypeError()).reason == "expression"
    assert Failure(message, "function", LimitError("x")).reason == "function"


def test_windows_per_record_are_capped() -> None:
    assert windows_per_record(60_000, 60_000) == 1
    assert windows_per_record(86_400_000, 24_000) == MAX_WINDOWS_PER_RECORD
    check_window_count(86_400_000, 24_000)
    with pytest.raises(ValueError, match="86400000 windows"):
        check_window_count(86_400_000, 1)
    spec = WindowSpec.model_validate(
        {
            "keyBy": "user",
            "type": "hopping",
            "size": "24h",
            "slide": "1ms",
            "aggregates": [{"name": "n", "function": "count"}],
        }
    )
    with pytest.raises(ValueError, match="at most 3600"):
        WindowPlan.compile(spec)


def test_a_failure_keeps_no_frames_and_a_bounded_message() -> None:
    # A traceback's frames would hold the record and every value computed from it until the
    # batch ends; float('x...') quotes the whole value in its message.
    message = SyntheticMessage("t", 0, 1, None, {}, 0)
    try:
        compile_expression("float(s)")({"s": "x" * 900_000})
    except ValueError as error:
        failure = Failure(message, "expression", error)
    assert failure.error.__traceback__ is None
    assert 1000 <= len(str(failure.error)) <= 1003


def test_the_worker_refuses_a_window_over_the_cap_as_a_config_error(tmp_path: Path) -> None:
    config = {
        "pipeline": {"namespace": "t", "name": "p"},
        "source": {"generator": {"count": 10}},
        "processor": {
            "steps": [
                {
                    "window": {
                        "keyBy": "user",
                        "type": "hopping",
                        "size": "24h",
                        "slide": "1ms",
                        "aggregates": [{"name": "n", "function": "count"}],
                    }
                }
            ]
        },
        "sink": {"stdout": {}},
        "checkpoint": {"directory": str(tmp_path / "ck")},
    }
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(config))
    assert main(["--config", str(path)]) == 2  # bad-config, before anything runs
    assert not (tmp_path / "ck").exists()
