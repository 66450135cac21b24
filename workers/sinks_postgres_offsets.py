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
afterwards, for the lag figures only (in two phases, below, Kafka's transaction commits
them). The generation names the checkpoint (state) that belongs to the offset: the engine
stages the state as a pending checkpoint stamped with it before the commit, and on restore
picks the checkpoint whose generation the table holds (workers/engine.py ``_restore``) — the
same rule as Kafka's transactions, whose offsets carry the generation as metadata.

A failure before COMMIT rolls the transaction back: the rows stay queued and the next
checkpoint tries again (the database is down: ``False``, the engine postpones). A failure
*during* COMMIT leaves the outcome unknown: :class:`CommitOutcomeUnknownError`, the worker
stops, and its successor learns the outcome from the table on assign.

A pipeline that also writes to Kafka (dead letters, repartition records, changelog records)
commits in two phases instead (decision 0155; the protocol and the recovery decision:
:mod:`streamherd.workers.twophase`): :meth:`prepare` ends the same transaction with
``PREPARE TRANSACTION``, the engine commits Kafka's transaction, then
:meth:`commit_prepared` (or :meth:`rollback_prepared`); :meth:`recover` resolves what a dead
worker left prepared, on assign, before the offsets are read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql

from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics, SinkMetrics
from streamherd.workers.sinks_postgres import (
    SINK_LABEL,
    IsolationPostponed,
    Row,
    TableChangedError,
    TableFacts,
    connect,
    conninfo_from_env,
    create_if_absent,
    create_table_statement,
    failure_kind,
    read_table_facts,
    refused_by_row,
    refused_rows,
    rows_of,
    table_identifier,
    table_refusal,
    table_shape,
    upsert_rows,
)
from streamherd.workers.twophase import (
    SIDE_TABLE,
    TP,
    WRITERS_TABLE,
    Covered,
    Resolution,
    gid_of,
    gid_prefix,
    resolve,
    to_fence,
    wanted_partitions,
)

log = logging.getLogger("streamherd.worker")

OFFSETS_TABLE: Final = "streamherd_offsets"
#: How long reading the offsets on assign retries while the database does not answer
#: (inside a rebalance callback: longer would cost the group membership).
READ_RETRY_SECONDS: Final = 20.0
#: How long one commit or prepare may spend finding the rows a table refuses, from its
#: first refused statement on, before it gives up for this checkpoint (keeping what it
#: found): well inside a minute, Kafka's least transaction timeout here, and the
#: consumer's max.poll.interval.ms (5 minutes), both of which the engine's thread holds.
ISOLATION_BUDGET_SECONDS: Final = 15.0
#: The worker's environment variable that sets another budget (the tests set 0: each try
#: then stops at its first find).
ISOLATION_BUDGET_ENV: Final = "STREAMHERD_ISOLATION_BUDGET_SECONDS"


