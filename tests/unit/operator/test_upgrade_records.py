"""What an operator of an earlier version recorded is read by this one as it was meant.

An operator upgrade alone changes no state, rolls nothing it need not, and says nothing
new. Decision 0204 moved the fingerprint of pipelines with map steps before the window (and
0195 that of generator pipelines): the records an earlier operator left (its
`status.stateFingerprint`, the workers' ConfigMap's record of the last state change, the
restoreFrom its workers were given) name the running state by the earlier rules.
helper-113 ran earlier operators' reconciles and this one's over their objects and found:
the last reset's StateReset replaced by Compatible and its event posted again at every
reconcile; a restoreFrom already rolled out held as SnapshotMismatch. Here the earlier
records are made by renaming this version's to the earlier rules' names, the only
difference between them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from streamherd.operator.builders.meta import CONFIG_KEY, STATE_CHANGE_ANNOTATION
from streamherd.operator.reconciler import ReconcileMemo, ReconcileResult, reconcile
from streamherd.operator.upgrades import config_description
from streamherd.workers.fingerprint import RULES_2_KEYS, fingerprint
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of, example_doc

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME = "clicks-per-minute"


def window(spec: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = spec["processor"]["steps"][-1]["window"]
    return w


def with_a_map() -> dict[str, Any]:
    """Example 02, suspended (a reset takes no snapshot), with a map before its window that
    sets the field the window sums: its fingerprint moved with decision 0204."""
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["suspend"] = True
    doc["spec"]["upgrade"] = {"onStateChange": "reset"}
    steps = doc["spec"]["processor"]["steps"]
    steps.insert(len(steps) - 1, {"map": {"set": {"bytes": "bytes / 1024"}}})
    return doc


def settle(kube: FakeKube, memo: ReconcileMemo) -> list[ReconcileResult]:
    results = []
    for _ in range(2):
        results.append(reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo))
        kube.roll_out(NAME)
    return results


def earlier_name(kube: FakeKube) -> tuple[str, str]:
    """The running state's fingerprint by this version's rules and by the rules before."""
    described = config_description(kube.find("ConfigMap", f"{NAME}-config"))
    assert described is not None
    earlier = {k: v for k, v in described.items() if k not in RULES_2_KEYS}
    assert fingerprint(earlier) != fingerprint(described)
    return fingerprint(described), fingerprint(earlier)


def as_an_earlier_operator_left_it(kube: FakeKube) -> None:
    """The status and the ConfigMap's record name the state by the earlier rules."""
    now, before = earlier_name(kube)
    status = body_of(kube, NAME)["status"]
    assert status["stateFingerprint"] == now
    status["stateFingerprint"] = before
    config_map = kube.find("ConfigMap", f"{NAME}-config")
    assert config_map is not None
    annotations = config_map["metadata"]["annotations"]
    record = json.loads(annotations[STATE_CHANGE_ANNOTATION])
    assert record["fingerprint"] == now
    record["fingerprint"] = before
    annotations[STATE_CHANGE_ANNOTATION] = json.dumps(record)


def state_compatible(kube: FakeKube) -> dict[str, Any]:
    conds = body_of(kube, NAME)["status"]["conditions"]
    found: dict[str, Any] = next(c for c in conds if c["type"] == "StateCompatible")
    return found


def test_the_last_reset_an_earlier_operator_recorded_stays_said_once() -> None:
    kube, memo = FakeKube(), ReconcileMemo()
    kube.put(with_a_map())
    settle(kube, memo)
    body = body_of(kube, NAME)
    window(body["spec"])["size"] = "120s"
    body["metadata"]["generation"] += 1
    settle(kube, memo)
    reset = state_compatible(kube)
    assert reset["reason"] == "StateReset"
    as_an_earlier_operator_left_it(kube)
    for _ in range(4):  # a new operator process: no memo, then resyncs
        result = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=None)
        assert [e.reason for e in result.events] == [], result.events
        kept = state_compatible(kube)
        assert (kept["reason"], kept["message"]) == (reset["reason"], reset["message"])
        kube.roll_out(NAME)
    assert kube.find("ConfigMap", f"{NAME}-config") is not None
    assert CONFIG_KEY in (kube.find("ConfigMap", f"{NAME}-config") or {}).get("data", {})


