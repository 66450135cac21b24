"""Rows a real PostgreSQL table refuses (a type, a length, a constraint, a trigger, an index
entry too large) are found and handed back for the dead-letter topic, and every other row
of the batch is written (decision 0200). They were retried for ever: one bad result
stopped the pipeline, in both delivery modes.

The sinks are driven as the outputs drive them (tests/integration/storage/
test_postgres_values.py ``drive``), with each result's origin beside it; the pipelines
with a real broker and worker processes are in test_postgres_refused_pipeline.py."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.sinks_postgres import PostgresSink
from streamherd.workers.sinks_postgres_offsets import PostgresTransactionalSink
from tests.integration.storage.test_postgres_values import ENV, config, execute, started

pytestmark = [pytest.mark.integration]

TRIGGER = """
CREATE FUNCTION refuse_x() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.key = 'x' THEN RAISE EXCEPTION 'key x is not welcome here'; END IF;
RETURN NEW; END $$;
CREATE TRIGGER refuse_x BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION refuse_x();
"""

#: (table DDL after "CREATE TABLE t", the bad result, the error class the server answers)
KINDS: dict[str, tuple[str, dict[str, Any], type[BaseException]]] = {
    "varchar-too-short": (
        "(key varchar(5) PRIMARY KEY, n bigint, tag text)",
        {"key": "much-too-long", "n": 1},
        psycopg.errors.StringDataRightTruncation,
    ),
    "check": (
        "(key text PRIMARY KEY, n bigint CHECK (n >= 0), tag text)",
        {"key": "neg", "n": -1},
        psycopg.errors.CheckViolation,
    ),
    "trigger-raise": (
        "(key text PRIMARY KEY, n bigint, tag text);" + TRIGGER,
        {"key": "x", "n": 1},
        psycopg.errors.RaiseException,
    ),
    "fraction-into-integer": (
        "(key text PRIMARY KEY, n integer, tag text)",
        {"key": "half", "n": 2.5},
        psycopg.errors.InvalidTextRepresentation,
    ),
    "integer-out-of-range": (
        "(key text PRIMARY KEY, n integer, tag text)",
        {"key": "big", "n": 2**40},
        psycopg.errors.NumericValueOutOfRange,
    ),
    "enum": (
        "(key text PRIMARY KEY, n bigint, tag mood)",
        {"key": "sad", "n": 1, "tag": "sad"},
        psycopg.errors.InvalidTextRepresentation,
    ),
    "foreign-key": (
        "(key text PRIMARY KEY REFERENCES parent (key), n bigint, tag text)",
        {"key": "orphan", "n": 1},
        psycopg.errors.ForeignKeyViolation,
    ),
    # Random hex: zlib halves it (1,7xx bytes: under the estimate's 2,704), PostgreSQL's
    # pglz cannot shrink it by a quarter and stores it as it is: "index row size 3032".
    "index-entry-too-large": (
        "(key text PRIMARY KEY, n bigint, tag text)",
        {"key": random.Random(3000).randbytes(1500).hex(), "n": 1},
        psycopg.errors.ProgramLimitExceeded,
    ),
}

GOOD: list[dict[str, Any]] = [{"key": f"k{i}", "n": i, "tag": "happy"} for i in range(40)]
GOOD_ROWS = sorted((f"k{i}", i) for i in range(40))
COLUMNS = [("key", None), ("n", None), ("tag", None)]


def prepare_table(dsn: str, ddl: str) -> None:
    execute(dsn, "CREATE TYPE mood AS ENUM ('happy', 'ok')")
    execute(dsn, "CREATE TABLE parent (key text PRIMARY KEY)")
    execute(dsn, "INSERT INTO parent SELECT 'k' || i FROM generate_series(0, 39) i")
    execute(dsn, "CREATE TABLE t " + ddl)


def batch(bad: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The good rows with the bad one in the middle; each row's origin."""
    values = [*GOOD[:20], bad, *GOOD[20:]]
    return values, [f"origin-{i}" for i in range(len(values))]


