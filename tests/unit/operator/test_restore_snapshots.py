"""spec.state.restoreFrom naming a StreamPipelineSnapshot (operator/restoring.py, the
reconciler's _upgrade): a NEW pipeline waits, with nothing rolled, until the snapshot is Ready
on its own Kafka cluster and holds its state; then it rolls with the restore in its
WorkerConfig; a snapshot of another state is held as a mismatch, and so is a repartitioned
pipeline's snapshot in another pipeline (its state is tied to its own internal topic)."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator import snapshots
from streamherd.operator.api.snapshot import MAX_SNAPSHOT_NAME_LENGTH
from streamherd.operator.builders.meta import FINALIZER
from streamherd.operator.builders.snapshot import (
    TAKEN_BEFORE_LABEL,
    build_state_snapshot,
    state_snapshot_name,
)
from streamherd.operator.kafkaadmin import Deleted, KafkaAdmin, TopicRequest
from streamherd.operator.reconciler import ReconcileMemo, reconcile
from streamherd.operator.snapshots import (
    delete_state_snapshots,
    delete_topic,
    deletes_with,
    follow,
    keep_state_snapshots,
    lists_state_snapshots,
)
from streamherd.operator.upgrades import STATE_COMPATIBLE
from streamherd.workers.fingerprint import is_volume_snapshot
from streamherd.workers.snapshotting import snapshot_topic
from tests.unit.operator.operator_testkit import (
    SETTINGS,
    FakeKube,
    body_of,
    example_doc,
    pipeline_from,
)
from tests.unit.operator.test_upgrades import edit, reset_window, running_pipeline, snapshot_ready

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def condition(kube: FakeKube, name: str) -> dict[str, Any]:
    conds = body_of(kube, name)["status"]["conditions"]
    found: dict[str, Any] = next(c for c in conds if c["type"] == STATE_COMPATIBLE)
    return found


def snapshot(name: str, fingerprint: str, servers: str, phase: str = "Ready") -> dict[str, Any]:
    return {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipelineSnapshot",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"pipeline": "clicks-per-minute"},
        "status": {
            "phase": phase,
            "fingerprint": fingerprint,
            "bootstrapServers": servers,
            "message": "m",
        },
    }


def test_a_new_pipeline_restores_a_snapshot_only_once_it_can() -> None:
    kube, memo = FakeKube(), ReconcileMemo()
    doc = example_doc("02-clicks-per-minute")
    # A repartitioned pipeline's state lives in its own internal topic, which is part of its
    # fingerprint: only one that keeps per-partition windows can move to another pipeline.
    window = next(s["window"] for s in doc["spec"]["processor"]["steps"] if "window" in s)
    window["repartition"] = "never"
    old = kube.put(copy.deepcopy(doc))["metadata"]["name"]
    reconcile(body_of(kube, old), kube, SETTINGS, now=T0, memo=memo)
    fingerprint = body_of(kube, old)["status"]["stateFingerprint"]
    servers = doc["spec"]["source"]["kafka"]["bootstrapServers"]

    new_doc = copy.deepcopy(doc)
    new_doc["metadata"]["name"] = "restored"
    new_doc["spec"]["state"] = {"restoreFrom": "before-upgrade"}
    kube.put(new_doc)
    # No such snapshot: nothing the workers run is created, and the condition says why.
    result = reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    assert kube.find("ConfigMap", "restored-config") is None
    assert kube.find("Deployment", "restored") is None
    cond = condition(kube, "restored")
    assert (cond["status"], cond["reason"]) == ("False", "SnapshotNotReady")
    assert "before-upgrade does not exist" in cond["message"]
    assert "SnapshotNotReady" in [e.reason for e in result.events]
    # Taking, or on another cluster: still held, saying which.
    kube.put(snapshot("before-upgrade", fingerprint, servers, phase="Taking"))
    reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    assert "is not Ready (Taking" in condition(kube, "restored")["message"]
    kube.put(snapshot("before-upgrade", fingerprint, "elsewhere:9092"))
    reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    assert "elsewhere:9092" in condition(kube, "restored")["message"]
    assert kube.find("Deployment", "restored") is None
    # Another state than the spec's: a mismatch naming both.
    kube.put(snapshot("before-upgrade", "0123456789abcdef", servers))
    reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    cond = condition(kube, "restored")
    assert cond["reason"] == "SnapshotMismatch" and "0123456789abcdef" in cond["message"]
    assert kube.find("Deployment", "restored") is None
    # Ready, on the source cluster, of the spec's state: rolled, the restore in the config.
    kube.put(snapshot("before-upgrade", fingerprint, servers))
    result = reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    config_map = kube.find("ConfigMap", "restored-config")
    assert config_map is not None and kube.find("Deployment", "restored") is not None
    config = json.loads(config_map["data"]["worker.json"])
    assert config["state"]["restoreFrom"] == "before-upgrade"
    cond = condition(kube, "restored")
    assert (cond["status"], cond["reason"]) == ("True", "StateRestored")
    assert "StateRestored" in [e.reason for e in result.events]
    # Rolled out: later reconciles do not read the snapshot again (it may even be gone).
    kube.objects = {k: v for k, v in kube.objects.items() if "StreamPipelineSnapshot" not in k}
    reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, "restored")["reason"] == "StateRestored"


def test_a_repartitioned_pipelines_snapshot_does_not_fit_another_pipeline() -> None:
    kube, memo = FakeKube(), ReconcileMemo()
    doc = example_doc("02-clicks-per-minute")
    old = kube.put(copy.deepcopy(doc))["metadata"]["name"]
    reconcile(body_of(kube, old), kube, SETTINGS, now=T0, memo=memo)
    fingerprint = body_of(kube, old)["status"]["stateFingerprint"]
    new_doc = copy.deepcopy(doc)
    new_doc["metadata"]["name"] = "restored"
    new_doc["spec"]["state"] = {"restoreFrom": "before-upgrade"}
    kube.put(new_doc)
    kube.put(
        snapshot("before-upgrade", fingerprint, doc["spec"]["source"]["kafka"]["bootstrapServers"])
    )
    reconcile(body_of(kube, "restored"), kube, SETTINGS, now=T0, memo=memo)
    assert kube.find("ConfigMap", "restored-config") is None
    assert kube.find("Deployment", "restored") is None
    assert condition(kube, "restored")["reason"] == "SnapshotMismatch"


# --------------------------------------------------------------------------- before a reset

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@given(
    name=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,53}[a-z0-9])?", fullmatch=True),
    action=st.sampled_from(["reset", "replay"]),
    generation=st.integers(min_value=1, max_value=10**12),
)
def test_a_state_snapshot_name_is_a_valid_unique_snapshot_name(
    name: str, action: str, generation: int
) -> None:
    snap = state_snapshot_name(name, action, generation)
    assert len(snap) <= MAX_SNAPSHOT_NAME_LENGTH and NAME_RE.match(snap), snap
    assert not is_volume_snapshot(snap)
    assert snap.endswith(f"-{action}-g{generation}")
    # One per edit: another generation or action is another snapshot.
    assert snap != state_snapshot_name(name, action, generation + 1)
    # The pipeline's delete handler recognises it in status.snapshots, whatever
    # retainOnDelete says now: the deletion reads it, and keeps them then (decision 0177).
    body: dict[str, Any] = {"spec": {}, "status": {"snapshots": [{"name": snap}]}}
    assert lists_state_snapshots(body)
    body["spec"] = {"state": {"retainOnDelete": True}}
    assert lists_state_snapshots(body)
    assert not lists_state_snapshots({"spec": {}, "status": {"snapshots": [{"name": "a-to-b"}]}})


def test_a_state_snapshot_is_owned_unless_the_pipeline_keeps_its_state() -> None:
    doc = example_doc("02-clicks-per-minute")
    owned = build_state_snapshot(pipeline_from(doc, uid="u-1"), "reset", 7)
    assert owned["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert "controller" not in owned["metadata"]["ownerReferences"][0]
    assert "streamherd.io/retained" not in owned["metadata"]["labels"]
    doc["spec"]["state"] = {"retainOnDelete": True}
    kept = build_state_snapshot(pipeline_from(doc, uid="u-1"), "reset", 7)
    assert "ownerReferences" not in kept["metadata"]
    assert kept["metadata"]["labels"]["streamherd.io/retained"] == "true"
    assert kept["spec"] == owned["spec"] == {"pipeline": doc["metadata"]["name"]}


def test_deleting_a_pipeline_deletes_only_the_snapshots_it_owns() -> None:
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    name = doc["metadata"]["name"]
    kube.put(build_state_snapshot(pipeline_from(doc, uid="u-1"), "reset", 2))
    kube.put(build_state_snapshot(pipeline_from(doc, uid="u-0"), "reset", 1))  # an older one's
    retained = copy.deepcopy(doc)
    retained["spec"]["state"] = {"retainOnDelete": True}
    kube.put(build_state_snapshot(pipeline_from(retained, uid="u-1"), "replay", 3))
    kube.put(snapshot("on-request", "f", "s"))
    left = delete_state_snapshots(kube, "default", name, "u-1")
    assert left == [f"{name}-reset-g2"]
    assert kube.deletes == [f"StreamPipelineSnapshot/{name}-reset-g2"]
    assert kube.find("StreamPipelineSnapshot", f"{name}-replay-g3") is not None
    assert delete_state_snapshots(kube, "default", name, "u-1") == []


def test_a_pipeline_deleted_with_retain_on_delete_keeps_the_snapshots_it_owns() -> None:
    """retainOnDelete set after a reset: the snapshot that reset took is the state it keeps
    (decision 0177). The deletion takes the owner off and labels it retained, as one taken
    under retainOnDelete is made, so the garbage collector leaves it and its topic; nothing
    is deleted, and others' snapshots are not touched."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    name = doc["metadata"]["name"]
    owned = build_state_snapshot(pipeline_from(doc, uid="u-1"), "reset", 2)
    owned = copy.deepcopy(kube.put({**owned, "status": {"phase": "Ready"}}))
    older = copy.deepcopy(kube.put(build_state_snapshot(pipeline_from(doc, uid="u-0"), "reset", 1)))
    retained = copy.deepcopy(doc)
    retained["spec"]["state"] = {"retainOnDelete": True}
    made_kept = copy.deepcopy(
        kube.put(build_state_snapshot(pipeline_from(retained, uid="u-1"), "replay", 3))
    )
    kube.put(snapshot("on-request", "f", "s"))
    assert keep_state_snapshots(kube, "default", name, "u-1") == [f"{name}-reset-g2"]
    assert kube.deletes == [] and kube.applies == []
    assert kube.patches == [f"StreamPipelineSnapshot/{name}-reset-g2"]
    kept = kube.find("StreamPipelineSnapshot", f"{name}-reset-g2")
    assert kept is not None and not kept["metadata"]["ownerReferences"]
    # As one taken under retainOnDelete: its labels (retained) and spec.
    assert kept["metadata"]["labels"] == {
        **made_kept["metadata"]["labels"],
        TAKEN_BEFORE_LABEL: "reset",
    }
    assert kept["spec"] == owned["spec"]
    assert kube.find("StreamPipelineSnapshot", f"{name}-reset-g1") == older
    assert kube.find("StreamPipelineSnapshot", f"{name}-replay-g3") == made_kept
    # Kept, it is the pipeline's no more: neither deleted nor kept again.
    assert keep_state_snapshots(kube, "default", name, "u-1") == []
    assert delete_state_snapshots(kube, "default", name, "u-1") == []


