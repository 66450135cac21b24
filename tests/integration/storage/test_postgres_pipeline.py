"""Kafka -> engine -> PostgreSQL with real processes: a real broker, a real PostgreSQL
server and `streamherd-worker` subprocesses.

Each test ends with the results table compared to a reference computed in the test (plain
arithmetic over the produced records, tests/integration/engine/enginekit.py): every window
present once (the primary key would refuse a duplicate; the count is checked too) with
exactly the reference aggregates, however the run was disturbed:
(a) an undisturbed run; (b) the worker SIGKILLed at random moments while it writes, and
restarted; (c) the PostgreSQL server stopped (immediate: like a crash) and started again
mid-run, during which the worker must pause, show the outage and commit no offset.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    PacedProducer,
    Worker,
    clicks,
    flush_markers,
    iso,
    pipeline_config,
    reference,
    wait_until,
)
from tests.integration.storage.pgserver import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

DSN_ENV = "STREAMHERD_TEST_SINK_DSN"
PARTITIONS = 4


def pg_config(broker: KafkaBroker, src: str, dlq: str, checkpoints: Path, **runtime: Any) -> Any:
    cfg = pipeline_config(
        broker,
        source=src,
        sink="unused",
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=checkpoints,
        lateness="1s",  # event time only grows per partition: windows close as records flow
        **runtime,
    )
    # What the operator renders for sink.postgres {table: clicks, createTable: true} with
    # the enginekit window (count as clicks, sum of bytes as bytes).
    cfg["sink"] = {
        "postgres": {
            "dsnEnv": DSN_ENV,
            "table": "clicks",
            "columns": [
                {"name": "key", "type": "text"},
                {"name": "window_start", "type": "timestamptz"},
                {"name": "window_end", "type": "timestamptz"},
                {"name": "clicks", "type": "bigint"},
                {"name": "bytes", "type": "double precision"},
            ],
            "keyColumns": ["key", "window_start", "window_end"],
            "createTable": True,
            "batchRows": 100,  # many small transactions: kills land inside writes
        }
    }
    return cfg


def results(dsn: str, table: str = "clicks") -> tuple[dict[str, dict[str, Any]], int]:
    """The table as {"<key>|<window start>": {clicks, bytes}} and its row count."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            rows = conn.execute(
                sql.SQL("SELECT key, window_start, window_end, clicks, bytes FROM {}").format(
                    sql.Identifier(table)
                )
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}, 0
    out: dict[str, dict[str, Any]] = {}
    for key, start, end, n, total in rows:
        assert isinstance(start, datetime)
        assert (end - start).total_seconds() == 10
        if key == "zz-flush":
            continue
        out[f"{key}|{iso(round(start.timestamp() * 1000))}"] = {"clicks": n, "bytes": total}
    return out, len(rows)


def assert_table_equals_reference(dsn: str, total: int, workers: list[Worker]) -> None:
    expected = reference(clicks(0, total))
    state: dict[str, Any] = {}

    def complete() -> bool:
        state["got"], state["rows"] = results(dsn)
        return set(expected) <= set(state["got"])

    wait_until("every window in the table", complete, 180, workers)
    got = state["got"]
    assert state["rows"] == len(got) == len(expected), "duplicate or unexpected rows"
    wrong = [
        (k, got[k], v)
        for k, v in expected.items()
        if (got[k]["clicks"], got[k]["bytes"]) != (v["clicks"], v["bytes"])
    ]
    assert not wrong, f"{len(wrong)} windows with wrong aggregates, e.g. {wrong[:3]}"


def topics(broker: KafkaBroker) -> tuple[str, str]:
    src = broker.create_topic(broker.unique_topic("pg-in"), PARTITIONS)
    dlq = broker.create_topic(broker.unique_topic("pg-dlq"), 1)
    return src, dlq


def metric(worker: Worker, name: str) -> float | None:
    for sample, value in worker.metrics().items():
        if sample.split("{", 1)[0] == name:
            return value
    return None


def checkpointed_since(worker: Worker, since: float) -> bool:
    """The worker's last successful checkpoint interval (everything it read made durable)
    came after ``since`` (Unix time), by its checkpoint age: the loop goes on. (Its
    streamherd_checkpoints_total counts checkpoints written only, and stays put once every
    record is checkpointed.) The age is measured at the scrape, after ``asked``: the last
    interval was at or after ``asked - age``."""
    asked = time.time()
    age = metric(worker, "streamherd_checkpoint_age_seconds")
    return age is not None and asked - age > since


