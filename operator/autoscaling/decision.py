"""The scaling decision: how many workers a pipeline needs, from its measured lag.

A pure function, ``decide(policy, history, current_replicas, partitions, now)``: no I/O, no
clock, no randomness, so the same inputs give the same answer in the operator, in the unit
and property tests and in the benchmark (bench/autoscaling/). The poller
(``streamherd.operator.autoscaling.poller``) feeds it samples measured by the lag probe.

The rules (docs/autoscaling.md explains them and compares them with KEDA, HPA and Flink):

- bounds: never below ``minReplicas`` nor above ``maxReplicas``, and never above the source's
  partition count (a consumer without a partition is idle), except that an explicit
  ``minReplicas`` larger than the partition count is honoured;
- scale up promptly, in one decision, to the replicas needed to absorb the input *and* drain
  the backlog within ``catch_up_seconds`` once the per-replica throughput is known (measured
  while the workers were saturated, like the Flink autoscaler's catch-up), else to
  ``ceil(lag / lagPerReplica)`` (KEDA's rule); bounded by max and the partitions (with
  ``jump_to_need`` off: at most ``max(4, current)`` more per decision, the HPA default);
  then rounded up so partitions spread evenly over the replicas;
- scale down only when *every* sample of the stabilization window needed fewer replicas, and
  only to the largest number any of them needed (the HPA's stabilization): together with the
  scale-up threshold this is a dead band, so noise around a steady load does not flap; never
  below what the input needs at the best per-replica rate the workers have shown;
- scale to zero (``minReplicas`` 0) after ``idleTimeout`` with neither lag nor input; wake up
  from zero as soon as lag exceeds ``activationLag``;
- a partition whose position does not move while it has lag and others advance is *stuck*:
  it is reported, and its lag is not counted as a reason to add workers (more workers will not
  unstick a poison record or a hung consumer).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from streamherd.workers.config import parse_duration

if TYPE_CHECKING:
    from streamherd.operator.api.v1alpha1 import Autoscaling, StreamPipeline
    from streamherd.operator.lagprobe import GroupLag

# Reasons, low-cardinality on purpose: they label a Prometheus counter and Events.
NO_DATA: Final = "NoData"
BOUNDS: Final = "Bounds"
SCALE_UP: Final = "ScaleUp"
WAKE_UP: Final = "WakeUp"
SCALE_DOWN: Final = "ScaleDown"
SCALE_TO_ZERO: Final = "ScaleToZero"
STEADY: Final = "Steady"
REASONS: Final = (NO_DATA, BOUNDS, SCALE_UP, WAKE_UP, SCALE_DOWN, SCALE_TO_ZERO, STEADY)

PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Policy:
    """spec.autoscaling in seconds, plus tuning knobs the CRD does not expose (yet)."""

    min_replicas: int = 1
    max_replicas: int = 10
    lag_per_replica: int = 1000
    activation_lag: int = 1
    scale_down_stabilization: float = 300.0
    idle_timeout: float = 600.0
    poll_interval: float = 15.0
    # Backlog drained within this time when sizing a scale-up (Flink: catch-up duration).
    catch_up_seconds: float = 120.0
    # Size for this fraction of the measured per-replica throughput (headroom).
    target_utilization: float = 0.8
    # At most this many replicas (or the current count, whichever is larger) added at once,
    # unless `jump_to_need` lets a scale-up go straight to what the backlog needs.
    max_step_up: int = 4
    # Scale up (and wake up) straight to the replicas that absorb the input and drain the
    # backlog within `catch_up_seconds` (bounded by max and the partitions), instead of
    # the HPA's +max(4, n) per poll: a spike is drained by the workers it needs at once.
    jump_to_need: bool = True
    # Round replica counts up so every replica gets the same number of partitions.
    align_to_partitions: bool = True
    # Workers commit offsets once per checkpoint (spec.checkpoint.interval): up to this many
    # seconds of input show as lag on a worker that keeps up. That much is not backlog.
    commit_interval: float = 0.0

    @classmethod
    def from_spec(cls, spec: Autoscaling, **tuning: float | int | bool) -> Policy:
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            lag_per_replica=spec.lag_per_replica,
            activation_lag=spec.activation_lag,
            scale_down_stabilization=parse_duration(spec.scale_down_stabilization),
            idle_timeout=parse_duration(spec.idle_timeout),
            poll_interval=parse_duration(spec.poll_interval),
            **tuning,  # type: ignore[arg-type]
        )

    @property
    def rate_window(self) -> float:
        """How far back rates (input, drain) are measured."""
        return max(60.0, 4 * self.poll_interval)

    @property
    def stuck_after(self) -> float:
        """A partition with lag whose position has not moved this long is stuck."""
        return max(90.0, 6 * self.poll_interval)


@dataclass(frozen=True)
class PartitionSample:
    topic: str
    partition: int
    lag: int
    position: int  # log end - lag: where the group really is


@dataclass(frozen=True)
class Sample:
    """One lag measurement of one pipeline."""

    time: float
    replicas: int  # workers running when it was measured
    lag: int
    log_end: int  # sum of log end offsets: grows with the input
    position: int  # sum of positions: grows with what the workers processed
    partitions: tuple[PartitionSample, ...] = ()

    @classmethod
    def from_group_lag(cls, g: GroupLag, replicas: int, time: float | None = None) -> Sample:
        return cls(
            time=g.measured_at if time is None else time,
            replicas=replicas,
            lag=g.total,
            log_end=g.log_end_total,
            position=g.position_total,
            partitions=tuple(
                PartitionSample(p.topic, p.partition, p.lag, p.log_end - p.lag)
                for p in g.partitions
            ),
        )


@dataclass(frozen=True)
class History:
    """A bounded window of samples, and the per-replica throughput learned so far."""

    samples: tuple[Sample, ...] = ()
    capacity: float | None = None  # records/s one replica processed when saturated
    horizon: float = 900.0
    max_samples: int = 256

    @classmethod
    def for_policy(cls, policy: Policy) -> History:
        horizon = (
            max(policy.scale_down_stabilization, policy.idle_timeout, policy.stuck_after)
            + 2 * policy.poll_interval
        )
        return cls(horizon=horizon)

    def add(self, sample: Sample) -> History:
        kept = [
            s for s in self.samples if s.time >= sample.time - self.horizon and s.time < sample.time
        ]
        kept.append(sample)
        return replace(self, samples=tuple(kept[-self.max_samples :]))

    def with_capacity(self, capacity: float | None) -> History:
        return replace(self, capacity=capacity)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # one of REASONS
    message: str = ""
    stuck_partitions: tuple[PartitionKey, ...] = ()
    lag: int | None = None
    input_rate: float | None = None
    drain_rate: float | None = None
    capacity: float | None = None  # per-replica throughput estimate, for History.capacity


# --------------------------------------------------------------------------- helpers


def upper_bound(policy: Policy, partitions: int) -> int:
    """Most replicas that make sense: max, the partition count, an explicit min.

    ``partitions <= 0`` means not known (nothing measured yet; a topic has at least one):
    then only min and max apply. Capping at 0 partitions would scale a pipeline with
    ``minReplicas: 0`` to zero merely because its lag could not be measured.
    """
    if partitions <= 0:
        return max(policy.min_replicas, policy.max_replicas)
    return max(policy.min_replicas, min(policy.max_replicas, partitions))


def clamp(policy: Policy, partitions: int, n: int) -> int:
    return min(max(n, policy.min_replicas), upper_bound(policy, partitions))


def align(n: int, partitions: int) -> int:
    """The fewest replicas >= n that give no replica more partitions than n would.

    With 12 partitions, 5 replicas leave some with 3 partitions, as 4 would; needing more
    than 4 therefore means 6. Consumers are the unit of parallelism, partitions the grain.
    """
    if n <= 0 or partitions <= 0 or n >= partitions:
        return n
    return math.ceil(partitions / (partitions // n))


def _rate(a: Sample, b: Sample, attr: str) -> float:
    """Growth per second of log_end (the input) or position (the drain) from a to b, over
    the partitions both measured, each at least 0: a measurement without one topic (a
    metadata error), a topic added to the source, or one created again changed the sums by
    a whole topic, and one poll's "input" of millions a second jumped to maxReplicas (a
    helper's finding). Sums when the samples carry no partitions."""
    dt = b.time - a.time
    if dt <= 0:
        return 0.0
    if a.partitions and b.partitions:
        before = {(p.topic, p.partition): p for p in a.partitions}
        grown = 0
        for p in b.partitions:
            q = before.get((p.topic, p.partition))
            if q is None:
                continue
            if attr == "log_end":
                grown += max(0, (p.position + p.lag) - (q.position + q.lag))
            else:
                grown += max(0, p.position - q.position)
        return grown / dt
    grown = b.log_end - a.log_end if attr == "log_end" else b.position - a.position
    return max(0.0, grown / dt)


