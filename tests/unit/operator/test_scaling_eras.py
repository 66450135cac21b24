"""The worker count over any sequence of edits between scaling modes, suspends, bounds and
scaling decisions: each mode owns the count in its own era, and nothing of an earlier era
leaks into a later one (a helper's findings: a switch back to builtin restarted the workers
at the count the autoscaler had decided an era before; a switch from none to builtin dropped
six workers to one; KEDA's zero before a switch to hpa stayed for good, since an HPA never
scales up from zero).

The real reconcile (operator/reconciler.py) runs against the test kit's API server after
each step; the Deployment controller is the kit's ``roll_out``, the autoscaler's decisions
are its status writes, and an HPA's or KEDA's are writes of the Deployment's count. The
rule the model states, after each reconcile:

- suspended: 0 workers;
- none: ``spec.replicas``;
- hpa or keda: the count the scaler left (KEDA's zero included), except that an HPA is
  never left at zero: ``minReplicas`` then;
- builtin: the autoscaler's last decision in this builtin era, clamped to the bounds; before
  its first, the live workers' count (clamped), or ``max(minReplicas, 1)`` when there are
  none; a builtin era ends when the mode changes, not at a suspend.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamherd.operator.reconciler import reconcile
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

KEDA = ("keda.sh/v1alpha1", "ScaledObject")
KEDA_AUTH = ("keda.sh/v1alpha1", "TriggerAuthentication")
MAX = 6

STEP = st.one_of(
    st.tuples(st.just("mode"), st.sampled_from(["builtin", "none", "hpa", "keda"])),
    st.tuples(st.just("suspend"), st.booleans()),
    st.tuples(st.just("replicas"), st.integers(0, MAX)),
    st.tuples(st.just("min"), st.integers(0, 3)),
    st.tuples(st.just("decide"), st.integers(0, MAX)),
    st.tuples(st.just("scaler"), st.integers(0, MAX)),
)


class Model:
    """What the count should be, from the steps alone."""

    def __init__(self) -> None:
        self.mode, self.suspend, self.replicas, self.min = "builtin", False, 1, 1
        self.decision: int | None = None  # the autoscaler's, in this builtin era

    def clamp(self, n: int) -> int:
        return max(self.min, min(MAX, n))

    def expected(self, live: int | None) -> int:
        if self.suspend:
            return 0
        if self.mode == "none":
            return self.replicas
        if self.mode == "keda":
            assert live is not None
            return live
        if self.mode == "hpa":
            assert live is not None
            return live if live > 0 else max(self.min, 1)
        if self.decision is not None:
            return self.clamp(self.decision)
        return self.clamp(live) if live else self.clamp(max(self.min, 1))


def apply_step(kube: FakeKube, name: str, model: Model, step: tuple[str, Any]) -> None:
    what, value = step
    obj = kube.find("StreamPipeline", name)
    assert obj is not None
    spec, scaling = obj["spec"], obj["spec"]["autoscaling"]
    if what == "decide":  # the autoscaler decides only what it manages
        if model.mode == "builtin" and not model.suspend:
            kube.patch_status("default", name, {"desiredReplicas": value})
            model.decision = value
        return
    if what == "scaler":  # the HPA or KEDA sets the count (an HPA never to zero)
        deployment = kube.find("Deployment", name)
        if model.mode in ("hpa", "keda") and not model.suspend and deployment is not None:
            deployment["spec"]["replicas"] = max(value, 1) if model.mode == "hpa" else value
            kube.roll_out(name)
        return
    if what == "mode":
        if value != model.mode:
            model.decision = None  # a new era
        model.mode = scaling["mode"] = value
        if value == "hpa" and model.min == 0:  # an HPA's minReplicas is at least 1
            model.min = scaling["minReplicas"] = 1
    elif what == "suspend":
        model.suspend = spec["suspend"] = value
    elif what == "replicas":
        model.replicas = spec["replicas"] = value
    elif what == "min":
        if model.mode == "hpa" and value == 0:
            return
        model.min = scaling["minReplicas"] = value
    obj["metadata"]["generation"] += 1


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, max_size=12))
@example([("decide", 5), ("mode", "none"), ("replicas", 2), ("mode", "builtin")])
@example([("mode", "none"), ("replicas", 6), ("mode", "builtin")])
@example([("min", 0), ("mode", "keda"), ("scaler", 0), ("mode", "hpa")])
@example([("decide", 5), ("suspend", True), ("mode", "none"), ("mode", "builtin"),
          ("suspend", False)])  # fmt: skip
def test_each_scaling_era_owns_the_count(steps: list[tuple[str, Any]]) -> None:
    kube = FakeKube(served={KEDA, KEDA_AUTH})
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["replicas"] = 1
    doc["spec"]["autoscaling"].update(mode="builtin", minReplicas=1, maxReplicas=MAX)
    name = kube.put(doc)["metadata"]["name"]
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    model = Model()

    def reconciled() -> None:
        for _ in range(2):  # the first applies, the second sees it rolled out
            clock[0] += timedelta(minutes=1)
            result = reconcile(body_of(kube, name), kube, SETTINGS, now=clock[0])
            assert result.invalid is None, result.invalid
            kube.roll_out(name)

    reconciled()
    for step in steps:
        deployment = kube.find("Deployment", name)
        assert deployment is not None
        live = deployment["spec"].get("replicas")
        apply_step(kube, name, model, step)
        live = kube.find("Deployment", name)["spec"].get("replicas")  # type: ignore[index]
        reconciled()
        count = kube.find("Deployment", name)["spec"].get("replicas")  # type: ignore[index]
        assert count == model.expected(live), (step, live, count, body_of(kube, name)["status"])
        status = body_of(kube, name)["status"]
        if model.mode != "builtin":  # the autoscaler's era is over: its keys are gone
            assert "desiredReplicas" not in status and "lag" not in status, status


@pytest.mark.parametrize(
    ("before", "after"),
    [("builtin", "keda"), ("keda", "none"), ("builtin", "hpa"), ("hpa", "keda"), ("keda", "hpa")],
)
def test_a_held_edit_leaves_the_count_owner_as_it_is(before: str, after: str) -> None:
    """An edit the spec's policy holds (a state change under `onStateChange: refuse`) that
    also switches the scaling mode leaves the workers' count owner as it is, as it leaves
    their Deployment: a ScaledObject applied meanwhile could scale to zero the workers a
    reset's snapshot waits for, and one deleted stops scaling workers that still run the
    old spec (a helper's finding)."""
    kube = FakeKube(served={KEDA, KEDA_AUTH})
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["autoscaling"].update(mode=before, minReplicas=1, maxReplicas=MAX)
    doc["spec"]["upgrade"] = {"onStateChange": "refuse"}
    name = kube.put(doc)["metadata"]["name"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(2):
        reconcile(body_of(kube, name), kube, SETTINGS, now=now)
        kube.roll_out(name)
    owners = {kind: kube.find(kind, name) for kind in ("HorizontalPodAutoscaler", "ScaledObject")}
    obj = kube.find("StreamPipeline", name)
    assert obj is not None
    obj["spec"]["autoscaling"]["mode"] = after
    obj["spec"]["processor"]["steps"][-1]["window"]["aggregates"].reverse()  # held
    obj["metadata"]["generation"] += 1
    for _ in range(2):
        now += timedelta(minutes=1)
        reconcile(body_of(kube, name), kube, SETTINGS, now=now)
        kube.roll_out(name)
    state = {c["type"]: c["reason"] for c in body_of(kube, name)["status"]["conditions"]}
    assert state["StateCompatible"] == "StateChangeRefused", state
    assert {kind: kube.find(kind, name) for kind in owners} == owners


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rolled_back(
    kube: FakeKube, spec: dict[str, Any], edit: dict[str, Any], decided: int | None
) -> str:
    """A pipeline of ``spec`` (its autoscaling merged), settled (the autoscaler having
    ``decided`` its count, when given), then an edit of ``edit`` (its autoscaling merged)
    whose workers never get ready, rolled back by `rollback: auto`; its name."""
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["upgrade"] = {"rollback": "auto", "rollbackAfter": "60s"}
    doc["spec"]["autoscaling"].update(minReplicas=1, maxReplicas=8, **spec.pop("autoscaling"))
    doc["spec"].update(spec)
    name = str(kube.put(doc)["metadata"]["name"])
    for _ in range(2):
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
        kube.roll_out(name)
    if decided is not None:
        kube.patch_status("default", name, {"desiredReplicas": decided})
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    obj = kube.find("StreamPipeline", name)
    assert obj is not None
    obj["spec"]["autoscaling"].update(edit.pop("autoscaling"))
    obj["spec"].update(edit, pod={"nodeSelector": {"no-such-node": "true"}})  # never ready
    obj["metadata"]["generation"] += 1
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=61))
    assert "RolledBack" in [e.reason for e in result.events]
    return name


