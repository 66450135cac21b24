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
import json
import logging
import math
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

import orjson
import psycopg
from psycopg import sql
from psycopg.abc import PQGen
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics, SinkMetrics

log = logging.getLogger("streamherd.worker")

SINK_LABEL: Final = "postgres"
#: PostgreSQL accepts at most 65535 bind parameters per statement.
MAX_PARAMETERS: Final = 65_535
BACKOFF_FIRST_SECONDS: Final = 0.2
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


def connect(conninfo: str, pipeline: str) -> AnsweringConnection:
    """An autocommit connection for a sink: bounded connection attempt and round trips,
    TCP keepalives (a peer that vanished without closing shows as an error)."""
    return AnsweringConnection.connect(
        conninfo,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=f"streamherd {pipeline}"[:63],
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


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


def create_if_absent(conn: psycopg.Connection[Any], statement: sql.Composed) -> None:
    """Run a ``CREATE ... IF NOT EXISTS`` that several workers starting at once may run.

    ``IF NOT EXISTS`` is not safe under concurrency in PostgreSQL: it checks the name before
    it takes it, so the losers of a race fail on a catalog's unique index, and which one
    (the relation, its row type, an index) depends on timing (unique violation, duplicate
    table, duplicate object). Rather than guess which of those are harmless, the creations
    take one transaction-scoped advisory lock and so run one after another; the second then
    sees the table and does nothing. A real conflict (a type already named like the table)
    still fails, with PostgreSQL's own message."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [DDL_LOCK_KEY])
        conn.execute(statement)


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


def _adapt(value: Any) -> Any:
    # Nested JSON values go to json/jsonb columns as such; scalars as psycopg adapts them
    # (strings are sent untyped, so '2026-01-01T00:00:10.000Z' lands in a timestamptz).
    if isinstance(value, dict | list):
        return Jsonb(value)
    return value


def dedupe(rows: Sequence[Row], key_index: Sequence[int]) -> list[Row]:
    """The last row of each key, in first-seen order: one statement may not touch a row
    twice (ON CONFLICT DO UPDATE refuses), and the last one is what a replay writes."""
    by_key: dict[Any, Row] = {}
    for row in rows:
        by_key[tuple(_identity(row[i]) for i in key_index)] = row
    return list(by_key.values())


def _identity(value: Any) -> Any:
    """A key column's value as a hashable identity, by type and value as the table tells
    keys apart: a JSON key (psycopg's Jsonb) by its whole value, a float NaN as one value
    (PostgreSQL's NaN equals itself), -0.0 as 0.0. Identities were the values as JSON,
    where psycopg's Jsonb wrote its repr, cut to 35 characters: two array keys that begin
    alike were one row, and one window's result was never written (a helper's finding);
    NaN, the infinities and null were all JSON null."""
    if isinstance(value, Jsonb):
        return ("jsonb", _identity(value.obj))
    if isinstance(value, list | tuple):
        return ("array", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, _identity(v)) for k, v in value.items())))
    if type(value) is float:
        return ("float", "nan" if math.isnan(value) else value + 0.0)
    if isinstance(value, bool):
        return ("bool", value)
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
) -> str | None:
    """Why PostgreSQL can never store this result in its table, or None.

    A string holding the NUL character (U+0000): text, varchar, json and jsonb all refuse
    it. A null in a key column (``key_columns``: the upsert's) of the table the sink
    creates (``primary_key``): its primary key refuses it (a table of the user's may match
    null keys: a unique index with NULLS NOT DISTINCT, PostgreSQL 15). Key columns whose
    index entry cannot fit a unique btree index, which every table an upsert can target
    has: over :data:`BTREE_MAX_ITEM_BYTES` even as zlib compresses them (PostgreSQL's own
    compression does no better, and stores a value it cannot shrink by a quarter as it
    is). Such a result would be retried forever and stop the pipeline (a helper's finding,
    for the last two), so the outputs dead-letter it instead (reason ``sink``). Other
    refusals depend on the table (a type, a constraint) and can be mended there: those are
    retried."""
    if isinstance(value, bytes):
        # JSON text: NUL can only appear escaped (\u0000), in a key or a string.
        if b"\\u0000" in value and _holds_nul(orjson.loads(value)):
            return _NUL_MESSAGE
        if not key_columns:
            return None
        value = orjson.loads(value)
        if not isinstance(value, Mapping):
            return None
    elif _holds_nul(value):
        return _NUL_MESSAGE
    for column in key_columns if primary_key else ():
        if value.get(column) is None:
            return (
                f"key column {column!r} is null: the table's primary key refuses it "
                "(sink.postgres.createTable)"
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


def upsert_rows(
    cur: psycopg.Cursor[Any],
    config: PostgresSinkConfig,
    rows: Sequence[Row],
    key_index: Sequence[int],
    per_statement: int,
) -> None:
    """Upsert ``rows`` inside the cursor's open transaction, the last row of each key.

    Two rows that :func:`dedupe` keeps apart can still be one row to the table: the string
    key "1" and the number key 1 in a text column, 1 and 1.0 in a double precision one.
    One statement may not touch a row twice (CardinalityViolation, and the write would fail
    again on every retry: the pipeline stopped for good), so such a chunk is undone to its
    savepoint and written one row per statement, the last one winning, as it does when the
    two rows come in different batches."""
    unique = dedupe(rows, key_index)
    for i in range(0, len(unique), per_statement):
        chunk = unique[i : i + per_statement]
        cur.execute("SAVEPOINT streamherd_rows")
        try:
            cur.execute(upsert_statement(config, len(chunk)), [v for r in chunk for v in r])
        except psycopg.errors.CardinalityViolation:
            cur.execute("ROLLBACK TO SAVEPOINT streamherd_rows")
            single = upsert_statement(config, 1)
            for row in chunk:
                cur.execute(single, list(row))
        cur.execute("RELEASE SAVEPOINT streamherd_rows")


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
        self._queued = 0  # rows ever queued
        self._confirmed = 0  # rows ever committed (in queue order)
        self._up = False
        self._failed: BaseException | None = None
        self._stop = threading.Event()
        self._abandoned = False  # closed without draining: write nothing more
        self._conn: psycopg.Connection[Any] | None = None
        self._report = SinkMetrics(metrics, SINK_LABEL)
        self._report.confirming()
        self._thread = threading.Thread(
            target=self._run, name="streamherd-postgres-sink", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ engine side

    def write(self, values: Sequence[Mapping[str, Any] | bytes]) -> None:
        rows = rows_of(values, self._names)
        if not rows:
            return
        with self._lock:
            self._queue.extend(rows)
            self._queued += len(rows)
            self._set_pending()
            self._lock.notify_all()

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

        ``drain``: it writes what is queued first, for up to 5 s (a stop: what a last
        checkpoint could not confirm in time still reaches the table). Without, it stops at
        its next batch: an engine replaced in-process (decision 0194), whose rows no
        checkpoint covers and which must not land beside the next engine's."""
        self._abandoned = not drain
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(5)

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
        if self.config.create_table:
            create_if_absent(conn, create_table_statement(self.config))
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

    def _write(self, rows: list[Row]) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        if not rows or self._abandoned:  # closed without draining while it connected
            return
        started = time.perf_counter()
        with self._conn.transaction(), self._conn.cursor() as cur:
            upsert_rows(cur, self.config, rows, self._key_index, self._per_statement)
        self._report.written(len(rows), time.perf_counter() - started)

    def _run(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        try:
            while True:
                rows = self._take()
                if rows is None:
                    return
                try:
                    self._write(rows)
                except psycopg.Error as error:
                    # Connection errors (outage, restart) and SQL errors (a missing table or
                    # constraint, a value the column refuses) alike: keep the rows, back off
                    # and retry. Skipping them would lose results; the outage shows in the
                    # metrics, /readyz and the log below.
                    self._failed_attempt(error, delay)
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, BACKOFF_MAX_SECONDS)
                    continue
                if self._abandoned:  # the rows were not written (_write): nothing to count
                    return
                delay = BACKOFF_FIRST_SECONDS
                if rows:
                    with self._lock:
                        for _ in rows:
                            self._queue.popleft()
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

    def _failed_attempt(self, error: psycopg.Error, delay: float) -> None:
        connection = isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
        kind = "connection" if connection else "sql"
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
