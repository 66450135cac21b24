"""`streamherd recover`: the prepared transactions of a stopped exactly-once pipeline into
PostgreSQL, decided as a worker would decide them (a real broker, a real PostgreSQL server,
a `streamherd-worker` subprocess and the CLI as a user runs it).

The pipeline's only worker is held between the two phases (STREAMHERD_FAULT_PAUSE) and
SIGKILLed, and not started again: nobody is assigned its partitions, so what it prepared
stays prepared, holding its offsets rows locked. `recover` must refuse while the group has a
member, then decide each transaction as Kafka decided it (after PREPARE: Kafka's transaction
never committed, roll back; after Kafka's commit: commit), leave no prepared transaction and
no side row, and leave the table such that the pipeline, started again, ends with every
window exactly once (the audit trigger's count).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from streamherd.workers.config import KafkaSourceConfig
from streamherd.workers.preparedrecovery import group_members
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import wait_until
from tests.integration.engine.test_engine_repartition import page_clicks
from tests.integration.storage.test_postgres_exactly_once import offsets, worker
from tests.integration.storage.test_postgres_pipeline import DSN_ENV
from tests.integration.storage.test_postgres_two_phase import (
    PAUSED,
    paused_generation,
    prepared,
    side_rows,
    two_phase_config,
    verify,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


def recover(config_path: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamherd", "recover", "--worker-config", str(config_path)],
        env={"PATH": "/usr/bin:/bin", DSN_ENV: dsn},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_recover_decides_what_a_stopped_pipelines_dead_worker_left_prepared(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    kafka = KafkaSourceConfig.model_validate(config["source"]["kafka"])
    records = list(page_clicks(0, 12_000))
    bad = 0
    a = worker(tmp_path, "a", config)
    plain = dict(a.env or {})
    expected = {"prepared": "rolled back", "kafka-committed": "committed"}
    try:
        # Checkpoints committed first, on every partition (4 source, 4 repartition): what
        # Kafka then commits or not is read against them (a partition with no committed
        # offset at all proves nothing to `recover`, see the next test).
        kafka_broker.produce(src, records[:4_000])
        a.start()
        wait_until("every partition's offsets committed",
                   lambda: len(offsets(postgres_dsn)) == 8, 120, [a])  # fmt: skip
        a.stop()
        for n, point in enumerate(["prepared", "kafka-committed"], start=1):
            kafka_broker.produce(src, records[n * 4_000 : (n + 1) * 4_000])
            kafka_broker.produce(src, [("bad", b"not json %d" % n)])
            bad += 1
            seen = len([p for p, _ in PAUSED.findall(a.log_path.read_text()) if p == point])
            a.env = {**plain, "STREAMHERD_FAULT_PAUSE": f"{point}:120"}
            a.start()
            wait_until(f"a paused at {point}",
                       lambda p=point, k=seen: paused_generation(a, p, k) is not None,
                       120, [a])  # fmt: skip
            generation = paused_generation(a, point, seen)
            assert generation is not None
            [gid] = [g for g in prepared(postgres_dsn) if g.endswith(":" + generation)]

            refused = recover(a.config_path, postgres_dsn)
            assert refused.returncode == 1, refused
            assert "has 1 member(s)" in refused.stderr and "stop the pipeline" in refused.stderr
            assert gid in prepared(postgres_dsn), "decided while its writer was alive"

            a.kill()  # between the phases, and not started again: the pipeline is stopped
            wait_until("the dead worker's membership expired",
                       lambda: group_members(kafka) == 0, 60, [])  # fmt: skip
            done = recover(a.config_path, postgres_dsn)
            assert done.returncode == 0, done
            assert f"{expected[point]}: {gid}\n" in done.stdout
            assert "1 prepared transaction(s) decided, 0 left alone" in done.stdout
            assert prepared(postgres_dsn) == []
            assert side_rows(postgres_dsn) == 0

            nothing = recover(a.config_path, postgres_dsn)  # a second run finds nothing
            assert nothing.returncode == 0 and "0 prepared transaction(s) decided" in nothing.stdout

        a.env = plain
        a.start()  # the pipeline started again: exact from where its offsets say
        verify(kafka_broker, postgres_dsn, src, dlq, records, bad, [a])
    finally:
        a.stop()


def test_recover_refuses_when_the_groups_offsets_are_gone(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline stopped long enough for Kafka to expire its group's offsets (or the
    group deleted): the database holds committed offsets that Kafka no longer has, so
    whether Kafka committed the transaction left prepared cannot be read. Rolling it back
    (what "nothing committed" means to a worker) could undo a committed checkpoint:
    `recover` refuses, and the transaction stays prepared."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, _ = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    kafka = KafkaSourceConfig.model_validate(config["source"]["kafka"])
    kafka_broker.produce(src, list(page_clicks(0, 6_000)))
    a = worker(tmp_path, "a", config)
    a.env = {**(a.env or {}), "STREAMHERD_FAULT_PAUSE": "kafka-committed:120"}
    gid = ""
    try:
        a.start()
        wait_until("a paused after Kafka's commit",
                   lambda: paused_generation(a, "kafka-committed", 0) is not None,
                   120, [a])  # fmt: skip
        generation = paused_generation(a, "kafka-committed", 0)
        [gid] = [g for g in prepared(postgres_dsn) if g.endswith(f":{generation}")]
        a.kill()
        wait_until("the dead worker's membership expired",
                   lambda: group_members(kafka) == 0, 60, [])  # fmt: skip
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        [deleted] = admin.delete_consumer_groups([kafka.consumer_group]).values()
        deleted.result(30)  # as offsets.retention.minutes would, a week later

        refused = recover(a.config_path, postgres_dsn)
        assert refused.returncode == 1, refused
        assert "EvidenceMissingError" in refused.stderr
        assert "offsets expired or were deleted" in refused.stderr
        assert gid in prepared(postgres_dsn), "decided without evidence"
    finally:
        a.stop()
        if gid and gid in prepared(postgres_dsn):
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute(f"ROLLBACK PREPARED '{gid}'")  # the test's own clean-up


def test_recover_pointed_at_the_wrong_database_creates_nothing(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped DSN names a database where no worker of the pipeline ever wrote: the
    command says so, exits 2 (unusable as configured) and leaves that database as it was
    (it created the sink's side tables there before)."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, _, _ = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    wrong = f"wrong_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{wrong}"')
    wrong_dsn = make_conninfo(postgres_dsn, dbname=wrong)
    config_path = tmp_path / "recover-config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    refused = recover(config_path, wrong_dsn)

    assert refused.returncode == 2, refused
    assert f"database '{wrong}'" in refused.stderr
    for table in ("streamherd_offsets", "streamherd_prepared", "streamherd_writers"):
        assert table in refused.stderr
    assert "Nothing was decided or created" in refused.stderr
    with psycopg.connect(wrong_dsn) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        ).fetchall()
    assert tables == []