def stuck_partitions(samples: Sequence[Sample], now: float, after: float) -> set[PartitionKey]:
    """Partitions with lag whose position has not moved for `after` s while others moved."""
    old = [s for s in samples if s.time <= now - after and s.partitions]
    if not old or not samples[-1].partitions:
        return set()
    then = {(p.topic, p.partition): p for p in old[-1].partitions}
    latest = samples[-1]
    window = [s for s in samples if s.time >= old[-1].time]
    moved, still = set(), set()
    for p in latest.partitions:
        key = (p.topic, p.partition)
        before = then.get(key)
        if before is None:
            continue
        if p.position > before.position:
            moved.add(key)
        elif all(q.lag > 0 for s in window for q in s.partitions if (q.topic, q.partition) == key):
            still.add(key)
    return still if moved else set()


def _lag_without(sample: Sample, excluded: set[PartitionKey]) -> int:
    if not excluded:
        return sample.lag
    return sample.lag - sum(p.lag for p in sample.partitions if (p.topic, p.partition) in excluded)


# --------------------------------------------------------------------------- the decision


def decide(
    policy: Policy,
    history: History | Sequence[Sample],
    current_replicas: int,
    partitions: int,
    now: float,
) -> Decision:
    """How many replicas the pipeline should run now, and why."""
    hist = history if isinstance(history, History) else History(tuple(history))
    samples = [s for s in hist.samples if s.time <= now]
    n = current_replicas
    hi = upper_bound(policy, partitions)
    bounded = clamp(policy, partitions, n)

    # Without a recent measurement nothing is known about the load: hold (within bounds).
    if not samples or now - samples[-1].time > 3 * policy.poll_interval + 5:
        why = "no recent lag measurement"
        if bounded != n:
            return Decision(bounded, BOUNDS, f"{why}; replicas brought within bounds")
        return Decision(n, NO_DATA, why, capacity=hist.capacity)

    latest = samples[-1]
    stuck = stuck_partitions(samples, now, policy.stuck_after)
    recent = [s for s in samples if s.time >= now - policy.rate_window]
    # The rate window's first sample, or (the window holding the latest alone: after an
    # outage of the probe, or a jump of the clock) the one before it: a rate over a longer
    # span is still the input's, where none made the first answer's allowance 0 and its
    # lag all backlog (a scale-up, then undone: a helper's finding).
    base = recent[0] if len(recent) > 1 else samples[-2] if len(samples) > 1 else None
    input_rate = _rate(base, latest, "log_end") if base is not None else 0.0
    drain_rate = _rate(base, latest, "position") if base is not None else 0.0
    # Scale-up sizes for the larger of the window's rate and the last interval's: a load
    # step shows in the last interval at once, in the window's average only gradually.
    last_rate = _rate(samples[-2], latest, "log_end") if len(samples) > 1 else 0.0
    up_rate = max(input_rate, last_rate)
    # Backlog: the lag minus what only reflects the commit interval (none at zero workers:
    # nobody commits, so all of it is real).
    allowance = input_rate * policy.commit_interval if n > 0 else 0.0
    lag = max(0, int(_lag_without(latest, stuck) - allowance))
    capacity = _capacity(policy, samples=samples, stuck=stuck, learned=hist.capacity)
    stuck_keys = tuple(sorted(stuck))

    def result(replicas: int, reason: str, message: str) -> Decision:
        # Every path ends inside the bounds, whatever its own arithmetic said.
        replicas = clamp(policy, partitions, replicas)
        if stuck_keys:
            message += f"; stuck partitions: {', '.join(f'{t}[{p}]' for t, p in stuck_keys)}"
        return Decision(
            replicas,
            reason,
            message,
            stuck_keys,
            latest.lag,
            input_rate,
            drain_rate,
            capacity,
        )

    step_cap = hi if policy.jump_to_need else n + max(policy.max_step_up, n)

    # Running workers commit once per checkpoint, so part of their lag is only commit
    # staleness (input x commit interval). With a single sample the input rate, hence the
    # backlog, is unknown: wait one poll rather than scale on staleness and undo it later.
    if n > 0 and policy.commit_interval > 0 and len(samples) < 2:
        if bounded != n:
            return result(bounded, BOUNDS, f"replicas brought within [{policy.min_replicas}, {hi}]")
        return result(n, STEADY, f"lag {lag}: measuring the input rate (first sample)")

    # ---- at zero: wake up on lag above the activation threshold
    if n == 0:
        if lag > policy.activation_lag and hi > 0:
            need = max(1, _need_up(policy, lag, up_rate, capacity, partitions))
            target = min(need, step_cap, hi)
            return result(target, WAKE_UP, f"lag {lag} > activationLag {policy.activation_lag}")
        if bounded != n:
            return result(bounded, BOUNDS, f"minReplicas is {policy.min_replicas}")
        return result(0, STEADY, f"idle: lag {lag} <= activationLag {policy.activation_lag}")

    # ---- scale up
    need = _need_up(policy, lag, up_rate, capacity, partitions)
    if capacity and _need_up(policy, lag, up_rate, capacity, partitions, utilization=1.0) <= n:
        # Sized at the target utilization, but triggered only when the workers are short at
        # full speed: the band between the two is the hysteresis that keeps noise from
        # flapping (scale-down sizes at the target utilization too).
        need = n
    growing = (
        len(recent) > 2
        and all(b.lag > a.lag for a, b in zip(recent[-3:], recent[-2:], strict=False))
        and lag > n * policy.lag_per_replica
    )
    if growing and need <= n:
        # The throughput estimate is evidently too high: lag is above target and rising.
        need = align(n + 1, partitions) if policy.align_to_partitions else n + 1
    if need > n and n < hi:
        target = max(min(need, step_cap, hi), bounded)
        how = (
            f"input {up_rate:.0f}/s + backlog {lag} over {policy.catch_up_seconds:.0f}s "
            f"at {capacity:.0f}/s per replica"
            if capacity
            else f"lag {lag} > {n} x lagPerReplica {policy.lag_per_replica}"
        )
        return result(
            target, SCALE_UP, f"{n} -> {target}: {how}" + (" (rising)" if growing else "")
        )

    # ---- scale to zero
    if policy.min_replicas == 0 and _idle(samples, now, policy.idle_timeout):
        return result(0, SCALE_TO_ZERO, f"no lag and no input for {policy.idle_timeout:.0f}s")

    # ---- scale down: every sample of the window must agree, to the largest need among them
    window = [s for s in samples if s.time >= now - policy.scale_down_stabilization]
    # Covered: measured since the window's start, with no gap a poll would not leave. After
    # an outage longer than the window, its only sample said "at most 2 needed over the
    # last 300s" of one answer, and the next poll scaled back up (a helper's finding).
    edge = now - policy.scale_down_stabilization
    gap = 3 * policy.poll_interval + 5
    times = [edge, *(s.time for s in window)]
    covered = samples[0].time <= edge + policy.poll_interval and all(
        b - a <= gap for a, b in itertools.pairwise(times)
    )
    # A scale-up inside the window (a sample taken with fewer workers than now) is not
    # undone until a whole window has passed since: the HPA's rule (the largest decision of
    # the window wins). A scale-up sized on a noisy interval would otherwise be reversed as
    # soon as the backlog it was sized for had drained (1 -> 4 -> 2 within 200 s).
    raised = any(s.replicas < n for s in window)
    if covered and not raised and n > max(policy.min_replicas, 1):
        # Without a measured throughput, size the input with the best per-replica rate the
        # workers have shown (a lower bound of what they can do): never below what the
        # input is proven to need, so going down cannot starve the workers and bounce back.
        per_replica = capacity or _proven_rate(policy, samples)
        most = 0
        for prev, s in zip([None, *window[:-1]], window, strict=False):
            rate = _rate(prev, s, "log_end") if prev is not None else input_rate
            backlog = max(0, int(_lag_without(s, stuck) - rate * policy.commit_interval))
            most = max(most, _need_steady(policy, backlog, rate, per_replica))
        if policy.align_to_partitions:
            most = align(most, partitions)
        target = max(clamp(policy, partitions, most), 1)
        if target < n:
            return result(
                target,
                SCALE_DOWN,
                f"{n} -> {target}: at most {most} needed over the last "
                f"{policy.scale_down_stabilization:.0f}s",
            )

    if bounded != n:
        return result(bounded, BOUNDS, f"replicas brought within [{policy.min_replicas}, {hi}]")
    return result(n, STEADY, f"lag {lag} within target for {n} replicas")


