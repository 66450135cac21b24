"""HPA, KEDA ScaledObject and TriggerAuthentication builders (operator/builders/autoscaling.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.autoscaling import (
    EXTERNAL_METRIC,
    build_autoscaler_objects,
    build_hpa,
    build_scaled_object,
)
from streamherd.operator.builders.keying import repartition_topic
from streamherd.operator.settings import OperatorSettings
from tests.infra.paths import EXAMPLES_DIR

EXAMPLES = EXAMPLES_DIR
SETTINGS = OperatorSettings()


def _pipeline(mode: str, **autoscaling: Any) -> StreamPipeline:
    raw = yaml.safe_load((EXAMPLES / "02-clicks-per-minute.yaml").read_text())
    raw["metadata"]["namespace"] = "shop"
    raw["spec"]["autoscaling"] = {"mode": mode, **autoscaling}
    return StreamPipeline.model_validate(raw)


def _secure(mode: str) -> StreamPipeline:
    raw = yaml.safe_load((EXAMPLES / "03-orders-secure.yaml").read_text())
    raw["spec"]["autoscaling"]["mode"] = mode
    return StreamPipeline.model_validate(raw)


def test_hpa_on_the_external_lag_metric() -> None:
    p = _pipeline(
        "hpa", minReplicas=2, maxReplicas=12, lagPerReplica=5000, scaleDownStabilization="2m"
    )
    hpa = build_hpa(p, SETTINGS)
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"]["name"] == p.name and hpa["metadata"]["namespace"] == "shop"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": p.name}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 12)
    (metric,) = spec["metrics"]
    assert metric["external"]["metric"] == {
        "name": EXTERNAL_METRIC,
        "selector": {"matchLabels": {"pipeline": p.name}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "5000"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("999999h", 2**31 - 1), ("596524h", 2**31 - 1), ("596523h", 596523 * 3600), ("1ms", 1)],
)
def test_keda_intervals_stay_within_int32(duration: str, seconds: int) -> None:
    """KEDA's pollingInterval and cooldownPeriod are int32 seconds: 999999h (3.6e9 s, a
    duration the manifest allows) would be refused by KEDA's API; it is held at 2**31-1."""
    p = _pipeline("keda", minReplicas=0, idleTimeout=duration, pollInterval=duration)
    spec = build_scaled_object(p, SETTINGS)["spec"]
    assert spec["pollingInterval"] == spec["cooldownPeriod"] == seconds


def test_scaled_object_maps_every_field() -> None:
    p = _pipeline(
        "keda",
        minReplicas=0,
        maxReplicas=6,
        lagPerReplica=250,
        activationLag=10,
        idleTimeout="10m",
        pollInterval="20s",
        scaleDownStabilization="90s",
    )
    so = build_scaled_object(p, SETTINGS)
    spec = so["spec"]
    kafka = p.spec.source.kafka
    assert kafka is not None
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 6)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (20, 600)
    hpa_cfg = spec["advanced"]["horizontalPodAutoscalerConfig"]
    assert hpa_cfg["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 90
    # The source topics, then the repartition topic the same group consumes (the example
    # counts per page a stream keyed by user, so it re-keys).
    repartition = repartition_topic(p)
    assert repartition == f"streamherd.{p.namespace}.{p.name}.repartition"
    topics = [*kafka.topics, repartition]
    assert len(spec["triggers"]) == len(topics)
    for trigger, topic in zip(spec["triggers"], topics, strict=True):
        assert trigger["type"] == "kafka"
        assert trigger["metadata"] == {
            "bootstrapServers": kafka.bootstrap_servers,
            "consumerGroup": p.consumer_group,
            "topic": topic,
            "lagThreshold": "250",
            "activationLagThreshold": "10",
            "offsetResetPolicy": kafka.start_from,
            "allowIdleConsumers": "false",
            "ensureEvenDistributionOfPartitions": "true",
            "excludePersistentLag": "true",
        }
        assert "authenticationRef" not in trigger
    assert build_autoscaler_objects(p, SETTINGS) == [so]


def test_keda_with_sasl_gets_a_trigger_authentication_from_the_same_secrets() -> None:
    p = _secure("keda")
    objs = build_autoscaler_objects(p, SETTINGS)
    kinds = [o["kind"] for o in objs]
    assert kinds == ["TriggerAuthentication", "ScaledObject"]
    auth, so = objs
    kafka = p.spec.source.kafka
    assert kafka is not None and kafka.auth is not None and kafka.auth.sasl is not None
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    sasl = kafka.auth.sasl
    assert refs["username"] == (sasl.username.name, sasl.username.key)
    assert refs["password"] == (sasl.password.name, sasl.password.key)
    for trigger in so["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert trigger["metadata"]["sasl"] in {"plaintext", "scram_sha256", "scram_sha512"}
    # Only references: no secret material anywhere in the objects.
    assert "password:" not in yaml.safe_dump(objs).replace("parameter: password", "")


@pytest.mark.parametrize("mode", ["builtin", "none"])
def test_other_modes_build_nothing(mode: str) -> None:
    assert build_autoscaler_objects(_pipeline(mode), SETTINGS) == []


def test_suspended_builds_nothing_and_builders_are_pure() -> None:
    p = _pipeline("keda")
    before = copy.deepcopy(p.model_dump())
    assert build_scaled_object(p, SETTINGS) == build_scaled_object(p, SETTINGS)
    assert p.model_dump() == before
    raw = p.model_dump(by_alias=True)
    raw["spec"]["suspend"] = True
    assert build_autoscaler_objects(StreamPipeline.model_validate(raw), SETTINGS) == []


def test_scaled_object_of_a_pipeline_that_does_not_re_key_has_only_source_triggers() -> None:
    p = _pipeline("keda")
    doc = p.model_dump(mode="json", by_alias=True, exclude_none=True)
    # Keyed by the window's key: no repartition topic, so no trigger for one.
    doc["spec"]["source"]["kafka"]["keyedBy"] = "page"
    keyed = StreamPipeline.model_validate(doc)
    assert repartition_topic(keyed) is None
    kafka = keyed.spec.source.kafka
    assert kafka is not None
    topics = [
        t["metadata"]["topic"] for t in build_scaled_object(keyed, SETTINGS)["spec"]["triggers"]
    ]
    assert topics == list(kafka.topics)
