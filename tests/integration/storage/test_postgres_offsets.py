"""The offsets table of exactly-once into PostgreSQL against a real server: results and
offsets commit together or not at all, and a writer whose offsets moved on is fenced.

Two PostgresTransactionalSink objects (workers/sinks_postgres_offsets.py) play two workers
of one consumer group on one table: the one that read the offsets first and commits last
(a worker whose partition moved on while it was frozen) commits nothing, its rows included;
the first commit of a partition is an insert that a concurrent insert fences the same way.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.sinks_postgres_offsets import (
    OffsetsFencedError,
    PostgresTransactionalSink,
)

pytestmark = [pytest.mark.integration]


def sink(
    dsn: str, group: str = "g", *, create_table: bool = True, **options: Any
) -> PostgresTransactionalSink:
    """A sink of a (key text, n bigint) results table (created by the sink, or by the test
    with ``create_table=False``); ``options``: the sink's keywords (``two_phase``,
    ``writer``)."""
    config = PostgresSinkConfig.model_validate(
        {
            "dsnEnv": "DSN",
            "table": "results",
            "columns": [{"name": "key", "type": "text"}, {"name": "n", "type": "bigint"}],
            "keyColumns": ["key"],
            "createTable": create_table,
        }
    )
    return PostgresTransactionalSink(config, "test/p", group, env={"DSN": dsn}, **options)


def table(dsn: str) -> tuple[dict[str, int], dict[tuple[str, int], tuple[int, str]]]:
    with psycopg.connect(dsn) as conn:
        rows: dict[str, int] = dict(conn.execute("SELECT key, n FROM results").fetchall())
        offsets = {
            (t, p): (o, g)
            for t, p, o, g in conn.execute(
                "SELECT topic, partition, next_offset, generation FROM streamherd_offsets"
            ).fetchall()
        }
    return rows, offsets


def rows(*pairs: tuple[str, int]) -> list[Any]:
    return [{"key": k, "n": n} for k, n in pairs]


def test_rows_and_offsets_commit_together_and_read_back(postgres_dsn: str) -> None:
    a = sink(postgres_dsn)
    try:
        assert a.committed([("in", 0), ("in", 1)]) == {}  # creates both tables, no offsets
        a.write(rows(("x", 1), ("y", 2)))
        assert a.pending() == 2
        assert a.commit([("in", 0, 10), ("in", 1, 4)], "gen-1") is True
        assert a.pending() == 0
        assert table(postgres_dsn) == ({"x": 1, "y": 2}, {("in", 0): (10, "gen-1"),
                                                          ("in", 1): (4, "gen-1")})  # fmt: skip
        a.write(rows(("z", 3)))
        assert a.commit([("in", 0, 12)], "gen-2") is True
        assert a.committed([("in", 0), ("in", 1)]) == {("in", 0): (12, "gen-2"),
                                                        ("in", 1): (4, "gen-1")}  # fmt: skip
        # aborted rows never reach the table
        a.write(rows(("dropped", 9)))
        a.abort()
        assert a.commit([("in", 1, 5)], "gen-3") is True
        assert "dropped" not in table(postgres_dsn)[0]
        # another consumer group, or another table, keeps its own offsets
        assert sink(postgres_dsn, "other").committed([("in", 0)]) == {}
    finally:
        a.close()


def test_a_writer_whose_offsets_moved_on_commits_nothing(postgres_dsn: str) -> None:
    first, zombie, owner = sink(postgres_dsn), sink(postgres_dsn), sink(postgres_dsn)
    try:
        first.committed([("in", 0)])
        first.write(rows(("a", 1)))
        assert first.commit([("in", 0, 5)], "g1")
        # Both read generation g1; the new owner commits first.
        assert zombie.committed([("in", 0)]) == {("in", 0): (5, "g1")}
        assert owner.committed([("in", 0)]) == {("in", 0): (5, "g1")}
        owner.write(rows(("b", 2)))
        assert owner.commit([("in", 0, 9)], "owner-1")
        zombie.write(rows(("a", 100), ("zombie", 1)))  # would overwrite a and add a row
        with pytest.raises(OffsetsFencedError):
            zombie.commit([("in", 0, 7)], "zombie-1")
        assert zombie.pending() == 0  # its rows are gone with its transaction
        assert table(postgres_dsn) == ({"a": 1, "b": 2}, {("in", 0): (9, "owner-1")})
        # The owner goes on from what it wrote; reading again, the zombie could too.
        owner.write(rows(("c", 3)))
        assert owner.commit([("in", 0, 11)], "owner-2")
        assert zombie.committed([("in", 0)]) == {("in", 0): (11, "owner-2")}
    finally:
        for s in (first, zombie, owner):
            s.close()


def test_the_first_commit_of_a_partition_is_fenced_by_a_concurrent_one(postgres_dsn: str) -> None:
    a, b = sink(postgres_dsn), sink(postgres_dsn)
    try:
        assert a.committed([("in", 3)]) == {} and b.committed([("in", 3)]) == {}
        b.write(rows(("b", 1)))
        assert b.commit([("in", 3, 2)], "b-1")
        a.write(rows(("a", 1)))
        with pytest.raises(OffsetsFencedError):
            a.commit([("in", 3, 4)], "a-1")
        assert table(postgres_dsn) == ({"b": 1}, {("in", 3): (2, "b-1")})
    finally:
        a.close()
        b.close()


def test_a_database_that_refuses_keeps_the_rows_for_the_next_try(postgres_dsn: str) -> None:
    """A refusal of the table's (a column the sink writes is missing), not a row's: a row
    the table refuses is left out and dead-lettered instead (decision 0200,
    test_postgres_refused_rows.py)."""
    a = sink(postgres_dsn)
    try:
        a.committed([("in", 0)])
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE results RENAME COLUMN n TO m")
            a.write(rows(("ok", 1), ("big", 50)))
            assert a.commit([("in", 0, 3)], "g1") is False  # rolled back: nothing committed
            assert a.pending() == 2 and not a.health()[0]
            assert a.take_refused() == []
            conn.execute("ALTER TABLE results RENAME COLUMN m TO n")
            assert table(postgres_dsn) == ({}, {})
        assert a.commit([("in", 0, 3)], "g2") is True  # the same rows, a new generation
        assert table(postgres_dsn) == ({"ok": 1, "big": 50}, {("in", 0): (3, "g2")})
        assert a.health() == (True, "ok")
    finally:
        a.close()


@pytest.mark.parametrize("two_phase", [False, True], ids=["commit", "prepare"])
def test_a_refusal_at_commit_keeps_the_rows_as_one_before_it(
    postgres_dsn: str, two_phase: bool
) -> None:
    """A deferred constraint is checked at COMMIT (and at PREPARE TRANSACTION): its refusal
    is the server's answer, the transaction rolled back, as certain as a refusal before.
    One phase took any error at COMMIT for a lost answer (CommitOutcomeUnknownError), so a
    table with such a constraint stopped the worker, and its successor again, with the exit
    code of an unavailable database (main.DATABASE_EXIT_CODE), where two phases retry."""
    a = sink(postgres_dsn, create_table=False, two_phase=two_phase, writer="w")
    try:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE results (key text PRIMARY KEY, n bigint, "
                "CONSTRAINT one_n UNIQUE (n) DEFERRABLE INITIALLY DEFERRED)"
            )
            a.committed([("in", 0)])
            a.write(rows(("a", 1), ("b", 1)))  # two keys, one n: refused at COMMIT
            write = a.prepare if two_phase else a.commit
            assert write([("in", 0, 3)], "g1") is False  # rolled back: nothing committed
            assert a.pending() == 2 and not a.health()[0]
            assert table(postgres_dsn) == ({}, {})
            conn.execute("ALTER TABLE results DROP CONSTRAINT one_n")
        assert write([("in", 0, 3)], "g2") is True  # the same rows, a new generation
        if two_phase:
            a.commit_prepared()
        assert table(postgres_dsn) == ({"a": 1, "b": 1}, {("in", 0): (3, "g2")})
        assert a.health() == (True, "ok")
    finally:
        a.close()