def unfinished(doc: dict[str, Any], generation: int, phase: str | None) -> dict[str, Any]:
    made = build_state_snapshot(pipeline_from(doc, uid="u-1"), "reset", generation)
    return {**made, "status": {"phase": phase}} if phase else made


def test_retain_on_delete_keeps_only_ready_snapshots_the_rest_go_with_the_pipeline() -> None:
    """Only a Ready snapshot is state worth keeping (decision 0177): one Pending (no topic
    yet), Taking or Failed, left without its pipeline, would make its topic for a later
    pipeline of that name, or snapshot it, or end Failed with its topic left. The deletion
    keeps the Ready one and deletes the others (their finalizers delete their topics),
    retainOnDelete or not (before: all four released, none deleted)."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    name = doc["metadata"]["name"]
    kube.put(unfinished(doc, 2, "Ready"))
    for generation, phase in ((3, None), (4, "Pending"), (5, "Taking"), (6, "Failed")):
        kube.put(unfinished(doc, generation, phase))
    assert keep_state_snapshots(kube, "default", name, "u-1") == [f"{name}-reset-g2"]
    assert kube.deletes == []
    left = delete_state_snapshots(kube, "default", name, "u-1")
    assert left == [f"{name}-reset-g{g}" for g in (3, 4, 5, 6)]
    assert sorted(kube.deletes) == [
        f"StreamPipelineSnapshot/{name}-reset-g{g}" for g in (3, 4, 5, 6)
    ]
    kept = kube.find("StreamPipelineSnapshot", f"{name}-reset-g2")
    assert kept is not None and not kept["metadata"]["ownerReferences"]
    assert kept["metadata"]["labels"]["streamherd.io/retained"] == "true"


def test_the_reconcile_releases_ready_snapshots_while_retain_on_delete_is_on() -> None:
    """retainOnDelete set after a reset: the reconcile takes the owner off the Ready snapshot
    the reset took and labels it retained at once (decision 0177), so a foreground deletion,
    whose garbage collector deletes what the pipeline owns before any handler runs, finds
    nothing owned to delete; an unfinished one stays owned, to go with the pipeline. Off, it
    is left owned (deleted with the pipeline). Before: released only at the deletion."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    name = doc["metadata"]["name"]
    uid = kube.put(doc)["metadata"]["uid"]
    listed = [{"name": f"{name}-reset-g2", "fingerprint": "f", "partitions": 1}]
    kube.patch_status("default", name, {"snapshots": listed})
    ready = build_state_snapshot(pipeline_from(doc, uid=uid), "reset", 2)
    kube.put({**ready, "status": {"phase": "Ready"}})
    taking = build_state_snapshot(pipeline_from(doc, uid=uid), "replay", 3)
    kube.put({**taking, "status": {"phase": "Taking"}})
    now = datetime(2026, 3, 1, tzinfo=UTC)
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=now)
    assert "SnapshotsKept" not in [e.reason for e in result.events]
    for snap in (f"{name}-reset-g2", f"{name}-replay-g3"):
        found = kube.find("StreamPipelineSnapshot", snap)
        assert found is not None and found["metadata"]["ownerReferences"][0]["uid"] == uid
    body_of(kube, name)["spec"]["state"] = {"retainOnDelete": True}
    result = reconcile(body_of(kube, name), kube, SETTINGS, now=now)
    kept = [e for e in result.events if e.reason == "SnapshotsKept"]
    assert len(kept) == 1 and f"{name}-reset-g2" in kept[0].message, result.events
    released = kube.find("StreamPipelineSnapshot", f"{name}-reset-g2")
    assert released is not None and not released["metadata"]["ownerReferences"]
    assert released["metadata"]["labels"]["streamherd.io/retained"] == "true"
    still = kube.find("StreamPipelineSnapshot", f"{name}-replay-g3")
    assert still is not None and still["metadata"]["ownerReferences"][0]["uid"] == uid
    # Released once; turned off again, it stays kept (nothing owns it to delete it).
    again = reconcile(body_of(kube, name), kube, SETTINGS, now=now)
    assert "SnapshotsKept" not in [e.reason for e in again.events]
    body_of(kube, name)["spec"]["state"] = {"retainOnDelete": False}
    reconcile(body_of(kube, name), kube, SETTINGS, now=now)
    assert delete_state_snapshots(kube, "default", name, uid) == [f"{name}-replay-g3"]
    assert kube.find("StreamPipelineSnapshot", f"{name}-reset-g2") is not None