def _need_up(
    policy: Policy,
    lag: int,
    input_rate: float,
    capacity: float | None,
    partitions: int,
    *,
    utilization: float | None = None,
) -> int:
    """Replicas to absorb the input and drain the backlog in time (or KEDA's lag rule)."""
    if capacity:
        rate = input_rate + lag / policy.catch_up_seconds
        usable = capacity * (policy.target_utilization if utilization is None else utilization)
        need = math.ceil(rate / usable)
    else:
        need = math.ceil(lag / policy.lag_per_replica)
    return align(need, partitions) if policy.align_to_partitions else need


def _need_steady(policy: Policy, lag: int, input_rate: float, capacity: float | None) -> int:
    """Replicas one sample needed, for scale-down: its lag target and its input rate."""
    need = math.ceil(lag / policy.lag_per_replica)
    if capacity:
        need = max(need, math.ceil(input_rate / (capacity * policy.target_utilization)))
    if lag > 0 or input_rate > 0:
        need = max(need, 1)
    return need


def _proven_rate(policy: Policy, samples: Sequence[Sample]) -> float | None:
    """The most records/s per replica the workers processed over any poll of the history.

    A lower bound of their throughput: committed positions may lag by one commit interval,
    so each interval's replica-seconds are stretched by it. None if nothing was processed.
    """
    best = 0.0
    for a, b in itertools.pairwise(samples):
        length = b.time - a.time
        replica_seconds = (a.replicas + b.replicas) / 2 * (length + policy.commit_interval)
        if length > 0 and replica_seconds > 0:
            best = max(best, (b.position - a.position) / replica_seconds)
    return best or None


