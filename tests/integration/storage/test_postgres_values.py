"""What the PostgreSQL sink does with values the table cannot hold, or could hold changed,
against a real server: refused before the write (the outputs dead-letter them, reason
``sink``) or written exactly; never a dead writer, a duplicate, a rounded or a reinterpreted
value, a stale row. Each test is a defect a helper found (docs/storage.md).

The outputs judge a result with the sink's ``refusal`` (what its connection read of the
database and the table), then queue it: :func:`drive` does the same."""

from __future__ import annotations

import decimal
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streamherd.operator.builders.worker_config import _AGGREGATE_TYPES
from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.sinks import postgres_record
from streamherd.workers.sinks_postgres import PostgresSink, create_table_statement
from streamherd.workers.sinks_postgres_offsets import (
    PostgresTransactionalSink,
    create_offsets_statement,
)
from tests.integration.storage.pgserver import PostgresServer

pytestmark = [pytest.mark.integration]

ENV = "STREAMHERD_TEST_PG_DSN"


def config(
    table: str, columns: Sequence[tuple[str, str | None]], keys: Sequence[str], **extra: Any
) -> PostgresSinkConfig:
    return PostgresSinkConfig.model_validate(
        {
            "dsnEnv": ENV,
            "table": table,
            "columns": [{"name": n, **({"type": t} if t else {})} for n, t in columns],
            "keyColumns": list(keys),
            "createTable": False,
            **extra,
        }
    )


def execute(dsn: str, statement: str, params: Sequence[Any] | None = None) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def started(
    cfg: PostgresSinkConfig, dsn: str, metrics: EngineMetrics | None = None
) -> PostgresSink:
    """A sink whose writer has connected (and so read the table)."""
    sink = PostgresSink(cfg, "ns/p", metrics, env={ENV: dsn})
    deadline = time.monotonic() + 20
    while not sink.up:
        assert time.monotonic() < deadline, "the sink never connected"
        time.sleep(0.05)
    return sink


def drive(sink: PostgresSink | PostgresTransactionalSink, results: Sequence[Any]) -> list[str]:
    """As the outputs write: each result as the sink stores it, judged, queued or refused;
    the refusals (what the dead-letter topic gets)."""
    refused, accepted = [], []
    for result in results:
        record = postgres_record(result)
        why = sink.refusal(record)
        if why is None:
            accepted.append(record)
        else:
            refused.append(why)
    sink.write(accepted)
    return refused


