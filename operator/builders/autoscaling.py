"""The HPA and KEDA objects for the ``hpa`` and ``keda`` autoscaling modes (pure builders).

Used by the operator's ``build_all`` (operator/builders/__init__.py), by ``streamherd render``
and by the tests; same input, same output, no I/O.

- ``hpa``: an autoscaling/v2 HorizontalPodAutoscaler on the External metric
  ``streamherd_pipeline_lag`` (selector ``pipeline=NAME``), target AverageValue
  ``lagPerReplica``, so the HPA wants ``ceil(total lag / lagPerReplica)`` replicas. The
  metric is the workers' ``streamherd_worker_consumer_lag`` summed per pipeline by the
  Prometheus adapter (rule in :data:`PROMETHEUS_ADAPTER_RULE` and docs/autoscaling.md).
- ``keda``: a KEDA ScaledObject with one ``kafka`` trigger per source topic and one for
  the repartition topic when the pipeline re-keys through one (KEDA takes the largest),
  ``lagThreshold`` = lagPerReplica, ``activationLagThreshold`` = activationLag,
  ``offsetResetPolicy`` = startFrom; plus a TriggerAuthentication when the source uses SASL
  or TLS, pointing at the same Secrets the workers use (never copying their data).
"""

from __future__ import annotations

import math
from typing import Any, Final

from streamherd.operator.api.v1alpha1 import KafkaAuth, StreamPipeline
from streamherd.operator.builders.keying import repartition_topic
from streamherd.operator.builders.meta import Manifest, object_meta
from streamherd.operator.settings import OperatorSettings
from streamherd.workers.config import parse_duration

HPA_API: Final = "autoscaling/v2"
KEDA_API: Final = "keda.sh/v1alpha1"
EXTERNAL_METRIC: Final = "streamherd_pipeline_lag"

# The prometheus-adapter rule (values.yaml `rules.external`) that serves EXTERNAL_METRIC.
PROMETHEUS_ADAPTER_RULE: Final = {
    "seriesQuery": 'streamherd_worker_consumer_lag{namespace!="",pipeline!=""}',
    "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
    "name": {"matches": "^streamherd_worker_consumer_lag$", "as": EXTERNAL_METRIC},
    "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (namespace, pipeline)",
}

_SASL_MODES: Final = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
}


#: KEDA's pollingInterval and cooldownPeriod are int32 seconds (68 years): a duration
#: beyond them is held at that, as good as forever, and not refused by KEDA's API.
_INT32_MAX: Final = 2**31 - 1


def _seconds(duration: str) -> int:
    return min(math.ceil(parse_duration(duration)), _INT32_MAX)


def _scale_target(pipeline: StreamPipeline) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": pipeline.name}


def build_hpa(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """autoscaling/v2 HPA on the pipeline's total lag (minReplicas >= 1 by validation)."""
    del settings  # same shape for every operator configuration
    a = pipeline.spec.autoscaling
    stabilization = min(_seconds(a.scale_down_stabilization), 3600)  # the API's maximum
    return {
        "apiVersion": HPA_API,
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(pipeline, pipeline.name),
        "spec": {
            "scaleTargetRef": _scale_target(pipeline),
            "minReplicas": max(1, a.min_replicas),
            "maxReplicas": a.max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": EXTERNAL_METRIC,
                            "selector": {"matchLabels": {"pipeline": pipeline.name}},
                        },
                        "target": {"type": "AverageValue", "averageValue": str(a.lag_per_replica)},
                    },
                }
            ],
            "behavior": {
                # Scale-up as the HPA default (max of 4 pods or 100% per 15 s, no wait);
                # scale-down after the pipeline's stabilization window.
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 15},
                        {"type": "Percent", "value": 100, "periodSeconds": 15},
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": stabilization,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                },
            },
        },
    }


def trigger_authentication_name(pipeline: StreamPipeline) -> str:
    return f"{pipeline.name}-kafka"


