"""Benchmark: the builtin autoscaler against real KEDA + the real HPA, real workers, one run.

Not a simulation (that is bench_autoscaling.py): its own control plane, Kafka broker and KEDA
(tests/infra: KEDA's operator and metrics adapter built from source and registered through
API aggregation, kube-controller-manager's HPA controller reading the lag through it), the
streamherd operator as a process (tests/infra/e2e_harness.py's Operator, as the chart's
identity), and the workers as real engine processes started from the pods' specs
(PodMirror: kwok runs the pods, a local process per Running pod does the work).

For each profile (step, spike, ramp, noisy-steady; ``--duration`` seconds each) and each mode
(`builtin` and `keda`, the order alternating between profiles), in one run: a fresh
namespace, a topic of ``--partitions`` partitions, a pipeline reading it (raw records to a
stdout sink; checkpoint every 2 s) with the same autoscaling bounds, lagPerReplica, poll
interval and scale-down stabilization, and a producer replaying the profile (the same
seeded generator for both modes). Every second the group's lag is measured at the broker
(log end - committed, read independently of both autoscalers) with the Deployment's
replicas and the worker processes running.

Reports per profile and mode: time behind (seconds with lag above 5 s of the current input
and at least ``--behind-floor`` records), peak lag, replica-seconds (spec.replicas summed
per second), scale changes and flaps (a change opposite to the previous one less than the
scale-down stabilization window after it), each beside the simulation's prediction for the
same profile and mode (bench_autoscaling.simulate at this scale, median of ``--sim-seeds``
seeds): once with the simulation's own parameters and once calibrated from what this run
measured (worker throughput, machine throughput, worker start-up, the HPA's tolerance,
KEDA's even distribution, lag as committed offsets show it). Writes the section of
docs/autoscaling.md between ``<!-- autoscaling-real:begin -->`` and
``<!-- autoscaling-real:end -->`` only after a complete run; --json writes the raw series.

    nice -n 5 .venv/bin/python -m bench.autoscaling.bench_keda_real [--profiles spike,...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench.autoscaling.bench_autoscaling import keda_rule, simulate, streamherd_rule
from tests.infra.controlplane import start_control_plane, versions
from tests.infra.e2e_harness import Namespace, Operator, PodMirror, install_crd, wait_until
from tests.infra.kafka import KafkaBroker, start_kafka
from tests.infra.keda import running_keda
from tests.infra.paths import DOCS_DIR

DOCS = DOCS_DIR
BEGIN, END = "<!-- autoscaling-real:begin -->", "<!-- autoscaling-real:end -->"
PIPELINE = "herd"
POLL = 15  # the operator's pollInterval and the HPA controller's sync period
COMMIT = 2  # the pipeline's checkpoint interval (s): committed offsets move in these steps
METRICS = ("time behind (s)", "peak lag", "replica-seconds", "scale changes", "flaps")
Profile = Callable[[int, random.Random], float]


# --------------------------------------------------------------------------- profiles


def profiles(args: argparse.Namespace) -> dict[str, Profile]:
    """The four shapes of bench_autoscaling.py at this scale; t in seconds from the start."""
    d, base = args.duration, args.baseline
    lead = d // 8  # the load changes this long after the start (30 s of 240)

    def step(t: int, rng: random.Random) -> float:
        return float(args.step_rate if lead <= t < 5 * d // 8 else base)

    def spike(t: int, rng: random.Random) -> float:
        return float(args.spike_rate if lead <= t < lead + args.spike_seconds else base)

    def ramp(t: int, rng: random.Random) -> float:
        top = 2 * d // 3
        if t < top:
            return float(max(base, args.ramp_peak * t / top))
        return float(max(base, args.ramp_peak * (d - t) / (d - top)))

    def noisy(t: int, rng: random.Random) -> float:
        return float(args.noisy_rate * (1 + rng.uniform(-0.3, 0.3)))

    return {"step": step, "spike": spike, "ramp": ramp, "noisy-steady": noisy}


NOISE = {"noisy-steady": 0.0}  # its noise is in the profile; the others get +-10 %


def schedule(profile: str, fn: Profile, duration: int, seed: int) -> list[float]:
    """The records/s of every second: the same list for both modes."""
    rng = random.Random(f"{profile}/{seed}")
    noise = NOISE.get(profile, 0.1)
    return [max(0.0, fn(t, rng) * (1 + rng.uniform(-noise, noise))) for t in range(duration)]


# --------------------------------------------------------------------------- a run


@dataclass
class Series:
    """One mode's run of one profile, one point per second."""

    mode: str
    profile: str
    t: list[float] = field(default_factory=list)  # seconds since the profile started
    input: list[float] = field(default_factory=list)  # records produced in that second
    lag: list[int] = field(default_factory=list)  # broker lag (log end - committed)
    committed: list[int] = field(default_factory=list)  # committed offsets, summed
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
            "time behind (s)": behind,
            "peak lag": max(self.lag, default=0),
            "replica-seconds": sum(self.replicas),
            "scale changes": len(moves),
            "flaps": flaps,
        }


