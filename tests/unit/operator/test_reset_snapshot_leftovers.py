"""What is left of a reset's StreamPipelineSnapshot (decisions 0110, 0174, 0177, 0178) when
something else moves at the same time: a snapshot deleted or changed while the operator
releases it under retainOnDelete, a pipeline whose snapshots are all released, an
unfinished snapshot taken under retainOnDelete when its pipeline is deleted, a snapshot left
by an earlier pipeline of the same name.

The API server is FakeKube (operator_testkit.py); the deletion runs the operator's own
delete-snapshots handler (operator/handlers.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.builders.snapshot import build_state_snapshot
from streamherd.operator.kube import ApiError
from streamherd.operator.reconciler import ReconcileMemo, reconcile
from streamherd.operator.snapshots import follow, keep_state_snapshots, lists_state_snapshots
from streamherd.operator.upgrades import STATE_COMPATIBLE
from tests.unit.operator.kopfhandlers import run_deletion_handler
from tests.unit.operator.operator_testkit import (
    SETTINGS,
    FakeKube,
    Manifest,
    body_of,
    example_doc,
    pipeline_from,
)
from tests.unit.operator.test_upgrades import (
    condition,
    edit,
    reset_window,
    running_pipeline,
    snapshot_ready,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NAME = "clicks-per-minute"


def snapshot_of(kube: FakeKube, name: str) -> Manifest | None:
    return kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, "default", name)


def owned_ready_snapshot(kube: FakeKube, generation: int = 2) -> tuple[str, str]:
    """The pipeline (retainOnDelete off), a Ready snapshot a reset took that it owns, listed
    in its status; (its uid, the snapshot's name)."""
    doc = example_doc("02-clicks-per-minute")
    uid = str(kube.put(doc)["metadata"]["uid"])
    snap = build_state_snapshot(pipeline_from(doc, uid=uid), "reset", generation)
    kube.put({**snap, "status": {"phase": "Ready", "fingerprint": "f"}})
    name = str(snap["metadata"]["name"])
    listed = [{"name": name, "fingerprint": "f", "partitions": 1}]
    kube.patch_status("default", NAME, {"snapshots": listed})
    return uid, name


def retain(kube: FakeKube) -> None:
    body = body_of(kube, NAME)
    body["spec"]["state"] = {"retainOnDelete": True}
    body["metadata"]["generation"] += 1


class RacingKube(FakeKube):
    """FakeKube where, right after a LIST of StreamPipelineSnapshots answers, `then` runs
    (another client deleting or changing one of them before the operator writes)."""

    versioned = True
    then: Any = None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        *,
        cached: bool = False,
    ) -> list[Manifest]:
        found = super().list(api_version, kind, namespace, label_selector)
        if kind == SNAPSHOT_KIND and self.then is not None:
            then, self.then = self.then, None
            then()
        return found


# --------------------------------------------------------------------------- 1: no re-creation


def test_a_snapshot_deleted_between_the_list_and_its_release_is_not_made_again() -> None:
    """The reconcile releases a Ready snapshot under retainOnDelete (decision 0177). One a
    user (or the garbage collector) deletes after the LIST that found it is gone: the
    release must not make it again. Before, the release was a server-side apply, which
    creates what is not there: a snapshot with no status, no owner, labelled retained,
    whose follow step then made a topic and snapshotted the pipeline again."""
    kube = RacingKube()
    _, snap = owned_ready_snapshot(kube)
    retain(kube)
    kube.then = lambda: kube.objects.pop((SNAPSHOT_API_VERSION, SNAPSHOT_KIND, "default", snap))
    result = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    assert snapshot_of(kube, snap) is None, "the release made the deleted snapshot again"
    assert "SnapshotsKept" not in [e.reason for e in result.events]
    # The deletion's release (the delete-snapshots handler) is no different.
    kube = RacingKube()
    uid, snap = owned_ready_snapshot(kube)
    kube.then = lambda: kube.objects.pop((SNAPSHOT_API_VERSION, SNAPSHOT_KIND, "default", snap))
    assert keep_state_snapshots(kube, "default", NAME, uid) == []
    assert snapshot_of(kube, snap) is None