class RecordingAdmin:
    """KafkaAdmin (operator/kafkaadmin.py) as the snapshot handlers use it, recording."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []

    def connect(self, cluster: Any, timeout: float) -> RecordingAdmin:
        return self

    def __enter__(self) -> RecordingAdmin:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def create_topics(self, topics: list[TopicRequest]) -> set[str]:
        self.created.extend(t.name for t in topics)
        return {t.name for t in topics}

    def delete_topics(self, names: list[str]) -> Deleted:
        self.deleted.extend(names)
        return Deleted(sorted(names), {})


def test_a_resets_snapshot_goes_with_the_pipeline_from_its_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pipeline deleted while its reset waits for its snapshot (Taking, or Failed) must
    delete that snapshot, and its topic, first: its finalizer's filter (lists_state_snapshots)
    holds once status.snapshots lists it, so the reset lists it from its request on, and its
    topic is made only once that finalizer is on the pipeline (decision 0174). Before, only a
    Ready one was listed: the garbage collector deleted the others after the pipeline, when
    their finalizer could no longer reach Kafka, and their topics were left."""
    kube, name, memo = running_pipeline()
    old_fp = body_of(kube, name)["status"]["stateFingerprint"]
    edit(kube, name, reset_window)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    snap_name = f"{name}-reset-g{body_of(kube, name)['metadata']['generation']}"
    body = body_of(kube, name)
    assert condition(kube, name)["reason"] == "TakingSnapshot"
    listed = [s for s in body["status"]["snapshots"] if s["name"] == snap_name]
    assert [(s["fingerprint"], "being taken" in s["reason"]) for s in listed] == [(old_fp, True)]
    assert lists_state_snapshots(body)
    snap = kube.find("StreamPipelineSnapshot", snap_name)
    assert snap is not None
    admin = RecordingAdmin()
    monkeypatch.setattr(KafkaAdmin, "connect", admin.connect)
    monkeypatch.setattr(snapshots, "read_snapshot", lambda conf, topic, timeout=0: None)
    # kopf has not put its finalizer on the pipeline yet: no topic.
    waits = follow(kube, "default", snap_name, snap["spec"], {}, meta=snap["metadata"])
    assert waits["phase"] == "Pending" and "finalizer" in waits["message"]
    assert admin.created == [] and not deletes_with(body, snap_name)
    body["metadata"]["finalizers"] = [FINALIZER]
    assert deletes_with(body, snap_name)
    kube.find("StreamPipeline", name)["metadata"]["finalizers"] = [FINALIZER]  # type: ignore[index]
    taken = follow(kube, "default", snap_name, snap["spec"], {}, meta=snap["metadata"])
    topic = snapshot_topic("default", name, snap_name)
    assert (taken["phase"], taken["topic"], admin.created) == ("Taking", topic, [topic])
    # Ready, the reset rolls: the entry is the snapshot's, in its place.
    snapshot_ready(kube, snap_name, old_fp)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    assert condition(kube, name)["reason"] == "StateReset"
    status = body_of(kube, name)["status"]
    generation = body_of(kube, name)["metadata"]["generation"]
    kept = f"{old_fp}-to-{status['stateFingerprint']}-g{generation}"
    assert [s["name"] for s in status["snapshots"]] == [snap_name, kept]
    assert "being taken" not in status["snapshots"][0]["reason"]


