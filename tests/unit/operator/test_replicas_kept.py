"""A Deployment applied without spec.replicas (keda and hpa modes) keeps the live count:
applied without a field its server-side apply alone owned, the API server resets it to its
default, 1 (a helper's finding; the real API server shows it in
tests/integration/operator/test_operator_pipelines.py)."""

from __future__ import annotations

from typing import Any

from streamherd.operator.builders.workload import replicas_kept

DESIRED: dict[str, Any] = {"kind": "Deployment", "spec": {"template": {}}}


def live(replicas: Any) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}}


def test_the_live_count_is_applied_when_the_hpa_owns_it() -> None:
    assert replicas_kept(DESIRED, live(7))["spec"]["replicas"] == 7
    assert "replicas" not in DESIRED["spec"]  # the desired manifest is not changed


def test_a_desired_count_no_live_deployment_or_zero_is_left_alone() -> None:
    counted = {"kind": "Deployment", "spec": {"replicas": 2}}
    assert replicas_kept(counted, live(7)) is counted
    assert replicas_kept(DESIRED, None) is DESIRED
    # An HPA never scales up from 0 (a pipeline resumed from suspend): the default, 1.
    assert replicas_kept(DESIRED, live(0)) is DESIRED
    assert replicas_kept(DESIRED, live(None)) is DESIRED
    assert replicas_kept(DESIRED, live(True)) is DESIRED
    service = {"kind": "Service", "spec": {}}
    assert replicas_kept(service, live(7)) is service
