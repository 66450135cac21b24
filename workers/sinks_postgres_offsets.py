"""Exactly-once into PostgreSQL: the results and the input offsets they cover, one transaction.

Used by :class:`streamherd.workers.sinks.Outputs` for ``sink.postgres`` with ``delivery:
exactlyOnce`` (docs/storage.md, decision 0105). The engine thread queues result rows
(:meth:`PostgresTransactionalSink.write`); at each checkpoint the engine hands over the next
offset of every partition that moved and the checkpoint's id (its *generation*), and
:meth:`commit` writes, in one PostgreSQL transaction,

- every result row queued since the last commit (the same upsert as the at-least-once sink);
- each partition's row of the offsets table ``streamherd_offsets`` (in the results table's
  schema; created idempotently): ``(sink_table, consumer_group, topic, partition) ->
  (next_offset, generation)``, updated only if it still holds the generation this worker
  last read or wrote (compare-and-set: a worker whose partition moved on to another worker
  finds another generation there, and its whole transaction rolls back: it is fenced).

So a result row is in the table if and only if the offset past its input is, whatever moment
a worker dies at. On assign the engine reads the offsets from here (:meth:`committed`), not
from the consumer group: they win over the group's commits, which the engine still makes
afterwards, for the lag figures only. The generation names the checkpoint (state) that
belongs to the offset: the engine stages the state as a pending checkpoint stamped with it
before the commit, and on restore picks the checkpoint whose generation the table holds
(workers/engine.py ``_restore``) — the same rule as Kafka's transactions, whose offsets
carry the generation as metadata.

A failure before COMMIT rolls the transaction back: the rows stay queued and the next
checkpoint tries again (the database is down: ``False``, the engine postpones). A failure
*during* COMMIT leaves the outcome unknown: :class:`CommitOutcomeUnknownError`, the worker
stops, and its successor learns the outcome from the table on assign.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics, SinkMetrics
from streamherd.workers.sinks_postgres import (
    SINK_LABEL,
    Row,
    conninfo_from_env,
    create_table_statement,
    dedupe,
    rows_of,
    table_shape,
    upsert_statement,
)

log = logging.getLogger("streamherd.worker")

OFFSETS_TABLE: Final = "streamherd_offsets"
#: How long reading the offsets on assign retries while the database does not answer
#: (inside a rebalance callback: longer would cost the group membership).
READ_RETRY_SECONDS: Final = 20.0

#: (topic, partition) -> (next offset, generation)
Offsets = dict[tuple[str, int], tuple[int, str]]


class OffsetsFencedError(RuntimeError):
    """Another writer moved a partition's offsets since this worker read them: nothing of
    this transaction was committed."""


class CommitOutcomeUnknownError(RuntimeError):
    """The connection failed during COMMIT: the transaction may or may not have committed."""


def offsets_table(results_table: str) -> sql.Identifier:
    """``streamherd_offsets`` in the schema of the results table (its search path if none)."""
    schema, dot, _ = results_table.rpartition(".")
    return sql.Identifier(schema, OFFSETS_TABLE) if dot else sql.Identifier(OFFSETS_TABLE)


def create_offsets_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "sink_table text NOT NULL, consumer_group text NOT NULL, topic text NOT NULL, "
        "partition integer NOT NULL, next_offset bigint NOT NULL, generation text NOT NULL, "
        "committed_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (sink_table, consumer_group, topic, partition))"
    ).format(offsets_table(results_table))


def read_offsets_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT topic, partition, next_offset, generation FROM {} "
        "WHERE sink_table = %s AND consumer_group = %s"
    ).format(offsets_table(results_table))


def insert_offset_statement(results_table: str) -> sql.Composed:
    """A partition's first offsets; no row back: another writer inserted them first."""
    return sql.SQL(
        "INSERT INTO {} (sink_table, consumer_group, topic, partition, next_offset, generation)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING generation"
    ).format(offsets_table(results_table))


def update_offset_statement(results_table: str) -> sql.Composed:
    """Compare-and-set: no row back when the partition no longer holds the expected
    generation (under READ COMMITTED a concurrent writer's update is waited for and the
    condition checked again on its result)."""
    return sql.SQL(
        "UPDATE {} SET next_offset = %s, generation = %s, committed_at = now() "
        "WHERE sink_table = %s AND consumer_group = %s AND topic = %s AND partition = %s "
        "AND generation = %s RETURNING generation"
    ).format(offsets_table(results_table))


def offset_writes(
    table: str,
    group: str,
    offsets: Sequence[tuple[str, int, int]],
    generation: str,
    expected: Mapping[tuple[str, int], str | None],
) -> list[tuple[bool, tuple[Any, ...]]]:
    """The statements of one commit, in partition order (the order rows are locked in, so
    two writers never deadlock): (insert?, parameters). A partition expected absent (never
    committed, or not read) is inserted, any other updated from its expected generation."""
    writes: list[tuple[bool, tuple[Any, ...]]] = []
    for topic, partition, next_offset in sorted(offsets):
        before = expected.get((topic, partition))
        if before is None:
            writes.append((True, (table, group, topic, partition, next_offset, generation)))
        else:
            params = (next_offset, generation, table, group, topic, partition, before)
            writes.append((False, params))
    return writes


