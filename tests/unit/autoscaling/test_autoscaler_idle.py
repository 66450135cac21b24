"""The autoscaler's side of an idle pipeline: no write, and little work per poll.

A steady decision with the lag already in status writes nothing; the parsed pipeline is
reused while its resourceVersion stays (parsing every poll was most of the operator's idle
CPU at 1000 pipelines); the index (fed by the operator's one on.event handler) follows
pipelines that become, stay or stop being builtin-managed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling.decision import STEADY, Decision
from streamherd.operator.autoscaling.handlers import (
    AutoscalerState,
    parse_cached,
    scale_once,
    status_patch,
)
from streamherd.operator.autoscaling.poller import ScaleResult

ROOT = Path(__file__).resolve().parents[3]
KEY = ("default", "clicks-per-minute")


def example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples/02-clicks-per-minute.yaml").read_text())
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
