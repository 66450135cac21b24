"""The autoscaler's scheduling (spread, jitter) and its status patch: no broker needed."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime

from streamherd.operator.autoscaling.decision import SCALE_UP, STEADY, Decision
from streamherd.operator.autoscaling.handlers import status_patch, wants_builtin
from streamherd.operator.autoscaling.poller import Autoscaler, ScaleResult

Key = tuple[str, str]


def test_polls_are_spread_over_the_interval_and_jittered() -> None:
    a = Autoscaler(rng=random.Random(7), jitter=0.1)
    keys = [((f"ns{i % 7}", f"p{i}"), 15.0) for i in range(1000)]
    assert a.due(keys, 0.0) == []  # first sight: only scheduled
    first = dict(a._due)
    buckets = Counter(int(t) for t in first.values())
    assert set(buckets) == set(range(15))  # every second of the interval gets some
    assert max(buckets.values()) < 2 * 1000 / 15  # none gets a burst
    after_first: dict[tuple[str, str], float] = {}
    for t in range(1, 16):  # 1 s ticks, as Autoscaler.run does
        for k in a.due(keys, float(t)):
            after_first.setdefault(k, a._due[k])
    assert len(after_first) == 1000  # every pipeline polled within one interval
    gaps = [after_first[k] - first[k] for k, _ in keys]
    assert all(13.5 - 1e-9 <= g <= 16.5 + 1e-9 for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 900  # jittered, not in lockstep
    # A pipeline that disappears is forgotten.
    a.due(keys[:10], 40.0)
    assert len(a._due) == 10
    a.close()


def _result(desired: int, reason: str, current: int, lag: int | None) -> ScaleResult:
    d = Decision(desired, reason, "why", lag=lag)
    return ScaleResult(desired, reason, "why", lag, (), desired != current, d)


def test_status_patch_writes_only_what_changed() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    up = status_patch(_result(4, SCALE_UP, 1, 9000), {"desiredReplicas": 1, "lag": 10}, now)
    assert up == {
        "lag": 9000,
        "desiredReplicas": 4,
        "lastScaleTime": "2026-01-02T03:04:05Z",
        "lastScaleReason": "ScaleUp: why",
    }
    same = status_patch(_result(4, STEADY, 4, 9000), {"desiredReplicas": 4, "lag": 9000}, now)
    assert same == {}


def test_wants_builtin() -> None:
    kafka = {"kafka": {"bootstrapServers": "k:9092", "topics": ["t"]}}
    assert wants_builtin({"spec": {"source": kafka}}) == 15.0
    assert wants_builtin({"spec": {"source": kafka, "autoscaling": {"pollInterval": "5s"}}}) == 5.0
    assert wants_builtin({"spec": {"source": kafka, "autoscaling": {"mode": "keda"}}}) is None
    assert wants_builtin({"spec": {"source": kafka, "suspend": True}}) is None
    assert wants_builtin({"spec": {"source": {"generator": {}}}}) is None


def test_one_slow_act_does_not_hold_up_the_others() -> None:
    """Each due pipeline's act is a task of its own: awaiting a whole tick's acts let one
    slow act (a reconcile waiting for its lock) stop every other pipeline's polls; and a
    pipeline whose act still runs is not started again (helper-99's finding)."""
    autoscaler = Autoscaler(jitter=0.0)
    slow, other = ("ns", "slow"), ("ns", "other")
    release = asyncio.Event()
    started: list[Key] = []

    async def act(key: Key) -> None:
        started.append(key)
        if key == slow:
            await release.wait()  # held until the other pipeline was polled again and again
        elif started.count(other) >= 3:
            release.set()

    async def scenario() -> None:
        task = asyncio.create_task(autoscaler.run(lambda: [(slow, 0.05), (other, 0.05)], act, 0.01))
        try:
            # A failure shows as the event never set (the loop stuck behind the slow act).
            await asyncio.wait_for(release.wait(), timeout=30)
        finally:
            task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        autoscaler.close()
    assert started.count(other) >= 3
    assert started.count(slow) == 1  # never started again while its act ran
