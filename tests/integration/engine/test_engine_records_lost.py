"""Records the broker deleted before the pipeline read them (retention, DeleteRecords), on a
real broker with `streamherd-worker` processes (decision 0201).

A position before the log start is out of range, and the consumer reset it by
``auto.offset.reset``, which is ``startFrom``: under ``latest`` to the log end, so every record
still in the log was skipped too, silently; under ``earliest`` to the log start, but nothing
said that records were lost. Now, in both, the worker goes on from the log start and counts
the lost records (``streamherd_records_lost_total``, ``event=input-lost``):

- a worker stopped while retention deleted past its checkpoint, then started again;
- a worker frozen (SIGSTOP) while it happened, then woken, with and without new records
  after it;
- a worker with no checkpoint whose group's committed offset is before the log start.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, clicks, pipeline_config, wait_until
from tests.integration.engine.test_engine_lag_parity import delete_records

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 2


def total(worker: Worker, name: str, topic: str) -> dict[int, float]:
    """A partition-labelled counter of the worker's, by partition, for `topic`."""
    out: dict[int, float] = {}
    for sample, value in worker.metrics().items():
        if sample.split("{", 1)[0] == f"{name}_total" and f'topic="{topic}"' in sample:
            partition = int(sample.split('partition="', 1)[1].split('"', 1)[0])
            out[partition] = out.get(partition, 0) + value
    return out


def setup(broker: KafkaBroker, tmp: Path, start_from: str) -> tuple[str, str, dict[str, Any]]:
    src = broker.create_topic(broker.unique_topic("lost"), PARTITIONS)
    sink = broker.create_topic(broker.unique_topic("lost-out"), PARTITIONS)
    group = f"g-{src}"
    config = pipeline_config(
        broker, source=src, sink=sink, dlq=None, group=group, checkpoints=tmp / "ck"
    )
    config["source"]["kafka"]["startFrom"] = start_from
    config["checkpoint"]["intervalSeconds"] = 0.5
    return src, group, config


def read_all(broker: KafkaBroker, worker: Worker, group: str, src: str) -> dict[int, int]:
    """Produce 2,000 records once the worker is assigned; wait until all are committed."""
    wait_until("assigned", lambda: worker.get("/readyz")[0] == 200, 60, [worker])
    broker.produce(src, clicks(0, 2000))
    ends = broker.end_offsets(src)
    wait_until("committed to the end", lambda: broker.committed(group, src) == ends, 90, [worker])
    return ends


def delete_half_of_what_follows(
    broker: KafkaBroker, src: str, committed: dict[int, int]
) -> tuple[dict[int, int], dict[int, int]]:
    """2,000 more records, then the first half past `committed` deleted: the cut, the ends."""
    broker.produce(src, clicks(2000, 2000))
    ends = broker.end_offsets(src)
    cut = {p: committed[p] + (ends[p] - committed[p]) // 2 for p in range(PARTITIONS)}
    delete_records(broker, [TopicPartition(src, p, cut[p]) for p in range(PARTITIONS)])
    return cut, ends


def assert_went_on_from_the_log_start(
    broker: KafkaBroker,
    worker: Worker,
    group: str,
    src: str,
    committed: dict[int, int],
    cut: dict[int, int],
    read_before: dict[int, float],
    *,
    exact: bool = True,
) -> None:
    """Every offset after the committed one read once or counted lost, never both, never
    neither. ``exact``: the lost ones are exactly those deleted (a worker that was stopped).
    A frozen one may have had a fetch answered before the deletion, in its socket: those
    records it reads, and they are not lost."""
    ends = broker.end_offsets(src)
    wait_until("committed to the end", lambda: broker.committed(group, src) == ends, 90, [worker])
    lost = total(worker, "streamherd_records_lost", src)
    read = total(worker, "streamherd_records_in", src)
    took = {p: read.get(p, 0) - read_before.get(p, 0) for p in range(PARTITIONS)}
    assert {p: took[p] + lost.get(p, 0) for p in range(PARTITIONS)} == {
        p: ends[p] - committed[p] for p in range(PARTITIONS)
    }, f"read {took}, lost {lost}: an offset skipped unsaid, or counted twice"
    assert all(took[p] >= ends[p] - cut[p] for p in range(PARTITIONS)), (
        f"read {took}: a record still in the log was skipped"
    )
    if exact:
        assert lost == {p: cut[p] - committed[p] for p in range(PARTITIONS)}, lost
    assert sum(lost.values()) > 0 or not exact
    if lost:
        assert "event=input-lost" in worker.log_tail(400)


def read_stop_and_cut(
    broker: KafkaBroker, tmp: Path, group: str, src: str, config: dict[str, Any]
) -> tuple[dict[int, int], dict[int, int]]:
    """A first worker reads 2,000 records and stops cleanly; then half of what follows its
    commit is deleted: the committed offsets and the cut."""
    first = Worker.create(tmp, "w1", config).start()
    try:
        read_all(broker, first, group, src)
        first.signal(signal.SIGTERM)
        assert first.wait(20) == 0, first.log_tail()
    finally:
        first.stop()
    committed = broker.committed(group, src)
    cut, _ = delete_half_of_what_follows(broker, src, committed)
    return committed, cut


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_records_deleted_while_the_worker_was_stopped(
    kafka_broker: KafkaBroker, tmp_path: Path, start_from: str
) -> None:
    src, group, config = setup(kafka_broker, tmp_path, start_from)
    committed, cut = read_stop_and_cut(kafka_broker, tmp_path, group, src, config)
    second = Worker.create(tmp_path, "w2", config).start()
    try:
        assert_went_on_from_the_log_start(kafka_broker, second, group, src, committed, cut, {})
    finally:
        second.stop()


@pytest.mark.parametrize("more", [True, False], ids=["new-records-after", "quiet-topic"])
@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_records_deleted_while_the_worker_was_frozen(
    kafka_broker: KafkaBroker, tmp_path: Path, start_from: str, more: bool
) -> None:
    src, group, config = setup(kafka_broker, tmp_path, start_from)
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        read_all(kafka_broker, worker, group, src)
        read_before = total(worker, "streamherd_records_in", src)
        committed = kafka_broker.committed(group, src)
        worker.signal(signal.SIGSTOP)  # shorter than the session timeout: no rebalance
        try:
            cut, _ = delete_half_of_what_follows(kafka_broker, src, committed)
        finally:
            worker.signal(signal.SIGCONT)
        if more:
            time.sleep(1)
            kafka_broker.produce(src, clicks(4000, 10))
        assert_went_on_from_the_log_start(
            kafka_broker, worker, group, src, committed, cut, read_before, exact=False
        )
    finally:
        worker.stop()


def test_a_committed_offset_before_the_log_start_without_a_checkpoint(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """No checkpoint (a new volume): the worker resumes from the group's committed offset,
    which retention overtook."""
    src, group, config = setup(kafka_broker, tmp_path, "latest")
    committed, cut = read_stop_and_cut(kafka_broker, tmp_path, group, src, config)
    shutil.rmtree(tmp_path / "ck")
    second = Worker.create(tmp_path, "w2", config).start()
    try:
        assert_went_on_from_the_log_start(kafka_broker, second, group, src, committed, cut, {})
    finally:
        second.stop()
