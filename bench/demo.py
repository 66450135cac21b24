"""`make demo`: lag-driven autoscaling, live, on this machine.

Starts a local Kubernetes control plane and an Apache Kafka broker (tests/infra, in
throwaway directories), installs the StreamPipeline CRD, runs the operator, applies
examples/02-clicks-per-minute.yaml (pointed at the local broker, with demo-sized poll and
stabilization windows), runs the workers as local processes from the pods' specs (the
kwok nodes run no containers: tests/e2e/harness.py's pod mirror does), produces a burst of
clicks, and prints the lag and the replica count every second until the pipeline settles
back at its minimum. Then it saves a timeline plot and cleans everything up, also on
Ctrl-C.

    .venv/bin/python bench/demo.py [--records 400000] [--plot docs/autoscaling-demo.png]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.harness import (  # noqa: E402
    Namespace,
    Operator,
    PodMirror,
    Timeline,
    install_crd,
    wait_until,
)
from tests.infra.controlplane import start_control_plane  # noqa: E402
from tests.infra.kafka import start_kafka  # noqa: E402

EXAMPLE = ROOT / "examples" / "02-clicks-per-minute.yaml"
PAGES = [f"/page/{i}" for i in range(50)]


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


def plot(timeline: Timeline, t0: float, path: Path, burst_at: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in timeline.points if p.t >= t0]
    xs = [p.t - t0 for p in pts]
    fig, lag_ax = plt.subplots(figsize=(10, 4))
    lag_ax.plot(xs, [(p.lag or 0) / 1000 for p in pts], color="tab:red", label="lag")
    lag_ax.set_xlabel("seconds")
    lag_ax.set_ylabel("lag (thousand records)", color="tab:red")
    rep_ax = lag_ax.twinx()
    rep_ax.step(xs, [p.replicas or 0 for p in pts], where="post", color="tab:blue",
                label="replicas (Deployment)")  # fmt: skip
    rep_ax.step(xs, [p.workers for p in pts], where="post", color="tab:green",
                linestyle="--", label="workers running")  # fmt: skip
    rep_ax.set_ylabel("replicas", color="tab:blue")
    rep_ax.set_ylim(0, max(p.replicas or 0 for p in pts) + 1)
    lag_ax.axvline(burst_at - t0, color="grey", linestyle=":", label="burst produced")
    lines = lag_ax.get_legend_handles_labels()
    more = rep_ax.get_legend_handles_labels()
    lag_ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    lag_ax.set_title("make demo: clicks-per-minute, builtin autoscaler (min 1, max 8)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400_000, help="size of the burst")
    parser.add_argument("--plot", type=Path, default=None, help="save the timeline as PNG")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="streamherd-demo-"))
    cleanup: list[Any] = []
    try:
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
        for topic, parts in (("clicks", 8), ("clicks-per-minute", 8), ("clicks-dlq", 1)):
            broker.create_topic(topic, partitions=parts)
        say("running the operator (log: operator.log in the demo directory)")
        operator = Operator(cluster, "demo", work / "operator.log")
        cleanup.append(operator.stop)
        say(f"applying {EXAMPLE.relative_to(ROOT)} (bootstrap {broker.bootstrap})")
        ns.apply(demo_pipeline(broker.bootstrap, "demo"))
        ns.bind_checkpoint_volume("clicks-per-minute")
        mirror = PodMirror(ns, "clicks-per-minute", work / "pods").__enter__()
        cleanup.append(lambda: mirror.__exit__(None))
        timeline = Timeline(ns, "clicks-per-minute", mirror).__enter__()
        cleanup.append(lambda: timeline.__exit__(None))
        wait_until("the first worker", lambda: len(mirror.workers) >= 1, timeout=180)
        wait_until("a lag measurement", lambda: ns.status("clicks-per-minute").get("lag") == 0,
                   timeout=120)  # fmt: skip
        t0 = time.time()
        time.sleep(5)
        say(f"producing a burst of {args.records:,} clicks to 'clicks' (8 partitions)")
        broker.produce("clicks", clicks(args.records))
        burst_at = time.time()
        print(f"{'t':>5}  {'lag':>9}  {'desired':>7}  {'replicas':>8}  {'workers':>7}")
        shown, scaled_up, settled_since = 0, False, None
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            time.sleep(1)
            pts = timeline.points[shown:]
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
        reasons = ns.event_reasons("clicks-per-minute")
        say(f"scaling events: {', '.join(r for r in reasons if r.startswith('Scale')) or '-'}")
        status = ns.status("clicks-per-minute")
        say(f"status: desiredReplicas={status.get('desiredReplicas')} lag={status.get('lag')} "
            f"lastScaleReason={status.get('lastScaleReason')!r}")  # fmt: skip
        if args.plot:
            plot(timeline, t0, args.plot, burst_at)
            say(f"timeline saved to {args.plot}")
        if mirror.errors:
            say(f"worker errors: {mirror.errors}")
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
        say("cleaned up (control plane, Kafka, operator, workers, temp files)")


if __name__ == "__main__":
    raise SystemExit(main())
