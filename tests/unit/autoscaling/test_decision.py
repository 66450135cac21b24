"""The scaling decision (operator/autoscaling/decision.py): tables and properties."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.api.v1alpha1 import Autoscaling
from streamherd.operator.autoscaling.decision import (
    BOUNDS,
    NO_DATA,
    REASONS,
    SCALE_DOWN,
    SCALE_TO_ZERO,
    SCALE_UP,
    STEADY,
    WAKE_UP,
    History,
    PartitionSample,
    Policy,
    Sample,
    align,
    decide,
    upper_bound,
)

POLL = 15.0


def flat(lags: list[int], *, replicas: int = 1, input_per_poll: int = 0, t0: float = 0.0):
    """Samples every POLL seconds with these total lags and a steady input."""
    out, end = [], 1_000_000
    for i, lag in enumerate(lags):
        end += input_per_poll
        out.append(Sample(t0 + i * POLL, replicas, lag, end, end - lag))
    return out


def now_of(samples: list[Sample]) -> float:
    return samples[-1].time


# --------------------------------------------------------------------------- tables


def test_no_data_holds_and_bounds_still_apply() -> None:
    p = Policy(min_replicas=1, max_replicas=5)
    assert decide(p, [], 3, 12, 100.0).replicas == 3
    assert decide(p, [], 3, 12, 100.0).reason == NO_DATA
    # A stale sample is no data either: never act on old lag.
    old = flat([50_000], replicas=3)
    assert decide(p, old, 3, 12, 1000.0).reason == NO_DATA
    d = decide(p, [], 9, 12, 100.0)
    assert (d.replicas, d.reason) == (5, BOUNDS)


@pytest.mark.parametrize("minimum", [0, 1])
def test_no_data_with_unknown_partitions_holds(minimum: int) -> None:
    """Found by the e2e tier: the first poll of a new pipeline failed (its group's
    coordinator was still loading), the partition count was unknown (0), and the partition
    cap brought the one worker down to minReplicas 0 ("Bounds"): a measurement failure must
    never scale a pipeline."""
    p = Policy(min_replicas=minimum, max_replicas=4)
    d = decide(p, [], 1, 0, 100.0)
    assert (d.replicas, d.reason) == (1, NO_DATA)
    assert decide(p, [], 6, 0, 100.0).replicas == 4  # min and max still apply


STEPPED = Policy(jump_to_need=False)  # the HPA-like bounded steps: +max(4, n) per decision


@pytest.mark.parametrize(
    ("lag", "current", "partitions", "policy", "expected", "reason"),
    [
        (5_000, 1, 10, STEPPED, 5, SCALE_UP),  # ceil(5000/1000), step max(4,1)
        (50_000, 2, 64, replace(STEPPED, max_replicas=100), 6, SCALE_UP),  # step: 2 + 4
        (50_000, 8, 64, replace(STEPPED, max_replicas=100), 16, SCALE_UP),  # step: doubles
        (5_000, 1, 12, STEPPED, 5, SCALE_UP),  # 5 -> aligned 6, then step-bounded to 5
        # jump_to_need (the default): straight to what the backlog needs
        (5_000, 1, 10, Policy(), 5, SCALE_UP),
        (50_000, 2, 64, Policy(max_replicas=100), 64, SCALE_UP),  # 50 -> aligned 64
        (50_000, 8, 64, Policy(max_replicas=40), 40, SCALE_UP),  # never above max
        (30_000, 1, 64, Policy(max_replicas=100), 32, SCALE_UP),  # 30 -> aligned 32
        (5_000, 1, 12, Policy(), 6, SCALE_UP),  # 5 -> aligned 6
        (50_000, 2, 3, Policy(), 3, SCALE_UP),  # never above the partitions
        (50_000, 2, 64, Policy(max_replicas=4), 4, SCALE_UP),  # never above max
        (4_000, 2, 12, Policy(), 4, SCALE_UP),  # 4 divides 12
        (4_500, 2, 12, Policy(), 6, SCALE_UP),  # 5 replicas would leave 3 partitions on some
        (900, 1, 12, Policy(), 1, STEADY),  # below target
        (1_000, 1, 12, Policy(), 1, STEADY),  # at target
        (0, 1, 2, Policy(min_replicas=4, max_replicas=8), 4, BOUNDS),  # explicit min honoured
        (0, 12, 12, Policy(max_replicas=10), 10, BOUNDS),  # max lowered under us
    ],
)
def test_scale_up_table(
    lag: int, current: int, partitions: int, policy: Policy, expected: int, reason: str
) -> None:
    d = decide(policy, flat([lag], replicas=current), current, partitions, 0.0)
    assert (d.replicas, d.reason) == (expected, reason), d.message


def test_first_sample_with_commit_interval_waits_for_the_input_rate() -> None:
    # 1 worker, 10 s commits: 300k of lag may be only 10 s of 30k/s input not yet committed.
    p = Policy(commit_interval=10.0, lag_per_replica=50_000, max_replicas=8)
    one = flat([300_000], replicas=1)
    d = decide(p, one, 1, 8, now_of(one))
    assert (d.replicas, d.reason) == (1, STEADY)
    assert "first sample" in d.message
    # Two samples: 30k/s of input, so 300k is the commit allowance, not backlog.
    two = flat([300_000, 300_000], replicas=1, input_per_poll=450_000)
    assert decide(p, two, 1, 8, now_of(two)).reason == STEADY
    # ...and a backlog beyond it scales up at once.
    two = flat([300_000, 900_000], replicas=1, input_per_poll=450_000)
    assert decide(p, two, 1, 8, now_of(two)).reason == SCALE_UP
    # At zero workers nobody commits: all the lag is backlog, act on the first sample.
    zero = Policy(min_replicas=0, commit_interval=10.0, lag_per_replica=50_000)
    d = decide(zero, flat([300_000], replicas=0), 0, 8, 0.0)
    assert (d.replicas, d.reason) == (8, WAKE_UP)  # 6 -> aligned to 8 partitions: 8


def test_a_spike_gets_the_replicas_it_needs_in_one_decision() -> None:
    # 1 worker idling at 20k/s, then a poll sees 14 s of a 1M/s spike: KEDA's HPA would add
    # 4, then double every 15 s; the catch-up jump goes to the 32 the backlog needs at once.
    p = Policy(max_replicas=32, lag_per_replica=50_000, commit_interval=10.0)
    quiet = flat([200_000] * 8, replicas=1, input_per_poll=300_000)
    spike = Sample(quiet[-1].time + POLL, 1, 14_000_000, quiet[-1].log_end + 14_300_000,
                   quiet[-1].log_end + 14_300_000 - 14_000_000)  # fmt: skip
    d = decide(p, [*quiet, spike], 1, 32, spike.time)
    assert (d.replicas, d.reason) == (32, SCALE_UP), d.message
    stepped = replace(p, jump_to_need=False)
    assert decide(stepped, [*quiet, spike], 1, 32, spike.time).replicas == 5


@pytest.mark.parametrize(
    ("lag", "activation", "minimum", "expected", "reason"),
    [
        (0, 1, 0, 0, STEADY),
        (1, 1, 0, 0, STEADY),  # wake only *above* activationLag
        (2, 1, 0, 1, WAKE_UP),
        (3_500, 1, 0, 4, WAKE_UP),  # straight to what the lag needs (4 divides 12)
        (90_000, 1, 0, 10, WAKE_UP),  # straight to what it needs, up to max (10)
        (500, 1_000, 0, 0, STEADY),
        (0, 1, 1, 1, BOUNDS),  # at zero with min 1
    ],
)
def test_zero_and_wake_up(lag: int, activation: int, minimum: int, expected: int, reason: str):
    p = Policy(min_replicas=minimum, activation_lag=activation)
    d = decide(p, flat([lag], replicas=0), 0, 12, 0.0)
    assert (d.replicas, d.reason) == (expected, reason), d.message


def test_scale_to_zero_only_after_idle_timeout_without_lag_or_input() -> None:
    p = Policy(min_replicas=0, idle_timeout=600, scale_down_stabilization=300)
    idle = flat([0] * 45, replicas=2)  # 660 s of nothing
    d = decide(p, idle, 2, 12, now_of(idle))
    assert (d.replicas, d.reason) == (0, SCALE_TO_ZERO)
    # Same, but the history covers only 300 s: the stabilization allows going down to 1,
    # the idle timeout does not allow zero yet.
    short = flat([0] * 22, replicas=2)
    d = decide(p, short, 2, 12, now_of(short))
    assert (d.replicas, d.reason) == (1, SCALE_DOWN)
    # Input but no lag (the workers keep up): not idle.
    busy = flat([0] * 45, replicas=1, input_per_poll=10)
    assert decide(p, busy, 1, 12, now_of(busy)).replicas == 1
    # min 1: never zero.
    assert decide(Policy(min_replicas=1), idle, 1, 12, now_of(idle)).replicas == 1


def test_scale_down_waits_for_the_whole_window_and_goes_to_the_recent_max() -> None:
    p = Policy(scale_down_stabilization=300)
    calm = flat([100] * 25, replicas=6)  # 360 s of low lag
    d = decide(p, calm, 6, 12, now_of(calm))
    assert (d.replicas, d.reason) == (1, SCALE_DOWN)
    # One sample in the window needed 3 (aligned: 3 divides 12).
    bumpy = flat([100] * 10 + [2_500] + [100] * 14, replicas=6)
    d = decide(p, bumpy, 6, 12, now_of(bumpy))
    assert (d.replicas, d.reason) == (3, SCALE_DOWN)
    # History shorter than the window: hold.
    young = flat([100] * 10, replicas=6)
    assert decide(p, young, 6, 12, now_of(young)).reason == STEADY


def test_rising_lag_above_target_scales_up_by_at_least_one() -> None:
    rising = flat([2_100, 2_300, 2_600], replicas=3)
    d = decide(Policy(), rising, 3, 30, now_of(rising))
    assert d.reason == STEADY  # 2600 < 3 x 1000: within target, rising or not
    rising = flat([3_100, 3_300, 3_600], replicas=3)
    d = decide(Policy(), rising, 3, 30, now_of(rising))
    assert (d.replicas, d.reason) == (5, SCALE_UP)  # ceil(3.6)=4 -> aligned to 30: 5


def _saturated(replicas: int, per_replica: float, input_rate: float, lag0: int) -> list[Sample]:
    out, end, pos = [], 10_000_000.0, 10_000_000.0 - lag0
    for i in range(6):
        out.append(Sample(i * POLL, replicas, int(end - pos), int(end), int(pos)))
        end += input_rate * POLL
        pos += replicas * per_replica * POLL
    return out


def test_capacity_is_learned_when_saturated_and_sizes_the_catch_up() -> None:
    # 2 replicas drain 1000/s each; input 3000/s; lag grows by 15000 per poll.
    samples = _saturated(2, 1000.0, 3000.0, 50_000)
    p = Policy(max_replicas=50, catch_up_seconds=120, target_utilization=0.8)
    d = decide(p, samples, 2, 64, now_of(samples))
    assert d.capacity == pytest.approx(1000.0)
    lag = samples[-1].lag
    expected = -(-(3000 + lag / 120) // 800)  # ceil((input + lag/T) / (cap * util))
    assert d.reason == SCALE_UP
    assert d.replicas == align(int(expected), 64)  # straight there (jump_to_need)
    stepped = decide(replace(p, jump_to_need=False), samples, 2, 64, now_of(samples))
    assert stepped.replicas == min(int(expected), 2 + 4)
    # Learned capacity is kept for later decisions (History.capacity).
    h = History(tuple(flat([0] * 3, replicas=2)), capacity=1000.0)
    assert decide(p, h, 2, 64, 30.0).capacity == 1000.0


def test_first_capacity_from_one_saturated_poll_is_a_lower_bound() -> None:
    # 1 worker doing 80k/s under 150k/s of input, 10 s commits, polls every 15 s: the
    # committed position moves in 10 s steps, so one poll may show 10 s or 20 s of work.
    p = Policy(max_replicas=32, lag_per_replica=50_000, commit_interval=10.0)
    for phase in range(15):
        samples = []
        for i in range(1, 3):
            t = i * POLL + phase
            committed_at = (t // 10) * 10
            end = 150_000 * t
            pos = 80_000 * committed_at
            samples.append(Sample(float(t), 1, int(end - pos), int(end), int(pos)))
        d = decide(p, samples, 1, 32, samples[-1].time)
        if d.capacity is not None:
            assert 0.3 * 80_000 <= d.capacity <= 80_000, (phase, d.capacity)
        assert d.reason == SCALE_UP


def test_capacity_avoids_keda_overshoot_when_the_backlog_drains_in_time() -> None:
    # 4 replicas at 50k/s each, 20k/s input, a 16.5M backlog left: it drains within the
    # 120 s catch-up target (157.5k/s needed, 4 x 50k x 0.8 = 160k/s there). KEDA's rule would
    # ask for 16500 replicas; the catch-up rule keeps 4.
    samples = _saturated(4, 50_000.0, 20_000.0, 30_000_000)
    d = decide(Policy(max_replicas=1000), samples, 4, 1000, now_of(samples))
    assert d.capacity == pytest.approx(50_000.0)
    assert d.replicas == 4 and d.reason == STEADY


def _partitioned(
    t: float, stuck_lag: int, stuck_pos: int, other_lag: int, other_pos: int
) -> Sample:
    parts = (
        PartitionSample("in", 0, stuck_lag, stuck_pos),
        PartitionSample("in", 1, other_lag, other_pos),
    )
    return Sample(
        t,
        1,
        stuck_lag + other_lag,
        stuck_pos + stuck_lag + other_pos + other_lag,
        stuck_pos + other_pos,
        parts,
    )


def test_stuck_partition_is_reported_and_not_scaled_for() -> None:
    samples = [
        _partitioned(i * POLL, 20_000, 500, 300, 1_000 + 2_000 * i) for i in range(9)
    ]  # 120 s: partition 0 never moves, partition 1 keeps up
    d = decide(Policy(), samples, 1, 2, now_of(samples))
    assert d.stuck_partitions == (("in", 0),)
    assert d.replicas == 1 and d.reason == STEADY
    assert "stuck partitions: in[0]" in d.message
    # Everything still (no worker consumes at all): nothing is singled out as stuck.
    frozen = [_partitioned(i * POLL, 20_000, 500, 300, 1_000) for i in range(9)]
    d = decide(Policy(), frozen, 1, 2, now_of(frozen))
    assert d.stuck_partitions == () and d.reason == SCALE_UP


def test_align() -> None:
    assert [align(n, 12) for n in range(14)] == [0, 1, 2, 3, 4, 6, 6, 12, 12, 12, 12, 12, 12, 13]
    assert align(3, 0) == 3


def test_policy_from_spec() -> None:
    p = Policy.from_spec(
        Autoscaling(
            min_replicas=0,
            max_replicas=7,
            lag_per_replica=500,
            activation_lag=10,
            scale_down_stabilization="2m",
            idle_timeout="1h",
            poll_interval="5s",
        ),
        catch_up_seconds=60.0,
    )
    assert (p.min_replicas, p.max_replicas, p.lag_per_replica, p.activation_lag) == (0, 7, 500, 10)
    assert (p.scale_down_stabilization, p.idle_timeout, p.poll_interval) == (120, 3600, 5)
    assert p.catch_up_seconds == 60.0


# --------------------------------------------------------------------------- properties

policies = st.builds(
    lambda lo, span, target, act, stab, idle: Policy(
        min_replicas=lo,
        max_replicas=max(1, lo + span),
        lag_per_replica=target,
        activation_lag=act,
        scale_down_stabilization=stab,
        idle_timeout=idle,
    ),
    st.integers(0, 20),
    st.integers(0, 40),
    st.integers(1, 100_000),
    st.integers(0, 1_000),
    st.sampled_from([0.0, 30.0, 300.0]),
    st.sampled_from([0.0, 60.0, 600.0]),
)
lag_series = st.lists(st.integers(0, 10**8), min_size=0, max_size=40)


@settings(max_examples=400, deadline=None)
@given(policies, lag_series, st.integers(0, 80), st.integers(0, 120), st.integers(0, 10**6))
def test_bounds_step_and_purity(
    p: Policy, lags: list[int], current: int, partitions: int, per_poll: int
) -> None:
    samples = flat(lags, replicas=current, input_per_poll=per_poll)
    now = now_of(samples) if samples else 0.0
    d = decide(p, samples, current, partitions, now)
    assert d.reason in REASONS
    assert p.min_replicas <= d.replicas <= p.max_replicas
    if partitions > 0:
        assert d.replicas <= max(partitions, p.min_replicas)
    elif d.reason in (NO_DATA, BOUNDS):
        # Partitions unknown (nothing measured): hold, within min and max only.
        assert d.replicas == min(max(current, p.min_replicas), p.max_replicas)
    if d.replicas > current and p.min_replicas <= current and d.capacity is None:
        # A jump goes no further than the lag rule's need (aligned), else the HPA step.
        lag = samples[-1].lag if samples else 0
        need = align(-(-lag // p.lag_per_replica), partitions)
        assert d.replicas <= max(current + max(p.max_step_up, current), need, current + 1)
    stepped = replace(p, jump_to_need=False)
    s = decide(stepped, samples, current, partitions, now)
    if s.replicas > current and p.min_replicas <= current:
        assert s.replicas <= current + max(p.max_step_up, current)
    assert decide(p, samples, current, partitions, now) == d  # pure


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 10**7), st.integers(0, 10**7), st.integers(1, 200))
def test_wake_up_is_monotone_in_lag(p: Policy, a: int, b: int, partitions: int) -> None:
    small, big = sorted((a, b))
    lo = decide(p, flat([small], replicas=0), 0, partitions, 0.0).replicas
    hi = decide(p, flat([big], replicas=0), 0, partitions, 0.0).replicas
    assert lo <= hi
    if big > p.activation_lag and upper_bound(p, partitions) > 0:
        assert hi >= 1


@settings(max_examples=200, deadline=None)
@given(policies, lag_series, st.integers(1, 60), st.integers(1, 120))
def test_never_scales_down_below_what_the_window_needed(
    p: Policy, lags: list[int], current: int, partitions: int
) -> None:
    samples = flat(lags, replicas=current)
    if not samples:
        return
    d = decide(p, samples, current, partitions, now_of(samples))
    if d.reason == SCALE_DOWN:
        window = [s for s in samples if s.time >= now_of(samples) - p.scale_down_stabilization]
        needed = max(-(-s.lag // p.lag_per_replica) for s in window)
        assert d.replicas >= min(needed, upper_bound(p, partitions))


def simulate(
    p: Policy,
    rates: list[float],
    per_replica: float,
    partitions: int,
    replicas: int,
    lags: list[int] | None = None,
    commit_interval: float = 0.0,
) -> list[int]:
    """A drain model: each poll, input arrives and each replica processes up to its rate.

    With a commit interval, the lag seen is against the position at the last commit (the
    position in between is interpolated linearly), as the lag probe sees it.
    """
    end = pos = 0.0
    hist = History.for_policy(p)
    out = []
    for i, rate in enumerate(rates):
        before = pos
        end += rate * POLL
        pos = min(end, pos + replicas * per_replica * POLL)
        t = (i + 1) * POLL
        seen = pos
        if commit_interval:
            last_commit = (t // commit_interval) * commit_interval
            seen = before + (pos - before) * (last_commit - (t - POLL)) / POLL
        hist = hist.add(Sample(t, replicas, int(end - seen), int(end), int(seen)))
        if lags is not None:
            lags.append(int(end - pos))
        d = decide(p, hist, replicas, partitions, t)
        hist = hist.with_capacity(d.capacity)
        replicas = d.replicas
        out.append(replicas)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.floats(1_000, 400_000),
    st.floats(0.0, 0.3),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1_000, 10_000, 100_000]),
    st.sampled_from([0.0, 10.0]),
)
def test_noisy_steady_load_does_not_flap(
    mean: float, noise: float, seed: int, target: int, commit_interval: float
) -> None:
    rng = random.Random(seed)
    rates = [mean * (1 + rng.uniform(-noise, noise)) for _ in range(480)]  # 2 hours
    p = Policy(max_replicas=64, lag_per_replica=target, commit_interval=commit_interval)
    lags: list[int] = []
    replicas = simulate(
        p,
        rates,
        per_replica=50_000,
        partitions=64,
        replicas=1,
        lags=lags,
        commit_interval=commit_interval,
    )
    settled = replicas[80:]  # after 20 minutes
    changes = sum(1 for a, b in itertools.pairwise(settled) if a != b)
    assert changes <= 1, replicas
    # ...and it keeps up: the lag stays within its target (plus a poll and a commit of input).
    allowance = mean * (1 + noise) * (POLL + commit_interval)
    assert max(lags[80:]) <= max(settled) * target + allowance


def flaps(replicas: list[int], window_polls: int) -> int:
    """Changes that reverse the previous change within the stabilization window."""
    moves = [(i, b - a) for i, (a, b) in enumerate(itertools.pairwise(replicas)) if a != b]
    return sum(
        1
        for (i0, d0), (i1, d1) in itertools.pairwise(moves)
        if (d0 > 0) != (d1 > 0) and i1 - i0 < window_polls
    )


@settings(max_examples=40, deadline=None)
@given(st.floats(20_000, 400_000), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 10.0]))
def test_noisy_load_from_a_cold_start_never_flaps(
    mean: float, seed: int, commit_interval: float
) -> None:
    # From one worker, a noisy load: the climb is allowed, a reversal within the
    # stabilization window (300 s = 20 polls) is not, over the whole run.
    rng = random.Random(seed)
    rates = [mean * (1 + rng.uniform(-0.3, 0.3)) for _ in range(240)]
    p = Policy(max_replicas=32, lag_per_replica=50_000, commit_interval=commit_interval)
    replicas = simulate(
        p, rates, per_replica=80_000, partitions=32, replicas=1, commit_interval=commit_interval
    )
    assert flaps(replicas, 20) == 0, replicas


def test_step_then_quiet_scales_up_then_down_once() -> None:
    p = Policy(max_replicas=32, min_replicas=0, idle_timeout=600)
    rates = [0.0] * 4 + [400_000.0] * 120 + [0.0] * 120
    replicas = simulate(p, rates, per_replica=50_000, partitions=32, replicas=0)
    assert max(replicas) >= 8  # 400k/s needs at least 8 at 50k/s
    assert replicas[-1] == 0
    peak = replicas.index(max(replicas))
    tail = replicas[peak:]
    assert all(a >= b for a, b in itertools.pairwise(tail))  # no flapping back up
