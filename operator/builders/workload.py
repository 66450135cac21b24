"""The worker workload: Deployment, checkpoint PVC, metrics Service, PodDisruptionBudget
(the last only for a pipeline that can run more than one worker: ``pdb_protects``).

Pure functions of (pipeline, settings, ...): no API calls, no clocks, the input never
mutated, the same output every call (golden files in tests/unit/operator/golden/ hold it).
Empty optional fields are left out rather than sent empty, because the API server drops
empty maps and the reconciler's drift check compares desired fields against live ones.
"""

from __future__ import annotations

from pydantic import BaseModel

from streamherd.operator.api.v1alpha1 import WORKER_CONTAINER, StreamPipeline
from streamherd.operator.builders.credentials import credentials
from streamherd.operator.builders.meta import (
    CHECKPOINT_DIR,
    CONFIG_DIR,
    CONFIG_HASH_ANNOTATION,
    CONFIG_KEY,
    METRICS_PORT,
    RETAINED_LABEL,
    RUN_AS_USER,
    SECRETS_HASH_ANNOTATION,
    TLS_DIR,
    Manifest,
    config_map_name,
    labels,
    object_meta,
    pvc_name,
    selector_labels,
    service_name,
)
from streamherd.operator.builders.topics import uses_changelog
from streamherd.operator.builders.worker_config import build_worker_config, worker_config_json
from streamherd.operator.settings import OperatorSettings
from streamherd.workers.config import CONFIG_HASH_ENV, config_text_hash

CONTAINER_NAME = WORKER_CONTAINER
# Modes where another controller (HPA, KEDA) owns spec.replicas of the Deployment.
EXTERNAL_SCALER_MODES = frozenset({"hpa", "keda"})


def builtin_scaled(pipeline: StreamPipeline) -> bool:
    """Whether the builtin autoscaler decides the count (when not suspended): mode builtin
    on a Kafka source, whose lag it measures. Its ``status.desiredReplicas`` and ``lag``
    mean something only then: under another mode, or on another source, they are an
    earlier era's (the reconciler clears them: operator/decision.py)."""
    return pipeline.spec.autoscaling.mode == "builtin" and pipeline.spec.source.kafka is not None


def desired_replicas(pipeline: StreamPipeline) -> int | None:
    """Workers the Deployment should run; None when an HPA or KEDA owns the count.

    suspend: 0. mode none: spec.replicas. builtin: the autoscaler's status.desiredReplicas
    (clamped to [minReplicas, maxReplicas]); before its first decision, minReplicas but at
    least one, so a new pipeline starts working on whatever lag it already has (a pipeline
    that has workers already keeps their count: :func:`replicas_kept`). A builtin pipeline
    on a source the autoscaler does not measure (the generator) runs minReplicas but at
    least one: a count an earlier Kafka source's autoscaler decided, zero included, would
    stay for good, with nothing left to change it.
    """
    spec = pipeline.spec
    scaling = spec.autoscaling
    if spec.suspend:
        return 0
    if scaling.mode == "none":
        return spec.replicas
    if scaling.mode in EXTERNAL_SCALER_MODES:
        return None
    wanted = pipeline.status.desired_replicas if pipeline.status else None
    if wanted is None or not builtin_scaled(pipeline):
        wanted = max(scaling.min_replicas, 1)
    return _within_bounds(pipeline, wanted)


def _within_bounds(pipeline: StreamPipeline, count: int) -> int:
    """``count`` clamped to the builtin autoscaler's [minReplicas, maxReplicas]."""
    scaling = pipeline.spec.autoscaling
    return max(scaling.min_replicas, min(scaling.max_replicas, count))


def _live_count(live: Manifest) -> int | None:
    count = (live.get("spec") or {}).get("replicas")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return None
    return count


