"""A worker without partitions is a ready standby, so a rolling update can finish.

A Deployment rolls with maxSurge 1 and maxUnavailable 0: the new pod must be Ready before
the old one is removed. With as many workers as partitions, the consumer group gives the
new pod nothing while the old one holds its partition; a worker that needed a partition to
be ready would hold that rollout forever (seen on the real node: 123 s of `503 no
partitions assigned`, decision 0081). Real broker, real `streamherd-worker` subprocesses.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, clicks, pipeline_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def _ready(worker: Worker) -> str | None:
    status, text = worker.get("/readyz")
    return text if status == 200 else None


def test_a_worker_without_partitions_is_a_ready_standby_that_takes_over(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 1)
    kafka_broker.produce(src, clicks(0, 2_000))
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=None, group=f"g-{src}",
        checkpoints=tmp_path / "ck",
    )  # fmt: skip
    old = Worker.create(tmp_path, "old", config).start()
    new = Worker.create(tmp_path, "new", config)
    try:
        wait_until("the old worker to own the partition", lambda: "1 partitions" in
                   (_ready(old) or ""), 60, [old])  # fmt: skip
        new.start()
        # The new worker joins, gets nothing, and is ready: what lets the rollout go on.
        wait_until("the new worker to be a ready standby", lambda: "standby" in
                   (_ready(new) or ""), 60, [old, new])  # fmt: skip
        assert "1 partitions" in (_ready(old) or ""), "the standby took the partition early"
        # The Deployment now removes the old pod: the standby takes the partition over.
        old.signal(signal.SIGTERM)
        assert old.wait(30) == 0, old.log_tail()
        kafka_broker.produce(src, clicks(2_000, 1_000))
        ends = kafka_broker.end_offsets(src)
        wait_until("the new worker to own the partition and commit the rest",
                   lambda: "1 partitions" in (_ready(new) or "")
                   and kafka_broker.committed(f"g-{src}", src) == ends, 90, [new])  # fmt: skip
    finally:
        old.stop()
        new.stop()
