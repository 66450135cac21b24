"""At-least-once on a shared checkpoint volume, with a worker the group leaves behind.

A worker frozen past the session timeout in the middle of a batch (SIGSTOP here; a long
pause or a network cut from the broker alone in life) wakes after the group gave its
partitions to another, finishes the batch and, before its next poll tells it, would write
their checkpoints over the new owner's: before the fix, windows came back with partial
totals after the next restart (a kill-schedule probe: 3 runs in 3). Now the store never
stacks changes on another writer's head (workers/checkpointing.py, CheckpointBaseMoved):
every head is one writer's whole state, which at-least-once replays from.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    BASE_TS,
    Worker,
    latest_by_key,
    pipeline_config,
    reference,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4


def records(first: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"u{i % 23}", {"id": i, "user": f"u{i % 23}", "bytes": i % 97, "ts": BASE_TS + i * 5})
        for i in range(first, first + count)
    ]


def sink_windows(broker: KafkaBroker, sink: str) -> dict[str, dict[str, Any]]:
    """The sink's last (clicks, bytes) per window."""
    return {
        k: {"clicks": v["clicks"], "bytes": v["bytes"]}
        for k, v in latest_by_key(broker.consume_all(sink)).items()
    }


def flush(broker: KafkaBroker, src: str) -> None:
    for p in range(PARTITIONS):
        marker = {"id": -1, "user": "zz-flush", "bytes": 0, "ts": BASE_TS + 86_400_000}
        broker.produce(src, [("zz-flush", marker)], partition=p)


def test_a_worker_woken_after_the_group_moved_on_leaves_the_new_owners_state_alone(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("sink"), 2)
    workers = []
    for name in ("a", "b"):
        config = pipeline_config(
            kafka_broker, source=src, sink=sink, dlq=None, group=f"g-{src}",
            checkpoints=tmp_path / "shared", batchSize=500, lateness="2s",
        )  # fmt: skip
        config["processor"]["function"] = {"callable": "tests.infra.userfunctions:slow_identity"}
        config["checkpoint"]["intervalSeconds"] = 0.5
        workers.append(Worker.create(tmp_path, name, config))
    a, b = workers
    produced = records(0, 16_000)
    done = threading.Event()

    def produce() -> None:  # continuously, as in life: 40 chunks, 1.5 s apart
        for i in range(0, len(produced), 400):
            kafka_broker.produce(src, produced[i : i + 400])
            time.sleep(1.5)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    try:
        a.start()
        wait_until("a ready", lambda: a.get("/readyz")[0] == 200, 60, [a])
        producer.start()
        for cycle in range(2):
            time.sleep(2)  # a is busy in its batches
            a.signal(signal.SIGSTOP)
            if not b.alive():
                b.start()
            wait_until(
                "b to own every partition",
                lambda: b.value("streamherd_assigned_partitions") == PARTITIONS,
                60,
                [b],
            )
            time.sleep(2)  # b processes and checkpoints a's partitions
            a.signal(signal.SIGCONT)  # a finishes its batch, then learns it lost them
            time.sleep(6)  # the partitions are shared out again
            victim = b if cycle == 0 else a  # its next start restores the shared volume
            victim.kill()
            victim.start()
            time.sleep(2)
        producer.join(120)
        assert done.is_set()
        for w in workers:
            if not w.alive():
                w.start()
        flush(kafka_broker, src)
        expected = reference(produced)

        def complete() -> bool:
            got = sink_windows(kafka_broker, sink)
            return all(got.get(k) == v for k, v in expected.items())

        wait_until("every window right", complete, 180, workers)
        got = sink_windows(kafka_broker, sink)
        wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        assert not wrong, f"{len(wrong)} of {len(expected)} windows wrong: {list(wrong)[:3]}"
    finally:
        a.signal(signal.SIGCONT)
        for w in workers:
            w.stop()
