"""Switching ``delivery`` with a PostgreSQL sink, with real processes: a real broker, a real
PostgreSQL server and `streamherd-worker` subprocesses sharing one checkpoint directory.

Exactly-once keeps its offsets in the database (``streamherd_offsets``); at-least-once does
not write them, it commits the consumer group's. A pipeline switched exactly-once ->
at-least-once -> exactly-once used to resume at the database's offsets from before the
at-least-once run, with empty state: the windows open across the first switch were upserted
again with partial counts over the full ones. The rule that fixes it (an at-least-once
checkpoint wins over the database's older offsets) is workers/resuming.py, checked against
a model of every switch and kill in tests/unit/workers/test_worker_resume_model.py; this is
the same history against the real parts, with windows open across every switch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import clicks, flush_markers, reference, wait_until
from tests.integration.storage.test_postgres_exactly_once import (
    exactly_once_config,
    finish_flushed,
    offsets,
    worker,
)
from tests.integration.storage.test_postgres_pipeline import (
    BASE_END_TS,
    DSN_ENV,
    PARTITIONS,
    results,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

PHASE = 4_000  # records per phase: each phase ends inside open windows


def test_exactly_once_to_at_least_once_and_back_keeps_every_window_exact(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src = exactly_once_config(kafka_broker, tmp_path, postgres_dsn)
    group = config["source"]["kafka"]["consumerGroup"]
    at_least_once: dict[str, Any] = {**config, "delivery": "atLeastOnce"}

    def run(name: str, cfg: dict[str, Any], first: int, done: Any) -> None:
        kafka_broker.produce(src, list(clicks(first, PHASE)))
        w = worker(tmp_path, name, cfg)
        try:
            w.start()
            wait_until(f"{name} to commit every record", done, 120, [w])
        finally:
            w.stop()  # SIGTERM: a clean stop, as a rolling update makes

    def table_at_end() -> bool:
        return {p: o for (t, p), (o, _) in offsets(postgres_dsn).items() if t == src} == (
            kafka_broker.end_offsets(src)
        )

    def group_at_end() -> bool:
        return kafka_broker.committed(group, src) == kafka_broker.end_offsets(src)

    run("eos-1", config, 0, table_at_end)
    before = offsets(postgres_dsn)
    run("alo", at_least_once, PHASE, group_at_end)
    assert offsets(postgres_dsn) == before, "at-least-once wrote the offsets table"
    kafka_broker.produce(src, list(clicks(2 * PHASE, PHASE)))
    w = worker(tmp_path, "eos-2", config)
    try:
        w.start()
        # Every window equals the reference: none rewritten from partial state.
        finish_flushed(kafka_broker, src, postgres_dsn, 3 * PHASE, [w])
    finally:
        w.stop()
    log = w.log_path.read_text()
    assert "event=resuming-at-least-once-checkpoint" in log
    assert "event=checkpoint-does-not-match-commit" not in log


def test_the_sink_table_switched_and_back_writes_no_partial_window(
    kafka_broker: KafkaBroker, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly-once into table clicks, then clicks_b, then clicks again. Each table keeps its
    own offsets row; back on clicks, its row was from before the switch, and the old rule
    resumed there with empty state: the window open across the first switch, already
    emitted into clicks_b, came out again into clicks with a part of its records. The
    checkpoint of the run into clicks_b now wins (its authority was clicks_b): every row of
    either table is a whole window."""
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    config, src = exactly_once_config(kafka_broker, tmp_path, postgres_dsn)
    other: dict[str, Any] = copy.deepcopy(config)
    other["sink"]["postgres"]["table"] = "clicks_b"

    def at_end(table: str) -> Any:
        def check() -> bool:
            rows = {p: o for (t, p), (o, _) in offsets(postgres_dsn, table).items() if t == src}
            return rows == kafka_broker.end_offsets(src)

        return check

    for name, cfg, table, first in (
        ("into-a", config, "clicks", 0),
        ("into-b", other, "clicks_b", PHASE),
    ):
        kafka_broker.produce(src, list(clicks(first, PHASE)))
        w = worker(tmp_path, name, cfg)
        try:
            w.start()
            wait_until(f"{name} to commit every record", at_end(table), 120, [w])
        finally:
            w.stop()
    kafka_broker.produce(src, list(clicks(2 * PHASE, PHASE)))
    flush_markers(kafka_broker, src, PARTITIONS, BASE_END_TS(3 * PHASE))
    w = worker(tmp_path, "back-into-a", config)
    try:
        w.start()
        wait_until("back into clicks, every record committed", at_end("clicks"), 120, [w])
    finally:
        w.stop()
    expected = reference(clicks(0, 3 * PHASE))
    a, _ = results(postgres_dsn, "clicks")
    b, _ = results(postgres_dsn, "clicks_b")
    partial = [(k, got, expected.get(k)) for k, got in [*a.items(), *b.items()]
               if got != expected.get(k)]  # fmt: skip
    assert not partial, f"{len(partial)} rows that are not whole windows, e.g. {partial[:3]}"
    assert set(a) | set(b) == set(expected)