def isolation_budget(env: Mapping[str, str]) -> float:
    """The budget of one try (:data:`ISOLATION_BUDGET_SECONDS`, or the environment's)."""
    raw = env.get(ISOLATION_BUDGET_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else ISOLATION_BUDGET_SECONDS
    except ValueError:
        return ISOLATION_BUDGET_SECONDS


T = TypeVar("T")

#: (topic, partition) -> (next offset, generation)
Offsets = dict[tuple[str, int], tuple[int, str]]


class OffsetsFencedError(RuntimeError):
    """Another writer moved a partition's offsets since this worker read them: nothing of
    this transaction was committed."""


class CommitOutcomeUnknownError(RuntimeError):
    """The connection failed during COMMIT: the transaction may or may not have committed."""


class DatabaseUnavailableError(psycopg.OperationalError):
    """The database stayed unreachable (or unanswering) for :data:`READ_RETRY_SECONDS`
    where the worker cannot go on without it: reading the offsets on assign, registering,
    recovering prepared transactions. The worker exits (main.DATABASE_EXIT_CODE) and its
    next incarnation starts over from the tables (decision 0188)."""


class KafkaUnsettledError(RuntimeError):
    """Kafka's committed offsets of the partitions of prepared transactions did not settle
    within the recovery's wait: whether to commit them cannot be read yet. Kafka's matter,
    not the database's: the worker fails (exit 1), and its next start asks again."""


class DecidedElsewhereError(RuntimeError):
    """This worker's prepared transaction was decided the other way by another worker (a
    recovery by the worker that took its partitions): this one was cut off meanwhile."""


class TwoPhaseUnavailableError(RuntimeError):
    """The server refuses prepared transactions (``max_prepared_transactions`` is 0)."""


class TablesMissingError(ValueError):
    """A sink made not to create its tables (the recovery of a stopped pipeline) found them
    absent: most likely the wrong database, or a pipeline that never prepared anything."""


#: Reads Kafka's committed offset metadata of partitions, stably: a partition missing from
#: the answer could not be read (a transaction still pending on it, or an error).
CommittedMetadata = Callable[[list[TP]], dict[TP, str | None]]
#: Fences the Kafka transactions of writers (transactional ids): ``init_transactions``.
Fence = Callable[[list[str]], None]


def _beside(results_table: str, name: str) -> sql.Identifier:
    """Table ``name`` in the schema of the results table (its search path if none)."""
    schema, dot, _ = results_table.rpartition(".")
    return sql.Identifier(schema, name) if dot else sql.Identifier(name)


def offsets_table(results_table: str) -> sql.Identifier:
    """``streamherd_offsets`` in the schema of the results table (its search path if none)."""
    return _beside(results_table, OFFSETS_TABLE)


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


def side_table(results_table: str) -> sql.Identifier:
    """``streamherd_prepared`` (which partitions each prepared transaction covers) beside
    the offsets table."""
    return _beside(results_table, SIDE_TABLE)


def create_side_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "gid text NOT NULL, sink_table text NOT NULL, consumer_group text NOT NULL, "
        "topic text NOT NULL, partition integer NOT NULL, writer text NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (gid, topic, partition))"
    ).format(side_table(results_table))


def insert_side_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (gid, sink_table, consumer_group, topic, partition, writer) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    ).format(side_table(results_table))


def claim_side_statement(results_table: str) -> sql.Composed:
    """Inside the transaction to prepare: its own side rows, deleted (so COMMIT PREPARED
    removes them) and thereby locked until it is decided. Fewer rows back than it covers:
    a recovering worker forgot them first (its partitions moved on: fenced)."""
    return sql.SQL("DELETE FROM {} WHERE gid = %s RETURNING topic, partition").format(
        side_table(results_table)
    )


def read_side_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT gid, writer, topic, partition FROM {} WHERE sink_table = %s AND consumer_group = %s"
    ).format(side_table(results_table))


def forget_side_statement(results_table: str) -> sql.Composed:
    """Side rows of a gid that is not prepared; rows a transaction holds (one about to
    prepare, or prepared meanwhile) are skipped, never waited for."""
    table = side_table(results_table)
    return sql.SQL(
        "DELETE FROM {} WHERE ctid IN (SELECT ctid FROM {} WHERE gid = %s FOR UPDATE SKIP LOCKED)"
    ).format(table, table)


def writers_table(results_table: str) -> sql.Identifier:
    """``streamherd_writers``: each worker's (transactional id's) latest incarnation."""
    return _beside(results_table, WRITERS_TABLE)


def create_writers_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        "sink_table text NOT NULL, consumer_group text NOT NULL, writer text NOT NULL, "
        "incarnation text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (sink_table, consumer_group, writer))"
    ).format(writers_table(results_table))


def register_writer_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (sink_table, consumer_group, writer, incarnation) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (sink_table, consumer_group, writer) "
        "DO UPDATE SET incarnation = EXCLUDED.incarnation, started_at = now()"
    ).format(writers_table(results_table))


