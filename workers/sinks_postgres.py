"""The PostgreSQL sink: results upserted into a table, confirmed before any checkpoint.

Used by :class:`streamherd.workers.sinks.Outputs` when ``sink.postgres`` is configured. The
engine thread only queues rows (:meth:`PostgresSink.write`); one writer thread takes them in
batches, drops duplicates of a key within a batch (the last row wins, as a replay would) and
runs ``INSERT ... ON CONFLICT (key columns) DO UPDATE`` in one transaction per batch.

Why this keeps every result exactly once in the table although delivery is at-least-once:

- the engine calls :meth:`flush` before every checkpoint and writes the checkpoint only when
  it returns True, i.e. when every row queued so far is in a *committed* transaction; so a
  checkpoint (and the Kafka offset commit after it) never covers a row the database has not
  confirmed;
- rows replayed after a crash carry the same key columns (key, window start, window end)
  and the same values, so the upsert rewrites identical rows: no duplicate, no change;
- an outage (connection refused, server restarted, ...) keeps the batch in hand and retries
  it with exponential backoff until it commits; a commit whose answer was lost is retried
  too, which the upsert makes harmless.

While the database is down or slow the queue grows; :meth:`behind` then tells the engine to
pause its partitions (backpressure) and :meth:`caught_up` to resume them. The outage shows
in ``streamherd_sink_up`` (0), ``streamherd_sink_errors_total{kind}``, in ``/readyz`` (503,
so the pipeline's Ready condition reports workers not ready) and in the logs.
docs/storage.md describes the table layout and operations.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import json
import logging
import math
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson
import psycopg
from psycopg import sql
from psycopg._encodings import pg2pyenc  # psycopg's own name map (not exported)
from psycopg.abc import PQGen
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Float8

from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics, SinkMetrics

log = logging.getLogger("streamherd.worker")

SINK_LABEL: Final = "postgres"
#: PostgreSQL accepts at most 65535 bind parameters per statement.
MAX_PARAMETERS: Final = 65_535
BACKOFF_FIRST_SECONDS: Final = 0.2
#: close() lets the writer write what is queued for this long, then stops it at its next
#: batch: rows not written by then no checkpoint covers, so a later run writes them again.
DRAIN_SECONDS: Final = 5.0
BACKOFF_MAX_SECONDS: Final = 10.0
#: flush() waits at most this long while the database is down: a postponed checkpoint is
#: cheap, a consume loop blocked for the whole flush timeout is not.
DOWN_FLUSH_WAIT_SECONDS: Final = 1.0
#: The longest one round trip to the database (a statement, a COMMIT, a PREPARE) may go
#: unanswered before the sink gives the connection up (decision 0188). A server that is
#: frozen (stopped, swapped out, a hung storage) or cut off keeps the TCP connection open:
#: its kernel acknowledges what is sent and answers keepalives, so without this bound the
#: sink would wait for ever. One statement writes at most batchRows rows: a healthy server,
#: or one waiting a while for a lock, answers well within it.
ANSWER_TIMEOUT_SECONDS: Final = 20.0
#: Bounds the connection attempt (libpq's connect_timeout, applied by psycopg as a whole).
CONNECT_TIMEOUT_SECONDS: Final = 5

Row = tuple[Any, ...]
RV = TypeVar("RV")
#: How often psycopg's wait wakes up (its own default, which it does not export).
WAIT_INTERVAL: Final = 0.1


class PostgresSinkError(RuntimeError):
    """The writer thread ended unexpectedly: nothing more can be confirmed."""


class NoAnswerError(psycopg.OperationalError):
    """The database left a round trip unanswered for :data:`ANSWER_TIMEOUT_SECONDS`; the
    connection was closed (a connection error like any other to the sinks)."""


class AnsweringConnection(psycopg.Connection[TupleRow]):
    """A connection whose every round trip is bounded by :data:`ANSWER_TIMEOUT_SECONDS`.

    Every exchange of psycopg's (a statement, a COMMIT, a ROLLBACK, PREPARE TRANSACTION)
    goes through :meth:`wait`; past the bound the connection is closed on the spot (its
    protocol state is unknown; a ROLLBACK on it would wait as long again) and
    :class:`NoAnswerError` raised."""

    answer_timeout: float = ANSWER_TIMEOUT_SECONDS

    def wait(
        self, gen: PQGen[RV], interval: float = WAIT_INTERVAL, timeout: float | None = None
    ) -> RV:
        bound = self.answer_timeout if timeout is None else min(timeout, self.answer_timeout)
        try:
            return super().wait(gen, interval, bound)
        except psycopg.errors._WaitTimeout:  # psycopg's internal error: converted, as it asks
            self.close()
            raise NoAnswerError(
                f"the database did not answer within {bound:g} s; connection closed"
            ) from None


class ExactFloatDumper(Dumper):
    """A float as untyped text, its exact shortest form (``repr``; an integral one as an
    integer): the column's own type parses it. psycopg sends a float as float8, and
    PostgreSQL's casts from float8 change it silently: to numeric it keeps 15 digits
    (0.30000000000000004 became 0.3, 2**53 + 2 became 9007199254740990), to an integer
    column it rounds (2.5 became 2). As text, numeric stores it exactly, double precision
    parses the same double, and an integer column takes a whole number and refuses a
    fraction (a type the table can mend, retried) instead of rounding it (a helper's
    finding)."""

    oid = 0  # unknown: typed by the column it goes to

    def dump(self, obj: float) -> bytes:
        return float_text(obj).encode()


def float_text(value: float) -> str:
    """What :class:`ExactFloatDumper` sends: its shortest ``repr`` (the number a Kafka
    sink writes, which parses back to the same double), an integral one written as an
    integer (so an integer column takes it: 1e+16 as 10000000000000000), ``-0`` for -0.0
    (double precision keeps its sign) and PostgreSQL's spelling of NaN and the infinities."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer():
        if value == 0:
            return "-0" if math.copysign(1.0, value) < 0 else "0"
        return str(int(decimal.Decimal(repr(value))))  # the shortest's digits, not the binary's
    return repr(value)


class ConnectError(psycopg.OperationalError):
    """A connection attempt that failed, its text without the connection's values
    (:func:`without_connection_values`); the SQLSTATE the server answered, if any, kept."""


#: What stands for a connection value in an error's text.
HIDDEN: Final = "<hidden>"


