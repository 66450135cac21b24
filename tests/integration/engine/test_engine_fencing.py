"""At-least-once on a shared checkpoint volume, with a worker the group leaves behind.

A worker frozen past the session timeout in the middle of a batch (SIGSTOP here; a long
pause or a network cut from the broker alone in life) wakes after the group gave its
partitions to another, finishes the batch and, before its next poll tells it, would write
their checkpoints over the new owner's: before the fix, windows came back with partial
totals after the next restart (a kill-schedule probe: 3 runs in 3). Now the store never
stacks changes on another writer's head (workers/checkpointing.py, CheckpointBaseMoved):
every head is one writer's whole state, which at-least-once replays from. With the
changelog backend the broker fences the left-behind worker's checkpoint itself (its offsets
commit in the changelog's transaction: decision 0167).
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
    producer = broker.producer()  # one for every partition: its set-up costs ~0.5 s
    for p in range(PARTITIONS):
        marker = {"id": -1, "user": "zz-flush", "bytes": 0, "ts": BASE_TS + 86_400_000}
        broker.produce(src, [("zz-flush", marker)], partition=p, producer=producer)


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


def test_a_worker_left_behind_writes_nothing_to_the_changelog(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The changelog backend, at-least-once: the worker's checkpoint commits its offsets in
    the changelog's transaction, which the broker refuses from a worker the group has left
    behind (KIP-447), so a worker frozen mid-batch that wakes after the new owner read and
    checkpointed everything writes none of its stale state over the owner's. A regression
    guard of the whole with real workers: it passed on the engine before the fence too (2
    runs; the wake must land between a batch and its checkpoint, and a stale state whose
    delta covers every window the owner changed only replays). The fence itself is shown
    on the broker by test_engine_changelog.py's
    test_the_broker_refuses_changelog_state_from_a_member_the_group_left_behind."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("sink"), 2)
    group = f"g-{src}"
    workers = []
    for name in ("a", "b"):
        config = pipeline_config(
            kafka_broker, source=src, sink=sink, dlq=None, group=group,
            checkpoints=tmp_path / name, batchSize=500, lateness="2s",
        )  # fmt: skip
        config["processor"]["function"] = {"callable": "tests.infra.userfunctions:slow_identity"}
        config["checkpoint"]["intervalSeconds"] = 0.5
        config["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
        worker = Worker.create(tmp_path, name, config)
        # Each its own pod: its own transactional ids (on one host they would be the same,
        # and the second would fence the first's changelog producer by its id alone).
        worker.env = {"STREAMHERD_WORKER_ID": name}
        workers.append(worker)
    a, b = workers
    produced = records(0, 6000)
    kafka_broker.produce(src, produced)  # 2 ms a record: a is busy for seconds
    try:
        a.start()
        wait_until(
            "a in the middle of its work",
            lambda: a.value("streamherd_records_in_total") >= 1500,
            90,
            [a],
        )
        a.signal(signal.SIGSTOP)
        b.start()
        ends = kafka_broker.end_offsets(src)
        wait_until(
            "b to read and commit everything",
            lambda: kafka_broker.committed(group, src) == ends,
            120,
            [b],
        )
        time.sleep(2)  # b is idle: no checkpoint of its after this
        a.signal(signal.SIGCONT)  # a finishes its batch and checkpoints, then learns
        wait_until(
            "a to learn it was left behind",
            lambda: any(
                e in a.log_tail(200) for e in ("partitions-lost", "revoked", "checkpoint-refused")
            ),
            60,
            [a],
        )
        flush(kafka_broker, src)
        expected = reference(produced)

        def complete() -> bool:
            got = sink_windows(kafka_broker, sink)
            return all(got.get(k) == v for k, v in expected.items())

        wait_until("every window right", complete, 180, workers)
        got = sink_windows(kafka_broker, sink)
        wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        assert not wrong, f"{len(wrong)} of {len(expected)} windows wrong: {list(wrong)[:3]}"
        for w in workers:
            assert "offset-reset-detected" not in w.log_tail(2000), w.log_tail(40)
    finally:
        a.signal(signal.SIGCONT)
        for w in workers:
            w.stop()
