"""A new pipeline's first status (reconciler.FIRST_STATUS_DELAY_SECONDS): written when its
workers are ready, or once it is that old with what they are doing; anything wrong at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_testkit import SETTINGS, FakeKube, example_doc

from streamherd.operator.reconciler import FIRST_STATUS_DELAY_SECONDS, reconcile

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return CREATED + timedelta(seconds=seconds)


def new_pipeline(example: str = "01-clicks-local", **spec: Any) -> tuple[FakeKube, str]:
    kube = FakeKube()
    doc = example_doc(example)
    doc["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    doc["spec"].update(spec)
    body = kube.put(doc)
    return kube, body["metadata"]["name"]


def body_of(kube: FakeKube, name: str) -> dict[str, Any]:
    obj = kube.find("StreamPipeline", name)
    assert obj is not None
    return obj


def ready(kube: FakeKube, name: str) -> dict[str, Any]:
    return next(c for c in body_of(kube, name)["status"]["conditions"] if c["type"] == "Ready")


def test_starting_workers_get_their_first_status_once_the_delay_is_over() -> None:
    kube, name = new_pipeline()
    first = reconcile(body_of(kube, name), kube, SETTINGS, now=at(1))
    assert first.applied and first.status is None
    assert first.status_deferred == pytest.approx(FIRST_STATUS_DELAY_SECONDS - 1)
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=at(3))  # a Deployment event
    assert again.status is None
    assert again.status_deferred == pytest.approx(FIRST_STATUS_DELAY_SECONDS - 3)
    assert kube.status_patches == []
    late = reconcile(body_of(kube, name), kube, SETTINGS, now=at(FIRST_STATUS_DELAY_SECONDS))
    assert late.status is not None and late.status_deferred is None
    assert body_of(kube, name)["status"]["phase"] == "Pending"
    assert ready(kube, name)["reason"] == "WorkersNotReady"


def test_workers_ready_within_the_delay_give_one_status_write() -> None:
    kube, name = new_pipeline()
    reconcile(body_of(kube, name), kube, SETTINGS, now=at(1))
    kube.roll_out(name)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=at(2))
    assert result.status is not None and result.status_deferred is None
    assert ready(kube, name)["status"] == "True"
    assert len(kube.status_patches) == 1  # no "0 workers ready" before it


def test_an_invalid_spec_is_reported_at_once() -> None:
    kube, name = new_pipeline(replicas=-1)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=at(0))
    assert result.invalid and result.status is not None and result.status_deferred is None


def test_a_missing_secret_is_reported_at_once() -> None:
    kube, name = new_pipeline("03-orders-secure")  # its Secrets are not there
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=at(0))
    assert result.status is not None and result.status_deferred is None
    assert ready(kube, name)["reason"] == "SecretNotFound"


def test_a_suspended_pipeline_is_reported_at_once() -> None:
    kube, name = new_pipeline(suspend=True)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=at(0))
    assert result.status is not None and result.status_deferred is None


def test_a_clock_behind_the_api_servers_does_not_hold_the_status_back() -> None:
    kube, name = new_pipeline()
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=at(-30))
    assert result.status is not None and result.status_deferred is None


def test_a_pipeline_with_a_status_is_never_held_back() -> None:
    kube, name = new_pipeline()
    reconcile(body_of(kube, name), kube, SETTINGS, now=at(FIRST_STATUS_DELAY_SECONDS + 1))
    assert kube.status_patches  # Pending
    body_of(kube, name)["spec"]["replicas"] = 2  # a spec edit while still young (clock-wise)
    body_of(kube, name)["metadata"]["generation"] += 1
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=at(1))
    assert result.status is not None and result.status_deferred is None
