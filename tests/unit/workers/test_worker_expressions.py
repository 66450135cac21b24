"""The expression language: values, null semantics, and refused inputs with their columns."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamherd.workers.expressions import ExpressionError, compile_expression


@pytest.mark.parametrize(
    ("text", "record", "expected"),
    [
        ("status >= 500", {"status": 503}, True),
        ("status >= 500 and page != '/healthz'", {"status": 503, "page": "/healthz"}, False),
        ("bytes / 1024", {"bytes": 2048}, 2.0),
        ("a + b * 2 - c % 3", {"a": 1, "b": 2, "c": 5}, 3),
        ("a // 2", {"a": 7}, 3),
        ("-a", {"a": 4}, -4),
        ("page + ':' + country", {"page": "/x", "country": "fr"}, "/x:fr"),
        ("geo.country", {"geo": {"country": "fr"}}, "fr"),
        ("geo.city.name", {"geo": {"city": {"name": "Lyon"}}}, "Lyon"),
        ("geo.country", {"geo": "not a dict"}, None),
        # r['x-y'] is the record's field x-y (docs/engine.md), not field r indexed by 'x-y'.
        ("r['x-y']", {"x-y": 1, "r": {"x-y": 2}}, 1),
        ("r['x-y']", {"r": {"x-y": 2}}, None),
        ("r['a']['b']", {"a": {"b": 3}}, 3),
        ("r.x", {"r": {"x": 4}}, 4),
        ("tags[0]", {"tags": ["a", "b"]}, "a"),
        ("tags[5]", {"tags": ["a"]}, None),
        ("lower(user) in ['ann', 'bob']", {"user": "ANN"}, True),
        ("status not in (200, 204)", {"status": 500}, True),
        ("1 < x < 10", {"x": 5}, True),
        ("1 < x < 10", {"x": 50}, False),
        ("upper(s)", {"s": "ab"}, "AB"),
        ("len(s)", {"s": "abc"}, 3),
        ("abs(x)", {"x": -2}, 2),
        ("round(x, 1)", {"x": 2.26}, 2.3),
        ("int(x)", {"x": "42"}, 42),
        ("float(x)", {"x": "1.5"}, 1.5),
        ("str(x)", {"x": 7}, "7"),
        ("str(x)", {"x": True}, "true"),
        ("coalesce(a, b, 'z')", {"b": "y"}, "y"),
        ("max(a, b)", {"a": 1, "b": 3}, 3),
        ("min(a, b)", {"a": None, "b": 3}, 3),
        ("startswith(p, '/api')", {"p": "/api/x"}, True),
        ("'big' if n > 10 else 'small'", {"n": 11}, "big"),
        ("not ok", {"ok": False}, True),
        ("x == null", {}, True),
        ("flag == true", {"flag": True}, True),
        ("missing > 3", {}, None),
        ("missing + 1", {}, None),
        ("lower(missing)", {}, None),
        ("a or b", {"a": 0, "b": "x"}, "x"),
        (" a +\n  b", {"a": 1, "b": 2}, 3),
        ("trim(s)", {"s": "  x "}, "x"),
    ],
)
def test_values(text: str, record: dict[str, Any], expected: Any) -> None:
    assert compile_expression(text)(record) == expected


def test_fields_are_reported() -> None:
    expr = compile_expression("a + geo.country + lower(b)")
    assert expr.fields == {"a", "geo", "geo.country", "b"}


def test_type_errors_raise_at_evaluation() -> None:
    with pytest.raises(TypeError):
        compile_expression("a + 1")({"a": "x"})


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("x.__class__", 3, "attribute '__class__'"),
        ("a.b.__globals__", 5, "attribute '__globals__'"),
        ("__import__('os')", 1, "function '__import__' is not allowed"),
        ("len(x) + open('f')", 10, "function 'open' is not allowed"),
        ("eval('1')", 1, "function 'eval' is not allowed"),
        ("x.lower()", 1, "only whitelisted functions"),
        ("lambda: 1", 1, "lambda is not allowed"),
        ("1 + (lambda x: x)(2)", 5, "only whitelisted functions"),
        ("1 + (lambda x: x)", 6, "lambda is not allowed"),
        ("[a for a in b]", 1, "comprehension is not allowed"),
        ("{a: 1 for a in b}", 1, "comprehension"),
        ("sum(a for a in b)", 1, "function 'sum'"),
        ("import os", 1, "syntax error"),
        ("a +* 2", 4, "syntax error"),
        ("f'{a}'", 1, "f-string is not allowed"),
        ("(a := 1)", 2, "assignment"),
        ("__builtins__", 1, "name '__builtins__'"),
        ("{'a': 1}", 1, "dict literal"),
        ("a[1:2]", 1, "slices"),
        ("a ** 2", 1, "operator Pow"),
        ("a is None", 1, "comparison Is"),
        ("lower(x, y)", 1, "takes 1..1 arguments"),
        ("round(x, ndigits=1)", 10, "keyword arguments"),
        ("", 1, "empty"),
        ("b'bytes'", 1, "literal of type bytes"),
        ("# status >= 500", 1, "only a comment"),
        ("  # one\n  # two\n", 1, "only a comment"),
        ("r[name]", 1, "r[...] takes a quoted field name"),
        ("r[1]", 1, "r[...] takes a quoted field name"),
    ],
)
def test_refused_with_position(text: str, column: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert fragment in info.value.message
    assert info.value.column == column
    assert info.value.position == column - 1
    assert f"(at column {column})" in str(info.value)


def test_caret_points_at_problem() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("a + open(b)")
    assert info.value.caret("a + open(b)").splitlines()[1] == "    ^"


def test_no_builtins_reachable() -> None:
    # Even a name that is a Python builtin is only ever a record field.
    assert compile_expression("open")({"open": 1}) == 1
    assert compile_expression("print")({}) is None


@given(a=st.integers(-1000, 1000), b=st.integers(-1000, 1000))
def test_arithmetic_matches_python(a: int, b: int) -> None:
    rec = {"a": a, "b": b}
    assert compile_expression("a + b * 3 - a")(rec) == a + b * 3 - a
    assert compile_expression("a < b")(rec) == (a < b)
    if b:
        assert compile_expression("a % b")(rec) == a % b