@pytest.fixture
def latin1_dsn(postgres_server: PostgresServer) -> str:
    if not postgres_server.running():
        postgres_server.start()
    name = f"l_{uuid.uuid4().hex[:12]}"
    execute(
        postgres_server.dsn(),
        f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    return postgres_server.dsn(name)


# ---------------------------------------------------------------------- 1. the database's encoding


def test_a_string_the_database_encoding_cannot_hold_is_refused_the_rest_written(
    latin1_dsn: str,
) -> None:
    """ "日本" in a LATIN1 database: psycopg raised UnicodeEncodeError (not a psycopg.Error),
    the writer thread died and the worker failed at every replay. Now the sink knows the
    encoding from its connection and refuses the result before the write; LATIN1's own
    characters ("é") are written; the DSN's client_encoding changes nothing."""
    execute(latin1_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint, doc jsonb)")
    for dsn in (latin1_dsn, latin1_dsn + " client_encoding=UTF8"):
        sink = started(config("t", [("key", None), ("n", None), ("doc", None)], ["key"]), dsn)
        try:
            assert sink.facts.encoding == "LATIN1"
            refused = drive(
                sink,
                [
                    {"key": "ok", "n": 1},
                    {"key": "日本", "n": 2},
                    {"key": "café", "n": 3},
                    {"key": "doc", "n": 4, "doc": {"name": ["x", "日本"]}},
                ],
            )
            assert len(refused) == 2 and all("LATIN1" in r for r in refused), refused
            assert sink.flush(20)
        finally:
            sink.close()
    assert sorted(execute(latin1_dsn, "SELECT key, n FROM t")) == [("café", 3), ("ok", 1)]


def test_the_exactly_once_sink_refuses_it_too(latin1_dsn: str) -> None:
    execute(latin1_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint)")
    sink = PostgresTransactionalSink(
        config("t", [("key", None), ("n", None)], ["key"]), "ns/p", "g", env={ENV: latin1_dsn}
    )
    try:
        sink.committed([("in", 0)])  # on assign: connects, reads the table
        assert drive(sink, [{"key": "日本", "n": 1}, {"key": "a", "n": 2}]) != []
        assert sink.commit([("in", 0, 2)], "g1")
    finally:
        sink.close()
    assert execute(latin1_dsn, "SELECT key, n FROM t") == [("a", 2)]


def test_a_row_psycopg_cannot_send_leaves_the_writer_alive_and_is_handed_back(
    postgres_dsn: str,
) -> None:
    """A row that reaches the writer although psycopg cannot send it (a lone surrogate:
    the outputs dead-letter it, but the writer must not depend on that) is refused like a
    row the table refuses (decision 0200), shown as kind=client: the thread, and the
    worker, live on (it died with a UnicodeEncodeError, and flush() raised
    PostgresSinkError: the worker crashed, and again at every replay), and the rest of the
    batch is written."""
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint)")
    metrics = EngineMetrics("p")
    sink = started(config("t", [("key", None), ("n", None)], ["key"]), postgres_dsn, metrics)
    try:
        sink.write([{"key": "\ud800", "n": 1}, {"key": "ok", "n": 2}], ["surrogate", "ok"])
        assert sink.flush(20)  # no PostgresSinkError
        assert sink._thread.is_alive()
        [(origin, error)] = sink.take_refused()
        assert origin == "surrogate" and isinstance(error, UnicodeEncodeError)
        assert sink.health() == (True, "ok")
        assert execute(postgres_dsn, "SELECT key, n FROM t") == [("ok", 2)]
        errors = metrics.registry.get_sample_value(
            "streamherd_sink_errors_total", {"pipeline": "p", "sink": "postgres", "kind": "client"}
        )
        assert errors is not None and errors >= 1
    finally:
        sink.close(drain=False)


def test_the_exactly_once_commit_of_such_a_row_hands_it_back_not_raised(
    postgres_dsn: str,
) -> None:
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint)")
    sink = PostgresTransactionalSink(
        config("t", [("key", None), ("n", None)], ["key"]), "ns/p", "g", env={ENV: postgres_dsn}
    )
    try:
        sink.committed([("in", 0)])
        sink.write([{"key": "\ud800", "n": 1}, {"key": "ok", "n": 2}], ["surrogate", "ok"])
        assert sink.commit([("in", 0, 2)], "g1")  # the rest with the offsets
        assert [o for o, _ in sink.take_refused()] == ["surrogate"]
        assert sink.pending() == 0
        assert execute(postgres_dsn, "SELECT next_offset FROM streamherd_offsets") == [(2,)]
        assert execute(postgres_dsn, "SELECT key FROM t") == [("ok",)]
    finally:
        sink.close()


# ---------------------------------------------------------------------- 4. the last row wins


@pytest.mark.parametrize(
    ("column", "queue"),
    [
        ("text", [("1", 1), (1, 2), ("1", 3)]),
        ("double precision", [(1, 1), (1.0, 2), (1, 3)]),
        ("char(3)", [("a", 1), ("a ", 2), ("a", 3)]),
    ],
)
def test_keys_that_are_one_row_to_the_table_keep_the_latest_result(
    postgres_dsn: str, column: str, queue: list[tuple[Any, int]]
) -> None:
    """Keys the sink tells apart and the table does not make one statement touch a row
    twice; the chunk is written row by row, and the rows went in first-seen order of
    their keys: the result of the middle row, an older one, stayed."""
    execute(postgres_dsn, f"CREATE TABLE t (key {column} PRIMARY KEY, v bigint)")
    sink = started(config("t", [("key", None), ("v", None)], ["key"]), postgres_dsn)
    try:
        sink.write([{"key": k, "v": v} for k, v in queue])
        assert sink.flush(20)
    finally:
        sink.close()
    assert [v for (v,) in execute(postgres_dsn, "SELECT v FROM t")] == [3]


# ---------------------------------------------------------------------- 10. a signaling NaN key