def table(dsn: str) -> list[tuple[Any, ...]]:
    return sorted(execute(dsn, "SELECT key, n FROM t"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_at_least_once_sink_hands_back_the_refused_row_and_writes_the_rest(
    postgres_dsn: str, kind: str
) -> None:
    ddl, bad, refused_as = KINDS[kind]
    prepare_table(postgres_dsn, ddl)
    values, origins = batch(bad)
    metrics = EngineMetrics("p")
    sink = started(config("t", COLUMNS, ["key"]), postgres_dsn, metrics)
    try:
        sink.write(values, origins)
        assert sink.flush(30), "the batch was not confirmed: the bad row stopped it"
        refused = sink.take_refused()
        assert [o for o, _ in refused] == ["origin-20"]
        assert isinstance(refused[0][1], refused_as), refused[0][1]
        assert sink.take_refused() == []
        assert sink.pending() == 0 and sink.health() == (True, "ok")
        sql_errors = metrics.registry.get_sample_value(
            "streamherd_sink_errors_total", {"pipeline": "p", "sink": "postgres", "kind": "sql"}
        )
        assert sql_errors == 1
    finally:
        sink.close()
    assert table(postgres_dsn) == GOOD_ROWS


@pytest.mark.parametrize("two_phase", [False, True], ids=["commit", "prepare"])
@pytest.mark.parametrize("kind", ["check", "trigger-raise", "index-entry-too-large"])
def test_the_exactly_once_sink_hands_back_the_refused_row_with_its_transaction(
    postgres_dsn: str, kind: str, two_phase: bool
) -> None:
    """In the transaction with the offsets (the refused rows handed back after it commits or
    is prepared: under two phases the outputs dead-letter them in Kafka's transaction,
    which then decides the database's)."""
    ddl, bad, refused_as = KINDS[kind]
    prepare_table(postgres_dsn, ddl)
    values, origins = batch(bad)
    sink = PostgresTransactionalSink(
        config("t", COLUMNS, ["key"]),
        "ns/p",
        "g",
        env={ENV: postgres_dsn},
        two_phase=two_phase,
        writer=f"w-{uuid.uuid4().hex[:6]}",
    )
    try:
        sink.committed([("in", 0)])
        sink.write(values, origins)
        if two_phase:
            assert sink.prepare([("in", 0, 41)], "g1")
            refused = sink.take_refused()
            sink.commit_prepared()
        else:
            assert sink.commit([("in", 0, 41)], "g1")
            refused = sink.take_refused()
        assert [o for o, _ in refused] == ["origin-20"]
        assert isinstance(refused[0][1], refused_as)
        assert sink.pending() == 0
    finally:
        sink.close()
    assert table(postgres_dsn) == GOOD_ROWS
    assert execute(postgres_dsn, "SELECT next_offset FROM streamherd_offsets") == [(41,)]


@pytest.mark.parametrize("two_phase", [False, True], ids=["commit", "prepare"])
def test_an_exactly_once_batch_past_its_isolation_budget_is_postponed_and_goes_on_later(
    postgres_dsn: str, two_phase: bool
) -> None:
    """Exactly-once finds the refused rows in the engine's thread, at the checkpoint: a
    table refusing thousands held it past max.poll.interval.ms and Kafka's transaction
    timeout (a livelock: the worker left its group, replayed, met the same rows). Past its
    budget a try is postponed, nothing written, keeping the rows it found; each try finds
    at least one more, so the batch commits in the end, the same as one unbounded try:
    every good row once, each bad row handed back once, with its key's earlier row kept.
    A budget of 0 stops each try at its first find: one try per bad row, then the commit."""
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint CHECK (n >= 0))")
    rng = random.Random(28)
    values: list[dict[str, Any]] = [
        {"key": f"k{i % 150}", "n": rng.choice([i, i, i, -i - 1])} for i in range(300)
    ]
    origins = list(range(300))
    # The latest good row of each key; a key whose latest row is bad keeps its row before.
    kept: dict[str, int] = {}
    for v in values:
        if v["n"] >= 0:
            kept[v["key"]] = v["n"]
    latest = {v["key"]: i for i, v in enumerate(values)}
    bad_latest = [i for k, i in latest.items() if values[i]["n"] < 0]
    sink = PostgresTransactionalSink(
        config("t", [("key", None), ("n", None)], ["key"]),
        "ns/p",
        "g",
        env={ENV: postgres_dsn},
        two_phase=two_phase,
        writer=f"w-{uuid.uuid4().hex[:6]}",
    )
    sink.isolation_budget = 0.0
    tries = 0
    try:
        sink.committed([("in", 0)])
        sink.write(values, origins)
        while True:
            tries += 1
            assert tries <= len(values), "no progress"
            if two_phase:
                done = sink.prepare([("in", 0, 300)], "g1")
                if done:
                    refused = sink.take_refused()
                    sink.commit_prepared()
            else:
                done = sink.commit([("in", 0, 300)], "g1")
                refused = sink.take_refused() if done else []
            if done:
                break
            assert sink.take_refused() == [] and sink.pending() == 300
            assert table(postgres_dsn) == []  # a postponed try wrote nothing
        assert sink.pending() == 0 and sink.health() == (True, "ok")
    finally:
        sink.close()
    refused_origins = sorted(o for o, _ in refused)
    # Each bad latest row, and each bad row tried on the way back to a good earlier one.
    assert set(bad_latest) <= set(refused_origins)
    assert all(values[o]["n"] < 0 for o in refused_origins)
    assert len(set(refused_origins)) == len(refused_origins)
    assert tries == len(refused_origins) + 1  # one find per postponed try
    assert table(postgres_dsn) == sorted(kept.items())
    assert execute(postgres_dsn, "SELECT next_offset FROM streamherd_offsets") == [(300,)]
    if two_phase:
        assert execute(postgres_dsn, "SELECT count(*) FROM pg_prepared_xacts") == [(0,)]


DEFERRED_FK = (
    "(key text PRIMARY KEY REFERENCES parent (key) DEFERRABLE INITIALLY DEFERRED, n bigint, "
    "tag text)"
)


@pytest.mark.parametrize("mode", ["at-least-once", "commit", "prepare"])
def test_a_row_a_deferred_constraint_refuses_at_commit_is_found_and_handed_back(
    postgres_dsn: str, mode: str
) -> None:
    """A deferred foreign key is checked at COMMIT (or PREPARE), outside the halving: the
    whole batch was refused at every try and the pipeline stopped for good (session 27's
    finding). The batch is written again with its constraints immediate: the orphan row
    is handed back, every other row written."""
    prepare_table(postgres_dsn, DEFERRED_FK)
    values, origins = batch({"key": "orphan", "n": 1})
    if mode == "at-least-once":
        sink = started(config("t", COLUMNS, ["key"]), postgres_dsn)
        try:
            sink.write(values, origins)
            assert sink.flush(30), "the batch was not confirmed: the deferred refusal stopped it"
            refused = sink.take_refused()
        finally:
            sink.close()
    else:
        eo = PostgresTransactionalSink(
            config("t", COLUMNS, ["key"]),
            "ns/p",
            "g",
            env={ENV: postgres_dsn},
            two_phase=mode == "prepare",
            writer=f"w-{uuid.uuid4().hex[:6]}",
        )
        try:
            eo.committed([("in", 0)])
            eo.write(values, origins)
            tries = [eo.prepare if mode == "prepare" else eo.commit for _ in range(2)]
            # The first try is refused at its end (nothing written, rows kept); the second
            # is immediate and finds the row.
            assert not tries[0]([("in", 0, 41)], "g1")
            assert eo.pending() == 41 and table(postgres_dsn) == []
            assert tries[1]([("in", 0, 41)], "g1")
            refused = eo.take_refused()
            if mode == "prepare":
                eo.commit_prepared()
            assert eo.pending() == 0
        finally:
            eo.close()
    assert [o for o, _ in refused] == ["origin-20"]
    assert isinstance(refused[0][1], psycopg.errors.ForeignKeyViolation)
    assert table(postgres_dsn) == GOOD_ROWS


def test_a_prepared_transaction_rolled_back_forgets_its_refused_rows(postgres_dsn: str) -> None:
    prepare_table(postgres_dsn, KINDS["check"][0])
    values, origins = batch(KINDS["check"][1])
    sink = PostgresTransactionalSink(
        config("t", COLUMNS, ["key"]),
        "ns/p",
        "g",
        env={ENV: postgres_dsn},
        two_phase=True,
        writer="w",
    )
    try:
        sink.committed([("in", 0)])
        sink.write(values, origins)
        assert sink.prepare([("in", 0, 41)], "g1")
        sink.rollback_prepared()  # Kafka's transaction aborted: its dead letters with it
        assert sink.take_refused() == [] and sink.pending() == 0
    finally:
        sink.close()
    assert table(postgres_dsn) == []


def test_bad_rows_spread_through_large_batches_cost_few_statements(postgres_dsn: str) -> None:
    """2,000 rows a batch, 1 in 250 refused: every good row written, each bad one handed
    back, in a handful of statements per bad row (pg_stat_statements is not needed: the
    savepoints rolled back are counted by the server's transaction statistics)."""
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint CHECK (n % 250 <> 7))")
    values = [{"key": f"k{i}", "n": i} for i in range(6000)]
    bad = [i for i in range(6000) if i % 250 == 7]
    sink = started(config("t", [("key", None), ("n", None)], ["key"], batchRows=2000), postgres_dsn)
    try:
        sink.write(values, list(range(6000)))
        assert sink.flush(60)
        assert sorted(o for o, _ in sink.take_refused()) == bad
    finally:
        sink.close()
    assert execute(postgres_dsn, "SELECT count(*) FROM t") == [(6000 - len(bad),)]


