"""A pipeline whose lag cannot be measured is warned about once per reason and then once
per reminder period, not once per poll: an unreachable broker must not flood the log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling import poller
from streamherd.operator.autoscaling.poller import UNMEASURED_REMINDER, Autoscaler
from streamherd.operator.lagprobe import GroupLag, GroupSpec, LagProbeError, PartitionLag
from tests.infra.invalid_manifests import KAFKA, set_path


class _Resolver:
    """Fails to build the Kafka connection, for a reason the test sets."""

    def __init__(self) -> None:
        self.why = "no route to the broker"

    def __call__(self, pipeline: StreamPipeline) -> object:
        raise RuntimeError(self.why)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == poller.__name__ and r.levelno >= logging.WARNING
    ]


def test_unmeasured_lag_is_warned_once_per_reason_and_reminder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = StreamPipeline.model_validate(KAFKA)
    resolver = _Resolver()
    autoscaler = Autoscaler(resolve_cluster=resolver)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG, logger=poller.__name__)

    async def polls(start: float, count: int, every: float) -> float:
        at = start
        for _ in range(count):
            result = await autoscaler.evaluate(pipeline, 1, now=at)
            assert "not measured" in result.message and resolver.why in result.message
            at += every
        return at

    try:
        # 30 polls 15 s apart (7.5 minutes): one warning.
        at = asyncio.run(polls(0.0, 30, 15.0))
        assert len(_warnings(caplog)) == 1
        assert resolver.why in _warnings(caplog)[0]
        # Past the reminder period: exactly one reminder, with the count and the duration.
        at = asyncio.run(polls(at, 20, 15.0))
        reminders = _warnings(caplog)[1:]
        assert len(reminders) == 1, reminders
        assert "still not measured" in reminders[0]
        assert at > UNMEASURED_REMINDER
        # A new reason is news: warned at once.
        resolver.why = "certificate expired"
        asyncio.run(polls(at, 3, 15.0))
        assert len(_warnings(caplog)) == 3
        assert "certificate expired" in _warnings(caplog)[-1]
        # A forgotten (deleted) pipeline starts afresh.
        autoscaler.forget((pipeline.namespace, pipeline.name))
        asyncio.run(polls(at + 100, 1, 15.0))
        assert len(_warnings(caplog)) == 4
    finally:
        autoscaler.close()


class _Probe:
    """Answers no lag on every partition until `failing`."""

    failing = False

    def __init__(self, _cluster: object) -> None:
        pass

    def measure_many(self, specs: list[GroupSpec]) -> dict[str, GroupLag]:
        if _Probe.failing:
            raise LagProbeError("broker unreachable")
        return {
            s.group: GroupLag(
                s.group, tuple(PartitionLag(t, 0, 0, 100, 100, 0) for t in s.topics), 0.0
            )
            for s in specs
        }

    def close(self) -> None:
        pass


def test_a_failed_poll_never_scales() -> None:
    """No data, no action (docs/autoscaling.md): a failed poll within three polls of the
    last good one judged the old samples at a later time, and scaled to zero on data that
    covered less than the idle timeout (helper-99's finding)."""
    pipeline = StreamPipeline.model_validate(set_path(KAFKA, "spec.autoscaling.minReplicas", 0))
    autoscaler = Autoscaler(probe_factory=_Probe)  # type: ignore[arg-type]
    _Probe.failing = False

    async def polls() -> tuple[str, int, str]:
        at = 7.0
        while at < 600:
            await autoscaler.evaluate(pipeline, 1, now=at)
            at += 15
        _Probe.failing = True
        result = await autoscaler.evaluate(pipeline, 1, now=at)
        return result.reason, result.desired, result.message

    try:
        reason, desired, message = asyncio.run(polls())
    finally:
        _Probe.failing = False
        autoscaler.close()
    assert (reason, desired) == ("NoData", 1), message
    assert "not measured" in message


class _TwoTopics:
    """Lag 900,000 on topic busy, none elsewhere."""

    asked: list[tuple[str, tuple[str, ...]]] = []

    def __init__(self, _cluster: object) -> None:
        pass

    def measure_many(self, specs: list[GroupSpec]) -> dict[str, GroupLag]:
        _TwoTopics.asked += [(s.group, s.topics) for s in specs]
        return {
            s.group: GroupLag(
                s.group,
                tuple(
                    PartitionLag(t, 0, 0, 10**6, 10**6 - lag, lag)
                    for t in s.topics
                    for lag in [900_000 if t == "busy" else 0]
                ),
                0.0,
            )
            for s in specs
        }

    def close(self) -> None:
        pass


def test_pipelines_sharing_a_group_each_get_their_own_topics_lag() -> None:
    """Batched by group alone, the last pipeline's topics were measured and both got that
    lag: a quiet pipeline scaled for another one's backlog (helper-99's finding)."""

    def pipe(name: str, topic: str) -> StreamPipeline:
        doc = set_path(KAFKA, "metadata.name", name)
        doc = set_path(doc, "spec.source.kafka.topics", [topic])
        return StreamPipeline.model_validate(
            set_path(doc, "spec.source.kafka.consumerGroup", "shared")
        )

    autoscaler = Autoscaler(probe_factory=_TwoTopics)  # type: ignore[arg-type]

    async def both() -> tuple[int | None, int | None]:
        quiet, busy = await asyncio.gather(
            autoscaler.evaluate(pipe("quiet", "quiet"), 1, now=0.0),
            autoscaler.evaluate(pipe("busy", "busy"), 1, now=0.0),
        )
        return quiet.lag, busy.lag

    try:
        quiet, busy = asyncio.run(both())
    finally:
        autoscaler.close()
    assert (quiet, busy) == (0, 900_000)
    assert len(_TwoTopics.asked) == 1  # measured once, over both pipelines' topics
    assert {"quiet", "busy"} <= set(_TwoTopics.asked[0][1])
