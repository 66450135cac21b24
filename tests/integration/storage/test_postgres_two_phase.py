"""Exactly-once Kafka -> PostgreSQL with Kafka outputs besides, in two phases (decision 0155):
a real broker, a real PostgreSQL server and `streamherd-worker` subprocesses.

The input is keyed by user and the window counts per page, so every record goes through the
repartition topic; bad records go to a dead-letter topic. A checkpoint prepares the database's
transaction (results, offsets), commits Kafka's (repartition records, dead letters, changelog
records, the offsets with the checkpoint's generation) and then commits the prepared one; a
worker that dies in between leaves a prepared transaction that whoever takes its partitions
decides from Kafka's committed offsets. Each test ends with

- the results table equal to the reference computed here without the engine, every (page,
  window) row written exactly once (the audit trigger's count, not the upsert's result);
- the dead-letter topic (read_committed) holding each bad record exactly once;
- no prepared transaction and no side-table row left over.

Kill points: at random moments with two workers; between PREPARE and Kafka's commit and
between Kafka's commit and COMMIT PREPARED (the worker's fault-pause hook, STREAMHERD_FAULT_PAUSE,
holds it there and the test kills it); a worker frozen with SIGSTOP between the phases while
another takes its partitions; a worker whose producer the broker fenced between the phases
(it starts its engine again in-process); and, with the state in a changelog topic, every
worker killed and restarted with no volume.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import transactional_id
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import PacedProducer, Worker, wait_until
from tests.integration.engine.test_engine_repartition import flush, page_clicks, page_reference
from tests.integration.storage.pgserver import start_postgres, stop_postgres
from tests.integration.storage.test_postgres_exactly_once import (
    AUDIT,
    assert_each_window_written_once,
    offsets,
    worker,
)
from tests.integration.storage.test_postgres_pipeline import DSN_ENV, PARTITIONS, pg_config, results

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

Records = list[tuple[str, Any]]


def two_phase_config(
    broker: KafkaBroker, tmp: Path, dsn: str, *, changelog: bool = False
) -> tuple[dict[str, Any], str, str]:
    src = broker.create_topic(broker.unique_topic("pg2pc-in"), PARTITIONS)
    dlq = broker.create_topic(broker.unique_topic("pg2pc-dlq"), 1)
    config = pg_config(broker, src, dlq, tmp / "ck", batchSize=500)
    config["delivery"] = "exactlyOnce"
    config["checkpoint"]["intervalSeconds"] = 0.5
    config["processor"]["steps"][-1]["window"]["keyBy"] = "page"  # the input is keyed by user
    config["repartition"] = {"topic": f"{src}.repartition"}
    if changelog:
        config["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT)  # the table the sink would create, plus the write counter
    return config, src, dlq


def prepared(dsn: str) -> list[str]:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchall()
    return [str(r[0]) for r in rows]


def side_rows(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute("SELECT count(*) FROM streamherd_prepared").fetchone()
    assert row is not None
    return int(row[0])


def assert_pages(dsn: str, expected: dict[str, dict[str, int]], workers: list[Worker]) -> None:
    state: dict[str, Any] = {}

    def complete() -> bool:
        state["got"], state["rows"] = results(dsn)
        return set(expected) <= set(state["got"])

    wait_until("every (page, window) in the table", complete, 240, workers)
    got = state["got"]
    assert set(got) == set(expected), f"unexpected rows: {sorted(set(got) - set(expected))[:3]}"
    wrong = [
        (k, got[k], v)
        for k, v in expected.items()
        if (got[k]["clicks"], got[k]["bytes"]) != (v["clicks"], v["bytes"])
    ]
    assert not wrong, f"{len(wrong)} windows with wrong aggregates, e.g. {wrong[:3]}"


def verify(
    broker: KafkaBroker,
    dsn: str,
    src: str,
    dlq: str,
    records: Records,
    bad: int,
    workers: list[Worker],
) -> None:
    """The table, the write counts, the dead letters; then, every worker stopped, nothing
    left prepared."""
    flush(broker, src, records[-1][1]["ts"])
    assert_pages(dsn, page_reference(records), workers)
    wait_until(
        "the offsets of every source record committed",
        lambda: (
            {p: o for (t, p), (o, _) in offsets(dsn).items() if t == src} == broker.end_offsets(src)
        ),
        180,
        workers,
    )
    assert_each_window_written_once(dsn, broker, src)
    dead = broker.consume_all(dlq)  # read_committed
    by_origin = Counter(
        (
            dict(r.headers)["streamherd.source.partition"],
            dict(r.headers)["streamherd.source.offset"],
        )
        for r in dead
    )
    assert len(by_origin) == bad and max(by_origin.values(), default=1) == 1, (
        f"{len(dead)} dead letters for {bad} bad records: {by_origin.most_common(3)}"
    )
    for w in workers:
        w.stop()
    assert prepared(dsn) == [], "prepared transactions left behind"
    assert side_rows(dsn) == 0, "side-table rows left behind"


def test_random_sigkills_with_repartition_and_dead_letters_write_each_window_once(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    producer = PacedProducer(kafka_broker, src, 800, make=page_clicks, with_bad=True)
    workers = [worker(tmp_path, n, config) for n in ("a", "b")]
    rng = random.Random(155)
    try:
        for w in workers:
            w.start()
        producer.start()
        wait_until("first rows committed", lambda: len(offsets(postgres_dsn)) > 0, 120, workers)
        for _ in range(10):
            time.sleep(rng.uniform(0.1, 2.5))  # a random moment: the test
            victim = rng.choice(workers)
            victim.kill()  # every restart is a rebalance for the other one too
            victim.start()
        producer.finish()  # the records flowed through every kill
        verify(kafka_broker, postgres_dsn, src, dlq, producer.records, producer.bad, workers)
    finally:
        for w in workers:
            w.stop()


PAUSED = re.compile(r"event=fault-pause point=(\S+) generation=(\S+)")


def paused_generation(w: Worker, point: str, seen: int) -> str | None:
    found = [g for p, g in PAUSED.findall(w.log_path.read_text()) if p == point]
    return found[seen] if len(found) > seen else None


def recovered(workers: list[Worker], generation: str) -> str | None:
    """The decision a worker logged for the prepared transaction of `generation`."""
    pattern = re.compile(
        r"event=prepared-transaction-recovered gid=\S+:" + re.escape(generation)
        + r" decision=(\w+)"
    )  # fmt: skip
    for w in workers:
        found = pattern.search(w.log_path.read_text())
        if found:
            return found.group(1)
    return None


def test_kills_between_the_phases_are_decided_as_kafka_decided(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after PREPARE (Kafka's transaction open: it is aborted, so the prepared one
    rolls back) and after Kafka's commit (the prepared one commits): whoever takes the
    partitions decides, and the table stays exact."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    producer = PacedProducer(kafka_broker, src, 300, make=page_clicks, with_bad=True)
    a, b = worker(tmp_path, "a", config), worker(tmp_path, "b", config)
    plain = dict(a.env or {})
    expected = {"prepared": "rollback", "kafka-committed": "commit"}
    try:
        a.start()
        b.start()
        producer.start()
        wait_until("first rows committed", lambda: len(offsets(postgres_dsn)) > 0, 120, [a, b])
        for point in ["prepared", "kafka-committed"] * 2:
            seen = len([p for p, _ in PAUSED.findall(a.log_path.read_text()) if p == point])
            a.kill()
            a.env = {**plain, "STREAMHERD_FAULT_PAUSE": f"{point}:120"}
            a.start()
            wait_until(f"a paused at {point}",
                       lambda p=point, n=seen: paused_generation(a, p, n) is not None,
                       120, [a, b])  # fmt: skip
            generation = paused_generation(a, point, seen)
            assert generation is not None
            assert any(g.endswith(":" + generation) for g in prepared(postgres_dsn))
            a.kill()  # between the phases
            a.env = plain
            # b takes a's partitions and decides, or a's next incarnation does.
            if point == "kafka-committed":
                a.start()
            wait_until(f"the transaction left at {point} decided",
                       lambda g=generation: recovered([a, b], g) is not None, 120,
                       [b])  # fmt: skip
            assert recovered([a, b], generation) == expected[point]
            assert not any(g.endswith(":" + generation) for g in prepared(postgres_dsn))
            if not a.alive():
                a.start()
        producer.finish()  # the records flowed through every kill
        verify(kafka_broker, postgres_dsn, src, dlq, producer.records, producer.bad, [a, b])
    finally:
        a.stop()
        b.stop()


def test_a_producer_fenced_between_the_phases_starts_again_and_recovery_decides(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's producer fenced while its database transaction is prepared: the broker
    aborts Kafka's transaction (as when it outlived its timeout while the broker was away),
    and the commit fails fatally. The worker must not exit (it did: TransactionError): it
    starts its engine again in-process (decision 0194), the next engine's recovery rolls the
    prepared transaction back (Kafka's never committed), and the table stays exact.

    The fault-pause hook holds every checkpoint 4 s between PREPARE and Kafka's commit; the
    test is the newer producer of the worker's transactional id, fencing during the newest
    pause. A fence that comes too late for its pause (a loaded machine) lets that checkpoint
    commit and ends the next transaction instead: that round does not count, and the test
    fences again, until two fences landed between the phases."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    records = list(page_clicks(0, 9_000))
    w = worker(tmp_path, "a", config)
    w.env = {**(w.env or {}), "STREAMHERD_FAULT_PAUSE": "prepared:4"}
    monkeypatch.setenv("STREAMHERD_WORKER_ID", "a")  # as the worker's environment says
    txid = transactional_id(WorkerConfig.model_validate(config))
    producer = kafka_broker.producer()
    bad = 0

    def pauses() -> list[str]:
        return [g for p, g in PAUSED.findall(w.log_path.read_text()) if p == "prepared"]

    def restarts() -> int:
        return w.log_path.read_text().count("event=client-fatal")

    try:
        w.start()
        wait_until("a ready", lambda: w.get("/readyz")[0] == 200, 90, [w])
        landed: list[str] = []  # the generations fenced between the phases
        for attempt in range(8):
            if len(landed) == 2:
                break
            if attempt < 2:  # records to work on; the restarts reprocess them too
                chunk = records[attempt * 3_000 : (attempt + 1) * 3_000]
                kafka_broker.produce(src, [*chunk, ("bad", b"not json %d" % attempt)],
                                     producer=producer)  # fmt: skip
                bad += 1
            seen, before = len(pauses()), restarts()
            wait_until(f"a paused at prepared (attempt {attempt})",
                       lambda n=seen: len(pauses()) > n, 120, [w])  # fmt: skip
            generation = pauses()[-1]  # the newest pause: the one most likely still held
            newer = Producer({"bootstrap.servers": kafka_broker.bootstrap,
                              "transactional.id": txid})  # fmt: skip
            newer.init_transactions(30)  # the broker aborts the worker's open transaction
            wait_until(f"the worker to start again after fence {attempt}",
                       lambda b=before: restarts() > b and w.get("/readyz")[0] == 200, 120,
                       [w])  # fmt: skip
            # Fenced in its pause: recovery decides it; too late: the worker committed it.
            wait_until(f"the transaction of pause {generation} decided",
                       lambda g=generation: recovered([w], g) is not None
                       or not any(x.endswith(":" + g) for x in prepared(postgres_dsn)),
                       120, [w])  # fmt: skip
            if recovered([w], generation) is not None:
                landed.append(generation)
        assert len(landed) == 2, f"only {len(landed)} fences of 8 landed between the phases"
        # Kafka never committed a fenced transaction: every recovery here rolls back.
        decisions = re.findall(r"event=prepared-transaction-recovered \S+ decision=(\w+)",
                               w.log_path.read_text())  # fmt: skip
        assert decisions and set(decisions) == {"rollback"}, decisions
        kafka_broker.produce(src, records[6_000:], producer=producer)
        assert w.alive(), w.log_tail()
        verify(kafka_broker, postgres_dsn, src, dlq, records, bad, [w])
    finally:
        w.stop()
    log = w.log_path.read_text()
    assert "event=failed" not in log and "TransactionError" not in log, log[-3000:]


def test_a_worker_frozen_between_the_phases_commits_nothing_after_its_partitions_moved(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP while prepared: the other worker takes its partitions and rolls the prepared
    transaction back (Kafka's never committed). After SIGCONT the zombie's Kafka commit is
    refused (the group moved on) and nothing of its checkpoint lands anywhere."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    records = list(page_clicks(0, 12_000))
    a, b = worker(tmp_path, "a", config), worker(tmp_path, "b", config)
    a.env = {**(a.env or {}), "STREAMHERD_FAULT_PAUSE": "prepared:15"}
    try:
        a.start()
        wait_until("a ready", lambda: a.get("/readyz")[0] == 200, 90, [a])
        b.start()
        wait_until("b ready", lambda: b.get("/readyz")[0] == 200, 90, [a, b])

        def both_own_partitions() -> bool:
            return all(w.value("streamherd_assigned_partitions") > 0 for w in (a, b))

        wait_until("both to own partitions", both_own_partitions, 90, [a, b])
        kafka_broker.produce(src, records[: len(records) // 2])
        wait_until("a paused at prepared",
                   lambda: paused_generation(a, "prepared", 0) is not None, 120,
                   [a, b])  # fmt: skip
        generation = paused_generation(a, "prepared", 0)
        assert generation is not None
        a.signal(signal.SIGSTOP)
        try:
            kafka_broker.produce(src, records[len(records) // 2 :])
            kafka_broker.produce(src, [("bad", b"not json")])
            wait_until("b to decide a's prepared transaction",
                       lambda: recovered([b], generation) is not None, 120, [b])  # fmt: skip
            assert recovered([b], generation) == "rollback"
            flush(kafka_broker, src, records[-1][1]["ts"])
            assert_pages(postgres_dsn, page_reference(records), [b])
        finally:
            a.signal(signal.SIGCONT)  # the zombie wakes up between its phases
        wait_until(
            "the zombie to notice",
            lambda: "transaction-failed" in a.log_tail(300) or not a.alive(),
            120,
        )
        time.sleep(3)  # room for a commit it must not make
        a.stop()  # its graceful stop must not write anything either
        b.stop()
        assert_pages(postgres_dsn, page_reference(records), [])
        assert_each_window_written_once(postgres_dsn, kafka_broker, src)
        dead = kafka_broker.consume_all(dlq)
        assert len(dead) == 1, f"{len(dead)} dead letters for 1 bad record"
        assert prepared(postgres_dsn) == [] and side_rows(postgres_dsn) == 0
    finally:
        if a.alive():
            a.signal(signal.SIGCONT)
        a.stop()
        b.stop()


def assignments(w: Worker) -> int:
    return w.log_path.read_text().count("event=assigned")


def test_changelog_state_survives_every_worker_killed_with_no_volume(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state in a changelog topic (its records in Kafka's transaction): every worker is
    SIGKILLed at random moments and restarted with an empty checkpoint directory."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn, changelog=True)
    producer = PacedProducer(kafka_broker, src, 800, make=page_clicks, with_bad=True)
    workers = [worker(tmp_path, n, config) for n in ("a", "b")]
    rng = random.Random(60)
    try:
        for w in workers:
            w.start()
        producer.start()
        wait_until("first rows committed", lambda: len(offsets(postgres_dsn)) > 0, 120, workers)
        for _ in range(4):
            time.sleep(rng.uniform(0.5, 3.0))  # a random moment: the test
            for w in workers:
                w.kill()
            shutil.rmtree(tmp_path / "ck", ignore_errors=True)  # no volume
            before = {w.name: assignments(w) for w in workers}
            for w in workers:
                w.start()
            # Killed next only once running again: each round kills workers that restored.
            wait_until("the restarted workers assigned",
                       lambda b=before: all(assignments(w) > b[w.name] for w in workers),
                       120, workers)  # fmt: skip
        producer.finish()  # the records flowed through every kill
        verify(kafka_broker, postgres_dsn, src, dlq, producer.records, producer.bad, workers)
        restored = sum(w.log_path.read_text().count("event=changelog-restored") for w in workers)
        assert restored >= 4, "the restarts did not restore from the changelog"
    finally:
        for w in workers:
            w.stop()


def test_a_server_without_prepared_transactions_stops_the_worker_naming_the_setting(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_postgres(max_prepared_transactions="0")
    try:
        dsn = server.create_database("t_no_2pc")
        monkeypatch.setenv(DSN_ENV, dsn)
        config, _, _ = two_phase_config(kafka_broker, tmp_path, dsn)
        w = worker(tmp_path, "w", config).start()
        assert w.wait(120) != 0
        log = w.log_path.read_text()
        assert "TwoPhaseUnavailableError" in log and "max_prepared_transactions is 0" in log
        assert "event=assigned" not in log  # refused before it joined the group
    finally:
        stop_postgres(server)
