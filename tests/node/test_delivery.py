"""On the real node, as a user would: `helm install` the chart with the built image, the
operator as a pod under restricted Pod Security, a pipeline applied, its workers as containers
consuming the real broker (on the node's bridge address), results equal to a reference, the
/metrics endpoints answering through the Services, and a deleted worker pod losing nothing.

The checkpoint volume is a static local PersistentVolume on the node (no provisioner image
can be pulled here; docs/decisions/0050-real-node-tier.md). Input: the first example's
generator events, written to a topic by a local run with a Kafka sink. Reference: the same
pipeline run locally (`streamherd run`) on that topic; the pods' output must equal it (as a
set: the output is at-least-once with deterministic records).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.image import Image
from tests.infra.kafka import KafkaBroker
from tests.infra.node import Node
from tests.infra.processes import REPO_ROOT, WaitTimeout, wait_until

pytestmark = [pytest.mark.node, pytest.mark.kafka]

VENV_BIN = Path(sys.executable).parent
EXAMPLE = yaml.safe_load((REPO_ROOT / "examples" / "01-clicks-local.yaml").read_text())
RELEASE_NS = "streamherd-system"


def restricted_namespace(cluster: KubeCluster, name: str) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
    )


@pytest.fixture(scope="module")
def operator_release(node_cluster: KubeCluster, streamherd_image: Image) -> Iterator[str]:
    """The chart installed with the built image; the operator pod Ready. Yields the
    release's namespace."""
    restricted_namespace(node_cluster, RELEASE_NS)
    repo, _, tag = streamherd_image.name.rpartition(":")
    node_cluster.helm(
        "install", "streamherd", str(REPO_ROOT / "charts" / "streamherd"),
        "--namespace", RELEASE_NS,
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", "--set", "operator.logFormat=plain",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    yield RELEASE_NS
    node_cluster.helm("uninstall", "streamherd", "--namespace", RELEASE_NS, "--wait")


def operator_pod(cluster: KubeCluster, ns: str) -> dict[str, Any]:
    pods = cluster.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def test_the_operator_runs_as_a_restricted_pod_on_the_node(
    node_cluster: KubeCluster, real_node: Node, operator_release: str
) -> None:
    pod = operator_pod(node_cluster, operator_release)
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["status"]["phase"] == "Running"
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    # Admitted by the restricted profile, so it really is non-root and unprivileged.
    ns = node_cluster.get_json("namespace", operator_release)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_operator_metrics_answer_through_its_cluster_ip_service(
    node_cluster: KubeCluster, operator_release: str
) -> None:
    services = node_cluster.get_json("services", "-n", operator_release)["items"]
    (svc,) = [s for s in services if any(p["name"] == "metrics" for p in s["spec"]["ports"])]
    ip = svc["spec"]["clusterIP"]
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "metrics")

    def scrape() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as resp:
                body: str = resp.read().decode()
                return body
        except OSError:
            return None

    # Host -> Service IP -> kube-proxy's DNAT -> the operator pod on the bridge.
    body = wait_until("the operator's /metrics through its Service", scrape, timeout=60)
    assert "# TYPE" in body


def _feed(kafka: KafkaBroker, topic: str, tmp: Path, part: int) -> None:
    """Half (part 0 or 1) of the first example's generator events (the second half starts
    where the first ends in event time), written to topic by a local run."""
    source = json.loads(json.dumps(EXAMPLE["spec"]["source"]))
    gen = source["generator"]
    gen["count"] //= 2
    gen["startTimeMs"] += part * gen["count"] * gen["timeStepMs"]
    feeder = {
        "apiVersion": EXAMPLE["apiVersion"],
        "kind": "StreamPipeline",
        "metadata": {"name": "feeder"},
        "spec": {
            "source": source,
            "sink": {"kafka": {"topic": topic, "bootstrapServers": kafka.bootstrap}},
            "replicas": 1,
            "autoscaling": {"mode": "none"},
        },
    }
    path = tmp / f"feeder-{part}.yaml"
    path.write_text(yaml.safe_dump(feeder))
    subprocess.run(
        [str(VENV_BIN / "streamherd"), "run", str(path), "--quiet",
         "--bootstrap-servers", kafka.bootstrap],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _reference(
    pipeline: dict[str, Any], kafka: KafkaBroker, topic: str, tmp: Path, records: int
) -> set[str]:
    """The pipeline's output computed by a local run of the same engine on the same input
    topic, written to topic: every distinct record once it has consumed the whole input and
    checkpointed after that (so every window it will close is out)."""
    local = json.loads(json.dumps(pipeline))
    local["metadata"] = {"name": "reference"}
    local["spec"]["sink"] = {"kafka": {"topic": topic}}
    local["spec"].pop("checkpoint", None)
    path = tmp / "reference.yaml"
    path.write_text(yaml.safe_dump(local))
    log = tmp / "reference.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [str(VENV_BIN / "streamherd"), "run", str(path), "--bootstrap-servers",
             kafka.bootstrap, "--checkpoint-dir", str(tmp / "reference-checkpoints")],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        # Progress lines: "[ 1.0s] in 20000 out ... checkpoints 3"; done when a checkpoint
        # was taken after the whole input was read.
        def done() -> bool:
            lines = [ln for ln in log.read_text().splitlines() if f" in {records} " in ln]
            counts = {ln.rsplit("checkpoints", 1)[1].split()[0] for ln in lines}
            return len(counts) >= 2

        wait_until(f"the local reference run to finish its input ({log})", done, timeout=180)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {json.dumps(r.json(), sort_keys=True) for r in kafka.consume_all(topic, timeout=30)}


