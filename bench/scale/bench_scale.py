"""Benchmark: one operator, N = 100 / 300 / 1000 StreamPipelines, on the real control plane.

For each N, a fresh control plane (tests/infra/controlplane.py: etcd, kube-apiserver,
controller-manager, scheduler, kwok with fake nodes) and one real Kafka broker
(tests/infra/kafka.py, shared by all N). The operator runs as a subprocess
(bench/scale/run_operator.py: `streamherd operator` with the lag probe's broker requests
counted) under its own client certificate, user ``streamherd-operator``, so the API
server's audit log (level Metadata, only that user) attributes every request it makes.

Per N it measures:

- time from the first create until every pipeline is Ready=True; apply-to-Deployment
  latency (create answered -> Deployment seen by a watch), p50/p99;
- operator RSS and CPU (from /proc, every second);
- operator API requests: per second during convergence, and per pipeline per minute while
  idle (reads and writes apart), from the audit log;
- restart: time until every pipeline's Deployment has been read again by the new process,
  and the writes to children (goal 0) in that resync;
- the builtin autoscaler's Kafka requests per second while idle (librdkafka's own request
  counters, see run_operator.py), per group per poll interval.

The pipelines are the examples, round robin, with unique names; 02 and 03 read from the
real broker (03 without SASL/TLS: the test broker is PLAINTEXT; its fx-api Secret stays).
Every pipeline has a checkpoint PVC and this cluster has no storage provisioner: the PVCs
stay Pending, and the bench runs the scheduler without its volume plugins so the (fake,
kwok) worker pods are placed anyway. Ready means the Deployment's workers are ready; on a
real cluster that also waits for the volume.

Writes bench/scale/results/N.json, and docs/benchmarks.md's section (between
`<!-- scale:begin -->` and `<!-- scale:end -->`) plus docs/scale-*.png from every results
file present.

    .venv/bin/python bench/scale/bench_scale.py --sizes 100
    .venv/bin/python bench/scale/bench_scale.py --sizes 300,1000 --idle 600
    .venv/bin/python bench/scale/bench_scale.py --report-only
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import yaml
from kubernetes import client, watch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streamherd import __version__  # noqa: E402
from streamherd.operator.api.v1alpha1 import StreamPipeline  # noqa: E402
from streamherd.operator.builders import Capabilities, build_all  # noqa: E402
from streamherd.operator.kube import resource_info  # noqa: E402
from streamherd.operator.settings import OperatorSettings  # noqa: E402
from tests.infra.controlplane import (  # noqa: E402
    KWOK_ANNOTATION,
    ControlPlane,
    KubeCluster,
    _issue,
    start_control_plane,
)
from tests.infra.kafka import KafkaProcess, start_kafka  # noqa: E402
from tests.infra.processes import InfraError  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = ROOT / "docs"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
NAMESPACE = "scale"
OPERATOR_USER = "streamherd-operator"
EXAMPLES = ("01-clicks-local", "02-clicks-per-minute", "03-orders-secure")
CHILD_RESOURCES = frozenset(
    {
        "configmaps",
        "services",
        "persistentvolumeclaims",
        "deployments",
        "poddisruptionbudgets",
        "horizontalpodautoscalers",
        "servicemonitors",
        "prometheusrules",
        "scaledobjects",
        "triggerauthentications",
    }
)
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
POLL_INTERVAL = 15.0  # the examples' (default) autoscaling poll interval
HANDLED = ("Creation is processed", "Resuming is processed")  # kopf's log, one per pipeline

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


# --------------------------------------------------------------------------- set-up


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
    docs = {s: yaml.safe_load((ROOT / "examples" / f"{s}.yaml").read_text()) for s in EXAMPLES}
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


# --------------------------------------------------------------------------- watching


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


# --------------------------------------------------------------------------- the floor


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
    nothing would leave. For each pipeline the bench POSTs the very children the operator
    would apply (streamherd's builders, the same settings), and when the pipeline's
    Deployment is available it writes the one status patch that says Ready. So the API
    server gets the user's creates, the minimum of operator writes (children + one status)
    and everything the controllers, the scheduler and kwok do for them; the time until all
    are Ready is a floor no operator can beat on this machine and control plane."""

    def __init__(self, api: Any, clients: int) -> None:
        self.api = api
        self.settings = OperatorSettings(worker_image="ghcr.io/streamherd/streamherd:bench")
        self.pool = ThreadPoolExecutor(clients)
        self.patched: set[str] = set()
        self.lock = threading.Lock()

    def children(self, created: dict[str, Any]) -> None:
        """POST the children of one just-created pipeline (its body as the API returned it)."""
        pipeline = StreamPipeline.model_validate(
            {k: v for k, v in created.items() if k != "status"}
        )
        none = Capabilities(service_monitor=False, prometheus_rule=False, keda=False)
        for child in build_all(pipeline, self.settings, secrets_hash="floor", capabilities=none):
            info = resource_info(child["apiVersion"], child["kind"])
            call(self.api, "POST", info.collection(NAMESPACE), child)

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