def replicas_kept(desired: Manifest, live: Manifest | None, pipeline: StreamPipeline) -> Manifest:
    """``desired`` with the live count where the operator does not decide it:

    - An HPA or KEDA owns it (no ``spec.replicas`` in ``desired``). Applied without a field
      its server-side apply alone owned, the API server resets it to its default, 1:
      switching a pipeline of 10 workers to keda or hpa dropped it to one worker until the
      HPA acted (a helper's finding). Applying the live count changes nothing the HPA
      decided (the operator reads it just before; applies are rare: only when the
      Deployment's own content changes). A count of 0 is KEDA's to keep (it scales from
      zero itself); under an HPA, which never scales a Deployment up from 0 (a pipeline
      resumed from ``suspend``, or KEDA's zero before a switch to hpa, which left it at 0
      for good: a helper's finding), it becomes ``minReplicas``.
    - The builtin autoscaler has made no decision yet in this era (a switch to builtin
      from none, hpa or keda; the reconciler cleared the earlier era's): the live workers'
      count, clamped to [minReplicas, maxReplicas], until its first decision. The default,
      at least one, dropped a pipeline switched from none with six workers to one. No
      workers (suspended, KEDA's zero) start at the default, as a new pipeline does.
    """
    spec = desired.get("spec") or {}
    if desired.get("kind") != "Deployment" or live is None:
        return desired
    count = _live_count(live)
    scaling = pipeline.spec.autoscaling
    if count is None:
        return desired
    if "replicas" not in spec:
        if count == 0:
            if scaling.mode != "hpa":
                return desired
            count = max(scaling.min_replicas, 1)
        return {**desired, "spec": {**spec, "replicas": count}}
    undecided = pipeline.status is None or pipeline.status.desired_replicas is None
    if pipeline.spec.suspend or not builtin_scaled(pipeline) or not undecided or count == 0:
        return desired
    return {**desired, "spec": {**spec, "replicas": _within_bounds(pipeline, count)}}


def pin_config(template: Manifest, config_hash: str) -> None:
    """Make the pods of `template` run the config of `config_hash` (decision 0196): the
    template's config-hash annotation (a change rolls the pods) and every container's
    STREAMHERD_CONFIG_HASH (the worker runs the file of that hash). For a template built
    for another config, as a verification shadow's is from the pipeline's."""
    meta = template["metadata"]
    meta["annotations"] = {**meta.get("annotations", {}), CONFIG_HASH_ANNOTATION: config_hash}
    for container in template["spec"]["containers"]:
        container["env"] = [
            {"name": CONFIG_HASH_ENV, "value": config_hash} if e["name"] == CONFIG_HASH_ENV else e
            for e in container.get("env", [])
        ]


def uses_volume(pipeline: StreamPipeline) -> bool:
    """Whether the workers mount the checkpoint claim (backend volume, the default)."""
    return not uses_changelog(pipeline)


def _rolling(pipeline: StreamPipeline) -> bool:
    """Whether a new worker may start before an old one stops: always without a volume
    (the kafka backend), else only when the volume can be attached on several nodes."""
    if not uses_volume(pipeline):
        return True
    return all(m == "ReadWriteMany" for m in pipeline.spec.checkpoint.volume.access_modes)