def test_a_signaling_nan_key_is_written_as_numeric_nan(postgres_dsn: str) -> None:
    """Decimal('sNaN') (a user function's value, passed through natively) could not be
    hashed: the writer thread died. numeric has one NaN: both NaNs are that row."""
    execute(postgres_dsn, "CREATE TABLE t (key numeric PRIMARY KEY, v bigint)")
    sink = started(config("t", [("key", None), ("v", None)], ["key"]), postgres_dsn)
    try:
        drive(sink, [{"key": decimal.Decimal("sNaN"), "v": 1}])
        sink.write([{"key": decimal.Decimal("NaN"), "v": 2}, {"key": decimal.Decimal(1), "v": 3}])
        assert sink.flush(20)
    finally:
        sink.close()
    assert sorted(execute(postgres_dsn, "SELECT key::text, v FROM t")) == [("1", 3), ("NaN", 2)]


# ---------------------------------------------------------------------- 9. fields not written


def test_a_nul_in_a_field_the_sink_does_not_write_is_no_refusal(postgres_dsn: str) -> None:
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint)")
    sink = started(config("t", [("key", None), ("n", None)], ["key"]), postgres_dsn)
    try:
        assert drive(sink, [{"key": "k", "n": 1, "debug": "a\x00b"}]) == []
        assert drive(sink, [{"key": "k\x00", "n": 2}]) != []  # written: refused
        assert sink.flush(20)
    finally:
        sink.close()
    assert execute(postgres_dsn, "SELECT key, n FROM t") == [("k", 1)]


# ---------------------------------------------------------------------- 5, 6. exact numbers


def test_the_created_table_holds_an_exact_integer_sum(postgres_dsn: str) -> None:
    """The types createTable gives aggregates (operator/builders/worker_config.py): an
    integer sum or max above 2**53 was stored rounded in double precision."""
    cfg = config(
        "w",
        [("key", "text"), *((f, _AGGREGATE_TYPES[f]) for f in ("sum", "min", "max", "count"))],
        ["key"],
        createTable=True,
    )
    big = 2**53 + 1
    sink = started(cfg, postgres_dsn)
    try:
        sink.write([{"key": "k", "sum": big, "min": -big, "max": 10**30, "count": 3}])
        assert sink.flush(20)
    finally:
        sink.close()
    got = execute(postgres_dsn, "SELECT sum, min, max, count FROM w")
    assert got == [(big, -big, 10**30, 3)]


def test_floats_go_exactly_into_numeric_and_are_not_rounded_into_integers(
    postgres_dsn: str,
) -> None:
    """A float was sent as float8: into numeric it kept 15 digits (0.30000000000000004
    became 0.3), into an integer column 2.5 became 2. Now numeric stores its exact shortest
    form, an integer column takes a whole float and refuses a fraction (handed back for
    the dead-letter topic, decision 0200) instead of rounding it."""
    execute(postgres_dsn, "CREATE TABLE n (key text PRIMARY KEY, v numeric, i bigint)")
    sink = started(config("n", [("key", None), ("v", None), ("i", None)], ["key"]), postgres_dsn)
    values = {"a": 0.1 + 0.2, "b": float(2**53 + 2), "c": 1 / 3, "d": 1e-300, "e": -0.0}
    try:
        sink.write([{"key": k, "v": v} for k, v in values.items()])
        sink.write([{"key": "whole", "i": 2.0}])
        assert sink.flush(20)
        sink.write([{"key": "fraction", "i": 2.5}], ["the fraction"])
        assert sink.flush(20)
        [(origin, error)] = sink.take_refused()  # refused: never rounded
        assert origin == "the fraction"
        assert isinstance(error, psycopg.errors.InvalidTextRepresentation)
    finally:
        sink.close(drain=False)
    stored = dict(execute(postgres_dsn, "SELECT key, v FROM n WHERE v IS NOT NULL"))
    assert stored == {k: decimal.Decimal(repr(v)) for k, v in values.items()}
    assert execute(postgres_dsn, "SELECT i FROM n WHERE key = 'whole'") == [(2,)]
    assert execute(postgres_dsn, "SELECT count(*) FROM n WHERE key = 'fraction'") == [(0,)]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=30))