# --------------------------------------------------------------------------- the operator


@dataclass
class Sample:
    t: float
    rss_mb: float
    cpu_s: float
    load1: float


class Operator:
    """The operator subprocess, with a /proc sampler (RSS, CPU seconds) every second."""

    def __init__(
        self, kubeconfig: Path, workdir: Path, broker_stats: Path, extra: list[str]
    ) -> None:
        self.extra = extra
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
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, str(HERE / "run_operator.py"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--health-port=0", "--metrics-port=0",
                    "--worker-image=ghcr.io/streamherd/streamherd:bench",
                    "--log-level=info", *self.extra,
                ],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
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


# --------------------------------------------------------------------------- audit log


@dataclass(frozen=True)
class Request:
    t: float
    verb: str
    resource: str
    subresource: str
    name: str
    agent: str
    code: int
    body: Any = None  # the request body (status patches only: audit level Request)


def _log_time(line: str) -> float:
    """The local timestamp that starts an operator log line, as epoch seconds."""
    stamp, _, millis = line[:23].partition(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis or 0) / 1000


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path) -> list[Request]:
    out = []
    with path.open() as f:
        for line in f:
            ev = json.loads(line)
            if (ev.get("user") or {}).get("username") != OPERATOR_USER:
                continue
            ref = ev.get("objectRef") or {}
            out.append(
                Request(
                    t=_ts(ev["stageTimestamp"]),
                    verb=ev.get("verb", ""),
                    resource=ref.get("resource", ""),
                    subresource=ref.get("subresource", ""),
                    name=ref.get("name", ""),
                    agent=ev.get("userAgent", "").split(" ")[0],
                    code=int((ev.get("responseStatus") or {}).get("code") or 0),
                    body=ev.get("requestObject"),
                )
            )
    return out


def classify(reqs: list[Request]) -> dict[str, int]:
    """Counts by kind of request (watches counted when they close)."""
    c: Counter[str] = Counter()
    for r in reqs:
        c["total"] += 1
        if r.verb == "watch":
            c["watch"] += 1
            continue
        if r.verb in WRITE_VERBS:
            c["writes"] += 1
            if r.resource in CHILD_RESOURCES:
                c["child_writes"] += 1
            elif r.resource == "streampipelines" and r.subresource == "status":
                c["status_writes"] += 1
            elif r.resource == "streampipelines":
                c["pipeline_writes"] += 1  # kopf's annotations
            elif r.resource == "events":
                c["event_writes"] += 1
            else:
                c["other_writes"] += 1
        else:
            c["reads"] += 1
        if r.code == 429:
            c["throttled"] += 1
    return dict(c)


def _changed_fields(before: dict[str, Any], patch: dict[str, Any]) -> list[str]:
    """The status fields a merge patch changes; conditions field by field, by type."""
    out = []
    for key, value in patch.items():
        old = before.get(key)
        if key == "conditions" and isinstance(value, list) and isinstance(old, list):
            was = {c.get("type"): c for c in old}
            for cond in value:
                prev = was.get(cond.get("type")) or {}
                out += [f"conditions[{cond.get('type')}].{f}" for f in sorted(cond)
                        if prev.get(f) != cond[f]]  # fmt: skip
        elif old != value:
            out.append(key)
    return out


def _pipeline_of(r: Request) -> str:
    """The pipeline a request is about: children carry its name (Deployment, PDB) or a
    suffixed one; Events name it in involvedObject."""
    if r.resource == "events":
        return str(((r.body or {}).get("involvedObject") or {}).get("name") or "")
    for suffix in ("-config", "-checkpoints", "-metrics"):
        if r.name.endswith(suffix):
            return r.name[: -len(suffix)]
    return r.name


