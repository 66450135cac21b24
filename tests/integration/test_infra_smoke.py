"""Smoke tests of the real test infrastructure: the Kafka broker and the control plane.

If these fail, every other integration test would too: they check the fixtures themselves.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.infra.controlplane import FAKE_NODES, KubeCluster
from tests.infra.kafka import KafkaBroker
from tests.infra.processes import wait_for

pytestmark = pytest.mark.integration
# Nothing runs on kwok's fake nodes; on the opt-in kind tier this image is already on the nodes.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@pytest.mark.kafka
def test_kafka_round_trip_on_four_partitions(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("smoke"), partitions=4)
    sent = [(f"k{i}", {"n": i}) for i in range(2000)]
    assert kafka_broker.produce(topic, sent) == 2000

    records = kafka_broker.consume_all(topic, timeout=30)

    assert sorted(r.json()["n"] for r in records) == list(range(2000))
    assert {r.partition for r in records} == {0, 1, 2, 3}
    # The same key always lands on the same partition.
    by_key: dict[bytes | None, set[int]] = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    assert sum(kafka_broker.end_offsets(topic).values()) == 2000


@pytest.mark.kafka
def test_kafka_explicit_partition_and_raw_values(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("smoke"), partitions=4)
    kafka_broker.produce(topic, [b"raw", "text", None], partition=2)

    records = kafka_broker.consume_all(topic, timeout=30)

    assert [(r.partition, r.value) for r in records] == [(2, b"raw"), (2, b"text"), (2, None)]


@pytest.mark.kafka
def test_kafka_retention_deletes_old_segments_within_seconds(kafka_broker: KafkaBroker) -> None:
    # The broker checks retention every second (TEST_SETTINGS): retention tests stay short.
    topic = kafka_broker.create_topic(
        kafka_broker.unique_topic("retention"),
        partitions=1,
        config={"retention.ms": "1000", "segment.ms": "200"},
    )
    kafka_broker.produce(topic, [b"old"] * 100)
    time.sleep(1.5)  # older than retention.ms; the next write rolls their segment
    kafka_broker.produce(topic, [b"new"] * 10)

    wait_for(
        "retention to delete the first segment",
        lambda: kafka_broker.start_offsets(topic)[0] >= 100,
        timeout=60,
    )

    assert all(r.value == b"new" for r in kafka_broker.consume_all(topic))
    assert kafka_broker.end_offsets(topic) == {0: 110}


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": PAUSE_IMAGE}]},
            },
        },
    }


@pytest.mark.cluster
def test_deployment_gets_running_ready_pods_on_fake_nodes(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.create_namespace("smoke")
    kube_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_deployment("web", 2)))

    kube_cluster.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=120s")

    pods = kube_cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/name=web")["items"]
    # Our control plane's nodes are FAKE_NODES (kwok); a kind cluster has its own.
    nodes = {n["metadata"]["name"] for n in kube_cluster.get_json("nodes")["items"]}
    if kube_cluster.provider == "local":
        assert nodes == set(FAKE_NODES)
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
        assert pod["spec"]["nodeName"] in nodes
    # The ReplicaSet in between exists and is owned by the Deployment.
    rs = kube_cluster.get_json("replicasets", "-n", ns)["items"]
    assert [o["kind"] for r in rs for o in r["metadata"]["ownerReferences"]] == ["Deployment"]


@pytest.mark.cluster
def test_deleting_an_owner_garbage_collects_what_it_owns(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.create_namespace("smoke")
    kube_cluster.kubectl("create", "configmap", "owner", "-n", ns)
    owner_uid = kube_cluster.get_json("configmap", "owner", "-n", ns)["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": ns,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
        "data": {"k": "v"},
    }
    kube_cluster.apply(owned)

    kube_cluster.kubectl("delete", "configmap", "owner", "-n", ns, "--wait=true")

    def owned_gone() -> bool:
        got = kube_cluster.kubectl("get", "configmap", "owned", "-n", ns, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    wait_for("the owned ConfigMap to be garbage-collected", owned_gone, timeout=60)


@pytest.mark.cluster
def test_restricted_pod_security_rejects_a_privileged_pod(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.create_namespace(
        "smoke", labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": ns},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": PAUSE_IMAGE,
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }

    result = kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)

    assert result.returncode != 0
    assert 'violates PodSecurity "restricted' in result.stderr
    assert "privileged" in result.stderr
    assert kube_cluster.kubectl("get", "pod", "privileged", "-n", ns, check=False).returncode != 0