class ProfileProducer:
    """Produces the current rate in 100 ms slices; counts what it produced."""

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
        owed = 0.0  # fractions of a record carried to the next slice (low rates)
        slice_start = time.monotonic()
        while not self._stop.is_set():
            owed += self.rate / 10
            want, owed = int(owed), owed - int(owed)
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
            "checkpoint": {"interval": f"{COMMIT}s"},
            "autoscaling": {
                "mode": mode,
                "minReplicas": 1,
                "maxReplicas": args.partitions,
                "lagPerReplica": args.lag_per_replica,
                "pollInterval": f"{POLL}s",  # KEDA's pollingInterval too
                "scaleDownStabilization": f"{args.stabilization}s",
            },
        },
    }


def run_mode(
    profile: str,
    rates: list[float],
    mode: str,
    cluster: Any,
    broker: KafkaBroker,
    workdir: Path,
    args: argparse.Namespace,
) -> Series:
    ns_name = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name}})
    ns = Namespace(cluster, ns_name)
    operator = Operator(cluster, ns_name, workdir / f"operator-{profile}-{mode}.log")
    topic = broker.create_topic(
        broker.unique_topic(f"{profile}-{mode}"), partitions=args.partitions
    )
    group = f"{ns_name}.{PIPELINE}"
    series = Series(mode, profile)
    try:
        ns.apply(pipeline(ns_name, broker.bootstrap, topic, mode, args))
        ns.bind_checkpoint_volume(PIPELINE)
        with PodMirror(ns, PIPELINE, workdir / f"{profile}-{mode}") as mirror:
            producer = ProfileProducer(broker, topic, args.baseline)
            try:
                wait_until(
                    "a worker consuming at the baseline",
                    lambda: sum(v for v in broker.committed(group, topic).values() if v > 0) > 0,
                    timeout=300,
                    interval=2,
                )
                wait_until(
                    "one replica at the start",
                    lambda: ns.deployment_replicas(PIPELINE) == 1 and len(mirror.workers) == 1,
                    timeout=300,
                    interval=2,
                )
                t0 = time.monotonic()
                last = producer.produced
                for second, rate in enumerate(rates, start=1):
                    producer.rate = rate
                    delay = t0 + second - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    ends = broker.end_offsets(topic)
                    committed = {p: max(c, 0) for p, c in broker.committed(group, topic).items()}
                    lag = sum(e - committed.get(p, 0) for p, e in ends.items())
                    produced = producer.produced
                    series.t.append(time.monotonic() - t0)
                    series.input.append(float(produced - last))
                    last = produced
                    series.lag.append(lag)
                    series.committed.append(sum(committed.values()))
                    series.replicas.append(ns.deployment_replicas(PIPELINE) or 0)
                    series.workers.append(len(mirror.workers))
                    if second % 10 == 0:
                        print(
                            f"[{profile} {mode} {second:4d}s] in {series.input[-1]:7.0f}/s "
                            f"lag {lag:8d} replicas {series.replicas[-1]} "
                            f"workers {series.workers[-1]}",
                            flush=True,
                        )
            finally:
                producer.stop()
            if mirror.errors:
                print(f"worker errors ({profile} {mode}): {mirror.errors}", file=sys.stderr)
    finally:
        operator.stop()
        ns.delete()
    return series


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Model:
    """The simulation's parameters at this scale."""

    per_replica: float  # records/s one worker drains
    total: float  # records/s all workers together drain (the machine's cores)
    startup: int  # seconds from a scale-up to the new workers consuming
    committed_lag: bool  # lag as the broker shows it (end - committed) or the true backlog
    tolerance: float  # the HPA's
    even: bool  # KEDA's ensureEvenDistributionOfPartitions


# What the simulation assumed before this run: docs/benchmarks.md's engine rate, 20 s
# start-up, true backlog, an HPA without tolerance, KEDA without even distribution.
BEFORE = Model(80_000.0, math.inf, 20, False, 0.0, False)