def test_any_float_reads_back_the_same_from_double_precision_and_numeric(
    postgres_dsn: str, floats: list[float]
) -> None:
    """Every float, NaN, the infinities and -0.0 included: the same double from double
    precision, its exact value from numeric."""
    execute(
        postgres_dsn,
        "DROP TABLE IF EXISTS f; CREATE TABLE f (i int PRIMARY KEY, d double precision, n numeric)",
    )
    sink = started(config("f", [("i", None), ("d", None), ("n", None)], ["i"]), postgres_dsn)
    try:
        sink.write([{"i": i, "d": x, "n": x} for i, x in enumerate(floats)])
        assert sink.flush(20)
    finally:
        sink.close()
    for i, d, n in execute(postgres_dsn, "SELECT i, d, n FROM f"):
        x = floats[i]
        if math.isnan(x):
            assert math.isnan(d) and n.is_nan()
            continue
        assert d == x and math.copysign(1.0, d) == math.copysign(1.0, x)
        assert n == (decimal.Decimal(repr(x)) if math.isfinite(x) else decimal.Decimal(x))


# ---------------------------------------------------------------------- 2. null keys, your table


@pytest.mark.parametrize(
    ("index", "taken"),
    [
        ("UNIQUE (key, ws)", False),  # nulls distinct: each write would add a row
        ("PRIMARY KEY (key, ws)", False),  # NOT NULL: refused for ever
        ("UNIQUE NULLS NOT DISTINCT (key, ws)", True),
    ],
)
def test_a_null_key_is_refused_unless_the_table_matches_nulls(
    postgres_dsn: str, index: str, taken: bool
) -> None:
    execute(postgres_dsn, f"CREATE TABLE u (key text, ws timestamptz, n bigint, {index})")
    cfg = config("u", [("key", None), ("ws", None), ("n", None)], ["key", "ws"])
    result = {"key": None, "ws": "2026-01-01T00:00:00Z"}
    for attempt in range(3):  # the first write, an update, a replay
        sink = started(cfg, postgres_dsn)
        try:
            refused = drive(sink, [{**result, "n": 10 + attempt}, {"key": "a", "ws": None, "n": 1}])
            assert len(refused) == (0 if taken else 2), refused
            assert sink.flush(20)
        finally:
            sink.close()
    rows = execute(postgres_dsn, "SELECT key, n FROM u ORDER BY key")
    assert rows == ([("a", 1), (None, 12)] if taken else [])


def test_a_null_key_waits_for_the_table_to_be_read(postgres_dsn: str) -> None:
    """Before its first connection a sink does not know the table: a null key is refused
    (a dead letter, visible) rather than risk a duplicate."""
    execute(postgres_dsn, "CREATE TABLE u (key text UNIQUE NULLS NOT DISTINCT, n bigint)")
    cfg = config("u", [("key", None), ("n", None)], ["key"])
    sink = PostgresSink(cfg, "ns/p", None, env={ENV: "host=/nonexistent"})
    try:
        assert sink.refusal({"key": None, "n": 1}) is not None
        assert sink.refusal({"key": "x", "n": 1}) is None
    finally:
        sink.close(drain=False)


# ---------------------------------------------------------------------- 7. json columns


def test_every_value_for_a_json_column_is_written_as_json(postgres_dsn: str) -> None:
    """A string was sent untyped, and a jsonb column parsed it: "123" became the number 123,
    "true" true, and "hello" was refused for ever."""
    execute(postgres_dsn, "CREATE TABLE j (key text PRIMARY KEY, b jsonb, t json)")
    sink = started(config("j", [("key", None), ("b", None), ("t", None)], ["key"]), postgres_dsn)
    values: dict[str, Any] = {
        "s1": "123",
        "s2": "true",
        "s3": '{"a": 1}',
        "s4": "null",
        "s5": "hello",
        "n": 5,
        "big": 2**70,
        "f": 0.1,
        "b": False,
        "o": {"a": [1, "x"]},
        "none": None,
    }
    try:
        sink.write([{"key": k, "b": v, "t": v} for k, v in values.items()])
        assert sink.flush(20)
    finally:
        sink.close()
    got = {k: (b, t) for k, b, t in execute(postgres_dsn, "SELECT key, b, t FROM j")}
    assert got == {k: (v, v) for k, v in values.items()}
    kinds = dict(execute(postgres_dsn, "SELECT key, jsonb_typeof(b) FROM j WHERE key LIKE 's%'"))
    assert set(kinds.values()) == {"string"}


