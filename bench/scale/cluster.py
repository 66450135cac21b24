"""bench/scale's cluster and operator: what each size runs on, set up as a user would.

The control plane (tests/infra/controlplane.py) with the operator's audit policy and a
scheduler without volume plugins, the operator's own client certificate, the kwok nodes and
the pipelines (the examples, round robin); a watch that sees every pipeline's Deployment;
the floor (the bench creating the children itself, no operator); the operator as a child
process (bench/scale/run_operator.py) with its RSS and CPU sampled from /proc.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling.poller import plain_cluster
from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.topics import TopicsReport
from streamherd.operator.kube import resource_info
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.topicadmin import InternalTopics
from tests.infra.controlplane import (
    KWOK_ANNOTATION,
    ControlPlane,
    KubeCluster,
    _issue,
    start_control_plane,
)
from tests.infra.kafka import KafkaProcess, start_kafka
from tests.infra.paths import REPO_ROOT, module_command
from tests.infra.processes import InfraError

NAMESPACE = "scale"


OPERATOR_USER = "streamherd-operator"


EXAMPLES = ("01-clicks-local", "02-clicks-per-minute", "03-orders-secure")


POLL_INTERVAL = 15.0  # the examples' (default) autoscaling poll interval


AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  # The status patches and Events with their bodies, so an idle write can be traced to the
  # field it changed or the decision it reports; the rest at Metadata (no bodies).
  - level: Request
    users: ["{OPERATOR_USER}"]
    resources:
      - {{group: streamherd.io, resources: [streampipelines/status]}}
      - {{group: "", resources: [events]}}
  - level: Metadata
    users: ["{OPERATOR_USER}"]
  - level: None
"""


SCHEDULER_CONFIG = """apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
  qps: 300
  burst: 600
leaderElection:
  leaderElect: false
profiles:
  - schedulerName: default-scheduler
    plugins:
      multiPoint:
        disabled:
          - name: VolumeBinding
          - name: VolumeRestrictions
          - name: VolumeZone
          - name: NodeVolumeLimits
"""


