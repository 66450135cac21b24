"""`make demo`: lag-driven autoscaling, live, on this machine.

Starts a local Kubernetes control plane and an Apache Kafka broker (tests/infra, in
throwaway directories), runs the operator, applies examples/02-clicks-per-minute.yaml
(pointed at the local broker, with demo-sized poll and stabilization windows), produces a
burst of clicks, and prints the lag and the replica count every second until the pipeline
settles back at its minimum. Then it saves a timeline plot (and the run's parameters beside
it) and cleans everything up, also on Ctrl-C.

Where the workers run (--node):
- real: a real node joins the control plane (containerd, kubelet, kube-proxy:
  tests/infra/node.py, root and Linux), the image is built (`make image`) and imported, the
  chart is installed with it, and the operator and every worker run as containers under
  restricted Pod Security, the broker listening on the node's bridge address;
- kwok: the control plane's kwok nodes run no containers, so the workers run as local
  processes started from the pods' specs (tests/e2e/harness.py's pod mirror) and the
  operator as a local process;
- auto (the default): real when this machine can run the node (tests/infra/node.py's
  preflight), else kwok; a real node that fails to start falls back to kwok. The first line
  of output says which one ran, and so does the parameters file.

    .venv/bin/python bench/demo.py [--node auto|real|kwok] [--records 400000]
                                   [--plot docs/autoscaling-demo.png]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.harness import (  # noqa: E402
    Namespace,
    Operator,
    PodMirror,
    install_crd,
    wait_until,
)
from tests.infra.controlplane import KubeCluster, start_control_plane  # noqa: E402
from tests.infra.image import build_image  # noqa: E402
from tests.infra.kafka import KafkaBroker, start_kafka  # noqa: E402
from tests.infra.node import Node, preflight, start_node  # noqa: E402
from tests.infra.processes import InfraError  # noqa: E402

EXAMPLE = ROOT / "examples" / "02-clicks-per-minute.yaml"
PAGES = [f"/page/{i}" for i in range(50)]
PIPELINE = "clicks-per-minute"
PARTITIONS = 8
RELEASE_NS = "streamherd-system"
# Small enough that eight workers and the operator fit the requests of a 2-core node.
REAL_RESOURCES = {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "512Mi"}}


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def clicks(n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        page = rng.choice(PAGES)
        event = {
            "ts": now + i // 100,
            "page": page,
            "status": rng.choice((200, 200, 200, 404, 503)),
            "bytes": rng.randint(200, 20_000),
            "latency_ms": rng.randint(1, 900),
        }
        out.append((page, json.dumps(event).encode()))
    return out


def demo_pipeline(bootstrap: str, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    spec = doc["spec"]
    spec["source"]["kafka"]["bootstrapServers"] = bootstrap
    # Demo-sized windows: a poll every 2 s, back down 30 s after the backlog is gone.
    spec["autoscaling"].update(
        {"pollInterval": "2s", "scaleDownStabilization": "30s", "lagPerReplica": 20_000}
    )
    spec["checkpoint"]["interval"] = "2s"
    spec["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
    return doc


def bar(value: int, scale: float, width: int = 40) -> str:
    return "#" * min(width, round(value / scale)) if scale else ""


@dataclass(frozen=True)
class Point:
    t: float  # time.time()
    replicas: int | None  # the Deployment's spec.replicas
    desired: int | None  # status.desiredReplicas
    lag: int | None  # status.lag
    workers: int  # workers running: Ready worker pods (real) or local processes (kwok)


@dataclass
class Sampler:
    """Samples the Deployment's replicas, the pipeline's status and the running workers
    every second, in a thread."""

    ns: Namespace
    workers: Callable[[], int]
    points: list[Point] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._loop, name="sampler", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.ns.status(PIPELINE)
                self.points.append(
                    Point(
                        time.time(),
                        self.ns.deployment_replicas(PIPELINE),
                        status.get("desiredReplicas"),
                        status.get("lag"),
                        self.workers(),
                    )
                )
            except Exception:  # a slow API server: the next sample will do
                pass
            self._stop.wait(1.0)


@dataclass
class Setup:
    """What a mode started: the cluster, the broker, the demo namespace, how to count
    running workers, and a description for the output and the parameters file."""

    mode: str
    cluster: KubeCluster
    broker: KafkaBroker
    ns: Namespace
    workers: Callable[[], int]
    facts: dict[str, Any]
    errors: Callable[[], list[str]] = lambda: []


def _topics(broker: KafkaBroker) -> None:
    for topic, parts in ((PIPELINE, PARTITIONS), ("clicks", PARTITIONS), ("clicks-dlq", 1)):
        broker.create_topic(topic, partitions=parts)


def start_kwok(work: Path, cleanup: list[Callable[[], object]]) -> Setup:
    """The control plane with kwok nodes; the operator and the workers as local processes."""
    say("starting the Kubernetes control plane (etcd, apiserver, kwok nodes)")
    cp = start_control_plane(work / "kube")
    cleanup.append(cp.stop)
    say("starting Apache Kafka (KRaft, one broker)")
    kp = start_kafka(work / "kafka")
    cleanup.append(kp.stop)
    cluster, broker = cp.cluster, kp.broker
    say("installing the StreamPipeline CRD")
    install_crd(cluster)
    ns = Namespace(cluster, "demo")
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    _topics(broker)
    say("running the operator (log: operator.log in the demo directory)")
    operator = Operator(cluster, "demo", work / "operator.log")
    cleanup.append(operator.stop)
    say(f"applying {EXAMPLE.relative_to(ROOT)} (bootstrap {broker.bootstrap})")
    ns.apply(demo_pipeline(broker.bootstrap, "demo"))
    ns.bind_checkpoint_volume(PIPELINE)
    mirror = PodMirror(ns, PIPELINE, work / "pods").__enter__()
    cleanup.append(lambda: mirror.__exit__(None))
    facts = {"workers": "local processes mirroring kwok pods (tests/e2e/harness.py)"}
    return Setup("kwok", cluster, broker, ns, lambda: len(mirror.workers), facts,
                 lambda: mirror.errors)  # fmt: skip


def start_real(work: Path, cleanup: list[Callable[[], object]]) -> Setup:
    """A real node joined to the control plane; the chart installed with the built image;
    the operator and the workers as containers."""
    say("building the image (make image: hack/build-image.sh)")
    image = build_image()
    say("starting a real node (containerd, kubelet, kube-proxy) and its control plane")
    node: Node = start_node()
    cleanup.append(node.stop)
    with tempfile.TemporaryDirectory(prefix="streamherd-image-") as tmp:
        node.import_image(image.save_oci(Path(tmp) / "image.tar"))
    cluster = node.control_plane.cluster
    say(f"starting Apache Kafka (KRaft, one broker) on the node's bridge address {node.ip}")
    kp = start_kafka(work / "kafka", address=node.ip)
    cleanup.append(kp.stop)
    broker = kp.broker
    for name in (RELEASE_NS, "demo"):
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
    repo, _, tag = image.name.rpartition(":")
    say(f"helm install streamherd charts/streamherd (image {image.name})")
    cluster.helm(
        "install", "streamherd", str(ROOT / "charts" / "streamherd"), "--namespace", RELEASE_NS,
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never", "--wait", "--timeout", "180s",
    )  # fmt: skip
    cleanup.append(
        lambda: cluster.helm("uninstall", "streamherd", "--namespace", RELEASE_NS, "--wait")
    )
    ns = Namespace(cluster, "demo")
    _topics(broker)
    doc = demo_pipeline(broker.bootstrap, "demo")
    doc["spec"]["imagePullPolicy"] = "Never"
    doc["spec"]["resources"] = REAL_RESOURCES
    node.local_volume("demo", f"{PIPELINE}-checkpoints")
    say(f"applying {EXAMPLE.relative_to(ROOT)} (bootstrap {broker.bootstrap})")
    ns.apply(doc)

    def ready_pods() -> int:
        return sum(
            1
            for pod in ns.items("pods", f"app.kubernetes.io/instance={PIPELINE}")
            if not pod["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod["status"].get("conditions", [])
            )
        )

    info = cluster.get_json("node", node.name)["status"]["nodeInfo"]
    facts = {
        "workers": "worker pods on a real node (Ready pods counted)",
        "image": image.name,
        "kubelet": info["kubeletVersion"],
        "containerRuntime": info["containerRuntimeVersion"],
        "workerResources": REAL_RESOURCES,
    }
    return Setup("real", cluster, broker, ns, ready_pods, facts)


def choose_mode(asked: str) -> tuple[str, str]:
    """(mode, why) for --node."""
    if asked != "auto":
        return asked, "asked for with --node"
    missing = preflight()
    if missing:
        return "kwok", "this machine cannot run the real node: it lacks " + ", ".join(missing)
    return "real", "this machine can run the real node"


def plot(points: list[Point], t0: float, path: Path, burst_at: float, mode: str) -> None:
    matplotlib.use("Agg")
    pts = [p for p in points if p.t >= t0]
    xs = [p.t - t0 for p in pts]
    fig, lag_ax = plt.subplots(figsize=(10, 4))
    lag_ax.plot(xs, [(p.lag or 0) / 1000 for p in pts], color="tab:red", label="lag")
    lag_ax.set_xlabel("seconds")
    lag_ax.set_ylabel("lag (thousand records)", color="tab:red")
    rep_ax = lag_ax.twinx()
    rep_ax.step(xs, [p.replicas or 0 for p in pts], where="post", color="tab:blue",
                label="replicas (Deployment)")  # fmt: skip
    running = "worker pods Ready" if mode == "real" else "worker processes running"
    rep_ax.step(xs, [p.workers for p in pts], where="post", color="tab:green",
                linestyle="--", label=running)  # fmt: skip
    rep_ax.set_ylabel("replicas", color="tab:blue")
    rep_ax.set_ylim(0, max(max(p.replicas or 0, p.workers) for p in pts) + 1)
    lag_ax.axvline(burst_at - t0, color="grey", linestyle=":", label="burst produced")
    lines = lag_ax.get_legend_handles_labels()
    more = rep_ax.get_legend_handles_labels()
    lag_ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    where = "real pods on a kubelet node" if mode == "real" else "kwok pods, local workers"
    lag_ax.set_title(f"make demo ({where}): clicks-per-minute, builtin autoscaler (min 1, max 8)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--node", choices=("auto", "real", "kwok"), default="auto",
        help="where the workers run: real pods on a real node, local processes for kwok "
        "pods, or real when this machine can (default)",
    )  # fmt: skip
    parser.add_argument("--records", type=int, default=400_000, help="size of the burst")
    parser.add_argument(
        "--plot", type=Path, default=None,
        help="save the timeline as PNG, and the run's parameters beside it (.json)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="streamherd-demo-"))
    cleanup: list[Callable[[], object]] = []
    mode, why = choose_mode(args.node)
    say(f"workers: {'real pods on a real node' if mode == 'real' else 'kwok pods'} ({why})")
    started = datetime.datetime.now(datetime.UTC)
    try:
        setup: Setup
        if mode == "real":
            try:
                setup = start_real(work, cleanup)
            except InfraError as e:
                if args.node == "real":
                    raise
                say(f"the real node did not start ({e}); falling back to kwok pods")
                for stop in reversed(cleanup):
                    stop()
                cleanup.clear()
                mode, why = "kwok", f"the real node did not start: {e}"
                setup = start_kwok(work, cleanup)
        else:
            setup = start_kwok(work, cleanup)
        ns, broker = setup.ns, setup.broker
        sampler = Sampler(ns, setup.workers).start()
        cleanup.append(sampler.stop)
        wait_until("the first worker", lambda: setup.workers() >= 1, timeout=300)
        wait_until("a lag measurement", lambda: ns.status(PIPELINE).get("lag") == 0,
                   timeout=120)  # fmt: skip
        t0 = time.time()
        time.sleep(5)
        say(f"producing a burst of {args.records:,} clicks to 'clicks' ({PARTITIONS} partitions)")
        broker.produce("clicks", clicks(args.records))
        burst_at = time.time()
        print(f"{'t':>5}  {'lag':>9}  {'desired':>7}  {'replicas':>8}  {'workers':>7}")
        shown, scaled_up, settled_since = 0, False, None
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            time.sleep(1)
            pts = sampler.points[shown:]
            shown += len(pts)
            for p in pts:
                print(
                    f"{p.t - t0:5.0f}  {p.lag if p.lag is not None else '-':>9}  "
                    f"{p.desired if p.desired is not None else '-':>7}  "
                    f"{p.replicas if p.replicas is not None else '-':>8}  {p.workers:>7}  "
                    f"{bar(p.replicas or 0, 0.25)}",
                    flush=True,
                )
                scaled_up = scaled_up or (p.replicas or 0) > 1
                back = scaled_up and p.lag == 0 and p.replicas == 1 and p.workers == 1
                settled_since = (settled_since or p.t) if back else None
            if settled_since and time.time() - settled_since > 5:
                break
        else:
            say(f"did not settle within {args.timeout:.0f}s")
        reasons = ns.event_reasons(PIPELINE)
        scale_events = [r for r in reasons if r.startswith("Scale")]
        say(f"scaling events: {', '.join(scale_events) or '-'}")
        status = ns.status(PIPELINE)
        say(f"status: desiredReplicas={status.get('desiredReplicas')} lag={status.get('lag')} "
            f"lastScaleReason={status.get('lastScaleReason')!r}")  # fmt: skip
        if args.plot:
            points = list(sampler.points)
            plot(points, t0, args.plot, burst_at, mode)
            params = {
                "date": started.isoformat(timespec="seconds"),
                "command": "bench/demo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "mode": mode,
                "why": why,
                **setup.facts,
                "records": args.records,
                "partitions": PARTITIONS,
                "pipeline": demo_pipeline("<broker>", "demo")["spec"],
                "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
                "result": {
                    "settled": bool(settled_since),
                    "maxReplicas": max((p.replicas or 0 for p in points), default=0),
                    "maxWorkers": max((p.workers for p in points), default=0),
                    "maxLag": max((p.lag or 0 for p in points), default=0),
                    "burstWrittenSeconds": round(burst_at - t0, 1),
                    "scaleEvents": scale_events,
                },
            }
            meta = args.plot.with_suffix(".json")
            meta.write_text(json.dumps(params, indent=2, default=str) + "\n")
            say(f"timeline saved to {args.plot}, the run's parameters to {meta}")
        if setup.errors():
            say(f"worker errors: {setup.errors()}")
        return 0 if settled_since else 1
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as e:  # keep cleaning up the rest
                print(f"cleanup: {e!r}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        say(f"cleaned up ({mode}: control plane, Kafka, operator, workers, temp files)")


if __name__ == "__main__":
    raise SystemExit(main())