def decision_writes(reqs: list[Request], t0: float, t1: float) -> dict[str, Any]:
    """Split the writes in [t0, t1] into those of pipelines whose autoscaler made a scaling
    decision in the window (a status patch with lastScaleReason: a real change, e.g. example
    03 scaling to zero after its idleTimeout of 10 minutes without input) and the rest (the
    goal: none)."""
    window = [r for r in reqs if t0 <= r.t <= t1 and r.verb in WRITE_VERBS]
    decided: Counter[str] = Counter()
    names: set[str] = set()
    for r in window:
        status = ((r.body or {}).get("status") or {}) if isinstance(r.body, dict) else {}
        if r.subresource == "status" and "lastScaleReason" in status:
            decided[str(status["lastScaleReason"]).split(":")[0]] += 1
            names.add(r.name)
    of_decisions = [r for r in window if _pipeline_of(r) in names]
    others = [r for r in window if _pipeline_of(r) not in names]
    return {
        "decisions": dict(decided),
        "decision_writes": len(of_decisions),
        "other_writes": len(others),
        "other_by_kind": dict(
            Counter(
                f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                for r in others
            )
        ),
    }


def status_changes(reqs: list[Request], t0: float, t1: float) -> dict[str, Any]:
    """What the status patches in [t0, t1] changed, replaying every earlier patch of the
    same pipeline (merge-patch semantics) to know what each one found."""
    known: dict[str, dict[str, Any]] = {}
    fields: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for r in sorted(reqs, key=lambda r: r.t):
        if r.resource != "streampipelines" or r.subresource != "status" or r.verb != "patch":
            continue
        patch = ((r.body or {}).get("status") or {}) if isinstance(r.body, dict) else {}
        before = known.setdefault(r.name, {})
        if t0 <= r.t <= t1:
            changed = _changed_fields(before, patch)
            fields.update(changed or ["(nothing)"])
            if len(examples) < 20:
                examples.append(
                    {
                        "name": r.name,
                        "t": r.t - t0,
                        "changed": changed,
                        "patch": {k: patch[k] for k in {c.split("[")[0] for c in changed}},
                    }
                )
        before.update(patch)
    return {"fields": dict(fields), "examples": examples}


def per_second(reqs: list[Request], t0: float, t1: float) -> list[int]:
    bins = [0] * max(1, math.ceil(t1 - t0))
    for r in reqs:
        if t0 <= r.t < t1:
            bins[int(r.t - t0)] += 1
    return bins


# --------------------------------------------------------------------------- the machine

# Command names (/proc/<pid>/comm, 15 characters at most) of the control plane's binaries.
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller", "kube-scheduler", "kwok")


