"""rollback auto (operator/rollback.py and the reconciler's use of it): the pure decision as
a table, then against FakeKube: the last good spec is kept once its workers are ready; an
edit whose rollout does not settle in time is rolled back to it (Deployment and ConfigMap as
they were, RolledBack condition, one Warning event) and stays rolled back until the next
edit, which is tried afresh. The real cluster: tests/e2e/test_lifecycle.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streamherd.operator.api.v1alpha1 import Condition
from streamherd.operator.builders.meta import INPUT_HASH_ANNOTATION
from streamherd.operator.reconciler import reconcile
from streamherd.operator.rollback import rollback_due, rollback_refusal
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc
from tests.unit.operator.test_upgrades import snapshot_ready

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def progressing(since: datetime, generation: int) -> list[Condition]:
    return [
        Condition(
            type="Progressing",
            status="True",
            reason="RollingOut",
            last_transition_time=since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            observed_generation=generation,
        )
    ]


def half_rolled(kube: FakeKube, name: str) -> None:
    """The rolled Deployment with one worker of two ready: its new pod is not scheduled."""
    rolled = kube.find("Deployment", name)
    assert rolled is not None
    rolled["status"] = {
        "observedGeneration": rolled["metadata"]["generation"],
        "replicas": 2,
        "readyReplicas": 1,
        "updatedReplicas": 1,
    }


@pytest.mark.parametrize(
    ("enabled", "status", "conditions", "seconds", "due"),
    [
        (True, {"lastGoodGeneration": 1}, progressing(T0, 2), 61, True),
        (True, {"lastGoodGeneration": 1}, progressing(T0, 2), 59, False),  # not yet
        (False, {"lastGoodGeneration": 1}, progressing(T0, 2), 61, False),  # off
        (True, {}, progressing(T0, 2), 61, False),  # nothing good to go back to
        (True, {"lastGoodGeneration": 2}, progressing(T0, 2), 61, False),  # it is the good one
        (True, {"lastGoodGeneration": 1}, progressing(T0, 1), 61, False),  # an older rollout
        (True, {"lastGoodGeneration": 1}, [], 61, False),  # not rolling out
        (True, {"lastGoodGeneration": 1, "rolledBackGeneration": 2}, [], 0, True),  # stays
    ],
)
def test_rollback_due(
    enabled: bool,
    status: dict[str, Any],
    conditions: list[Condition],
    seconds: int,
    due: bool,
) -> None:
    got = rollback_due(
        enabled=enabled,
        after="60s",
        generation=2,
        status=status,
        conditions=conditions,
        now=T0 + timedelta(seconds=seconds),
    )
    assert got is due


def settled_with_rollback(kube: FakeKube) -> str:
    """Example 02 with rollback auto after 60 s, rolled out: generation 1 is the last good."""
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["upgrade"] = {"rollback": "auto", "rollbackAfter": "60s"}
    name = str(kube.put(doc)["metadata"]["name"])
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    return name


def test_a_revision_that_never_settles_is_rolled_back_until_the_next_edit() -> None:
    kube = FakeKube()
    name = settled_with_rollback(kube)
    assert body_of(kube, name)["status"]["lastGoodGeneration"] == 1
    assert kube.find("ConfigMap", f"{name}-lastgood") is not None
    good = copy.deepcopy(kube.find("Deployment", name))
    assert good is not None

    # Generation 2 cannot be scheduled anywhere: its rollout never settles.
    body = body_of(kube, name)
    body["spec"]["pod"] = {"nodeSelector": {"no-such-node": "true"}}
    body["metadata"]["generation"] = 2
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    bad = copy.deepcopy(kube.find("Deployment", name))
    assert bad is not None and bad["spec"]["template"] != good["spec"]["template"]
    early = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=30))
    assert "RolledBack" not in [e.reason for e in early.events]

    late = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=61))
    assert [e.reason for e in late.events].count("RolledBack") == 1
    back = kube.find("Deployment", name)
    assert back is not None
    # What was applied is generation 1's Deployment again (FakeKube merges applies, so the
    # removed nodeSelector is checked by its hash here, and for real in the e2e test).

    def hash_of(d: dict[str, Any]) -> str:
        return str(d["metadata"]["annotations"][INPUT_HASH_ANNOTATION])

    assert hash_of(back) == hash_of(good) != hash_of(bad)
    status = body_of(kube, name)["status"]
    assert status["rolledBackGeneration"] == 2 and status["lastGoodGeneration"] == 1
    cond = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (cond["status"], cond["reason"]) == ("True", "RolledBack")
    assert "generation 2" in cond["message"] and "generation 1" in cond["message"]
    # It stays rolled back, and says so once.
    kube.roll_out(name)
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=90))
    assert "RolledBack" not in [e.reason for e in again.events]
    assert body_of(kube, name)["status"]["lastGoodGeneration"] == 1  # never the bad one

    # The next edit is tried afresh.
    body = body_of(kube, name)
    body["spec"]["pod"] = {"nodeSelector": {"kubernetes.io/os": "linux"}}
    body["metadata"]["generation"] = 3
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=100))
    tried = kube.find("Deployment", name)
    assert tried is not None
    assert tried["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert hash_of(tried) not in (hash_of(good), hash_of(bad))
    status = body_of(kube, name)["status"]
    assert status.get("rolledBackGeneration") is None


def test_an_edit_during_a_rollout_gets_its_own_rollback_after() -> None:
    """Generation 2 never settles; generation 3 is applied 50 s into its rollout. Its own
    60 s start with it: not rolled back 11 s after its edit, as when Progressing's
    transition time was carried over from generation 2 (the lifecycle property's find)."""
    kube = FakeKube()
    name = settled_with_rollback(kube)
    for generation, at, selector in ((2, 0, "no-such-node"), (3, 50, "no-such-node-either")):
        body = body_of(kube, name)
        body["spec"]["pod"] = {"nodeSelector": {selector: "true"}}
        body["metadata"]["generation"] = generation
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=at))
        half_rolled(kube, name)
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=at + 1))
    early = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=61))
    assert "RolledBack" not in [e.reason for e in early.events]
    assert body_of(kube, name)["status"].get("rolledBackGeneration") is None
    late = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=112))
    assert [e.reason for e in late.events].count("RolledBack") == 1
    assert body_of(kube, name)["status"]["rolledBackGeneration"] == 3


