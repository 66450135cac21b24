"""A Deployment applied without spec.replicas (keda and hpa modes) keeps the live count:
applied without a field its server-side apply alone owned, the API server resets it to its
default, 1 (a helper's finding; the real API server shows it in
tests/integration/operator/test_operator_pipelines.py). An HPA is never left at zero, and a
builtin pipeline keeps its live workers until the autoscaler's first decision (the whole
lifecycle: test_scaling_eras.py)."""

from __future__ import annotations

from typing import Any

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.workload import replicas_kept
from tests.unit.operator.operator_testkit import example_doc, pipeline_from

DESIRED: dict[str, Any] = {"kind": "Deployment", "spec": {"template": {}}}


def live(replicas: Any) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}}


def pipeline(mode: str, min_replicas: int = 1, **status: Any) -> StreamPipeline:
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["autoscaling"].update(mode=mode, minReplicas=min_replicas, maxReplicas=8)
    doc["status"] = status
    return pipeline_from(doc, namespace="default")


def test_the_live_count_is_applied_when_the_hpa_owns_it() -> None:
    assert replicas_kept(DESIRED, live(7), pipeline("hpa"))["spec"]["replicas"] == 7
    assert "replicas" not in DESIRED["spec"]  # the desired manifest is not changed


def test_a_desired_count_no_live_deployment_or_an_odd_count_is_left_alone() -> None:
    counted = {"kind": "Deployment", "spec": {"replicas": 2}}
    assert replicas_kept(counted, live(7), pipeline("none")) is counted
    assert replicas_kept(DESIRED, None, pipeline("hpa")) is DESIRED
    assert replicas_kept(DESIRED, live(None), pipeline("hpa")) is DESIRED
    assert replicas_kept(DESIRED, live(True), pipeline("hpa")) is DESIRED
    service = {"kind": "Service", "spec": {}}
    assert replicas_kept(service, live(7), pipeline("hpa")) is service


def test_zero_is_kedas_to_keep_and_never_an_hpas() -> None:
    # KEDA scales from zero itself; an HPA never does (a pipeline resumed from suspend, or
    # KEDA's zero before a switch to hpa): minReplicas.
    assert replicas_kept(DESIRED, live(0), pipeline("keda", 0)) is DESIRED
    assert replicas_kept(DESIRED, live(0), pipeline("hpa", 3))["spec"]["replicas"] == 3


def test_builtin_keeps_the_live_workers_until_its_first_decision() -> None:
    built = {"kind": "Deployment", "spec": {"replicas": 1}}
    assert replicas_kept(built, live(6), pipeline("builtin"))["spec"]["replicas"] == 6
    assert replicas_kept(built, live(12), pipeline("builtin"))["spec"]["replicas"] == 8  # max
    assert replicas_kept(built, live(0), pipeline("builtin")) is built  # none live: default
    decided = pipeline("builtin", desiredReplicas=1)
    assert replicas_kept(built, live(6), decided) is built
