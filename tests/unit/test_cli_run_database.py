"""`streamherd run` when its PostgreSQL sink's database does not answer where exactly-once
cannot go on without it (decision 0188): the worker exits with its own code for that
(main.DATABASE_EXIT_CODE) and `event=database-unavailable`; the run says so in one line and
leaves with the same code, as it does with the worker's code for a stuck Kafka client. A
failure that is not the database's keeps code 1."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import psycopg
import pytest

from streamherd.operator import local
from streamherd.workers.engine import TransactionError
from streamherd.workers.main import DATABASE_EXIT_CODE
from streamherd.workers.sinks_postgres_offsets import (
    CommitOutcomeUnknownError,
    DatabaseUnavailableError,
)
from tests.infra.paths import EXAMPLES_DIR


def args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        file=str(EXAMPLES_DIR / "01-clicks-local.yaml"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        metrics_port=0,
        bootstrap_servers=None,
        quiet=True,
        max_seconds=None,
    )


def failing(error: BaseException) -> Any:
    """A stand-in for a function: it raises ``error``, whatever it is called with."""

    def run(*_args: object, **_kwargs: object) -> None:
        raise error

    return run


def wrapped(cause: Exception) -> TransactionError:
    """As the engine reports a sink's failure to decide: its TransactionError, from it."""
    try:
        raise TransactionError(f"sink transaction failed: {cause}") from cause
    except TransactionError as error:
        return error


@pytest.mark.parametrize(
    "error",
    [
        DatabaseUnavailableError("read: no database for 20 s: connection refused"),
        wrapped(CommitOutcomeUnknownError("COMMIT failed: server closed the connection")),
    ],
    ids=["unavailable", "commit-outcome-unknown"],
)
def test_a_database_that_does_not_answer_ends_the_run_with_the_workers_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(local, "run_pipeline", failing(error))
    err = io.StringIO()
    assert local.run_local(args(tmp_path), out=io.StringIO(), err=err) == DATABASE_EXIT_CODE
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the sink's database did not answer ("), lines
    assert str(error) in lines[0] and f"code {DATABASE_EXIT_CODE}" in lines[0], lines


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.UndefinedTable('relation "results" does not exist'),
        TransactionError("transaction failed fatally: fenced"),
    ],
    ids=["sql", "kafka"],
)
def test_any_other_failure_keeps_code_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(local, "run_pipeline", failing(error))
    err = io.StringIO()
    assert local.run_local(args(tmp_path), out=io.StringIO(), err=err) == 1
    assert err.getvalue() == f"error: {type(error).__name__}: {error}\n"
