"""What a StreamPipelineSnapshot offers a restore, and what status it earns: pure steps.

Used by the reconciler (``streamherd.operator.reconciler``: ``spec.state.restoreFrom`` naming a
StreamPipelineSnapshot is checked before anything rolls) and by the snapshot handlers
(``streamherd.operator.snapshots``: ``snapshot_status`` turns what the snapshot topic holds
into the resource's status), and by the reconcile's decision (operator/decision.py). No I/O:
the reconciler reads the snapshot a restore names (``reconciler.resource_snapshot``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from streamherd.operator.api.snapshot import SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import KIND
from streamherd.operator.conditions import Cond
from streamherd.operator.upgrades import STATE_COMPATIBLE, Decision
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.fingerprint import Description, fingerprint

Key = tuple[str, int]


class SnapshotContents(Protocol):
    """What snapshot_status reads of a snapshot topic's contents: the workers' reader
    (``streamherd.workers.snapshotting.SnapshotContents``, which needs confluent_kafka)
    returns one; declared here so that this module stays pure."""

    @property
    def checkpoints(self) -> Mapping[Key, Checkpoint]: ...

    @property
    def sizes(self) -> Mapping[Key, int]: ...


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_status(
    contents: SnapshotContents, expected: Iterable[Key], topic: str, bootstrap_servers: str
) -> dict[str, Any]:
    """The status a snapshot topic's contents earn, given every partition it must hold:
    Taking while some are missing, Failed when they disagree on the state fingerprint (a
    rollout happened while it was taken), else Ready with each partition's offset and size."""
    expected = sorted(set(expected))
    base: dict[str, Any] = {"topic": topic, "bootstrapServers": bootstrap_servers}
    if not expected:
        return {**base, "phase": "Taking", "message": "the pipeline's topics show no partitions"}
    missing = [k for k in expected if k not in contents.checkpoints]
    if missing:
        names = ", ".join(f"{t}[{p}]" for t, p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return {
            **base,
            "phase": "Taking",
            "message": (
                f"{len(expected) - len(missing)} of {len(expected)} partitions written; "
                f"waiting for {names}{more} (each worker writes its partitions at its next "
                "checkpoint; a partition that has read no record yet has nothing to write)"
            ),
        }
    held = [contents.checkpoints[k] for k in expected]
    prints = sorted({c.fingerprint or "legacy" for c in held})
    if len(prints) > 1:
        return {
            **base,
            "phase": "Failed",
            "message": (
                f"partitions were written under different state fingerprints ({', '.join(prints)})"
                ": the pipeline's state changed while the snapshot was taken; take another"
            ),
        }
    partitions = [
        {
            "topic": c.topic,
            "partition": c.partition,
            "nextOffset": c.next_offset,
            "sizeBytes": contents.sizes[(c.topic, c.partition)],
        }
        for c in held
    ]
    size = sum(contents.sizes[(c.topic, c.partition)] for c in held)
    return {
        **base,
        "phase": "Ready",
        "message": f"{len(held)} partitions, {size} bytes, state fingerprint {prints[0]}",
        "fingerprint": prints[0],
        "partitions": partitions,
        "partitionCount": len(partitions),
        "sizeBytes": size,
        "takenAt": _rfc3339(max(c.written_at for c in held)),
    }


def listed_snapshots(
    current: Iterable[Mapping[str, Any]], name: str, status: Mapping[str, Any] | None
) -> list[dict[str, Any]] | None:
    """A pipeline's status.snapshots with snapshot `name` listed as its Ready `status` says
    (None: removed); None when nothing changes (no write)."""
    listed = [dict(s) for s in current]
    kept = [s for s in listed if s.get("name") != name]
    if status is not None:
        entry = {
            "name": name,
            "fingerprint": status.get("fingerprint"),
            "reason": f"{SNAPSHOT_KIND} {name} (in Kafka topic {status.get('topic')})",
            "time": status.get("takenAt"),
            "partitions": status.get("partitionCount"),
            "sizeBytes": status.get("sizeBytes"),
        }
        # In its place when already listed (the order is the order they were listed in).
        at = next((i for i, s in enumerate(listed) if s.get("name") == name), len(kept))
        kept.insert(at, {k: v for k, v in entry.items() if v is not None})
    return None if kept == listed else kept[-20:]


def snapshot_not_ready(
    running: Description | None, want: str, name: str, why: str, generation: int | None
) -> Decision:
    """Hold an edit whose spec.state.restoreFrom names a snapshot that cannot be restored
    (yet): the workers keep running as they are, a new pipeline starts none."""
    edit = f"spec generation {generation}" if generation is not None else "the spec"
    have = fingerprint(running) if running is not None else want
    message = (
        f"{edit}: spec.state.restoreFrom {name}: {why}; the workers are not rolled until it "
        "can be restored (or remove spec.state.restoreFrom)"
    )
    return Decision(
        "hold",
        have,
        want,
        (f"state.restoreFrom: {name}",),
        Cond(STATE_COMPATIBLE, "False", "SnapshotNotReady", message),
        ("Warning", "SnapshotNotReady", message),
    )


def live_workers(deployment: Mapping[str, Any] | None) -> bool:
    """Whether some worker of the live Deployment `deployment` (as read; None: none) runs
    to take a snapshot of the running state: it asks for workers (``spec.replicas``, 1 when
    unset) and has some (``status.replicas`` or ``readyReplicas``).

    Read from the live Deployment, never from the edited spec: a reset is held until its
    snapshot is Ready, and a held edit leaves the Deployment as it is, so the workers of an
    edit that resets and sets ``suspend: true`` at once (or a suspend set while the snapshot
    is taken) keep running until they have taken it. A Deployment scaled to zero (suspended
    and rolled out, or by the autoscaler), or with no pod left, has no worker to take it."""
    if deployment is None:
        return False
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    want = spec.get("replicas", 1)
    have = max(int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0))
    return int(want if want is not None else 1) > 0 and have > 0


