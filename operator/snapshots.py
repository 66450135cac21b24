"""The StreamPipelineSnapshot handlers: request, follow, list, delete (decision 0070).

Registered by ``streamherd.operator.handlers.build_registry``. Level-based, like the
pipeline reconciler: a timer looks at each snapshot that is not finished yet, every few
seconds, and does what its state asks:

- the pipeline does not exist (yet): Pending, with the reason;
- otherwise the snapshot's Kafka topic (``streamherd.workers.snapshotting.snapshot_topic``)
  is created on the pipeline's source cluster if it is not there: that is the request the
  workers see (they write their partitions at their next checkpoint). A snapshot the
  pipeline owns (taken before a reset or replay) waits, Pending, until deleting the
  pipeline would deal with it first (:func:`deletes_with`: the pipeline lists it and holds
  the finalizer), so that its topic is never left by the pipeline's deletion (decision
  0174): deleted with it, or kept with it when the pipeline is deleted with
  ``spec.state.retainOnDelete`` (:func:`keep_state_snapshots`, decision 0177);
- the topic is read back and its contents judged (``streamherd.operator.restoring.
  snapshot_status``): Taking until every partition is in it, then Ready with the
  fingerprint, offsets and sizes, and the pipeline's status.snapshots lists it.

A slower timer keeps a Ready snapshot listed in its pipeline's status (the reconciler keeps
entries it did not add, but a write of its own may race ours). Deleting the resource deletes
its topic first (kopf's finalizer), the one its name gives whether or not its status names
it (the step that made it may have died before its status was written); a topic that
cannot be reached any more (the pipeline and its credentials are gone) is named in a
Warning event and left.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from confluent_kafka import KafkaException

from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND, SNAPSHOT_PLURAL
from streamherd.operator.api.v1alpha1 import GROUP, KIND, VERSION, StreamPipeline
from streamherd.operator.builders.keying import repartition_topic
from streamherd.operator.builders.meta import (
    CONFIG_KEY,
    FINALIZER,
    PIPELINE_LABEL,
    config_map_name,
)
from streamherd.operator.builders.snapshot import (
    TAKEN_BEFORE_LABEL,
    is_keepable,
    lists_state_snapshot,
    made_before,
    requested_by,
)
from streamherd.operator.kafkaadmin import KafkaAdmin, KafkaAdminError, TopicRequest
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.kube import ApiError, KubeApi
from streamherd.operator.reconciler import release_state_snapshot
from streamherd.operator.restoring import listed_snapshots, snapshot_status
from streamherd.operator.upgrades import running_view
from streamherd.operator.validation import (
    deletion_pipeline,
    parse_pipeline,
    stored_list,
    stored_status,
)
from streamherd.workers.repartitioning import source_partitions
from streamherd.workers.snapshotting import read_snapshot, snapshot_topic

log = logging.getLogger(__name__)

#: How often an unfinished snapshot is looked at, and a Ready one re-listed.
FOLLOW_SECONDS = 3.0
LIST_SECONDS = 60.0
KAFKA_TIMEOUT = 10.0
#: A topic per snapshot, one partition, kept until the resource is deleted.
TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def _pipeline(kube: KubeApi, namespace: str, name: str) -> tuple[StreamPipeline | None, str]:
    body = kube.get(f"{GROUP}/{VERSION}", KIND, namespace, name)
    if body is None:
        return None, f"{KIND} {name} not found in namespace {namespace}"
    pipeline, problems = parse_pipeline({k: v for k, v in body.items() if k != "status"})
    if pipeline is None or problems:
        return None, f"{KIND} {name} is invalid: {'; '.join(problems)[:300]}"
    return StreamPipeline.model_validate(body), ""


def ensure_topic(admin: KafkaAdmin, topic: str) -> None:
    """Create a snapshot's topic unless it exists: the request the workers see."""
    admin.create_topics([TopicRequest(topic, 1, TOPIC_CONFIG)])


