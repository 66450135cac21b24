"""A Deployment applied without spec.replicas (keda and hpa modes) keeps the live count
while the operator's server-side apply still owns the field: applied without a field its
only manager owned, the API server resets it to its default, 1 (a helper's finding)."""

from __future__ import annotations

from typing import Any

from streamherd.operator.builders.workload import replicas_kept

OPERATOR = "streamherd-operator"
DESIRED: dict[str, Any] = {"kind": "Deployment", "spec": {"template": {}}}


def live(*managed: dict[str, Any], replicas: int = 7) -> dict[str, Any]:
    return {"metadata": {"managedFields": list(managed)}, "spec": {"replicas": replicas}}


def applied(fields: dict[str, Any], manager: str = OPERATOR) -> dict[str, Any]:
    return {"manager": manager, "operation": "Apply", "fieldsV1": fields}


def test_the_count_is_kept_while_the_operator_owns_it() -> None:
    owned = live(applied({"f:spec": {"f:replicas": {}, "f:template": {}}}))
    assert replicas_kept(DESIRED, owned, OPERATOR)["spec"]["replicas"] == 7
    assert "replicas" not in DESIRED["spec"]  # the desired manifest is not changed


def test_the_count_is_left_to_the_hpa_once_it_wrote_it() -> None:
    hpa = {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
           "fieldsV1": {"f:spec": {"f:replicas": {}}}}  # fmt: skip
    mine = applied({"f:spec": {"f:template": {}}})
    assert "replicas" not in replicas_kept(DESIRED, live(mine, hpa), OPERATOR)["spec"]
    # Another manager's Apply, or an Update by the operator, is not the operator's apply.
    other = applied({"f:spec": {"f:replicas": {}}}, manager="kubectl")
    assert "replicas" not in replicas_kept(DESIRED, live(other), OPERATOR)["spec"]
    update = {**applied({"f:spec": {"f:replicas": {}}}), "operation": "Update"}
    assert "replicas" not in replicas_kept(DESIRED, live(update), OPERATOR)["spec"]


def test_a_desired_count_or_no_live_deployment_is_left_alone() -> None:
    counted = {"kind": "Deployment", "spec": {"replicas": 2}}
    owned = live(applied({"f:spec": {"f:replicas": {}}}))
    assert replicas_kept(counted, owned, OPERATOR) is counted
    assert replicas_kept(DESIRED, None, OPERATOR) is DESIRED
    odd = {"metadata": {"managedFields": [None, {"manager": OPERATOR, "operation": "Apply",
                                                 "fieldsV1": "x"}]}, "spec": {}}  # fmt: skip
    assert replicas_kept(DESIRED, odd, OPERATOR) is DESIRED
