"""The whole builtin autoscaling loop: operator + real control plane + real Kafka + workers.

The operator runs as a subprocess (``streamherd operator``) against the real kube-apiserver
(tests/infra ``kube_cluster``, kwok nodes make pods Running but run nothing). A pod mirror
in the test stands in for the kubelet: for every Running worker pod of the pipeline it runs
a real ``streamherd-worker`` process with the WorkerConfig from the pipeline's ConfigMap
(checkpoint directory and metrics port rewritten for this machine), and stops it when the
pod goes away. So the lag the operator measures at the real broker is drained by real
workers, exactly as many as the Deployment has Running pods.

Scenario: a pipeline with minReplicas 0 idles to zero; records arrive; it wakes up, scales
out, the workers drain the lag to 0; with no input it goes back to zero. Status fields and
Events are checked along the way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.controlplane import KubeCluster
from tests.infra.kafka import KafkaBroker
from tests.integration.operator.operator_harness import CRD_FILE, ROOT, Env, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.cluster,
    pytest.mark.e2e,
    pytest.mark.slow,
]

WORKER_BIN = Path(sys.executable).with_name("streamherd-worker")


class NamespacedOperator:
    """`streamherd operator` watching one namespace only, log captured.

    Module-scoped and namespaced on purpose: the operator tests start their own
    (cluster-wide) operator later in the session; ours is gone by then and never watches
    their namespaces.
    """

    def __init__(self, cluster: KubeCluster, namespace: str, log: Path) -> None:
        self.log = log
        env = {**cluster.env, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "streamherd.cli", "operator",
                    f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}",
                    "--resync-interval=5", "--health-port=0", "--metrics-port=0",
                    "--worker-image=ghcr.io/streamherd/streamherd:test", "--log-level=debug",
                ],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class PodMirror:
    """Runs one local streamherd-worker per Running pod of a pipeline (a stand-in kubelet)."""

    def __init__(self, env: Env, pipeline: str, workdir: Path) -> None:
        self.env = env
        self.pipeline = pipeline
        self.workdir = workdir
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-mirror", daemon=True)

    def __enter__(self) -> PodMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for name in list(self.workers):
            self._kill(name)

    def _config(self) -> Path:
        cm = self.env.get("configmap", f"{self.pipeline}-config")
        assert cm is not None, "the operator has not created the ConfigMap"
        config: dict[str, Any] = json.loads(cm["data"]["worker.json"])
        config["checkpoint"]["directory"] = str(self.workdir / "checkpoints")  # the "RWX PVC"
        config["runtime"]["metricsPort"] = 0  # several workers on one machine
        path = self.workdir / "worker.json"
        path.write_text(json.dumps(config))
        return path

    def _start(self, pod: str) -> None:
        log = (self.workdir / f"{pod}.log").open("wb")
        self.workers[pod] = subprocess.Popen(
            [str(WORKER_BIN), "--config", str(self._config())],
            stdout=subprocess.DEVNULL, stderr=log, cwd=self.workdir,
        )  # fmt: skip
        self.started.append(pod)

    def _kill(self, pod: str) -> None:
        proc = self.workers.pop(pod)
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                running = {p["metadata"]["name"] for p in self.env.running_pods(self.pipeline)}
                for pod in running - set(self.workers):
                    self._start(pod)
                for pod in set(self.workers) - running:
                    self._kill(pod)
                for pod, proc in self.workers.items():
                    if proc.poll() is not None:
                        self.errors.append(f"worker for {pod} exited with {proc.returncode}")
            except Exception as e:  # surfaced by the test, never swallowed
                self.errors.append(repr(e))
            self._stop.wait(0.5)


@pytest.fixture(scope="module")
def e2e_env(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/streampipelines.streamherd.io",
    )  # fmt: skip
    ns = f"as-{uuid.uuid4().hex[:8]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    operator = NamespacedOperator(kube_cluster, ns, tmp_path_factory.mktemp("op") / "op.log")
    env = Env(kube_cluster, ns, operator)  # type: ignore[arg-type]
    try:
        yield env
    finally:
        operator.stop()
        print(f"operator log: {operator.log}")
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for pv in env.pvs:
            kube_cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def _status(env: Env, name: str) -> dict[str, Any]:
    status: dict[str, Any] = env.pipeline(name).get("status") or {}
    return status


def _deployment_replicas(env: Env, name: str) -> int | None:
    dep = env.get("deployment", name)
    return None if dep is None else int(dep["spec"].get("replicas", 0))


def _event_reasons(env: Env, name: str) -> set[str]:
    events = env.items("events")
    return {
        e.get("reason", "")
        for e in events
        if e.get("involvedObject", {}).get("kind") == "StreamPipeline"
        and e.get("involvedObject", {}).get("name") == name
    }


def test_idle_to_zero_wake_up_drain_and_back_to_zero(
    e2e_env: Env, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    env = e2e_env
    name = "lagged"
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("e2e-in"), partitions=8)
    env.apply(
        yaml.safe_dump(
            {
                "apiVersion": "streamherd.io/v1alpha1",
                "kind": "StreamPipeline",
                "metadata": {"name": name, "namespace": env.ns},
                "spec": {
                    "source": {
                        "kafka": {
                            "bootstrapServers": kafka_broker.bootstrap,
                            "topics": [topic],
                            "format": "raw",
                        }
                    },
                    "sink": {"stdout": {}},
                    "checkpoint": {"interval": "1s"},
                    "autoscaling": {
                        "mode": "builtin",
                        "minReplicas": 0,
                        "maxReplicas": 4,
                        "lagPerReplica": 2000,
                        "activationLag": 10,
                        "pollInterval": "1s",
                        "scaleDownStabilization": "10s",
                        "idleTimeout": "15s",
                    },
                },
            }
        )
    )
    env.bind_checkpoint_volume(name)
    with PodMirror(env, name, tmp_path) as mirror:
        # 1. Nothing to do: after the idle timeout the pipeline goes to zero workers.
        wait_until(
            "scale to zero while idle",
            lambda: (
                _status(env, name).get("desiredReplicas") == 0
                and _deployment_replicas(env, name) == 0
            ),
            timeout=120,
        )
        assert _status(env, name).get("lag") == 0
        assert "ScaleToZero" in _event_reasons(env, name)

        # 2. Records arrive: the operator sees the lag at the broker and wakes workers up.
        kafka_broker.produce(topic, (f"r{i}".encode() for i in range(40_000)))
        woke = wait_until(
            "wake up on lag",
            lambda: (_status(env, name).get("desiredReplicas") or 0) > 0 and _status(env, name),
            timeout=60,
        )
        assert woke["lastScaleReason"].startswith("WakeUp")
        assert 1 <= woke["desiredReplicas"] <= 4
        wait_until("workers running", lambda: len(mirror.workers) >= 1, timeout=60)

        # 3. The real workers drain the lag; the operator's measurement reaches 0.
        wait_until("lag drained", lambda: _status(env, name).get("lag") == 0, timeout=180)
        assert mirror.started, "no worker ever ran"
        committed = kafka_broker.committed(f"{env.ns}.{name}", topic)
        assert sum(committed.values()) == 40_000

        # 4. No more input: back to zero, the workers stop.
        wait_until(
            "back to zero",
            lambda: (
                _status(env, name).get("desiredReplicas") == 0
                and _deployment_replicas(env, name) == 0
                and not mirror.workers
            ),
            timeout=180,
        )
        assert _status(env, name)["lastScaleReason"].startswith(("ScaleToZero", "ScaleDown"))
        reasons = _event_reasons(env, name)
        assert {"WakeUp", "ScaleToZero"} <= reasons, reasons
        assert not mirror.errors, mirror.errors  # no worker died on its own, no mirror error
