"""A checkpoint ahead of the group's committed offset is committed by the next owner.

How that state arises: a worker writes its checkpoint, then commits; if it dies between the
two, or its asynchronous commit fails (a rebalance in progress, a fenced generation), the
durable checkpoint is ahead of the broker. The next owner restores the checkpoint and reads
on from there, and it must also commit that offset, even when no new record arrives:
otherwise the broker's view (and the autoscaler's lag probe, which reads it) shows lag that
no worker will ever consume, and a pipeline with ``minReplicas: 0`` never goes back to zero.

Real broker, real ``streamherd-worker`` subprocesses. The lost commit is reproduced by moving
the stopped group's committed offsets back with the admin API, and by writing into the
checkpoints the committed offset they would hold had they been written while the group was
there (each checkpoint records the group's confirmed committed offset; an offset outside
what the pipeline itself committed is someone else's reset, tests/integration/engine/
test_engine_lifecycle.py).
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamherd.workers.checkpointing import CheckpointStore
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, clicks, pipeline_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 4
BEHIND = 100  # where the "lost" commit leaves the group on every partition


def checkpointed(store: CheckpointStore, topic: str) -> dict[int, int | None]:
    return {
        p: (cp.next_offset if (cp := store.load(topic, p)) is not None else None)
        for p in range(PARTITIONS)
    }


def rewind(broker: KafkaBroker, group: str, topic: str, offset: int) -> None:
    """Commit `offset` for the (now empty) group, as a standalone consumer that never joins."""
    consumer = Consumer(broker.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        answer = consumer.commit(
            offsets=[TopicPartition(topic, p, offset) for p in range(PARTITIONS)],
            asynchronous=False,
        )
        errors = [tp.error for tp in answer or [] if tp.error is not None]
        assert not errors, errors
    finally:
        consumer.close()


def test_restored_checkpoint_ahead_of_the_commit_is_committed(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), PARTITIONS)
    kafka_broker.produce(src, clicks(0, 20_000))
    ends = kafka_broker.end_offsets(src)
    assert all(ends[p] > BEHIND for p in range(PARTITIONS)), ends
    group = f"g-{src}"
    store = CheckpointStore(tmp_path / "ck")
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=None, group=group, checkpoints=tmp_path / "ck"
    )

    first = Worker.create(tmp_path, "first", config).start()
    try:
        wait_until(
            "the first worker to checkpoint and commit everything",
            lambda: checkpointed(store, src) == ends and kafka_broker.committed(group, src) == ends,
            90,
            [first],
        )
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log_tail()
    finally:
        first.stop()

    # The commit that should have followed the checkpoint never reached the broker.
    rewind(kafka_broker, group, src, BEHIND)
    assert kafka_broker.committed(group, src) == dict.fromkeys(range(PARTITIONS), BEHIND)
    # ...so the checkpoint was written while the group's committed offset was BEHIND.
    restored = [store.load(src, p) for p in range(PARTITIONS)]
    store.save([dataclasses.replace(cp, committed=BEHIND) for cp in restored if cp is not None])

    second = Worker.create(tmp_path, "second", config).start()
    try:
        # No new record arrives: only the restore itself can bring the broker up to date.
        wait_until(
            "the next owner to commit the restored checkpoints",
            lambda: kafka_broker.committed(group, src) == ends,
            60,
            [second],
        )
        wait_until(
            "the exported lag to be the broker's (zero)",
            lambda: second.metrics().get('streamherd_worker_consumer_lag{pipeline="clicks"}') == 0,
            30,
            [second],
        )
        metrics = second.metrics()
        records_in = sum(v for k, v in metrics.items() if k.startswith("streamherd_records_in"))
    finally:
        second.stop()
    assert records_in == 0, "the restored worker re-read records its checkpoint covers"
    assert checkpointed(store, src) == ends
    log = second.log_path.read_text()
    assert log.count("event=commit-behind-checkpoint") == PARTITIONS, second.log_tail()


def test_a_checkpoint_skipped_behind_another_writer_commits_no_offset(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Checkpoint before commit holds when a checkpoint is skipped.

    The store refuses to set back another writer's head that is further on in the partition
    (a worker the group left behind, on a shared volume). The engine then skips that
    partition's checkpoint. It must not commit the partition's offset either: a commit then
    names an offset that no checkpoint holds.

    The other writer's head is written straight into the store, further on than anything this
    worker reads. The worker then reads new records, and every later checkpoint of it is
    skipped, including the one at its stop. The group's committed offset must not move."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 1)
    kafka_broker.produce(src, clicks(0, 500))
    ends = kafka_broker.end_offsets(src)
    group = f"g-{src}"
    store = CheckpointStore(tmp_path / "ck")
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=None, group=group, checkpoints=tmp_path / "ck"
    )

    worker = Worker.create(tmp_path, "owner", config).start()
    try:
        wait_until(
            "the worker to checkpoint and commit everything",
            lambda: (
                (cp := store.load(src, 0)) is not None
                and cp.next_offset == ends[0]
                and kafka_broker.committed(group, src) == ends
            ),
            90,
            [worker],
        )
        # Another writer's head, further on than the worker will ever read.
        head = store.load(src, 0)
        assert head is not None
        CheckpointStore(tmp_path / "ck").save(
            [dataclasses.replace(head, next_offset=ends[0] + 10_000)]
        )

        kafka_broker.produce(src, clicks(500, 200))
        wait_until(
            "three of the worker's checkpoints to be skipped behind the other head",
            lambda: worker.log_path.read_text().count("event=checkpoint-behind-another") >= 3,
            60,
            [worker],
        )
        assert worker.value("streamherd_records_in_total") >= 700, worker.log_tail()
        assert kafka_broker.committed(group, src) == ends, "an offset no checkpoint holds"
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log_tail()
    finally:
        worker.stop()
    assert kafka_broker.committed(group, src) == ends, "the stop committed past its checkpoint"
    cp = store.load(src, 0)
    assert cp is not None and cp.next_offset == ends[0] + 10_000, "the other head was set back"