def test_deleting_a_snapshot_deletes_the_topic_its_name_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The follow step creates a snapshot's topic; kopf writes status.topic after the step
    returns. A step whose status write failed (or whose operator died) left a topic no
    status names: deleting the snapshot deletes the topic its name gives (decision 0174).
    Before, it deleted nothing, and the topic was left for good."""
    kube = FakeKube()
    name = kube.put(example_doc("02-clicks-per-minute"))["metadata"]["name"]
    admin = RecordingAdmin()
    monkeypatch.setattr(KafkaAdmin, "connect", admin.connect)
    spec = {"pipeline": name}
    topic = snapshot_topic("default", name, "snap")
    assert delete_topic(kube, "default", "snap", spec, {}) is None
    assert admin.deleted == [topic]
    assert delete_topic(kube, "default", "snap", spec, {"topic": "t"}) is None
    assert admin.deleted == [topic, "t"]
    # The pipeline gone: a topic status names is left, and said; none named, nothing to say.
    kube.objects.clear()
    assert delete_topic(kube, "default", "snap", spec, {}) is None
    left = delete_topic(kube, "default", "snap", spec, {"topic": "t", "bootstrapServers": "b"})
    assert left is not None and "Kafka topic t left on b" in left
    assert admin.deleted == [topic, "t"]