def follow(
    kube: KubeApi,
    namespace: str,
    name: str,
    spec: Any,
    status: Any,
    *,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One level-based step of a snapshot (see the module docstring): the status to write.
    `meta`: the snapshot's metadata (its owners)."""
    wanted = str(spec.get("pipeline", ""))
    pipeline, why = _pipeline(kube, namespace, wanted)
    if pipeline is None:
        if status.get("topic"):  # it was being taken: it never will be now
            return {"phase": "Failed", "message": f"{why}: the snapshot cannot be completed"}
        return {"phase": "Pending", "message": why}
    source = pipeline.spec.source.kafka
    if source is None:
        return {"phase": "Failed", "message": f"{KIND} {wanted} has no Kafka source"}
    uid = (pipeline.metadata or {}).get("uid")
    if status.get("pipelineUid") not in (None, uid):
        return {
            "phase": "Failed",
            "message": f"{KIND} {wanted} was deleted and created again while it was taken",
        }
    if (
        not status.get("pipelineUid")
        and TAKEN_BEFORE_LABEL in ((meta or {}).get("labels") or {})
        and made_before({"metadata": dict(meta or {})}, pipeline.metadata or {})
    ):
        # Requested before a reset or replay of an earlier pipeline of the name, whose
        # deletion left it unfinished: taken now, it would hold this pipeline's state of
        # today under that earlier request's name, and a reset of this one reaching that
        # name would roll on it, the state since then lost (a review; decision 0178).
        return {
            "phase": "Failed",
            "message": f"requested by an earlier {KIND} {wanted} (deleted before this one was "
            "created), before its reset or replay: never taken of this one; delete it",
        }
    try:
        cluster = cluster_from_secrets(kube, pipeline)
    except ValueError as error:
        return {"phase": "Pending", "message": f"cannot reach the source cluster: {error}"}
    topic = snapshot_topic(namespace, wanted, name)
    owned = uid and any(r.get("uid") == uid for r in (meta or {}).get("ownerReferences") or [])
    # A snapshot the pipeline owns goes with it (taken before a reset or replay): its topic
    # is made once deleting the pipeline deletes it first (decision 0174).
    if (
        owned
        and not status.get("topic")
        and not deletes_with(kube.get(f"{GROUP}/{VERSION}", KIND, namespace, wanted), name)
    ):
        return {
            "phase": "Pending",
            "message": f"waiting until {KIND} {wanted} lists it and holds the finalizer "
            "that deletes it (and its topic) with the pipeline",
        }
    conf: dict[str, Any] = dict(cluster.client_config())
    with KafkaAdmin.connect(cluster, KAFKA_TIMEOUT) as admin:
        ensure_topic(admin, topic)
        contents = read_snapshot(conf, topic, timeout=KAFKA_TIMEOUT)
        if contents is None:  # created a moment ago: not in the metadata yet
            return {"phase": "Taking", "message": "waiting for the snapshot topic", "topic": topic}
        topics = snapshot_topics(kube, namespace, wanted, pipeline)
        upstreams = source_partitions(admin.client, topics, timeout=KAFKA_TIMEOUT)
    expected = {(u[0], u[1]) for u in upstreams}
    result = snapshot_status(contents, expected, topic, source.bootstrap_servers)
    result["pipelineUid"] = uid
    return result


def snapshot_topics(
    kube: KubeApi, namespace: str, name: str, pipeline: StreamPipeline
) -> list[str]:
    """The topics whose partitions a snapshot of pipeline ``name`` holds: those the running
    workers own (their source topics and repartition topic, from the ConfigMap they run),
    or the spec's when no worker config is there yet.

    The workers write a snapshot, so it is complete when each partition *they* own is in
    it. Before a reset the spec is already edited (a topic added, repartitioning switched
    on or off) while the workers still run the previous config: judged by the edited
    spec, the snapshot waited for partitions no running worker owns, and the reset stayed
    at TakingSnapshot for good (a review's finding)."""
    running = _running_topics(kube, namespace, name)
    if running is not None:
        return running
    source = pipeline.spec.source.kafka
    topics = list(source.topics) if source is not None else []
    internal = repartition_topic(pipeline)
    if internal is not None:
        topics.append(internal)
    return topics


def _running_topics(kube: KubeApi, namespace: str, pipeline: str) -> list[str] | None:
    """The running workers' source and repartition topics; None when there is no worker
    config with a Kafka source to read."""
    config_map = running_view(  # what the pods run (decision 0196)
        kube.get("v1", "ConfigMap", namespace, config_map_name(pipeline)),
        kube.get("apps/v1", "Deployment", namespace, pipeline),
    )
    raw = ((config_map or {}).get("data") or {}).get(CONFIG_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
        topics = [str(t) for t in config["source"]["kafka"]["topics"]]
        internal = (config.get("repartition") or {}).get("topic")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # not a worker config with a Kafka source: judged by the spec
    if internal:
        topics.append(str(internal))
    return topics


def list_in_pipeline(
    kube: KubeApi, namespace: str, name: str, pipeline: str, status: Any | None
) -> None:
    """Make `pipeline`'s status.snapshots list snapshot `name` as `status` says (None: not)."""
    body = kube.get(f"{GROUP}/{VERSION}", KIND, namespace, pipeline)
    if body is None:
        return
    current = stored_list(stored_status(body), "snapshots")
    listed = listed_snapshots(current, name, status)
    if listed is not None:
        kube.patch_status(namespace, pipeline, {"snapshots": listed or None})


def delete_topic(kube: KubeApi, namespace: str, name: str, spec: Any, status: Any) -> str | None:
    """Delete snapshot `name`'s topic; why it was left, or None. Its name follows from the
    snapshot's (the one status names, when it names one): a topic made by a step whose
    status write was lost is deleted too (decision 0174)."""
    wanted = str(spec.get("pipeline", ""))
    known = status.get("topic")
    topic = known or snapshot_topic(namespace, wanted, name)
    # Reached through the source alone when the stored spec no longer parses (decision
    # 0189): a pipeline deleted with a malformed spec.state deletes its snapshots, whose
    # topics were left when this read the whole spec.
    body = kube.get(f"{GROUP}/{VERSION}", KIND, namespace, wanted)
    pipeline = deletion_pipeline(body) if body is not None else None
    why = (
        f"{KIND} {wanted} not found in namespace {namespace}"
        if body is None
        else f"{KIND} {wanted}: spec.source does not parse"
    )
    if pipeline is None or pipeline.spec.source.kafka is None:
        if not known:
            return None  # no topic was known to be made, and none can be reached
        return f"Kafka topic {topic} left on {status.get('bootstrapServers')}: {why}"
    with KafkaAdmin.connect(cluster_from_secrets(kube, pipeline), KAFKA_TIMEOUT) as admin:
        failed = admin.delete_topics([topic]).failed
    if failed:
        raise KafkaAdminError(failed[topic])
    return None


def deletes_with(body: Mapping[str, Any] | None, name: str) -> bool:
    """Whether deleting the pipeline `body` (as stored) deals with snapshot `name` first
    (deletes it with its topic, or with retainOnDelete keeps it: decision 0177): it holds
    kopf's finalizer, and the delete-snapshots handler's filter
    (:func:`lists_state_snapshots`) holds for it, listing `name`."""
    if body is None or FINALIZER not in ((body.get("metadata") or {}).get("finalizers") or []):
        return False
    listed = stored_list(stored_status(body), "snapshots")
    return lists_state_snapshots(body) and any(
        isinstance(s, Mapping) and s.get("name") == name for s in listed
    )


def lists_state_snapshots(body: Any) -> bool:
    """Whether deleting this pipeline must first deal with the StreamPipelineSnapshots taken
    before its resets and replays (so it gets the finalizer): its status lists one (the
    name says: `-reset-g<n>`, `-replay-g<n>`). Deleting those it owns while the pipeline
    is still there lets their finalizer reach the Kafka cluster with the pipeline's
    credentials (after it, their topics would be left); with retainOnDelete the Ready ones
    are kept instead (:func:`keep_state_snapshots`). Whatever retainOnDelete says now: it
    decides at the deletion, and one set after a reset took the finalizer away, so the
    garbage collector deleted the snapshot it kept and left its topic (decision 0177)."""
    return lists_state_snapshot(stored_status(body))


def _owned_state_snapshots(
    kube: KubeApi, namespace: str, name: str, uid: str
) -> list[dict[str, Any]]:
    """The StreamPipelineSnapshots pipeline `name` (`uid`) owns: taken before its resets and
    replays (decision 0110) while it did not keep its state. Those without its owner are
    kept (retainOnDelete when they were taken, or at an earlier deletion) or someone
    else's."""
    selector = f"{PIPELINE_LABEL}={name},{TAKEN_BEFORE_LABEL}"
    found = kube.list(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, namespace, selector)
    return [
        snap
        for snap in found
        if any(
            r.get("uid") == uid for r in (snap.get("metadata") or {}).get("ownerReferences") or []
        )
    ]


def delete_state_snapshots(
    kube: KubeApi, namespace: str, name: str, uid: str, created: str | None = None
) -> list[str]:
    """Delete the StreamPipelineSnapshots this pipeline owns (taken before a reset or
    replay, decision 0110), and those it requested under retainOnDelete (no owner) that are
    not Ready: an unfinished or failed one holds no state to keep, and left without its
    pipeline a Pending one made its topic for, and snapshotted, the next pipeline of that
    name (decision 0178; `created`: the pipeline's creationTimestamp, which tells its own
    from an earlier pipeline's, :func:`builders.snapshot.requested_by`). The names of those
    still there (their finalizers run)."""
    pipeline_meta = {"uid": uid, "creationTimestamp": created}
    selector = f"{PIPELINE_LABEL}={name},{TAKEN_BEFORE_LABEL}"
    left = []
    for snap in kube.list(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, namespace, selector):
        meta = snap["metadata"]
        owned = any(r.get("uid") == uid for r in meta.get("ownerReferences") or [])
        unfinished = (snap.get("status") or {}).get("phase") != "Ready"
        if not owned and not (unfinished and requested_by(snap, pipeline_meta) is True):
            continue
        if not meta.get("deletionTimestamp"):
            kube.delete(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, namespace, str(meta["name"]))
        left.append(str(meta["name"]))
    return left


def keep_state_snapshots(kube: KubeApi, namespace: str, name: str, uid: str) -> list[str]:
    """Keep the Ready StreamPipelineSnapshots this pipeline still owns, deleted with
    retainOnDelete (decision 0177): each gets no owner and the retained label, as the
    reconcile does while retainOnDelete is on, so the garbage collector leaves it, and its
    topic with it. Only Ready ones are state worth keeping: one still Pending or Taking,
    left without its pipeline, would make its topic for (or snapshot) a later pipeline of
    that name, and a Failed one holds no usable state; they stay owned, and the deletion
    deletes them with their topics (:func:`delete_state_snapshots`). The names kept (one
    already being deleted goes; one deleted since the LIST is not made again). One written
    since the LIST raises ApiError 409: the deletion deletes what is still owned next, so
    it must not go on before that one is kept (kopf runs the handler again)."""
    kept = []
    for snap in _owned_state_snapshots(kube, namespace, name, uid):
        if not is_keepable(snap):
            continue
        done = release_state_snapshot(kube, snap, uid)
        if done == "changed":
            raise ApiError(
                409, "Conflict", f"{SNAPSHOT_KIND} {snap['metadata']['name']} changed while "
                "it was kept: looking again",
            )  # fmt: skip
        if done == "kept":
            kept.append(str(snap["metadata"]["name"]))
    return kept


def _unfinished(status: Any, **_: Any) -> bool:
    return bool(status.get("phase") not in ("Ready", "Failed"))


def _ready(status: Any, **_: Any) -> bool:
    return bool(status.get("phase") == "Ready")


def register_snapshots(registry: Any) -> None:
    """Add the StreamPipelineSnapshot handlers to a kopf registry."""
    resource = (GROUP, VERSION, SNAPSHOT_PLURAL)

    @kopf.timer(*resource, id="snapshot-follow", interval=FOLLOW_SECONDS, when=_unfinished,
                registry=registry)  # fmt: skip
    def follow_snapshot(
        *,
        namespace: str | None,
        name: str | None,
        spec: Any,
        status: Any,
        meta: Any,
        patch: kopf.Patch,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        kube: KubeApi = memo["ctx"].kube
        ns, snap = str(namespace), str(name)
        try:
            result = follow(kube, ns, snap, spec, status, meta=meta)
        except (KafkaException, KafkaAdminError, ApiError, TimeoutError) as error:
            # TimeoutError: a read of the snapshot topic that got no answer in time.
            why = str(error) or "the source cluster did not answer in time"
            result = {
                "phase": status.get("phase") or "Pending",
                "message": f"retrying: {why}"[:500],
            }
        changed = {k: v for k, v in result.items() if status.get(k) != v}
        if changed:
            patch.status.update(changed)
        if result.get("phase") == "Ready":
            list_in_pipeline(kube, ns, snap, str(spec.get("pipeline")), result)
            log.info("snapshot %s/%s ready: %s", ns, snap, result.get("message"))

    @kopf.timer(*resource, id="snapshot-listed", interval=LIST_SECONDS, when=_ready,
                registry=registry)  # fmt: skip
    def keep_listed(
        *,
        namespace: str | None,
        name: str | None,
        spec: Any,
        status: Any,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        kube: KubeApi = memo["ctx"].kube
        list_in_pipeline(kube, str(namespace), str(name), str(spec.get("pipeline")), status)

    @kopf.on.delete(*resource, id="snapshot-delete", registry=registry)
    def delete_snapshot(
        *,
        namespace: str | None,
        name: str | None,
        spec: Any,
        status: Any,
        body: kopf.Body,
        memo: kopf.Memo,
        retry: int,
        **_: Any,
    ) -> None:
        kube: KubeApi = memo["ctx"].kube
        ns = str(namespace)
        try:
            left = delete_topic(kube, ns, str(name), spec, status)
        except (KafkaAdminError, ValueError) as error:
            if retry < 5:
                raise kopf.TemporaryError(
                    f"deleting the snapshot topic: {error}", delay=5
                ) from error
            left = f"Kafka topic {status.get('topic')} left: {error}"
        if left is not None:
            kopf.warn(body, reason="SnapshotTopicLeft", message=left)
        try:
            list_in_pipeline(kube, ns, str(name), str(spec.get("pipeline")), None)
        except ApiError as error:
            if error.status != 404:
                raise

    _ = (follow_snapshot, keep_listed, delete_snapshot)