def without_connection_values(text: str, conninfo: str) -> str:
    """``text`` (libpq's error for a connection attempt) with every value of ``conninfo``
    replaced by ``<hidden>``, and each host of a list of hosts (libpq names the one it
    failed on).

    Every value of the connection string comes from the pipeline's Secret, and libpq quotes
    the one it fails on: ``password authentication failed for user "..."``, ``database
    "..." does not exist``, ``invalid integer value "..." for connection option "port"``,
    ``failed to resolve host '...'``. A Secret key mapped to the wrong field (the DSN's
    key as ``user``) put the whole DSN, password included, into the worker's log, and an
    unescaped ``@`` in a URI's password made most of it the host (a helper's findings).
    The rest of the text stays: the client address of a pg_hba refusal, a certificate's
    names (hiding every quoted text, as first done, hid those and joined the apostrophes
    of "couldn't ... server's": a review's finding)."""
    try:
        values = {str(v) for v in conninfo_to_dict(conninfo).values() if v is not None}
    except psycopg.ProgrammingError:
        values = set()
    values |= {part.strip() for v in values for part in v.split(",")}
    values.add(conninfo)
    for value in sorted((v for v in values if len(v) >= 3), key=len, reverse=True):
        text = text.replace(value, HIDDEN)
    return text


def connect(conninfo: str, pipeline: str) -> AnsweringConnection:
    """An autocommit connection for a sink: bounded connection attempt and round trips,
    TCP keepalives (a peer that vanished without closing shows as an error). Strings go as
    UTF-8 whatever the DSN says (the server converts them to its encoding; one it cannot
    hold is refused before the write, :func:`postgres_refusal`), floats exactly
    (:class:`ExactFloatDumper`). A failed attempt raises :class:`ConnectError`, whose
    text holds none of the connection's values (and which chains no error that does)."""
    try:
        return _connect(conninfo, pipeline)
    except psycopg.OperationalError as error:
        hidden = _hiding(type(error))(without_connection_values(str(error), conninfo))
        hidden.sqlstate = error.sqlstate
    raise hidden


_HIDING: dict[str, type[ConnectError]] = {}


def _hiding(cls: type[psycopg.OperationalError]) -> type[ConnectError]:
    """A ConnectError that is also of psycopg's class ``cls`` (``ConnectionTimeout``...),
    so that what tells them apart by class still does (and logs name it); one per class."""
    if issubclass(cls, ConnectError):
        return cls
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in _HIDING:
        _HIDING[key] = type(cls.__name__, (ConnectError, cls), {"__module__": __name__})
    return _HIDING[key]


def _connect(conninfo: str, pipeline: str) -> AnsweringConnection:
    conn = AnsweringConnection.connect(
        conninfo,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=f"streamherd {pipeline}"[:63],
        client_encoding="UTF8",
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )
    conn.adapters.register_dumper(float, ExactFloatDumper)
    return conn


def conninfo_from_env(config: PostgresSinkConfig, env: Mapping[str, str]) -> str:
    """The libpq connection string from the env vars the config names (values never logged)."""
    dsn = env.get(config.dsn_env, "") if config.dsn_env else ""
    fields = {
        "host": config.host_env,
        "port": config.port_env,
        "user": config.user_env,
        "password": config.password_env,
        "dbname": config.dbname_env,
    }
    parts = {k: env[v] for k, v in fields.items() if v and env.get(v)}
    names = [n for n in (config.dsn_env, *fields.values()) if n]
    for name in names:
        try:
            env.get(name, "").encode()
        except UnicodeEncodeError:
            # Not UTF-8 in the Secret (os.environ keeps the bytes as surrogates): libpq's
            # encoder would quote the character and its position, the value unseen here.
            raise ValueError(
                f"postgres sink: {name} is not UTF-8 text (the value is not shown)"
            ) from None
    if not dsn and not parts:
        named = names
        raise ValueError(
            "postgres sink: no connection settings; set "
            + (" or ".join(named) if named else "dsnEnv or the field env vars")
        )
    try:
        return make_conninfo(dsn, **parts)
    except psycopg.ProgrammingError:
        # libpq's message quotes the text it could not parse: the password with it.
        raise ValueError(
            f"postgres sink: the connection settings in "
            f"{' and '.join(n for n in names if env.get(n))} cannot be "
            "parsed by libpq (the value is not shown: it holds the password)"
        ) from None


def table_identifier(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split(".", 1))


def upsert_statement(config: PostgresSinkConfig, rows: int) -> sql.Composed:
    """``INSERT INTO t (cols) VALUES (...), ... ON CONFLICT (keys) DO UPDATE SET ...``."""
    names = [c.name for c in config.columns]
    one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(names)))
    updates = [n for n in names if n not in config.key_columns]
    action = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updates
            )
        )
        if updates
        else sql.SQL("DO NOTHING")
    )
    return sql.SQL("INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) {}").format(
        table_identifier(config.table),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join([one] * rows),
        sql.SQL(", ").join(map(sql.Identifier, config.key_columns)),
        action,
    )


# One advisory lock key for the sink's DDL ("streamherd" as a 64-bit number): creations are
# rare (a worker's start), so one key for all of them costs nothing and needs no naming rule.
DDL_LOCK_KEY: Final = int.from_bytes(b"streamhd", "big") & 0x7FFF_FFFF_FFFF_FFFF


def create_if_absent(
    conn: psycopg.Connection[Any], statement: sql.Composed, relation: sql.Identifier
) -> None:
    """Run a ``CREATE ... IF NOT EXISTS`` of ``relation`` unless it is found already.

    Looked up first (``to_regclass``, through the search path as the writes resolve it):
    ``CREATE TABLE IF NOT EXISTS`` needs the CREATE privilege on the schema even when the
    table exists (a role that may only write its tables failed at every connect, and
    exactly-once never committed), and it only looks in the schema it would create in (the
    first of the search path): with ``search_path = a, b`` and the table in ``b`` it
    created an empty ``a.t``, which the writes then went to (a helper's findings).

    ``IF NOT EXISTS`` is not safe under concurrency in PostgreSQL: it checks the name before
    it takes it, so the losers of a race fail on a catalog's unique index, and which one
    (the relation, its row type, an index) depends on timing (unique violation, duplicate
    table, duplicate object). Rather than guess which of those are harmless, the creations
    take one transaction-scoped advisory lock and so run one after another; the second then
    sees the table and does nothing. A real conflict (a type already named like the table)
    still fails, with PostgreSQL's own message."""
    if relation_exists(conn, relation):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [DDL_LOCK_KEY])
        conn.execute(statement)


