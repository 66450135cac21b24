"""sink.postgres from the manifest to the worker: API validation, the WorkerConfig the
operator renders (typed columns, upsert key, env var names), the Secret keys the pod reads,
and the SQL the sink runs. Pure: no database here (tests/integration/storage/ has one)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.credentials import credentials
from streamherd.operator.builders.worker_config import build_worker_config
from streamherd.operator.builders.workload import build_deployment
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.sinks_postgres import (
    _adapt,
    conninfo_from_env,
    create_table_statement,
    latest,
    upsert_statement,
    without_connection_values,
)
from tests.infra.paths import REPO_ROOT

SETTINGS = OperatorSettings(worker_image="ghcr.io/streamherd/streamherd:test")


def manifest(postgres: dict[str, Any], windowed: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / "02-clicks-per-minute.yaml").read_text()
    )
    doc["metadata"] = {"name": "clicks", "namespace": "shop"}
    doc["spec"]["sink"] = {"postgres": postgres}
    if not windowed:
        doc["spec"]["processor"]["steps"] = doc["spec"]["processor"]["steps"][:1]
    return doc


PG = {"table": "analytics.clicks", "connection": {"secretName": "db", "dsnKey": "uri"}}


def test_window_results_get_typed_columns_and_the_window_key() -> None:
    p = StreamPipeline.model_validate(manifest({**PG, "createTable": True}))
    sink = build_worker_config(p, SETTINGS).sink.postgres
    assert sink is not None
    assert [(c.name, c.type) for c in sink.columns] == [
        ("key", "text"),
        ("window_start", "timestamptz"),
        ("window_end", "timestamptz"),
        ("clicks", "bigint"),
        ("bytes", "numeric"),  # a sum and a max of integers are exact (numeric)
        ("maxLatencyMs", "numeric"),
    ]
    assert sink.key_columns == ["key", "window_start", "window_end"]
    assert sink.dsn_env == "STREAMHERD_SINK_POSTGRES_DSN" and sink.password_env is None
    assert sink.create_table


def test_the_dsn_reaches_the_pod_only_as_a_secret_reference() -> None:
    p = StreamPipeline.model_validate(manifest(PG))
    creds = credentials(p.spec)
    assert creds.required_keys() == {"db": {"uri"}}
    dep = build_deployment(p, SETTINGS, secrets_hash="x")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    [var] = [e for e in env if e["name"] == "STREAMHERD_SINK_POSTGRES_DSN"]
    assert var["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "uri"}


def test_separate_fields_with_renamed_keys() -> None:
    conn = {"secretName": "app", "keys": {"user": "username"}}
    p = StreamPipeline.model_validate(manifest({**PG, "connection": conn}))
    assert credentials(p.spec).required_keys() == {
        "app": {"host", "port", "username", "password", "dbname"}
    }
    sink = build_worker_config(p, SETTINGS).sink.postgres
    assert sink is not None and sink.user_env == "STREAMHERD_SINK_POSTGRES_USER"
    default = {"secretName": "app"}
    p2 = StreamPipeline.model_validate(manifest({**PG, "connection": default}))
    assert credentials(p2.spec).required_keys() == {
        "app": {"host", "port", "user", "password", "dbname"}
    }


def test_stateless_pipelines_name_their_columns_and_key() -> None:
    pg = {**PG, "columns": ["page", "status", "ts"], "keyColumns": ["page", "ts"]}
    p = StreamPipeline.model_validate(manifest(pg, windowed=False))
    sink = build_worker_config(p, SETTINGS).sink.postgres
    assert sink is not None
    assert [c.name for c in sink.columns] == ["page", "status", "ts"]
    assert all(c.type is None for c in sink.columns)


@pytest.mark.parametrize(
    ("change", "windowed", "message"),
    [
        ({"connection": {"secretName": "db", "dsnKey": "u", "keys": {}}}, True, "not both"),
        ({}, False, "needs columns and keyColumns"),
        ({"columns": ["a"], "keyColumns": ["a"], "createTable": True}, False, "no createTable"),
        ({"keyColumns": ["nope"]}, True, "not written columns"),
        ({"columns": ["key", "window_start", "whatever"]}, True, "not window result fields"),
        ({"table": "a.b.c"}, True, "pattern"),
    ],
)
def test_refused(change: dict[str, Any], windowed: bool, message: str) -> None:
    """Refused by validate and the operator (the schema, or operator/api/rules.py)."""
    _, problems = parse_pipeline(manifest({**PG, **change}, windowed))
    assert any(message in p for p in problems), problems


def test_exactly_one_sink() -> None:
    doc = manifest(PG)
    doc["spec"]["sink"]["stdout"] = {}
    _, problems = parse_pipeline(doc)
    assert problems == ["spec.sink: sink needs exactly one of kafka, stdout or postgres"]


def config(**extra: Any) -> PostgresSinkConfig:
    base = copy.deepcopy(
        {
            "dsnEnv": "D",
            "table": "s.t",
            "columns": [{"name": "k", "type": "text"}, {"name": "v", "type": "bigint"}],
            "keyColumns": ["k"],
        }
    )
    return PostgresSinkConfig.model_validate({**base, **extra})


def test_sql_is_quoted_and_upserts() -> None:
    stmt = upsert_statement(config(), 2).as_string(None)
    assert stmt == (
        'INSERT INTO "s"."t" ("k", "v") VALUES (%s, %s), (%s, %s) '
        'ON CONFLICT ("k") DO UPDATE SET "v" = EXCLUDED."v"'
    )
    only_keys = config(columns=[{"name": "k"}])
    assert upsert_statement(only_keys, 1).as_string(None).endswith("DO NOTHING")
    assert create_table_statement(config()).as_string(None) == (
        'CREATE TABLE IF NOT EXISTS "s"."t" ("k" text, "v" bigint, PRIMARY KEY ("k"))'
    )


def test_last_row_of_a_key_wins_within_a_batch() -> None:
    rows = [("a", 1), ("b", 2), ("a", 3)]
    assert latest(rows, [0]) == [("b", 2), ("a", 3)]
    # A key beyond 64 bits (a large integer key) cannot go through orjson; still deduplicated.
    big = [(2**70, 1), (2**70, 2), (2**70 + 1, 3)]
    assert latest(big, [0]) == [(2**70, 2), (2**70 + 1, 3)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.text(max_size=60),
                st.integers(-(2**80), 2**80),
                st.floats(allow_nan=True),
                st.none(),
                st.booleans(),
                st.lists(st.text(max_size=50), max_size=3),
            ),
            st.integers(0, 3),
        ),
        max_size=20,
    )
)
def test_each_key_keeps_its_own_last_row(rows: list[tuple[Any, int]]) -> None:
    """latest keeps exactly one row per key the table tells apart, the last: keys that are
    arrays beginning alike (a JSON column) were one key, as psycopg's Jsonb repr cut them at
    35 characters, and one window's result was never written; NaN, the infinities and null
    were one key too."""
    adapted = [(_adapt(k), n) for k, n in rows]
    kept = latest(adapted, [0])

    def ident(value: Any) -> Any:  # as PostgreSQL compares keys: NaN equals NaN, -0.0 is 0.0
        if isinstance(value, Jsonb):
            return ("jsonb", repr(value.obj))
        if type(value) is float:
            return ("float", "nan" if math.isnan(value) else value + 0.0)
        return (type(value).__name__, value)

    last: dict[Any, tuple[Any, int]] = {}
    for row in adapted:
        last.pop(ident(row[0]), None)  # in the order of the last rows
        last[ident(row[0])] = row
    assert [ident(k) for k, _ in kept] == list(last)
    assert kept == list(last.values())


def test_array_keys_that_begin_alike_are_two_rows() -> None:
    a = ["/products/category/electronics/item-1", "fr"]
    b = ["/products/category/electronics/item-2", "fr"]
    rows = [(_adapt(a), 1), (_adapt(b), 2), (_adapt(a), 3)]
    assert sorted(n for _, n in latest(rows, [0])) == [2, 3]


def test_connection_settings_come_from_the_environment() -> None:
    cfg = config(dsnEnv="D", passwordEnv="P")
    info = conninfo_from_env(cfg, {"D": "host=db dbname=x user=u", "P": "s3cret"})
    assert "password=s3cret" in info and "host=db" in info
    with pytest.raises(ValueError, match="no connection settings"):
        conninfo_from_env(cfg, {})
    with pytest.raises(ValidationError, match="createTable needs a type"):
        config(createTable=True, columns=[{"name": "k"}])


@pytest.mark.parametrize(
    "dsn", ["postgresql//u:s3cret@db/x", "host=db password=s3cret dbname", "user='s3cret"]
)
def test_settings_libpq_cannot_parse_are_named_without_their_value(dsn: str) -> None:
    """libpq's parse error quotes the text, password included: the error names the
    variable, never the value (it reaches the worker's log and `recover`'s output)."""
    cfg = config(dsnEnv="D")
    with pytest.raises(ValueError, match="connection settings in D cannot be parsed") as raised:
        conninfo_from_env(cfg, {"D": dsn})
    assert "s3cret" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_setting_that_is_not_utf8_is_named_without_its_value() -> None:
    """A Secret value that is not UTF-8 reaches the worker as surrogates (os.environ), and
    libpq's encoder quoted the character and its position: named without either."""
    cfg = config(dsnEnv="D", passwordEnv="P")
    text = b"p\xe4ssw\xf6rd".decode("utf-8", "surrogateescape")
    with pytest.raises(ValueError, match="P is not UTF-8 text") as raised:
        conninfo_from_env(cfg, {"D": "host=db dbname=x user=u", "P": text})
    assert "ssw" not in str(raised.value) and "position" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@given(
    st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"), min_size=3, max_size=20
    ).filter(lambda v: v.strip() == v and "'" not in v)
)
def test_no_connection_value_survives_in_a_connection_error(value: str) -> None:
    """Whatever UTF-8 text the Secret holds (but NUL, which neither an environment variable
    nor libpq can hold; other bytes are refused before: conninfo_from_env), and wherever
    libpq's message puts it (quoted or bare), the text keeps none of the connection's
    values."""
    info = make_conninfo("", host="db", user=value, password=value + "x", dbname="app")
    for text in (f'password authentication failed for user "{value}"',
                 f"failed to resolve host '{value}'", f"no such user {value} here"):  # fmt: skip
        cleaned = without_connection_values(text, info)
        assert value not in cleaned


def test_a_connection_error_keeps_what_is_not_a_connection_value() -> None:
    """The client address of a pg_hba refusal and the apostrophes of libpq's prose stay
    (hiding every quoted text hid them and joined "couldn't ... server's": a review's
    finding); the user and the database, the Secret's values, do not."""
    info = make_conninfo("", host="db1.internal,db2.internal", user="svc-app", dbname="orders")
    hba = 'FATAL:  no pg_hba.conf entry for host "10.1.2.3", user "svc-app", database "orders"'
    assert without_connection_values(hba, info) == (
        'FATAL:  no pg_hba.conf entry for host "10.1.2.3", user "<hidden>", database "<hidden>"'
    )
    prose = "couldn't connect: the server's reply wasn't understood"
    assert without_connection_values(prose, info) == prose
    # libpq names the one host of the list it failed on.
    failed = 'connection to server at "db2.internal" (10.0.0.7), port 5432 failed'
    assert "db2.internal" not in without_connection_values(failed, info)
