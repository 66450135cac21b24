"""Pure builders: StreamPipeline (+ operator settings) -> the Kubernetes objects it owns.

``build_all`` returns the ordered list of desired children; the reconciler applies it, the
``streamherd render`` command prints it, golden-file tests pin it. Nothing here talks to
the API server: what the cluster offers (monitoring.coreos.com, KEDA) and the hash of the
referenced Secrets come in as arguments.

HPA and KEDA objects are the autoscaler's (operator/builders/autoscaling.py:
``build_autoscaler_objects(pipeline, settings)``); ``build_all`` includes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.autoscaling import HPA_API, KEDA_API, build_autoscaler_objects
from streamherd.operator.builders.meta import (
    Manifest,
    config_map_name,
    pvc_name,
    service_name,
    stamp_input_hash,
)
from streamherd.operator.builders.monitoring import (
    MONITORING_API,
    build_prometheus_rule,
    build_service_monitor,
)
from streamherd.operator.builders.worker_config import build_config_map, build_worker_config
from streamherd.operator.builders.workload import (
    build_deployment,
    build_pdb,
    build_pvc,
    build_service,
    desired_replicas,
    pdb_protects,
    replica_ceiling,
    uses_volume,
)
from streamherd.operator.settings import OperatorSettings


@dataclass(frozen=True)
class Capabilities:
    """Optional APIs the cluster serves (from discovery); all True offline (render)."""

    service_monitor: bool = True
    prometheus_rule: bool = True
    keda: bool = True


@dataclass(frozen=True)
class ChildKind:
    """A kind of object a pipeline may own, and how the child of that kind is named."""

    api_version: str
    kind: str
    name: Callable[[str], str]
    optional_api: bool = False  # served only when a CRD is installed


def _same(name: str) -> str:
    return name


# Every kind a pipeline can own, in apply order: config and storage before the workers
# that mount them. The reconciler deletes children of these kinds that are no longer
# desired (monitoring switched off, autoscaling mode changed, the replica ceiling down to
# one worker so the PodDisruptionBudget goes).
CHILD_KINDS: Final = (
    ChildKind("v1", "ConfigMap", config_map_name),
    ChildKind("v1", "PersistentVolumeClaim", pvc_name),
    ChildKind("v1", "Service", service_name),
    ChildKind("apps/v1", "Deployment", _same),
    ChildKind("policy/v1", "PodDisruptionBudget", _same),
    ChildKind(MONITORING_API, "ServiceMonitor", _same, optional_api=True),
    ChildKind(MONITORING_API, "PrometheusRule", _same, optional_api=True),
    ChildKind(HPA_API, "HorizontalPodAutoscaler", _same),
    ChildKind(KEDA_API, "TriggerAuthentication", lambda name: f"{name}-kafka", optional_api=True),
    ChildKind(KEDA_API, "ScaledObject", _same, optional_api=True),
)


def autoscaling_children(pipeline: StreamPipeline, settings: OperatorSettings) -> list[Manifest]:
    """The HPA, or the KEDA ScaledObject (+ TriggerAuthentication), the mode needs.

    Built by the autoscaler's builders; none while suspended (replicas pinned to 0).
    """
    return build_autoscaler_objects(pipeline, settings)


def build_all(
    pipeline: StreamPipeline,
    settings: OperatorSettings,
    *,
    secrets_hash: str,
    capabilities: Capabilities,
    state_epoch: int | None = None,
) -> list[Manifest]:
    """Every desired child, in apply order, each annotated with its input hash;
    `state_epoch`: the generation whose roll last started the state anew (0175)."""
    monitoring = pipeline.spec.monitoring
    children = [build_config_map(pipeline, settings, state_epoch=state_epoch)]
    # The kafka state backend keeps checkpoints in a changelog topic: no claim.
    if uses_volume(pipeline):
        children.append(build_pvc(pipeline, settings))
    children += [
        build_service(pipeline, settings),
        build_deployment(pipeline, settings, secrets_hash, state_epoch=state_epoch),
    ]
    # At most one worker: a budget would allow every eviction anyway (pdb_protects says why).
    if pdb_protects(pipeline):
        children.append(build_pdb(pipeline, settings))
    if monitoring.service_monitor and capabilities.service_monitor:
        children.append(build_service_monitor(pipeline, settings))
    if monitoring.prometheus_rule and capabilities.prometheus_rule:
        children.append(build_prometheus_rule(pipeline, settings))
    for child in autoscaling_children(pipeline, settings):
        # Without KEDA installed the mode cannot work; the reconciler reports it (Degraded).
        if child["apiVersion"] == KEDA_API and not capabilities.keda:
            continue
        children.append(child)
    return [stamp_input_hash(c) for c in children]


__all__ = [
    "CHILD_KINDS",
    "HPA_API",
    "KEDA_API",
    "Capabilities",
    "ChildKind",
    "build_all",
    "build_config_map",
    "build_deployment",
    "build_pdb",
    "build_prometheus_rule",
    "build_pvc",
    "build_service",
    "build_service_monitor",
    "build_worker_config",
    "desired_replicas",
    "pdb_protects",
    "replica_ceiling",
    "uses_volume",
]
