"""Exactly-once Kafka -> PostgreSQL with real processes: a real broker, a real PostgreSQL
server and `streamherd-worker` subprocesses with `delivery: exactlyOnce` (decision 0105).

The results and the input offsets commit in one database transaction, so a SIGKILL at any
moment must leave the table equal to the reference computed in the test with *no write
repeated*: a trigger the test installs records every INSERT and every UPDATE of a result
row, and each (key, window) must have been written exactly once — an at-least-once sink
replaying after a crash would rewrite rows with the same values, which the upsert hides but
the trigger counts. Kill points:

- inside the transaction, after its result rows were written: the test holds the offsets
  rows locked, sees the worker's backend wait on that lock with the results table's write
  lock taken (rows upserted in that open transaction), and kills the worker;
- right after a commit (the offsets table's generation just changed);
- while partitions are being assigned (as soon as the worker logs its assignment);
- at random moments with two workers, so that every restart is also a rebalance;

and a worker frozen with SIGSTOP while another takes its partitions must commit nothing after
SIGCONT (its offsets moved on: fenced).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    PacedProducer,
    Worker,
    clicks,
    flush_markers,
    wait_until,
)
from tests.integration.storage.test_postgres_pipeline import (
    BASE_END_TS,
    DSN_ENV,
    PARTITIONS,
    assert_table_equals_reference,
    metric,
    pg_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

AUDIT = """
CREATE TABLE clicks (key text, window_start timestamptz, window_end timestamptz,
                     clicks bigint, bytes double precision,
                     PRIMARY KEY (key, window_start, window_end));
CREATE TABLE audit (key text, window_start timestamptz, op text);
CREATE FUNCTION audit_clicks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (NEW.key, NEW.window_start, TG_OP); RETURN NULL; END $$;
CREATE TRIGGER audit_clicks AFTER INSERT OR UPDATE ON clicks
    FOR EACH ROW EXECUTE FUNCTION audit_clicks();
