"""The autoscaler's side of an idle pipeline: no write, and little work per poll.

A steady decision with the lag already in status writes nothing; the parsed pipeline is
reused while its resourceVersion stays (parsing every poll was most of the operator's idle
CPU at 1000 pipelines); the index (fed by the operator's one on.event handler) follows
pipelines that become, stay or stop being builtin-managed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling.decision import STEADY, Decision
from streamherd.operator.autoscaling.handlers import (
    DESIRED_REPLICAS,
    PIPELINE_LAG,
    SCALING_DECISIONS,
    AutoscalerState,
    parse_cached,
    scale_once,
    status_patch,
)
from streamherd.operator.autoscaling.poller import ScaleResult
from streamherd.operator.kube import ApiError
from tests.infra.paths import REPO_ROOT

KEY = ("default", "clicks-per-minute")


def example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples/02-clicks-per-minute.yaml").read_text()
    )
    doc["metadata"] |= {"namespace": "default", "resourceVersion": "41"}
    return doc


def test_a_steady_decision_with_the_same_lag_writes_nothing_poll_after_poll() -> None:
    status = {"desiredReplicas": 1, "lag": 0}
    steady = ScaleResult(1, STEADY, "within bounds", 0, (), False, Decision(1, STEADY, "x", lag=0))
    for minute in range(60):
        assert status_patch(steady, status, datetime(2026, 1, 1, 0, minute, tzinfo=UTC)) == {}


def test_the_parsed_pipeline_is_reused_until_its_resource_version_moves() -> None:
    cache: dict[tuple[str, str], tuple[str, StreamPipeline | None]] = {}
    body = example()
    first = parse_cached(body, KEY, cache)
    assert parse_cached(copy.deepcopy(body), KEY, cache) is first
    body["metadata"]["resourceVersion"] = "42"
    body["spec"]["autoscaling"]["maxReplicas"] = 3
    second = parse_cached(body, KEY, cache)
    assert second is not first
    assert second is not None
    assert second.spec.autoscaling.max_replicas == 3
    # no resourceVersion (a body built by hand): parsed every time, never cached
    body["metadata"].pop("resourceVersion")
    assert parse_cached(body, ("default", "other"), cache) is not parse_cached(
        body, ("default", "other"), cache
    )
    assert ("default", "other") not in cache


def test_the_index_follows_builtin_pipelines_and_forgets_the_rest() -> None:
    state = AutoscalerState()
    body = example()
    state.track("ADDED", KEY, body)
    assert dict(state.managed()) == {KEY: 15.0}
    parse_cached(body, KEY, state.parsed)
    suspended = copy.deepcopy(body)
    suspended["spec"]["suspend"] = True
    state.track("MODIFIED", KEY, suspended)
    assert dict(state.managed()) == {}
    assert KEY not in state.parsed
    state.track("MODIFIED", KEY, body)
    state.track("DELETED", KEY, body)
    assert dict(state.managed()) == {}


def test_an_invalid_pipeline_is_parsed_once_to_none() -> None:
    cache: dict[tuple[str, str], tuple[str, StreamPipeline | None]] = {}
    body = example()
    body["spec"]["checkpoint"]["interval"] = "0s"  # the schema takes it, the rules do not
    assert parse_cached(body, KEY, cache) is None
    assert cache[KEY] == ("41", None)


class _NeverScale:
    async def evaluate(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("an invalid pipeline was evaluated")


async def _no_reconcile(ctx: Any, key: tuple[str, str]) -> None:
    raise AssertionError("an invalid pipeline was reconciled by the autoscaler")


class _Kube:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        return copy.deepcopy(self.body) if kind == "StreamPipeline" else None


def test_the_autoscaler_leaves_invalid_pipelines_alone_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = example()
    body["metadata"]["name"] = "clicks.v2"  # the API server takes it; the CEL rule does not
    ctx = SimpleNamespace(kube=_Kube(body), executor=ThreadPoolExecutor(1))
    state = AutoscalerState()
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            round_ = scale_once(ctx, _NeverScale(), KEY, state.parsed, reconcile=_no_reconcile)  # type: ignore[arg-type]
            result = asyncio.run(round_)
            assert result is None
    ctx.executor.shutdown()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_no_decision_before_the_deployment_exists() -> None:
    """A valid pipeline whose Deployment the reconciler has not created yet is not evaluated:
    "0 replicas" would read as a wake-up from zero for a pipeline with minReplicas 1 (seen
    in the e2e backlog test under load: lastScaleReason WakeUp instead of ScaleUp)."""
    ctx = SimpleNamespace(kube=_Kube(example()), executor=ThreadPoolExecutor(1))
    round_ = scale_once(ctx, _NeverScale(), KEY, AutoscalerState().parsed, reconcile=_no_reconcile)  # type: ignore[arg-type]
    assert asyncio.run(round_) is None
    ctx.executor.shutdown()


class _SwitchedMeanwhile:
    """Measures the lag while the user switches the pipeline to ``mode: none``."""

    def __init__(self, kube: _PipelineAndDeployment) -> None:
        self.kube = kube

    async def evaluate(self, pipeline: Any, current: int, *, running: int) -> ScaleResult:
        self.kube.body["spec"]["autoscaling"]["mode"] = "none"
        decision = Decision(current + 3, "ScaleUp", "lag 40000", lag=40000)
        return ScaleResult(
            decision.replicas, decision.reason, decision.message, 40000, (), True, decision
        )


class _PipelineAndDeployment(_Kube):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status_writes: list[Any] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        if kind == "Deployment":
            return {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
        return super().get(api_version, kind, namespace, name)

    def patch_status(self, namespace: str, name: str, patch: Any, version: Any = None) -> Any:
        if version is not None and version != (self.body.get("metadata") or {}).get(
            "resourceVersion"
        ):
            raise ApiError(409, "Conflict", "the object has been modified")
        self.status_writes.append(patch)


def test_a_decision_for_a_pipeline_switched_away_meanwhile_is_not_written() -> None:
    """The reconciler clears the autoscaler's keys when a pipeline leaves builtin; a
    decision whose lag was being measured then must not write them back (a helper's
    finding: the status said `mode: none`, desiredReplicas 6 and a lag no one measured)."""
    kube = _PipelineAndDeployment(example())
    ctx = SimpleNamespace(kube=kube, executor=ThreadPoolExecutor(1))
    reconciled: list[Any] = []

    async def reconcile(ctx: Any, key: tuple[str, str]) -> None:
        reconciled.append(key)

    round_ = scale_once(ctx, _SwitchedMeanwhile(kube), KEY, reconcile=reconcile)  # type: ignore[arg-type]
    assert asyncio.run(round_) is None
    ctx.executor.shutdown()
    assert kube.status_writes == [] and reconciled == []


class _ScaleUp:
    async def evaluate(self, pipeline: Any, current: int, *, running: int) -> ScaleResult:
        decision = Decision(current + 3, "ScaleUp", "lag 40000", lag=40000)
        return ScaleResult(
            decision.replicas, decision.reason, decision.message, 40000, (), True, decision
        )


class _WrittenAfterTheReRead(_PipelineAndDeployment):
    """Someone (the reconciler) writes the pipeline right after the autoscaler's re-read
    of its first round."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.reads = 0
        self.events: list[Any] = []

    def create_event(self, event: Any) -> None:
        self.events.append(event)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        got = super().get(api_version, kind, namespace, name)
        if kind == "StreamPipeline":
            self.reads += 1
            if self.reads == 2:
                self.body["metadata"]["resourceVersion"] = "6"
        return got