def _env(pipeline: StreamPipeline, config_hash: str) -> list[Manifest]:
    env: list[Manifest] = [
        {"name": "STREAMHERD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # Which config file the pod runs, whatever the ConfigMap holds by then (0196).
        {"name": CONFIG_HASH_ENV, "value": config_hash},
    ]
    for var in credentials(pipeline.spec).env:
        env.append(
            {
                "name": var.env,
                "valueFrom": {"secretKeyRef": {"name": var.secret, "key": var.key}},
            }
        )
    return env


def _volumes(pipeline: StreamPipeline) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts). The config and the TLS files share one projected volume,
    so TLS material lands under /etc/streamherd/tls/<secret>/ without nested mounts."""
    creds = credentials(pipeline.spec)
    sources: list[Manifest] = [
        {
            # Every key: the spec's config and the one the pods ran before (decision 0196).
            "configMap": {"name": config_map_name(pipeline.name)}
        }
    ]
    tls_root = TLS_DIR.removeprefix(CONFIG_DIR + "/")
    for files in creds.files:
        sources.append(
            {
                "secret": {
                    "name": files.secret,
                    "items": [
                        {"key": k, "path": f"{tls_root}/{files.secret}/{k}"} for k in files.keys
                    ],
                }
            }
        )
    volumes: list[Manifest] = [{"name": "config", "projected": {"sources": sources}}]
    mounts: list[Manifest] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if uses_volume(pipeline):
        claim = {"claimName": pvc_name(pipeline.name)}
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": claim})
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_DIR})
    # readOnlyRootFilesystem: the only scratch space is this emptyDir.
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})  # noqa: S108 - an emptyDir
    for i, vol in enumerate(creds.volumes):
        volumes.append({"name": f"secret-{i}", "secret": {"secretName": vol.secret}})
        mounts.append({"name": f"secret-{i}", "mountPath": vol.mount_path, "readOnly": True})
    return volumes, mounts


def _core(model: BaseModel) -> Manifest:
    """A typed core/v1 object (operator/api/scheduling.py) as the API server stores it."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _probe(path: str, *, period: int, failures: int, delay: int = 0) -> Manifest:
    probe: Manifest = {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe


def build_deployment(
    pipeline: StreamPipeline,
    settings: OperatorSettings,
    secrets_hash: str,
    *,
    state_epoch: int | None = None,
) -> Manifest:
    """The worker Deployment `NAME`.

    `secrets_hash` is the hash of the referenced Secrets' versions (computed by the
    reconciler from the live Secrets); it goes into the pod template so a rotation rolls
    the workers. The data itself never reaches this function.
    """
    spec = pipeline.spec
    pod = spec.pod
    config = build_worker_config(pipeline, settings, state_epoch=state_epoch)
    config_hash = config_text_hash(worker_config_json(config))
    volumes, mounts = _volumes(pipeline)

    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.worker_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["streamherd-worker"],
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": _env(pipeline, config_hash),
        "resources": {
            k: dict(v)
            for k, v in (("requests", spec.resources.requests), ("limits", spec.resources.limits))
            if v
        },
        "readinessProbe": _probe("/readyz", period=10, failures=3),
        "livenessProbe": _probe("/healthz", period=20, failures=3, delay=10),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    pod_spec: Manifest = {
        # Workers never call the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": pod.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if pod.service_account_name:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.priority_class_name:
        pod_spec["priorityClassName"] = pod.priority_class_name
    if pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        pod_spec["tolerations"] = [_core(t) for t in pod.tolerations]
    if pod.affinity:
        pod_spec["affinity"] = _core(pod.affinity)

    # User labels and annotations first: ours win, so selectors and hashes stay intact.
    template_labels = {**pod.labels, **labels(pipeline)}
    template_annotations = {
        **pod.annotations,
        CONFIG_HASH_ANNOTATION: config_hash,
        SECRETS_HASH_ANNOTATION: secrets_hash,
    }
    strategy: Manifest = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        if _rolling(pipeline)
        # A ReadWriteOnce volume can be attached to one node only: stop before starting.
        else {"type": "Recreate"}
    )
    deployment_spec: Manifest = {}
    replicas = desired_replicas(pipeline)
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    deployment_spec.update(
        {
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(pipeline)},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": template_labels, "annotations": template_annotations},
                "spec": pod_spec,
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(pipeline, pipeline.name),
        "spec": deployment_spec,
    }


def build_pvc(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """The checkpoint PersistentVolumeClaim `NAME-checkpoints`, shared by all workers."""
    volume = pipeline.spec.checkpoint.volume
    spec: Manifest = {
        "accessModes": list(volume.access_modes),
        "resources": {"requests": {"storage": volume.size}},
    }
    if volume.storage_class_name:
        spec["storageClassName"] = volume.storage_class_name
    meta = object_meta(pipeline, pvc_name(pipeline.name))
    if pipeline.spec.state.retain_on_delete:
        # No owner, so the garbage collector leaves it when the pipeline goes: a pipeline
        # re-created with the same name applies this very claim again and adopts it.
        meta.pop("ownerReferences", None)
        meta["labels"] = {**meta["labels"], RETAINED_LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta,
        "spec": spec,
    }


def build_service(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """The metrics Service `NAME-metrics` (port `metrics`, 9100) that Prometheus scrapes.

    Headless (no cluster IP): Prometheus scrapes each worker through the endpoints, never
    through a virtual IP, and allocating one was the slowest write of a new pipeline (at
    1000 pipelines the API server created ~1 Service a second; docs/scale.md).
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(pipeline, service_name(pipeline.name)),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": selector_labels(pipeline),
            "ports": [
                {
                    "name": "metrics",
                    "port": METRICS_PORT,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                }
            ],
        },
    }


def replica_ceiling(pipeline: StreamPipeline) -> int:
    """The most workers the pipeline can run as its spec stands: 0 while suspended,
    spec.replicas in mode none, autoscaling.maxReplicas in the other modes (builtin, hpa,
    keda: whoever scales stays within it)."""
    spec = pipeline.spec
    if spec.suspend:
        return 0
    if spec.autoscaling.mode == "none":
        return spec.replicas
    return spec.autoscaling.max_replicas


def pdb_protects(pipeline: StreamPipeline) -> bool:
    """Whether a PodDisruptionBudget would protect anything: only above one worker.

    With maxUnavailable 1 and at most one worker, the budget allows every eviction
    (disruptionsAllowed 1 with its one healthy pod), so it protects nothing; it would still
    cost an object, an apply and the disruption controller's status write on every pod
    change (at scale: a third of the 1000-pipeline bench runs one worker). The reconciler
    deletes the budget when the ceiling drops to 1 and creates it when it rises again.
    """
    return replica_ceiling(pipeline) > 1


def build_pdb(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """PodDisruptionBudget `NAME`: voluntary evictions take one worker at a time.

    Built only when ``pdb_protects(pipeline)`` (see build_all).
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(pipeline, pipeline.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(pipeline)}},
    }