def _idle(samples: Sequence[Sample], now: float, timeout: float) -> bool:
    """Neither lag nor input over the whole idle timeout (and the history covers it)."""
    if samples[0].time > now - timeout:
        return False
    window = [s for s in samples if s.time >= now - timeout]
    before = [s for s in samples if s.time < now - timeout]
    base = before[-1] if before else window[0]
    return all(s.lag == 0 and s.log_end == base.log_end for s in window)


def _capacity(
    policy: Policy,
    *,
    samples: Sequence[Sample],
    stuck: set[PartitionKey],
    learned: float | None,
) -> float | None:
    """Per-replica throughput, from the latest span if the workers were saturated in it.

    The span ends at the latest sample and reaches back at least a poll interval and three
    commit intervals (committed positions move in steps, one per checkpoint, so a shorter
    span measures the steps, not the speed). Saturated: at every sample of the span the
    backlog (lag minus the commit-interval allowance) was above that sample's per-replica
    target, or the backlog rose across the span to a sizeable fraction of it. Then what was
    drained, divided by the replica-seconds spent (the replica counts the samples saw,
    averaged per interval, so a span across a scale-up still counts), is what one worker
    can do, not what the input let it do. Otherwise the learned value stands. Workers still
    starting or rebalancing make the estimate low, which errs on the side of more workers
    and is corrected by later saturated spans.

    Until a first value is learned, a span of one poll interval is used as well, as a lower
    bound: its committed positions may be up to one commit interval older at its end than
    its length says, so what was drained is divided by replica-seconds stretched by one
    commit interval. A load that arrives on too few workers is thus measured before the
    first scale-up lands; without it the scale-down after a spike had no throughput to size
    the input with and went to the lag rule's minimum, then straight back up (a flap).
    """
    observed = _span_throughput(policy, samples, stuck, 3 * policy.commit_interval, False)
    if observed is None and learned is None:
        observed = _span_throughput(policy, samples, stuck, 0.0, True)
    if observed is None:
        return learned
    # Smooth, but let a new measurement weigh: throughput changes with the data.
    return observed if learned is None else 0.5 * learned + 0.5 * observed


