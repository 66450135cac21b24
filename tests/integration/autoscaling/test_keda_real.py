"""The `keda` mode's ScaledObject against real KEDA and the real HPA controller.

KEDA (operator + metrics adapter, built from source: tests/infra/keda.py) runs against the
test control plane, registered through API aggregation; kube-controller-manager's HPA
controller reads the Kafka lag through `external.metrics.k8s.io`. The ScaledObject is the
one the operator renders for a pipeline (operator/builders/autoscaling.py), its trigger on a
real broker topic; the Deployment's pods are kwok's (nothing consumes: the test commits the
group's offsets itself, which is all the Kafka scaler reads).

Shown, for a topic of P partitions, lagThreshold T, maxReplicaCount M:
- the metric the HPA reads through the aggregation layer is KEDA's total lag rounded up to
  f * T for the smallest divisor f of P that carries it (ensureEvenDistributionOfPartitions;
  P * T at most, allowIdleConsumers false; T when there is no lag at all), the lag read
  independently from the broker;
- the HPA scales the Deployment to min(M, P, ceil(that / T)), never above M, and says so
  in its status (current metric value, desired replicas) and in a SuccessfulRescale event;
- once the group commits up to the end the metric is T (one consumer's worth) and the
  Deployment goes back to minReplicaCount (scale-down stabilization 0 s).
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.autoscaling import build_scaled_object
from streamherd.operator.settings import OperatorSettings
from tests.infra.controlplane import KubeCluster
from tests.infra.kafka import KafkaBroker
from tests.infra.keda import Keda, running_keda
from tests.infra.processes import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.keda,
]

PARTITIONS = 4
THRESHOLD = 100  # lagPerReplica -> the trigger's lagThreshold
MAX_REPLICAS = 3  # below the partition count, so the cap that binds is maxReplicaCount
RECORDS_PER_PARTITION = 250
# The HPA controller syncs every 15 s; KEDA answers each metric request from the broker.
WAIT = 240.0


def _even_metric(lag: int) -> int:
    """KEDA's metric with ensureEvenDistributionOfPartitions: f * T for the smallest divisor
    f of the partition count with f * T >= lag (the partition count if none)."""
    divisors = [f for f in range(1, PARTITIONS + 1) if PARTITIONS % f == 0]
    return next((f for f in divisors if f * THRESHOLD >= lag), PARTITIONS) * THRESHOLD


@pytest.fixture(scope="module")
def keda(kube_cluster: KubeCluster) -> Iterator[Keda]:
    with running_keda(kube_cluster) as k:
        yield k


def _pipeline(ns: str, name: str, bootstrap: str, topic: str) -> StreamPipeline:
    return StreamPipeline.model_validate(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "source": {
                    "kafka": {
                        "bootstrapServers": bootstrap,
                        "topics": [topic],
                        "startFrom": "earliest",
                    }
                },
                "sink": {"stdout": {}},
                "autoscaling": {
                    "mode": "keda",
                    "minReplicas": 1,
                    "maxReplicas": MAX_REPLICAS,
                    "lagPerReplica": THRESHOLD,
                    "pollInterval": "2s",
                    "scaleDownStabilization": "0s",
                },
            },
        }
    )


def _deployment(ns: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # kwok's fake nodes run nothing: the pod only has to be scheduled and Ready.
                "spec": {"containers": [{"name": "worker", "image": "registry.invalid/w:1"}]},
            },
        },
    }


def _commit(broker: KafkaBroker, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer(broker.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def _broker_lag(broker: KafkaBroker, group: str, topic: str) -> int:
    """The group's lag from the broker (log end - committed; log size where none)."""
    ends = broker.end_offsets(topic)
    starts = broker.start_offsets(topic)
    committed = broker.committed(group, topic)
    # -1001: nothing committed; startFrom earliest reads the retained log.
    return sum(end - (c if (c := committed[p]) >= 0 else starts[p]) for p, end in ends.items())