def test_keys_that_are_one_row_with_a_bad_row_keep_the_latest_good_result(
    postgres_dsn: str,
) -> None:
    """The halving also splits a statement that touches one row twice ("1" and 1 in a text
    key): with a refused row among them, the latest good result of the key stays."""
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint CHECK (n >= 0))")
    values: Sequence[dict[str, Any]] = [
        {"key": "1", "n": 1},
        {"key": 1, "n": 2},
        {"key": "b", "n": -1},
        {"key": "1", "n": 3},
    ]
    sink = started(config("t", [("key", None), ("n", None)], ["key"]), postgres_dsn)
    try:
        sink.write(values, ["a", "b", "c", "d"])
        assert sink.flush(30)
        assert [o for o, _ in sink.take_refused()] == ["c"]
    finally:
        sink.close()
    assert table(postgres_dsn) == [("1", 3)]


def test_a_table_that_refuses_every_row_hands_them_all_back(postgres_dsn: str) -> None:
    """A NOT NULL column the sink does not write refuses every row: each is dead-lettered
    with the error that names the column (mend the table, replay the dead letters), and the
    pipeline goes on, where it stopped at the first batch."""
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint, owner text NOT NULL)")
    sink = started(config("t", [("key", None), ("n", None)], ["key"]), postgres_dsn)
    try:
        sink.write(GOOD, [r["key"] for r in GOOD])
        assert sink.flush(30)
        refused = sink.take_refused()
        assert sorted(o for o, _ in refused) == sorted(f"k{i}" for i in range(40))
        assert all(isinstance(e, psycopg.errors.NotNullViolation) for _, e in refused)
        assert '"owner"' in str(refused[0][1])
    finally:
        sink.close()
    assert table(postgres_dsn) == []