class PostgresTransactionalSink:
    """Queues rows from the engine thread; :meth:`commit` writes them with the offsets."""

    def __init__(
        self,
        config: PostgresSinkConfig,
        pipeline: str,
        consumer_group: str,
        metrics: EngineMetrics | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.group = consumer_group
        self._conninfo = conninfo_from_env(config, os.environ if env is None else env)
        self._names, self._key_index, self._per_statement = table_shape(config)
        self._queue: list[Row] = []
        # The generation each partition's offsets row holds as far as this worker knows
        # (None: no row): what the next commit's compare-and-set expects.
        self._expected: dict[tuple[str, int], str | None] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._up = False
        self._report = SinkMetrics(metrics, SINK_LABEL)
        self._report.confirming()

    # ------------------------------------------------------------------ rows

    def write(self, values: Sequence[Mapping[str, Any] | bytes]) -> None:
        self._queue.extend(rows_of(values, self._names))
        self._set_pending()

    def pending(self) -> int:
        return len(self._queue)

    def behind(self) -> bool:
        pending = self.pending()
        return pending > self.config.max_pending_rows or (pending > 0 and not self._up)

    def caught_up(self) -> bool:
        return self._up and self.pending() < self.config.max_pending_rows // 4

    def health(self) -> tuple[bool, str]:
        if not self._up:
            return False, f"postgres sink down: {self.pending()} results wait for the database"
        return True, "ok"

    def flush(self, timeout: float) -> bool:
        return True  # rows are confirmed by commit(), with their offsets

    def abort(self) -> None:
        """Forget the rows of the transaction that will not commit (the engine rewinds)."""
        self._queue.clear()
        self._set_pending()

    def close(self) -> None:
        self._close_connection()

    # ------------------------------------------------------------------ offsets

    def committed(self, partitions: Sequence[tuple[str, int]]) -> Offsets:
        """The offsets table's (next offset, generation) of `partitions` that have a row;
        remembered as what the next commit expects. Retries while the database does not
        answer, then raises (psycopg.Error)."""
        deadline = time.monotonic() + READ_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                conn = self._connection()
                rows = conn.execute(
                    read_offsets_statement(self.config.table), (self.config.table, self.group)
                ).fetchall()
                break
            except psycopg.Error as error:
                self._failed("read", error)
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        found = {(str(t), int(p)): (int(o), str(g)) for t, p, o, g in rows}
        wanted = {(t, p) for t, p in partitions}
        for tp in wanted:
            self._expected[tp] = found[tp][1] if tp in found else None
        return {tp: found[tp] for tp in wanted if tp in found}

    def commit(self, offsets: Sequence[tuple[str, int, int]], generation: str) -> bool:
        """One transaction: the offsets (compare-and-set) and every queued row. True:
        committed; False: the database refused or was unreachable before COMMIT (nothing
        committed, the rows stay queued). Raises OffsetsFencedError (rolled back, rows
        dropped: the engine rewinds) or CommitOutcomeUnknownError."""
        started = time.perf_counter()
        rows = list(self._queue)
        committing = False
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                unique = dedupe(rows, self._key_index)
                for i in range(0, len(unique), self._per_statement):
                    chunk = unique[i : i + self._per_statement]
                    cur.execute(
                        upsert_statement(self.config, len(chunk)), [v for r in chunk for v in r]
                    )
                table = self.config.table
                insert, update = insert_offset_statement(table), update_offset_statement(table)
                for is_insert, params in offset_writes(
                    table, self.group, offsets, generation, self._expected
                ):
                    cur.execute(insert if is_insert else update, params)
                    if cur.fetchone() is None:
                        raise OffsetsFencedError(
                            f"{params[2 if is_insert else 4]}[{params[3 if is_insert else 5]}]: "
                            "the offsets moved since this worker read them"
                        )
                committing = True  # leaving the block sends COMMIT
        except OffsetsFencedError:
            self._error("fenced")
            self.abort()
            raise
        except psycopg.Error as error:
            self._failed("commit" if committing else "write", error)
            if committing:
                raise CommitOutcomeUnknownError(f"COMMIT failed: {error}") from error
            return False
        for topic, partition, _ in offsets:
            self._expected[(topic, partition)] = generation
        del self._queue[: len(rows)]
        self._set_pending()
        self._set_up(True)
        self._report.written(len(rows), time.perf_counter() - started)
        return True

    # ------------------------------------------------------------------ connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=5,
                application_name=f"streamherd {self.pipeline}"[:63],
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
            try:
                conn.execute(create_offsets_statement(self.config.table))
                if self.config.create_table:
                    conn.execute(create_table_statement(self.config))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._set_up(True)
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _failed(self, what: str, error: psycopg.Error) -> None:
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
            during=what,
            error=type(error).__name__,
            message=text.splitlines()[0][:200] if text else "",
        )
        self._close_connection()

    def _error(self, kind: str) -> None:
        self._report.failed(kind)

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

    def _set_pending(self) -> None:
        self._report.pending(len(self._queue))