def drain_rates(runs: list[Series], floor: int, window: int = 3 * COMMIT) -> dict[int, float]:
    """Records/s drained while backlogged (90th percentile of the windows), by workers running.

    A window counts when the lag stayed above `floor` and the worker count did not change
    throughout. Lag above the floor does not mean the workers were saturated (2 s of
    commits at 12,000 rec/s is 24,000 records of lag on workers that keep up), so the median
    of those windows is the input, not the capacity: the 90th percentile is what the
    workers drained when they had more to do than they could (a window of saturation by
    the behind rule, lag above 5 s of input, hardly ever lasts 6 s here)."""
    by_workers: dict[int, list[float]] = {}
    for s in runs:
        for i in range(len(s.t) - window):
            span = slice(i, i + window + 1)
            w = set(s.workers[span])
            if len(w) != 1 or min(s.lag[span]) <= floor:
                continue
            n = w.pop()
            if n > 0:
                by_workers.setdefault(n, []).append(
                    (s.committed[i + window] - s.committed[i]) / window
                )
    return {
        n: statistics.quantiles(v, n=10)[-1] if len(v) > 1 else v[0]
        for n, v in sorted(by_workers.items())
    }


def startups(runs: list[Series]) -> list[float]:
    """Seconds from each scale-up to that many worker processes running."""
    out: list[float] = []
    for s in runs:
        for i in range(1, len(s.t)):
            if s.replicas[i] > s.replicas[i - 1]:
                want = s.replicas[i]
                j = next((j for j in range(i, len(s.t)) if s.workers[j] >= want), None)
                if j is not None:
                    out.append(s.t[j] - s.t[i])
    return out


def calibrate(runs: list[Series], args: argparse.Namespace) -> tuple[Model, dict[int, float]]:
    rates = drain_rates(runs, args.behind_floor)
    ups = startups(runs)
    per = rates.get(1, BEFORE.per_replica)
    total = max(rates.values()) if rates else math.inf
    # The group rebalance after the process starts is not in `workers`: one commit interval
    # more before the new worker's progress shows in committed offsets.
    startup = round(statistics.median(ups) + COMMIT) if ups else BEFORE.startup
    return Model(per, total, startup, True, 0.1, True), rates


def predict(
    profile: Profile, noise: float, mode: str, model: Model, args: argparse.Namespace
) -> dict[str, float]:
    runs = []
    for seed in range(1, args.sim_seeds + 1):
        rule = (
            streamherd_rule(args.stabilization, POLL)
            if mode == "builtin"
            else keda_rule(args.stabilization, model.tolerance, model.even)
        )
        run = simulate(
            profile,
            rule,
            noise=noise,
            partitions=args.partitions,
            per_replica=model.per_replica,
            commit_interval=COMMIT,
            startup=model.startup,
            lag_per_replica=args.lag_per_replica,
            seed=seed,
            duration=args.duration,
            poll=POLL,
            hi=args.partitions,
            committed_lag=model.committed_lag,
            total_capacity=model.total,
        )
        runs.append(run.summary(args.behind_floor, args.stabilization))
    return {k: statistics.median(r[k] for r in runs) for k in METRICS}


def error(real: dict[str, float], sim: dict[str, float], key: str) -> float:
    """|sim - real| relative to the larger of the two (0 when both are 0)."""
    top = max(abs(real[key]), abs(sim[key]))
    return abs(sim[key] - real[key]) / top if top else 0.0


# --------------------------------------------------------------------------- report


def _f(v: float) -> str:
    return f"{v:,.0f}"