def _snapshot_failed(decision: Decision, have: str, message: str) -> Decision:
    """`decision` held: the snapshot it waits for cannot be used (`message` says why)."""
    return Decision(
        "hold", have, decision.desired_fingerprint, decision.changes,
        Cond(STATE_COMPATIBLE, "False", "SnapshotFailed", message),
        ("Warning", "SnapshotFailed", message),
    )  # fmt: skip


def snapshot_first(
    decision: Decision,
    name: str,
    found: Mapping[str, Any] | None,
    *,
    workers: bool,
    pipeline_uid: str | None = None,
) -> Decision:
    """A reset or replay (`decision`, which keeps a snapshot) once StreamPipelineSnapshot
    `name` holds the running state (decision 0110): `decision` itself, its messages naming
    the snapshot, when it is Ready; otherwise a hold, the workers running the previous spec
    (which is what takes the snapshot). `found`: the resource as read (None: not yet
    created); `workers`: some worker of the live Deployment runs to take it
    (:func:`live_workers`: not stopped, not scaled to zero, whatever the edited spec says);
    `pipeline_uid`: the pipeline's, which a snapshot records when it is taken."""
    assert decision.snapshot is not None
    have = decision.snapshot.split("-to-", maxsplit=1)[0]
    status = (found or {}).get("status") or {}
    taken_of = status.get("pipelineUid")
    if taken_of and pipeline_uid and taken_of != pipeline_uid:
        # A snapshot of an earlier pipeline of this name, kept (retainOnDelete) when it was
        # deleted: its name is this edit's (the generations start again at 1), but it holds
        # that pipeline's state, never this one's. Before, a Ready one of the same
        # fingerprint let the reset roll with no snapshot of the running state.
        message = (
            f"the {decision.action} waits: {SNAPSHOT_KIND} {name} is a snapshot of an earlier "
            f"{KIND} of this name (uid {taken_of}, kept by retainOnDelete), not of the running "
            "state; edit the spec again (its new generation takes a snapshot of its own "
            "name), or delete that snapshot; the workers keep running the previous spec"
        )
        return _snapshot_failed(decision, have, message)
    if not workers:
        # Nothing runs that could write it: the workers keep the volume snapshot when they
        # start (as before 0110), and nothing waits for a snapshot that cannot come.
        note = (
            f"; no worker runs to take {SNAPSHOT_KIND} {name}, so the old state is kept in "
            "the pipeline's own checkpoints only"
        )
        return _amended(decision, note)
    phase = status.get("phase") or "Pending"
    if phase == "Ready" and status.get("fingerprint") in {have, *decision.running_names}:
        note = (
            f"; and as {SNAPSHOT_KIND} {name}, restorable into this or another pipeline "
            "with spec.state.restoreFrom"
        )
        return _amended(decision, note)
    if phase in ("Ready", "Failed"):
        why = (
            status.get("message") or "failed"
            if phase == "Failed"
            else f"it holds state fingerprint {status.get('fingerprint')}, not the running {have}"
        )
        message = (
            f"the {decision.action} waits: {SNAPSHOT_KIND} {name} of the running state cannot "
            f"be used ({why}); delete it to take it again, the workers keep running the "
            "previous spec"
        )
        return _snapshot_failed(decision, have, message)
    message = (
        f"the {decision.action} waits for {SNAPSHOT_KIND} {name} of the running state "
        f"(fingerprint {have}) to be Ready before the workers discard it; they keep running "
        f"the previous spec until then ({phase}: {status.get('message') or 'requested'})"
    )
    return Decision(
        "hold", have, decision.desired_fingerprint, decision.changes,
        Cond(STATE_COMPATIBLE, "False", "TakingSnapshot", message),
    )  # fmt: skip


def _amended(decision: Decision, note: str) -> Decision:
    condition = decision.condition
    event = decision.event
    return replace(
        decision,
        condition=replace(condition, message=condition.message + note),
        event=(event[0], event[1], event[2] + note) if event is not None else None,
    )