def control_plane(workdir: Path, profiling: bool = False) -> tuple[ControlPlane, Path]:
    """A control plane with an audit log of the operator's requests; returns the log path.
    profiling: serve the API server's /debug/pprof (tests/infra turns it off)."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit = workdir / "audit.log"
    # The scheduler without its volume plugins: storage is fake here (no provisioner, no
    # kubelet), so pods need not wait for their checkpoint PVCs to bind (see scale.md).
    scheduler = workdir / "scheduler.yaml"
    scheduler.write_text(SCHEDULER_CONFIG.format(kubeconfig=workdir / "admin.kubeconfig"))
    cp = start_control_plane(
        workdir,
        extra_args={
            "kube-apiserver": [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={audit}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",
                *(["--profiling=true"] if profiling else []),
            ],
            # The defaults (20 QPS) would make the controller-manager, not the operator,
            # the bottleneck: 1000 Deployments need ~6000 of its requests (ReplicaSets,
            # pods, statuses). A real cluster's control plane has its own machines.
            "kube-controller-manager": [
                "--kube-api-qps=300",
                "--kube-api-burst=600",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                # No storage here (no provisioner, no kubelet): the binder would only post a
                # FailedBinding Event for every Pending claim, again and again (3815 Events
                # and patches for 1000 claims in 4 minutes: load no real cluster has, since
                # there a provisioner binds the claim). See scale.md.
                "--controllers=*,-persistentvolume-binder-controller",
            ],
            "kube-scheduler": [f"--config={scheduler}"],
        },
    )
    return cp, audit


def operator_kubeconfig(cluster: KubeCluster, workdir: Path) -> Path:
    """A kubeconfig with the operator's own client certificate (CN=streamherd-operator)."""
    pki = workdir / "pki"
    _issue(
        pki,
        "operator",
        f"/O=system:masters/CN={OPERATOR_USER}",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    user = cfg["users"][0]["user"]
    user["client-certificate-data"] = base64.b64encode((pki / "operator.crt").read_bytes()).decode()
    user["client-key-data"] = base64.b64encode((pki / "operator.key").read_bytes()).decode()
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def nodes(count: int) -> list[dict[str, Any]]:
    """Fake kwok nodes with room for many pods, labelled for example 03's nodeSelector."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"scale-node-{i}",
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": f"scale-node-{i}",
                    "kubernetes.io/os": "linux",
                    "type": "kwok",
                    "workload": "streaming",
                },
            },
            "status": {
                "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "500"},
                "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "500"},
            },
        }
        for i in range(count)
    ]


def pipelines(n: int, bootstrap: str) -> list[dict[str, Any]]:
    """N pipelines: the examples round robin, unique names, Kafka sources on our broker."""
    docs = {s: yaml.safe_load((REPO_ROOT / "examples" / f"{s}.yaml").read_text()) for s in EXAMPLES}
    out = []
    for i in range(n):
        stem = EXAMPLES[i % len(EXAMPLES)]
        doc = copy.deepcopy(docs[stem])
        doc["metadata"] = {"name": f"{doc['metadata']['name']}-{i:04d}", "namespace": NAMESPACE}
        kafka = doc["spec"]["source"].get("kafka")
        if kafka is not None:
            kafka["bootstrapServers"] = bootstrap
            kafka.pop("auth", None)  # the test broker is PLAINTEXT
            kafka.pop("consumerGroup", None)  # one group per pipeline: <namespace>.<name>
        out.append(doc)
    return out


@dataclass
class Watcher:
    """Records, from watches in the bench process, when each Deployment appeared and when
    each pipeline first became Ready."""

    api: Any
    on_deployment: Any = None  # called with every Deployment event's object (the floor)
    deployment_seen: dict[str, float] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._deployments, daemon=True).start()
        threading.Thread(target=self._pipelines, daemon=True).start()

    def _stream(self, func: Any, *args: Any, on: Any) -> None:
        version = ""
        while not self.stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                events = w.stream(  # type: ignore[no-untyped-call]
                    func, *args, timeout_seconds=30, resource_version=version
                )
                for ev in events:
                    obj = ev["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    on(obj)
                    if self.stop.is_set():
                        break
            except Exception:  # an expired watch, a dropped connection: start over
                version = ""
                time.sleep(0.2)

    def _deployments(self) -> None:
        apps = client.AppsV1Api(self.api)

        def on(obj: dict[str, Any]) -> None:
            self.deployment_seen.setdefault(obj["metadata"]["name"], time.time())
            if self.on_deployment is not None:
                self.on_deployment(obj)

        self._stream(apps.list_namespaced_deployment, NAMESPACE, on=on)

    def _pipelines(self) -> None:
        custom = client.CustomObjectsApi(self.api)

        def on(obj: dict[str, Any]) -> None:
            for c in (obj.get("status") or {}).get("conditions") or []:
                if c.get("type") == "Ready" and c.get("status") == "True":
                    self.ready_at.setdefault(obj["metadata"]["name"], time.time())

        def lister(*a: Any, **kw: Any) -> Any:
            return custom.list_namespaced_custom_object(
                "streamherd.io", "v1alpha1", NAMESPACE, "streampipelines", *a, **kw
            )

        self._stream(lister, on=on)


def call(api: Any, method: str, path: str, body: Any, content_type: str | None = None) -> Any:
    """One REST call with the kubernetes client's connection; the answer's JSON."""
    headers = {"Content-Type": content_type} if content_type else None
    request = api.param_serialize(method, path, header_params=headers, body=body)
    response = api.call_api(*request, _request_timeout=60)
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data)


class Floor:
    """The cluster's own share, with no operator: what an ideal operator that costs
    nothing would leave. For each pipeline the bench creates the Kafka topics its workers
    need (the repartition topic of a re-keyed window, through the operator's own
    ``InternalTopics``, as the operator does: a pipeline cannot run without it) and POSTs
    the very children the operator would apply (streamherd's builders, the same settings),
    and when the pipeline's Deployment is available it writes the one status patch that
    says Ready. So the API server gets the user's creates, the minimum of operator writes
    (children + one status) and everything the controllers, the scheduler and kwok do for
    them: the least work an operator can leave the cluster. It is a floor of work, not of
    time: the four create clients make each pipeline's children one pipeline at a time,
    which an operator with more workers can beat (the kopf floor did, once; docs/scale.md).
    (Not in it: the finalizer a pipeline with internal topics gets, so that deleting it
    deletes them; it is needed only at deletion.)"""

    def __init__(self, api: Any, clients: int) -> None:
        self.api = api
        self.settings = OperatorSettings(worker_image="ghcr.io/streamherd/streamherd:bench")
        self.pool = ThreadPoolExecutor(clients)
        self.patched: set[str] = set()
        self.lock = threading.Lock()
        self.topics = InternalTopics(resolve_cluster=plain_cluster)
        # Topics are ensured beside the children, in a pool, and Ready does not wait for
        # them: the operator's reconcile ensures them before it applies the children, so the
        # floor leaves that wait out (its times are a bound on work, not on latency).
        self.topic_pool = ThreadPoolExecutor(8, thread_name_prefix="floor-topics")
        self.topic_reports: list[Future[TopicsReport | None]] = []

    def children(self, created: dict[str, Any]) -> None:
        """POST the children of one just-created pipeline (its body as the API returned it)."""
        pipeline = StreamPipeline.model_validate(
            {k: v for k, v in created.items() if k != "status"}
        )
        self.topic_reports.append(self.topic_pool.submit(self.topics.ensure, pipeline))
        none = Capabilities(service_monitor=False, prometheus_rule=False, keda=False)
        for child in build_all(pipeline, self.settings, secrets_hash="floor", capabilities=none):
            info = resource_info(child["apiVersion"], child["kind"])
            call(self.api, "POST", info.collection(NAMESPACE), child)

    def topics_not_ready(self) -> list[str]:
        """The internal topics reports that were not "ready" (waits for every ensure)."""
        reports = [f.result() for f in self.topic_reports]
        return [
            f"{r.status}: {r.message}" for r in reports if r is not None and r.status != "ready"
        ]

    def on_deployment(self, obj: dict[str, Any]) -> None:
        """The Deployment of a pipeline became available: write its Ready status (once)."""
        st = obj.get("status") or {}
        want = (obj.get("spec") or {}).get("replicas", 1)
        name = obj["metadata"]["name"]
        if int(st.get("availableReplicas") or 0) < want or int(
            st.get("observedGeneration") or 0
        ) < int(obj["metadata"].get("generation") or 0):
            return
        with self.lock:
            if name in self.patched:
                return
            self.patched.add(name)
        self.pool.submit(self._ready, name)

    def _ready(self, name: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {"status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "True", "reason": "WorkersReady",
             "message": "1/1 workers ready", "lastTransitionTime": now}]}}  # fmt: skip
        path = f"/apis/streamherd.io/v1alpha1/namespaces/{NAMESPACE}/streampipelines/{name}"
        call(self.api, "PATCH", f"{path}/status", status, "application/merge-patch+json")


@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_s: float
    load1: float


class Operator:
    """The operator subprocess, with a /proc sampler (RSS, CPU seconds) every second."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        broker_stats: Path,
        extra: list[str],
        module: str = "bench.scale.run_operator",
    ) -> None:
        self.extra = extra
        self.module = module  # bench.scale.kopf_floor: the kopf floor instead
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.broker_stats = broker_stats
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples: list[Sample] = []
        self.started_at = 0.0
        self.runs = 0
        self._stop = threading.Event()

    def start(self) -> None:
        log = self.workdir / f"operator-{self.runs}.log"
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(PYTHONUNBUFFERED="1", STREAMHERD_BENCH_BROKER_STATS=str(self.broker_stats))
        flags = [
            "--health-port=0", "--metrics-port=0",
            "--worker-image=ghcr.io/streamherd/streamherd:bench",
            "--log-level=info", *self.extra,
        ] if self.module == "bench.scale.run_operator" else []  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*module_command(self.module), f"--kubeconfig={self.kubeconfig}", *flags],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            )  # fmt: skip
        self.started_at = time.time()
        self._stop.clear()
        threading.Thread(target=self._sample, args=(self.proc.pid,), daemon=True).start()

    def _sample(self, pid: int) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(stat[11]) + int(stat[12])) / tick
                rss = 0.0
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) / 1024
            except (OSError, IndexError, ValueError):
                return
            self.samples.append(Sample(time.time(), rss, cpu, os.getloadavg()[0]))
            time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]


def wait(what: str, probe: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(interval)
    print(f"  ! timed out after {timeout:.0f}s waiting for {what}", flush=True)
    return False


def prepare(cluster: KubeCluster, n: int) -> None:
    """The CRD, enough fake nodes, the namespace and the Secret example 03 references."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    wait(
        "the CRD to be established",
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "crd/streampipelines.streamherd.io",
            "--timeout=10s", check=False,
        ).returncode == 0,
        60,
    )  # fmt: skip
    cluster.apply(nodes(max(1, math.ceil(n / 400)) + 1))
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "fx-api", "namespace": NAMESPACE},
            "stringData": {"token": "bench-token"},
        }
    )


def start_with_retries(attempts: int = 3) -> KafkaProcess:
    # tests/infra's random KRaft cluster id sometimes starts with "-", which the storage
    # tool reads as an option: try again with another id.
    for attempt in range(attempts):
        try:
            return start_kafka()
        except InfraError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
