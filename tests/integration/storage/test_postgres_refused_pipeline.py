"""A result the PostgreSQL table refuses goes to the dead-letter topic and the pipeline goes
on (decision 0200): a real broker, a real PostgreSQL server and `streamherd-worker`
subprocesses. Before, such a row (a CHECK, a trigger's RAISE, a key too large for the
index once PostgreSQL's own compression gave up) was retried for ever: no checkpoint
again, the partition stopped for good, in both delivery modes.

- at-least-once: every other window reaches the table, the refused one is one dead letter
  with the server's error, checkpoints go on;
- exactly-once with Kafka outputs (two phases, decision 0155), with workers killed at random:
  the refused windows' dead letters are in Kafka's transaction, which decides the database's,
  so each is in the dead-letter topic exactly once (read_committed) and every other window is
  in the table exactly once.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from streamherd.workers.sinks_postgres_offsets import ISOLATION_BUDGET_ENV
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    PacedProducer,
    Worker,
    clicks,
    flush_markers,
    wait_until,
)
from tests.integration.engine.test_engine_repartition import flush, page_clicks, page_reference
from tests.integration.storage.test_postgres_exactly_once import (
    assert_each_window_written_once,
    offsets,
    worker,
)
from tests.integration.storage.test_postgres_pipeline import (
    DSN_ENV,
    PARTITIONS,
    assert_table_equals_reference,
    checkpointed_since,
    metric,
    pg_config,
    results,
    topics,
)
from tests.integration.storage.test_postgres_two_phase import prepared, side_rows, two_phase_config

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

#: Random hex: zlib halves it, under the sink's estimate of the btree limit; PostgreSQL's
#: pglz cannot shrink it by a quarter and refuses the entry ("index row size ... exceeds").
UNCOMPRESSIBLE = random.Random(17).randbytes(1500).hex()

CHECKED = """
CREATE TABLE clicks (key text CHECK (key <> 'refused-user'), window_start timestamptz,
                     window_end timestamptz, clicks bigint, bytes double precision,
                     PRIMARY KEY (key, window_start, window_end));
"""


@pytest.mark.parametrize(
    ("user", "table", "error"),
    [
        ("refused-user", CHECKED, b"CheckViolation"),
        (UNCOMPRESSIBLE, "", b"ProgramLimitExceeded"),
    ],
    ids=["check", "index-entry-too-large"],
)
def test_a_row_the_table_refuses_is_dead_lettered_and_the_rest_goes_on(
    kafka_broker: KafkaBroker,
    postgres_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    user: str,
    table: str,
    error: bytes,
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    if table:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(table)
    src, dlq = topics(kafka_broker)
    total = 2_000
    records = list(clicks(0, total))
    hostile = ("hostile", {"id": -2, "user": user, "bytes": 5, "ts": records[0][1]["ts"]})
    kafka_broker.produce(src, [*records[:1000], hostile, *records[1000:]])
    flush_markers(kafka_broker, src, PARTITIONS, records[-1][1]["ts"])
    worker = Worker.create(tmp_path, "w", pg_config(kafka_broker, src, dlq, tmp_path / "ck"))
    worker.start()
    try:
        assert_table_equals_reference(postgres_dsn, total, [worker])
        [letter] = kafka_broker.consume_all(dlq, min_records=1, timeout=60)
        named = dict(letter.headers)
        assert named["streamherd.error.reason"] == b"sink"
        assert named["streamherd.error"] == error, named
        assert json.loads(letter.value or b"")["key"] == user  # the result, whole
        assert metric(worker, "streamherd_results_dead_lettered_total") == 1
        assert metric(worker, "streamherd_sink_up") == 1
        since = time.time()
        wait_until("checkpoints go on", lambda: checkpointed_since(worker, since), 60, [worker])
    finally:
        worker.stop()


REFUSED_PAGE = "/p3"


@pytest.mark.slow
@pytest.mark.parametrize("budget", [None, "0"], ids=["budget-default", "budget-0"])
def test_exactly_once_dead_letters_each_refused_row_once_through_kills(
    kafka_broker: KafkaBroker,
    postgres_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    budget: str | None,
) -> None:
    """``budget-0``: every try that meets a refused row stops at its first find, and the
    engine begins Kafka's transaction again (the records since the checkpoint read again):
    the tries go on from what the earlier ones found, through the kills, to the same end."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src, dlq = two_phase_config(kafka_broker, tmp_path, postgres_dsn)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE clicks ADD CHECK (key <> '{REFUSED_PAGE}')")
    producer = PacedProducer(kafka_broker, src, 800, make=page_clicks, with_bad=True)
    workers = [worker(tmp_path, n, config) for n in ("a", "b")]
    if budget is not None:
        for w in workers:
            w.env = {**(w.env or {}), ISOLATION_BUDGET_ENV: budget}
    rng = random.Random(200)
    try:
        for w in workers:
            w.start()
        producer.start()
        wait_until("first rows committed", lambda: len(offsets(postgres_dsn)) > 0, 120, workers)
        for _ in range(6):
            time.sleep(rng.uniform(0.2, 2.5))  # a random moment: the test
            victim = rng.choice(workers)
            victim.kill()
            victim.start()
        producer.finish()
        records = producer.records
        flush(kafka_broker, src, records[-1][1]["ts"])
        expected = page_reference(records)
        refused = {k for k in expected if k.startswith(f"{REFUSED_PAGE}|")}
        kept = {k: v for k, v in expected.items() if k not in refused}
        assert refused, "the refused page has windows"

        def complete() -> bool:
            return set(kept) <= set(results(postgres_dsn)[0])

        wait_until("every other window in the table", complete, 240, workers)
        wait_until(
            "the offsets of every source record committed",
            lambda: (
                {p: o for (t, p), (o, _) in offsets(postgres_dsn).items() if t == src}
                == kafka_broker.end_offsets(src)
            ),
            180,
            workers,
        )
        got = results(postgres_dsn)[0]
        assert set(got) == set(kept)
        wrong = [k for k, v in kept.items() if (got[k]["clicks"], got[k]["bytes"]) != (
            v["clicks"], v["bytes"])]  # fmt: skip
        assert not wrong, f"{len(wrong)} windows with wrong aggregates, e.g. {wrong[:3]}"
        assert_each_window_written_once(postgres_dsn, kafka_broker, src)
        dead = kafka_broker.consume_all(dlq)  # read_committed
        sink_letters = Counter(
            f"{v['key']}|{v['window_start']}"
            for r in dead
            if dict(r.headers)["streamherd.error.reason"] == b"sink"
            for v in [json.loads(r.value or b"")]
        )
        assert set(sink_letters) == refused, sorted(set(sink_letters) ^ refused)[:3]
        assert max(sink_letters.values()) == 1, sink_letters.most_common(3)
        others = [r for r in dead if dict(r.headers)["streamherd.error.reason"] != b"sink"]
        origins = Counter(
            (h["streamherd.source.partition"], h["streamherd.source.offset"])
            for h in (dict(r.headers) for r in others)
        )
        assert len(origins) == producer.bad and max(origins.values(), default=1) == 1
        for w in workers:
            w.stop()
        assert prepared(postgres_dsn) == [] and side_rows(postgres_dsn) == 0
    finally:
        for w in workers:
            w.stop()