"""


def exactly_once_config(broker: KafkaBroker, tmp: Path, dsn: str) -> tuple[dict[str, Any], str]:
    src = broker.create_topic(broker.unique_topic("pgeos-in"), PARTITIONS)
    config = pg_config(broker, src, "", tmp / "ck", batchSize=500)
    config["delivery"] = "exactlyOnce"
    config["checkpoint"]["intervalSeconds"] = 0.5
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT)  # the table the sink would create, plus the write counter
    return config, src


def worker(tmp: Path, name: str, config: dict[str, Any]) -> Worker:
    w = Worker.create(tmp, name, config)
    w.env = {"STREAMHERD_WORKER_ID": name}
    return w


def offsets(dsn: str, table: str = "clicks") -> dict[tuple[str, int], tuple[int, str]]:
    """The offsets table's rows of the results table `table`."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            found = conn.execute(
                "SELECT topic, partition, next_offset, generation FROM streamherd_offsets "
                "WHERE sink_table = %s",
                (table,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {(t, p): (o, g) for t, p, o, g in found}


def assert_each_window_written_once(dsn: str, broker: KafkaBroker, src: str) -> None:
    with psycopg.connect(dsn) as conn:
        writes = conn.execute(
            "SELECT key, window_start, count(*), string_agg(op, ',') FROM audit "
            "GROUP BY key, window_start"
        ).fetchall()
        n_rows = conn.execute("SELECT count(*) FROM clicks").fetchone()
    assert n_rows is not None and len(writes) == n_rows[0]
    again = [w for w in writes if w[2] != 1]
    assert not again, f"{len(again)} windows written more than once, e.g. {again[:3]}"
    # Every record read, and the table's offsets say so (they are what a restart uses).
    ends = broker.end_offsets(src)
    got = {p: o for (t, p), (o, _) in offsets(dsn).items() if t == src}
    assert got == ends, f"offsets table {got}, log ends {ends}"


def finish_flushed(
    broker: KafkaBroker, src: str, dsn: str, total: int, workers: list[Worker]
) -> None:
    """Flush every window; the table must equal the reference, and the offsets table reach
    the log's end."""
    flush_markers(broker, src, PARTITIONS, BASE_END_TS(total))
    assert_table_equals_reference(dsn, total, workers)
    wait_until(
        "the offsets of the flush markers committed",
        lambda: {p: o for (_, p), (o, _) in offsets(dsn).items()} == broker.end_offsets(src),
        120,
        workers,
    )


def finish(broker: KafkaBroker, src: str, dsn: str, total: int, workers: list[Worker]) -> None:
    finish_flushed(broker, src, dsn, total, workers)
    assert_each_window_written_once(dsn, broker, src)


def blocked_on_offsets(dsn: str) -> tuple[bool, bool]:
    """Whether a worker's transaction waits for the offsets rows the test holds locked, and
    whether that transaction has written result rows already (its upsert took the table's
    RowExclusiveLock: the statement only runs with rows)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
            "AND l.relation = 'clicks'::regclass AND l.mode = 'RowExclusiveLock') "
            "FROM pg_stat_activity a WHERE a.application_name LIKE 'streamherd %' "
            "AND a.wait_event_type = 'Lock' AND a.query LIKE '%streamherd_offsets%'"
        ).fetchone()
    return (row is not None, bool(row and row[1]))


def kill_inside_transaction(dsn: str, w: Worker) -> None:
    """Kill the worker inside a transaction that has written result rows and waits to
    write its offsets (transactions without rows are let through)."""
    for _ in range(60):
        with psycopg.connect(dsn) as conn:  # the test's transaction, open until rollback
            conn.execute("SELECT 1 FROM streamherd_offsets FOR UPDATE").fetchall()
            wait_until("the worker's commit to wait for the lock",
                       lambda: blocked_on_offsets(dsn)[0], 60, [w])  # fmt: skip
            if blocked_on_offsets(dsn)[1]:
                w.kill()
                conn.rollback()
                return
            conn.rollback()
        time.sleep(0.1)
    raise AssertionError("no transaction with result rows in 60 commits")


def kill_after_commit(dsn: str, w: Worker) -> None:
    before = offsets(dsn)
    wait_until("a commit", lambda: offsets(dsn) != before, 60, [w])
    w.kill()


def kill_while_assigning(dsn: str, w: Worker) -> None:
    """Restart the worker, and kill it as soon as it logs its assignment (restoring)."""
    w.kill()
    seen = w.log_path.read_text().count("event=assigned")
    w.start()
    wait_until(
        "the assignment", lambda: w.log_path.read_text().count("event=assigned") > seen, 60, [w]
    )
    w.kill()


def test_kills_at_chosen_points_leave_each_window_written_once(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src = exactly_once_config(kafka_broker, tmp_path, postgres_dsn)
    producer = PacedProducer(kafka_broker, src, 800)  # until the kills are over
    producer.start()
    w = worker(tmp_path, "w", config)
    points: list[Callable[[str, Worker], None]] = [
        kill_inside_transaction,
        kill_after_commit,
        kill_while_assigning,
    ] * 2
    try:
        w.start()
        wait_until("first rows committed", lambda: len(offsets(postgres_dsn)) > 0, 90, [w])
        for kill in points:
            kill(postgres_dsn, w)
            w.start()
        producer.finish()
        finish(kafka_broker, src, postgres_dsn, producer.total, [w])
    finally:
        w.stop()
    log = w.log_path.read_text()
    assert log.count("event=partition-restored") >= 2 * PARTITIONS  # restarts restored state


def test_random_sigkills_of_two_workers_leave_each_window_written_once(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src = exactly_once_config(kafka_broker, tmp_path, postgres_dsn)
    producer = PacedProducer(kafka_broker, src, 1_000)  # until the kills are over
    workers = [worker(tmp_path, n, config) for n in ("a", "b")]
    rng = random.Random(105)
    try:
        for w in workers:
            w.start()
        producer.start()
        wait_until("first rows committed", lambda: len(offsets(postgres_dsn)) > 0, 90, workers)
        kills = 0
        while kills < 10:
            time.sleep(rng.uniform(0.2, 2.5))  # a random moment: the test
            victim = rng.choice(workers)
            victim.kill()  # every restart is a rebalance for the other one too
            kills += 1
            victim.start()
        producer.finish()
        finish(kafka_broker, src, postgres_dsn, producer.total, workers)
        assert all(metric(w, "streamherd_sink_up") == 1 for w in workers)
    finally:
        for w in workers:
            w.stop()


def test_a_frozen_worker_commits_nothing_after_its_partitions_moved(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src = exactly_once_config(kafka_broker, tmp_path, postgres_dsn)
    total = 16_000
    records = list(clicks(0, total))
    a, b = worker(tmp_path, "a", config), worker(tmp_path, "b", config)
    try:
        a.start()
        wait_until("a ready", lambda: a.get("/readyz")[0] == 200, 60, [a])
        b.start()
        kafka_broker.produce(src, records[: total // 2])
        wait_until("b ready", lambda: b.get("/readyz")[0] == 200, 60, [a, b])
        wait_until("a to commit", lambda: len(offsets(postgres_dsn)) > 0, 60, [a, b])
        a.signal(signal.SIGSTOP)  # frozen mid-stream, its rows queued for its next commit
        try:
            kafka_broker.produce(src, records[total // 2 :])

            def b_owns_everything() -> bool:
                owned = metric(b, "streamherd_assigned_partitions")
                return owned is not None and owned >= PARTITIONS

            wait_until("b to own every partition", b_owns_everything, 120, [b])
            finish(kafka_broker, src, postgres_dsn, total, [b])
        finally:
            a.signal(signal.SIGCONT)  # the zombie wakes up and tries to commit
        wait_until(
            "the zombie to notice",
            lambda: (
                "transaction-failed" in a.log_tail(200)
                or "partitions-lost" in a.log_tail(200)
                or not a.alive()
            ),
            90,
        )
        time.sleep(2)  # room for a commit it must not make
        assert_each_window_written_once(postgres_dsn, kafka_broker, src)
        assert_table_equals_reference(postgres_dsn, total, [b])
    finally:
        a.stop()
        b.stop()
