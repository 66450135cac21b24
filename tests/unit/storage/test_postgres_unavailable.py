"""A database that goes away under an exactly-once worker (decision 0188): the operations
that cannot go on without it retry for a bound, then end the worker with its own exit code.
Pure: no server (the connection's errors are raised by the operation itself); the same with
a real server killed and frozen is tests/integration/storage/test_postgres_crashes.py."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from streamherd.workers import sinks_postgres_offsets
from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.engine import TransactionError
from streamherd.workers.main import database_unavailable
from streamherd.workers.sinks_postgres import NoAnswerError
from streamherd.workers.sinks_postgres_offsets import (
    CommitOutcomeUnknownError,
    DatabaseUnavailableError,
    OffsetsFencedError,
    PostgresTransactionalSink,
)
from streamherd.workers.twophase import Resolution


class StoppedClock:
    """The module's clock: no time passes but what it sleeps. A bound of half a second on the
    real clock was missed by a loaded machine: a stall of 0.3 s in the first attempt left
    no time for a second one, which the test asks for."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sink() -> PostgresTransactionalSink:
    config = PostgresSinkConfig.model_validate(
        {
            "dsnEnv": "D",
            "table": "t",
            "columns": [{"name": "k", "type": "text"}],
            "keyColumns": ["k"],
        }
    )
    return PostgresTransactionalSink(config, "ns/p", "g", env={"D": "host=127.0.0.1 port=1"})


def test_an_operation_is_tried_again_while_the_database_does_not_answer() -> None:
    failures = [psycopg.OperationalError("connection refused"), NoAnswerError("no answer")]

    def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "rows"

    assert sink()._retrying("read", operation) == "rows"


def test_a_database_away_past_the_bound_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks_postgres_offsets, "READ_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(sinks_postgres_offsets, "time", StoppedClock())
    calls = []

    def operation() -> None:
        calls.append(1)
        raise NoAnswerError("the database did not answer within 20 s")

    with pytest.raises(DatabaseUnavailableError, match=r"register: no database for 0\.5 s"):
        sink()._retrying("register", operation)
    assert len(calls) >= 2
    # Still a psycopg error: whoever caught the database's errors before catches it.
    assert issubclass(DatabaseUnavailableError, psycopg.OperationalError)


def test_an_sql_error_is_not_retried() -> None:
    calls = []

    def operation() -> None:
        calls.append(1)
        raise psycopg.errors.UndefinedTable("no such table")

    with pytest.raises(psycopg.errors.UndefinedTable):
        sink()._retrying("read", operation)
    assert calls == [1]


def wrapped(cause: BaseException) -> TransactionError:
    try:
        try:
            raise cause
        except BaseException as error:
            raise TransactionError("sink transaction failed") from error
    except TransactionError as outer:
        return outer


def test_the_worker_exits_for_its_database_only_when_the_database_is_the_cause() -> None:
    assert database_unavailable(DatabaseUnavailableError("read: no database for 20 s"))
    assert database_unavailable(wrapped(CommitOutcomeUnknownError("COMMIT failed")))
    assert database_unavailable(wrapped(DatabaseUnavailableError("recover")))
    assert not database_unavailable(wrapped(OffsetsFencedError("moved")))
    assert not database_unavailable(TransactionError("Kafka refused"))
    assert not database_unavailable(psycopg.errors.UndefinedTable("no such table"))
    assert not database_unavailable(ValueError("bad config"))


def raised(call: Any) -> BaseException:
    try:
        call()
    except Exception as error:  # whatever it is, the test judges it
        return error
    raise AssertionError("nothing raised")


def test_kafka_offsets_that_do_not_settle_are_not_the_databases_doing() -> None:
    """Recovery asks Kafka again while its committed offsets are unstable; past its wait
    the worker fails. That is Kafka's state: it was reported as an unavailable database
    (CommitOutcomeUnknownError: exit code 5, event=database-unavailable)."""
    s = sink()
    undecided = Resolution(
        commit=frozenset(), rollback=frozenset(), undecided=frozenset({"x:g-1"}),
        unexplained=frozenset(), forget=frozenset(),
    )  # fmt: skip
    s._recover_once = lambda *_args: undecided  # type: ignore[method-assign]
    error = raised(lambda: s.recover([("t", 0)], lambda _tps: {}, lambda _w: None, wait=0))
    assert "not stable" in str(error) and "x:g-1" in str(error)
    assert not database_unavailable(wrapped(error))


class FakeConnection:
    """Answers COMMIT/ROLLBACK PREPARED with "no such prepared transaction" (decided by
    someone else) and the offsets read with ``offsets`` or the error ``read``."""

    def __init__(self, offsets: list[tuple[str, int, int, str]], read: Exception | None) -> None:
        self.offsets, self.read = offsets, read
        self.closed = False

    def execute(self, statement: Any, _params: Any = None) -> FakeConnection:
        if "PREPARED" in repr(statement):
            raise psycopg.errors.UndefinedObject("prepared transaction does not exist")
        if self.read is not None:
            raise self.read
        return self

    def fetchall(self) -> list[tuple[str, int, int, str]]:
        return self.offsets

    def close(self) -> None:
        self.closed = True


def test_a_prepared_transaction_decided_the_other_way_is_not_the_databases_doing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """COMMIT PREPARED finds the gid gone and the offsets table without its generation:
    another worker rolled it back (this one was cut off). The database answered all along."""
    s = sink()
    s._prepared = (f"{s.prefix}:gen-7", [("t", 0, 5)], 0, 0, 0.0)
    conn = FakeConnection([("t", 0, 3, "gen-6")], None)
    monkeypatch.setattr(s, "_connection", lambda **_kwargs: conn)
    error = raised(s.commit_prepared)
    assert "decided otherwise by another worker" in str(error)
    assert not database_unavailable(wrapped(error))
    # The same read finding the generation: committed by whoever decided it, as wanted.
    conn.offsets = [("t", 0, 5, "gen-7")]
    s._prepared = (f"{s.prefix}:gen-7", [("t", 0, 5)], 0, 0, 0.0)
    s.commit_prepared()
    assert s._prepared is None


def test_the_offsets_read_that_settles_a_decided_gid_waits_for_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """COMMIT PREPARED found the gid gone (its answer lost, the statement retried), and the
    offsets table, which tells whether it committed, did not answer: a database outage,
    retried as every read and then exit code 5 (it raised the bare connection error: exit
    code 1, as a bug)."""
    monkeypatch.setattr(sinks_postgres_offsets, "READ_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(sinks_postgres_offsets, "time", StoppedClock())
    s = sink()
    s._prepared = (f"{s.prefix}:gen-7", [("t", 0, 5)], 0, 0, 0.0)
    conn = FakeConnection([], psycopg.OperationalError("server closed the connection"))
    monkeypatch.setattr(s, "_connection", lambda **_kwargs: conn)
    error = raised(s.commit_prepared)
    assert database_unavailable(wrapped(error)), repr(error)
    assert s._prepared is not None  # not decided here: recovery decides it
