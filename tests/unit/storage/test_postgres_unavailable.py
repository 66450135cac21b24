"""A database that goes away under an exactly-once worker (decision 0188): the operations
that cannot go on without it retry for a bound, then end the worker with its own exit code.
Pure: no server (the connection's errors are raised by the operation itself); the same with
a real server killed and frozen is tests/integration/storage/test_postgres_crashes.py."""

from __future__ import annotations

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
