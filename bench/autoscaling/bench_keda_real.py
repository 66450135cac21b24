"""Benchmark: the builtin autoscaler against real KEDA + the real HPA, real workers, one run.

Not a simulation (that is bench_autoscaling.py): its own control plane, Kafka broker and KEDA
(tests/infra: KEDA's operator and metrics adapter built from source and registered through
API aggregation, kube-controller-manager's HPA controller reading the lag through it), the
streamherd operator as a process (tests/e2e/harness.py's Operator, as the chart's
identity), and the workers as real engine processes started from the pods' specs
(PodMirror: kwok runs the pods, a local process per Running pod does the work).

For each mode (`builtin`, then `keda`), in one run: a fresh namespace, a topic of
``--partitions`` partitions, a pipeline reading it (raw records to a stdout sink;
checkpoint every 2 s) with the same autoscaling bounds and lagPerReplica, and a producer
replaying the spike profile: ``--baseline`` records/s, ``--spike-rate`` for
``--spike-seconds`` after ``--before`` seconds, then the baseline again for ``--after``
seconds. Every second the group's lag is measured at the broker (log end - committed,
read independently of both autoscalers) and the Deployment's replicas are read.

Reports per mode: peak lag, time behind (seconds with lag above 5 s of the current input
and at least ``--behind-floor`` records), replica-seconds (spec.replicas summed per
second), scale changes and flaps (a change opposite to the previous one within the
scale-down stabilization window). Writes the section of docs/benchmarks.md between
``<!-- autoscaling-real:begin -->`` and ``<!-- autoscaling-real:end -->`` only after a
complete run, with the machine, versions and load; --json writes the raw series.

    nice .venv/bin/python bench/autoscaling/bench_keda_real.py [--modes builtin,keda]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402

from tests.e2e.harness import Namespace, Operator, PodMirror, install_crd, wait_until  # noqa: E402
from tests.infra.controlplane import start_control_plane, versions  # noqa: E402
from tests.infra.kafka import KafkaBroker, start_kafka  # noqa: E402
from tests.infra.keda import running_keda  # noqa: E402

DOCS = ROOT / "docs"
BEGIN, END = "<!-- autoscaling-real:begin -->", "<!-- autoscaling-real:end -->"
PIPELINE = "spiky"


@dataclass
class Series:
    """One mode's run, one point per second."""

    mode: str
    t: list[float] = field(default_factory=list)  # seconds since the profile started
    input: list[float] = field(default_factory=list)  # records produced in that second
    lag: list[int] = field(default_factory=list)  # broker lag (log end - committed)
    replicas: list[int] = field(default_factory=list)  # the Deployment's spec.replicas
    workers: list[int] = field(default_factory=list)  # worker processes running

    def changes(self) -> list[tuple[float, int]]:
        """(time, signed step) of every replica change."""
        return [
            (t, b - a)
            for t, a, b in zip(self.t[1:], self.replicas, self.replicas[1:], strict=False)
            if a != b
        ]

    def summary(self, floor: int, stabilization: float) -> dict[str, float]:
        moves = self.changes()
        flaps = sum(
            1
            for (t0, d0), (t1, d1) in itertools.pairwise(moves)
            if (d0 > 0) != (d1 > 0) and t1 - t0 < stabilization
        )
        behind = sum(
            1 for lag, rate in zip(self.lag, self.input, strict=True) if lag > max(floor, 5 * rate)
        )
        return {
            "peak lag": max(self.lag, default=0),
            "time behind (s)": behind,
            "replica-seconds": sum(self.replicas),
            "scale changes": len(moves),
            "flaps": flaps,
            "max replicas": max(self.replicas, default=0),
        }


class SpikeProducer:
    """Produces the profile's rate in 100 ms slices; counts what it produced per second."""

    def __init__(self, broker: KafkaBroker, topic: str, rate: float) -> None:
        self.rate = rate
        self.produced = 0
        self._producer = Producer(
            broker.client_config(**{"linger.ms": 20, "enable.idempotence": True})
        )
        self._topic = topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="producer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        n = 0
        slice_start = time.monotonic()
        while not self._stop.is_set():
            want = int(self.rate / 10)
            for _ in range(want):
                while True:
                    try:
                        self._producer.produce(self._topic, value=b"r%d status=%d" % (n, n % 7))
                        break
                    except BufferError:
                        self._producer.poll(0.05)
                n += 1
            self.produced = n
            self._producer.poll(0)
            slice_start += 0.1
            delay = slice_start - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                slice_start = time.monotonic()  # behind: no catch-up burst
        self._producer.flush(60)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


def pipeline(ns: str, bootstrap: str, topic: str, mode: str, args: argparse.Namespace) -> Any:
    return {
        "apiVersion": "streamherd.io/v1alpha1",
        "kind": "StreamPipeline",
        "metadata": {"name": PIPELINE, "namespace": ns},
        "spec": {
            "source": {
                "kafka": {
                    "bootstrapServers": bootstrap,
                    "topics": [topic],
                    "format": "raw",
                    "startFrom": "earliest",
                }
            },
            "sink": {"stdout": {}},
            "checkpoint": {"interval": "2s"},
            "autoscaling": {
                "mode": mode,
                "minReplicas": 1,
                "maxReplicas": args.partitions,
                "lagPerReplica": args.lag_per_replica,
                "pollInterval": "15s",  # the HPA controller's sync period, for both
                "scaleDownStabilization": f"{args.stabilization}s",
            },
        },
    }


