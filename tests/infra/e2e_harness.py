"""The e2e harness: the operator as a process, and a pod mirror that runs the workers.

The operator process and the namespace helpers are the ones the operator's integration
tests use too (tests/infra/operator_process.py, tests/infra/namespaces.py), and the
operator runs as the Helm chart's ServiceAccount, as it does there.

Used by the e2e tests (tests/e2e/) and by the demo (bench/demo.py). The control plane from
tests/infra has kwok nodes: pods become Running but no container runs. :class:`PodMirror`
stands in for the kubelet: for every Running pod of a pipeline it starts a local process
with the **command, args and environment of that pod's spec** (fieldRefs and secretKeyRefs
resolved), after materialising its volumes on disk (projected ConfigMap/Secret items into a
per-pod directory, the PVC into one directory shared by every pod of the claim, emptyDirs
per pod). Container paths in args and in the mounted config are translated to those
directories, and each worker's metrics port (a per-pod port in Kubernetes) becomes a free
local one. When a pod goes away its process gets SIGTERM, as from the kubelet.

:class:`Timeline` samples the Deployment's replicas and the pipeline's status while a test
runs, so a test can assert on every value seen ("never above 8", "one scale change").
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamherd.workers.config import CONFIG_HASH_ENV, config_text_hash
from tests.infra.chart_identity import (
    install_operator_identity,
    rbac_refusals,
    remove_operator_identity,
)
from tests.infra.controlplane import KubeCluster
from tests.infra.kafka import KafkaBroker
from tests.infra.namespaces import KubeNamespace
from tests.infra.operator_process import OperatorProcess
from tests.infra.paths import CRD_FILE, SNAPSHOT_CRD_FILE
from tests.infra.processes import WaitTimeout, free_port, wait_until

# wait_until and WaitTimeout are tests/infra's, offered here with the rest of the harness.
__all__ = [
    "Namespace",
    "Operator",
    "PodMirror",
    "Point",
    "Timeline",
    "WaitTimeout",
    "install_crd",
    "wait_until",
]

VENV_BIN = Path(sys.executable).parent


def install_crd(cluster: KubeCluster) -> None:
    """Both CRDs the chart installs: StreamPipeline and StreamPipelineSnapshot."""
    for path in (CRD_FILE, SNAPSHOT_CRD_FILE):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    names = ("streampipelines.streamherd.io", "streampipelinesnapshots.streamherd.io")

    def established() -> bool | None:
        # Read the condition, not `kubectl wait`: right after an apply the CRD may have no
        # status.conditions yet, and `kubectl wait` then fails at once ("accessor error")
        # instead of waiting.
        for name in names:
            got = cluster.kubectl("get", "crd", name, "-o", "json", check=False)
            if got.returncode != 0:
                return None
            conditions = json.loads(got.stdout).get("status", {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return None
        return True

    wait_until("the CRDs to be Established", established, timeout=60)


class Operator(OperatorProcess):
    """`streamherd operator` watching one namespace, started at once, log captured.

    Like the operator's integration tests, it runs as the Helm chart's ServiceAccount
    (tests/infra/chart_identity.py), here in the chart's namespaced mode: a Role
    in the watched namespace (which must exist) and a token kubeconfig, so the e2e runs
    also prove the chart's RBAC is enough. stop() removes that identity, and fails if the
    RBAC refused the operator anything, even a call it coped with.
    """

    def __init__(self, cluster: KubeCluster, namespace: str, log: Path, resync: int = 3) -> None:
        self.identity = install_operator_identity(
            cluster, log.parent / "identity", watch_namespaces=[namespace]
        )
        super().__init__(
            cluster,
            log,
            kubeconfig=self.identity.kubeconfig,
            namespace=namespace,
            resync_seconds=resync,
            worker_image="ghcr.io/streamherd/streamherd:e2e",
        )
        self.start()

    def stop(self) -> None:
        super().stop()
        remove_operator_identity(self.cluster, self.identity)
        refused = rbac_refusals(self.log_text())
        if refused:
            raise AssertionError(
                f"the chart's RBAC refused the operator ({self.log}):\n" + "\n".join(refused[:20])
            )


class Namespace(KubeNamespace):
    """One namespace of the test cluster, with the status helpers the e2e tests use."""

    def status(self, pipeline: str) -> dict[str, Any]:
        obj = self.get("streampipeline", pipeline) or {}
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def condition(self, pipeline: str, type_: str) -> dict[str, Any]:
        for cond in self.status(pipeline).get("conditions", []):
            if cond.get("type") == type_:
                found: dict[str, Any] = cond
                return found
        return {}

    def deployment_replicas(self, pipeline: str) -> int | None:
        dep = self.get("deployment", pipeline)
        return None if dep is None else int(dep["spec"].get("replicas", 0))

    def event_reasons(self, pipeline: str) -> list[str]:
        return [
            e.get("reason", "")
            for e in self.items("events")
            if e.get("involvedObject", {}).get("kind") == "StreamPipeline"
            and e.get("involvedObject", {}).get("name") == pipeline
        ]


# --------------------------------------------------------------------------- the pod mirror


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


class PodMirror:
    """Runs one local process per Running pod of a pipeline, from the pod's own spec."""

    def __init__(self, ns: Namespace, pipeline: str, workdir: Path) -> None:
        self.ns = ns
        self.pipeline = pipeline
        self.workdir = workdir
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[str] = []
        self.errors: list[str] = []
        self.stopping: set[str] = set()
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

    # -- volumes and paths

    def _volume_dirs(self, pod: dict[str, Any], base: Path) -> dict[str, Path]:
        """Materialise the pod's volumes; volume name -> local directory."""
        dirs: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes", []):
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                d = self.workdir / "pvc" / vol["persistentVolumeClaim"]["claimName"]
            else:
                d = base / "volumes" / name
            d.mkdir(parents=True, exist_ok=True)
            sources = vol.get("projected", {}).get("sources", [])
            if "configMap" in vol:
                sources = [{"configMap": vol["configMap"]}]
            if "secret" in vol:
                sources = [{"secret": {"name": vol["secret"]["secretName"], **vol["secret"]}}]
            for src in sources:
                kind = "configmap" if "configMap" in src else "secret"
                ref = src.get("configMap") or src.get("secret") or {}
                obj = self.ns.get(kind, ref["name"])
                if obj is None:
                    raise RuntimeError(f"{kind} {ref['name']} of pod {pod['metadata']['name']}")
                data = obj.get("data") or {}
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    raw = data[item["key"]]
                    target = d / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(raw.encode() if kind == "configmap" else _b64(raw))
            dirs[name] = d
        return dirs

    def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
        }
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            src = var.get("valueFrom", {})
            if "fieldRef" in src:
                env[var["name"]] = fields[src["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                secret = self.ns.get("secret", ref["name"]) or {}
                env[var["name"]] = _b64((secret.get("data") or {})[ref["key"]]).decode()
            else:
                raise RuntimeError(f"unsupported env source {src}")
        return env

    def _start(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        base = self.workdir / name
        base.mkdir(parents=True, exist_ok=True)
        container = pod["spec"]["containers"][0]
        dirs = self._volume_dirs(pod, base)
        mounts = sorted(
            ((m["mountPath"], dirs[m["name"]]) for m in container.get("volumeMounts", [])),
            key=lambda m: -len(m[0]),
        )

        def local(text: str) -> str:
            for path, d in mounts:
                if text == path or text.startswith(path + "/"):
                    return str(d) + text[len(path) :]
            return text

        # The mounted worker config names container paths and a per-pod port: translate.
        # The pod names the config it runs by its hash (decision 0196): a translated file
        # is named by the translation's hash, so the pod still runs the one its template
        # names (worker.json, or running.json while the ConfigMap is ahead of the pod).
        renamed: dict[str, str] = {}
        for _path, d in mounts:
            for cfg in d.glob("*.json"):
                text = cfg.read_text()
                config = json.loads(text)
                if "checkpoint" in config:
                    config["checkpoint"]["directory"] = local(config["checkpoint"]["directory"])
                    config.setdefault("runtime", {})["metricsPort"] = free_port()
                    translated = json.dumps(config)
                    cfg.write_text(translated)
                    renamed[config_text_hash(text)] = config_text_hash(translated)
        argv = [local(a) for a in [*container.get("command", []), *container.get("args", [])]]
        log = (base / "worker.log").open("wb")
        env = self._env(pod, container)
        if env.get(CONFIG_HASH_ENV) in renamed:
            env[CONFIG_HASH_ENV] = renamed[env[CONFIG_HASH_ENV]]
        self.workers[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=base, env=env
        )
        self.started.append(name)

    def _kill(self, pod: str) -> None:
        proc = self.workers.pop(pod)
        self.stopping.add(pod)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = {p["metadata"]["name"]: p for p in self.ns.running_pods(self.pipeline)}
                for name in set(pods) - set(self.workers):
                    self._start(pods[name])
                for name in set(self.workers) - set(pods):
                    self._kill(name)
                for name, proc in self.workers.items():
                    if proc.poll() is not None:
                        msg = f"worker for {name} exited with {proc.returncode}"
                        if msg not in self.errors:
                            self.errors.append(msg)
            except Exception as e:  # surfaced by the test, never swallowed
                self.errors.append(repr(e))
            self._stop.wait(0.5)


# --------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class Point:
    t: float  # time.time()
    replicas: int | None  # the Deployment's spec.replicas
    desired: int | None  # status.desiredReplicas
    lag: int | None  # status.lag
    workers: int  # local worker processes


class Timeline:
    """Samples replicas, desired replicas, lag and running workers every `every` seconds."""

    def __init__(
        self, ns: Namespace, pipeline: str, mirror: PodMirror | None, every: float = 1.0
    ) -> None:
        self.ns = ns
        self.pipeline = pipeline
        self.mirror = mirror
        self.every = every
        self.points: list[Point] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timeline", daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.ns.status(self.pipeline)
                self.points.append(
                    Point(
                        time.time(),
                        self.ns.deployment_replicas(self.pipeline),
                        status.get("desiredReplicas"),
                        status.get("lag"),
                        len(self.mirror.workers) if self.mirror else 0,
                    )
                )
            except Exception:  # a slow API server: the next sample will do
                pass
            self._stop.wait(self.every)

    def replica_values(self) -> list[int]:
        return [p.replicas for p in self.points if p.replicas is not None]

    def changes(self, since: float = 0.0) -> list[tuple[float, int, int]]:
        """(time, from, to) for every change of the Deployment's replicas seen."""
        seen = [(p.t, p.replicas) for p in self.points if p.replicas is not None and p.t >= since]
        return [(t, a, b) for (_, a), (t, b) in itertools.pairwise(seen) if a != b]


@contextmanager
def operator_namespace(
    cluster: KubeCluster, tmp_path_factory: Any, prefix: str
) -> Iterator[Namespace]:
    """The e2e modules' set-up: both CRDs, a fresh namespace `<prefix>-<hex>` and an operator
    watching it as the chart's identity; on exit the operator stops (its log path printed)
    and the namespace is deleted."""
    install_crd(cluster)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    operator = Operator(cluster, name, log)
    namespace = Namespace(cluster, name)
    try:
        yield namespace
    finally:
        operator.stop()
        print(f"operator log: {log}")
        namespace.delete()


# The click records the e2e modules produce: 40 users over PARTITIONS partitions, user u
# always in partition u % PARTITIONS, record i at event time BASE_TS + i * STEP_MS.
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 10
PARTITIONS = 2
Click = tuple[int, tuple[str, dict[str, Any]]]


def clicks(start: int, count: int) -> list[Click]:
    """(partition, (key, record)) for records start .. start + count - 1."""
    out = []
    for i in range(start, start + count):
        u = (i * 7919) % 40
        user = f"user-{u}"
        rec: dict[str, Any] = {"user": user, "bytes": (i * 31) % 997, "ts": BASE_TS + i * STEP_MS}
        out.append((u % PARTITIONS, (user, rec)))
    return out


def produce(broker: KafkaBroker, topic: str, records: Sequence[Click]) -> None:
    """Each (partition, record) to its partition, in order within the partition."""
    for p in range(PARTITIONS):
        broker.produce(topic, [r for part, r in records if part == p], partition=p)
