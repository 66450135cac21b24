"""The lag a worker exports equals the lag probe's figure and the broker's
view, while the lag is NOT zero, and in the no-commit and retention-deleted cases.

Real broker, real `streamherd-worker` subprocesses. To freeze the figures, a worker runs
with a checkpoint interval of an hour after the input stopped growing: it reads every
record but commits nothing, so log end, log start and the committed offset all stand still
and the three views can be compared at leisure (twice, 1.5 s apart, to show they are
stable). The broker's view is computed here from raw broker answers (watermarks and the
group's committed offsets), independently of operator/lagprobe.py:

- committed and inside the log: log end - committed;
- committed below the log start (records deleted by retention / DeleteRecords): the group
  will restart at the log start, so log end - log start;
- nothing committed: startFrom earliest -> log end - log start, latest -> 0 (a worker that
  starts from `latest` commits its start at once, so this case is the lag probe's alone,
  for a group no worker has joined yet: tests/integration/test_lagprobe.py).
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamherd.operator.lagprobe import ClusterConfig, GroupSpec, LagProbe
from streamherd.workers.engine import LAG_REFRESH_SECONDS
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, clicks, pipeline_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 4


def watermarks(broker: KafkaBroker, topic: str) -> dict[int, tuple[int, int]]:
    consumer = Consumer(broker.client_config(**{"group.id": f"wm-{uuid.uuid4().hex[:8]}"}))
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def broker_view(broker: KafkaBroker, group: str, topic: str, start_from: str) -> dict[int, int]:
    marks = watermarks(broker, topic)
    committed = broker.committed(group, topic)
    out = {}
    for p, (low, high) in marks.items():
        done = committed[p]
        if done < 0:
            out[p] = high - low if start_from == "earliest" else 0
        elif done < low:
            out[p] = high - low
        else:
            out[p] = high - done
    return out


def probe_view(broker: KafkaBroker, group: str, topic: str, start_from: Any) -> dict[int, int]:
    with LagProbe(ClusterConfig.of(broker.bootstrap)) as probe:
        lag = probe.measure(GroupSpec(group, (topic,), start_from))
    return {p: v for (_, p), v in lag.by_partition().items()}


def exported_view(worker: Worker, topic: str) -> dict[int, float | None]:
    metrics = worker.metrics()
    return {
        p: metrics.get(
            f'streamherd_consumer_lag{{partition="{p}",pipeline="clicks",topic="{topic}"}}'
        )
        for p in range(PARTITIONS)
    }


def records_in(worker: Worker) -> float:
    return sum(
        v for k, v in worker.metrics().items() if k.startswith("streamherd_records_in_total")
    )


def assert_three_views_agree(
    broker: KafkaBroker, worker: Worker, group: str, topic: str, start_from: str, read: int
) -> dict[int, int]:
    """Wait until the worker has read `read` records and its figure settled, then compare."""
    wait_until(f"{read} records read", lambda: records_in(worker) == read, 90, [worker])

    def agree() -> bool:
        exported = exported_view(worker, topic)
        return (
            exported
            == probe_view(broker, group, topic, start_from)
            == broker_view(broker, group, topic, start_from)
        )

    wait_until("exported lag == probe == broker", agree, 30, [worker])
    first = broker_view(broker, group, topic, start_from)
    # Still the same, all three, after at least two more lag refreshes of the worker (one per
    # LAG_REFRESH_SECONDS of its loop): its heartbeat, set every loop, has moved that far on.
    beat = worker.value("streamherd_heartbeat_timestamp_seconds")
    wait_until(
        "two more lag refreshes",
        lambda: (
            worker.value("streamherd_heartbeat_timestamp_seconds") >= beat + 3 * LAG_REFRESH_SECONDS
        ),
        30,
        [worker],
    )
    exported = exported_view(worker, topic)
    probed = probe_view(broker, group, topic, start_from)
    seen = broker_view(broker, group, topic, start_from)
    assert exported == probed == seen == first, (exported, probed, seen, first)
    metrics = worker.metrics()
    total = metrics['streamherd_worker_consumer_lag{pipeline="clicks"}']
    assert total == sum(seen.values())
    # The deprecated first name, exported with the same values for one release.
    assert metrics['streamherd_consumer_lag_total{pipeline="clicks"}'] == total
    return seen


def delete_records(broker: KafkaBroker, requests: list[TopicPartition]) -> None:
    admin = broker.admin()  # held until the answers are in: a dropped client never answers
    for future in admin.delete_records(requests).values():
        future.result(30)


def frozen_config(config: dict[str, Any]) -> dict[str, Any]:
    """No interval checkpoint (hence no commit) while the test looks."""
    return {**config, "checkpoint": {**config["checkpoint"], "intervalSeconds": 3600}}


def test_lag_parity_with_commits_and_after_retention(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("lag"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("lag-out"), PARTITIONS)
    group = f"g-{src}"
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=None, group=group, checkpoints=tmp_path / "ck"
    )
    kafka_broker.produce(src, clicks(0, 8000))

    # 1. A worker reads everything and commits; SIGTERM leaves the final commit.
    first = Worker.create(tmp_path, "w1", config).start()
    try:
        wait_until(
            "committed to the end",
            lambda: kafka_broker.committed(group, src) == kafka_broker.end_offsets(src),
            90,
            [first],
        )
        first.signal(signal.SIGTERM)
        assert first.wait(20) == 0, first.log_tail()
    finally:
        first.stop()
    committed = kafka_broker.committed(group, src)

    # 2. 4000 more records; a worker that reads them all but does not commit: the lag is
    #    the 4000 records past the committed offsets, frozen.
    kafka_broker.produce(src, clicks(8000, 4000))
    ends = kafka_broker.end_offsets(src)
    second = Worker.create(tmp_path, "w2", frozen_config(config)).start()
    try:
        seen = assert_three_views_agree(kafka_broker, second, group, src, "earliest", 4000)
        assert seen == {p: ends[p] - committed[p] for p in range(PARTITIONS)}
        assert sum(seen.values()) == 4000
        assert all(v > 0 for v in seen.values()), seen

        # 3. Retention (DeleteRecords) removes records past the committed offset of every
        #    partition: the lag is what is left, log end - log start.
        cut = {p: committed[p] + (ends[p] - committed[p]) // 2 for p in range(PARTITIONS)}
        requests = [TopicPartition(src, p, cut[p]) for p in range(PARTITIONS)]
        delete_records(kafka_broker, requests)
        assert all(low == cut[p] for p, (low, _) in watermarks(kafka_broker, src).items())
        assert kafka_broker.committed(group, src) == committed  # still behind the log start

        def agree_after_cut() -> bool:
            exported = exported_view(second, src)
            return exported == {p: ends[p] - cut[p] for p in range(PARTITIONS)}

        wait_until("exported lag sees the new log start", agree_after_cut, 30, [second])
        seen = assert_three_views_agree(kafka_broker, second, group, src, "earliest", 4000)
        assert seen == {p: ends[p] - cut[p] for p in range(PARTITIONS)}
    finally:
        second.stop()


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_lag_parity_before_the_first_checkpoint(
    kafka_broker: KafkaBroker, tmp_path: Path, start_from: str
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("lag-nc"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("lag-nc-out"), PARTITIONS)
    kafka_broker.produce(src, clicks(0, 3000))
    # Retention moved the log start too, so "earliest" means the log start, not offset 0.
    requests = [TopicPartition(src, p, 100) for p in range(PARTITIONS)]
    delete_records(kafka_broker, requests)
    group = f"g-{src}"  # a fresh group: nothing committed by a checkpoint (an hour away)
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=None, group=group, checkpoints=tmp_path / "ck"
    )
    config["source"]["kafka"]["startFrom"] = start_from
    ends = kafka_broker.end_offsets(src)
    worker = Worker.create(tmp_path, "w", frozen_config(config)).start()
    try:
        wait_until("partitions assigned", lambda: worker.get("/readyz")[0] == 200, 60, [worker])
        marks = watermarks(kafka_broker, src)
        retained = sum(high - low for low, high in marks.values())
        if start_from == "latest":
            # The worker pins its start at the log end and commits it (Engine._pin_latest),
            # before it reads anything: records written after that are read, and are lag
            # until a checkpoint commits them.
            wait_until(
                "the start pinned",
                lambda: kafka_broker.committed(group, src) == ends,
                30,
                [worker],
            )
            kafka_broker.produce(src, clicks(3000, 1000))
            read = 1000
        else:
            read = retained
        seen = assert_three_views_agree(kafka_broker, worker, group, src, start_from, read)
        if start_from == "earliest":
            assert all(v < 0 for v in kafka_broker.committed(group, src).values())
            marks = watermarks(kafka_broker, src)
            assert seen == {p: high - low for p, (low, high) in marks.items()}
            assert sum(seen.values()) == retained == 3000 - 4 * 100
        else:
            assert kafka_broker.committed(group, src) == ends
            marks = watermarks(kafka_broker, src)
            assert seen == {p: high - ends[p] for p, (_, high) in marks.items()}
            assert sum(seen.values()) == 1000
    finally:
        worker.stop()