def relation_exists(conn: psycopg.Connection[Any], relation: sql.Identifier) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", [relation.as_string(conn)]).fetchone()
    return row is not None and row[0] is not None


def create_table_statement(config: PostgresSinkConfig) -> sql.Composed:
    """``CREATE TABLE IF NOT EXISTS`` with the key columns as primary key (the upsert target)."""
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type or "text"))
        for c in config.columns
    ]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
        table_identifier(config.table),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(map(sql.Identifier, config.key_columns)),
    )


@dataclass(frozen=True)
class TableFacts:
    """What the sink reads of its database and table at every connect, for the refusals
    (:func:`postgres_refusal`, on the engine thread) and the writes.

    ``encoding``: the server's encoding, whose strings the table can hold ("" while not
    known: judged as UTF-8, where every string the sink gets fits). ``json_columns``: the
    json/jsonb columns (domains over them too), by name: every value written there goes as
    JSON. ``null_keys``: the key columns that take a null and still match it on the next
    write (the upsert's unique index is ``NULLS NOT DISTINCT``, PostgreSQL 15, and the
    column is nullable); a null in any other key column is refused before the write."""

    encoding: str = ""
    json_columns: Mapping[str, str] = field(default_factory=dict)
    null_keys: frozenset[str] = frozenset()
    #: Every written column's type, by name (through a domain to its base type; no
    #: modifiers: ``numeric``, ``character varying``): what :func:`bound` sends by.
    column_types: Mapping[str, str] = field(default_factory=dict)


#: The types of the table's columns (through a domain to its base type) and NOT NULL.
_COLUMNS_QUERY: Final = (
    "SELECT a.attnum, a.attname, format_type(("
    # Through every domain (a domain over a domain too) to the type under them all.
    "WITH RECURSIVE d(oid, base) AS (SELECT t.oid, t.typbasetype FROM pg_type t "
    "WHERE t.oid = a.atttypid UNION ALL SELECT t.oid, t.typbasetype FROM pg_type t "
    "JOIN d ON t.oid = d.base) SELECT oid FROM d WHERE base = 0), NULL), a.attnotnull "
    "FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
)
#: The unique indexes on plain columns that null keys match in (PostgreSQL 15).
_NULLS_NOT_DISTINCT_QUERY: Final = (
    "SELECT indkey::int2[] FROM pg_index WHERE indrelid = %s AND indisunique "
    "AND indnullsnotdistinct AND indpred IS NULL AND indexprs IS NULL"
)


def read_table_facts(conn: psycopg.Connection[Any], config: PostgresSinkConfig) -> TableFacts:
    """The database's encoding and the table's json columns and null-matching keys (none
    while the table does not exist: the write then fails, is retried, and the next
    connection reads them again)."""
    name = conn.info.parameter_status("server_encoding") or ""
    row = conn.execute(
        "SELECT to_regclass(%s)::oid", [table_identifier(config.table).as_string(conn)]
    ).fetchone()
    if row is None or row[0] is None:
        return TableFacts(encoding=name)
    columns = {
        str(n): (int(num), str(t), bool(notnull))
        for num, n, t, notnull in conn.execute(_COLUMNS_QUERY, [row[0]]).fetchall()
    }
    json_columns = {
        n: t for n, (_, t, _) in columns.items() if t in ("json", "jsonb") and n in _names(config)
    }
    null_keys: frozenset[str] = frozenset()
    if conn.info.server_version >= 150000:
        keys = {columns[k][0] for k in config.key_columns if k in columns}
        if len(keys) == len(config.key_columns) and any(
            set(indkey) == keys
            for (indkey,) in conn.execute(_NULLS_NOT_DISTINCT_QUERY, [row[0]]).fetchall()
        ):
            null_keys = frozenset(k for k in config.key_columns if not columns[k][2])
    written = set(_names(config))
    return TableFacts(
        encoding=name,
        json_columns=json_columns,
        null_keys=null_keys,
        column_types={n: t for n, (_, t, _) in columns.items() if n in written},
    )


def _names(config: PostgresSinkConfig) -> list[str]:
    return [c.name for c in config.columns]


def _adapt(value: Any) -> Any:
    # Nested JSON values go to json/jsonb columns as such; scalars as psycopg adapts them
    # (strings are sent untyped, so '2026-01-01T00:00:10.000Z' lands in a timestamptz).
    if isinstance(value, dict | list):
        return Jsonb(value)
    return value


def as_json(rows: Sequence[Row], json_index: Mapping[int, str]) -> list[Row]:
    """``rows`` with every value bound for a json or jsonb column (``json_index``: its
    position -> the column's type) sent as JSON. A string went untyped, and the column
    parsed it as JSON text: "123" became the number 123, "true" true, and "hello" was
    refused, retried for ever (a helper's finding). Values JSON has no form for (bytes, a
    Decimal, NaN, a timedelta) are left as they are: the column refuses them, a type the
    table can mend."""
    if not json_index:
        return list(rows)
    return [
        tuple(_as_json(v, json_index[i]) if i in json_index else v for i, v in enumerate(row))
        for row in rows
    ]


def _as_json(value: Any, kind: str) -> Any:
    if isinstance(value, Jsonb):
        value = value.obj
    elif value is None or not isinstance(value, str | int | float | dict | list):
        return value
    if type(value) is float and not math.isfinite(value):
        return value
    return Json(value) if kind == "json" else Jsonb(value)


#: Column types whose input reads a number's text as that number, or keeps it as text: a
#: float goes to them as its exact text (decision 0199). Into any other type it goes as
#: float8, which the server casts where a cast exists and refuses where none does: the
#: input of ``interval`` read 90.0 as 90 seconds and ``boolean`` 1.0 as true (a helper's
#: finding, session 26).
FLOAT_TEXT_TYPES: Final = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "real",
        "double precision",
        "money",
        "text",
        "character varying",
        "character",
    }
)
#: Integer column types: a Decimal goes to them as text, which their input refuses unless
#: it is a whole number (a numeric parameter was cast, and Decimal("2.5") rounded to 2).
INTEGER_TYPES: Final = frozenset({"smallint", "integer", "bigint"})
#: Text column types: bytes go to them as their UTF-8 text. Sent as bytea, the column's
#: assignment cast stored the hex escape (b"hi" became the text \x6869: session 26's
#: finding); bytes that are no UTF-8 are refused, as a Kafka sink could not write them as
#: text either.
TEXT_TYPES: Final = frozenset({"text", "character varying", "character", "citext"})


