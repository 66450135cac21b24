"""Upgrades that look before they roll (operator/upgrades.py and the reconciler's use of it).

The pure decision, as a table over every class of state edit and every policy, plus a
property over generated specs; then the reconciler against FakeKube: a refused edit leaves
the ConfigMap and Deployment exactly as they were and says why once; reset and replay roll
with the policy in the WorkerConfig; compatible edits roll as before.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.api.v1alpha1 import Upgrade
from streamherd.operator.builders.meta import CONFIG_KEY
from streamherd.operator.builders.worker_config import build_config_map
from streamherd.operator.kube import ApiError
from streamherd.operator.reconciler import ReconcileMemo, reconcile
from streamherd.operator.snapshots import snapshot_topics
from streamherd.operator.upgrades import (
    STATE_COMPATIBLE,
    config_description,
    decide,
    removed_sources,
)
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.config import ProcessorConfig, topic_matcher
from streamherd.workers.fingerprint import describe, fingerprint
from tests.unit.operator.operator_testkit import (
    SETTINGS,
    FakeKube,
    Fault,
    WriteVerb,
    body_of,
    example_doc,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)

WINDOW: dict[str, Any] = {
    "keyBy": "page",
    "type": "hopping",
    "size": "60s",
    "slide": "30s",
    "eventTime": {"field": "ts"},
    "aggregates": [
        {"name": "clicks", "function": "count"},
        {"name": "bytes", "function": "sum", "expression": "bytes"},
        {"name": "slowest", "function": "max", "expression": "latency_ms"},
    ],
}


def described(change: Any = None, steps_before: list[dict[str, Any]] | None = None) -> Any:
    window = copy.deepcopy(WINDOW)
    if change is not None:
        change(window)
    return describe(
        ProcessorConfig.model_validate({"steps": [*(steps_before or []), {"window": window}]})
    )


def aggs(w: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = w["aggregates"]
    return out


# Each class of incompatible edit the issue names, with the field the condition must name.
EDITS = {
    "aggregate added": (
        lambda w: aggs(w).append({"name": "n", "function": "min", "expression": "x"}),
        "window.aggregates: added n",
    ),
    "aggregate removed": (lambda w: aggs(w).pop(), "window.aggregates: removed slowest"),
    "aggregates reordered": (lambda w: aggs(w).reverse(), "window.aggregates: reordered"),
    "function changed": (
        lambda w: aggs(w)[1].update(function="avg"),
        "window.aggregates[bytes].function: sum -> avg",
    ),
    "size": (lambda w: w.update(size="120s"), "window.size: 60000 -> 120000"),
    "slide": (lambda w: w.update(slide="20s"), "window.slide: 30000 -> 20000"),
    "keyBy": (lambda w: w.update(keyBy="user"), "window.keyBy: page -> user"),
    "window type": (lambda w: (w.update(type="tumbling"), w.pop("slide")), "window.type"),
}
POLICIES = {
    "refuse": ("hold", "False", "StateChangeRefused"),
    "reset": ("reset", "True", "StateReset"),
    "replay": ("replay", "True", "StateReplay"),
}


def policy(name: str) -> Upgrade:
    extra = {"replayFrom": "2026-01-01T00:00:00Z"} if name == "replay" else {}
    return Upgrade.model_validate({"onStateChange": name, **extra})


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_incompatible_edit_follows_the_policy(edit: str, name: str) -> None:
    change, field = EDITS[edit]
    running, desired = described(), described(change)
    decision = decide(running, desired, policy(name), generation=7)
    action, status, reason = POLICIES[name]
    assert decision.action == action
    assert (decision.condition.status, decision.condition.reason) == (status, reason)
    assert field in decision.condition.message and "spec generation 7" in decision.condition.message
    assert decision.event is not None and decision.event[1] == reason
    assert any(c.startswith(field) for c in decision.changes)
    # Held: the workers keep the running fingerprint; otherwise they take the new one.
    expected = fingerprint(running) if action == "hold" else fingerprint(desired)
    assert decision.fingerprint == expected
    assert decision.desired_fingerprint == fingerprint(desired)


COMPATIBLE = {
    "nothing": None,
    "spacing in an expression": lambda w: aggs(w)[2].update(expression=" latency_ms "),
    "size written in minutes": lambda w: w.update(size="1m"),
}


@pytest.mark.parametrize("edit", sorted(COMPATIBLE))
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_compatible_edits_roll_whatever_the_policy(edit: str, name: str) -> None:
    decision = decide(described(), described(COMPATIBLE[edit]), policy(name))
    assert (decision.action, (decision.condition.status, decision.condition.reason)) == (
        "roll",
        ("True", "Compatible"),
    )
    assert decision.event is None and decision.changes == ()


def test_a_filter_before_the_window_is_compatible() -> None:
    edited = described(steps_before=[{"filter": "status < 500"}])
    assert decide(described(), edited, policy("refuse")).action == "roll"


def test_nothing_running_or_nothing_stateful_rolls() -> None:
    stateless = describe(ProcessorConfig.model_validate({"steps": [{"filter": "x > 1"}]}))
    for running in (None, stateless):
        decision = decide(running, described(), policy("refuse"))
        assert decision.action == "roll" and decision.fingerprint == fingerprint(described())


procs = st.builds(
    lambda key, size, order, fn: {
        "keyBy": key,
        "size": size,
        "aggregates": [
            {"name": "a", "function": "count"},
            {"name": "b", "function": fn, "expression": "x"},
        ][:: 1 if order else -1],
    },
    st.sampled_from(["user", "page"]),
    st.sampled_from(["10s", "60s", "1m"]),
    st.booleans(),
    st.sampled_from(["sum", "avg"]),
)


@settings(max_examples=200, deadline=None)
@given(procs, procs, st.sampled_from(sorted(POLICIES)))
def test_hold_exactly_when_refused_and_different(
    old: dict[str, Any], new: dict[str, Any], name: str
) -> None:
    running = describe(ProcessorConfig.model_validate({"steps": [{"window": old}]}))
    desired = describe(ProcessorConfig.model_validate({"steps": [{"window": new}]}))
    decision = decide(running, desired, policy(name))
    differs = fingerprint(running) != fingerprint(desired)
    assert (decision.action == "hold") == (differs and name == "refuse")
    assert (decision.action == "roll") == (not differs)
    assert bool(decision.changes) == differs


def test_an_unreadable_config_map_is_nothing_known() -> None:
    assert config_description(None) is None
    assert config_description({"data": {"worker.json": "{not json"}}) is None
    assert config_description({"data": {}}) is None
    # Another operator version's WorkerConfig: its processor still decides.
    doc = {"apiVersion": "elsewhere", "processor": {"steps": [{"window": WINDOW}]}}
    assert config_description({"data": {"worker.json": json.dumps(doc)}}) == described()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["auto", "always", "never"]),
    st.sampled_from([["clicks"], ["clicks-eu", "clicks-us"]]),
    st.sampled_from([None, "page", "user"]),
    st.sampled_from([(), ("runtime",), ("checkpoint",), ("repartition",)]),
    st.sampled_from(["someNewKnob", "apiRevision"]),
)
def test_another_versions_config_keeps_its_repartition(
    repartition: str,
    topics: list[str],
    keyed_by: str | None,
    where: tuple[str, ...],
    knob: str,
) -> None:
    """A WorkerConfig of another operator version (a field this one does not know) describes
    the same state as this version's config of the same spec: its repartition topic is part
    of it, else an unchanged spec looks like a repartition change and is refused."""
    doc = example_doc("02-clicks-per-minute")
    doc["metadata"]["namespace"] = "default"
    doc["spec"]["source"]["kafka"]["topics"] = topics
    if keyed_by is not None:
        doc["spec"]["source"]["kafka"]["keyedBy"] = keyed_by
    window_of(doc["spec"])["repartition"] = repartition
    pipeline, problems = parse_pipeline(doc)
    assert pipeline is not None and not problems
    config_map = build_config_map(pipeline, SETTINGS)
    want = config_description(config_map)
    assert want is not None
    config = json.loads(config_map["data"][CONFIG_KEY])
    target = config
    for key in where:
        target = target.get(key) or target  # (no repartition: the top level)
    target[knob] = 1  # unknown here: the strict model refuses it, the fallback reads it
    have = config_description({"data": {CONFIG_KEY: json.dumps(config)}})
    assert have == want
    assert decide(have, want, Upgrade()).action == "roll"


# --------------------------------------------------------------------------- reconciler


def running_pipeline() -> tuple[FakeKube, str, ReconcileMemo]:
    kube = FakeKube()
    name = kube.put(example_doc("02-clicks-per-minute"))["metadata"]["name"]
    memo = ReconcileMemo()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    return kube, name, memo


def edit(kube: FakeKube, name: str, change: Any) -> None:
    body = body_of(kube, name)
    change(body["spec"])
    body["metadata"]["generation"] += 1


def window_of(spec: dict[str, Any]) -> dict[str, Any]:
    w: dict[str, Any] = spec["processor"]["steps"][-1]["window"]
    return w


def children(kube: FakeKube, name: str) -> tuple[Any, Any]:
    return copy.deepcopy(kube.find("ConfigMap", f"{name}-config")), copy.deepcopy(
        kube.find("Deployment", name)
    )


def condition(kube: FakeKube, name: str, type_: str) -> dict[str, Any]:
    conds = body_of(kube, name)["status"]["conditions"]
    return next(c for c in conds if c["type"] == type_)


def test_a_refused_edit_leaves_the_workers_exactly_as_they_are() -> None:
    kube, name, memo = running_pipeline()
    running_fp = body_of(kube, name)["status"]["stateFingerprint"]
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "Compatible"
    before = children(kube, name)
    edit(kube, name, lambda s: window_of(s).update(size="30s"))
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert children(kube, name) == before
    assert not {"ConfigMap/clicks-per-minute-config", "Deployment/clicks-per-minute"} & set(
        result.applied
    )
    status = body_of(kube, name)["status"]
    assert status["stateFingerprint"] == running_fp
    assert status["pendingStateChanges"] == ["window.size: 60000 -> 30000"]
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("False", "StateChangeRefused")
    assert "window.size: 60000 -> 30000" in cond["message"]
    assert condition(kube, name, "Ready")["status"] == "True"  # the workers still serve
    assert [e.reason for e in result.events] == ["StateChangeRefused"]
    # Said once: the next reconcile writes nothing and posts nothing.
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert again.events == () and again.status is None and children(kube, name) == before
    # Reverting the edit is compatible again, and nothing rolls.
    edit(kube, name, lambda s: window_of(s).update(size="60s"))
    back = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert children(kube, name)[0] == before[0]
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "Compatible"
    assert "pendingStateChanges" not in body_of(kube, name)["status"] or (
        body_of(kube, name)["status"]["pendingStateChanges"] is None
    )
    assert back.events == ()


def test_a_refused_edit_neither_makes_nor_drops_what_shapes_the_workers() -> None:
    """Held with the state edit: the disruption budget its replica ceiling drops, and the claim
    its switch to the volume backend makes (a probe against the real operator saw both
    follow the refused spec)."""
    kube, name, memo = running_pipeline()
    assert kube.find("PodDisruptionBudget", name) is not None  # up to 8 workers
    edit(kube, name, lambda s: (window_of(s).update(size="30s"),
                                s["autoscaling"].update(maxReplicas=1)))  # fmt: skip
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "StateChangeRefused"
    assert kube.find("PodDisruptionBudget", name) is not None
    assert f"PodDisruptionBudget/{name}" not in result.deleted
    # The state edit reverted: the rest of the edit goes through.
    edit(kube, name, lambda s: window_of(s).update(size="60s"))
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert kube.find("PodDisruptionBudget", name) is None

    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["checkpoint"]["backend"] = "kafka"
    name = kube.put(doc)["metadata"]["name"]
    memo = ReconcileMemo()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert kube.find("PersistentVolumeClaim", f"{name}-checkpoints") is None
    edit(kube, name, lambda s: s["checkpoint"].update(backend="volume"))
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "StateChangeRefused"
    assert kube.find("PersistentVolumeClaim", f"{name}-checkpoints") is None


def reordered_under(policy_name: str) -> Any:
    """An edit reordering the aggregates (a state change) under ``policy_name``."""

    def change(spec: dict[str, Any]) -> None:
        window_of(spec)["aggregates"].reverse()
        spec["upgrade"] = {"onStateChange": policy_name}
        if policy_name == "replay":
            spec["upgrade"]["replayFrom"] = "2026-01-01T00:00:00Z"

    return change


def operator_dies_at(
    kube: FakeKube, name: str, what: str, *, verb: WriteVerb | None = None
) -> None:
    """A reconcile of ``name`` whose operator dies at its write of ``what`` (by ``verb``, when
    given): it raises there, and nothing after that write is made."""

    def dies(n: int, verb_: WriteVerb, what_: str) -> Fault | None:
        if what_ == what and verb in (None, verb_):
            return ("refuse", ApiError(0, "Unreachable", "the operator died"))
        return None

    kube.fault = dies
    try:
        with pytest.raises(ApiError):
            reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
    finally:
        kube.fault = None


@pytest.mark.parametrize("name_", ["reset", "replay"])
def test_reset_and_replay_roll_with_the_policy_in_the_worker_config(name_: str) -> None:
    kube, name, memo = running_pipeline()
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]
    before = children(kube, name)

    edit(kube, name, reordered_under(name_))
    generation = body_of(kube, name)["metadata"]["generation"]
    # First a StreamPipelineSnapshot of the running state (decision 0110): requested, owned
    # by the pipeline, and nothing rolls until it is Ready.
    held = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    snap_name = f"{name}-{name_}-g{generation}"
    snap = kube.find("StreamPipelineSnapshot", snap_name)
    assert snap is not None and snap["spec"] == {"pipeline": name}
    assert snap["metadata"]["labels"]["streamherd.io/pipeline"] == name
    assert snap["metadata"]["labels"]["streamherd.io/taken-before"] == name_
    assert [r["uid"] for r in snap["metadata"]["ownerReferences"]] == [
        body_of(kube, name)["metadata"]["uid"]
    ]
    assert children(kube, name) == before
    assert "SnapshotRequested" in [e.reason for e in held.events]
    assert held.retry_after is not None
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("False", "TakingSnapshot"), cond
    assert body_of(kube, name)["status"]["stateFingerprint"] == old_fp
    for phase in ("Taking", "Failed"):  # still held; a failure says how to take it again
        snap["status"] = {"phase": phase, "message": "m", "fingerprint": old_fp}
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        assert children(kube, name) == before
    assert "delete it to take it again" in condition(kube, name, STATE_COMPATIBLE)["message"]
    snap["status"] = {
        "phase": "Ready", "fingerprint": old_fp, "topic": "t", "takenAt": "2026-01-01T00:00:00Z",
        "partitionCount": 2, "sizeBytes": 10,
    }  # fmt: skip
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    config_map, deployment = children(kube, name)
    assert config_map != before[0] and deployment != before[1]  # rolled
    worker = json.loads(config_map["data"]["worker.json"])
    # The generation and the pipeline's uid ride along: its workers leave a later generation's
    # state alone (generations count per pipeline: the uid says which). The state starts anew
    # with this generation: its epoch (0175).
    meta = body_of(kube, name)["metadata"]
    expected_state: dict[str, Any] = {
        "onFingerprintMismatch": name_,
        "specGeneration": meta["generation"],
        "pipelineUid": meta["uid"],
        "epoch": meta["generation"],
    }
    if name_ == "replay":
        expected_state["replayFromMs"] = 1767225600000
    assert worker["state"] == expected_state
    reason = POLICIES[name_][2]
    assert reason in [e.reason for e in result.events]
    status = body_of(kube, name)["status"]
    assert status["stateFingerprint"] != old_fp
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == reason
    # The snapshots kept before the old state is discarded are listed: the resource, and
    # the one the workers keep in their own checkpoints (named by the roll's generation,
    # their state epoch: the same edit made again keeps its own).
    kept = f"{old_fp}-to-{status['stateFingerprint']}-g{meta['generation']}"
    assert [s["name"] for s in status["snapshots"]] == [snap_name, kept]
    assert [s["fingerprint"] for s in status["snapshots"]] == [old_fp, old_fp]
    message = condition(kube, name, STATE_COMPATIBLE)["message"]
    assert kept in message and f"StreamPipelineSnapshot {snap_name}" in message
    # The next reconcile keeps reporting what was done, and says it only once.
    kube.roll_out(name)
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == reason
    assert reason not in [e.reason for e in again.events]
    assert [s["name"] for s in body_of(kube, name)["status"]["snapshots"]] == [snap_name, kept]
    assert kube.applies.count(f"StreamPipelineSnapshot/{snap_name}") == 1


def snapshot_ready(
    kube: FakeKube, snap_name: str, fingerprint_: str, pipeline_uid: str | None = None
) -> None:
    """The snapshot Ready as snapshots.follow leaves it, taken of the pipeline of
    `pipeline_uid` (the one of its name by default)."""
    snap = kube.find("StreamPipelineSnapshot", snap_name)
    assert snap is not None, snap_name
    owner = kube.find("StreamPipeline", snap["spec"]["pipeline"])
    uid = pipeline_uid or (owner or {}).get("metadata", {}).get("uid")
    snap["status"] = {
        "phase": "Ready", "fingerprint": fingerprint_, "topic": "t",
        "takenAt": "2026-01-01T00:00:00Z", "partitionCount": 2, "sizeBytes": 10,
        **({"pipelineUid": uid} if uid else {}),
    }  # fmt: skip


@pytest.mark.parametrize("name_", ["reset", "replay"])
@pytest.mark.parametrize("dies_at", ["Deployment", "StreamPipeline"])
def test_a_reset_whose_writes_after_the_roll_failed_is_recorded_by_the_next_operator(
    name_: str, dies_at: str
) -> None:
    """The reconcile that rolls a reset applies the workers' ConfigMap, then their
    Deployment, then the status. The operator dies before the Deployment apply or the
    status write: the next operator finds the ConfigMap applied, the workers running the
    new state, and decides a plain roll. The record rides on that ConfigMap (decision 0173),
    so the next reconcile writes StateReset (or StateReplay), its event once, and both
    snapshot entries. Before, the reset was recorded nowhere: no condition, no event, no
    status.snapshots entry for either snapshot."""
    kube, name, _ = running_pipeline()
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]

    edit(kube, name, reordered_under(name_))
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())  # held
    snap_name = f"{name}-{name_}-g{body_of(kube, name)['metadata']['generation']}"
    snapshot_ready(kube, snap_name, old_fp)

    operator_dies_at(kube, name, f"{dies_at}/{name}")
    worker = json.loads(children(kube, name)[0]["data"]["worker.json"])
    assert worker["state"]["onFingerprintMismatch"] == name_  # the roll is committed
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "TakingSnapshot"
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
    reason = POLICIES[name_][2]
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("True", reason), cond
    assert f"StreamPipelineSnapshot {snap_name}" in cond["message"]
    assert [e.reason for e in result.events].count(reason) == 1
    status = body_of(kube, name)["status"]
    generation = body_of(kube, name)["metadata"]["generation"]
    kept = f"{old_fp}-to-{status['stateFingerprint']}-g{generation}"
    assert status["stateFingerprint"] != old_fp
    assert [s["name"] for s in status["snapshots"]] == [snap_name, kept]
    assert (f"Deployment/{name}" in result.applied) == (dies_at == "Deployment")
    # Said once: the next reconciles keep it and post nothing about it.
    kube.roll_out(name)
    for _ in range(2):
        again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
        assert reason not in [e.reason for e in again.events]
        assert condition(kube, name, STATE_COMPATIBLE)["reason"] == reason
    assert [s["name"] for s in body_of(kube, name)["status"]["snapshots"]] == [snap_name, kept]


def test_a_restore_whose_status_write_failed_is_said_by_the_next_operator() -> None:
    """A restore rolls like a reset: when its status write fails, the next reconcile finds
    the restored state running (a plain roll, restoreFrom still in the spec) and, from the
    record on the workers' ConfigMap (decision 0173), posts StateRestored once. Before, the
    condition came back but the event was never posted."""
    kube, name, memo = running_pipeline()
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]

    edit(kube, name, reordered_under("reset"))
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    snapshot_ready(kube, f"{name}-reset-g{body_of(kube, name)['metadata']['generation']}", old_fp)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    body = body_of(kube, name)
    kept = f"{old_fp}-to-{body['status']['stateFingerprint']}-g{body['metadata']['generation']}"
    assert kept in [s["name"] for s in body["status"]["snapshots"]]
    kube.roll_out(name)
    # Back to the old spec, restoring the state the reset kept.
    edit(kube, name, reordered_under("refuse"))
    edit(kube, name, lambda spec: spec.setdefault("state", {}).update(restoreFrom=kept))

    operator_dies_at(kube, name, f"StreamPipeline/{name}", verb="patch_status")
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
    assert [e.reason for e in result.events].count("StateRestored") == 1
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "StateRestored"
    assert body_of(kube, name)["status"]["stateFingerprint"] == old_fp
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=ReconcileMemo())
    assert "StateRestored" not in [e.reason for e in again.events]


@pytest.mark.parametrize("same_state", [True, False])
def test_a_retained_snapshot_of_an_earlier_pipeline_of_the_name_is_not_this_resets(
    same_state: bool,
) -> None:
    """retainOnDelete keeps `<name>-reset-g<n>` when a pipeline is deleted; one created
    again under the name counts generations from 1 again, so its reset's snapshot name can
    be that one's. It holds the earlier pipeline's state: the reset waits (SnapshotFailed,
    saying how to go on) and never rolls on it. Before, one of the same fingerprint let the
    reset roll with no snapshot of the running state."""
    kube, name, memo = running_pipeline()
    fp = body_of(kube, name)["status"]["stateFingerprint"]
    generation = body_of(kube, name)["metadata"]["generation"] + 1
    snap = f"{name}-reset-g{generation}"
    kube.apply(
        {
            "apiVersion": "streamherd.io/v1alpha1",
            "kind": "StreamPipelineSnapshot",
            "metadata": {
                "name": snap,
                "namespace": "default",
                "labels": {"streamherd.io/pipeline": name, "streamherd.io/retained": "true"},
            },
            "spec": {"pipeline": name},
        }
    )
    snapshot_ready(kube, snap, fp if same_state else "0123456789abcdef", "uid-of-an-earlier-one")
    before = children(kube, name)
    edit(kube, name, reset_window)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("False", "SnapshotFailed"), cond
    assert "earlier" in cond["message"] and "uid-of-an-earlier-one" in cond["message"]
    assert children(kube, name) == before


def reset_window(spec: dict[str, Any]) -> None:
    window_of(spec)["size"] = "30s"
    spec["upgrade"] = {"onStateChange": "reset"}


@settings(max_examples=40, deadline=None)
@given(
    st.booleans(),  # suspend: true in the same edit as the reset
    st.booleans(),  # ... or set while the snapshot is taken
    st.integers(0, 2),  # the live Deployment's spec.replicas
    st.integers(0, 2),  # ... and its status.replicas (readyReplicas the same)
)
def test_a_reset_waits_for_its_snapshot_while_live_workers_run_whatever_suspend_says(
    suspend_with: bool, suspend_during: bool, want: int, have: int
) -> None:
    """Whether some worker takes the reset's snapshot is read from the live Deployment,
    which a held edit leaves as it is: `suspend: true` in the edit that resets, or set
    while its snapshot is taken, holds until it is Ready, then rolls (suspended); only a
    Deployment with no worker left rolls the reset at once, with the volume snapshot."""
    kube, name, memo = running_pipeline()
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]
    live = kube.find("Deployment", name)
    assert live is not None
    live["spec"]["replicas"] = want
    live["status"].update(replicas=have, readyReplicas=have)
    runs = want > 0 and have > 0

    def change(spec: dict[str, Any]) -> None:
        reset_window(spec)
        if suspend_with:
            spec["suspend"] = True

    edit(kube, name, change)
    before = children(kube, name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    snap_name = f"{name}-reset-g{body_of(kube, name)['metadata']['generation']}"
    cond = condition(kube, name, STATE_COMPATIBLE)
    if not runs:
        assert (cond["status"], cond["reason"]) == ("True", "StateReset"), cond
        assert "no worker runs to take" in cond["message"]
        assert kube.find("StreamPipelineSnapshot", snap_name) is None
        assert children(kube, name)[0] != before[0]  # rolled
        return
    assert (cond["status"], cond["reason"]) == ("False", "TakingSnapshot"), cond
    assert kube.find("StreamPipelineSnapshot", snap_name) is not None
    assert children(kube, name) == before  # the workers run on, and take it
    if suspend_during:
        edit(kube, name, lambda spec: spec.update(suspend=True))
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "TakingSnapshot"
        assert children(kube, name) == before
        snap_name = f"{name}-reset-g{body_of(kube, name)['metadata']['generation']}"
    # The held suspend is not reported as done: the workers still run.
    assert body_of(kube, name)["status"]["phase"] != "Suspended"
    assert condition(kube, name, "Ready")["reason"] != "Suspended"
    snapshot_ready(kube, snap_name, old_fp)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("True", "StateReset"), cond
    assert f"StreamPipelineSnapshot {snap_name}" in cond["message"]
    config_map, deployment = children(kube, name)
    assert json.loads(config_map["data"]["worker.json"])["state"] == {
        "onFingerprintMismatch": "reset",
        "specGeneration": body_of(kube, name)["metadata"]["generation"],
        "pipelineUid": body_of(kube, name)["metadata"]["uid"],
        "epoch": body_of(kube, name)["metadata"]["generation"],
    }
    if suspend_with or suspend_during:
        assert deployment["spec"]["replicas"] == 0
    assert snap_name in [s["name"] for s in body_of(kube, name)["status"]["snapshots"]]


def test_a_compatible_edit_rolls_as_before() -> None:
    kube, name, memo = running_pipeline()
    fp = body_of(kube, name)["status"]["stateFingerprint"]
    before = children(kube, name)
    edit(kube, name, lambda s: s["processor"]["steps"][0].update(filter="status < 400"))
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert children(kube, name)[0] != before[0]
    assert f"Deployment/{name}" in result.applied
    assert body_of(kube, name)["status"]["stateFingerprint"] == fp
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "Compatible"


def test_the_default_policy_changes_no_rendered_config_map() -> None:
    kube, name, _ = running_pipeline()
    worker = json.loads(children(kube, name)[0]["data"]["worker.json"])
    assert "state" not in worker  # an operator upgrade rolls no worker


def test_a_restore_rolls_only_a_snapshot_of_the_specs_state() -> None:
    old, new = described(), described(EDITS["size"][0])
    name = f"{fingerprint(old)}-to-{fingerprint(new)}"
    # Back to the old spec with its snapshot: rolled, whatever the policy.
    for policy_name in POLICIES:
        decision = decide(new, old, policy(policy_name), restore_from=name, generation=4)
        assert decision.action == "restore" and decision.fingerprint == fingerprint(old)
        assert (decision.condition.status, decision.condition.reason) == (
            "True",
            "StateRestored",
        ) and name in decision.condition.message
        assert decision.event is not None and decision.event[:2] == ("Normal", "StateRestored")
    # The restore rolled out: the same decision is now a plain roll that still says so.
    done = decide(old, old, policy("refuse"), restore_from=name)
    assert done.action == "roll" and done.condition.reason == "StateRestored" and done.event is None
    # A snapshot of another state than the spec's is held, naming both fingerprints.
    wrong = decide(old, new, policy("reset"), restore_from=name, generation=5)
    assert wrong.action == "hold" and wrong.fingerprint == fingerprint(old)
    assert (wrong.condition.status, wrong.condition.reason) == ("False", "SnapshotMismatch")
    assert (
        fingerprint(old) in wrong.condition.message and fingerprint(new) in wrong.condition.message
    )


def test_the_earlier_rules_name_a_reset_snapshot_but_never_restore_one() -> None:
    """A reset's snapshot of the running state, stamped by a worker of an earlier image (a
    user function's image on an older base), names it by the rules before session 30: it
    is the running state (a review's finding: the reset held for good). For restoreFrom the
    earlier name is ambiguous: the earlier rules' name of a window with a map before it is
    the name of the same window without the map, another state (a second review's finding:
    accepting it restored a snapshot of the plain window into the spec with the map)."""
    kb = [{"map": {"set": {"bytes": "kb * 1024"}}}]
    old, new = described(steps_before=kb), described(EDITS["size"][0], steps_before=kb)
    earlier = {k: v for k, v in old.items() if k not in ("inputs", "rules")}
    reset = decide(old, new, policy("reset"), generation=5)
    assert fingerprint(earlier) in reset.running_names and fingerprint(old) in reset.running_names
    plain = described()
    assert fingerprint(plain) == fingerprint(earlier)  # the ambiguity
    name = f"{fingerprint(plain)}-to-{fingerprint(new)}"
    decision = decide(new, old, policy("refuse"), restore_from=name, generation=4)
    assert decision.action == "hold" and decision.condition.reason == "SnapshotMismatch"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda s: s.setdefault("checkpoint", {}).update(backend="kafka"), id="backend-switch"
        ),
        pytest.param(
            lambda s: s["source"]["kafka"].update(topics=["clicks-eu"]), id="topic-removed"
        ),
    ],
)
def test_a_restore_from_kept_in_the_spec_lets_no_later_edit_through_unjudged(change: Any) -> None:
    """restoreFrom kept in the spec once its restore rolled out (docs/lifecycle.md). A
    later backend switch (its claim, every checkpoint and snapshot on it, deleted with the
    roll) or removal of a topic holding open windows is refused as without it. Before, the
    restore's decision came first and rolled both (StateRestored)."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    window_of(doc["spec"])["repartition"] = "never"  # windows on the source's partitions
    doc["spec"]["source"]["kafka"]["topics"] = ["clicks", "clicks-eu"]
    name = kube.put(doc)["metadata"]["name"]
    memo = ReconcileMemo()

    def settle() -> None:
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        kube.roll_out(name)
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)

    settle()
    fp = body_of(kube, name)["status"]["stateFingerprint"]
    snapshot = f"{fp}-to-0123456789abcdef"  # an earlier reset's snapshot of this state
    edit(kube, name, lambda s: s.setdefault("state", {}).update(restoreFrom=snapshot))
    settle()
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "StateRestored"
    before = children(kube, name)
    edit(kube, name, change)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert children(kube, name) == before
    assert result.deleted == ()
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("False", "StateChangeRefused")


