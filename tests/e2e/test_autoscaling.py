"""Autoscaling end to end: operator + real control plane + real Kafka + real workers.

The autoscaler's proofs, each on its own pipeline in one namespace watched by one
operator process (tests/e2e/harness.py). Workers are local processes started from the pods'
specs by the pod mirror, so the lag the operator measures at the broker is drained by as
many real workers as the Deployment has Running pods. Poll intervals and windows are a few
seconds so the tier stays short; waits are generous for a loaded 2-core machine, and every
timing assertion uses the operator's own timestamps, not the test's sleeps.

1. backlog of 200,000 records on 8 partitions, min 1 max 8: up within two polls, drained,
   back to min after the stabilization window, never above 8;
2. min 0: idle -> 0; records -> >= 1 replica within two polls; every record processed;
3. steady noisy load: at most one scale change;
4. hpa and keda modes create their objects; keda without KEDA's CRD: Ready=False.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    Namespace,
    PodMirror,
    Timeline,
    operator_namespace,
    wait_until,
)
from tests.infra.controlplane import KubeCluster
from tests.infra.kafka import KafkaBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.cluster,
    pytest.mark.e2e,
    pytest.mark.slow,
]

POLL = 2  # seconds: the pipelines' pollInterval
KEDA_CRD = "scaledobjects.keda.sh"


@pytest.fixture(scope="module")
def ns(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    with operator_namespace(kube_cluster, tmp_path_factory, "e2e") as namespace:
        yield namespace


def pipeline(
    ns: Namespace,
    name: str,
    topic: str,
    bootstrap: str,
    autoscaling: dict[str, Any],
    sink: dict[str, Any] | None = None,
    checkpoint_interval: str = "1s",
) -> dict[str, Any]:
    return {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": name, "namespace": ns.ns},
        "spec": {
            "source": {
                "kafka": {
                    "bootstrapServers": bootstrap,
                    "topics": [topic],
                    "format": "raw",
                    "startFrom": "earliest",
                }
            },
            "sink": sink or {"stdout": {}},
            "checkpoint": {"interval": checkpoint_interval},
            "autoscaling": {"pollInterval": f"{POLL}s", **autoscaling},
        },
    }


def scale_time(status: dict[str, Any]) -> float:
    stamp = status["lastScaleTime"]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def test_backlog_scales_out_drains_and_returns_to_min(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    name = "backlog"
    records = 200_000
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("e2e-backlog"), partitions=8)
    # The backlog is there before the pipeline: lag is measured from committed offsets, so a
    # burst that arrives while a worker runs is, for up to one checkpoint interval, hard to
    # tell from records already read but not yet committed (docs/autoscaling.md), and a fast
    # machine's single worker may clear 200k within that interval (then keeping one worker is
    # the right call). A backlog waiting for the pipeline is the case on any machine.
    kafka_broker.produce(topic, (f"r{i}".encode() for i in range(records)))
    ns.apply(
        pipeline(
            ns, name, topic, kafka_broker.bootstrap,
            {"mode": "builtin", "minReplicas": 1, "maxReplicas": 8, "lagPerReplica": 10_000,
             "scaleDownStabilization": "20s"},
            checkpoint_interval="10s",
        )
    )  # fmt: skip
    ns.bind_checkpoint_volume(name)
    with PodMirror(ns, name, tmp_path) as mirror, Timeline(ns, name, mirror) as timeline:
        wait_until(
            "the backlog measured", lambda: ns.status(name).get("lag", 0) >= records // 2,
            timeout=120, interval=0.2,
        )  # fmt: skip
        seen = time.time()
        up = wait_until(
            "scale up",
            lambda: (s := ns.status(name)).get("desiredReplicas", 0) > 1 and s,
            timeout=120,
        )
        assert up["lastScaleReason"].startswith("ScaleUp"), up
        # Within two poll intervals of the autoscaler first seeing the backlog (+1 s: the
        # timestamp's grain).
        assert scale_time(up) - seen <= 2 * POLL + 1, (up, seen)

        wait_until(
            "backlog drained",
            lambda: sum(kafka_broker.committed(f"{ns.ns}.{name}", topic).values()) == records,
            timeout=300,
            interval=2,
        )
        wait_until("lag 0 measured", lambda: ns.status(name).get("lag") == 0, timeout=60)
        down = wait_until(
            "back to min",
            lambda: (
                ns.status(name).get("desiredReplicas") == 1
                and ns.deployment_replicas(name) == 1
                and ns.status(name)
            ),
            timeout=180,
        )
        assert down["lastScaleReason"].startswith("ScaleDown"), down
        wait_until("one worker left", lambda: len(mirror.workers) == 1, timeout=120)
    values = timeline.replica_values()
    assert max(values) > 1 and max(values) <= 8, values
    assert max(p.workers for p in timeline.points) <= 8
    assert not mirror.errors, mirror.errors
    reasons = ns.event_reasons(name)
    assert "ScaleUp" in reasons and "ScaleDown" in reasons, reasons


def test_min_zero_idles_to_zero_wakes_up_and_processes(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    name = "wake"
    records = 30_000
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("e2e-wake"), partitions=4)
    out = kafka_broker.create_topic(kafka_broker.unique_topic("e2e-wake-out"), partitions=4)
    ns.apply(
        pipeline(
            ns, name, topic, kafka_broker.bootstrap,
            {"mode": "builtin", "minReplicas": 0, "maxReplicas": 4, "lagPerReplica": 5_000,
             "activationLag": 10, "scaleDownStabilization": "10s", "idleTimeout": "10s"},
            sink={"kafka": {"topic": out}},
        )
    )  # fmt: skip
    ns.bind_checkpoint_volume(name)
    with PodMirror(ns, name, tmp_path) as mirror, Timeline(ns, name, mirror):
        wait_until(
            "idle to zero",
            lambda: (
                ns.status(name).get("desiredReplicas") == 0 and ns.deployment_replicas(name) == 0
            ),
            timeout=180,
        )
        assert "ScaleToZero" in ns.event_reasons(name)
        wait_until("no worker", lambda: not mirror.workers, timeout=120)

        kafka_broker.produce(topic, (f"w{i}".encode() for i in range(records)))
        produced = time.time()
        woke = wait_until(
            "wake up",
            lambda: (s := ns.status(name)).get("desiredReplicas", 0) >= 1 and s,
            timeout=120,
        )
        assert woke["lastScaleReason"].startswith("WakeUp"), woke
        assert scale_time(woke) - produced <= 2 * POLL + 1, (woke, produced)
        wait_until("a worker runs", lambda: len(mirror.workers) >= 1, timeout=120)
        # Every record processed: at-least-once to the sink, so at least as many out.
        got = kafka_broker.consume_all(out, timeout=300, min_records=records)
        # A raw source record reaches the sink as {"value": <text>, ...}.
        assert {r.json()["value"] for r in got} >= {f"w{i}" for i in range(records)}
        wait_until(
            "back to zero",
            lambda: ns.deployment_replicas(name) == 0 and not mirror.workers,
            timeout=180,
        )
    assert not mirror.errors, mirror.errors


def test_steady_noisy_load_changes_scale_at_most_once(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    name = "steady"
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("e2e-steady"), partitions=4)
    ns.apply(
        pipeline(
            ns, name, topic, kafka_broker.bootstrap,
            {"mode": "builtin", "minReplicas": 1, "maxReplicas": 4, "lagPerReplica": 5_000,
             "scaleDownStabilization": "15s"},
        )
    )  # fmt: skip
    ns.bind_checkpoint_volume(name)
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        # ~1000 records/s with +-50 % noise per 0.2 s burst: well within one worker.
        rng = random.Random(4)
        while not stop.is_set():
            n = int(200 * (1 + rng.uniform(-0.5, 0.5)))
            kafka_broker.produce(topic, (f"s{sent[0] + i}".encode() for i in range(n)))
            sent[0] += n
            stop.wait(0.2)

    with PodMirror(ns, name, tmp_path) as mirror, Timeline(ns, name, mirror) as timeline:
        wait_until("one worker", lambda: len(mirror.workers) == 1, timeout=180)
        wait_until("lag measured", lambda: ns.status(name).get("lag") is not None, timeout=120)
        producer = threading.Thread(target=produce, daemon=True)
        since = time.time()
        producer.start()
        try:
            # 45 s of load: three stabilization windows, 22 polls.
            time.sleep(45)
        finally:
            stop.set()
            producer.join(timeout=60)
        changes = timeline.changes(since)
    assert sent[0] > 5_000  # the load really ran
    assert len(changes) <= 1, changes
    reasons = [r for r in ns.event_reasons(name) if r in ("ScaleUp", "ScaleDown")]
    assert len(reasons) <= 1, reasons
    assert not mirror.errors, mirror.errors


KEDA_SCALEDOBJECT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": KEDA_CRD},
    "spec": {
        "group": "keda.sh",
        "names": {
            "kind": "ScaledObject",
            "listKind": "ScaledObjectList",
            "plural": "scaledobjects",
            "singular": "scaledobject",
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
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


def test_hpa_and_keda_modes_create_their_objects(
    ns: Namespace, kube_cluster: KubeCluster, kafka_broker: KafkaBroker
) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("e2e-modes"), partitions=4)
    scaling = {"minReplicas": 1, "maxReplicas": 3, "lagPerReplica": 1234, "activationLag": 7}

    # hpa: an autoscaling/v2 HPA on the external lag metric.
    ns.apply(pipeline(ns, "by-hpa", topic, kafka_broker.bootstrap, {"mode": "hpa", **scaling}))
    hpa = wait_until("HPA", lambda: ns.get("hpa", "by-hpa"), timeout=120)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "by-hpa",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "streamherd_pipeline_lag"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1234"}

    # keda without KEDA: Ready=False saying so, and no ScaledObject anywhere.
    assert kube_cluster.kubectl("get", "crd", KEDA_CRD, check=False).returncode != 0
    ns.apply(pipeline(ns, "by-keda", topic, kafka_broker.bootstrap, {"mode": "keda", **scaling}))
    cond = wait_until(
        "Ready=False for keda",
        lambda: (
            (c := ns.condition("by-keda", "Ready")).get("status") == "False"
            and "ScaledObject" in c.get("message", "")
            and c
        ),
        timeout=120,
    )
    assert "KEDA" in cond["message"], cond

    # Install KEDA's ScaledObject API (a minimal CRD): the operator creates the object.
    kube_cluster.apply(KEDA_SCALEDOBJECT_CRD)
    try:
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{KEDA_CRD}"
        )
        so = wait_until("ScaledObject", lambda: ns.get("scaledobject", "by-keda"), timeout=180)
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == "by-keda"
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 3)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == topic and meta["bootstrapServers"] == kafka_broker.bootstrap
        assert meta["consumerGroup"] == f"{ns.ns}.by-keda"
        assert (meta["lagThreshold"], meta["activationLagThreshold"]) == ("1234", "7")
        wait_until(
            "keda Ready not blocked by KEDA",
            lambda: "ScaledObject" not in ns.condition("by-keda", "Ready").get("message", ""),
            timeout=120,
        )
        # Switching to builtin removes the ScaledObject.
        ns.apply(
            pipeline(ns, "by-keda", topic, kafka_broker.bootstrap, {"mode": "builtin", **scaling})
        )
        wait_until(
            "ScaledObject removed", lambda: ns.get("scaledobject", "by-keda") is None, timeout=120
        )
    finally:
        # The cluster is shared by the session: other tests expect KEDA absent.
        kube_cluster.kubectl("delete", "crd", KEDA_CRD, "--wait=true", check=False)
