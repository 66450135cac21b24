"""Rows a PostgreSQL table refuses are found by halving the statement and handed back for
the dead-letter topic; every other row is written, once, in order (decision 0200).

The table is a model here (a set of rows it refuses alone, and groups of rows it holds as
one, which one statement may not touch twice); the real server's errors are in
tests/integration/storage/test_postgres_refused_rows.py."""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from typing import Any
from unittest import mock

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers import sinks_postgres
from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.sinks_postgres import (
    IsolationPostponed,
    failure_kind,
    isolate,
    refused_by_row,
    upsert_rows,
)
from streamherd.workers.sinks_postgres_offsets import PostgresTransactionalSink


class Table:
    """Refuses a statement holding a bad row (a row's error), or two rows of one group
    (CardinalityViolation); otherwise writes the statement's rows in order."""

    def __init__(self, bad: set[int], group: dict[int, int]) -> None:
        self.bad, self.group = bad, group
        self.written: list[int] = []
        self.attempts = 0

    def attempt(self, part: Sequence[int]) -> BaseException | None:
        self.attempts += 1
        if any(p in self.bad for p in part):
            return psycopg.errors.CheckViolation("new row violates check constraint")
        groups = [self.group[p] for p in part if p in self.group]
        if len(groups) != len(set(groups)):
            return psycopg.errors.CardinalityViolation("cannot affect row a second time")
        self.written += part
        return None


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 300).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(0, n - 1), max_size=min(n, 12)),
            st.dictionaries(st.integers(0, n - 1), st.integers(0, 4), max_size=min(n, 10)),
        )
    )
)
def test_exactly_the_rows_refused_alone_are_handed_back_the_rest_written_once_in_order(
    case: tuple[int, set[int], dict[int, int]],
) -> None:
    n, bad, group = case
    table = Table(bad, group)
    part = list(range(n))
    refused = isolate(part, table.attempt)
    assert [p for p, _ in refused] == sorted(bad)
    assert all(isinstance(e, psycopg.errors.CheckViolation) for _, e in refused)
    assert table.written == [p for p in part if p not in bad]  # each once, in queue order
    assert table.attempts <= 2 * n - 1  # never more than the whole halving tree


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5000), st.data())
def test_one_bad_row_costs_a_few_statements_not_one_per_row(n: int, data: st.DataObject) -> None:
    bad = data.draw(st.integers(0, n - 1))
    table = Table({bad}, {})
    isolate(list(range(n)), table.attempt)
    assert table.attempts <= 1 + 2 * math.ceil(math.log2(n))


def test_an_error_that_is_not_a_rows_raises_and_the_batch_is_retried() -> None:
    def attempt(part: Sequence[int]) -> BaseException | None:
        raise psycopg.errors.UndefinedColumn('column "x" does not exist')

    with pytest.raises(psycopg.errors.UndefinedColumn):
        isolate([0, 1, 2], attempt)


@pytest.mark.parametrize(
    ("error", "row"),
    [
        (psycopg.errors.StringDataRightTruncation("value too long"), True),  # 22001
        (psycopg.errors.InvalidTextRepresentation("invalid input syntax"), True),  # 22P02
        (psycopg.errors.NumericValueOutOfRange("out of range"), True),  # 22003
        (psycopg.errors.CheckViolation("check"), True),  # 23514
        (psycopg.errors.NotNullViolation("null"), True),  # 23502
        (psycopg.errors.ForeignKeyViolation("fk"), True),  # 23503
        (psycopg.errors.ProgramLimitExceeded("index row size 3032 exceeds"), True),  # 54000
        (psycopg.errors.RaiseException("refused by trigger"), True),  # P0001
        (psycopg.errors.DatatypeMismatch("is of type integer"), True),  # 42804
        (psycopg.errors.WithCheckOptionViolation("view's check option"), True),  # 44000
        (psycopg.errors.SequenceGeneratorLimitExceeded("nextval: maximum"), False),  # 2200H
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), True),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True),
        (psycopg.errors.UndefinedTable("no table"), False),  # 42P01: mend the table
        (psycopg.errors.UndefinedColumn("no column"), False),  # 42703
        (psycopg.errors.InsufficientPrivilege("denied"), False),  # 42501
        (psycopg.errors.InvalidColumnReference("no unique constraint"), False),  # 42P10
        (psycopg.errors.SerializationFailure("retry"), False),  # 40001
        (psycopg.errors.DeadlockDetected("deadlock"), False),  # 40P01
        (psycopg.errors.LockNotAvailable("lock"), False),  # 55P03
        (psycopg.errors.AdminShutdown("terminating"), False),  # 57P01
        (psycopg.errors.DiskFull("no space"), False),  # 53100
        (psycopg.OperationalError("server closed the connection"), False),  # no SQLSTATE
        (psycopg.InterfaceError("the connection is closed"), False),
        (RuntimeError("a bug of ours"), False),
    ],
)
def test_which_errors_are_a_rows(error: BaseException, row: bool) -> None:
    assert refused_by_row(error) is row