def test_a_rollback_across_a_mode_switch_keeps_the_workers() -> None:
    """builtin (decided 5) -> an edit to `none` with 3 replicas that never settles -> rolled
    back to the builtin spec. The era is judged by the spec the children are built from,
    the last good one: the rolled-back builtin era starts from the 3 live workers. Judged by
    the user's spec (none), nothing seeded it, and it dropped to one (a review's finding)."""
    kube = FakeKube()
    name = rolled_back(
        kube, {"autoscaling": {"mode": "builtin"}},
        {"autoscaling": {"mode": "none"}, "replicas": 3}, decided=5,
    )  # fmt: skip
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=62))
    deployment = kube.find("Deployment", name)
    assert deployment is not None and deployment["spec"]["replicas"] == 3


def test_a_rollback_to_none_keeps_what_the_autoscaler_writes_for_the_edited_spec() -> None:
    """none (3) -> an edit to builtin that never settles -> rolled back to none. The
    autoscaler follows the user's spec (builtin) and writes its count; the reconciler, which
    builds from the last good spec (none), must not remove it at every reconcile (a review's
    finding: a write at every poll and a removal at every reconcile, for the rollback's
    whole length)."""
    kube = FakeKube()
    name = rolled_back(
        kube, {"autoscaling": {"mode": "none"}, "replicas": 3},
        {"autoscaling": {"mode": "builtin"}}, decided=None,
    )  # fmt: skip
    kube.patch_status("default", name, {"desiredReplicas": 5, "lag": 900})  # the autoscaler
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=62))
    status = body_of(kube, name)["status"]
    assert status.get("desiredReplicas") == 5 and status.get("lag") == 900, status
    deployment = kube.find("Deployment", name)
    assert deployment is not None and deployment["spec"]["replicas"] == 3  # the none spec's