def test_a_decision_is_written_only_onto_the_pipeline_it_read() -> None:
    """The re-read narrows the race with a reconcile that ends the builtin era; the write
    is conditional on the version read, so a write in between is a conflict: nothing is
    written, and the next round decides from what is there."""
    body = example()
    body["metadata"]["resourceVersion"] = "5"
    kube = _WrittenAfterTheReRead(body)
    ctx = SimpleNamespace(kube=kube, executor=ThreadPoolExecutor(1))
    reconciled: list[Any] = []

    async def reconcile(ctx: Any, key: tuple[str, str]) -> None:
        reconciled.append(key)

    first = asyncio.run(scale_once(ctx, _ScaleUp(), KEY, reconcile=reconcile))  # type: ignore[arg-type]
    assert first is None and kube.status_writes == [] and reconciled == []
    second = asyncio.run(scale_once(ctx, _ScaleUp(), KEY, reconcile=reconcile))  # type: ignore[arg-type]
    ctx.executor.shutdown()
    assert second is not None and second.desired == 5
    assert [w["desiredReplicas"] for w in kube.status_writes] == [5] and reconciled == [KEY]
    assert len(kube.events) == 1  # one decision, one event


def test_the_gauges_of_a_pipeline_no_longer_managed_are_removed() -> None:
    """A pipeline that leaves builtin (or is deleted) keeps no lag or desired-replicas
    series: they showed its last figures for good."""
    state = AutoscalerState()
    body = example()
    state.track("ADDED", KEY, body)
    PIPELINE_LAG.labels(*KEY).set(120)
    DESIRED_REPLICAS.labels(*KEY).set(3)
    switched = copy.deepcopy(body)
    switched["spec"]["autoscaling"]["mode"] = "none"
    state.track("MODIFIED", KEY, switched)
    for gauge in (PIPELINE_LAG, DESIRED_REPLICAS):
        samples = [s for m in gauge.collect() for s in m.samples]
        assert [s for s in samples if s.labels["pipeline"] == KEY[1]] == []
    state.track("DELETED", KEY, switched)  # nothing left to remove: no error


