"""The PostgreSQL sink's value logic, without a database: which rows an upsert writes in which
order, how a float and a json value are sent, what is refused before the write. What the
database makes of them: tests/integration/storage/test_postgres_values.py."""

from __future__ import annotations

import decimal
import math
import struct
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Float8

from streamherd.operator.builders.worker_config import _AGGREGATE_TYPES
from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.sinks_postgres import (
    TableFacts,
    _identity,
    as_json,
    bound,
    failure_kind,
    float_text,
    latest,
    postgres_refusal,
    table_refusal,
)

KEYS = st.one_of(
    st.text(max_size=3),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.none(),
    st.sampled_from([decimal.Decimal("NaN"), decimal.Decimal("sNaN"), decimal.Decimal("1.0")]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, st.integers()), max_size=25))
def test_the_rows_written_are_each_keys_last_in_queue_order(rows: list[tuple[Any, int]]) -> None:
    """One row per key the sink tells apart, the last of it, in the order of those last rows
    (the order the single-row fallback writes them in: keys one row to the table then end
    with the latest result). A signaling NaN is a key like any other (it raised TypeError
    and the writer thread died); both NaNs are numeric's one NaN."""
    numbered = [(k, i) for i, (k, _) in enumerate(rows)]
    kept = latest(numbered, [0])
    last: dict[Any, int] = {}
    for key, i in numbered:
        last[_identity(key)] = i
    assert [i for _, i in kept] == sorted(last.values())
    assert len({_identity(k) for k, _ in kept}) == len(kept)


def test_a_later_row_of_a_key_moves_it_after_the_others() -> None:
    assert latest([("1", 1), (1, 2), ("1", 3)], [0]) == [(1, 2), ("1", 3)]
    assert _identity(decimal.Decimal("sNaN")) == _identity(decimal.Decimal("NaN"))


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False))
def test_a_float_is_sent_as_text_that_parses_back_to_it_exactly(x: float) -> None:
    """The text parses to the same double (its sign too), is the decimal the shortest repr
    names (what numeric stores: no 15-digit cut), and an integral float has no fraction or
    exponent (an integer column takes it; a fraction it refuses instead of rounding)."""
    text = float_text(x)
    assert _bits(float(text)) == _bits(x)
    if math.isfinite(x):
        assert decimal.Decimal(text) == decimal.Decimal(repr(x))
        assert x.is_integer() == all(c.isdigit() or c == "-" for c in text)
    else:
        assert text in ("Infinity", "-Infinity")
    assert float_text(math.nan) == "NaN"


def test_every_value_for_a_json_column_goes_as_json() -> None:
    rows = [("k", "123", "true", None, {"a": 1}, b"x", math.nan)]
    [row] = as_json(rows, {1: "jsonb", 2: "json", 3: "jsonb", 4: "json", 5: "jsonb", 6: "jsonb"})
    assert row[0] == "k" and row[3] is None and row[5] == b"x" and math.isnan(row[6])
    assert isinstance(row[1], Jsonb) and row[1].obj == "123"
    assert type(row[2]) is Json and row[2].obj == "true"
    assert type(row[4]) is Json and row[4].obj == {"a": 1}


def test_an_error_of_psycopgs_own_is_the_client_kind() -> None:
    assert failure_kind(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x")) == "client"
    assert failure_kind(psycopg.errors.NotNullViolation()) == "sql"
    assert failure_kind(psycopg.OperationalError()) == "connection"


FIELD = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)


@settings(max_examples=500, deadline=None)
@given(written=FIELD, other=FIELD)
def test_only_the_written_fields_are_judged(written: str, other: str) -> None:
    """A NUL or a character the database's encoding lacks is refused in a column written,
    and nowhere else (a NUL in a field no column writes dead-lettered the result)."""
    record = {"key": "k", "v": written, "debug": other}
    refusal = postgres_refusal(record, ["key"], columns=["key", "v"], encoding="LATIN1")
    try:
        written.encode("latin-1")
        fits = "\x00" not in written
    except UnicodeEncodeError:
        fits = False
    assert (refusal is None) == fits
    assert postgres_refusal(record, ["key"], columns=["key", "v"], encoding="UTF8") is None or (
        "\x00" in written
    )


def test_a_nested_string_the_encoding_lacks_is_refused() -> None:
    refusal = postgres_refusal({"k": "a", "doc": {"x": ["é", "日本"]}}, columns=["k", "doc"],
                               encoding="WIN1252")  # fmt: skip
    assert refusal is not None and "WIN1252" in refusal


def test_a_null_key_is_refused_unless_the_table_was_read_to_take_it() -> None:
    cfg = PostgresSinkConfig.model_validate(
        {
            "dsnEnv": "D",
            "table": "t",
            "columns": [{"name": "k"}, {"name": "w"}, {"name": "n"}],
            "keyColumns": ["k", "w"],
        }
    )
    record = {"k": None, "w": None, "n": 1}
    assert table_refusal(record, cfg, TableFacts()) is not None  # not read yet, or distinct
    assert table_refusal(record, cfg, TableFacts(null_keys=frozenset({"k"}))) is not None
    assert table_refusal(record, cfg, TableFacts(null_keys=frozenset({"k", "w"}))) is None


def test_created_tables_hold_aggregates_exactly() -> None:
    """An integer sum, min or max is exact in any size: numeric (double precision rounded
    above 2**53); an average is a float."""
    assert {f: _AGGREGATE_TYPES[f] for f in ("sum", "min", "max")} == dict.fromkeys(
        ("sum", "min", "max"), "numeric"
    )
    assert _AGGREGATE_TYPES["count"] == "bigint"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True),
            st.decimals(allow_nan=True),
            st.integers(),
            st.text(max_size=3),
            st.binary(max_size=3),
            st.none(),
        ),
        min_size=5,
        max_size=5,
    )
)
def test_bound_types_floats_decimals_bytes_and_text_by_their_column_and_nothing_else(
    row: list[Any],
) -> None:
    """Columns: interval, bigint, numeric, text, bytea. A float goes as float8 only to the
    interval and the bytea; a Decimal as text only to the bigint (a whole one as an
    integer); bytes as their UTF-8 text only to the text column (bytes that are no UTF-8 as
    a string psycopg refuses to send); a string as its UTF-8 bytes only to the bytea
    column; every other value, and every value of a column of unknown type, as it is."""
    types = {0: "interval", 1: "bigint", 2: "numeric", 3: "text", 4: "bytea"}
    [out] = bound([tuple(row)], types)
    for i, (before, after) in enumerate(zip(row, out, strict=True)):
        if i in (0, 4) and type(before) is float:
            assert isinstance(after, Float8) and (after == before or math.isnan(before))
        elif i == 1 and isinstance(before, decimal.Decimal):
            assert isinstance(after, str)
            if before.is_finite() and before == before.to_integral_value():
                assert after == str(int(before))
            else:
                assert decimal.Decimal(after).compare_total(before) == 0 or before.is_nan()
        elif i == 3 and isinstance(before, bytes):
            assert isinstance(after, str)
            try:
                assert after == before.decode("utf-8")
            except UnicodeDecodeError:
                with pytest.raises(UnicodeEncodeError):
                    after.encode("utf-8")
        elif i == 4 and isinstance(before, str):
            try:
                assert after == before.encode("utf-8")
            except UnicodeEncodeError:
                assert after is before  # a lone surrogate: psycopg refuses the row
        else:
            assert after is before
    assert bound([tuple(row)], {}) == [tuple(row)]