def _span_throughput(
    policy: Policy,
    samples: Sequence[Sample],
    stuck: set[PartitionKey],
    min_span: float,
    lower_bound: bool,
) -> float | None:
    """Records/s per replica over the latest span of at least `min_span` (and a poll), if
    the workers were saturated over it (see ``_capacity``); else None."""
    if len(samples) < 2:
        return None
    b = samples[-1]
    span = max(policy.poll_interval, min_span)
    older = [s for s in samples[:-1] if s.time <= b.time - span + 1e-9]
    if not older:
        return None
    a = older[-1]
    seg = [s for s in samples if s.time >= a.time]
    allowance = _rate(a, b, "log_end") * policy.commit_interval
    backlog = [_lag_without(s, stuck) - allowance for s in seg]
    above = all(
        lag > max(s.replicas, 1) * policy.lag_per_replica
        for lag, s in zip(backlog, seg, strict=True)
    )
    rising = backlog[-1] > backlog[0] and backlog[-1] * 2 > b.replicas * policy.lag_per_replica
    replica_seconds = sum(
        (p.replicas + q.replicas) / 2 * (q.time - p.time) for p, q in itertools.pairwise(seg)
    )
    drained = b.position - a.position
    if not (above or rising) or drained <= 0 or replica_seconds <= 0:
        return None
    if lower_bound:
        length = b.time - a.time
        replica_seconds *= (length + policy.commit_interval) / length
    return drained / replica_seconds


def policy_for(pipeline: StreamPipeline, **tuning: float | int | bool) -> Policy:
    """The policy of a pipeline: its spec.autoscaling, its checkpoint (commit) interval."""
    merged: dict[str, float | int | bool] = {
        "commit_interval": parse_duration(pipeline.spec.checkpoint.interval),
        **tuning,
    }
    return Policy.from_spec(pipeline.spec.autoscaling, **merged)


__all__ = [
    "REASONS",
    "Decision",
    "History",
    "PartitionSample",
    "Policy",
    "Sample",
    "align",
    "clamp",
    "decide",
    "policy_for",
    "stuck_partitions",
    "upper_bound",
]