# --------------------------------------------------------------------------- source topics


def source_of(spec: dict[str, Any]) -> dict[str, Any]:
    kafka: dict[str, Any] = spec["source"]["kafka"]
    return kafka


@pytest.mark.parametrize("keyed_before", [True, False])
def test_a_resets_snapshot_waits_for_the_partitions_the_running_workers_own(
    keyed_before: bool,
) -> None:
    """The running workers write the snapshot a reset takes first, so it is complete when
    the partitions of the config they run are in it, not those of the edited spec: a topic
    added by the same edit (which starts repartitioning a keyedBy pipeline) has no running
    worker to write it, and the reset waited at TakingSnapshot for good; stopping
    repartitioning must still wait for the repartition topic, where the windows are."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    internal = "streamherd.default.clicks-per-minute.repartition"
    if keyed_before:
        doc["spec"]["source"]["kafka"]["keyedBy"] = "page"
    name = kube.put(doc)["metadata"]["name"]
    memo = ReconcileMemo()
    assert snapshot_topics(kube, "default", name, pipeline_of(kube, name)) == (
        ["clicks"] if keyed_before else ["clicks", internal]
    )  # no worker config yet: the spec's
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    running = ["clicks"] if keyed_before else ["clicks", internal]

    def change(spec: dict[str, Any]) -> None:
        kafka = spec["source"]["kafka"]
        if keyed_before:
            kafka["topics"] = ["clicks", "clicks-eu"]  # two topics: repartitioned
        else:
            kafka["keyedBy"] = "page"  # keyed: no repartition
        spec["upgrade"] = {"onStateChange": "reset"}

    edit(kube, name, change)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "TakingSnapshot"
    assert snapshot_topics(kube, "default", name, pipeline_of(kube, name)) == running


def pipeline_of(kube: FakeKube, name: str) -> Any:
    pipeline, problems = parse_pipeline(
        {k: v for k, v in body_of(kube, name).items() if k != "status"}
    )
    assert pipeline is not None, problems
    return pipeline


def test_removing_a_source_topic_with_open_windows_is_refused_then_dropped_on_reset() -> None:
    """The windows of an unpartitioned pipeline live on its source's partitions: a topic
    removed from source.kafka.topics would leave its open windows never emitted."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    window_of(doc["spec"])["repartition"] = "never"
    name = kube.put(doc)["metadata"]["name"]
    memo = ReconcileMemo()
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    worker = json.loads(children(kube, name)[0]["data"]["worker.json"])
    assert worker.get("repartition") is None, "it windows on its source's partitions"
    edit(kube, name, lambda s: source_of(s).update(topics=["clicks", "clicks-eu"]))  # adds
    added = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "Compatible"
    assert "ConfigMap/clicks-per-minute-config" in added.applied
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    before = children(kube, name)
    edit(kube, name, lambda s: source_of(s).update(topics=["clicks-eu"]))  # removes one
    held = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert children(kube, name) == before
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("False", "StateChangeRefused")
    assert "removes source topics (clicks)" in cond["message"]
    assert body_of(kube, name)["status"]["pendingStateChanges"] == [
        "source.kafka.topics: removed clicks"
    ]
    assert [e.reason for e in held.events] == ["StateChangeRefused"]
    # Reverting the edit is compatible again.
    edit(kube, name, lambda s: source_of(s).update(topics=["clicks-eu", "clicks"]))
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name, STATE_COMPATIBLE)["reason"] == "Compatible"
    kube.roll_out(name)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    # Reset: the removal rolls (no snapshot of anything: the state is not discarded), and
    # says once what is dropped.
    before = children(kube, name)

    def drop(spec: dict[str, Any]) -> None:
        source_of(spec).update(topics=["clicks-eu"])
        spec["upgrade"] = {"onStateChange": "reset"}

    edit(kube, name, drop)
    rolled = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert children(kube, name)[0] != before[0]
    assert (
        kube.find(
            "StreamPipelineSnapshot",
            f"{name}-reset-g{body_of(kube, name)['metadata']['generation']}",
        )
        is None
    )
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("True", "SourcesRemoved"), cond
    assert "removes source topics (clicks)" in cond["message"] and "dropped" in cond["message"]
    assert [e.reason for e in rolled.events if e.reason == "SourcesRemoved"] == ["SourcesRemoved"]
    # Said once: rolled out and reconciled again, it stays said (a state change is reported
    # until the next), and an idle pipeline writes nothing. Before, StateCompatible went to
    # Compatible, the ConfigMap's record of the change (decision 0173) then read as not
    # recorded and was written again with its event: a status write and, every other
    # reconcile, a SourcesRemoved warning, for as long as the pipeline ran.
    kube.roll_out(name)
    settled = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert "SourcesRemoved" not in [e.reason for e in settled.events]
    for _ in range(3):
        idle = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        assert (idle.status, idle.events) == (None, ()), (idle.status, idle.events)
        assert condition(kube, name, STATE_COMPATIBLE) == cond


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "ab", "b.c", "^a", "^b.*", "^(a|b)$"]), min_size=1,
             max_size=4, unique=True),
    st.lists(st.sampled_from(["a", "b", "ab", "b.c", "^a", "^b.*", "^(a|b)$"]), min_size=1,
             max_size=4, unique=True),
)  # fmt: skip
def test_a_removed_source_is_exactly_one_the_edit_stops_reading(
    running: list[str], desired: list[str]
) -> None:
    reads = topic_matcher(desired)
    removed = removed_sources(running, desired)
    for topic in running:
        if topic in desired:
            assert topic not in removed
        elif topic.startswith("^"):
            assert topic in removed  # what a pattern matched is not known: asked
        else:
            assert (topic in removed) == (not reads(topic))
    description = described()
    for on, action in (("refuse", "hold"), ("reset", "roll"), ("replay", "roll")):
        got = decide(description, description, policy(on), sources=(tuple(running), tuple(desired)))
        assert got.action == (action if removed else "roll")
        assert got.fingerprint == fingerprint(description)
        assert bool(got.changes) == bool(removed)
    # With a repartition the windows live on the repartition topic: nothing is lost.
    parted = {**description, "repartition": {"topic": "streamherd.x"}}
    got = decide(parted, parted, policy("refuse"), sources=(tuple(running), tuple(desired)))
    assert got.action == "roll" and not got.changes


@pytest.mark.parametrize("replay_from", ["2025-12-31T23:00:00Z", "2026-03-01T00:00:00Z"])
def test_a_replay_from_a_time_still_to_come_says_what_it_skips(replay_from: str) -> None:
    """Offsets for a time past every record are the log's end: a replayFrom in the future
    skips what is not read by the roll. Allowed, and said (a probe saw it pass silently)."""
    kube, name, memo = running_pipeline()
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]

    def change(spec: dict[str, Any]) -> None:
        window_of(spec).update(size="30s")
        spec["upgrade"] = {"onStateChange": "replay", "replayFrom": replay_from}

    edit(kube, name, change)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    snap = f"{name}-replay-g{body_of(kube, name)['metadata']['generation']}"
    snapshot_ready(kube, snap, old_fp)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert cond["reason"] == "StateReplay", cond
    future = replay_from > "2026-01-01"
    assert ("is in the future" in cond["message"]) is future, cond
    said = [e.message for e in result.events if e.reason == "StateReplay"]
    assert said and all(("records not read by then are skipped" in m) is future for m in said)
