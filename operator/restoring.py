"""What a StreamPipelineSnapshot offers a restore, and what status it earns: pure steps.

Used by the reconciler (``streamherd.operator.reconciler``: ``spec.state.restoreFrom`` naming a
StreamPipelineSnapshot is checked before anything rolls) and by the snapshot handlers
(``streamherd.operator.snapshots``: ``snapshot_status`` turns what the snapshot topic holds
into the resource's status). No I/O except ``resource_snapshot``'s one GET.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.kube import KubeApi
from streamherd.operator.upgrades import Decision
from streamherd.workers.fingerprint import Description, fingerprint
from streamherd.workers.snapshotting import SnapshotContents

Key = tuple[str, int]


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
        kept.append({k: v for k, v in entry.items() if v is not None})
    return None if kept == listed else kept[-20:]


def resource_snapshot(
    kube: KubeApi, pipeline: StreamPipeline, name: str
) -> tuple[str | None, str | None]:
    """(its state fingerprint, None) for a Ready StreamPipelineSnapshot `name` of the
    pipeline's namespace that its workers can read; (None, why not) otherwise."""
    found = kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, pipeline.namespace, name)
    if found is None:
        return None, f"{SNAPSHOT_KIND} {name} does not exist in namespace {pipeline.namespace}"
    status = found.get("status") or {}
    if status.get("phase") != "Ready" or not status.get("fingerprint"):
        return None, (
            f"{SNAPSHOT_KIND} {name} is not Ready ({status.get('phase') or 'Pending'}: "
            f"{status.get('message') or 'not taken yet'})"
        )
    source = pipeline.spec.source.kafka
    servers = status.get("bootstrapServers")
    if source is None or servers != source.bootstrap_servers:
        return None, (
            f"{SNAPSHOT_KIND} {name} is kept on Kafka cluster {servers}, which is not this "
            "pipeline's source: its workers could not read it"
        )
    return str(status["fingerprint"]), None


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
        ("False", "SnapshotNotReady", message),
        ("Warning", "SnapshotNotReady", message),
    )
