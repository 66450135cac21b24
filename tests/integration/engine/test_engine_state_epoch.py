"""A pipeline that goes to another state and comes back restores nothing from before, on the
real broker (decision 0175).

The pipeline repartitions (windows by page over records keyed by user), is edited to window
by the topic's own key (no repartition: the repartition topic's partitions are not taken),
then edited back, with a reset each time. The last spec has the first one's fingerprint, and
the downstream partitions' checkpoints are still the first era's: nothing wrote over them in
between. Restored by fingerprint alone, their open windows (two resets old) closed in the
third era, and the sink got windows of records read before either reset. With the state
epoch the operator renders (the generation of the last reset), those checkpoints are
discarded: the last era's sink holds exactly the windows of the records it read. Records
carry their event time as their Kafka timestamp; the reference is computed without the
engine.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import BASE_TS, Worker, pipeline_config, wait_until
from tests.integration.engine.test_engine_repartition import by_key, check, flush
from tests.integration.engine.test_engine_repartition_replay import (
    KEEP,
    PARTITIONS,
    caught_up,
    produce,
    records_in,
    reference,
    spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

UID = "uid-of-the-pipeline"


def run_era(tmp_path: Path, name: str, config: dict[str, Any], ready: Any, what: str) -> None:
    """Run a worker of ``config`` until ``ready()``, then stop it as a rollout does."""
    worker = Worker.create(tmp_path, name, config).start()
    try:
        wait_until(what, ready, 120, [worker])
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log_tail()
    finally:
        worker.stop()


def test_a_pipeline_edited_away_and_back_with_resets_restores_no_window_from_before(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    broker = kafka_broker
    src = broker.create_topic(broker.unique_topic("epoch-src"), PARTITIONS, config=KEEP)
    hop = broker.create_topic(f"{src}.repartition", 3, config=KEEP)
    sinks = [broker.create_topic(broker.unique_topic(f"epoch-{era}"), 3) for era in "abc"]
    group = f"g-{src}"
    base = pipeline_config(
        broker, source=src, sink=sinks[0], dlq=None, group=group,
        checkpoints=tmp_path / "checkpoints", lateness="0s", steps=[{"filter": "true"}],
        batchSize=500,
    )  # fmt: skip
    base["processor"]["steps"][-1]["window"]["keyBy"] = "page"
    base["repartition"] = {"topic": hop}

    # Era 1: the repartitioned spec, as created (no epoch yet). Its last windows stay open.
    produce(broker, src, 0, 3000)
    first = spec(base, sinks[0], "0", "10s", onFingerprintMismatch="reset", specGeneration=1,
                 pipelineUid=UID)  # fmt: skip
    run_era(tmp_path, "first", first,
            lambda: caught_up(broker, group, src) and caught_up(broker, group, hop),
            "the first spec read every record and every entry")  # fmt: skip

    # Era 2: windows by the topic's key, no repartition; the reset starts epoch 2.
    produce(broker, src, 3000, 1000)
    keyed = spec(base, sinks[1], "0", "10s", onFingerprintMismatch="reset", specGeneration=2,
                 pipelineUid=UID, epoch=2)  # fmt: skip
    keyed["processor"]["steps"][-1]["window"]["keyBy"] = "user"
    del keyed["repartition"]
    run_era(tmp_path, "keyed", keyed,
            lambda: caught_up(broker, group, src),
            "the keyed spec read every record")  # fmt: skip

    # Era 3: the first spec again (its fingerprint), after another reset: epoch 3.
    third = [*produce(broker, src, 4000, 1000)]
    back = spec(base, sinks[2], "0", "10s", onFingerprintMismatch="reset", specGeneration=3,
                pipelineUid=UID, epoch=3)  # fmt: skip
    expected = reference([r for r in third if r["bytes"] % 2 == 0], 10_000)
    worker = Worker.create(tmp_path, "back", back).start()
    try:
        wait_until("the last spec read every record",
                   lambda: records_in(worker) >= len(third) and caught_up(broker, group, src),
                   120, [worker])  # fmt: skip
        flush(broker, src, BASE_TS)  # a far-future record per partition closes every window
        got: dict[str, dict[str, Any]] = {}

        def settled() -> bool:
            # Every expected window out, and every entry folded: a stale window would be
            # out by then too (the same watermark closes it).
            if not (caught_up(broker, group, src) and caught_up(broker, group, hop)):
                return False
            got.clear()
            got.update(by_key(broker.consume_all(sinks[2], timeout=60))[0])
            return set(expected) <= set(got)

        wait_until("every window of the last era emitted", settled, 120, [worker])
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log_tail()
    finally:
        worker.stop()
    check(got, expected)
    # The first era's downstream state was kept before it was discarded, never lost.
    # The first era's downstream state (and only it) was kept before it was discarded, as
    # <fingerprint>-to-<fingerprint>-g3; the second era's state of the source partitions as
    # <keyed>-to-<fingerprint>-g3 (the reset's own discard).
    kept: dict[str, list[str]] = {}
    for ckpt in (tmp_path / "checkpoints" / "@snapshots").glob("*-g3/*/*.ckpt"):
        old, new = ckpt.parent.parent.name.removesuffix("-g3").split("-to-")
        kept.setdefault("stale" if old == new else "reset", []).append(
            f"{ckpt.parent.name}/{ckpt.name}"
        )
    assert sorted(kept["stale"]) == [f"{hop}/{partition}.ckpt" for partition in range(3)]
    assert sorted(kept["reset"]) == [f"{src}/{partition}.ckpt" for partition in range(PARTITIONS)]