def test_a_statement_limit_is_sql_not_an_outage() -> None:
    """ProgramLimitExceeded is a psycopg OperationalError: it was counted and logged as
    kind=connection, which sent the reader looking for an outage."""
    assert failure_kind(psycopg.errors.ProgramLimitExceeded("index row size")) == "sql"
    assert failure_kind(psycopg.errors.AdminShutdown("terminating")) == "connection"
    assert failure_kind(psycopg.errors.TooManyConnections("too many")) == "connection"
    assert failure_kind(psycopg.OperationalError("server closed the connection")) == "connection"
    assert failure_kind(psycopg.errors.CheckViolation("check")) == "sql"
    assert failure_kind(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "no")) == "client"


def test_the_transactional_sink_hands_back_each_refused_rows_origin_once() -> None:
    """The queue keeps each row's origin beside it: after a commit the refused rows' origins
    are handed back once, and an abort forgets them with the rows."""
    sink = PostgresTransactionalSink(
        _config(), "ns/p", "g", EngineMetrics("p"), env={"DSN": "postgresql://x"}
    )
    sink.write([{"k": "a"}, {"k": "b"}, {"k": "c"}], ["oa", "ob", "oc"])
    sink.write([{"k": "d"}])  # no origin: None
    refused = [(1, psycopg.errors.CheckViolation("b")), (3, psycopg.errors.CheckViolation("d"))]
    sink._refused = sink._take_rows(4, refused)
    assert [o for o, _ in sink.take_refused()] == ["ob", None]
    assert sink.take_refused() == [] and sink.pending() == 0
    sink.write([{"k": "e"}], ["oe"])
    sink._refused = [("oe", psycopg.errors.CheckViolation("e"))]
    sink.abort()
    assert sink.take_refused() == [] and sink.pending() == 0


def _config() -> PostgresSinkConfig:
    return PostgresSinkConfig.model_validate(
        {"dsnEnv": "DSN", "table": "t", "columns": [{"name": "k"}], "keyColumns": ["k"]}
    )


class UpsertCursor:
    """A cursor over a model table (key -> value) that refuses any statement holding a row
    whose value is negative; savepoints roll it back. Each statement takes one tick of the
    clock the budget is measured by (and each reading of it half a tick)."""

    def __init__(self, clock: list[float]) -> None:
        self.table: dict[str, int] = {}
        self.clock = clock
        self.saved: dict[str, int] = {}

    def execute(self, statement: Any, params: Sequence[Any] = ()) -> None:
        if isinstance(statement, str):
            if statement.startswith("SAVEPOINT"):
                self.saved = dict(self.table)
            elif statement.startswith("ROLLBACK TO"):
                self.table = dict(self.saved)
            return
        self.clock[0] += 1.0
        rows = [(params[i], params[i + 1]) for i in range(0, len(params), 2)]
        if any(value < 0 for _, value in rows):
            raise psycopg.errors.CheckViolation("new row violates check constraint")
        self.table.update(rows)


KEYED = PostgresSinkConfig.model_validate(
    {
        "dsnEnv": "DSN",
        "table": "t",
        "columns": [{"name": "key"}, {"name": "n"}],
        "keyColumns": ["key"],
    }
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(-3, 9)), min_size=1, max_size=40),
    st.lists(st.integers(0, 12), min_size=1, max_size=30),
    st.lists(st.integers(0, 5), max_size=30),
    st.integers(1, 8),
)
def test_tries_cut_short_by_their_budget_end_as_one_unbounded_try(
    rows: list[tuple[str, int]], budgets: list[int], arriving: list[int], per_statement: int
) -> None:
    """Exactly-once's tries stop once their budget is spent (IsolationPostponed), keeping the
    rows found refused by their values; between tries more rows may be queued, a replay may
    rebuild the queue (the same rows), and the next try goes on from what was found. The try
    that commits leaves the table, and hands back the rows, exactly as one unbounded try over
    the same queue: no key's older value over a newer one, no row refused twice, none
    refused that is its key's no more (a review's findings)."""
    queue = [rows[0]]
    pending = list(rows[1:])
    known: dict[Any, BaseException] = {}
    clock = [0.0]

    def monotonic() -> float:  # each reading a tick later too: a budget of 0 is spent
        clock[0] += 0.5
        return clock[0]

    with mock.patch.object(sinks_postgres, "time", types.SimpleNamespace(monotonic=monotonic)):
        for attempt in range(10 * len(rows) + 20):
            for _ in range(arriving[attempt % len(arriving)] if arriving else 0):
                if pending:
                    queue.append(pending.pop(0))
            cursor = UpsertCursor(clock)
            try:
                refused = upsert_rows(
                    cursor,  # type: ignore[arg-type]
                    KEYED,
                    queue,
                    [0],
                    per_statement,
                    known=known,
                    budget=float(budgets[attempt % len(budgets)]),
                )
            except IsolationPostponed as postponed:
                assert postponed.found, "a try stopped without finding anything new"
                assert not set(postponed.found) & set(known), "found again"
                known.update(postponed.found)
                continue
            if pending:  # committed early: the rest comes in the next batch
                queue = list(pending)
                pending = []
                known = {}
                continue
            break
        else:
            raise AssertionError("the tries never committed")
    once = UpsertCursor([0.0])
    expected = upsert_rows(once, KEYED, queue, [0], per_statement)  # type: ignore[arg-type]
    assert cursor.table == once.table
    assert sorted(p for p, _ in refused) == sorted(p for p, _ in expected)
    assert len({p for p, _ in refused}) == len(refused)