def _auth_parameters(auth: KafkaAuth) -> list[dict[str, str]]:
    refs: list[dict[str, str]] = []
    if auth.sasl is not None:
        refs += [
            {
                "parameter": "username",
                "name": auth.sasl.username.name,
                "key": auth.sasl.username.key,
            },
            {
                "parameter": "password",
                "name": auth.sasl.password.name,
                "key": auth.sasl.password.key,
            },
        ]
    if auth.tls is not None:
        refs.append({"parameter": "ca", "name": auth.tls.secret_name, "key": "ca.crt"})
        if auth.tls.client_certificate:
            refs += [
                {"parameter": "cert", "name": auth.tls.secret_name, "key": "tls.crt"},
                {"parameter": "key", "name": auth.tls.secret_name, "key": "tls.key"},
            ]
    return refs


def build_trigger_authentication(
    pipeline: StreamPipeline, settings: OperatorSettings
) -> Manifest | None:
    """The KEDA TriggerAuthentication for a SASL/TLS source; None when none is needed."""
    del settings
    kafka = pipeline.spec.source.kafka
    if kafka is None or kafka.auth is None:
        return None
    refs = _auth_parameters(kafka.auth)
    if not refs:
        return None
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": object_meta(pipeline, trigger_authentication_name(pipeline)),
        "spec": {"secretTargetRef": refs},
    }


def build_scaled_object(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """KEDA ScaledObject: one kafka trigger per source topic (KEDA scales on the largest)."""
    a = pipeline.spec.autoscaling
    kafka = pipeline.spec.source.kafka
    if kafka is None:
        raise ValueError("keda mode needs a Kafka source (its trigger reads the group's lag)")
    group = pipeline.consumer_group or ""
    auth_ref = build_trigger_authentication(pipeline, settings)
    triggers: list[dict[str, Any]] = []
    # The repartition topic's lag is the same group's (the window's side of a re-keyed
    # pipeline): one more trigger, so KEDA scales on it as on any source topic.
    repartition = repartition_topic(pipeline)
    for topic in (*kafka.topics, *((repartition,) if repartition is not None else ())):
        metadata = {
            "bootstrapServers": kafka.bootstrap_servers,
            "consumerGroup": group,
            "topic": topic,
            "lagThreshold": str(a.lag_per_replica),
            "activationLagThreshold": str(a.activation_lag),
            "offsetResetPolicy": kafka.start_policy,
            "allowIdleConsumers": "false",
            # What a careful user sets, and what builtin mode does too: replica counts that
            # give every worker the same number of partitions, and no scaling for the lag of
            # a partition whose committed offset did not move since KEDA's previous poll (a
            # stuck consumer; more workers do not unstick it). Decision 0151.
            "ensureEvenDistributionOfPartitions": "true",
            "excludePersistentLag": "true",
        }
        if kafka.auth is not None and kafka.auth.sasl is not None:
            metadata["sasl"] = _SASL_MODES[kafka.auth.sasl.mechanism]
        if kafka.auth is not None and kafka.auth.tls is not None:
            metadata["tls"] = "enable"
        trigger: dict[str, Any] = {"type": "kafka", "metadata": metadata}
        if auth_ref is not None:
            trigger["authenticationRef"] = {"name": trigger_authentication_name(pipeline)}
        triggers.append(trigger)
    stabilization = min(_seconds(a.scale_down_stabilization), 3600)
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": object_meta(pipeline, pipeline.name),
        "spec": {
            "scaleTargetRef": _scale_target(pipeline),
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "pollingInterval": max(1, _seconds(a.poll_interval)),
            # cooldownPeriod: how long after the last active trigger KEDA scales to zero.
            "cooldownPeriod": _seconds(a.idle_timeout),
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "name": pipeline.name,
                    "behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": stabilization},
                    },
                }
            },
            "triggers": triggers,
        },
    }


def build_autoscaler_objects(
    pipeline: StreamPipeline, settings: OperatorSettings
) -> list[Manifest]:
    """Every autoscaling object the pipeline's mode needs: [] for builtin/none or suspended."""
    mode = pipeline.spec.autoscaling.mode
    if pipeline.spec.suspend:
        return []
    if mode == "hpa":
        return [build_hpa(pipeline, settings)]
    if mode == "keda":
        auth = build_trigger_authentication(pipeline, settings)
        return [*([auth] if auth is not None else []), build_scaled_object(pipeline, settings)]
    return []


__all__ = [
    "EXTERNAL_METRIC",
    "PROMETHEUS_ADAPTER_RULE",
    "build_autoscaler_objects",
    "build_hpa",
    "build_scaled_object",
    "build_trigger_authentication",
]