@pytest.mark.parametrize(
    ("image", "good_image", "refused"),
    [
        ("streamherd:1.0", "streamherd:1.0", False),  # the same image reads its own state
        ("streamherd:1.1", "streamherd:1.0", True),  # back to an older image
        ("streamherd:1.0", "streamherd:1.1", True),  # or to any other: unknown formats
        ("reg/a@sha256:aa", "reg/a:1.0", True),  # the same build by digest: not known
    ],
)
def test_rollback_refusal(image: str, good_image: str, refused: bool) -> None:
    why = rollback_refusal(
        image=image, good_image=good_image, generation=3, good_generation=2, after="5m"
    )
    assert (why is not None) is refused
    if why is not None:
        assert image in why and good_image in why and "generation 2" in why
        assert "state version" in why and "spec.image" in why


def test_a_revision_of_another_image_is_not_rolled_back_and_says_why() -> None:
    """Generation 2 changes the worker image and never settles: a rollback would hand its
    partitions to workers of the old image, which may not read the state the new ones
    checkpointed (decision 0156). The operator leaves it, says so in RolledBack=False with
    reason RollbackRefused and one Warning event, keeps generation 1 as the last good, and
    the next edit is tried afresh as ever."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["upgrade"] = {"rollback": "auto", "rollbackAfter": "60s"}
    doc["spec"]["image"] = "example.org/streamherd:1.0"
    name = kube.put(doc)["metadata"]["name"]
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    assert body_of(kube, name)["status"]["lastGoodGeneration"] == 1

    body = body_of(kube, name)
    body["spec"]["image"] = "example.org/streamherd:1.1"
    body["metadata"]["generation"] = 2
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)
    bad = copy.deepcopy(kube.find("Deployment", name))
    assert bad is not None

    late = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=61))
    assert [e.reason for e in late.events].count("RollbackRefused") == 1
    assert "RolledBack" not in [e.reason for e in late.events]
    kept = kube.find("Deployment", name)
    assert kept is not None
    assert (
        kept["metadata"]["annotations"][INPUT_HASH_ANNOTATION]
        == (bad["metadata"]["annotations"][INPUT_HASH_ANNOTATION])
    )
    container = kept["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "example.org/streamherd:1.1"
    status = body_of(kube, name)["status"]
    assert status.get("rolledBackGeneration") is None and status["lastGoodGeneration"] == 1
    cond = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (cond["status"], cond["reason"]) == ("False", "RollbackRefused")
    assert "example.org/streamherd:1.0" in cond["message"] and "state" in cond["message"]
    # Said once, not on every reconcile.
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=90))
    assert "RollbackRefused" not in [e.reason for e in again.events]

    # The next edit (back to the old image, by hand) is tried afresh.
    body = body_of(kube, name)
    body["spec"]["image"] = "example.org/streamherd:1.0"
    body["metadata"]["generation"] = 3
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=100))
    cond = next(c for c in body_of(kube, name)["status"]["conditions"] if c["type"] == "RolledBack")
    assert (cond["status"], cond["reason"]) == ("False", "CurrentSpec")


def test_a_revision_that_reset_the_state_is_not_rolled_back_and_says_why() -> None:
    """Generation 2 resets the state (a window edit, onStateChange reset) and never settles.
    Going back to generation 1 would change the state again, which the last good spec's
    policy (refuse) holds: nothing would roll back. The operator says so (RolledBack=False,
    RollbackRefused, one Warning event) and judges the spec's own generation, whose reset
    stands (StateCompatible stays StateReset). Before, it reported a rollback
    (RolledBack=True, rolledBackGeneration 2) and StateChangeRefused, and applied nothing."""
    kube = FakeKube()
    name = settled_with_rollback(kube)
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]
    stored = kube.find("StreamPipeline", name)
    assert stored is not None
    stored["spec"]["processor"]["steps"][-1]["window"]["size"] = "30s"
    stored["spec"]["upgrade"]["onStateChange"] = "reset"
    stored["spec"]["pod"] = {"nodeSelector": {"no-such-node": "true"}}
    stored["metadata"]["generation"] = 2
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)  # requests the reset's snapshot
    snapshot_ready(kube, f"{name}-reset-g2", old_fp)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=5))  # rolls it
    # Its new pod cannot be scheduled: the rollout goes on, one worker of two ready.
    half_rolled(kube, name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=10))
    rolled = copy.deepcopy(kube.find("Deployment", name))
    late = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=120))
    assert [e.reason for e in late.events] == ["RollbackRefused"]
    status = body_of(kube, name)["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["RolledBack"]["status"], conds["RolledBack"]["reason"]) == (
        "False",
        "RollbackRefused",
    )
    assert "window.size" in conds["RolledBack"]["message"]
    assert status.get("rolledBackGeneration") is None and status["lastGoodGeneration"] == 1
    assert conds["StateCompatible"]["reason"] == "StateReset"
    assert kube.find("Deployment", name) == rolled


def test_a_revision_that_reset_the_state_is_not_rolled_back_under_a_resetting_last_good() -> None:
    """As above, with the last good spec's own onStateChange reset (an earlier edit set it):
    going back would reset the state again (the last good spec's decision is a reset, not a
    hold), which a rollback never does either. The operator says so (RollbackRefused) and
    the generation's replay stands. Before, only a hold counted as a state change: the
    rollback reset the state (a StateReset of a generation whose spec says replay, with no
    snapshot of the state it discarded); the lifecycle property found it."""
    kube = FakeKube()
    name = settled_with_rollback(kube)
    stored = kube.find("StreamPipeline", name)
    assert stored is not None

    # Generation 2 resets (a window edit, onStateChange reset) and settles: the last good.
    fp1 = body_of(kube, name)["status"]["stateFingerprint"]
    stored["spec"]["processor"]["steps"][-1]["window"]["aggregates"].reverse()
    stored["spec"]["upgrade"]["onStateChange"] = "reset"
    stored["metadata"]["generation"] = 2
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0)  # requests the snapshot
    snapshot_ready(kube, f"{name}-reset-g2", fp1)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=1))
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=2))
    status = body_of(kube, name)["status"]
    fp2 = status["stateFingerprint"]
    assert status["lastGoodGeneration"] == 2 and fp2 != fp1
    # Generation 3 replays back to the first state and never settles.
    stored = kube.find("StreamPipeline", name)
    assert stored is not None
    stored["spec"]["processor"]["steps"][-1]["window"]["aggregates"].reverse()
    stored["spec"]["upgrade"].update(onStateChange="replay", replayFrom="2026-01-01T00:00:00Z")
    stored["spec"]["pod"] = {"nodeSelector": {"no-such-node": "true"}}
    stored["metadata"]["generation"] = 3
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=3))
    snapshot_ready(kube, f"{name}-replay-g3", fp2)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=4))
    assert body_of(kube, name)["status"]["stateFingerprint"] == fp1  # replayed
    half_rolled(kube, name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=10))
    config = copy.deepcopy(kube.find("ConfigMap", f"{name}-config"))
    late = reconcile(body_of(kube, name), kube, SETTINGS, now=T0 + timedelta(seconds=120))
    assert [e.reason for e in late.events] == ["RollbackRefused"]
    status = body_of(kube, name)["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["RolledBack"]["reason"] == "RollbackRefused"
    assert "window.aggregates" in conds["RolledBack"]["message"]
    assert status.get("rolledBackGeneration") is None and status["lastGoodGeneration"] == 2
    assert conds["StateCompatible"]["reason"] == "StateReplay"
    assert status["stateFingerprint"] == fp1
    assert kube.find("ConfigMap", f"{name}-config") == config