class _Measured:
    """Records the pipeline it is asked to measure."""

    def __init__(self) -> None:
        self.pipelines: list[Any] = []

    async def evaluate(self, pipeline: Any, current: int, *, running: int) -> ScaleResult:
        self.pipelines.append(pipeline)
        decision = Decision(current, STEADY, "lag 0", lag=0)
        return ScaleResult(current, STEADY, "lag 0", 0, (), False, decision)


class _HeldEdit(_PipelineAndDeployment):
    """The spec names another group and topics than the workers' ConfigMap (the edit is
    held: a state change refused)."""

    def __init__(self, body: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__(body)
        self.config = config

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        if kind == "ConfigMap":
            return {"data": {"worker.json": json.dumps(self.config)}}
        return super().get(api_version, kind, namespace, name)


def test_a_held_edit_is_measured_as_the_workers_run() -> None:
    """A group edit held under refuse: the workers commit to the old group. Measured by the
    spec, the new group (no offsets) read as the whole retained log, and the builtin
    autoscaler scaled the held pipeline up (a review's finding). Measured by the workers'
    ConfigMap, as KEDA's held ScaledObject does."""
    body = example()
    body["spec"]["source"]["kafka"]["consumerGroup"] = "clicks-v2"
    body["spec"]["source"]["kafka"]["topics"] = ["clicks", "clicks-eu"]
    running = {"source": {"kafka": {"consumerGroup": "default.clicks", "topics": ["clicks"]}}}
    kube = _HeldEdit(body, running)
    ctx = SimpleNamespace(kube=kube, executor=ThreadPoolExecutor(1))
    measured = _Measured()

    async def reconcile(ctx: Any, key: tuple[str, str]) -> None:
        raise AssertionError("nothing to apply")

    asyncio.run(scale_once(ctx, measured, KEY, reconcile=reconcile))  # type: ignore[arg-type]
    kube.config = {"source": {"kafka": {"consumerGroup": "clicks-v2",
                                        "topics": ["clicks", "clicks-eu"]}}}  # fmt: skip
    asyncio.run(scale_once(ctx, measured, KEY, reconcile=reconcile))  # type: ignore[arg-type]
    ctx.executor.shutdown()
    held, rolled = measured.pipelines
    assert held.consumer_group == "default.clicks"
    assert held.spec.source.kafka.topics == ["clicks"]
    assert rolled.consumer_group == "clicks-v2"
    assert rolled.spec.source.kafka.topics == ["clicks", "clicks-eu"]


class _DeletedDuringTheWrite(_PipelineAndDeployment):
    """The pipeline is deleted while the decision's status write is on its way: the
    operator's index handles the DELETED event then (forget_series)."""

    def __init__(self, body: dict[str, Any], state: AutoscalerState) -> None:
        super().__init__(body)
        self.state = state

    def patch_status(self, namespace: str, name: str, patch: Any, version: Any = None) -> Any:
        super().patch_status(namespace, name, patch, version)
        self.state.track("DELETED", KEY, self.body)

    def create_event(self, event: Any) -> None:
        pass


def test_a_pipeline_deleted_during_a_decision_keeps_no_series() -> None:
    """The index removes a deleted pipeline's series; a decision being written meanwhile
    set them again after it, and they showed a pipeline that no longer exists, for good."""
    state = AutoscalerState()
    state.track("ADDED", KEY, example())
    kube = _DeletedDuringTheWrite(example(), state)
    ctx = SimpleNamespace(kube=kube, executor=ThreadPoolExecutor(1))

    async def reconcile(ctx: Any, key: tuple[str, str]) -> None:
        pass

    managed = state.intervals.__contains__
    round_ = scale_once(ctx, _ScaleUp(), KEY, reconcile=reconcile, managed=managed)  # type: ignore[arg-type]
    assert asyncio.run(round_) is not None
    ctx.executor.shutdown()
    assert kube.status_writes and KEY not in state.intervals
    for metric in (PIPELINE_LAG, DESIRED_REPLICAS, SCALING_DECISIONS):
        samples = [s for m in metric.collect() for s in m.samples]
        assert [s for s in samples if s.labels["pipeline"] == KEY[1]] == [], metric
