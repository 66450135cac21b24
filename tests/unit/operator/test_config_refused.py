"""The workers' ConfigMap refused by the API server for what it holds (422, an admission
policy's 403): nothing after it is applied and no roll is reported.

The workers read their ConfigMap at start and a new Deployment template restarts them, so
the Deployment applied after a refused ConfigMap rolled them onto the config the server
kept, under the new one's hash; and the status said the new state ran (its fingerprint, a
StateReset event, Ready for the generation, the kept snapshot listed) while the workers ran
the old one (a helper's finding, session 25). The harness is the lifecycle property's
world: the operator's reconcile against a FakeKube whose writes can be refused."""

from __future__ import annotations

import pytest

from streamherd.operator.kube import ApiError
from streamherd.operator.upgrades import config_description
from streamherd.workers.fingerprint import fingerprint
from tests.unit.operator import test_lifecycle_property as life
from tests.unit.operator.operator_testkit import Fault, WriteVerb


@pytest.mark.parametrize("status", [422, 403])
def test_a_refused_config_rolls_nothing_and_says_so(status: int) -> None:
    world = life.World(life.LifecycleKube())
    world.kube.world = world  # type: ignore[attr-defined]
    world.kube.fault = world.fault
    world.kube.put(life.Base().doc())
    life.settle(world)
    deployment = world.kube.find("Deployment", life.NAME)
    assert deployment is not None
    template = deployment["spec"]["template"]["metadata"]["annotations"]
    config = f"ConfigMap/{life.NAME}-config"

    def refuse(n: int, verb: WriteVerb, what: str) -> Fault | None:
        if verb == "apply" and what == config:
            return ("refuse", ApiError(status, "Invalid", "ConfigMap is invalid: data: Too long"))
        return None

    life.apply_edit(world, ("reorder", None, "reset"))  # a state change, reset
    world.kube.fault = refuse
    for _ in range(8):
        life.one_round(world)
    body = world.body()
    assert body is not None
    status_ = body["status"]
    described = config_description(world.kube.find("ConfigMap", f"{life.NAME}-config"))
    assert described is not None
    assert status_["stateFingerprint"] == fingerprint(described)  # what the workers run
    conditions = {c["type"]: c for c in status_["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "ApplyFailed",
    )
    assert config in conditions["Degraded"]["message"]
    after = world.kube.find("Deployment", life.NAME)
    assert after is not None
    assert after["spec"]["template"]["metadata"]["annotations"] == template  # not rolled
    reasons = [event.reason for _, event in world.events]
    assert "StateReset" not in reasons
    listed = [s["name"] for s in status_.get("snapshots") or []]
    assert not any("-to-" in name for name in listed), listed  # no kept snapshot listed
    # StateCompatible says the edit was not applied (it kept the previous generation's
    # condition, e.g. TakingSnapshot, as if something were under way).
    state = conditions["StateCompatible"]
    assert (state["status"], state["reason"]) == ("Unknown", "NotApplied"), state
    assert state["observedGeneration"] == body["metadata"]["generation"]
    assert fingerprint(described) in state["message"], state
