"""A pipeline whose lag cannot be measured is warned about once per reason and then once
per reminder period, not once per poll: an unreachable broker must not flood the log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling import poller
from streamherd.operator.autoscaling.poller import UNMEASURED_REMINDER, Autoscaler
from tests.infra.invalid_manifests import KAFKA


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