class ReplicaWatch:
    """Every spec.replicas the Deployment had, from a kubectl watch (for the never-above-max
    property: a poll could miss a short excursion)."""

    def __init__(self, cluster: KubeCluster, ns: str, name: str) -> None:
        self.seen: list[int] = []
        self._proc = subprocess.Popen(
            [
                cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "get", "deployment",
                name, "-n", ns, "--watch", "-o", "jsonpath={.spec.replicas}{\"\\n\"}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=cluster.env,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self.seen.append(int(line))

    def stop(self) -> list[int]:
        self._proc.terminate()
        self._proc.wait(timeout=30)
        self._thread.join(timeout=30)
        return self.seen


def _hpa(cluster: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "hpa", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _hpa_current(hpa: dict[str, Any]) -> tuple[int, float] | None:
    """(desiredReplicas, current external metric averageValue) from the HPA's status."""
    status = hpa.get("status", {})
    metrics = status.get("currentMetrics") or []
    if not metrics or "external" not in metrics[0]:
        return None
    current = metrics[0]["external"]["current"]
    value = current.get("averageValue", current.get("value"))
    if value is None:
        return None
    return int(status.get("desiredReplicas", -1)), _quantity(value)


def _quantity(q: str) -> float:
    if q.endswith("m"):
        return int(q[:-1]) / 1000
    return float(q)


def _replicas(cluster: KubeCluster, ns: str, name: str) -> int:
    return int(cluster.get_json("deployment", name, "-n", ns)["spec"]["replicas"])


def test_scaled_object_scales_a_deployment_through_the_real_hpa(
    keda: Keda, kube_cluster: KubeCluster, kafka_broker: KafkaBroker
) -> None:
    ns = kube_cluster.create_namespace("keda-real")
    name = "lagged"
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("keda"), partitions=PARTITIONS)
    pipeline = _pipeline(ns, name, kafka_broker.bootstrap, topic)
    group = pipeline.consumer_group or ""
    scaled_object = build_scaled_object(pipeline, OperatorSettings())
    kube_cluster.apply(_deployment(ns, name))
    watch = ReplicaWatch(kube_cluster, ns, name)
    try:
        kube_cluster.apply(scaled_object)
        hpa = wait_until(
            "KEDA's HPA with an observed metric",
            lambda: (h := _hpa(kube_cluster, ns, name)) and _hpa_current(h) and h,
            timeout=WAIT,
        )
        external = hpa["spec"]["metrics"][0]["external"]
        metric = external["metric"]["name"]
        labels = external["metric"]["selector"]["matchLabels"]
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        assert external["target"] == {"type": "AverageValue", "averageValue": str(THRESHOLD)}
        assert hpa["spec"]["maxReplicas"] == MAX_REPLICAS
        assert hpa["spec"]["minReplicas"] == 1
        # An empty topic: no lag, one replica (the even rounding reports one consumer's worth).
        assert _even_metric(0) == THRESHOLD
        assert _hpa_current(hpa) == (1, float(THRESHOLD))
        assert _quantity(keda.external_metric(ns, metric, selector)["items"][0]["value"]) == (
            THRESHOLD
        )

        # Lag appears: RECORDS_PER_PARTITION on every partition, nothing committed.
        for p in range(PARTITIONS):
            records = (f"r{i}" for i in range(RECORDS_PER_PARTITION))
            kafka_broker.produce(topic, records, partition=p)
        lag = _broker_lag(kafka_broker, group, topic)
        assert lag == PARTITIONS * RECORDS_PER_PARTITION
        capped = _even_metric(lag)  # KEDA: never more consumers than partitions, even shares
        assert capped == PARTITIONS * THRESHOLD
        want = min(MAX_REPLICAS, PARTITIONS, math.ceil(capped / THRESHOLD))
        seen_metric = keda.external_metric(ns, metric, selector)["items"][0]
        assert _quantity(seen_metric["value"]) == capped
        wait_until(
            f"the Deployment at {want} replicas",
            lambda: _replicas(kube_cluster, ns, name) == want,
            timeout=WAIT,
        )

        def at_want() -> tuple[int, float] | None:
            # The status of the sync that scaled shows the new replicas with the average it
            # computed over the old ones (400 over 1 here); the next sync, over the new ones.
            current = _hpa_current(_hpa(kube_cluster, ns, name) or {})
            if current is None or current[0] != want:
                return None
            return current if current[1] != pytest.approx(capped, rel=0.01) else None

        observed = wait_until(
            "the HPA's status at the scaled size, averaged over it", at_want, timeout=WAIT
        )
        # averageValue = the metric over the current replicas, as the HPA computed it.
        assert observed[1] == pytest.approx(capped / want, rel=0.01)
        rescales = [
            e
            for e in kube_cluster.get_json("events", "-n", ns)["items"]
            if e["reason"] == "SuccessfulRescale"
            and e["involvedObject"]["kind"] == "HorizontalPodAutoscaler"
        ]
        assert any(f"New size: {want}" in e["message"] for e in rescales), rescales

        # Caught up: the metric goes to one consumer's worth, the Deployment back to
        # minReplicaCount.
        _commit(kafka_broker, group, topic, kafka_broker.end_offsets(topic))
        assert _broker_lag(kafka_broker, group, topic) == 0
        assert _quantity(keda.external_metric(ns, metric, selector)["items"][0]["value"]) == (
            THRESHOLD
        )
        wait_until(
            "the Deployment back at 1 replica",
            lambda: _replicas(kube_cluster, ns, name) == 1,
            timeout=WAIT,
        )
    finally:
        seen = watch.stop()
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert seen, "the watch saw no replica count"
    assert max(seen) == want
    assert all(1 <= r <= MAX_REPLICAS for r in seen), seen