# ---------------------------------------------------------------------- 8, 11. creating tables


def _role(postgres_dsn: str) -> str:
    """A role that may write the tables it is granted and create nothing (PostgreSQL 15's
    default for public)."""
    name = f"w_{uuid.uuid4().hex[:8]}"
    execute(postgres_dsn, f"CREATE ROLE {name} LOGIN PASSWORD 'pw'")
    execute(postgres_dsn, f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {name}")
    return make_conninfo(postgres_dsn, user=name, password="pw")


def test_a_role_without_create_writes_tables_that_exist(postgres_dsn: str) -> None:
    """CREATE TABLE IF NOT EXISTS at every connect needs CREATE on the schema even when the
    table exists: a least-privilege role never connected (exactly-once never committed)."""
    cfg = config("res", [("key", "text"), ("n", "bigint")], ["key"], createTable=True)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(create_table_statement(cfg))
        conn.execute(create_offsets_statement("res"))
    dsn = _role(postgres_dsn)
    user = conninfo_to_dict(dsn)["user"]
    execute(postgres_dsn, f"GRANT SELECT, INSERT, UPDATE ON res, streamherd_offsets TO {user}")
    sink = started(cfg, dsn)
    try:
        sink.write([{"key": "a", "n": 1}])
        assert sink.flush(20)
    finally:
        sink.close()
    exactly = PostgresTransactionalSink(cfg, "ns/p", "g", env={ENV: dsn})
    try:
        exactly.committed([("in", 0)])
        exactly.write([{"key": "b", "n": 2}])
        assert exactly.commit([("in", 0, 1)], "g1")
    finally:
        exactly.close()
    assert sorted(execute(postgres_dsn, "SELECT key, n FROM res")) == [("a", 1), ("b", 2)]


def test_a_table_found_through_the_search_path_is_not_created_again(postgres_dsn: str) -> None:
    """``search_path = a, b`` with the table in ``b``: CREATE TABLE IF NOT EXISTS only
    looked in ``a``, created an empty ``a.t`` there, and the writes went to it."""
    execute(
        postgres_dsn,
        "CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE b.t (key text PRIMARY KEY, n bigint)",
    )
    dsn = postgres_dsn + " options='-c search_path=a,b'"
    sink = started(config("t", [("key", "text"), ("n", "bigint")], ["key"], createTable=True), dsn)
    try:
        sink.write([{"key": "k", "n": 1}])
        assert sink.flush(20)
    finally:
        sink.close()
    assert execute(postgres_dsn, "SELECT key, n FROM b.t") == [("k", 1)]
    assert execute(postgres_dsn, "SELECT to_regclass('a.t')") == [(None,)]


def test_bytes_into_text_and_text_into_bytea_are_stored_as_they_are_or_refused(
    postgres_dsn: str,
) -> None:
    """Bytes (a raw source's ``value``) went as bytea whatever the column: a text column's
    assignment cast stored their hex escape, b"hi" as the text \\x6869, and a string went
    to a bytea column as text, its backslashes read as escapes: "\\x41" stored the one byte
    A (session 26's finding). Now bytes reach a text column as their UTF-8 text and a string
    a bytea column as its UTF-8 bytes; bytes that are no UTF-8 (and a string with a lone
    surrogate) are refused rows, for the dead-letter topic."""
    execute(postgres_dsn, "CREATE TABLE b (key text PRIMARY KEY, t text, v varchar(20), raw bytea)")
    names = ["key", "t", "v", "raw"]
    sink = started(config("b", [(n, None) for n in names], ["key"]), postgres_dsn)
    rows: list[tuple[dict[str, Any], bool]] = [
        ({"key": "utf8", "t": "héllo".encode()}, True),
        ({"key": "varchar", "v": b"hi"}, True),
        ({"key": "latin1", "t": "héllo".encode("latin-1")}, False),
        ({"key": "escape", "raw": "\\x41"}, True),
        ({"key": "text-raw", "raw": "é"}, True),
        ({"key": "bytes-raw", "raw": b"\x00\xff"}, True),
        ({"key": "surrogate", "raw": "\udcff"}, False),
        ({"key": "text", "t": "plain"}, True),
    ]
    try:
        sink.write([r for r, _ in rows], [r["key"] for r, _ in rows])
        assert sink.flush(20)
        refused = {o: type(e).__name__ for o, e in sink.take_refused()}
        # Judged before the write: a NUL no text column holds, but a bytea column does.
        assert sink.refusal({"key": "nul", "t": "a\x00b"}) is not None
        assert sink.refusal({"key": "nul", "raw": "a\x00b"}) is None
        sink.write([{"key": "nul", "raw": "a\x00b"}], ["nul"])
        assert sink.flush(20) and sink.take_refused() == []
    finally:
        sink.close()
    assert set(refused) == {r["key"] for r, ok in rows if not ok}, refused
    stored = {k: (t, v, raw) for k, t, v, raw in execute(postgres_dsn, "SELECT * FROM b")}
    assert bytes(stored["nul"][2]) == b"a\x00b"
    assert stored["utf8"][0] == "héllo" and stored["varchar"][1] == "hi"
    assert stored["text"][0] == "plain"
    assert bytes(stored["escape"][2]) == b"\\x41"
    assert bytes(stored["text-raw"][2]) == "é".encode()
    assert bytes(stored["bytes-raw"][2]) == b"\x00\xff"


def test_a_float_or_decimal_no_column_reads_as_a_number_is_refused_not_reinterpreted(
    postgres_dsn: str,
) -> None:
    """Sent as exact text (0199), a float was parsed by the input of every column type:
    90.0 into an ``interval`` became 90 seconds and 1.0 into a ``boolean`` true; a
    Decimal went as numeric and was cast, Decimal("2.5") into an integer column rounded to
    2 (a helper's findings, session 26). Now a float goes as float8 to a column that does
    not read numbers (the server refuses it where no cast exists) and a Decimal as text to
    an integer column: refused rows, handed back for the dead-letter topic. Numbers still
    reach number and text columns exactly."""
    execute(
        postgres_dsn,
        "CREATE TABLE v (key text PRIMARY KEY, span interval, flag boolean, i bigint, "
        "d numeric, t text, m money)",
    )
    names = ["key", "span", "flag", "i", "d", "t", "m"]
    sink = started(config("v", [(n, None) for n in names], ["key"]), postgres_dsn)
    rows: list[tuple[dict[str, Any], bool]] = [
        ({"key": "span", "span": 90.0}, False),
        ({"key": "flag", "flag": 1.0}, False),
        ({"key": "half", "i": decimal.Decimal("2.5")}, False),
        ({"key": "nan", "i": decimal.Decimal("NaN")}, False),
        ({"key": "whole", "i": decimal.Decimal("2.000")}, True),
        ({"key": "exp", "i": decimal.Decimal("1E+2")}, True),
        ({"key": "big", "i": float(2**53)}, True),
        ({"key": "exact", "d": decimal.Decimal("0.1000000000000000000000000001")}, True),
        ({"key": "text", "t": 1e-05}, True),
        ({"key": "money", "m": 2.5}, True),
        ({"key": "interval-text", "span": "90 seconds"}, True),
    ]
    try:
        sink.write([r for r, _ in rows], [r["key"] for r, _ in rows])
        assert sink.flush(20)
        refused = {o: type(e).__name__ for o, e in sink.take_refused()}
    finally:
        sink.close()
    assert set(refused) == {r["key"] for r, ok in rows if not ok}, refused
    assert refused["span"] == "DatatypeMismatch" and refused["flag"] == "DatatypeMismatch"
    stored = {
        k: (i, d, t, m, str(span) if span is not None else None)
        for k, i, d, t, m, span in execute(
            postgres_dsn, "SELECT key, i, d, t, m::numeric, span FROM v"
        )
    }
    assert stored["whole"][0] == 2 and stored["exp"][0] == 100 and stored["big"][0] == 2**53
    assert stored["exact"][1] == decimal.Decimal("0.1000000000000000000000000001")
    assert stored["text"][2] == "1e-05" and stored["money"][3] == decimal.Decimal("2.50")
    assert stored["interval-text"][4] == "0:01:30"
