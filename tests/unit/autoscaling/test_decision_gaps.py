"""The builtin autoscaler on steady load through probe outages, clock jumps and partial
measurements (helper-99's findings, session 26): the first answer after an outage longer
than the stabilization window scaled down on that answer alone and the next poll scaled
back up (its rate window held one sample: input 0); a shorter outage made commit staleness
look like backlog (a scale-up, undone later); one measurement without a topic moved the
summed offsets by that topic's whole log (a jump to maxReplicas)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.autoscaling.decision import (
    SCALE_DOWN,
    SCALE_UP,
    History,
    PartitionSample,
    Policy,
    Sample,
    decide,
)

POLICY = Policy(
    min_replicas=1, max_replicas=8, lag_per_replica=100_000, commit_interval=10.0,
    scale_down_stabilization=300, idle_timeout=600, poll_interval=15,
)  # fmt: skip
INPUT = 20_000  # records/s into topic a, steady; topic b holds 50M records, all read
CAPACITY = 4_000.0  # records/s per worker, learned
B_END = 50_000_000


def sample(t: float, replicas: int, end: int, *, with_b: bool = True) -> Sample:
    lag = INPUT * 10 // 8  # per partition: the commit interval's staleness only
    parts = [PartitionSample("a", i, lag, end // 8 - lag) for i in range(8)]
    if with_b:
        parts += [PartitionSample("b", i, 0, B_END // 4) for i in range(4)]
    log_end = sum(p.position + p.lag for p in parts)
    total = sum(p.lag for p in parts)
    return Sample(t, replicas, total, log_end, log_end - total, tuple(parts))


@settings(max_examples=300, deadline=None)
@given(
    outage_at=st.integers(25, 60),
    outage=st.floats(0, 1200),
    partial_at=st.none() | st.integers(20, 70),
    jitter=st.lists(st.floats(-3, 3), min_size=80, max_size=80),
)
def test_steady_load_is_never_rescaled_by_a_gap_or_a_partial_answer(
    outage_at: int, outage: float, partial_at: int | None, jitter: list[float]
) -> None:
    history = History.for_policy(POLICY).with_capacity(CAPACITY)
    replicas, t, end = 8, 0.0, 10**9
    for i in range(80):
        step = 15 + jitter[i] + (outage if i == outage_at else 0.0)
        t += step
        end += int(INPUT * step)
        history = history.add(sample(t, replicas, end, with_b=i != partial_at))
        decision = decide(POLICY, history, replicas, 12, t)
        history = history.with_capacity(decision.capacity)
        assert decision.reason not in (SCALE_UP, SCALE_DOWN), (i, decision)
        replicas = decision.replicas