def read_writers_statement(results_table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT writer, incarnation FROM {} WHERE sink_table = %s AND consumer_group = %s"
    ).format(writers_table(results_table))


PREPARED_STATEMENT: Final = (
    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE %s"
)


def decide_statement(verb: str, gid: str) -> sql.Composed:
    """``COMMIT PREPARED 'gid'`` or ``ROLLBACK PREPARED 'gid'`` (a literal: utility
    statements take no parameters)."""
    assert verb in ("COMMIT", "ROLLBACK")
    return sql.SQL(verb + " PREPARED {}").format(sql.Literal(gid))


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
        *,
        two_phase: bool = False,
        writer: str = "",
        create: bool = True,
    ) -> None:
        """``two_phase``: commit in two phases with Kafka's transaction as the decider
        (the pipeline also writes to Kafka); ``writer``: this worker's transactional id,
        recorded with each prepared transaction (whose gids its next incarnation decides);
        ``create=False``: find the tables, never create them (a recovery, which must not
        leave tables in a database it was pointed at by mistake: TablesMissingError)."""
        self.config = config
        self.create = create
        self.pipeline = pipeline
        self.group = consumer_group
        self.two_phase = two_phase
        self.writer = writer
        self.prefix = gid_prefix(config.table, consumer_group)
        # Two phases: (gid, offsets, rows, rows refused, started) of the transaction
        # prepared and not yet decided.
        self._prepared: tuple[str, list[tuple[str, int, int]], int, int, float] | None = None
        self._conninfo = conninfo_from_env(config, os.environ if env is None else env)
        self._names, self._key_index, self._per_statement = table_shape(config)
        self._queue: list[Row] = []
        self._origins: list[Any] = []  # what each queued row came from (the outputs')
        # The rows the last commit or prepare wrote without (the table refused them):
        # (origin, error), taken by the outputs at once (take_refused).
        self._refused: list[tuple[Any, BaseException]] = []
        # The rows (by their values: row_identity) earlier tries found refused when their
        # budget ran out (IsolationPostponed): not sent again until a commit succeeds or
        # the connection is made again (the table may have changed). Kept through an abort:
        # the replay queues the same rows, at other positions.
        self._known_refused: dict[Any, BaseException] = {}
        self.isolation_budget = isolation_budget(os.environ if env is None else env)
        # The last commit or prepare was postponed by the budget (not by an outage).
        self.refusals_pending = False
        # A deferred constraint refused the last COMMIT or PREPARE of the queued rows: the
        # next try checks constraints at each statement (upsert_rows ``immediate``).
        self._immediate = False
        # The generation each partition's offsets row holds as far as this worker knows
        # (None: no row): what the next commit's compare-and-set expects.
        self._expected: dict[tuple[str, int], str | None] = {}
        self._conn: psycopg.Connection[Any] | None = None
        # Read at every connect (the offsets are read on assign, before any result).
        self.facts = TableFacts()
        self._up = False
        # Gids never prepared whose side rows could not be deleted yet (the database went
        # away with the attempt): deleted before the next prepare.
        self._unforgotten: set[str] = set()
        self._report = SinkMetrics(metrics, SINK_LABEL)
        self._report.confirming()

    # ------------------------------------------------------------------ rows

    def refusal(self, record: Mapping[str, Any] | bytes) -> str | None:
        """Why the table can never hold this result, or None (as the at-least-once sink's)."""
        return table_refusal(record, self.config, self.facts)

    def write(
        self, values: Sequence[Mapping[str, Any] | bytes], origins: Sequence[Any] | None = None
    ) -> None:
        rows = rows_of(values, self._names)
        self._queue.extend(rows)
        self._origins.extend([None] * len(rows) if origins is None else origins)
        self._set_pending()

    def take_refused(self) -> list[tuple[Any, BaseException]]:
        """The rows the table refused in the transaction just committed or prepared
        (:func:`upsert_rows`): (origin, error). Under two phases the outputs dead-letter
        them in Kafka's transaction, which decides the database's."""
        refused, self._refused = self._refused, []
        return refused

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
        """Forget the rows of the transaction that will not commit (the engine rewinds; or,
        fenced, the worker stops and the partitions' new owner goes on from the table).
        After a try put off by its budget (the engine begins Kafka's transaction again),
        what the tries found of the table's refusals stays: the replay meets them again.
        After any other abort (a fence, a revoke, Kafka's failure) it goes, with the
        deferred-constraint mode: the next batch is judged anew (a review's finding)."""
        self._queue.clear()
        self._origins.clear()
        self._refused = []
        if not self.refusals_pending:
            self._known_refused = {}
            self._immediate = False
        self._set_pending()

    def close(self, *, drain: bool = True) -> None:
        """Close the connection (nothing is queued: every write is the checkpoint's own
        transaction, so ``drain`` changes nothing)."""
        self._close_connection()

    # ------------------------------------------------------------------ offsets

    def committed(self, partitions: Sequence[tuple[str, int]]) -> Offsets:
        """The offsets table's (next offset, generation) of `partitions` that have a row;
        remembered as what the next commit expects. Retries while the database does not
        answer, then raises DatabaseUnavailableError."""
        table = self.config.table
        rows = self._retrying(
            "read",
            lambda: (
                self._connection().execute(read_offsets_statement(table), (table, self.group))
            ).fetchall(),
        )
        found = {(str(t), int(p)): (int(o), str(g)) for t, p, o, g in rows}
        wanted = {(t, p) for t, p in partitions}
        for tp in wanted:
            self._expected[tp] = found[tp][1] if tp in found else None
        return {tp: found[tp] for tp in wanted if tp in found}

    def commit(self, offsets: Sequence[tuple[str, int, int]], generation: str) -> bool:
        """One transaction: the offsets (compare-and-set) and every queued row. True:
        committed; False: the database refused or was unreachable before COMMIT (nothing
        committed, the rows stay queued; an error PostgreSQL answers at COMMIT, a deferred
        constraint's, too). Raises OffsetsFencedError (rolled back, rows dropped: the worker
        stops, and whoever owns the partitions now goes on from the table's offsets) or
        CommitOutcomeUnknownError (the connection failed during COMMIT)."""
        started = time.perf_counter()
        rows = list(self._queue)
        committing = False
        self.refusals_pending = False
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                refused = self._write_rows(cur, rows)
                self._write_offsets(cur, offsets, generation)
                committing = True  # leaving the block sends COMMIT
        except OffsetsFencedError:
            self._error("fenced")
            self.abort()
            raise
        except IsolationPostponed as postponed:  # rolled back by the transaction block
            self._isolation_postponed(postponed, len(rows))
            return False
        except Exception as error:
            # psycopg.Error, or psycopg's own error with a row (a value it cannot send):
            # raised, it stopped the worker, and its replay again (a helper's finding).
            connection = isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
            self._failed("commit" if committing else "write", error)
            if committing and connection:
                raise CommitOutcomeUnknownError(f"COMMIT failed: {error}") from error
            if committing and refused_by_row(error):  # a deferred constraint's refusal
                self._immediate = True
            # Refused, COMMIT included (a deferred constraint is checked there): the
            # server rolled the transaction back, nothing committed.
            return False
        for topic, partition, _ in offsets:
            self._expected[(topic, partition)] = generation
        self._refused = self._take_rows(len(rows), refused)
        if refused:
            refused_rows(self._report, refused)
        self._set_up(True)
        self._report.written(len(rows) - len(refused), time.perf_counter() - started)
        return True

    # ------------------------------------------------------------------ two phases

    def prepare(self, offsets: Sequence[tuple[str, int, int]], generation: str) -> bool:
        """Phase one: the partitions covered in the side table, then one transaction with
        every queued row, the offsets (compare-and-set) and its side rows claimed, ended
        by PREPARE TRANSACTION. True: prepared (decide it with :meth:`commit_prepared` or
        :meth:`rollback_prepared`); False: the database refused or was unreachable before
        PREPARE (nothing prepared, the rows stay queued). Raises OffsetsFencedError (rolled
        back, rows dropped), CommitOutcomeUnknownError (the connection died during PREPARE:
        the worker stops, recovery decides) or TwoPhaseUnavailableError."""
        assert self._prepared is None, "the prepared transaction is not decided yet"
        started = time.perf_counter()
        gid = gid_of(self.prefix, generation)
        table = self.config.table
        rows = list(self._queue)
        covered = sorted({(t, p) for t, p, _ in offsets})
        self.refusals_pending = False
        preparing = False
        conn: psycopg.Connection[Any] | None = None
        self._forget_pending()
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                # Autocommitted: whoever finds the gid prepared can read what it covers.
                cur.executemany(
                    insert_side_statement(table),
                    [(gid, table, self.group, t, p, self.writer) for t, p in covered],
                )
                cur.execute("BEGIN")
                refused = self._write_rows(cur, rows)
                self._write_offsets(cur, offsets, generation)
                cur.execute(claim_side_statement(table), (gid,))
                claimed = {(str(t), int(p)) for t, p in cur.fetchall()}
                if claimed != set(covered):
                    raise OffsetsFencedError(
                        f"{gid}: its side rows were forgotten by a worker that took its partitions"
                    )
                preparing = True
                cur.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        except OffsetsFencedError:
            self._rollback_open(conn)
            self._forget(gid)
            self._error("fenced")
            self.abort()
            raise
        except IsolationPostponed as postponed:
            self._rollback_open(conn)
            self._forget(gid)
            self._isolation_postponed(postponed, len(rows))
            return False
        except Exception as error:  # as in commit(); _failed closes the connection
            connection = isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
            self._failed("prepare" if preparing else "write", error)
            if preparing and connection:
                raise CommitOutcomeUnknownError(f"PREPARE TRANSACTION failed: {error}") from error
            if preparing and refused_by_row(error):  # a deferred constraint's refusal
                self._immediate = True
            self._forget(gid)
            return False
        self._prepared = (gid, list(offsets), len(rows), len(refused), started)
        # Known now, before Kafka's transaction commits: the outputs dead-letter them there.
        self._refused = [(self._origins[i], error) for i, error in refused]
        if refused:
            refused_rows(self._report, refused)
        self._set_up(True)
        return True

    def commit_prepared(self) -> None:
        """Phase three after Kafka's transaction committed: COMMIT PREPARED. Retried while
        the database does not answer; raises CommitOutcomeUnknownError when it still does
        not (the worker stops; recovery commits it, Kafka's offsets say so)."""
        assert self._prepared is not None, "nothing prepared"
        gid, offsets, n_rows, n_refused, started = self._prepared
        self._decide("COMMIT", gid)
        self._prepared = None
        for topic, partition, _ in offsets:
            self._expected[(topic, partition)] = gid[len(self.prefix) + 1 :]
        self._take_rows(n_rows, [])
        # The duration covers both phases and Kafka's commit.
        self._report.written(n_rows - n_refused, time.perf_counter() - started)

    def rollback_prepared(self) -> None:
        """After Kafka's transaction was aborted: ROLLBACK PREPARED and its side rows
        forgotten; the queued rows are dropped (the engine rewinds). Raises as
        :meth:`commit_prepared` (recovery rolls it back then)."""
        assert self._prepared is not None, "nothing prepared"
        gid = self._prepared[0]
        self._prepared = None
        self.abort()
        self._decide("ROLLBACK", gid)
        self._forget(gid)

    def register(self, incarnation: str) -> None:
        """Record this worker's incarnation (after its ``init_transactions`` fenced the
        earlier ones): recovery then knows their transactions need no fencing."""
        table = self.config.table
        self._retrying(
            "register",
            lambda: self._connection().execute(
                register_writer_statement(table), (table, self.group, self.writer, incarnation)
            ),
        )

    def covered_partitions(self) -> list[TP]:
        """Every partition the side table names for this pipeline (what a recovery of a
        stopped pipeline acts as the owner of)."""
        table = self.config.table
        rows = self._connection().execute(read_side_statement(table), (table, self.group))
        return sorted({(str(topic), int(partition)) for _, _, topic, partition in rows})

    def recover(
        self,
        assigned: Sequence[TP],
        committed: CommittedMetadata,
        fence: Fence,
        *,
        wait: float,
        between: Callable[[], None] = lambda: None,
    ) -> Resolution:
        """Decide what dead or fenced workers left prepared (:func:`twophase.resolve`):
        the transactions covering a partition in ``assigned`` or prepared by this worker's
        previous incarnation; side rows of theirs that were never prepared are forgotten.
        Asks again while Kafka's answer is not stable, up to ``wait`` seconds (``between``
        before each wait: the engine's heartbeat), then raises KafkaUnsettledError.
        Database errors raise (psycopg.Error; DatabaseUnavailableError or
        CommitOutcomeUnknownError when the database does not answer)."""
        deadline = time.monotonic() + wait
        delay = 0.5
        while True:
            resolution = self._retrying(
                "recover", lambda: self._recover_once(assigned, committed, fence)
            )
            if not resolution.undecided:
                return resolution
            if time.monotonic() + delay > deadline:
                raise KafkaUnsettledError(
                    f"prepared transactions {sorted(resolution.undecided)}: Kafka's committed "
                    f"offsets of their partitions were not stable within {wait:.0f}s"
                )
            between()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _recover_once(
        self, assigned: Sequence[TP], committed: CommittedMetadata, fence: Fence
    ) -> Resolution:
        conn = self._connection()
        table = self.config.table
        # The prepared gids first, then the side rows: a gid prepared before the first read
        # has its side rows committed before it, so the second read sees them.
        prepared = [
            str(r[0]) for r in conn.execute(PREPARED_STATEMENT, (f"{self.prefix}:%",)).fetchall()
        ]
        side_rows = conn.execute(read_side_statement(table), (table, self.group)).fetchall()
        found: dict[str, tuple[str, set[TP]]] = {}
        for gid, writer, topic, partition in side_rows:
            found.setdefault(str(gid), (str(writer), set()))[1].add((str(topic), int(partition)))
        side = {gid: Covered(w, frozenset(parts)) for gid, (w, parts) in found.items()}
        incarnations = {
            str(w): str(i)
            for w, i in conn.execute(read_writers_statement(table), (table, self.group)).fetchall()
        }
        writers = to_fence(
            prepared, side, incarnations, prefix=self.prefix, assigned=assigned, writer=self.writer
        )
        if writers:
            fence(sorted(writers))  # their transactions are decided from here on
        wanted = wanted_partitions(
            prepared, side, prefix=self.prefix, assigned=assigned, writer=self.writer
        )
        answer = committed(sorted(wanted)) if wanted else {}
        resolution = resolve(
            prepared, side, answer, prefix=self.prefix, assigned=assigned, writer=self.writer
        )
        for gid in sorted(resolution.commit):
            self._decide("COMMIT", gid, recovering=True)
        for gid in sorted(resolution.rollback):
            self._decide("ROLLBACK", gid, recovering=True)
            self._forget(gid)
        for gid in sorted(resolution.forget):
            self._forget(gid)
        for gid in sorted(resolution.commit | resolution.rollback):
            log_event(
                log,
                logging.WARNING,
                "prepared-transaction-recovered",
                gid=gid,
                decision="commit" if gid in resolution.commit else "rollback",
                writer=side[gid].writer,
                partitions=len(side[gid].partitions),
            )
        if resolution.unexplained:
            # Usually decided between the two reads (its side rows went with its commit);
            # one that stays is a side table changed by hand: never guessed.
            log_event(log, logging.INFO, "prepared-transaction-unexplained",
                      gids=",".join(sorted(resolution.unexplained)))  # fmt: skip
        return resolution

    def _retrying(self, what: str, operation: Callable[[], T]) -> T:
        """``operation``, again while the database is unreachable or does not answer, for
        up to READ_RETRY_SECONDS; then DatabaseUnavailableError. Other errors raise as
        they are (an operation that fails before its last statement changed nothing)."""
        deadline = time.monotonic() + READ_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                return operation()
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self._failed(what, error)
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"{what}: no database for {READ_RETRY_SECONDS:g} s: {error}"
                    ) from error
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _decide(self, verb: str, gid: str, *, recovering: bool = False) -> None:
        """COMMIT or ROLLBACK PREPARED, retried while the database does not answer. A gid
        that is no longer prepared was decided by someone else (recovery): fine when
        recovering; otherwise the offsets table tells whether it committed."""
        deadline = time.monotonic() + READ_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                self._connection().execute(decide_statement(verb, gid))
                return
            except psycopg.errors.UndefinedObject:
                if recovering:
                    return
                # The offsets table answers, or the database is unavailable (retried as
                # any read: a bare connection error here was reported as any failure).
                holds = self._retrying(verb.lower() + "-prepared", lambda: self._holds(gid))
                if holds == (verb == "COMMIT"):
                    return
                raise DecidedElsewhereError(
                    f"{verb} PREPARED {gid}: decided otherwise by another worker"
                ) from None
            except psycopg.Error as error:
                self._failed(verb.lower() + "-prepared", error)
                if time.monotonic() + delay > deadline:
                    raise CommitOutcomeUnknownError(
                        f"{verb} PREPARED {gid} failed: {error}"
                    ) from error
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _holds(self, gid: str) -> bool:
        """Whether the offsets table holds the generation of ``gid`` (it committed)."""
        generation = gid[len(self.prefix) + 1 :]
        rows = (
            self._connection()
            .execute(read_offsets_statement(self.config.table), (self.config.table, self.group))
            .fetchall()
        )
        return any(str(g) == generation for _, _, _, g in rows)

    def _forget(self, gid: str) -> None:
        """Delete the side rows of a gid that was never prepared. What cannot be deleted now
        (the database went away with the attempt, or a row is still held by the failed
        transaction's backend) is tried again before each prepare until it is gone: left,
        such rows waited for the next recovery of their partitions, which a worker that
        keeps its partitions never runs."""
        self._unforgotten.add(gid)
        self._forget_pending()

    def _forget_pending(self) -> None:
        if not self._unforgotten:
            return
        table = self.config.table
        with contextlib.suppress(psycopg.Error):
            # Not an announcement: right after a refused prepare the rows still wait (a
            # sink reported up here flapped down and up at every retry, /readyz 200 and
            # no backpressure while nothing was confirmed).
            conn = self._connection(announce=False)
            for gid in sorted(self._unforgotten):
                conn.execute(forget_side_statement(table), (gid,))
            left = conn.execute(
                sql.SQL("SELECT DISTINCT gid FROM {} WHERE gid = ANY(%s)").format(
                    side_table(table)
                ),
                (sorted(self._unforgotten),),
            ).fetchall()
            self._unforgotten = {str(row[0]) for row in left}

    def _rollback_open(self, conn: psycopg.Connection[Any] | None) -> None:
        if conn is None or conn.closed:
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")

    def _write_rows(
        self, cur: psycopg.Cursor[Any], rows: Sequence[Row]
    ) -> list[tuple[int, BaseException]]:
        try:
            return upsert_rows(
                cur,
                self.config,
                rows,
                self._key_index,
                self._per_statement,
                facts=self.facts,
                known=self._known_refused,
                budget=self.isolation_budget,
                immediate=self._immediate,
            )
        except TableChangedError:
            self._known_refused = {}  # judged by the table as it was: judged again
            raise

    def _isolation_postponed(self, postponed: IsolationPostponed, queued: int) -> None:
        """A commit or prepare gave up finding refused rows (its budget spent): nothing
        was written; the rows found are remembered, and the next checkpoint's try goes on
        from there (the engine thread polls meanwhile, so the worker stays in its group)."""
        if len(self._known_refused) + len(postponed.found) > 4 * self.config.max_pending_rows:
            self._known_refused = {}  # bounded: the rows of queues long gone, most of it
        self._known_refused.update(postponed.found)
        self.refusals_pending = True
        log_event(log, logging.WARNING, "sink-refusals-postponed", sink=SINK_LABEL,
                  queued=queued, refused_found=len(self._known_refused),
                  budget_seconds=self.isolation_budget)  # fmt: skip

    def _take_rows(
        self, n: int, refused: Sequence[tuple[int, BaseException]]
    ) -> list[tuple[Any, BaseException]]:
        """Drop the first ``n`` queued rows (committed); the origins of those refused."""
        taken = [(self._origins[i], error) for i, error in refused]
        del self._queue[:n]
        del self._origins[:n]
        self._known_refused = {}  # the batch committed: a new one is judged anew
        self._immediate = False
        self._set_pending()
        return taken

    def _write_offsets(
        self, cur: psycopg.Cursor[Any], offsets: Sequence[tuple[str, int, int]], generation: str
    ) -> None:
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

    # ------------------------------------------------------------------ connection

    def _connection(self, *, announce: bool = True) -> psycopg.Connection[Any]:
        """The connection, made (and the sink reported up) if there is none. ``announce``
        False: housekeeping that must not report the sink up (the rows wait)."""
        if self._conn is None or self._conn.closed:
            conn = connect(self._conninfo, self.pipeline)
            try:
                if self.two_phase:
                    allowed = conn.execute("SHOW max_prepared_transactions").fetchone()
                    if allowed is None or int(allowed[0]) <= 0:
                        raise TwoPhaseUnavailableError(
                            "exactly-once into PostgreSQL with Kafka outputs (dead letters, a "
                            "repartition topic or a changelog) commits in two phases: the "
                            "server must allow prepared transactions (max_prepared_transactions "
                            "is 0; set it above 0, e.g. to max_connections, and restart it; "
                            "docs/storage.md)"
                        )
                if not self.create:
                    self._find_tables(conn)
                else:
                    table = self.config.table
                    if self.two_phase:
                        create_if_absent(conn, create_side_statement(table), side_table(table))
                        create_if_absent(
                            conn, create_writers_statement(table), writers_table(table)
                        )
                    create_if_absent(conn, create_offsets_statement(table), offsets_table(table))
                    if self.config.create_table:
                        create_if_absent(
                            conn, create_table_statement(self.config), table_identifier(table)
                        )
                self.facts = read_table_facts(conn, self.config)
                self._known_refused = {}  # the table as it is now judges the rows
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            if announce:
                self._set_up(True)
        return self._conn

    def _find_tables(self, conn: psycopg.Connection[Any]) -> None:
        """Raise TablesMissingError unless the tables this sink reads exist."""
        table = self.config.table
        wanted = [offsets_table(table)]
        if self.two_phase:
            wanted += [side_table(table), writers_table(table)]
        missing = []
        for ident in wanted:
            name = ident.as_string(conn)
            row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if row is None or row[0] is None:
                missing.append(name)
        if missing:
            raise TablesMissingError(
                f"database {conn.info.dbname!r} on {conn.info.host}:{conn.info.port} has no "
                f"{', '.join(missing)}: no worker of this sink ever wrote there. Is it the "
                "pipeline's database (the sink's DSN)? Nothing was decided or created"
            )

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _failed(self, what: str, error: Exception) -> None:
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
