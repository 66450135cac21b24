"""Helper-115: the worker's counters after an exactly-once abort, on the real broker.

An aborted transaction rewinds every partition to its committed checkpoint; the records
read since are read again, and the windows they closed are emitted again into the next
transaction. What a reader of the sink (read_committed) sees is each window once. The
counters a user watches should say the same: `streamherd_windows_emitted_total` ("Window
results emitted") and `streamherd_records_out_total` ("Records written to the sink")
equal the results the sink holds; `streamherd_records_in_total` equals the records in the
topic (docs/engine.md: "Each record read is counted once").

The abort is the engine's own failure path: its first commit is sent with the group
metadata of the generation before (ILLEGAL_GENERATION, as for a worker the group left
behind), exactly as in tests/integration/engine/test_engine_abort_replay.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from streamherd.workers.engine import Engine
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import pipeline_config
from tests.integration.engine.test_engine_abort_replay import of_the_generation_before
from tests.integration.engine.test_engine_abort_rewind import (
    Scripted,
    commit_every_tick,
    emitted_and_committed,
)
from tests.integration.engine.test_engine_lifecycle import (
    KEEP,
    PARTITIONS,
    flush,
    produce_timed,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


def sample(engine: Engine, name: str) -> float:
    """The sum of a counter's samples over its labels."""
    total = 0.0
    for family in engine.metrics.registry.collect():
        for s in family.samples:
            if s.name == name:
                total += s.value
    return total


def test_counters_after_an_abort_equal_what_the_sink_holds(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = kafka_broker
    monkeypatch.setenv("STREAMHERD_WORKER_ID", "abort-counters")
    src = broker.create_topic(broker.unique_topic("abort-counters"), PARTITIONS, config=KEEP)
    sink = broker.create_topic(broker.unique_topic("abort-counters-out"), PARTITIONS)
    config = pipeline_config(broker, source=src, sink=sink, dlq=None, group=f"g-{src}",
                             checkpoints=tmp_path / "ck", lateness="0s")  # fmt: skip
    config["delivery"] = "exactlyOnce"
    config["checkpoint"]["intervalSeconds"] = 120  # the test decides when commits are
    sent = produce_timed(broker, src, 0, 3000)  # 30 s of event time: 10 s windows close
    seen: dict[str, Any] = {}

    def refuse_the_first_commit(engine: Engine) -> bool:
        if engine.counters.records_in < len(sent):
            return False
        source = engine.source
        assert source is not None
        seen["emitted before"] = engine.counters.windows_emitted  # into the open transaction
        stale = of_the_generation_before(source.group_metadata())
        with mock.patch.object(source, "group_metadata", return_value=stale):
            seen["committed"] = engine._commit_transaction("the test: refused", 30)
        return True

    with Scripted(config, [refuse_the_first_commit, commit_every_tick]) as run:
        run.wait("every record read, then the first commit refused", lambda: run.done == 1)
        assert seen["emitted before"] > 0, "the aborted transaction held no window"
        assert seen["committed"] is False
        flush(broker, src, sent[-1].rec["ts"])
        emitted_and_committed(run, sent[-1].rec["ts"] + 86_400_000)
        engine = run.engine
        summary = (engine.counters.records_in, engine.counters.windows_emitted)
        counters = {
            name: sample(engine, name)
            for name in (
                "streamherd_records_in_total",
                "streamherd_records_out_total",
                "streamherd_windows_emitted_total",
                "streamherd_records_contributing_total",
            )
        }
    results = broker.consume_all(sink, timeout=60)  # read_committed: each window once
    in_topic = len(sent) + PARTITIONS  # the flush records too
    truth = {
        "streamherd_records_in_total": in_topic,
        "streamherd_records_out_total": len(results),
        "streamherd_windows_emitted_total": len(results),
        "streamherd_records_contributing_total": in_topic,
    }
    assert counters == truth, (counters, truth, seen)
    # The run's own summary (the `stopped` event's figures) agrees: it counted the aborted
    # transaction's records and windows twice too.
    assert summary == (in_topic, len(results)), (summary, truth)