def cpu_snapshot() -> dict[int, tuple[str, str, float]]:
    """pid -> (command name, command line, CPU seconds) of every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (comm, cmd, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_component(
    before: dict[int, tuple[str, str, float]],
    after: dict[int, tuple[str, str, float]],
    operator_pid: int,
) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per part of the bench: each control-plane
    binary, the broker, the operator, this bench, and everything else on the machine."""
    out: dict[str, float] = {}
    for pid, (comm, cmd, cpu) in after.items():
        was = before.get(pid)
        spent = cpu - (was[2] if was is not None and was[0] == comm else 0.0)
        if spent <= 0:
            continue
        if pid == operator_pid:
            part = "operator"
        elif pid == os.getpid():
            part = "bench"
        elif comm in COMPONENTS:
            part = comm
        elif comm == "java" and "kafka" in cmd:
            part = "kafka"
        else:
            part = "other"
        out[part] = out.get(part, 0.0) + spent
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def apiserver_requests(cluster: KubeCluster) -> Counter[str]:
    """The API server's request counters of all clients, by verb and resource (its
    /metrics: apiserver_request_total, which has no user label)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = dict(
            part.split("=", 1) for part in labels_text[len("apiserver_request_total{") : -1]
            .replace('"', "").split(",") if "=" in part
        )  # fmt: skip
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
        out[f"{labels.get('verb')} {labels.get('resource')}{sub}"] += int(float(value))
    return out


def apiserver_profile(cluster: KubeCluster, path: Path, seconds: int) -> None:
    """A CPU profile of the API server (pprof format) over `seconds`, written to `path`."""
    done = subprocess.run(
        [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "get", "--raw",
         f"/debug/pprof/profile?seconds={seconds}"],
        capture_output=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    path.write_bytes(done.stdout)


def pprof_top(path: Path, top: int = 30) -> list[str]:
    """`go tool pprof -top` of a profile (cumulative), if Go is installed."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    done = subprocess.run(
        ["go", "tool", "pprof", "-top", "-cum", f"-nodecount={top}", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.stdout.splitlines()


# --------------------------------------------------------------------------- one size


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def broker_totals(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"calls": 0, "groups": 0, "requests": {}}
    data = json.loads(path.read_text())
    calls = groups = 0
    requests: Counter[str] = Counter()
    for c in data["clusters"].values():
        calls += c["calls"]
        groups += c["groups"]
        requests.update(c["requests"])
    return {"calls": calls, "groups": groups, "requests": dict(requests)}


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
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
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


@dataclass
class Convergence:
    """One burst of creates until every pipeline is Ready, with the machine's CPU and the
    API server's request counters read at its start and end."""

    t0: float
    t_created: float
    t_ready: float
    all_ready: bool
    cpu_before: dict[int, tuple[str, str, float]]
    cpu_after: dict[int, tuple[str, str, float]]
    api: Counter[str]


def converge(
    cluster: KubeCluster,
    watcher: Watcher,
    create: Any,
    docs: list[dict[str, Any]],
    args: argparse.Namespace,
) -> Convergence:
    """Create `docs` with --create-clients clients (a user's `kubectl apply -f dir/` is
    sequential: the report gives the time from the first and from the last create) and wait
    until the watcher has seen every pipeline Ready."""
    n = len(docs)
    api_before = apiserver_requests(cluster)
    cpu_before = cpu_snapshot()
    t0 = time.time()
    with ThreadPoolExecutor(args.create_clients) as pool:
        list(pool.map(create, docs))
    t_created = time.time()
    print(f"  created in {t_created - t0:.1f}s; waiting for Ready", flush=True)
    all_ready = wait(f"{n} pipelines Ready", lambda: len(watcher.ready_at) >= n, args.ready_timeout)
    t_ready = max(watcher.ready_at.values()) if all_ready else time.time()
    cpu_after = cpu_snapshot()
    api = apiserver_requests(cluster) - api_before
    print(
        f"  Ready: {len(watcher.ready_at)}/{n} after {t_ready - t0:.1f}s "
        f"(load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return Convergence(t0, t_created, t_ready, all_ready, cpu_before, cpu_after, api)


def run_floor(n: int, kafka: KafkaProcess, args: argparse.Namespace) -> dict[str, Any]:
    """N pipelines with no operator: the bench creates their children (see Floor)."""
    base = Path(args.workdir) / f"floor{n}"
    if base.exists():
        subprocess.run(["rm", "-rf", str(base)], check=False)
    print(f"== floor, N={n}: starting the control plane", flush=True)
    cp, _ = control_plane(base / "cluster")
    watcher: Watcher | None = None
    try:
        cluster = cp.cluster
        prepare(cluster, n)
        docs = pipelines(n, kafka.broker.bootstrap)
        api = cluster.api_client()
        api.configuration.connection_pool_maxsize = 16
        floor = Floor(api, args.create_clients)
        watcher = Watcher(api, on_deployment=floor.on_deployment)
        watcher.start()
        time.sleep(1.0)
        print(f"  creating {n} pipelines and their children", flush=True)

        def create(doc: dict[str, Any]) -> None:
            path = f"/apis/streamherd.io/v1alpha1/namespaces/{NAMESPACE}/streampipelines"
            floor.children(call(api, "POST", path, doc))

        c = converge(cluster, watcher, create, docs, args)
        t0, t_created, t_ready, all_ready = c.t0, c.t_created, c.t_ready, c.all_ready
        return {
            "n": n,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "created_s": t_created - t0,
            "create_clients": args.create_clients,
            "all_ready": all_ready,
            "ready_count": len(watcher.ready_at),
            "ready_s": t_ready - t0,
            "ready_curve": sorted(t - t0 for t in watcher.ready_at.values()),
            "load": os.getloadavg()[0],
            "cpu_by_component": cpu_by_component(c.cpu_before, c.cpu_after, -1),
            "apiserver_requests": dict(c.api.most_common()),
        }
    finally:
        if watcher is not None:
            watcher.stop.set()
        cp.keep_dir = args.keep
        cp.stop()


def run_size(n: int, kafka: KafkaProcess, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.workdir) / f"n{n}"
    if base.exists():
        subprocess.run(["rm", "-rf", str(base)], check=False)
    print(f"== N={n}: starting the control plane", flush=True)
    cp, audit = control_plane(base / "cluster", profiling=args.profile)
    operator: Operator | None = None
    watcher: Watcher | None = None
    try:
        cluster = cp.cluster
        op_kubeconfig = operator_kubeconfig(cluster, base / "cluster")
        prepare(cluster, n)
        docs = pipelines(n, kafka.broker.bootstrap)
        api = cluster.api_client()
        api.configuration.connection_pool_maxsize = 16
        custom = client.CustomObjectsApi(api)

        operator = Operator(op_kubeconfig, base, base / "broker-stats.json", args.operator_arg)
        operator.start()
        time.sleep(args.operator_warmup)
        watcher = Watcher(api)
        watcher.start()
        time.sleep(1.0)

        print(f"  creating {n} pipelines", flush=True)
        created: dict[str, float] = {}

        def create(doc: dict[str, Any]) -> None:
            custom.create_namespaced_custom_object(
                "streamherd.io", "v1alpha1", NAMESPACE, "streampipelines", doc
            )
            created[doc["metadata"]["name"]] = time.time()

        profiler = None
        if args.profile:
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                    "--format", "raw", "--gil", "-r", "50", "-o", str(base / "profile.txt"),
                    "-p", str(operator.pid),
                ],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        profile_thread = None
        if args.profile:
            profile_thread = threading.Thread(
                target=apiserver_profile, args=(cluster, base / "apiserver.pprof", 60),
                daemon=True,
            )  # fmt: skip
            profile_thread.start()
        operator_pid = operator.pid
        c = converge(cluster, watcher, create, docs, args)
        t0, t_created, t_ready, all_ready = c.t0, c.t_created, c.t_ready, c.all_ready
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        latencies = [watcher.deployment_seen[k] - created[k]
                     for k in created if k in watcher.deployment_seen]  # fmt: skip

        # Let the autoscaler make its first decisions (one poll interval and a bit).
        time.sleep(args.settle)
        t_idle0 = time.time()
        broker0 = broker_totals(operator.broker_stats)
        print(f"  idle window {args.idle:.0f}s", flush=True)
        time.sleep(args.idle)
        t_idle1 = time.time()
        broker1 = broker_totals(operator.broker_stats)
        conv_samples = operator.window(t0, t_ready)
        idle_samples = operator.window(t_idle0, t_idle1)

        print("  restarting the operator", flush=True)
        operator.stop()
        operator.start()
        t_restart = operator.started_at

        log = base / f"operator-{operator.runs - 1}.log"

        def resumed() -> list[float]:
            # kopf logs one line per pipeline when its handler (our reconcile) is done: a
            # "creation" since its last-handled state lives in memory (operator/kopfstate.py),
            # a "resuming" before; with the watch cache an unchanged pipeline makes no
            # request to see in the audit log.
            lines = log.read_text(errors="replace").splitlines()
            return [_log_time(line) for line in lines
                    if any(done in line for done in HANDLED)]  # fmt: skip

        resync_ok = wait(
            "the restart resync", lambda: len(resumed()) >= n, args.ready_timeout, interval=1.0
        )
        times = sorted(resumed())
        t_resynced = times[n - 1] if len(times) >= n else time.time()
        time.sleep(args.after_resync)
        t_after = time.time()
        reqs = read_audit(audit)
        restart_samples = operator.window(t_restart, t_after)
        operator.stop()

        convergence = [r for r in reqs if t0 <= r.t <= t_ready]
        idle = [r for r in reqs if t_idle0 <= r.t <= t_idle1]
        resync = [r for r in reqs if t_restart <= r.t <= t_after]
        idle_minutes = (t_idle1 - t_idle0) / 60
        idle_counts = classify(idle)
        broker_requests = {
            k: broker1["requests"].get(k, 0) - broker0["requests"].get(k, 0)
            for k in set(broker1["requests"]) | set(broker0["requests"])
        }
        builtin = sum(1 for d in docs if (d["spec"].get("autoscaling") or {}).get("mode",
                                                                               "builtin") ==
                      "builtin" and "kafka" in d["spec"]["source"])  # fmt: skip
        idle_s = t_idle1 - t_idle0
        result: dict[str, Any] = {
            "n": n,
            "variant": " ".join(args.operator_arg),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "created_s": t_created - t0,
            "create_clients": args.create_clients,
            "all_ready": all_ready,
            "ready_count": len(watcher.ready_at),
            "ready_s": t_ready - t0,
            "ready_curve": sorted(t - t0 for t in watcher.ready_at.values()),
            "deploy_latency_p50_s": percentile(latencies, 0.5),
            "deploy_latency_p99_s": percentile(latencies, 0.99),
            "convergence": classify(convergence),
            "convergence_rps": len(convergence) / max(t_ready - t0, 1e-9),
            "convergence_series": per_second(reqs, t0, t_ready + 5),
            "rss_peak_mb": max((s.rss_mb for s in conv_samples), default=0.0),
            "rss_idle_mb": statistics.median([s.rss_mb for s in idle_samples] or [0.0]),
            "cpu_convergence_s": (conv_samples[-1].cpu_s - conv_samples[0].cpu_s)
            if len(conv_samples) > 1
            else 0.0,
            "cpu_idle_pct": 100 * (idle_samples[-1].cpu_s - idle_samples[0].cpu_s) / idle_s
            if len(idle_samples) > 1
            else 0.0,
            "rss_series": [(s.t - t0, s.rss_mb) for s in operator.samples if s.t >= t0],
            "load_convergence": statistics.mean([s.load1 for s in conv_samples] or [0.0]),
            "load_idle": statistics.mean([s.load1 for s in idle_samples] or [0.0]),
            "idle_s": idle_s,
            "idle": idle_counts,
            "idle_reads_per_pipeline_min": idle_counts.get("reads", 0) / n / idle_minutes,
            "idle_writes_per_pipeline_min": idle_counts.get("writes", 0) / n / idle_minutes,
            "idle_by_kind": dict(
                Counter(
                    f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                    for r in idle
                    if r.verb != "watch"
                )
            ),
            "idle_status_changes": status_changes(reqs, t_idle0, t_idle1),
            "idle_attribution": decision_writes(reqs, t_idle0, t_idle1),
            "restart_resync_ok": resync_ok,
            "restart_resync_s": t_resynced - t_restart,
            "restart": classify(resync),
            "restart_by_kind": dict(
                Counter(
                    f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                    for r in resync
                    if r.verb in WRITE_VERBS
                )
            ),
            "restart_rss_peak_mb": max((s.rss_mb for s in restart_samples), default=0.0),
            "builtin_pipelines": builtin,
            "broker_calls": broker1["calls"] - broker0["calls"],
            "broker_groups": broker1["groups"] - broker0["groups"],
            "broker_requests": broker_requests,
            "broker_rps": sum(broker_requests.values()) / idle_s,
            "broker_per_group_per_interval": sum(broker_requests.values())
            / max(1, builtin)
            / (idle_s / POLL_INTERVAL),
        }
        result["cpu_by_component"] = cpu_by_component(c.cpu_before, c.cpu_after, operator_pid)
        result["apiserver_requests"] = dict(c.api.most_common())
        if args.profile and (base / "profile.txt").exists():
            result["profile_top"] = profile_summary(base / "profile.txt")
        if profile_thread is not None:
            profile_thread.join(timeout=120)
            result["apiserver_profile_top"] = pprof_top(base / "apiserver.pprof")
        return result
    finally:
        if watcher is not None:
            watcher.stop.set()
        if operator is not None:
            operator.stop()
        cp.keep_dir = args.keep
        cp.stop()


def profile_summary(path: Path, top: int = 25) -> list[tuple[str, float]]:
    """Share of samples per function (inclusive) from py-spy's collapsed stacks."""
    total = 0
    inclusive: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # py-spy's own messages
        k = int(count)
        total += k
        frames = {f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";") if f}  # fmt: skip
        for f in frames:
            inclusive[f] += k
    return [(f, c / total) for f, c in inclusive.most_common(top)] if total else []