def test_a_restore_an_earlier_operator_rolled_out_is_not_held_after_the_upgrade() -> None:
    """spec.state.restoreFrom kept after its restore rolled out, naming a volume snapshot by
    the earlier rules' fingerprint: judged again by this version's rules, the upgrade held
    it as SnapshotMismatch, and the next compatible edit too."""
    kube, memo = FakeKube(), ReconcileMemo()
    kube.put(with_a_map())
    settle(kube, memo)
    _, before = earlier_name(kube)
    kept = f"{before}-to-{before}-g2"  # a reset's kept snapshot, named by the earlier rules
    body = body_of(kube, NAME)
    body["spec"]["state"] = {"restoreFrom": kept}
    body["metadata"]["generation"] += 1
    # What the earlier operator applied for it: its workers were given the snapshot.
    config_map = kube.find("ConfigMap", f"{NAME}-config")
    assert config_map is not None
    config = json.loads(config_map["data"][CONFIG_KEY])
    config.setdefault("state", {})["restoreFrom"] = kept
    config_map["data"][CONFIG_KEY] = json.dumps(config)
    for edit in (None, "status < 500"):
        if edit is not None:  # a compatible edit after the upgrade
            body = body_of(kube, NAME)
            body["spec"]["processor"]["steps"][0]["filter"] = edit
            body["metadata"]["generation"] += 1
        results = settle(kube, ReconcileMemo())
        reasons = [e.reason for r in results for e in r.events]
        assert "SnapshotMismatch" not in reasons, reasons
        assert state_compatible(kube)["status"] == "True", state_compatible(kube)
        assert "pendingStateChanges" not in body_of(kube, NAME)["status"]


def test_the_restore_rule_needs_the_running_workers_to_have_been_given_the_snapshot() -> None:
    """The earlier rules' name of a state with a map before its window is also the plain
    window's (decision 0204): a restoreFrom the workers were not given is judged by this
    version's rules, and held."""
    doc = with_a_map()
    kube = FakeKube()
    kube.put(doc)
    settle(kube, ReconcileMemo())
    _, before = earlier_name(kube)
    body = body_of(kube, NAME)
    body["spec"]["state"] = {"restoreFrom": f"{before}-to-{before}-g2"}
    body["metadata"]["generation"] += 1
    results = settle(kube, ReconcileMemo())
    assert "SnapshotMismatch" in [e.reason for r in results for e in r.events]


def test_a_reset_of_a_generator_pipeline_rolls_without_a_kafka_snapshot() -> None:
    """A StreamPipelineSnapshot is kept in Kafka, and refused for a generator source: the
    reset of a running generator pipeline (example 01) asked for one and waited on its
    refusal for good (SnapshotFailed; helper-113's side finding). It rolls, and the workers
    keep what they discard in the checkpoint volume."""
    kube, memo = FakeKube(), ReconcileMemo()
    doc = example_doc("01-clicks-local")
    doc["spec"]["upgrade"] = {"onStateChange": "reset"}
    name = kube.put(doc)["metadata"]["name"]
    for _ in range(2):
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        kube.roll_out(name)
    body = body_of(kube, name)
    window(body["spec"])["size"] = "20s"
    body["metadata"]["generation"] += 1
    reasons = []
    for _ in range(2):
        result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        reasons += [e.reason for e in result.events]
        kube.roll_out(name)
    assert [o for o in kube.objects.values() if o["kind"] == "StreamPipelineSnapshot"] == []
    assert "SnapshotRequested" not in reasons and "StateReset" in reasons, reasons
    conds = body_of(kube, name)["status"]["conditions"]
    reset = next(c for c in conds if c["type"] == "StateCompatible")
    assert (reset["status"], reset["reason"]) == ("True", "StateReset")
