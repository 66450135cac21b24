"""The StreamPipelineSnapshot the operator requests before a reset or replay (decision 0110).

Pure, like every builder: the reconciler (``streamherd.operator.reconciler``) applies what
:func:`build_state_snapshot` returns, then waits until the snapshot handlers
(``streamherd.operator.snapshots``) report it Ready before the workers discard their state.
A requested snapshot is an ordinary StreamPipelineSnapshot: listed with ``kubectl get sps``,
restorable into this or another pipeline with ``spec.state.restoreFrom``.

Its life follows ``spec.state.retainOnDelete``, like the rest of the pipeline's state: kept
(no owner, labelled ``streamherd.io/retained=true``) when the pipeline keeps its state,
otherwise owned by the pipeline, which deletes it (and its finalizer its topic) before it
goes. One taken while the pipeline did not keep its state is kept all the same once
``retainOnDelete`` is on and it is Ready: :func:`kept_state_snapshot` is the patch the
reconcile makes to it then (or the deletion, if no reconcile did), so that no owner is left
for a foreground deletion's garbage collector to race (decision 0177).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

from streamherd.operator.api.snapshot import (
    MAX_SNAPSHOT_NAME_LENGTH,
    SNAPSHOT_API_VERSION,
    SNAPSHOT_KIND,
)
from streamherd.operator.api.v1alpha1 import GROUP, KIND, VERSION, StreamPipeline
from streamherd.operator.builders.meta import (
    MANAGED_BY,
    PIPELINE_LABEL,
    RETAINED_LABEL,
    Manifest,
)

#: What a requested snapshot was taken before: `reset` or `replay`.
TAKEN_BEFORE_LABEL: Final = "streamherd.io/taken-before"


def lists_state_snapshot(status: Mapping[str, Any] | None) -> bool:
    """Whether a pipeline's `status` lists a snapshot taken before one of its resets or
    replays (the name says: `-reset-g<n>`, `-replay-g<n>`, either with `-<uid hash>`)."""
    listed = status.get("snapshots") if isinstance(status, Mapping) else None
    return isinstance(listed, list) and any(
        isinstance(s, Mapping)
        and re.search(r"-(reset|replay)-g[0-9]+(-[0-9a-f]{8})?$", str(s.get("name")))
        for s in listed
    )


def retains_on_delete(body: Mapping[str, Any]) -> bool:
    """Whether a deletion of the pipeline (its raw object) keeps its state: the internal
    topics and the Ready snapshots. Read before (and whether or not) the spec parses: a
    stored object need not match today's schema (the API server does not check stored
    objects again when the CRD changes). ``retainOnDelete: true`` keeps, ``false`` or
    absent (or null, as Go reads it) does not; a value that cannot be read (a spec or
    ``spec.state`` that is no mapping, a ``retainOnDelete`` that is no boolean) keeps too:
    deleted state cannot be brought back, kept state can be deleted by hand (decision
    0189, amended)."""
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return True
    state = spec.get("state")
    if state is None:
        return False
    if not isinstance(state, Mapping):
        return True
    retain = state.get("retainOnDelete")
    return retain is not False and retain is not None


def state_snapshot_name(
    pipeline: str, action: str, generation: int | None, uid: str | None = None
) -> str:
    """`<pipeline>-<action>-g<generation>`, the pipeline's name cut so that it fits 63
    characters: one snapshot per edit (a later edit that discards state again gets its own;
    the name never has the `<hex>-to-<hex>` form of the volume snapshots). With `uid` (the
    pipeline's): `...-g<generation>-<8 hex of its hash>`, the name taken when the plain one
    is an earlier pipeline's, kept by retainOnDelete and not Ready (decision 0178)."""
    suffix = f"-{action}-g{generation if generation is not None else 0}"
    if uid is not None:
        suffix += "-" + hashlib.sha256(uid.encode()).hexdigest()[:8]
    room = MAX_SNAPSHOT_NAME_LENGTH - len(suffix)
    return pipeline[:room].rstrip("-") + suffix


def build_state_snapshot(
    pipeline: StreamPipeline, action: str, generation: int | None, name: str | None = None
) -> Manifest:
    """The StreamPipelineSnapshot to take before `action` (reset, replay) of `generation`,
    named `name` (:func:`state_snapshot_name` by default)."""
    labels = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "streamherd",
        PIPELINE_LABEL: pipeline.name,
        TAKEN_BEFORE_LABEL: action,
    }
    meta: Manifest = {
        "name": name or state_snapshot_name(pipeline.name, action, generation),
        "namespace": pipeline.namespace,
        "labels": labels,
    }
    uid = pipeline.metadata.get("uid")
    if pipeline.spec.state.retain_on_delete:
        labels[RETAINED_LABEL] = "true"
    elif uid:
        # Owned, not controlled: the garbage collector deletes it after the pipeline.
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": pipeline.name,
                "uid": str(uid),
            }
        ]
    return {
        "apiVersion": SNAPSHOT_API_VERSION,
        "kind": SNAPSHOT_KIND,
        "metadata": meta,
        "spec": {"pipeline": pipeline.name},
    }