def bound(rows: Sequence[Row], types: Mapping[int, str]) -> list[Row]:
    """``rows`` with each value bound so that its column stores it exactly or refuses it
    (``types``: a position -> its column's type): a float for a column not of
    :data:`FLOAT_TEXT_TYPES` as float8, a Decimal for an integer column as its text (a
    whole one as an integer), bytes for a :data:`TEXT_TYPES` column as their UTF-8 text,
    and a string for a ``bytea`` column as its UTF-8 bytes (sent as text, its backslashes
    were read as bytea escapes: "\\x41" stored the byte A)."""
    typed = [i for i, t in types.items() if t not in FLOAT_TEXT_TYPES]
    integers = [i for i, t in types.items() if t in INTEGER_TYPES]
    texts = [i for i, t in types.items() if t in TEXT_TYPES]
    binaries = [i for i, t in types.items() if t == "bytea"]
    if not typed and not integers and not texts:
        return list(rows)
    out = []
    for row in rows:
        values = list(row)
        for i in typed:
            if type(values[i]) is float:
                values[i] = Float8(values[i])
        for i in integers:
            if isinstance(values[i], decimal.Decimal):
                values[i] = _decimal_text(values[i])
        for i in texts:
            if isinstance(values[i], bytes):
                # No UTF-8: lone surrogates, which psycopg refuses to send (a refused row).
                values[i] = values[i].decode("utf-8", "surrogateescape")
        for i in binaries:
            if isinstance(values[i], str):
                values[i] = _utf8_or_as_is(values[i])
        out.append(tuple(values))
    return out


def _utf8_or_as_is(text: str) -> bytes | str:
    """``text``'s UTF-8 bytes; a string with a lone surrogate (no UTF-8) as it is: psycopg
    refuses to send it, so its row is refused, not stored in some other encoding."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text


def _decimal_text(value: decimal.Decimal) -> str:
    if value.is_finite() and value == value.to_integral_value():
        return str(int(value))
    return str(value)


def latest(rows: Sequence[Row], key_index: Sequence[int]) -> list[Row]:
    """The last row of each key, in the order of those last rows (:func:`latest_positions`)."""
    return [rows[i] for i in latest_positions(rows, key_index)]


def latest_positions(rows: Sequence[Row], key_index: Sequence[int]) -> list[int]:
    """The positions of the last row of each key, in the order of those last rows (queue
    order): one statement may not touch a row twice (ON CONFLICT DO UPDATE refuses), and
    the last one is what a replay writes. Keys the table holds as one row but
    :func:`_identity` tells apart ("1" and 1 in a text column) are written one after
    another when a statement refuses them together: in first-seen order an older result
    was written last and stayed (a helper's finding)."""
    by_key: dict[Any, int] = {}
    for position, row in enumerate(rows):
        identity = tuple(_identity(row[i]) for i in key_index)
        by_key.pop(identity, None)  # a later row moves its key to the end
        by_key[identity] = position
    return list(by_key.values())


def _identity(value: Any) -> Any:
    """A key column's value as a hashable identity, by type and value as the table tells
    keys apart: a JSON key (psycopg's Jsonb) by its whole value, a float NaN as one value
    (PostgreSQL's NaN equals itself), -0.0 as 0.0. Identities were the values as JSON,
    where psycopg's Jsonb wrote its repr, cut to 35 characters: two array keys that begin
    alike were one row, and one window's result was never written (a helper's finding);
    NaN, the infinities and null were all JSON null."""
    if isinstance(value, Json | Jsonb):
        return ("jsonb", _identity(value.obj))
    if isinstance(value, list | tuple):
        return ("array", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _identity(v)) for k, v in value.items())))
    if type(value) is float:
        return ("float", "nan" if math.isnan(value) else value + 0.0)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, decimal.Decimal) and value.is_nan():
        # A signaling NaN cannot be hashed (TypeError: the writer thread died, a helper's
        # finding); numeric has one NaN, equal to itself, which both NaNs are written as.
        return ("Decimal", "nan")
    return (type(value).__name__, value)


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


def postgres_refusal(
    value: Mapping[str, Any] | bytes,
    key_columns: Sequence[str] = (),
    *,
    primary_key: bool = False,
    columns: Sequence[str] | None = None,
    null_keys: Collection[str] | None = None,
    encoding: str = "",
) -> str | None:
    """Why PostgreSQL can never store this result in its table, or None. The sinks judge
    with what they know of the table (:meth:`PostgresSink.refusal`).

    Only the fields written are judged (``columns``; None: every field). A string holding
    the NUL character (U+0000): text, varchar, json and jsonb all refuse it. A string the
    database's ``encoding`` (its server encoding, e.g. ``LATIN1``) has no form for: no
    column of that database can hold it (psycopg raised UnicodeEncodeError, which killed
    the writer thread; with the DSN's client_encoding UTF8 the server refused it, retried
    for ever: a helper's finding). A null in a key column (``key_columns``: the upsert's)
    that ``null_keys`` does not name (None: ``primary_key`` says whether nulls are refused
    in all of them, the table the sink creates): a primary key or NOT NULL refuses it, and
    a unique index whose nulls are distinct never matches it, so each write of the result
    added a row (duplicates, silently); only a nullable column under a unique index with
    NULLS NOT DISTINCT (PostgreSQL 15) takes it. Key columns whose
    index entry cannot fit a unique btree index, which every table an upsert can target
    has: over :data:`BTREE_MAX_ITEM_BYTES` with the entry's header even as zlib
    compresses them (PostgreSQL's own compression does no better, and stores a value it
    cannot shrink by a quarter as it is: such a key, which zlib would fit, is refused by
    the server instead, and found in its batch by :func:`upsert_rows`). Such a result would
    be retried forever and stop the pipeline (a helper's finding, for the last two), so the
    outputs dead-letter it instead (reason ``sink``). What the table refuses by its types
    and constraints is found when the batch is written (decision 0200)."""
    codec = _codec(encoding)
    if isinstance(value, bytes):
        # JSON text: NUL can only appear escaped (\u0000), in a key or a string.
        if columns is None and codec is None:
            if b"\\u0000" in value and _holds_nul(orjson.loads(value)):
                return _NUL_MESSAGE
            if not key_columns:
                return None
        value = orjson.loads(value)
        if not isinstance(value, Mapping):
            return None
    written: Any = value if columns is None else [value.get(c) for c in columns]
    if _holds_nul(written):
        return _NUL_MESSAGE
    if codec is not None:
        unencodable = _unencodable(written, codec)
        if unencodable is not None:
            return (
                f"the database's encoding {encoding} has no form for the string "
                f"{unencodable[:40]!r}: no column of it can hold the string"
            )
    refused = key_columns if primary_key else ()
    if null_keys is not None:
        refused = [c for c in key_columns if c not in null_keys]
    for column in refused:
        if value.get(column) is None:
            return (
                f"key column {column!r} is null: the table refuses it (a primary key, NOT NULL) "
                "or would add a row at every write (a unique index whose nulls are distinct)"
            )
    raw = [_stored_bytes(value.get(column)) for column in key_columns]
    if sum(map(len, raw)) > BTREE_MAX_ITEM_BYTES:
        smallest = sum(len(zlib.compress(b, 9)) for b in raw)
        if smallest > BTREE_MAX_ITEM_BYTES:
            return (
                f"the key columns hold {sum(map(len, raw))} bytes ({smallest} compressed): a "
                f"unique index entry holds at most {BTREE_MAX_ITEM_BYTES} (PostgreSQL refuses "
                "the row in every table an upsert can target)"
            )
    return None