def test_an_error_of_the_table_is_still_retried_not_dead_lettered(postgres_dsn: str) -> None:
    """A missing table (no createTable) is the table's fault, not a row's: the batch waits
    and is written once the table exists; nothing is handed back."""
    sink = PostgresSink(
        config("t", [("key", None), ("n", None)], ["key"]), "ns/p", env={ENV: postgres_dsn}
    )
    try:
        sink.write(GOOD[:3], ["a", "b", "c"])
        assert sink.flush(2) is False
        assert sink.take_refused() == []
        execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint, tag text)")
        assert sink.flush(60)
        assert sink.take_refused() == []
    finally:
        sink.close()
    assert table(postgres_dsn) == [("k0", 0), ("k1", 1), ("k2", 2)]


def test_a_refused_latest_row_falls_back_to_the_keys_earlier_row(postgres_dsn: str) -> None:
    """Two results of one key in one batch, the latest refused: the earlier one is the
    key's row, as when they come in two batches (it vanished: a review's finding)."""
    execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, n bigint CHECK (n >= 0))")
    sink = started(config("t", [("key", None), ("n", None)], ["key"]), postgres_dsn)
    try:
        sink.write(
            [
                {"key": "a", "n": 1},
                {"key": "a", "n": -1},
                {"key": "b", "n": -2},
                {"key": "c", "n": 3},
            ],
            ["a1", "a-bad", "b-bad", "c"],
        )
        assert sink.flush(30)
        assert sorted(o for o, _ in sink.take_refused()) == ["a-bad", "b-bad"]
    finally:
        sink.close()
    assert table(postgres_dsn) == [("a", 1), ("c", 3)]


