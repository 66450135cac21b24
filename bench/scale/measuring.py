"""bench/scale's measurement of one size N: converge, idle, restart (or the floor).

Starts the control plane and the operator (bench/scale/cluster.py), creates N pipelines and
measures convergence, the idle window and a restart: the operator's requests from the audit
log (bench/scale/auditing.py), CPU per control-plane component from /proc, the API
server's own request counters and profile, and the lag probe's broker requests. Returns
one results dictionary, which bench/scale/bench_scale.py writes to results/N.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from operator import contains
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.scale.auditing import (
    WRITE_VERBS,
    classify,
    decision_writes,
    per_second,
    read_audit,
    status_changes,
)
from bench.scale.cluster import (
    NAMESPACE,
    POLL_INTERVAL,
    Floor,
    Operator,
    Watcher,
    call,
    control_plane,
    operator_kubeconfig,
    pipelines,
    prepare,
    wait,
)
from tests.infra.controlplane import (
    KubeCluster,
)
from tests.infra.kafka import KafkaProcess

HANDLED = ("Creation is processed", "Resuming is processed")  # kopf's log, one per pipeline

#: Pipelines applied one at a time once N are Ready (two of each example): the time a user
#: waits for one more pipeline on a cluster that already runs N (issue 17: within 2 s of
#: the floor's time for it).
PROBES = 6


def _log_time(line: str) -> float:
    """The local timestamp that starts an operator log line, as epoch seconds."""
    stamp, _, millis = line[:23].partition(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis or 0) / 1000


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
    ready_curve: list[float]  # seconds from t0 until each pipeline was Ready

    @property
    def ready_count(self) -> int:
        return len(self.ready_curve)


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
    curve = sorted(t - t0 for t in watcher.ready_at.values())
    return Convergence(t0, t_created, t_ready, all_ready, cpu_before, cpu_after, api, curve)


def apply_one_by_one(
    watcher: Watcher, create: Any, docs: list[dict[str, Any]], timeout: float
) -> list[float]:
    """Create `docs` one after the other, each when the one before is Ready: seconds from
    the start of each create until the watcher saw that pipeline Ready (inf: not within
    `timeout`). The floor's `create` also POSTs the children, inside the timed span, as an
    operator's reconcile would."""
    out = []
    for doc in docs:
        name = doc["metadata"]["name"]
        t0 = time.time()
        create(doc)
        ready = wait(f"{name} Ready", partial(contains, watcher.ready_at, name),
                     timeout, interval=0.05)  # fmt: skip
        out.append(watcher.ready_at[name] - t0 if ready else math.inf)
        time.sleep(2.0)  # the next one does not overlap this one's tail (its status writes)
    print(
        "  one more pipeline, Ready after (s): " + ", ".join(f"{s:.2f}" for s in out),
        flush=True,
    )
    return out


def probe_docs(n: int, kafka: KafkaProcess) -> list[dict[str, Any]]:
    """The pipelines applied one at a time once N are Ready (the next names after N)."""
    return pipelines(n + PROBES, kafka.broker.bootstrap)[n:]


def floor_result(
    n: int,
    c: Convergence,
    one_more: list[float],
    args: argparse.Namespace,
    *,
    operator_pid: int,
) -> dict[str, Any]:
    """The results of a floor or kopf-floor run (operator_pid -1: no operator process)."""
    return {
        "n": n,
        "one_more_ready_s": one_more,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "created_s": c.t_created - c.t0,
        "create_clients": args.create_clients,
        "all_ready": c.all_ready,
        "ready_count": c.ready_count,
        "ready_s": c.t_ready - c.t0,
        "ready_curve": c.ready_curve,
        "load": os.getloadavg()[0],
        "cpu_by_component": cpu_by_component(c.cpu_before, c.cpu_after, operator_pid),
        "apiserver_requests": dict(c.api.most_common()),
    }


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
        time.sleep(args.settle)
        one_more = apply_one_by_one(watcher, create, probe_docs(n, kafka), 60.0)
        topics_not_ready = floor.topics_not_ready()
        if topics_not_ready:
            print(f"  ! internal topics not ready: {topics_not_ready[:3]}", flush=True)
        return {
            **floor_result(n, c, one_more, args, operator_pid=-1),
            "topics_not_ready": len(topics_not_ready),
        }
    finally:
        if watcher is not None:
            watcher.stop.set()
        cp.keep_dir = args.keep
        cp.stop()


def run_kopf_floor(n: int, kafka: KafkaProcess, args: argparse.Namespace) -> dict[str, Any]:
    """N pipelines with the floor's writes made by the cheapest kopf operator
    (bench/scale/kopf_floor.py): what the framework costs before any work of our own."""
    base = Path(args.workdir) / f"kopf-floor{n}"
    if base.exists():
        subprocess.run(["rm", "-rf", str(base)], check=False)
    print(f"== kopf floor, N={n}: starting the control plane", flush=True)
    cp, _ = control_plane(base / "cluster")
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
        operator = Operator(op_kubeconfig, base, base / "unused.json", [],
                            module="bench.scale.kopf_floor")  # fmt: skip
        operator.start()
        time.sleep(args.operator_warmup)
        watcher = Watcher(api)
        watcher.start()
        time.sleep(1.0)
        print(f"  creating {n} pipelines", flush=True)

        def create(doc: dict[str, Any]) -> None:
            custom.create_namespaced_custom_object(
                "streamherd.io", "v1alpha1", NAMESPACE, "streampipelines", doc
            )

        c = converge(cluster, watcher, create, docs, args)
        time.sleep(args.settle)
        one_more = apply_one_by_one(watcher, create, probe_docs(n, kafka), 60.0)
        return floor_result(n, c, one_more, args, operator_pid=operator.pid)
    finally:
        if watcher is not None:
            watcher.stop.set()
        if operator is not None:
            operator.stop()
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

        # Let the autoscaler make its first decisions (one poll interval and a bit), apply a
        # few more pipelines one at a time, and let theirs settle too.
        time.sleep(args.settle)
        probes = probe_docs(n, kafka)
        one_more = apply_one_by_one(watcher, create, probes, 60.0)
        docs = docs + probes
        total = len(docs)
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
            "the restart resync", lambda: len(resumed()) >= total, args.ready_timeout, interval=1.0
        )
        times = sorted(resumed())
        t_resynced = times[total - 1] if len(times) >= total else time.time()
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
            "one_more_ready_s": one_more,
            "variant": " ".join(args.operator_arg),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "created_s": t_created - t0,
            "create_clients": args.create_clients,
            "all_ready": all_ready,
            "ready_count": c.ready_count,
            "ready_s": t_ready - t0,
            "ready_curve": c.ready_curve,
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
            "idle_pipelines": total,
            "idle_reads_per_pipeline_min": idle_counts.get("reads", 0) / total / idle_minutes,
            "idle_writes_per_pipeline_min": idle_counts.get("writes", 0) / total / idle_minutes,
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