def test_results_table_equals_the_reference(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    src, dlq = topics(kafka_broker)
    total = 20_000
    records = list(clicks(0, total))
    kafka_broker.produce(src, records)
    flush_markers(kafka_broker, src, PARTITIONS, records[-1][1]["ts"])
    worker = Worker.create(tmp_path, "w", pg_config(kafka_broker, src, dlq, tmp_path / "ck"))
    worker.start()
    try:
        assert_table_equals_reference(postgres_dsn, total, [worker])
        assert metric(worker, "streamherd_sink_up") == 1
        written = metric(worker, "streamherd_sink_rows_written_total")
        assert written is not None and written >= len(reference(records))
        assert kafka_broker.consume_all(dlq) == []
    finally:
        worker.stop()


@pytest.mark.slow
def test_sigkill_during_writes_then_restart_leaves_the_reference(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    src, dlq = topics(kafka_broker)
    config = pg_config(kafka_broker, src, dlq, tmp_path / "ck", batchSize=500)
    config["checkpoint"]["intervalSeconds"] = 0.5
    producer = PacedProducer(kafka_broker, src, 800)  # until the kills are over
    producer.start()
    worker = Worker.create(tmp_path, "w", config).start()
    rng = random.Random(6)
    try:
        for _ in range(4):
            wait_until("the worker to be ready", lambda: worker.get("/readyz")[0] == 200, 60)
            # Once this process is writing rows (windows close every ~5 s while the producer
            # runs), kill it at a random moment inside that stretch of writes.
            wait_until(
                "rows written by this process",
                lambda: (metric(worker, "streamherd_sink_rows_written_total") or 0) > 0,
                60,
                [worker],
            )
            time.sleep(rng.uniform(0.0, 2.0))  # a random moment: the test
            worker.kill()
            worker.start()
        producer.finish()
        flush_markers(kafka_broker, src, PARTITIONS, BASE_END_TS(producer.total))
        assert_table_equals_reference(postgres_dsn, producer.total, [worker])
    finally:
        worker.stop()
    assert worker.log_path.read_text().count("event=partition-restored") >= 3


def BASE_END_TS(total: int) -> int:
    return int(next(iter(clicks(total - 1, 1)))[1]["ts"])


@pytest.mark.slow
def test_postgres_stopped_and_restarted_mid_run_loses_nothing(
    kafka_broker: KafkaBroker,
    postgres_server: PostgresServer,
    postgres_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    src, dlq = topics(kafka_broker)
    config = pg_config(kafka_broker, src, dlq, tmp_path / "ck", batchSize=500)
    config["checkpoint"]["intervalSeconds"] = 0.5
    group = config["source"]["kafka"]["consumerGroup"]
    producer = PacedProducer(kafka_broker, src, 1_000)  # until the database is back
    producer.start()
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until("first rows", lambda: results(postgres_dsn)[1] > 0, 60, [worker])
        postgres_server.stop("immediate")
        try:
            # The outage shows: sink down, results pending, consumption paused, not ready.
            wait_until(
                "the worker to see the outage with results pending",
                lambda: (
                    metric(worker, "streamherd_sink_up") == 0
                    and (metric(worker, "streamherd_sink_pending_records") or 0) > 0
                ),
                60,
                [worker],
            )
            wait_until(
                "backpressure", lambda: metric(worker, "streamherd_paused") == 1, 30, [worker]
            )
            assert worker.get("/readyz")[0] == 503
            assert (metric(worker, "streamherd_sink_errors_total") or 0) >= 1
            # No checkpoint, so no offset commit, may move past unconfirmed results.
            committed = kafka_broker.committed(group, src)
            failed = worker.value("streamherd_sink_errors_total")
            # The sink retried its write twice more meanwhile (checkpoints are attempted every
            # 0.5 s): not one of those attempts may have committed an offset.
            wait_until(
                "two more failed writes of the sink",
                lambda: worker.value("streamherd_sink_errors_total") >= failed + 2,
                60,
                [worker],
            )
            assert kafka_broker.committed(group, src) == committed
            assert worker.alive()
        finally:
            postgres_server.start()
        wait_until("the sink to recover", lambda: metric(worker, "streamherd_sink_up") == 1, 60)
        producer.finish()
        flush_markers(kafka_broker, src, PARTITIONS, BASE_END_TS(producer.total))
        assert_table_equals_reference(postgres_dsn, producer.total, [worker])
        assert metric(worker, "streamherd_paused") == 0
    finally:
        worker.stop()


#: A key no row of any table an upsert can target holds: 1,600 characters of three UTF-8
#: bytes each (4,800 bytes) that compression cannot shrink below a btree entry's 2,704.
UNINDEXABLE = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1_600))


@pytest.mark.parametrize(
    ("user", "said", "written"),
    [
        ("a\u0000b", b"NUL", b"a\\u0000b"),
        (None, b"is null", b'"key":null'),
        (UNINDEXABLE, b"unique index entry holds at most 2704", UNINDEXABLE[:50].encode()),
    ],
    ids=["nul", "null-key", "unindexable-key"],
)
def test_a_result_postgres_can_never_store_is_dead_lettered_and_the_rest_goes_on(
    kafka_broker: KafkaBroker,
    postgres_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    user: str | None,
    said: bytes,
    written: bytes,
) -> None:
    """A key holding the NUL character is valid JSON and folds like any other, but no text
    or JSON column can store it: the sink used to retry its window's row forever (no
    checkpoint again: one record stopped the pipeline). So with a null key (the primary
    key refuses it) and a key no btree index entry holds (a helper's finding, session 25).
    Now that result goes to the dead-letter topic with reason sink, and every other window
    reaches the table."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    src, dlq = topics(kafka_broker)
    total = 2_000
    records = list(clicks(0, total))
    hostile = ("nul", {"id": -2, "user": user, "bytes": 5, "ts": records[0][1]["ts"]})
    kafka_broker.produce(src, [*records[:1000], hostile, *records[1000:]])
    flush_markers(kafka_broker, src, PARTITIONS, records[-1][1]["ts"])
    worker = Worker.create(tmp_path, "w", pg_config(kafka_broker, src, dlq, tmp_path / "ck"))
    worker.start()
    try:
        assert_table_equals_reference(postgres_dsn, total, [worker])
        [letter] = kafka_broker.consume_all(dlq, min_records=1, timeout=60)
        named = dict(letter.headers)
        assert named["streamherd.error.reason"] == b"sink"
        assert said in (named["streamherd.error.message"] or b"")
        assert written in (letter.value or b"")  # the result, whole, as JSON
        assert metric(worker, "streamherd_results_dead_lettered_total") == 1
        assert metric(worker, "streamherd_sink_up") == 1
        since = time.time()
        wait_until("checkpoints go on", lambda: checkpointed_since(worker, since), 60, [worker])
    finally:
        worker.stop()