# --------------------------------------------------------------------------- report


def _attribution(r: dict[str, Any]) -> str:
    att = r.get("idle_attribution")
    if att is None:
        return ""
    return (
        f" — scaling decisions {fmt_kind(att['decisions'])} ({att['decision_writes']} writes),"
        f" other writes {fmt_kind(att['other_by_kind'])}"
    )


def fmt_kind(counts: dict[str, int]) -> str:
    return (
        ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"
    )


HEADER = (
    "| N | all Ready: s after first / last create | creates took (s) "
    "| apply->Deployment p50 / p99 (s) "
    "| RSS peak / idle (MB) | CPU converge / idle | API req/s converging "
    "| idle min. | idle reads / writes per pipeline per min (writes of scaling decisions) "
    "| restart resync (s) "
    "| child writes in resync | load converge / idle |"
)


def _idle_writes(r: dict[str, Any]) -> str:
    """Idle writes per pipeline per minute that no scaling decision explains (the goal: 0),
    and the writes of the decisions (a real change) apart."""
    att = r.get("idle_attribution")
    if att is None:  # results from before the attribution
        return f"{r['idle_writes_per_pipeline_min']:.3f}"
    other = att["other_writes"] / r["n"] / (r["idle_s"] / 60)
    decisions = sum(att["decisions"].values())
    return f"{other:.3f} ({att['decision_writes']} for {decisions} decisions)"