def test_a_partitioned_table_without_the_rows_partition_waits_for_it(postgres_dsn: str) -> None:
    """No partition for the row (a time partition not made yet) is a CHECK violation's
    SQLSTATE without a constraint: the table's to mend, so the batch waits, where every row
    of the range was dead-lettered (a review's finding)."""
    execute(
        postgres_dsn,
        "CREATE TABLE t (key text, n bigint, PRIMARY KEY (key, n)) PARTITION BY RANGE (n); "
        "CREATE TABLE t0 PARTITION OF t FOR VALUES FROM (0) TO (100)",
    )
    sink = started(config("t", [("key", None), ("n", None)], ["key", "n"]), postgres_dsn)
    try:
        sink.write([{"key": "a", "n": 1}, {"key": "b", "n": 500}], ["a", "b"])
        assert sink.flush(2) is False
        assert sink.take_refused() == []
        execute(postgres_dsn, "CREATE TABLE t1 PARTITION OF t FOR VALUES FROM (100) TO (1000)")
        assert sink.flush(60)
        assert sink.take_refused() == []
    finally:
        sink.close()
    assert table(postgres_dsn) == [("a", 1), ("b", 500)]


def test_a_domain_over_a_domain_is_bound_as_the_type_under_it(postgres_dsn: str) -> None:
    """Only one level was resolved: a float for a domain over a domain over integer went as
    float8 and was rounded (2.5 -> 2), into numeric it kept 15 digits (a review's finding)."""
    execute(
        postgres_dsn,
        "CREATE DOMAIN i1 AS integer; CREATE DOMAIN i2 AS i1; "
        "CREATE DOMAIN n1 AS numeric; CREATE DOMAIN n2 AS n1; "
        "CREATE TABLE t (key text PRIMARY KEY, n i2, x n2)",
    )
    sink = started(config("t", [("key", None), ("n", None), ("x", None)], ["key"]), postgres_dsn)
    try:
        assert sink.facts.column_types == {"key": "text", "n": "integer", "x": "numeric"}
        sink.write(
            [{"key": "half", "n": 2.5}, {"key": "whole", "n": 2.0, "x": 0.1 + 0.2}],
            ["half", "whole"],
        )
        assert sink.flush(30)
        assert [o for o, _ in sink.take_refused()] == ["half"]
    finally:
        sink.close()
    assert execute(postgres_dsn, "SELECT key, n, x::text FROM t") == [
        ("whole", 2, "0.30000000000000004")
    ]


def test_a_table_made_after_the_sink_connected_is_read_again(postgres_dsn: str) -> None:
    """The sink connects at once, and read a table that was not there; one made then, with
    a jsonb column, refused a string sent as JSON text: now a batch with refusals reads the
    table again, and is written again when it changed (a review's finding)."""
    sink = started(config("t", [("key", None), ("doc", None)], ["key"]), postgres_dsn)
    try:
        assert sink.facts.json_columns == {}
        execute(postgres_dsn, "CREATE TABLE t (key text PRIMARY KEY, doc jsonb)")
        sink.write([{"key": "a", "doc": "ok"}], ["a"])
        assert sink.flush(60)
        assert sink.take_refused() == []
        assert sink.facts.json_columns == {"doc": "jsonb"}
    finally:
        sink.close()
    assert execute(postgres_dsn, "SELECT key, doc FROM t") == [("a", "ok")]