def _static_pv(cluster: KubeCluster, node: Node, ns: str, claim: str) -> str:
    path = node.run / "volumes" / f"{ns}-{claim}"
    path.mkdir(parents=True)
    path.chmod(0o777)  # the worker runs as uid 10001 and writes its checkpoints here
    name = f"pv-{ns}-{claim}"[:63]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "local": {"path": str(path)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [node.name],
                                    }
                                ]
                            }
                        ]
                    }
                },
                "claimRef": {"namespace": ns, "name": claim},
            },
        }
    )
    return name


def test_a_pipeline_on_real_pods_equals_the_reference_and_a_deleted_pod_loses_nothing(
    node_cluster: KubeCluster,
    real_node: Node,
    node_kafka: KafkaBroker,
    operator_release: str,
    tmp_path: Path,
) -> None:
    ns = f"team-{uuid.uuid4().hex[:6]}"
    restricted_namespace(node_cluster, ns)
    topic_in, topic_out = f"clicks-{ns}", f"windows-{ns}"
    # One input partition: the feeder writes unkeyed records, and a window is global for
    # its key only when all the key's records share a partition (docs/engine.md).
    node_kafka.create_topic(topic_in, partitions=1)
    node_kafka.create_topic(topic_out, partitions=3)
    _feed(node_kafka, topic_in, tmp_path, part=0)
    name = "clicks"
    pipeline = {
        "apiVersion": EXAMPLE["apiVersion"],
        "kind": "StreamPipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "source": {
                "kafka": {
                    "bootstrapServers": node_kafka.bootstrap,
                    "topics": [topic_in],
                    "startFrom": "earliest",
                }
            },
            "processor": EXAMPLE["spec"]["processor"],
            "sink": {"kafka": {"topic": topic_out}},
            "replicas": 1,
            "autoscaling": {"mode": "none"},
            "imagePullPolicy": "Never",
            "checkpoint": {"interval": "2s", "volume": {"size": "1Gi"}},
        },
    }
    _static_pv(node_cluster, real_node, ns, f"{name}-checkpoints")
    node_cluster.apply(pipeline)

    def worker() -> dict[str, Any] | None:
        pods = node_cluster.get_json("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={name}")[
            "items"
        ]
        running = [
            p
            for p in pods
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        return running[0] if len(running) == 1 else None

    first = wait_until("a Running worker pod on the node", worker, timeout=180)
    assert first["spec"]["nodeName"] == real_node.name

    def output() -> set[str]:
        records = node_kafka.consume_all(topic_out, timeout=30)
        return {json.dumps(r.json(), sort_keys=True) for r in records}

    # Some output first, then the worker pod is deleted mid-stream.
    wait_until("the first windows in the output topic", lambda: len(output()) > 0, timeout=180)
    node_cluster.kubectl("delete", "pod", "-n", ns, first["metadata"]["name"], "--wait=false")
    # The second half arrives while the replacement pod starts from the checkpoint volume.
    _feed(node_kafka, topic_in, tmp_path, part=1)
    second = wait_until(
        "a new worker pod",
        lambda: (w := worker()) and w["metadata"]["uid"] != first["metadata"]["uid"] and w,
        timeout=180,
    )
    assert second
    node_kafka.create_topic(f"reference-{ns}", partitions=3)
    total = EXAMPLE["spec"]["source"]["generator"]["count"]
    expected = _reference(pipeline, node_kafka, f"reference-{ns}", tmp_path, records=total)
    assert len(expected) > 100, "the reference run produced too little to compare"

    # Workers' /metrics through the headless Service the operator made (its endpoints).
    def scrape() -> str | None:
        slices = node_cluster.get_json(
            "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={name}-metrics"
        )["items"]
        ips = [a for s in slices for e in s.get("endpoints", []) for a in e["addresses"]]
        for ip in ips:
            try:
                with urllib.request.urlopen(f"http://{ip}:9100/metrics", timeout=5) as resp:
                    body: str = resp.read().decode()
                    if "streamherd_checkpoints" in body:
                        return body
            except OSError:
                continue
        return None

    wait_until("a worker's /metrics through the metrics Service", scrape, timeout=120)

    # At-least-once output with deterministic keys: every closed window exactly as the
    # reference computes it, nothing else (a window emitted twice is the same record).
    def complete() -> set[str] | None:
        seen = output()
        return seen if seen >= expected else None

    try:
        final = wait_until("every reference window in the output topic", complete, timeout=180)
    except WaitTimeout:
        seen = output()
        pytest.fail(
            f"{len(expected - seen)} of {len(expected)} reference records missing, e.g. "
            f"{sorted(expected - seen)[:3]}; {len(seen - expected)} unexpected, e.g. "
            f"{sorted(seen - expected)[:3]}"
        )
    assert final == expected, sorted(final - expected)[:5]