@functools.cache
def _codec(encoding: str) -> str | None:
    """The Python codec of a server encoding whose strings not every str fits; None for
    UTF-8 and SQL_ASCII (which stores any bytes), and for an encoding Python has no codec
    for (MULE_INTERNAL: not judged here, the server's refusal is retried)."""
    if encoding in ("", "UTF8", "SQL_ASCII"):
        return None
    try:
        return pg2pyenc(encoding.encode())
    except psycopg.NotSupportedError:
        return None


def _unencodable(value: Any, codec: str) -> str | None:
    """The first string in ``value`` (in JSON keys too) that ``codec`` cannot encode."""
    if isinstance(value, str):
        try:
            value.encode(codec)
        except UnicodeError:
            return value
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _unencodable(k, codec) or _unencodable(v, codec)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for v in value:
            found = _unencodable(v, codec)
            if found is not None:
                return found
    return None


#: The largest entry of a btree index (version 4, 8 KiB pages): "index row size ...
#: exceeds btree version 4 maximum 2704".
BTREE_MAX_ITEM_BYTES: Final = 2704


def _stored_bytes(value: Any) -> bytes:
    """About what a key column stores of a value: text as UTF-8, JSON as its text."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if value is None:
        return b""
    if isinstance(value, Mapping | list):
        try:
            return orjson.dumps(value, default=str)
        except TypeError:  # an integer beyond 64 bits
            return json.dumps(value, default=str).encode("utf-8", "surrogatepass")
    return b"12345678"  # a number, a timestamp: eight bytes


_NUL_MESSAGE: Final = (
    "PostgreSQL cannot store a string holding the NUL character (U+0000) in any text or JSON column"
)


#: SQLSTATE classes of errors that the row written causes, whatever the rows beside it:
#: data exceptions (22: a value the column's type refuses, a string too long, an infinity
#: numeric has no form for before PostgreSQL 14), integrity constraints (23: NOT NULL,
#: CHECK, a foreign key, another unique index), program limits (54: an index entry too
#: large for a btree) and PL/pgSQL's RAISE (P0: a trigger that refuses the row).
ROW_REFUSAL_CLASSES: Final = frozenset({"22", "23", "44", "54", "P0"})
#: And single codes of other classes: a value of a type the column takes no cast from.
ROW_REFUSAL_CODES: Final = frozenset({"42804"})
#: Codes of those classes that are the table's, whatever the row: a sequence (a serial or
#: identity column's default, evaluated even for a row that updates) at its maximum.
TABLE_REFUSAL_CODES: Final = frozenset({"2200H"})


def refused_by_row(error: BaseException) -> bool:
    """Whether ``error``, raised by a statement writing rows, is a row's fault: an error of
    :data:`ROW_REFUSAL_CLASSES` or :data:`ROW_REFUSAL_CODES` from the server, or one
    psycopg raised before sending (a value it cannot adapt or encode: a lone surrogate).
    Every other error (an outage, a missing table or column, a privilege, a lock timeout,
    a serialization failure) is the table's or the server's and is retried with the whole
    batch (decision 0200)."""
    if isinstance(error, psycopg.Error):
        state = error.sqlstate
        if state is None:
            return not isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
        if state in TABLE_REFUSAL_CODES or _no_partition(error):
            return False
        return state[:2] in ROW_REFUSAL_CLASSES or state in ROW_REFUSAL_CODES
    return isinstance(error, ValueError | TypeError | OverflowError)


def _no_partition(error: psycopg.Error) -> bool:
    """A partitioned table with no partition for the row (a time partition not made yet):
    a CHECK violation's SQLSTATE, 23514, naming the table but no constraint. The table's to
    mend (pg_partman running late): retried, where every row of that range was
    dead-lettered (a review's finding)."""
    diag = error.diag
    return error.sqlstate == "23514" and diag.constraint_name is None and bool(diag.table_name)


def isolate(
    part: Sequence[int], attempt: Callable[[Sequence[int]], BaseException | None]
) -> list[tuple[int, BaseException]]:
    """Write the rows at the positions ``part`` with ``attempt`` (None: written; an error:
    nothing of them was written; it raises what must fail the whole batch), halving a part
    that fails until each row that fails alone is found: those rows, with their errors.
    Every other row is written once, in the order of ``part`` (so the latest of two rows
    the table holds as one is written last). With k refused rows among n, about
    2k·log2(n) attempts: a batch with one bad row costs a few statements, not n."""
    error = attempt(part)
    if error is None:
        return []
    if len(part) == 1:
        return [(part[0], error)]
    half = (len(part) + 1) // 2
    return isolate(part[:half], attempt) + isolate(part[half:], attempt)


class IsolationPostponed(Exception):
    """Finding the refused rows of a batch took longer than its budget: nothing was
    written (the caller rolls the transaction back) and the batch is tried again later,
    without the rows found so far (``found``: their :func:`row_identity`, with their
    errors). Exactly-once writes the whole queue in the engine's thread at a checkpoint:
    a table refusing thousands of rows held it for minutes, past the consumer's
    ``max.poll.interval.ms`` and Kafka's transaction timeout, so the worker left its
    group, replayed, and met the same rows: a livelock (session 27's finding)."""

    def __init__(self, found: Mapping[Any, BaseException]) -> None:
        super().__init__(f"{len(found)} refused rows found within the budget")
        self.found = dict(found)


def upsert_rows(
    cur: psycopg.Cursor[Any],
    config: PostgresSinkConfig,
    rows: Sequence[Row],
    key_index: Sequence[int],
    per_statement: int,
    *,
    facts: TableFacts | None = None,
    known: Mapping[Any, BaseException] | None = None,
    budget: float | None = None,
    immediate: bool = False,
) -> list[tuple[int, BaseException]]:
    """Upsert ``rows`` inside the cursor's open transaction, the last row of each key,
    values bound for a json column as JSON (``facts``, read on this connection, and read
    again when rows were refused: :func:`check_facts`); the rows
    the table refused (:func:`refused_by_row`): their positions in ``rows`` and the errors.
    The outputs dead-letter them: one bad row was retried for ever and stopped the pipeline.

    A statement that fails with a row's error is undone to its savepoint and its rows are
    written in halves (:func:`isolate`). So is one that touches a row twice: two rows that
    :func:`latest` keeps apart can still be one row to the table (the string key "1" and
    the number key 1 in a text column, 1 and 1.0 in a double precision one), which
    PostgreSQL refuses (CardinalityViolation, again on every retry: the pipeline stopped
    for good); in halves, the last one wins, as it does when the two rows come in
    different batches (rows in queue order). Any other error raises: the caller retries
    the batch.

    ``known``: the rows an earlier try found refused, by their values (:func:`row_identity`),
    not sent again: positions go stale (a replay rebuilds the queue), values do not.
    ``budget``: seconds the halving may take from the first failed statement on; once it
    has found a refused row and the budget is spent, it stops there and raises
    :class:`IsolationPostponed` with the rows found so far (so each try makes progress).
    ``immediate``: deferred constraints are checked at each statement (``SET CONSTRAINTS
    ALL IMMEDIATE``), for a batch whose COMMIT (or PREPARE) a deferred constraint refused
    (a foreign key or unique one declared DEFERRABLE INITIALLY DEFERRED, a constraint
    trigger): checked there, outside the halving, the whole batch was refused at every try
    and the pipeline stopped. A row such a constraint takes only thanks to a later
    statement of its batch (a key referring to a row written after it) is refused in that
    try: it could not commit with its batch anyway (decision 0200)."""
    names = _names(config)
    json_index = {names.index(n): t for n, t in (facts.json_columns if facts else {}).items()}
    types = {names.index(n): t for n, t in (facts.column_types if facts else {}).items()}
    adapted = as_json(rows, json_index)
    latest = latest_positions(adapted, key_index)  # by the values, before binding
    # The rows a try before found refused (by their values): answered without a statement.
    known_at = _known_positions(adapted, known) if known else {}
    sent = bound(adapted, types)
    found: dict[int, BaseException] = {}  # refused alone, this time
    first_refusal: list[float] = []  # when the first statement failed
    if immediate:
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def attempt(part: Sequence[int]) -> BaseException | None:
        if found and budget is not None and time.monotonic() - first_refusal[0] > budget:
            raise IsolationPostponed({row_identity(adapted[p]): e for p, e in found.items()})
        cur.execute("SAVEPOINT streamherd_rows")
        try:
            cur.execute(upsert_statement(config, len(part)), [v for i in part for v in sent[i]])
        except Exception as error:
            twice = isinstance(error, psycopg.errors.CardinalityViolation)
            if not (twice or refused_by_row(error)):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT streamherd_rows")
            cur.execute("RELEASE SAVEPOINT streamherd_rows")
            first_refusal[:] = first_refusal or [time.monotonic()]
            if len(part) == 1:
                found[part[0]] = error
            return error
        cur.execute("RELEASE SAVEPOINT streamherd_rows")
        return None

    # Each key's latest row: those known refused are refused, the others written in halves.
    refused = [(p, known_at[p]) for p in latest if p in known_at]
    positions = [p for p in latest if p not in known_at]
    for i in range(0, len(positions), per_statement):
        refused += isolate(positions[i : i + per_statement], attempt)
    # A key whose latest row was refused keeps its latest row the table takes, as when the
    # rows come in different batches (a review's finding: the earlier result vanished);
    # the rows refused on the way are refused too. Only from the latest rows: a known
    # refused row a later row of its key has replaced since is no one's (a review's
    # finding: walked from too, it wrote the key's older value over the newer one).
    earlier = earlier_positions(adapted, key_index) if refused else {}
    for position, _ in list(refused):
        before = earlier.get(position)
        while before is not None:
            error = known_at[before] if before in known_at else attempt([before])
            if error is None:
                break
            refused.append((before, error))
            before = earlier.get(before)
    if refused and facts is not None:
        # Judged by the table as it is: raises TableChangedError when it changed since.
        check_facts(cur.connection, config, facts)
    return refused


def row_identity(row: Row) -> Any:
    """A row's values as one hashable identity (:func:`_identity` of each)."""
    return tuple(_identity(v) for v in row)


def _known_positions(
    rows: Sequence[Row], known: Mapping[Any, BaseException]
) -> dict[int, BaseException]:
    """The positions of ``rows`` whose values ``known`` holds as refused, with the error."""
    out = {}
    for position, row in enumerate(rows):
        error = known.get(row_identity(row))
        if error is not None:
            out[position] = error
    return out


def earlier_positions(rows: Sequence[Row], key_index: Sequence[int]) -> dict[int, int]:
    """Each row's position -> the position of the row of its key before it."""
    last: dict[Any, int] = {}
    earlier: dict[int, int] = {}
    for position, row in enumerate(rows):
        identity = tuple(_identity(row[i]) for i in key_index)
        if identity in last:
            earlier[position] = last[identity]
        last[identity] = position
    return earlier


class TableChangedError(RuntimeError):
    """Rows were refused, and the table is no longer as the connection read it (created or
    altered since): the batch is written again with what is read now."""


def check_facts(
    conn: psycopg.Connection[Any], config: PostgresSinkConfig, facts: TableFacts
) -> None:
    """Raise TableChangedError when the table's facts are not ``facts`` any more: a batch
    with refusals is judged by the table as it is (they were read only at connect, and a
    table made or altered since refused rows it would take: a review's finding)."""
    if read_table_facts(conn, config) != facts:
        raise TableChangedError(
            "the table changed since the sink connected; its batch is written again"
        )


def describe_refusal(error: BaseException) -> str:
    """One line for the log: the SQLSTATE and the first line of the message."""
    text = str(error).strip()
    first = text.splitlines()[0][:200] if text else type(error).__name__
    state = getattr(error, "sqlstate", None)
    return f"{state}: {first}" if state else first


def refused_rows(report: SinkMetrics, refused: Sequence[tuple[int, BaseException]]) -> None:
    """Count and log the rows a batch's table refused (one line per batch: each row's
    dead letter is logged by the outputs)."""
    report.failed(failure_kind(refused[0][1]))
    log_event(
        log,
        logging.WARNING,
        "sink-rows-refused",
        sink=SINK_LABEL,
        rows=len(refused),
        error=type(refused[0][1]).__name__,
        message=describe_refusal(refused[0][1]),
    )


def table_shape(config: PostgresSinkConfig) -> tuple[list[str], list[int], int]:
    """The column names, the key columns' indexes in a row, and how many rows one upsert
    statement takes (within PostgreSQL's parameter limit): what both PostgreSQL sinks write by."""
    names = [c.name for c in config.columns]
    key_index = [names.index(k) for k in config.key_columns]
    return names, key_index, max(1, min(config.batch_rows, MAX_PARAMETERS // len(names)))


def rows_of(values: Sequence[Mapping[str, Any] | bytes], names: Sequence[str]) -> list[Row]:
    """The rows of results (JSON objects, as dicts or encoded), columns in `names` order."""
    rows: list[Row] = []
    for value in values:
        record = orjson.loads(value) if isinstance(value, bytes) else value
        if not isinstance(record, Mapping):
            raise TypeError("postgres sink: a result must be a JSON object")
        rows.append(tuple(_adapt(record.get(n)) for n in names))
    return rows


def table_refusal(
    record: Mapping[str, Any] | bytes, config: PostgresSinkConfig, facts: TableFacts
) -> str | None:
    """:func:`postgres_refusal` of a sink's result: its written columns, the database's
    encoding, and null keys as the table treats them (before the first connection has read
    the table: refused, the safe side; a NULLS NOT DISTINCT table takes them from then on)."""
    # A string for a bytea column goes as its UTF-8 bytes (bound): a NUL or a character the
    # database's encoding lacks is no refusal there.
    binary = {name for name, kind in facts.column_types.items() if kind == "bytea"}
    return postgres_refusal(
        record,
        config.key_columns,
        columns=[c for c in _names(config) if c not in binary],
        null_keys=facts.null_keys,
        encoding=facts.encoding,
    )


#: SQLSTATE classes of a server that cannot serve now: connection exceptions (08),
#: insufficient resources (53: too many connections, disk full), operator intervention
#: (57: a shutdown, a cancelled statement) and system errors (58).
_OUTAGE_CLASSES: Final = frozenset({"08", "53", "57", "58"})


def failure_kind(error: BaseException) -> str:
    """``connection`` (an outage), ``sql`` (PostgreSQL refused) or ``client`` (psycopg
    could not send a row): the label of ``streamherd_sink_errors_total`` (with ``fenced``,
    workers/sinks_postgres_offsets.py's; all four named in its help text). By SQLSTATE
    where the server answered one: psycopg's OperationalError also covers errors that
    are the statement's (an index entry too large, 54000), logged as outages before."""
    state = error.sqlstate if isinstance(error, psycopg.Error) else None
    if state is not None:
        return "connection" if state[:2] in _OUTAGE_CLASSES else "sql"
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return "connection"
    return "sql" if isinstance(error, psycopg.Error) else "client"


class PostgresSink:
    """Queues rows from the engine thread; a writer thread upserts and confirms them."""

    def __init__(
        self,
        config: PostgresSinkConfig,
        pipeline: str,
        metrics: EngineMetrics | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._conninfo = conninfo_from_env(config, os.environ if env is None else env)
        self._names, self._key_index, self._per_statement = table_shape(config)
        self._lock = threading.Condition()
        self._queue: deque[Row] = deque()
        # What each queued row came from (the outputs' opaque origin: the source record and
        # the result), handed back with the rows the table refuses (take_refused).
        self._origins: deque[Any] = deque()
        self._refused: list[tuple[Any, BaseException]] = []
        self._queued = 0  # rows ever queued
        self._confirmed = 0  # rows ever committed (in queue order)
        self._up = False
        self._failed: BaseException | None = None
        self._stop = threading.Event()
        self._abandoned = False  # closed without draining (or past the drain): write no more
        self.drain_seconds = DRAIN_SECONDS
        # A deferred constraint refused the last batch's COMMIT: the next try is immediate.
        self._immediate = False
        self._conn: psycopg.Connection[Any] | None = None
        # Read by the writer at every connect; judged by on the engine thread (refusal).
        self.facts = TableFacts()
        self._report = SinkMetrics(metrics, SINK_LABEL)
        self._report.confirming()
        self._thread = threading.Thread(
            target=self._run, name="streamherd-postgres-sink", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ engine side

    def refusal(self, record: Mapping[str, Any] | bytes) -> str | None:
        """Why the table can never hold this result (:func:`postgres_refusal`, with what
        the last connection read of it), or None; the outputs dead-letter it."""
        return table_refusal(record, self.config, self.facts)

    def write(
        self, values: Sequence[Mapping[str, Any] | bytes], origins: Sequence[Any] | None = None
    ) -> None:
        """Queue results; ``origins``: what each came from (one per value; None: nothing),
        handed back by :meth:`take_refused` if the table refuses its row."""
        rows = rows_of(values, self._names)
        if not rows:
            return
        with self._lock:
            self._queue.extend(rows)
            self._origins.extend([None] * len(rows) if origins is None else origins)
            self._queued += len(rows)
            self._set_pending()
            self._lock.notify_all()

    def take_refused(self) -> list[tuple[Any, BaseException]]:
        """The rows the table refused since the last call (:func:`upsert_rows`), committed
        with the rest of their batch: (origin, the error). They count as confirmed, so
        whoever flushes must dead-letter them before a checkpoint covers them."""
        with self._lock:
            refused, self._refused = self._refused, []
        return refused

    def pending(self) -> int:
        """Rows queued and not yet confirmed by a commit."""
        with self._lock:
            return self._queued - self._confirmed

    @property
    def up(self) -> bool:
        return self._up

    def behind(self) -> bool:
        """Pause consumption: too many unconfirmed rows, or the database is unreachable."""
        pending = self.pending()
        return pending > self.config.max_pending_rows or (pending > 0 and not self._up)

    def caught_up(self) -> bool:
        return self._up and self.pending() < self.config.max_pending_rows // 4

    def health(self) -> tuple[bool, str]:
        if self._failed is not None:
            return False, f"postgres sink failed: {type(self._failed).__name__}"
        if not self._up:
            return False, f"postgres sink down: {self.pending()} results wait for the database"
        return True, "ok"

    def flush(self, timeout: float) -> bool:
        """True once every row queued so far is committed; False if time ran out first
        (at most about a second while the database is down). Raises if the writer died."""
        deadline = time.monotonic() + timeout
        down_deadline = time.monotonic() + min(timeout, DOWN_FLUSH_WAIT_SECONDS)
        with self._lock:
            target = self._queued
            while self._confirmed < target:
                if self._failed is not None:
                    raise PostgresSinkError(f"postgres writer failed: {self._failed!r}")
                now = time.monotonic()
                limit = deadline if self._up else min(deadline, down_deadline)
                if now >= limit:
                    return False
                self._lock.wait(min(limit - now, 0.2))
            return True

    def close(self, *, drain: bool = True) -> None:
        """Stop the writer (queued rows that are not confirmed are simply not checkpointed).

        ``drain``: it writes what is queued first, for up to ``drain_seconds`` (a stop: what
        a last checkpoint could not confirm in time still reaches the table), then stops as
        without. Without, it stops at its next batch: an engine replaced in-process
        (decision 0194), whose rows no checkpoint covers and which must not land beside the
        next engine's. Either way, once close() returns the writer starts no batch; one
        it is writing may still commit or fail (within the connection's answer timeout),
        and close() waits a second more for it. A close cannot undo an earlier one's
        ``drain=False``."""
        self._abandoned = self._abandoned or not drain
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(self.drain_seconds)
        if self._thread.is_alive() and not self._abandoned:
            # The queue outlasted the drain (a slow or loaded database): stopped here, where
            # it went on writing, unseen, after close() had returned.
            self._abandoned = True
            with self._lock:
                self._lock.notify_all()
            self._thread.join(min(self.drain_seconds, 1.0))

    # ------------------------------------------------------------------ writer thread

    def _set_pending(self) -> None:
        self._report.pending(self._queued - self._confirmed)

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            log_event(
                log,
                logging.INFO if up else logging.WARNING,
                "sink-up" if up else "sink-down",
                sink=SINK_LABEL,
                table=self.config.table,
            )
        self._up = up
        self._report.up(up)

    def _error(self, kind: str) -> None:
        self._report.failed(kind)

    def _connect(self) -> psycopg.Connection[Any]:
        conn = connect(self._conninfo, self.pipeline)
        try:
            if self.config.create_table:
                create_if_absent(
                    conn, create_table_statement(self.config), table_identifier(self.config.table)
                )
            self.facts = read_table_facts(conn, self.config)
        except BaseException:
            conn.close()
            raise
        return conn

    def _take(self) -> list[Row] | None:
        """The next batch (left in the queue until committed); [] to (re)connect; None: stop
        (once the queue is empty, or at once when closed without draining)."""
        with self._lock:
            if self._abandoned:
                return None
            while not self._queue:
                if self._stop.is_set():
                    return None
                if self._conn is None:
                    return []  # connect eagerly: sink_up must be true while idle, too
                self._lock.wait(0.5)
            n = min(len(self._queue), self.config.batch_rows)
            # Left queued until committed: pending() counts them, a retry takes the same.
            return [self._queue[i] for i in range(n)]

    def _write(self, rows: list[Row]) -> list[tuple[int, BaseException]]:
        """Write a batch in one transaction; the positions of the rows the table refused."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        if not rows or self._abandoned:  # closed without draining while it connected
            return []
        started = time.perf_counter()
        committing = False
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                refused = upsert_rows(
                    cur,
                    self.config,
                    rows,
                    self._key_index,
                    self._per_statement,
                    facts=self.facts,
                    immediate=self._immediate,
                )
                committing = True  # leaving the block sends COMMIT
        except Exception as error:
            if committing and refused_by_row(error):  # a deferred constraint's refusal
                self._immediate = True  # the same batch again, its constraints immediate
            raise
        self._immediate = False
        self._report.written(len(rows) - len(refused), time.perf_counter() - started)
        if refused:
            refused_rows(self._report, refused)
        return refused

    def _run(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        try:
            while True:
                rows = self._take()
                if rows is None:
                    return
                try:
                    refused = self._write(rows)
                except Exception as error:  # noqa: BLE001 - retried; reported below
                    # Connection errors (outage, restart) and SQL errors (a missing table or
                    # constraint, a value the column refuses) alike: keep the rows, back off
                    # and retry. Skipping them would lose results; the outage shows in the
                    # metrics, /readyz and the log below. So does an error of psycopg's
                    # own with a row (a value it cannot send): one row must not end the
                    # thread (and the worker after it, at every replay: a helper's finding).
                    self._failed_attempt(error, delay)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                    continue
                if self._abandoned:  # closed: written or not (_write), no checkpoint counts them
                    return
                delay = BACKOFF_FIRST_SECONDS
                if rows:
                    with self._lock:
                        origins = [self._origins.popleft() for _ in rows]
                        for _ in rows:
                            self._queue.popleft()
                        self._refused += [(origins[i], error) for i, error in refused]
                        self._confirmed += len(rows)
                        self._set_pending()
                        self._lock.notify_all()
                self._set_up(True)
        except BaseException as error:  # noqa: BLE001 - reported to the engine by flush()
            with self._lock:
                self._failed = error
                self._lock.notify_all()
            log_event(log, logging.ERROR, "sink-writer-died", error=repr(error)[:300])
        finally:
            self._close_connection()

    def _failed_attempt(self, error: Exception, delay: float) -> None:
        kind = failure_kind(error)
        self._error(kind)
        self._set_up(False)
        text = str(error).strip()
        log_event(
            log,
            logging.WARNING,
            "sink-write-failed",
            sink=SINK_LABEL,
            kind=kind,
            error=type(error).__name__,
            message=text.splitlines()[0][:200] if text else "",
            retry_in_s=round(delay, 2),
        )
        self._close_connection()

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: nothing to release
                conn.close()
