"""The operator against the real control plane: examples, drift, secrets, suspend, GC,
restarts, Pod Security, monitoring. kubectl applies the manifests, as a user would.

Acceptance items of the operator issue: (2) examples -> owned, labelled children, Running
pods, Ready status; (4) spec edits, deleted and hand-edited children; (5) Secrets missing,
created, rotated, never leaked; (6) suspend/resume, deletion GC, operator restart; (7) a
restricted Pod Security namespace; (8) ServiceMonitor/PrometheusRule with and without the
monitoring.coreos.com CRDs.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.infra.controlplane import KubeCluster
from tests.integration.operator.operator_harness import Env, load_example, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

IMAGE = "ghcr.io/streamherd/streamherd:test"
PASSWORD = "pw-7d1c0e2b9a-not-a-real-one"
ROTATED = "pw-rotated-5f3e19c4aa-also-fake"
TOKEN = "fx-token-41b7f0e2c9"
CHILDREN = (
    ("configmap", "{}-config"),
    ("persistentvolumeclaim", "{}-checkpoints"),
    ("service", "{}-metrics"),
    ("deployment", "{}"),
)
# Only for a pipeline that can run more than one worker (02, 03; not 01: replicas 1).
PDB = ("poddisruptionbudget", "{}")


def orders_secrets(env: Env, password: str = PASSWORD) -> None:
    env.secret("kafka-orders-user", {"username": "orders", "password": password})
    env.secret("kafka-cluster-ca", {"ca.crt": "-----BEGIN CERTIFICATE-----\nfake\n"})
    env.secret("fx-api", {"token": TOKEN})


def label_streaming_node(env: Env) -> None:
    # 03-orders-secure selects nodes labelled workload=streaming.
    env.cluster.kubectl("label", "node", "kwok-node-1", "workload=streaming", "--overwrite")


def start(env: Env, stem: str) -> str:
    doc = load_example(stem)
    name: str = doc["metadata"]["name"]
    if stem.startswith("03"):
        label_streaming_node(env)
    env.bind_checkpoint_volume(name)
    env.apply(doc)
    return name


def template_annotations(env: Env, name: str) -> dict[str, str]:
    dep = env.get("deployment", name)
    assert dep is not None
    annotations: dict[str, str] = dep["spec"]["template"]["metadata"]["annotations"]
    return annotations


@pytest.mark.parametrize("stem", ["01-clicks-local", "02-clicks-per-minute", "03-orders-secure"])
def test_example_gets_owned_children_running_pods_and_ready(env: Env, stem: str) -> None:
    if stem.startswith("03"):
        orders_secrets(env)
    name = start(env, stem)
    env.wait_condition(name, "Ready", "True", "WorkersReady", timeout=150)
    sp = env.pipeline(name)
    uid = sp["metadata"]["uid"]
    if stem.startswith("01"):
        assert env.get(PDB[0], name) is None, "01 runs one worker: a PDB would protect nothing"
    for kind, pattern in CHILDREN if stem.startswith("01") else (*CHILDREN, PDB):
        obj = env.get(kind, pattern.format(name))
        assert obj is not None, f"{kind} {pattern.format(name)} missing"
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "StreamPipeline", name, uid, True,
        )  # fmt: skip
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == name
        assert labels["app.kubernetes.io/managed-by"] == "streamherd-operator"
        assert labels["streamherd.io/pipeline"] == name
    pods = wait_until(f"{name} pods Running", lambda: env.running_pods(name), 60)
    assert len(pods) == 1
    status = env.pipeline(name)["status"]
    assert status["replicas"] == 1 and status["readyReplicas"] == 1
    assert status["phase"] == "Running"
    assert status["observedGeneration"] == sp["metadata"]["generation"]
    assert (
        status["selector"]
        == f"app.kubernetes.io/instance={name},app.kubernetes.io/name=streamherd-worker"
    )
    # the printer columns read that status
    row = env.kubectl("get", "streampipeline", name, "--no-headers").stdout.split()
    assert row[:2] == [name, "True"]


def test_spec_edits_drift_and_deleted_children_are_repaired(env: Env) -> None:
    name = start(env, "01-clicks-local")
    env.wait_condition(name, "Ready", "True", timeout=150)
    env.edit_log_level(name, "debug")

    # a hand edit of a field the operator manages is undone
    env.kubectl("patch", "deployment", name, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/template/spec/containers/0/image",
          "value": "hand/edited:1"}]))  # fmt: skip

    def image() -> str:
        dep = env.get("deployment", name)
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"]) if dep else ""

    wait_until("the hand-edited image to be restored", lambda: image() == IMAGE, 30)

    # a hand edit of a child nobody watches is undone by the periodic resync
    env.kubectl("patch", "configmap", f"{name}-config", "--type=merge",
                "-p", json.dumps({"data": {"worker.json": "{}"}}))  # fmt: skip
    wait_until("the ConfigMap to be restored", lambda: (
        (cm := env.get("configmap", f"{name}-config")) is not None
        and cm["data"]["worker.json"] != "{}"
    ), 30)  # fmt: skip

    old = env.get("deployment", name)
    assert old is not None
    env.kubectl("delete", "deployment", name, "--wait=true")
    wait_until("the Deployment to be recreated", lambda: (
        (dep := env.get("deployment", name)) is not None
        and dep["metadata"]["uid"] != old["metadata"]["uid"]
    ), 30)  # fmt: skip
    env.wait_condition(name, "Ready", "True", timeout=90)


def _everything_written(env: Env) -> str:
    kinds = "streampipelines,configmaps,deployments,replicasets,pods,services,"
    kinds += "persistentvolumeclaims,poddisruptionbudgets,events"
    return str(env.kubectl("get", kinds, "-o", "json").stdout)


def test_secrets_missing_created_rotated_and_never_leaked(env: Env) -> None:
    name = start(env, "03-orders-secure")
    cond = env.wait_condition(name, "Ready", "False", "SecretNotFound", timeout=60)
    assert 'Secret "kafka-orders-user" not found' in cond["message"]
    assert env.pipeline(name)["status"]["phase"] == "Pending"
    assert env.get("deployment", name) is None  # nothing that would crash-loop on it

    orders_secrets(env)
    env.wait_condition(name, "Ready", "True", timeout=150)
    before = template_annotations(env, name)["streamherd.io/secrets-hash"]

    env.secret("kafka-orders-user", {"username": "orders", "password": ROTATED})
    wait_until("the pod template to roll on rotation", lambda: (
        template_annotations(env, name)["streamherd.io/secrets-hash"] != before
    ), 30)  # fmt: skip
    env.wait_condition(name, "Ready", "True", timeout=150)

    written = _everything_written(env) + env.operator.log_text()
    for value in (PASSWORD, ROTATED, TOKEN):
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in written, "a Secret value leaked into objects, events or logs"
    reasons = {e["reason"] for e in env.items("events") if e["involvedObject"]["name"] == name}
    assert {"SecretNotFound", "Created", "SecretRotated"} <= reasons


def test_suspend_resume_and_deletion_garbage_collects_children(env: Env) -> None:
    name = start(env, "01-clicks-local")
    env.wait_condition(name, "Ready", "True", timeout=150)

    env.kubectl("patch", "streampipeline", name, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    env.wait_condition(name, "Ready", "True", "Suspended")
    dep = env.get("deployment", name)
    assert dep is not None and dep["spec"]["replicas"] == 0
    assert env.pipeline(name)["status"]["phase"] == "Suspended"
    wait_until("the workers to stop", lambda: not env.running_pods(name), 60)

    env.kubectl("patch", "streampipeline", name, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    env.wait_condition(name, "Ready", "True", "WorkersReady", timeout=120)
    assert len(env.running_pods(name)) == 1

    env.kubectl("delete", "streampipeline", name, "--wait=true")

    def all_gone() -> bool:
        return all(env.get(kind, p.format(name)) is None for kind, p in CHILDREN)

    wait_until("the garbage collector to remove every child", all_gone, 120)


def test_operator_restart_leaves_no_duplicates_or_orphans(env: Env) -> None:
    name = start(env, "01-clicks-local")
    env.wait_condition(name, "Ready", "True", timeout=150)
    env.operator.stop()
    try:
        env.kubectl("patch", "streampipeline", name, "--type=merge",
                    "-p", json.dumps({"spec": {"logLevel": "warning"}}))  # fmt: skip
    finally:
        env.operator.start()
    generation = env.pipeline(name)["metadata"]["generation"]
    wait_until("the restarted operator to catch up", lambda: (
        env.pipeline(name).get("status", {}).get("observedGeneration") == generation
    ), 90)  # fmt: skip
    uid = env.pipeline(name)["metadata"]["uid"]
    selector = f"streamherd.io/pipeline={name}"
    for kind in ("configmaps", "deployments", "services", "persistentvolumeclaims"):
        objs = env.items(kind, selector)
        assert len(objs) == 1, f"{kind}: {[o['metadata']['name'] for o in objs]}"
        assert [r["uid"] for r in objs[0]["metadata"]["ownerReferences"]] == [uid]
    # 01 runs one worker at most: no PodDisruptionBudget, before or after the restart
    assert env.items("poddisruptionbudgets", selector) == []
    # no finalizer: deletion needs no cleanup from us
    assert not env.pipeline(name)["metadata"].get("finalizers")


def test_restricted_pod_security_namespace_admits_the_workers(env: Env) -> None:
    env.cluster.kubectl(
        "label",
        "namespace",
        env.ns,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    name = start(env, "01-clicks-local")
    env.wait_condition(name, "Ready", "True", timeout=150)
    assert len(env.running_pods(name)) == 1
    refused = [
        e for e in env.items("events")
        if e["reason"] == "FailedCreate" and "violates PodSecurity" in e.get("message", "")
    ]  # fmt: skip
    assert refused == []


MONITORING_CRDS: list[dict[str, Any]] = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for kind, plural in (
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    )
]


def _delete_monitoring_crds(cluster: KubeCluster) -> None:
    for crd in MONITORING_CRDS:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--ignore-not-found",
                        "--wait=true")  # fmt: skip


def test_monitoring_objects_follow_the_prometheus_operator_crds(env: Env) -> None:
    _delete_monitoring_crds(env.cluster)
    name = start(env, "02-clicks-per-minute")
    cond = env.wait_condition(name, "MonitoringAvailable", "False", "MonitoringAPINotServed")
    assert "install the Prometheus Operator CRDs" in cond["message"]
    try:
        env.cluster.apply(MONITORING_CRDS)
        for crd in MONITORING_CRDS:
            env.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                f"crd/{crd['metadata']['name']}")  # fmt: skip
        env.wait_condition(name, "MonitoringAvailable", "True", "Created", timeout=60)
        uid = env.pipeline(name)["metadata"]["uid"]
        for kind in ("servicemonitor", "prometheusrule"):
            obj: dict[str, Any] | None = env.get(kind, name)
            assert obj is not None
            assert obj["metadata"]["ownerReferences"][0]["uid"] == uid
        sm = env.get("servicemonitor", name)
        assert sm is not None and sm["spec"]["endpoints"][0]["port"] == "metrics"
        rule = env.get("prometheusrule", name)
        assert rule is not None
        alerts = {r["alert"] for r in rule["spec"]["groups"][0]["rules"]}
        assert "StreamherdLagAboveThreshold" in alerts
    finally:
        _delete_monitoring_crds(env.cluster)


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_switching_to_an_external_scaler_keeps_the_worker_count(env: Env, mode: str) -> None:
    """In keda and hpa modes the operator applies its Deployment without spec.replicas (the
    HPA owns the count). The operator's server-side apply owned that field until then, and a
    field its only manager stops applying is reset to its default: switching a pipeline of
    three workers to keda or hpa dropped it to one (a helper's finding). The real API
    server's field management: the count stays until the HPA writes its own."""
    doc = load_example("02-clicks-per-minute")
    name: str = doc["metadata"]["name"]
    doc["spec"]["autoscaling"] = {"mode": "none"}
    doc["spec"]["replicas"] = 3
    env.bind_checkpoint_volume(name)
    env.apply(doc)

    def replicas() -> int | None:
        dep = env.get("deployment", name)
        return None if dep is None else dep["spec"].get("replicas")

    wait_until("three workers wanted", lambda: replicas() == 3, 60)
    patch = {"spec": {"autoscaling": {"mode": mode, "minReplicas": 1, "maxReplicas": 8}}}
    env.kubectl("patch", "streampipeline", name, "--type=merge", "-p", json.dumps(patch))
    generation = env.pipeline(name)["metadata"]["generation"]
    wait_until(
        "the edit to be reconciled",
        lambda: env.pipeline(name).get("status", {}).get("observedGeneration") == generation,
        60,
    )
    for _ in range(3):  # and the resyncs after it
        assert replicas() == 3, f"the worker count was reset on switching to {mode}"
        time.sleep(2)
