"""Unit tests for the pure builders in operator/builders/ (no cluster, no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders import (
    CHILD_KINDS,
    Capabilities,
    build_all,
    build_config_map,
    build_deployment,
    build_pdb,
    build_prometheus_rule,
    build_pvc,
    build_service,
    build_service_monitor,
    build_worker_config,
    desired_replicas,
    pdb_protects,
    replica_ceiling,
)
from streamherd.operator.builders.credentials import credentials
from streamherd.operator.builders.meta import (
    CONFIG_HASH_ANNOTATION,
    INPUT_HASH_ANNOTATION,
    SECRETS_HASH_ANNOTATION,
)
from streamherd.operator.builders.monitoring import ALERT_METRICS
from streamherd.workers.config import CONFIG_HASH_ENV, WorkerConfig
from streamherd.workers.metrics import METRICS
from tests.unit.operator.operator_testkit import SETTINGS, example_doc, pipeline_from, with_meta

UID = "0b5c3e8e-1111-2222-3333-444455556666"


def clicks(**spec: Any) -> StreamPipeline:
    doc = with_meta(example_doc("02-clicks-per-minute"), namespace="team-a", uid=UID)
    doc["spec"].update(spec)
    return StreamPipeline.model_validate(doc)


def orders() -> StreamPipeline:
    return pipeline_from(example_doc("03-orders-secure"), namespace="shop", uid=UID)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


# ----------------------------------------------------------------------------- metadata


def test_every_child_is_labelled_and_owned() -> None:
    for child in build_all(clicks(), SETTINGS, secrets_hash="h", capabilities=Capabilities()):
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"] == {
            "app.kubernetes.io/name": "streamherd-worker",
            "app.kubernetes.io/instance": "clicks-per-minute",
            "app.kubernetes.io/component": "worker",
            "app.kubernetes.io/managed-by": "streamherd-operator",
            "app.kubernetes.io/part-of": "streamherd",
            "streamherd.io/pipeline": "clicks-per-minute",
        }
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "streamherd.io/v1alpha1",
                "kind": "StreamPipeline",
                "name": "clicks-per-minute",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert len(meta["annotations"][INPUT_HASH_ANNOTATION]) == 16


def test_child_names_follow_the_contract() -> None:
    names = {
        c["kind"]: c["metadata"]["name"]
        for c in build_all(clicks(), SETTINGS, secrets_hash="h", capabilities=Capabilities())
    }
    assert names == {
        "ConfigMap": "clicks-per-minute-config",
        "PersistentVolumeClaim": "clicks-per-minute-checkpoints",
        "Service": "clicks-per-minute-metrics",
        "Deployment": "clicks-per-minute",
        "PodDisruptionBudget": "clicks-per-minute",
        "ServiceMonitor": "clicks-per-minute",
        "PrometheusRule": "clicks-per-minute",
    }
    # CHILD_KINDS names the same children (the reconciler deletes through it)
    by_kind = {k.kind: k.name("clicks-per-minute") for k in CHILD_KINDS}
    for kind, name in names.items():
        assert by_kind[kind] == name


def test_offline_pipelines_get_no_owner_reference() -> None:
    p = pipeline_from(example_doc("01-clicks-local"))
    assert "ownerReferences" not in build_pvc(p, SETTINGS)["metadata"]


def test_builders_are_pure() -> None:
    p = clicks()
    before = p.model_dump()
    first = build_all(p, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    second = build_all(p, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    assert first == second
    assert p.model_dump() == before


def test_input_hash_follows_content() -> None:
    a = build_deployment(clicks(), SETTINGS, "h")
    b = build_deployment(clicks(logLevel="debug"), SETTINGS, "h")
    caps = Capabilities()
    ha = build_all(clicks(), SETTINGS, secrets_hash="h", capabilities=caps)[3]
    hb = build_all(clicks(logLevel="debug"), SETTINGS, secrets_hash="h", capabilities=caps)[3]
    assert a != b
    assert (
        ha["metadata"]["annotations"][INPUT_HASH_ANNOTATION]
        != hb["metadata"]["annotations"][INPUT_HASH_ANNOTATION]
    )


# ----------------------------------------------------------------------------- WorkerConfig


def test_worker_config_round_trips_through_the_config_map() -> None:
    p = clicks()
    cm = build_config_map(p, SETTINGS)
    parsed = WorkerConfig.model_validate(json.loads(cm["data"]["worker.json"]))
    assert parsed == build_worker_config(p, SETTINGS)
    assert parsed.pipeline.namespace == "team-a"
    assert parsed.source.kafka is not None
    assert parsed.source.kafka.consumer_group == "team-a.clicks-per-minute"
    assert parsed.sink.kafka is not None
    assert parsed.sink.kafka.bootstrap_servers == "kafka-bootstrap.kafka:9092"
    assert parsed.dead_letter is not None and parsed.dead_letter.topic == "clicks-dlq"
    assert parsed.checkpoint.directory == "/var/lib/streamherd/checkpoints"
    assert parsed.checkpoint.interval_seconds == 10.0
    assert parsed.runtime.metrics_port == 9100
    assert parsed.runtime.shutdown_grace_seconds == 25.0
    assert parsed.processor == p.spec.processor


def test_sasl_and_tls_become_env_names_and_file_paths_never_values() -> None:
    config = build_worker_config(orders(), SETTINGS)
    assert config.source.kafka is not None
    sec = config.source.kafka.security
    assert sec.protocol == "SASL_SSL"
    assert sec.sasl_mechanism == "SCRAM-SHA-512"
    assert sec.sasl_username_env == "STREAMHERD_SOURCE_SASL_USERNAME"
    assert sec.sasl_password_env == "STREAMHERD_SOURCE_SASL_PASSWORD"
    assert sec.ca_file == "/etc/streamherd/tls/kafka-cluster-ca/ca.crt"
    assert sec.cert_file is None
    # the sink and the dead-letter topic are on the source's cluster: same credentials
    assert config.sink.kafka is not None and config.sink.kafka.security == sec
    assert config.dead_letter is not None and config.dead_letter.security == sec


def test_sink_on_another_cluster_gets_its_own_auth() -> None:
    doc = example_doc("03-orders-secure")
    doc["spec"]["sink"]["kafka"].update(
        bootstrapServers="other:9093",
        auth={
            "sasl": {
                "mechanism": "PLAIN",
                "username": {"name": "sink-user", "key": "u"},
                "password": {"name": "sink-user", "key": "p"},
            },
            "tls": {"secretName": "sink-ca", "clientCertificate": True},
        },
    )
    p = pipeline_from(doc)
    config = build_worker_config(p, SETTINGS)
    assert config.sink.kafka is not None
    sec = config.sink.kafka.security
    assert sec.sasl_username_env == "STREAMHERD_SINK_SASL_USERNAME"
    assert sec.key_file == "/etc/streamherd/tls/sink-ca/tls.key"
    needed = credentials(p.spec).required_keys()
    assert needed == {
        "kafka-orders-user": {"username", "password"},
        "kafka-cluster-ca": {"ca.crt"},
        "sink-user": {"u", "p"},
        "sink-ca": {"ca.crt", "tls.crt", "tls.key"},
        "fx-api": {"token"},
    }


def test_generator_source_and_stdout_sink() -> None:
    config = build_worker_config(pipeline_from(example_doc("01-clicks-local")), SETTINGS)
    assert config.source.generator is not None and config.source.generator.count == 20000
    assert config.sink.stdout is not None
    assert config.checkpoint.interval_seconds == 5.0


# ----------------------------------------------------------------------------- Deployment


def test_deployment_pod_is_restricted() -> None:
    dep = build_deployment(clicks(), SETTINGS, "h")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(dep)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container(dep)["volumeMounts"]}
    assert mounts["/tmp"] == "tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    # only volume types the restricted Pod Security Standard admits
    allowed = {"configMap", "secret", "projected", "emptyDir", "persistentVolumeClaim"}
    for vol in pod["volumes"]:
        assert set(vol) - {"name"} <= allowed


def test_deployment_runs_the_worker_with_config_probes_and_metrics() -> None:
    dep = build_deployment(clicks(), SETTINGS, "h")
    c = container(dep)
    assert c["image"] == "ghcr.io/streamherd/streamherd:test"
    assert c["command"] == ["streamherd-worker"]
    assert c["args"] == ["--config", "/etc/streamherd/worker.json"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["config"] == "/etc/streamherd"
    assert mounts["checkpoints"] == "/var/lib/streamherd/checkpoints"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {
        "claimName": "clicks-per-minute-checkpoints"
    }
    assert volumes["config"]["projected"]["sources"][0]["configMap"]["name"] == (
        "clicks-per-minute-config"
    )
    assert c["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "streamherd-worker",
        "app.kubernetes.io/instance": "clicks-per-minute",
    }


def test_deployment_secret_env_and_tls_files_come_from_references() -> None:
    dep = build_deployment(orders(), SETTINGS, "h")
    env = {e["name"]: e for e in container(dep)["env"]}
    assert env["STREAMHERD_SOURCE_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-orders-user",
        "key": "username",
    }
    assert env["STREAMHERD_SOURCE_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-orders-user",
        "key": "password",
    }
    assert env["FX_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "fx-api", "key": "token"}
    # The one plain value is the config hash the pod runs (decision 0196): no secret.
    template = dep["spec"]["template"]
    assert env.pop(CONFIG_HASH_ENV) == {
        "name": CONFIG_HASH_ENV,
        "value": template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
    }
    assert all("value" not in e for e in env.values())
    sources = template["spec"]["volumes"][0]["projected"]["sources"]
    assert sources[1] == {
        "secret": {
            "name": "kafka-cluster-ca",
            "items": [{"key": "ca.crt", "path": "tls/kafka-cluster-ca/ca.crt"}],
        }
    }


def test_secret_mount_path_becomes_a_secret_volume() -> None:
    doc = example_doc("01-clicks-local")
    doc["spec"]["secrets"] = [{"secretName": "creds", "mountPath": "/var/run/creds"}]
    dep = build_deployment(pipeline_from(doc), SETTINGS, "h")
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "secret-0", "secret": {"secretName": "creds"}} in pod["volumes"]
    assert {"name": "secret-0", "mountPath": "/var/run/creds", "readOnly": True} in (
        container(dep)["volumeMounts"]
    )


def test_secrets_hash_goes_into_the_pod_template_and_rolls_it() -> None:
    a = build_deployment(orders(), SETTINGS, "hash-one")
    b = build_deployment(orders(), SETTINGS, "hash-two")
    assert a["spec"]["template"]["metadata"]["annotations"][SECRETS_HASH_ANNOTATION] == "hash-one"
    assert a["spec"]["template"] != b["spec"]["template"]


def test_pod_overrides_and_custom_image() -> None:
    dep = build_deployment(orders(), SETTINGS, "h")
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"workload": "streaming"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "streaming", "effect": "NoSchedule"}
    ]
    assert container(dep)["image"] == "registry.example.com/acme/orders-worker:1.4.0"
    doc = example_doc("01-clicks-local")
    doc["spec"]["pod"] = {
        "labels": {"team": "a", "app.kubernetes.io/name": "evil"},
        "annotations": {"x": "y", SECRETS_HASH_ANNOTATION: "forged"},
        "serviceAccountName": "reader",
        "terminationGracePeriodSeconds": 90,
    }
    dep = build_deployment(pipeline_from(doc), SETTINGS, "real")
    tmpl = dep["spec"]["template"]
    assert tmpl["metadata"]["labels"]["team"] == "a"
    assert tmpl["metadata"]["labels"]["app.kubernetes.io/name"] == "streamherd-worker"
    assert tmpl["metadata"]["annotations"]["x"] == "y"
    assert tmpl["metadata"]["annotations"][SECRETS_HASH_ANNOTATION] == "real"
    assert tmpl["spec"]["serviceAccountName"] == "reader"
    assert tmpl["spec"]["terminationGracePeriodSeconds"] == 90


def test_rwo_volume_uses_recreate_rwx_rolls() -> None:
    assert build_deployment(clicks(), SETTINGS, "h")["spec"]["strategy"]["type"] == "RollingUpdate"
    doc = example_doc("01-clicks-local")
    doc["spec"]["checkpoint"]["volume"] = {"accessModes": ["ReadWriteOnce"]}
    dep = build_deployment(pipeline_from(doc), SETTINGS, "h")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


# ----------------------------------------------------------------------------- replicas


@pytest.mark.parametrize(
    ("autoscaling", "replicas", "suspend", "status_desired", "expected"),
    [
        ({"mode": "none"}, 3, False, None, 3),
        ({"mode": "none"}, 3, True, None, 0),
        ({"mode": "builtin", "minReplicas": 2, "maxReplicas": 8}, 1, False, None, 2),
        ({"mode": "builtin", "minReplicas": 0, "maxReplicas": 8}, 1, False, None, 1),
        ({"mode": "builtin", "minReplicas": 0, "maxReplicas": 8}, 1, False, 0, 0),
        ({"mode": "builtin", "minReplicas": 1, "maxReplicas": 8}, 1, False, 5, 5),
        ({"mode": "builtin", "minReplicas": 1, "maxReplicas": 8}, 1, False, 50, 8),
        ({"mode": "builtin", "minReplicas": 2, "maxReplicas": 8}, 1, False, 0, 2),
        ({"mode": "builtin", "minReplicas": 1, "maxReplicas": 8}, 1, True, 5, 0),
        ({"mode": "hpa", "minReplicas": 1, "maxReplicas": 8}, 1, False, 5, None),
        ({"mode": "keda", "minReplicas": 0, "maxReplicas": 8}, 1, False, None, None),
        ({"mode": "keda", "minReplicas": 0, "maxReplicas": 8}, 1, True, None, 0),
    ],
)
def test_desired_replicas(
    autoscaling: dict[str, Any],
    replicas: int,
    suspend: bool,
    status_desired: int | None,
    expected: int | None,
) -> None:
    doc = example_doc("02-clicks-per-minute")
    doc["spec"].update(autoscaling=autoscaling, replicas=replicas, suspend=suspend)
    if status_desired is not None:
        doc["status"] = {"desiredReplicas": status_desired}
    p = StreamPipeline.model_validate(doc)
    assert desired_replicas(p) == expected
    dep = build_deployment(p, SETTINGS, "h")
    if expected is None:
        assert "replicas" not in dep["spec"]  # the HPA / KEDA owns the field
    else:
        assert dep["spec"]["replicas"] == expected


@pytest.mark.parametrize(
    ("autoscaling", "replicas", "suspend", "ceiling"),
    [
        ({"mode": "none"}, 1, False, 1),
        ({"mode": "none"}, 0, False, 0),
        ({"mode": "none"}, 3, False, 3),
        ({"mode": "none"}, 3, True, 0),
        # the autoscaling modes: maxReplicas, whatever spec.replicas says
        ({"mode": "builtin", "minReplicas": 0, "maxReplicas": 1}, 5, False, 1),
        ({"mode": "builtin", "minReplicas": 1, "maxReplicas": 8}, 1, False, 8),
        ({"mode": "builtin", "minReplicas": 1, "maxReplicas": 8}, 1, True, 0),
        ({"mode": "hpa", "minReplicas": 1, "maxReplicas": 1}, 3, False, 1),
        ({"mode": "hpa", "minReplicas": 1, "maxReplicas": 2}, 1, False, 2),
        ({"mode": "keda", "minReplicas": 0, "maxReplicas": 1}, 1, False, 1),
        ({"mode": "keda", "minReplicas": 0, "maxReplicas": 4}, 1, False, 4),
        ({"mode": "keda", "minReplicas": 0, "maxReplicas": 4}, 1, True, 0),
    ],
)
def test_pdb_only_above_one_worker(
    autoscaling: dict[str, Any], replicas: int, suspend: bool, ceiling: int
) -> None:
    p = clicks(autoscaling=autoscaling, replicas=replicas, suspend=suspend)
    assert replica_ceiling(p) == ceiling
    assert pdb_protects(p) is (ceiling > 1)
    kinds = [
        c["kind"] for c in build_all(p, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    ]
    assert kinds.count("PodDisruptionBudget") == (1 if ceiling > 1 else 0)


def test_examples_pdb_follows_their_replica_ceiling() -> None:
    def kinds(stem: str) -> list[str]:
        p = pipeline_from(example_doc(stem), namespace="ns", uid=UID)
        return [
            c["kind"] for c in build_all(p, SETTINGS, secrets_hash="h", capabilities=Capabilities())
        ]

    # 01: mode none, replicas 1: a budget would allow every eviction, so there is none.
    assert "PodDisruptionBudget" not in kinds("01-clicks-local")
    # 02: builtin up to 8 workers; 03: builtin up to 6.
    assert kinds("02-clicks-per-minute").count("PodDisruptionBudget") == 1
    assert kinds("03-orders-secure").count("PodDisruptionBudget") == 1


# ----------------------------------------------------------------------------- others


def test_pvc_service_pdb() -> None:
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["checkpoint"]["volume"].update(size="5Gi", storageClassName="fast")
    p = StreamPipeline.model_validate(doc)
    assert build_pvc(p, SETTINGS)["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast",
    }
    svc = build_service(p, SETTINGS)["spec"]
    assert svc["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["selector"]["app.kubernetes.io/instance"] == "clicks-per-minute"
    pdb = build_pdb(p, SETTINGS)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1


def test_service_monitor_scrapes_the_metrics_port() -> None:
    sm = build_service_monitor(clicks(), SETTINGS)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_prometheus_rule_alerts() -> None:
    rule = build_prometheus_rule(clicks(), SETTINGS)
    rules = rule["spec"]["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names == {
        "StreamherdLagAboveThreshold",
        "StreamherdLagGrowing",
        "StreamherdNoProgress",
        "StreamherdErrors",
        "StreamherdDeadLettering",
        "StreamherdCheckpointTooOld",
        "StreamherdSinkDown",
        "StreamherdInputLost",
        "StreamherdPartitionHeld",
    }
    for r in rules:
        assert 'pipeline="clicks-per-minute"' in r["expr"]
        assert r["labels"]["severity"] in {"warning", "critical"}
    too_old = next(r for r in rules if r["alert"] == "StreamherdCheckpointTooOld")
    assert too_old["expr"].endswith("> 600")
    lag = next(r for r in rules if r["alert"] == "StreamherdLagAboveThreshold")
    assert lag["expr"].endswith("> 100000")


def test_alert_metrics_are_exported_by_the_engine() -> None:
    exported = set()
    for spec in METRICS:
        exported.add(spec.name + ("_total" if spec.kind == "counter" else ""))
    for name in ALERT_METRICS:
        assert name in exported, f"{name} is not a metric of streamherd.workers.metrics"


def test_monitoring_children_follow_capabilities_and_spec() -> None:
    def kinds(p: StreamPipeline, caps: Capabilities) -> list[str]:
        return [c["kind"] for c in build_all(p, SETTINGS, secrets_hash="h", capabilities=caps)]

    core = ["ConfigMap", "PersistentVolumeClaim", "Service", "Deployment", "PodDisruptionBudget"]
    assert kinds(clicks(), Capabilities()) == [*core, "ServiceMonitor", "PrometheusRule"]
    assert kinds(clicks(), Capabilities(service_monitor=False, prometheus_rule=False)) == core
    off = clicks(monitoring={"serviceMonitor": False, "prometheusRule": True})
    assert kinds(off, Capabilities()) == [*core, "PrometheusRule"]


def test_hpa_and_keda_modes_include_the_autoscaler_objects() -> None:
    def kinds(p: StreamPipeline, caps: Capabilities | None = None) -> list[str]:
        caps = caps or Capabilities()
        return [c["kind"] for c in build_all(p, SETTINGS, secrets_hash="h", capabilities=caps)]

    hpa = clicks(autoscaling={"mode": "hpa", "minReplicas": 1, "maxReplicas": 4})
    assert kinds(hpa)[-1] == "HorizontalPodAutoscaler"
    keda = clicks(autoscaling={"mode": "keda", "minReplicas": 0, "maxReplicas": 4})
    assert kinds(keda)[-1] == "ScaledObject"
    assert "ScaledObject" not in kinds(keda, Capabilities(keda=False))
    doc = example_doc("03-orders-secure")
    doc["spec"]["autoscaling"]["mode"] = "keda"
    secure = kinds(pipeline_from(doc))
    assert secure[-2:] == ["TriggerAuthentication", "ScaledObject"]
    suspended = clicks(autoscaling={"mode": "hpa", "minReplicas": 1, "maxReplicas": 4},
                       suspend=True)  # fmt: skip
    assert "HorizontalPodAutoscaler" not in kinds(suspended)
    # every kind build_all can produce is one the reconciler knows how to delete
    known = {(k.api_version, k.kind) for k in CHILD_KINDS}
    for p in (hpa, keda, pipeline_from(doc)):
        for child in build_all(p, SETTINGS, secrets_hash="h", capabilities=Capabilities()):
            assert (child["apiVersion"], child["kind"]) in known