def kept_state_snapshot(snapshot: Manifest, uid: str) -> Manifest:
    """The merge patch that keeps `snapshot` (a Ready one pipeline `uid` owns, taken before a
    reset or replay, as read) while the pipeline has ``retainOnDelete``, or is deleted with
    it (decision 0177): its owner reference to the pipeline taken off (the garbage collector
    then leaves it, and its topic with it) and labelled ``streamherd.io/retained=true``, as
    :func:`build_state_snapshot` makes one under ``retainOnDelete``.

    A patch, not an apply: server-side apply creates what is not there, so a snapshot
    deleted after it was read was made again, with no status, labelled retained: its follow
    step then snapshotted the pipeline anew, or a later pipeline of that name. A merge patch
    of an object that is gone is refused (404), and the resourceVersion read is its
    precondition (409 when the snapshot changed since: its owners are written from what was
    read, so a stale copy is never written back; decision 0178)."""
    meta = snapshot["metadata"]
    owners = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
    return {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "labels": {RETAINED_LABEL: "true"},
            "ownerReferences": owners,
        }
    }


def is_keepable(snapshot: Manifest) -> bool:
    """Whether `snapshot` is state worth keeping under ``retainOnDelete`` (decision 0177):
    Ready (complete) and not being deleted."""
    return (snapshot.get("status") or {}).get("phase") == "Ready" and not (
        snapshot.get("metadata") or {}
    ).get("deletionTimestamp")


def requested_by(snapshot: Manifest, pipeline_meta: Mapping[str, Any]) -> bool | None:
    """Whether `snapshot` (one taken before a reset or replay, of the pipeline's name) was
    requested by this very pipeline (`pipeline_meta`: its uid and creationTimestamp), not by
    an earlier pipeline of that name whose deletion kept it (decision 0178): its status
    names the pipeline it was taken of (``pipelineUid``, once its workers wrote to it); else
    its owners do; else (made under ``retainOnDelete``, no owner, nothing taken yet) it
    was made since the pipeline was (both times as the API server wrote them: a snapshot of
    an earlier pipeline existed before that one was deleted, so before this one was made).
    None when none of these can tell."""
    uid = pipeline_meta.get("uid")
    meta = snapshot.get("metadata") or {}
    if made_before(snapshot, pipeline_meta):
        return False  # whatever its status says: an earlier operator may have taken it of us
    taken_of = (snapshot.get("status") or {}).get("pipelineUid")
    if taken_of:
        return bool(taken_of == uid)
    owners = [r.get("uid") for r in meta.get("ownerReferences") or []]
    if owners:
        return uid in owners
    made, born = meta.get("creationTimestamp"), pipeline_meta.get("creationTimestamp")
    if not made or not born:
        return None
    return str(made) >= str(born)


def made_before(snapshot: Manifest, pipeline_meta: Mapping[str, Any]) -> bool:
    """Whether `snapshot` was made before the pipeline of `pipeline_meta` (both
    creationTimestamps as the API server wrote them, to the second: the same second is not
    before). A snapshot taken before a reset or replay that was made before its pipeline
    was requested by an earlier pipeline of the name, whose deletion left it (decision
    0178)."""
    made = (snapshot.get("metadata") or {}).get("creationTimestamp")
    born = pipeline_meta.get("creationTimestamp")
    return bool(made and born and str(made) < str(born))


def is_earlier_pipelines(snapshot: Manifest, pipeline_meta: Mapping[str, Any]) -> bool:
    """Whether `snapshot`, found under the name a reset of this pipeline would take, is an
    earlier pipeline's request that holds none of the state this reset must keep, so the
    reset takes its own under the other name (:func:`state_snapshot_name` with the uid)
    rather than wait on it for good (decision 0178): not Ready (Pending, Taking, Failed),
    or Ready but taken of this very pipeline (an operator before the follow step refused
    such a request took it of the next pipeline of the name: this one's state of then, not
    of now). A Ready one of the earlier pipeline's own state holds the reset (SnapshotFailed
    says how to go on): that state is what retainOnDelete kept."""
    if requested_by(snapshot, pipeline_meta) is not False:
        return False
    status = snapshot.get("status") or {}
    return status.get("phase") != "Ready" or status.get("pipelineUid") == pipeline_meta.get("uid")
