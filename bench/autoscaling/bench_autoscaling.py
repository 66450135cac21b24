"""Benchmark: streamherd's autoscaling decision vs a KEDA/HPA rule and a Flink-like rule.

A simulation, not a cluster: traffic profiles (step, spike, ramp, noisy steady) are replayed
second by second through a drain model, and each rule is asked every poll interval how many
workers to run. The streamherd rule is the real ``decide`` (operator/autoscaling/decision.py)
fed the same samples the operator's poller would build.

The drain model (documented in docs/autoscaling.md):
- P partitions (default 32) receive the input evenly; partition i goes to worker i mod n;
- a worker processes up to ``--per-replica`` records/s (default 50,000, to be calibrated
  from the engine benchmark in docs/benchmarks.md) shared evenly among its partitions, so
  uneven assignments (5 workers on 32 partitions) leave the busiest worker the bottleneck;
- positions are committed every ``--commit-interval`` s (default 10, the checkpoint
  interval), and the lag a rule sees is log end minus committed, as the lag probe measures;
- a new worker starts consuming ``--startup`` s (default 20) after it is asked for
  (pod start + group rebalance); a removed worker stops at once.

Rules compared, each polled every 15 s, bounds [1, 32]:
- streamherd: ``decide`` with lagPerReplica ``--lag-per-replica`` (default 50,000),
  stabilization 300 s;
- KEDA + HPA defaults: desired = ceil(lag / lagThreshold) (same threshold), scale-up at most
  max(4 pods, +100 %) per 15 s, scale-down to the largest recommendation of the last 300 s;
- Flink-like: desired = ceil((mean input of the last 300 s + lag / 300 s) / (capacity x 0.7)),
  with the true per-worker capacity known (Flink measures busy time), acting at most once per
  300 s stabilization interval (a Flink rescale also restarts the job: not modelled here).

Reports, per profile and rule: peak lag, time behind (seconds with lag above 5 s of the
current input, at least 10,000 records), replica-seconds, scale changes; writes the section
of docs/benchmarks.md between ``<!-- autoscaling:begin -->`` and ``<!-- autoscaling:end -->``
and the plot docs/autoscaling-bench.png.

    .venv/bin/python bench/autoscaling/bench_autoscaling.py
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamherd.operator.autoscaling.decision import (  # noqa: E402
    History,
    PartitionSample,
    Policy,
    Sample,
    decide,
)

DOCS = ROOT / "docs"
BEGIN, END = "<!-- autoscaling:begin -->", "<!-- autoscaling:end -->"
POLL = 15
DURATION = 3600


# --------------------------------------------------------------------------- traffic


def step(t: int, rng: random.Random) -> float:
    return 300_000.0 if 300 <= t < 1800 else 20_000.0


def spike(t: int, rng: random.Random) -> float:
    return 1_000_000.0 if 600 <= t < 720 else 20_000.0


def ramp(t: int, rng: random.Random) -> float:
    if t < 2400:
        return 600_000.0 * t / 2400
    return max(0.0, 600_000.0 * (3600 - t) / 1200)


def noisy(t: int, rng: random.Random) -> float:
    return 150_000.0 * (1 + rng.uniform(-0.3, 0.3))


PROFILES: dict[str, Callable[[int, random.Random], float]] = {
    "step": step,
    "spike": spike,
    "ramp": ramp,
    "noisy-steady": noisy,
}


# --------------------------------------------------------------------------- rules


@dataclass
class Context:
    """What a rule sees at a poll: the sample history and the true capacity (Flink only)."""

    samples: list[Sample]
    per_replica: float
    partitions: int
    lo: int
    hi: int
    lag_per_replica: int
    commit_interval: float


Rule = Callable[[Context, int, float], int]


def streamherd_rule() -> Rule:
    hist = {"h": History.for_policy(Policy())}

    def rule(ctx: Context, current: int, now: float) -> int:
        p = Policy(
            min_replicas=ctx.lo,
            max_replicas=ctx.hi,
            lag_per_replica=ctx.lag_per_replica,
            commit_interval=ctx.commit_interval,  # from spec.checkpoint.interval
        )
        h = hist["h"].add(ctx.samples[-1])
        d = decide(p, h, current, ctx.partitions, now)
        hist["h"] = h.with_capacity(d.capacity)
        return d.replicas

    return rule


def keda_rule() -> Rule:
    recs: list[tuple[float, int]] = []

    def rule(ctx: Context, current: int, now: float) -> int:
        lag = ctx.samples[-1].lag
        want = math.ceil(lag / ctx.lag_per_replica)
        want = max(ctx.lo, min(ctx.hi, ctx.partitions, want))
        recs.append((now, want))
        while recs and recs[0][0] < now - 300:
            recs.pop(0)
        if want > current:
            return min(want, current + max(4, current))  # HPA default scale-up policy
        return min(current, max(r for _, r in recs))  # 300 s scale-down stabilization

    return rule


def flink_rule() -> Rule:
    last_change = {"t": -1e9}

    def rule(ctx: Context, current: int, now: float) -> int:
        if now - last_change["t"] < 300:
            return current
        window = [s for s in ctx.samples if s.time >= now - 300]
        if len(window) < 2:
            return current
        rate = (window[-1].log_end - window[0].log_end) / max(1.0, window[-1].time - window[0].time)
        need = (rate + ctx.samples[-1].lag / 300) / (ctx.per_replica * 0.7)
        want = max(ctx.lo, min(ctx.hi, ctx.partitions, math.ceil(need)))
        if want != current:
            last_change["t"] = now
        return want

    return rule


RULES: dict[str, Callable[[], Rule]] = {
    "streamherd": streamherd_rule,
    "KEDA+HPA": keda_rule,
    "Flink-like": flink_rule,
}


# --------------------------------------------------------------------------- the model


@dataclass
class Run:
    times: list[int] = field(default_factory=list)
    input: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    changes: int = 0

    def summary(self) -> dict[str, float]:
        behind = sum(
            1 for lag, rate in zip(self.lag, self.input, strict=True) if lag > max(10_000, 5 * rate)
        )
        return {
            "peak lag": max(self.lag),
            "time behind (s)": behind,
            "replica-seconds": sum(self.replicas),
            "scale changes": self.changes,
        }


def simulate(
    profile: Callable[[int, random.Random], float],
    rule: Rule,
    *,
    partitions: int,
    per_replica: float,
    commit_interval: int,
    startup: int,
    lag_per_replica: int,
    seed: int,
) -> Run:
    rng = random.Random(seed)
    end = [0.0] * partitions
    pos = [0.0] * partitions
    committed = [0.0] * partitions
    asked = 1
    active = 1
    pending: list[tuple[int, int]] = []  # (time active, replicas)
    ctx = Context([], per_replica, partitions, 1, 32, lag_per_replica, commit_interval)
    run = Run()
    for t in range(DURATION):
        # workers asked for earlier become active after the start-up delay
        while pending and pending[0][0] <= t:
            active = pending.pop(0)[1]
        rate = profile(t, rng)
        per_partition = rate / partitions
        load = [0] * max(active, 1)
        for i in range(partitions):
            load[i % max(active, 1)] += 1
        for i in range(partitions):
            end[i] += per_partition
            if active > 0:
                can = per_replica / load[i % active]
                pos[i] = min(end[i], pos[i] + can)
        if t % commit_interval == 0:
            committed = list(pos)
        true_lag = sum(end) - sum(pos)
        run.times.append(t)
        run.input.append(rate)
        run.lag.append(true_lag)
        run.replicas.append(asked)
        if t % POLL == POLL - 1:
            parts = tuple(
                PartitionSample("in", i, int(end[i] - committed[i]), int(committed[i]))
                for i in range(partitions)
            )
            ctx.samples.append(
                Sample(
                    float(t),
                    active,
                    sum(p.lag for p in parts),
                    int(sum(end)),
                    int(sum(committed)),
                    parts,
                )
            )
            ctx.samples = ctx.samples[-80:]
            want = rule(ctx, asked, float(t))
            if want != asked:
                run.changes += 1
                if want > asked:
                    pending.append((t + startup, want))
                else:
                    pending = [(tt, min(r, want)) for tt, r in pending]
                    active = min(active, want)
                asked = want
    return run


# --------------------------------------------------------------------------- report


def _fmt(v: float) -> str:
    return f"{v:,.0f}"


def report(results: dict[str, dict[str, Run]], args: argparse.Namespace) -> str:
    lines = [
        BEGIN,
        "## Autoscaling",
        "",
        "A simulation (`bench/autoscaling/bench_autoscaling.py`), not a cluster run: traffic",
        "profiles replayed through a drain model and three scaling rules, every 15 s. The",
        f"model: {args.partitions} partitions, {_fmt(args.per_replica)} records/s per worker "
        f"(a placeholder until calibrated from the engine benchmark), commits every "
        f"{args.commit_interval} s, a new worker consumes {args.startup} s after it is asked "
        f"for; lagPerReplica / lagThreshold {_fmt(args.lag_per_replica)}, replicas 1..32, "
        "scale-down stabilization 300 s. docs/autoscaling.md explains the rules and the model.",
        "",
        "*Time behind*: seconds with lag above 5 s of the current input (at least 10,000).",
        "",
        "| profile | rule | peak lag | time behind (s) | replica-seconds | scale changes |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for profile, runs in results.items():
        for rule, run in runs.items():
            s = run.summary()
            lines.append(
                f"| {profile} | {rule} | {_fmt(s['peak lag'])} | {_fmt(s['time behind (s)'])} "
                f"| {_fmt(s['replica-seconds'])} | {_fmt(s['scale changes'])} |"
            )
    lines += ["", "![replicas and lag per profile](autoscaling-bench.png)", "", END]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    if path.exists():
        current = path.read_text()
    else:
        current = "# Benchmarks\n\nEach section is written by a script in bench/.\n"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = head + text + tail
    else:
        new = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def plot(results: dict[str, dict[str, Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3 * len(results)), squeeze=False)
    for row, (profile, runs) in enumerate(results.items()):
        left, right = axes[row]
        for rule, run in runs.items():
            minutes = [t / 60 for t in run.times]
            left.plot(minutes, run.replicas, label=rule, linewidth=1.2)
            right.plot(minutes, [v / 1e6 for v in run.lag], label=rule, linewidth=1.2)
        some = next(iter(runs.values()))
        twin = left.twinx()
        twin.fill_between(
            [t / 60 for t in some.times], [r / 1e3 for r in some.input], color="grey", alpha=0.15
        )
        twin.set_ylabel("input (k rec/s)", color="grey")
        left.set_title(f"{profile}: replicas")
        right.set_title(f"{profile}: lag (M records)")
        left.set_xlabel("minutes")
        right.set_xlabel("minutes")
        if row == 0:
            left.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=32)
    parser.add_argument("--per-replica", type=float, default=50_000.0)
    parser.add_argument("--commit-interval", type=int, default=10)
    parser.add_argument("--startup", type=int, default=20)
    parser.add_argument("--lag-per-replica", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Run]] = {}
    for name, profile in PROFILES.items():
        results[name] = {}
        for rule_name, make in RULES.items():
            results[name][rule_name] = simulate(
                profile,
                make(),
                partitions=args.partitions,
                per_replica=args.per_replica,
                commit_interval=args.commit_interval,
                startup=args.startup,
                lag_per_replica=args.lag_per_replica,
                seed=args.seed,
            )
    text = report(results, args)
    print(text)
    if not args.no_write:
        write_section(text, DOCS / "benchmarks.md")
        plot(results, DOCS / "autoscaling-bench.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