def test_a_snapshot_changed_since_the_list_is_released_by_a_later_look() -> None:
    """A snapshot changed after the LIST (deleted and made again under its name, its owners
    edited) is not released from the stale copy: the release carries the resourceVersion it
    read (the API server answers 409), and the next reconcile reads it again."""
    kube = RacingKube()
    uid, snap = owned_ready_snapshot(kube)
    retain(kube)
    kube.then = lambda: changed(kube, snap)
    first = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    assert "SnapshotsKept" not in [e.reason for e in first.events]
    live = snapshot_of(kube, snap)
    assert live is not None and [r["uid"] for r in live["metadata"]["ownerReferences"]] == [uid]
    again = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    assert "SnapshotsKept" in [e.reason for e in again.events]
    live = snapshot_of(kube, snap)
    assert live is not None and not live["metadata"].get("ownerReferences")
    assert live["metadata"]["labels"]["streamherd.io/retained"] == "true"
    assert live["metadata"]["labels"]["someone"] == "else"  # the other writer's change stays
    # At the deletion, what is still owned is deleted right after: a snapshot changed since
    # the LIST fails the handler (kopf runs it again) rather than go owned to that step.
    kube = RacingKube()
    uid, snap = owned_ready_snapshot(kube)
    kube.then = lambda: changed(kube, snap)
    with pytest.raises(ApiError) as refused:
        keep_state_snapshots(kube, "default", NAME, uid)
    assert refused.value.status == 409
    assert keep_state_snapshots(kube, "default", NAME, uid) == [snap]


def changed(kube: FakeKube, snap: str) -> None:
    """Another writer changes snapshot `snap` (a label of its own)."""
    live = kube.objects[(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, "default", snap)]
    live["metadata"]["labels"]["someone"] = "else"
    live["metadata"]["resourceVersion"] = "changed"


# --------------------------------------------------------------------------- 2: read once


class CountingKube(FakeKube):
    """FakeKube that counts the LISTs of StreamPipelineSnapshots."""

    lists = 0

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        *,
        cached: bool = False,
    ) -> list[Manifest]:
        if kind == SNAPSHOT_KIND:
            self.lists += 1
        return super().list(api_version, kind, namespace, label_selector)


def settled(kube: FakeKube) -> None:
    """Reconciled, its workers rolled out, reconciled again: an idle pipeline."""
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    kube.roll_out(NAME)
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)


def test_once_its_snapshots_are_released_a_pipeline_lists_them_no_more() -> None:
    """Under retainOnDelete the reconcile looks for Ready snapshots the pipeline still owns
    (a LIST) while status lists a reset's snapshot. Once none is left to release, it does
    not look again until the spec changes (status.snapshotsKeptGeneration records the
    generation it found none at), and an idle pipeline's reconcile writes nothing. Before:
    one LIST per reconcile for ever, released or not."""
    kube = CountingKube()
    _, snap = owned_ready_snapshot(kube)
    taking = build_state_snapshot(pipeline_from(body_of(kube, NAME)), "replay", 3)
    kube.put({**taking, "status": {"phase": "Taking"}})
    settled(kube)
    assert kube.lists == 0  # retainOnDelete off: nothing to release, nothing read
    retain(kube)
    first = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    assert "SnapshotsKept" in [e.reason for e in first.events]
    # The replay's snapshot is still taken, owned: it may be Ready (and kept) later.
    assert "snapshotsKeptGeneration" not in body_of(kube, NAME)["status"]
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    assert kube.lists == 2
    kube.patch_status_of(SNAPSHOT_KIND, f"{NAME}-replay-g3", {"phase": "Ready"})
    kept = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    said = [e.message for e in kept.events if e.reason == "SnapshotsKept"]
    assert len(said) == 1 and f"{NAME}-replay-g3" in said[0], said
    generation = body_of(kube, NAME)["metadata"]["generation"]
    assert body_of(kube, NAME)["status"]["snapshotsKeptGeneration"] == generation
    lists, writes = kube.lists, len(kube.status_patches)
    for _ in range(3):  # idle: no LIST, no status write
        result = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
        assert result.status is None and result.events == ()
    assert (kube.lists, len(kube.status_patches)) == (lists, writes)
    # Turned off and on again: a new generation, looked at once more.
    body_of(kube, NAME)["spec"]["state"] = {"retainOnDelete": False}
    body_of(kube, NAME)["metadata"]["generation"] += 1
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    retain(kube)
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0)
    assert kube.lists == lists + 1
    assert snapshot_of(kube, snap) is not None