def _cpu(parts: dict[str, float]) -> str:
    total = sum(parts.values())
    shown = ", ".join(f"{k} {v:.0f}" for k, v in parts.items() if v >= 1)
    return f"{total:.0f} ({shown})"


FLOOR_HEADER = (
    "| N | creates took (s) | all Ready: s after first / last create | operator run / floor "
    "| CPU-s, floor (by part) | CPU-s, operator run (by part) | API requests, floor "
    "| API requests, operator run | load (when) |\n"
    "| ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |"
)


def floor_report(floors: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """The floor runs (no operator) next to the operator's runs of the same N."""
    if not floors:
        return ""
    by_n = {r["n"]: r for r in results if not r.get("variant")}
    rows = []
    for f in floors:
        op = by_n.get(f["n"])
        ratio = f"{op['ready_s'] / f['ready_s']:.2f}" if op and op["all_ready"] else "—"
        op_cpu = _cpu(op["cpu_by_component"]) if op and "cpu_by_component" in op else "—"
        op_api = sum(op["apiserver_requests"].values()) if op and "apiserver_requests" in op else 0
        ready = f"{f['ready_s']:.0f} / {f['ready_s'] - f['created_s']:.0f}"
        rows.append(
            f"| {f['n']} | {f['created_s']:.0f} | {ready} | {ratio}"
            f" | {_cpu(f['cpu_by_component'])}"
            f" | {op_cpu} | {sum(f['apiserver_requests'].values())} | {op_api or '—'}"
            f" | {f['load']:.1f} ({f['when']}) |"
        )
    return f"""
### The floor: the same N with no operator

`bench_scale.py --floor`: the same control plane and pipelines, no operator; the bench
POSTs each pipeline's children itself (streamherd's builders) right after the pipeline and
writes the one Ready status when its Deployment is available: an operator that costs
nothing and writes the least. All Ready in this run is what the machine and the control
plane need anyway; the operator's run divided by it is the operator's overhead. CPU seconds
are per process, from /proc, from the first create until all are Ready; requests are the
API server's own counters (all clients).

{FLOOR_HEADER}
{chr(10).join(rows)}
"""


def report(results: list[dict[str, Any]], floors: list[dict[str, Any]] | None = None) -> str:
    bins = sorted((Path.home() / ".cache/streamherd/bin").glob("k8s-*"))
    kube = "?"
    if bins:
        version = subprocess.run(
            [str(bins[-1] / "kube-apiserver"), "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        kube = version.stdout.split()[-1] if version.stdout else "?"
    rows = []
    for r in results:
        ready = (
            f"{r['ready_s']:.0f} / {r['ready_s'] - r['created_s']:.0f}"
            if r["all_ready"]
            else f"not all: {r['ready_count']}"
        )
        rows.append(
            f"| {r['n']}{' (' + r['variant'] + ')' if r.get('variant') else ''} | {ready}"
            f" | {r['created_s']:.1f} | {r['deploy_latency_p50_s']:.2f} / "
            f"{r['deploy_latency_p99_s']:.2f} | {r['rss_peak_mb']:.0f} / {r['rss_idle_mb']:.0f}"
            f" | {r['cpu_convergence_s']:.0f} s / {r['cpu_idle_pct']:.1f} %"
            f" | {r['convergence_rps']:.0f} | {r['idle_s'] / 60:.0f}"
            f" | {r['idle_reads_per_pipeline_min']:.2f} / {_idle_writes(r)}"
            f" | {r['restart_resync_s']:.1f} | "
            f"{r['restart'].get('child_writes', 0)} | {r['load_convergence']:.1f} / "
            f"{r['load_idle']:.1f} |"
        )
    details = []
    for r in results:
        details.append(
            f"- **N={r['n']}{' ' + r['variant'] if r.get('variant') else ''}** ({r['when']}):"
            f" convergence requests {fmt_kind(r['convergence'])};"
            f" idle {r['idle_s'] / 60:.1f} min: {fmt_kind(r['idle_by_kind'])}"
            f"{_attribution(r)};"
            f" restart resync writes: {fmt_kind(r['restart_by_kind'])};"
            f" broker, {r['builtin_pipelines']} builtin pipelines: "
            f"{r['broker_rps']:.1f} requests/s ({fmt_kind(r['broker_requests'])}), "
            f"{r['broker_per_group_per_interval']:.2f} per group per {POLL_INTERVAL:.0f} s poll,"
            f" {r['broker_calls']} measure_many calls for {r['broker_groups']} group polls."
        )
    return f"""## Operator at scale

`bench/scale/bench_scale.py`: one operator process and N StreamPipelines (examples 01, 02,
03 round robin) on the real control plane (kube-apiserver {kube}, kwok fake nodes) and one
real Kafka broker. Machine: {os.cpu_count()} cores, {platform.machine()}; Python
{platform.python_version()}, kopf {package_version("kopf")}, streamherd {__version__}.
One run per N, not a median: each N takes minutes of a shared machine, and the load average
(1 min) is recorded with each measurement since other engineers' tests share the 2 cores.
Goals met and missed, method and analysis: [scale.md](scale.md).

{HEADER}
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

{chr(10).join(details)}
{floor_report(floors or [], results)}
![pipelines Ready over time](scale-ready.png)

![operator API requests per second while converging](scale-requests.png)
"""


def plots(results: list[dict[str, Any]]) -> None:
    matplotlib.use("Agg")
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        curve = r["ready_curve"]
        label = f"N={r['n']} {r.get('variant', '')}".strip()
        ax.plot(curve, range(1, len(curve) + 1), label=label)
    ax.set_xlabel("seconds since the first create")
    ax.set_ylabel("pipelines Ready")
    ax.axvline(60, color="grey", linestyle=":", label="goal: 60 s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "scale-ready.png", dpi=100)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for r in results:
        series = r["convergence_series"]
        label = f"N={r['n']} {r.get('variant', '')}".strip()
        ax1.plot(range(len(series)), series, label=label)
        rss = r["rss_series"]
        ax2.plot([t for t, _ in rss], [m for _, m in rss], label=label)
    ax1.set_ylabel("operator API requests/s")
    ax2.set_ylabel("operator RSS (MB)")
    ax2.set_xlabel("seconds since the first create (RSS: through idle and restart)")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "scale-requests.png", dpi=100)
    plt.close(fig)


def write_docs() -> None:
    # Only this bench's files (N.json, N-variant.json): bench_lagprobe.py writes here too.
    results = sorted(
        (json.loads(p.read_text()) for p in RESULTS.glob("[0-9]*.json")),
        key=lambda r: (r["n"], r.get("variant", "")),
    )
    if not results:
        print("no results to report", file=sys.stderr)
        return
    floors = sorted(
        (json.loads(p.read_text()) for p in RESULTS.glob("floor-*.json")), key=lambda r: r["n"]
    )
    plots(results)
    path = DOCS / "benchmarks.md"
    text = path.read_text()
    section = f"{BEGIN}\n{report(results, floors)}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(f"wrote {path} and docs/scale-*.png", flush=True)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument(
        "--idle", type=float, default=600.0, help="idle window, seconds (goal: 10 minutes)"
    )
    parser.add_argument("--settle", type=float, default=25.0, help="pause before idle")
    parser.add_argument(
        "--create-clients", type=int, default=4, help="concurrent clients creating pipelines"
    )
    parser.add_argument("--after-resync", type=float, default=10.0)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--operator-warmup", type=float, default=5.0)
    parser.add_argument("--profile", action="store_true", help="py-spy while converging")
    parser.add_argument("--keep", action="store_true", help="keep the control plane dirs")
    parser.add_argument("--workdir", default="/tmp/streamherd-scale")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="no operator: the bench creates the children itself (the cluster's own share)",
    )
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="an experiment: results in --workdir, benchmarks.md and the plots left alone",
    )
    parser.add_argument(
        "--operator-arg", action="append", default=[], help="extra `streamherd operator` flag"
    )
    args = parser.parse_args()
    if args.report_only:
        write_docs()
        return 0
    RESULTS.mkdir(exist_ok=True)
    kafka = start_with_retries()
    try:
        for topic in ("clicks", "orders"):
            kafka.broker.create_topic(topic, partitions=3)
        for n in (int(s) for s in args.sizes.split(",")):
            out_dir = Path(args.workdir) if args.scratch else RESULTS
            if args.floor:
                result = run_floor(n, kafka, args)
                (out_dir / f"floor-{n}.json").write_text(json.dumps(result, indent=1))
                print(json.dumps({k: v for k, v in result.items() if k != "ready_curve"},
                                 indent=1), flush=True)  # fmt: skip
                continue
            result = run_size(n, kafka, args)
            tag = "-".join(a.lstrip("-").replace("=", "") for a in args.operator_arg)
            (out_dir / f"{n}{'-' + tag if tag else ''}.json").write_text(
                json.dumps(result, indent=1)
            )
            print(json.dumps({k: v for k, v in result.items() if not k.endswith(("curve",
                  "series"))}, indent=1), flush=True)  # fmt: skip
    finally:
        kafka.stop()
    if not args.scratch:
        write_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