def run_mode(
    mode: str, cluster: Any, broker: KafkaBroker, workdir: Path, args: argparse.Namespace
) -> Series:
    ns_name = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name}})
    ns = Namespace(cluster, ns_name)
    operator = Operator(cluster, ns_name, workdir / f"operator-{mode}.log")
    topic = broker.create_topic(broker.unique_topic(f"spike-{mode}"), partitions=args.partitions)
    group = f"{ns_name}.{PIPELINE}"
    series = Series(mode)
    try:
        ns.apply(pipeline(ns_name, broker.bootstrap, topic, mode, args))
        ns.bind_checkpoint_volume(PIPELINE)
        with PodMirror(ns, PIPELINE, workdir / mode) as mirror:
            producer = SpikeProducer(broker, topic, args.baseline)
            try:
                wait_until(
                    "a worker consuming at the baseline",
                    lambda: sum(v for v in broker.committed(group, topic).values() if v > 0) > 0,
                    timeout=300,
                    interval=2,
                )
                t0 = time.monotonic()
                last = producer.produced
                total = args.before + args.spike_seconds + args.after
                for second in range(1, total + 1):
                    spike = args.before <= second - 1 < args.before + args.spike_seconds
                    producer.rate = args.spike_rate if spike else args.baseline
                    delay = t0 + second - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    ends = broker.end_offsets(topic)
                    committed = broker.committed(group, topic)
                    lag = sum(e - max(committed.get(p, 0), 0) for p, e in ends.items())
                    produced = producer.produced
                    series.t.append(time.monotonic() - t0)
                    series.input.append(float(produced - last))
                    last = produced
                    series.lag.append(lag)
                    series.replicas.append(ns.deployment_replicas(PIPELINE) or 0)
                    series.workers.append(len(mirror.workers))
                    print(
                        f"[{mode} {second:4d}s] in {series.input[-1]:7.0f}/s lag {lag:8d} "
                        f"replicas {series.replicas[-1]} workers {series.workers[-1]}",
                        flush=True,
                    )
            finally:
                producer.stop()
            if mirror.errors:
                print(f"worker errors ({mode}): {mirror.errors}", file=sys.stderr)
    finally:
        operator.stop()
        ns.delete()
    return series


def report(results: dict[str, Series], args: argparse.Namespace, load: list[float]) -> str:
    v = versions()
    rows = {m: s.summary(args.behind_floor, args.stabilization) for m, s in results.items()}
    keys = list(next(iter(rows.values())))
    lines = [
        BEGIN,
        "## Autoscaling against real KEDA (one spike, real workers)",
        "",
        "Written by `bench/autoscaling/bench_keda_real.py` from one run of "
        f"{', '.join(results)} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): "
        f"the real control plane (Kubernetes {v['KUBE_VERSION']}, the HPA controller of "
        f"kube-controller-manager), KEDA {v['KEDA_VERSION']} built from source (operator + "
        f"metrics adapter through API aggregation), Apache Kafka {v['KAFKA_VERSION']}, real "
        "workers (one engine process per kwok pod). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{statistics.median(load):.1f} (median of the runs' samples), shared with other work.",
        "",
        f"Profile: {args.partitions} partitions, {args.baseline} rec/s, {args.spike_rate} rec/s "
        f"for {args.spike_seconds} s after {args.before} s, then {args.after} s of baseline. "
        f"Every mode: min 1, max {args.partitions}, lagPerReplica {args.lag_per_replica}, "
        f"poll 15 s (the HPA's sync period), scale-down stabilization {args.stabilization} s. "
        f"Time behind: seconds with broker lag above 5 s of input and at least "
        f"{args.behind_floor} records. One run: no medians, no seeds.",
        "",
        "| metric | " + " | ".join(results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{rows[m][k]:,.0f}" for m in results) + " |")
    lines.append(END)
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    current = path.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        path.write_text(head + text + tail)
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="builtin,keda")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--baseline", type=float, default=300.0)
    parser.add_argument("--spike-rate", type=float, default=8000.0)
    parser.add_argument("--spike-seconds", type=int, default=45)
    parser.add_argument("--before", type=int, default=60)
    parser.add_argument("--after", type=int, default=240)
    parser.add_argument("--lag-per-replica", type=int, default=5000)
    parser.add_argument("--stabilization", type=int, default=60)
    parser.add_argument("--behind-floor", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DOCS / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="write the raw series here")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="streamherd-bench-keda-"))
    print(f"work dir: {workdir}", flush=True)
    cp = start_control_plane(workdir / "kube")
    kafka = start_kafka(workdir / "kafka")
    results: dict[str, Series] = {}
    load: list[float] = []
    try:
        install_crd(cp.cluster)
        modes = args.modes.split(",")
        with contextlib.ExitStack() as stack:
            if "keda" in modes:
                keda = stack.enter_context(running_keda(cp.cluster))
                print(f"KEDA running (logs: {', '.join(map(str, keda.log_files))})", flush=True)
            for mode in modes:
                load.append(os.getloadavg()[0])
                results[mode] = run_mode(mode, cp.cluster, kafka.broker, workdir, args)
                load.append(os.getloadavg()[0])
    finally:
        kafka.stop()
        cp.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept above on a failure: its logs
    text = report(results, args, load)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps({m: asdict(s) for m, s in results.items()}))
    if not args.no_write:
        write_section(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