# --------------------------------------------------------------------------- 3: unfinished go

BORN = "2026-03-01T00:00:00Z"


def delete_snapshots(kube: FakeKube, retry: int = 0) -> str | None:
    """kopf's run of the delete-snapshots handler for the deleted pipeline (it holds the
    finalizer); the TemporaryError it raised (None: it succeeded)."""
    return run_deletion_handler(kube, "delete-snapshots", NAME, retry, filtered=True)


def created_at_born() -> tuple[FakeKube, str, ReconcileMemo, str, str]:
    """A running pipeline created at BORN: the fake, its name, memo, uid and fingerprint."""
    kube, name, memo = running_pipeline()
    pipeline = kube.find("StreamPipeline", name)
    assert pipeline is not None
    pipeline["metadata"]["creationTimestamp"] = BORN
    fp = body_of(kube, name)["status"]["stateFingerprint"]
    return kube, name, memo, str(pipeline["metadata"]["uid"]), fp


def taken_under_retain(
    kube: FakeKube, generation: int, phase: str | None, created: str, **status: Any
) -> str:
    """A snapshot requested before the reset of `generation` while the pipeline had
    retainOnDelete (no owner, labelled retained), created at `created`; its name."""
    doc = copy.deepcopy(body_of(kube, NAME))
    doc["spec"]["state"] = {"retainOnDelete": True}
    made = build_state_snapshot(pipeline_from(doc), "reset", generation)
    made["metadata"]["creationTimestamp"] = created
    kube.put({**made, "status": {"phase": phase, **status}} if phase else made)
    return str(made["metadata"]["name"])


