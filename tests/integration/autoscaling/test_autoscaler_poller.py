"""Autoscaler.evaluate against the real broker: shared probe, batching, decisions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling.decision import NO_DATA, SCALE_UP, STEADY, WAKE_UP
from streamherd.operator.autoscaling.poller import Autoscaler
from streamherd.operator.lagprobe import ClusterConfig, LagProbe
from tests.infra.kafka import KafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def _pipeline(name: str, bootstrap: str, topic: str, **autoscaling: Any) -> StreamPipeline:
    return StreamPipeline.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {
                "source": {"kafka": {"bootstrapServers": bootstrap, "topics": [topic]}},
                "sink": {"stdout": {}},
                "autoscaling": {"mode": "builtin", **autoscaling},
            },
        }
    )


def _commit(broker: KafkaBroker, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer(broker.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def test_many_pipelines_share_one_probe_and_get_decisions(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("as"), partitions=8)
    for p in range(8):
        kafka_broker.produce(topic, (f"r{i}" for i in range(1000)), partition=p)
    suffix = uuid.uuid4().hex[:6]
    pipelines = [
        _pipeline(f"p{i}-{suffix}", kafka_broker.bootstrap, topic, minReplicas=0, maxReplicas=8)
        for i in range(20)
    ]
    # p0 has consumed everything, the others nothing (8000 records of lag each).
    _commit(kafka_broker, pipelines[0].consumer_group or "", topic, dict.fromkeys(range(8), 1000))
    made: list[ClusterConfig] = []

    def factory(cluster: ClusterConfig) -> LagProbe:
        made.append(cluster)
        return LagProbe(cluster, request_timeout=20.0)

    autoscaler = Autoscaler(probe_factory=factory, batch_window=0.2)

    async def round_() -> list[Any]:
        return await asyncio.gather(*(autoscaler.evaluate(p, 1) for p in pipelines))

    try:
        results = asyncio.run(round_())
        # Workers running and committing every checkpoint: the first sample has no input
        # rate, so no commit allowance, so the decision waits for the second poll.
        assert all(r.reason == STEADY and r.desired == 1 for r in results), results
        results = asyncio.run(round_())
    finally:
        autoscaler.close()
    assert made == [ClusterConfig.of(kafka_broker.bootstrap)]  # one admin client for all 20
    assert results[0].lag == 0
    for r in results[1:]:
        assert r.lag == 8000
        assert (r.desired, r.reason) == (8, SCALE_UP)  # ceil(8000/1000) = 8, in one step
        assert r.changed
    history = autoscaler.history(("team-a", pipelines[1].name))
    assert history is not None and len(history.samples) == 2
    assert history.samples[0].partitions and len(history.samples[0].partitions) == 8


def test_wake_from_zero_and_unreachable_cluster(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("wake"), partitions=2)
    kafka_broker.produce(topic, ["a", "b", "c"], partition=0)
    p = _pipeline(f"w-{uuid.uuid4().hex[:6]}", kafka_broker.bootstrap, topic, minReplicas=0)
    dead = _pipeline("dead", "127.0.0.1:1", topic, minReplicas=0)

    def factory(cluster: ClusterConfig) -> LagProbe:
        return LagProbe(
            cluster,
            request_timeout=3.0,
            extra_config={"socket.connection.setup.timeout.ms": 1000},
        )

    autoscaler = Autoscaler(probe_factory=factory)
    try:
        woke = asyncio.run(autoscaler.evaluate(p, 0))
        unknown = asyncio.run(autoscaler.evaluate(dead, 0))
    finally:
        autoscaler.close()
    assert (woke.desired, woke.reason, woke.lag) == (1, WAKE_UP, 3)
    # No measurement: hold what runs, never act on a made-up zero.
    assert (unknown.desired, unknown.reason, unknown.lag) == (0, NO_DATA, None)
    assert "lag not measured" in unknown.message


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_a_pipeline_at_zero_whose_offsets_are_gone_wakes_for_new_input(
    kafka_broker: KafkaBroker, start_from: str
) -> None:
    """The broker deletes the offsets of a group with no member after
    offsets.retention.minutes (7 days by default): a pipeline scaled to zero that long.
    Deleting the group writes the same tombstones. The workers' checkpoints stand then, at
    the last committed offsets, so that is where the lag is measured from (Positions):
    under latest it read 0, and the pipeline never woke for new input again; under
    earliest it read the whole retained log."""
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("expired"), partitions=2)
    for p in range(2):
        kafka_broker.produce(topic, (f"r{i}" for i in range(100)), partition=p)
    pipeline = _pipeline(f"x-{uuid.uuid4().hex[:6]}", kafka_broker.bootstrap, topic, minReplicas=0)
    raw = pipeline.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["source"]["kafka"]["startFrom"] = start_from
    pipeline = StreamPipeline.model_validate(raw)
    group = pipeline.consumer_group or ""
    _commit(kafka_broker, group, topic, {0: 100, 1: 100})  # what the workers did
    autoscaler = Autoscaler(batch_window=0.05)
    try:
        idle = asyncio.run(autoscaler.evaluate(pipeline, 0))
        admin = kafka_broker.admin()  # held: a dropped client never completes its futures
        for f in admin.delete_consumer_groups([group], request_timeout=30).values():
            f.result(60)
        gone = asyncio.run(autoscaler.evaluate(pipeline, 0))
        kafka_broker.produce(topic, ["late-1", "late-2", "late-3"], partition=1)
        woke = asyncio.run(autoscaler.evaluate(pipeline, 0))
    finally:
        autoscaler.close()
    assert (idle.desired, idle.reason, idle.lag) == (0, STEADY, 0)
    assert (gone.desired, gone.reason, gone.lag) == (0, STEADY, 0)
    assert (woke.desired, woke.reason, woke.lag) == (1, WAKE_UP, 3)


def test_the_repartition_topic_lag_of_the_group_counts(kafka_broker: KafkaBroker) -> None:
    """A pipeline that re-keys consumes its repartition topic with the same group: records
    waiting there are lag too (the window's side has work to do even when the source side
    has caught up), so the builtin autoscaler scales on both."""
    source = kafka_broker.create_topic(kafka_broker.unique_topic("rk"), partitions=2)
    name = f"rk-{uuid.uuid4().hex[:6]}"
    doc = _pipeline(name, kafka_broker.bootstrap, source, minReplicas=1, maxReplicas=4)
    raw = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    # Counted per page, read from a stream that is not keyed by page: it re-keys.
    raw["spec"]["processor"] = {
        "steps": [{"window": {"keyBy": "page", "size": "60s",
                              "aggregates": [{"name": "n", "function": "count"}]}}]
    }  # fmt: skip
    pipeline = StreamPipeline.model_validate(raw)
    repartition = f"streamherd.team-a.{name}.repartition"
    kafka_broker.create_topic(repartition, partitions=2)
    for p in range(2):
        kafka_broker.produce(source, (f"s{i}" for i in range(100)), partition=p)
        kafka_broker.produce(repartition, (f"r{i}" for i in range(40)), partition=p)
    group = pipeline.consumer_group or ""
    # The source side has caught up; the window's side has 30 records left per partition.
    _commit(kafka_broker, group, source, {0: 100, 1: 100})
    _commit(kafka_broker, group, repartition, {0: 10, 1: 10})
    autoscaler = Autoscaler(batch_window=0.05)
    try:
        measured = asyncio.run(autoscaler.measure(pipeline))
    finally:
        autoscaler.close()
    assert not isinstance(measured, Exception), measured
    assert measured.by_partition() == {
        (source, 0): 0, (source, 1): 0, (repartition, 0): 30, (repartition, 1): 30,
    }  # fmt: skip
    assert measured.total == 60