def goals(rows: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    out = []
    if ("spike", "builtin") in rows and ("spike", "keda") in rows:
        b, k = rows["spike", "builtin"], rows["spike", "keda"]
        tb, tk = b["time behind (s)"], k["time behind (s)"]
        less = 1 - tb / tk if tk else 0.0
        ok = tk > 0 and less >= 0.30 and b["replica-seconds"] <= k["replica-seconds"]
        out.append(
            f"- Spike: builtin behind {_f(tb)} s, KEDA+HPA {_f(tk)} s ("
            + (f"{less:.0%} less" if tk else "KEDA+HPA never behind")
            + f"), builtin at {b['replica-seconds'] / k['replica-seconds']:.0%} of KEDA+HPA's "
            f"replica-seconds. Goal (>= 30 % less time behind, no more replica-seconds): "
            f"{'met' if ok else 'NOT met'}."
        )
    if ("noisy-steady", "builtin") in rows:
        n = rows["noisy-steady", "builtin"]
        k_noisy = rows.get(("noisy-steady", "keda"))
        out.append(
            f"- Noisy steady: builtin {_f(n['flaps'])} flaps in {_f(n['scale changes'])} "
            "scale changes"
            + (
                f" (KEDA+HPA: {_f(k_noisy['flaps'])} in {_f(k_noisy['scale changes'])})"
                if k_noisy
                else ""
            )
            + f". Goal (zero flaps): {'met' if n['flaps'] == 0 else 'NOT met'}."
        )
    return out


def report(
    results: list[Series],
    args: argparse.Namespace,
    load: list[float],
    started: str,
) -> tuple[str, dict[str, Any]]:
    v = versions()
    shapes = profiles(args)
    after, rates = calibrate(results, args)
    rows: dict[tuple[str, str], dict[str, float]] = {}
    lines = [
        BEGIN,
        f"Written by `bench/autoscaling/bench_keda_real.py` from one run ({started}): the "
        f"real control plane (Kubernetes {v['KUBE_VERSION']}, the HPA controller of "
        f"kube-controller-manager, sync period {POLL} s, tolerance 10 %), KEDA "
        f"{v['KEDA_VERSION']} built from source (operator + metrics adapter through API "
        f"aggregation), Apache Kafka {v['KAFKA_VERSION']}, real workers (one engine process "
        f"per kwok pod, raw records to a stdout sink, checkpoint every {COMMIT} s). Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other work: load average "
        f"{min(load):.1f}-{max(load):.1f} (median {statistics.median(load):.1f}) across the "
        "run.",
        "",
        f"Each profile {args.duration} s, {args.partitions} partitions, baseline "
        f"{_f(args.baseline)} rec/s; step to {_f(args.step_rate)} rec/s for "
        f"{args.duration // 2} s; spike to {_f(args.spike_rate)} rec/s for "
        f"{args.spike_seconds} s; ramp up to {_f(args.ramp_peak)} rec/s at "
        f"{2 * args.duration // 3} s and back down; noisy steady {_f(args.noisy_rate)} rec/s "
        "+-30 % per second (the others +-10 %), the same seeded series for both modes. Both "
        f"modes: replicas 1..{args.partitions}, lagPerReplica {_f(args.lag_per_replica)}, "
        f"poll {POLL} s, scale-down stabilization {args.stabilization} s. *Time behind*: "
        f"seconds with broker lag above 5 s of input and at least {_f(args.behind_floor)} "
        f"records. *Flap*: a scale change opposite to the previous one, less than "
        f"{args.stabilization} s (the stabilization window) after it. One run per mode and "
        "profile, no medians.",
        "",
        "Each cell: real / simulation before calibration / after (median of "
        f"{args.sim_seeds} seeds).",
        "",
        "| profile | mode | " + " | ".join(METRICS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in METRICS) + " |",
    ]
    errors: dict[str, list[tuple[float, float]]] = {k: [] for k in METRICS}
    for s in results:
        real = s.summary(args.behind_floor, args.stabilization)
        rows[s.profile, s.mode] = real
        noise = NOISE.get(s.profile, 0.1)
        before = predict(shapes[s.profile], noise, s.mode, BEFORE, args)
        calibrated = predict(shapes[s.profile], noise, s.mode, after, args)
        for k in METRICS:
            errors[k].append((error(real, before, k), error(real, calibrated, k)))
        cells = [f"{_f(real[k])} / {_f(before[k])} / {_f(calibrated[k])}" for k in METRICS]
        label = "KEDA+HPA" if s.mode == "keda" else s.mode
        lines.append(f"| {s.profile} | {label} | " + " | ".join(cells) + " |")
    produced = ", ".join(
        f"{s.profile} {'KEDA+HPA' if s.mode == 'keda' else s.mode} {_f(sum(s.input))}"
        for s in results
    )
    lines += [
        "",
        "Records produced per run (the producer shares the machine: under load it falls "
        f"behind the schedule, and the two modes' inputs differ by that much): {produced}.",
        "",
        *goals(rows),
        "",
    ]
    drain = ", ".join(f"{n} worker(s) {_f(r)} rec/s" for n, r in rates.items()) or "none"
    lines += [
        "Calibration, measured in this run: records/s drained while backlogged (90th "
        f"percentile of {3 * COMMIT} s windows) by workers running: {drain}; start-up "
        "(scale-up to the "
        f"worker process running, plus one commit interval for the rebalance): "
        f"{after.startup} s. Simulation before: {_f(BEFORE.per_replica)} rec/s per worker, "
        f"no machine limit, {BEFORE.startup} s start-up, true backlog as lag, an HPA without "
        f"tolerance, KEDA without even distribution. After: {_f(after.per_replica)} rec/s "
        f"per worker, at most {_f(after.total)} rec/s together, {after.startup} s start-up, "
        "lag as committed offsets show it (commits every 2 s), the HPA's 10 % tolerance, "
        "KEDA's ensureEvenDistributionOfPartitions.",
        "",
        "Prediction error, |sim - real| / max(sim, real), mean over the rows above:",
        "",
        "| metric | before | after |",
        "| --- | ---: | ---: |",
    ]
    for k in METRICS:
        b = statistics.mean(e[0] for e in errors[k])
        a = statistics.mean(e[1] for e in errors[k])
        lines.append(f"| {k} | {b:.0%} | {a:.0%} |")
    lines.append(END)
    raw = {
        "started": started,
        "load": load,
        "series": [asdict(s) for s in results],
        "calibrated": asdict(after),
        "drain_rates": rates,
        "startups": startups(results),
    }
    return "\n".join(lines), raw


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
    parser.add_argument("--profiles", default="step,spike,ramp,noisy-steady")
    parser.add_argument("--modes", default="builtin,keda")
    parser.add_argument("--duration", type=int, default=240, help="seconds per profile")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--baseline", type=float, default=300.0)
    parser.add_argument("--step-rate", type=float, default=12000.0)
    parser.add_argument("--spike-rate", type=float, default=24000.0)
    parser.add_argument("--spike-seconds", type=int, default=30)
    parser.add_argument("--ramp-peak", type=float, default=16000.0)
    parser.add_argument("--noisy-rate", type=float, default=6000.0)
    parser.add_argument("--lag-per-replica", type=int, default=5000)
    parser.add_argument("--stabilization", type=int, default=60)
    parser.add_argument("--behind-floor", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1, help="the profiles' noise")
    parser.add_argument("--sim-seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DOCS / "autoscaling.md")
    parser.add_argument("--json", type=Path, default=None, help="write the raw series here")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--report-from",
        type=Path,
        default=None,
        help="no run: the report from a --json file of an earlier run (same options)",
    )
    parser.add_argument("--load", default="", help="with --report-from: the run's load averages")
    parser.add_argument("--started", default="", help="with --report-from: when the run began")
    args = parser.parse_args(argv)
    if args.report_from is not None:
        raw = json.loads(args.report_from.read_text())
        runs = [Series(**s) for s in raw["series"]]
        loads = raw.get("load") or [float(x) for x in args.load.split(",")]
        text, _ = report(runs, args, loads, raw.get("started") or args.started)
        print(text)
        if not args.no_write:
            write_section(text, args.out)
        return 0
    shapes = profiles(args)
    names = args.profiles.split(",")
    modes = args.modes.split(",")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="streamherd-bench-keda-"))
    print(f"work dir: {workdir}", flush=True)
    cp = start_control_plane(workdir / "kube")
    kafka = start_kafka(workdir / "kafka")
    results: list[Series] = []
    load: list[float] = []
    try:
        install_crd(cp.cluster)
        with contextlib.ExitStack() as stack:
            if "keda" in modes:
                keda = stack.enter_context(running_keda(cp.cluster))
                print(f"KEDA running (logs: {', '.join(map(str, keda.log_files))})", flush=True)
            for i, name in enumerate(names):
                rates = schedule(name, shapes[name], args.duration, args.seed)
                # Alternate which mode goes first: drift in the machine's load hits both.
                for mode in modes if i % 2 == 0 else modes[::-1]:
                    load.append(os.getloadavg()[0])
                    results.append(
                        run_mode(name, rates, mode, cp.cluster, kafka.broker, workdir, args)
                    )
                    load.append(os.getloadavg()[0])
                    if args.json is not None:  # partial results survive a later failure
                        args.json.write_text(json.dumps([asdict(s) for s in results]))
    finally:
        kafka.stop()
        cp.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept above on a failure: its logs
    order = {n: i for i, n in enumerate(names)}
    results.sort(key=lambda s: (order[s.profile], modes.index(s.mode)))
    text, raw = report(results, args, load, started)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(raw))
    if not args.no_write:
        write_section(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