def test_an_unfinished_snapshot_taken_under_retain_on_delete_goes_with_the_pipeline() -> None:
    """A reset's snapshot requested while retainOnDelete is on is made with no owner
    (decision 0110). One not Ready when the pipeline is deleted holds no state (0177 §5:
    unfinished ones go with the pipeline, whatever the option says), yet the deletion
    deleted only those the pipeline owned: a Pending one was left, and made its topic for
    (and snapshotted) the next pipeline of that name. It now deletes every unfinished one
    this pipeline requested (its uid in the snapshot's status, or made since the pipeline
    was): not a Ready one (kept state), nor one an earlier pipeline of the name left."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["metadata"]["creationTimestamp"] = BORN
    doc["spec"]["state"] = {"retainOnDelete": True}
    uid = kube.put(doc)["metadata"]["uid"]
    later = "2026-03-01T00:05:00Z"
    pending = taken_under_retain(kube, 2, None, later)
    taking = taken_under_retain(kube, 3, "Taking", later)
    failed = taken_under_retain(kube, 4, "Failed", later, pipelineUid=uid)
    ready = taken_under_retain(kube, 5, "Ready", later, pipelineUid=uid)
    earlier = taken_under_retain(kube, 6, "Failed", "2026-02-01T00:00:00Z")
    another = taken_under_retain(kube, 7, "Taking", later, pipelineUid="uid-of-an-earlier-one")
    listed = [{"name": n, "fingerprint": "f"} for n in (pending, taking, failed, ready)]
    kube.patch_status("default", NAME, {"snapshots": listed})
    waits = delete_snapshots(kube)
    assert sorted(kube.deletes) == sorted(f"{SNAPSHOT_KIND}/{n}" for n in (pending, taking, failed))
    assert waits is not None and pending in waits  # their finalizers delete their topics
    for kept in (ready, earlier, another):
        assert snapshot_of(kube, kept) is not None, kept


# --------------------------------------------------------------------------- 4: not blocked


@pytest.mark.parametrize("taken_of", [None, "uid-of-an-earlier-one"])
def test_an_earlier_pipelines_unfinished_snapshot_does_not_hold_this_ones_reset(
    taken_of: str | None,
) -> None:
    """retainOnDelete kept `<name>-reset-g2`, Failed (or never taken), when an earlier
    pipeline of the name was deleted; one created again counts generations from 1, so its
    reset at generation 2 is named the same. That snapshot holds no state of anyone's:
    before, the reset waited on it for good (SnapshotFailed: "delete it to take it again").
    Now the reset takes its own, named `<name>-reset-g2-<uid hash>`, and rolls on it; the
    earlier one is left as it is (it is kept: not the operator's to delete)."""
    kube, name, memo, uid, fp = created_at_born()
    status = {"message": "it failed"} | ({"pipelineUid": taken_of} if taken_of else {})
    earlier = taken_under_retain(kube, 2, "Failed", "2026-02-01T00:00:00Z", **status)
    assert earlier == f"{name}-reset-g2"
    before = snapshot_of(kube, earlier)
    edit(kube, name, reset_window)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("False", "TakingSnapshot"), cond
    own = next(
        s["metadata"]["name"]
        for s in kube.list(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, "default")
        if s["metadata"]["name"] != earlier
    )
    assert own.startswith(f"{name}-reset-g2-"), own
    made = snapshot_of(kube, own)
    assert made is not None and [r["uid"] for r in made["metadata"]["ownerReferences"]] == [uid]
    assert own in [s["name"] for s in body_of(kube, name)["status"]["snapshots"]]
    snapshot_ready(kube, own, fp)
    reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
    cond = condition(kube, name, STATE_COMPATIBLE)
    assert (cond["status"], cond["reason"]) == ("True", "StateReset"), cond
    assert f"StreamPipelineSnapshot {own}" in cond["message"]
    assert snapshot_of(kube, earlier) == before
    # The finalizer's filter knows the name.
    assert lists_state_snapshots(body_of(kube, name))


def test_an_earlier_pipelines_leftover_request_is_never_taken_of_this_one() -> None:
    """A Pending `<name>-reset-g2` an earlier pipeline of the name left (requested under
    retainOnDelete: no owner, no pipelineUid yet) was taken of the pipeline created again
    under the name, at once: Ready with its uid and its state of then. At its own reset of
    generation 2 that name counted as its request, and the reset rolled on it: the state
    since lost (a review). The follow step now fails such a request (made before the
    pipeline); the reset takes its own name. One an earlier operator already took (Ready,
    this pipeline's uid, made before it) is not this reset's either."""
    for hijacked in (False, True):
        kube, name, memo, uid, fp = created_at_born()
        earlier = taken_under_retain(kube, 2, None, "2026-02-01T00:00:00Z")
        leftover = snapshot_of(kube, earlier)
        assert leftover is not None
        if hijacked:
            snapshot_ready(kube, earlier, fp, uid)
        else:
            got = follow(kube, "default", earlier, leftover["spec"], {}, meta=leftover["metadata"])
            assert got["phase"] == "Failed" and "earlier" in got["message"], got
            leftover["status"] = got
        edit(kube, name, reset_window)
        reconcile(body_of(kube, name), kube, SETTINGS, now=T0, memo=memo)
        cond = condition(kube, name, STATE_COMPATIBLE)
        assert (cond["status"], cond["reason"]) == ("False", "TakingSnapshot"), (hijacked, cond)
        assert f"{earlier}-" in cond["message"]  # its own, <name>-reset-g2-<uid hash>
