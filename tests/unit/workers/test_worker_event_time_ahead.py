"""eventTime.maxAhead: a record whose event time is far ahead of both its partition's largest
event time and its own Kafka timestamp (a mistyped year, a device clock set years ahead) is
dead-lettered and changes nothing else. Folded, it would close every open window of its
partition and make every later record late. A real jump in event time, whose records' Kafka
timestamps move with it, is folded as before.

The three window paths (fused, generic, the repartition hop's two formats) are held to one
another and to a record-by-record model in test_worker_fusing.py (its PIPELINES with a
small maxAhead); here the invariant a user relies on is checked against the engine run
without the wrong records."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.config import ProcessorConfig, parse_duration
from streamherd.workers.fusing import fuse
from streamherd.workers.processing import Processor, SourceMessage
from streamherd.workers.repartitioning import (
    UPSTREAM_HEADER,
    UpstreamClock,
    fold_downstream,
    upstream_header,
)
from streamherd.workers.windowing import ISO_MAX_MS, PartitionWindows
from tests.unit.workers.hopmessages import Msg as HopMsg
from tests.unit.workers.sourcemessages import BASE, Msg, batch_paths
from tests.unit.workers.test_worker_fusing import config, run_all

MAX_AHEAD = "168h"  # opt-in: what a careful user would set
AHEAD_MS = round(parse_duration(MAX_AHEAD) * 1000)
ON = {"field": "ts", "maxAhead": MAX_AHEAD}

PIPELINES = [
    config(["status == 200"], event_time=ON),  # tumbling, inline in the fused function
    config([], slide="5s", lateness="2s", event_time=ON),  # hopping
    config([], lateness="30s", size="20s", event_time=ON),
]

# A producer's record: its event time (ms after BASE) and how far its Kafka timestamp is
# from it (a clock a minute off either way).
normal = st.tuples(st.integers(0, 120_000), st.integers(-60_000, 60_000))
# A wrong clock: further ahead of anything a normal record has than maxAhead (a week), up
# to the year 9999; its Kafka timestamp is the producer's own, near the normal records'.
wrong = st.tuples(
    st.integers(180_000 + AHEAD_MS + 1, ISO_MAX_MS - BASE - 86_400_000),
    st.integers(0, 180_000),
)


def record(n: int, ts: int, user: str = "a") -> bytes:
    return orjson.dumps({"id": n, "user": user, "ts": ts, "bytes": n, "status": 200})


Outcome = tuple[list[tuple[int, str, str]], list[int], list[Any]]


def run(cfg: ProcessorConfig, messages: list[SourceMessage], cuts: list[int]) -> Outcome:
    """Each batch path over ``messages`` in batches of ``cuts``: per path, the dead letters
    (record id, reason, error type), the late records' ids and the closed windows."""
    processor = Processor.compile(cfg)
    plan = processor.window
    assert plan is not None
    fused = fuse(cfg, plan)
    assert fused is not None
    out: list[Outcome] = []
    for path in batch_paths(fused, processor):
        state = PartitionWindows(plan)
        dead: list[tuple[int, str, str]] = []
        late: list[int] = []
        rows: list[Any] = []
        start = 0
        for cut in [*cuts, len(messages)]:
            batch = messages[start : start + cut]
            start += len(batch)
            got = path(batch, state)
            dead += [(ident(f.message), f.reason, type(f.error).__name__) for f in got.failures]
            late += [ident(m) for m, _ in got.late]
            rows += state.close()
        rows += state.close(everything=True)
        out.append((dead, late, rows))
    assert out[0] == out[1], "the fused and generic paths disagree"
    return out[0]


def ident(m: SourceMessage) -> int:
    value = m.value()
    assert value is not None
    n: int = orjson.loads(value)["id"]
    return n


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    normals=st.lists(normal, min_size=1, max_size=40),
    wrongs=st.lists(st.tuples(st.integers(0, 40), wrong), max_size=4),
    users=st.lists(st.sampled_from(["a", "b", "c"]), min_size=40, max_size=40),
    pipeline=st.integers(0, len(PIPELINES) - 1),
    cuts=st.lists(st.integers(1, 15), max_size=4),
)
def test_a_record_with_a_wrong_clock_is_dead_lettered_and_changes_nothing_else(
    normals: list[tuple[int, int]],
    wrongs: list[tuple[int, tuple[int, int]]],
    users: list[str],
    pipeline: int,
    cuts: list[int],
) -> None:
    cfg = PIPELINES[pipeline]
    clean: list[SourceMessage] = [
        Msg(i, record(i, BASE + t, users[i]), BASE + t + skew)
        for i, (t, skew) in enumerate(normals)
    ]
    dirty = list(clean)
    # Inserted anywhere, the first place included (judged by its Kafka timestamp alone),
    # from the back so the positions hold; ids 1000+ tell them apart.
    for n, (at, (t, stamp)) in sorted(enumerate(wrongs), key=lambda w: -w[1][0]):
        dirty.insert(min(at, len(dirty)), Msg(0, record(1000 + n, BASE + t), BASE + stamp))
    dirty = [Msg(i, m.value(), m.timestamp()[1]) for i, m in enumerate(dirty)]

    dead, late, rows = run(cfg, dirty, cuts)
    assert run(cfg, clean, cuts) == ([], late, rows), "a wrong clock changed the results"
    refused = [(1000 + n, "expression", "EventTimeAheadError") for n in range(len(wrongs))]
    assert sorted(dead) == refused
    run_all(cfg, dirty, cuts)  # and every path agrees, the repartition hop's included


@given(
    gap=st.integers(AHEAD_MS + 1, 10 * AHEAD_MS),
    skew=st.integers(-60_000, 60_000),
    pipeline=st.integers(0, len(PIPELINES) - 1),
)
@settings(max_examples=40, deadline=None)
def test_a_real_jump_in_event_time_is_folded(gap: int, skew: int, pipeline: int) -> None:
    # The producers stopped for longer than maxAhead: the next records are that far ahead of
    # the partition's maximum, and so are their Kafka timestamps. Folded, closing the windows
    # before the gap; nothing is dead-lettered.
    before: list[SourceMessage] = [
        Msg(i, record(i, BASE + i * 1000), BASE + i * 1000) for i in range(5)
    ]
    after: list[SourceMessage] = [
        Msg(5 + i, record(5 + i, BASE + gap + i), BASE + gap + i + skew) for i in range(3)
    ]
    cfg = PIPELINES[pipeline]
    dead, late, rows = run(cfg, [*before, *after], [5])
    assert (dead, late) == ([], [])
    plan = Processor.compile(cfg).window
    assert plan is not None
    assert sum(r["n"] for _, r in rows) == 8 * (plan.size_ms // plan.slide_ms)  # each window


def test_the_check_is_off_unless_set_at_0s_and_when_event_time_is_the_kafka_timestamp() -> None:
    far = BASE + 10 * AHEAD_MS
    messages: list[SourceMessage] = [
        Msg(0, record(0, BASE), BASE),
        Msg(1, record(1, far), BASE),  # a week ahead, ten times over
        Msg(2, record(2, BASE + 1000), BASE),
    ]
    on = run(config([], event_time=ON), messages, [])
    assert on[0] == [(1, "expression", "EventTimeAheadError")]
    # Off (unset, as by default, or 0s): folded, as Flink and Kafka Streams fold it; record 2
    # is now late. A far-future record is how a test closes every window.
    for off in ({"field": "ts"}, {"field": "ts", "maxAhead": "0s"}):
        assert run(config([], event_time=off), messages, [])[:2] == ([], [2])
    # Event time from the Kafka timestamp: the record's own clock is the judge, never ahead.
    kafka: list[SourceMessage] = [
        Msg(0, record(0, 0), BASE),
        Msg(1, record(1, 0), far),
        Msg(2, record(2, 0), BASE),
    ]
    assert run(config([], event_time={"maxAhead": MAX_AHEAD}), kafka, [])[0] == []


def test_a_record_without_a_kafka_timestamp_is_not_judged() -> None:
    # -1 (none), 0 (none, as the repartition topic writes it): nothing to be ahead of.
    for stamp in (-1, 0):
        messages: list[SourceMessage] = [
            Msg(0, record(0, BASE), BASE),
            Msg(1, record(1, BASE + 10 * AHEAD_MS), stamp),
            Msg(2, record(2, BASE + 1000), BASE),
        ]
        assert run(config([], event_time=ON), messages, [])[:2] == ([], [2])


def test_a_format_1_repartition_message_is_not_judged_downstream() -> None:
    # Its writer (before format 3) had no such rule, and the level it folds against is the
    # larger of its pre-record maximum and the floor closes move: judged there, the same
    # record was folded or refused by when windows closed (a review's probe). Never judged.
    plan = Processor.compile(config([], event_time=ON)).window
    assert plan is not None
    value = orjson.dumps({"user": "a", "ts": BASE + 30 * 86_400_000, "bytes": 1, "status": 200})
    for floor in (None, BASE):
        windows, clock = PartitionWindows(plan), UpstreamClock()
        clock.floor = floor
        header = (UPSTREAM_HEADER, upstream_header("src", 1, 0, None))
        failures, *_ = fold_downstream(windows, clock, [HopMsg(value, [header], 0, BASE)])
        assert failures == [] and len(windows.windows) == 1


def test_a_partitions_first_record_is_judged_by_its_kafka_timestamp_alone() -> None:
    # It would be the event time every later record is judged by: ten years ahead of when it
    # was produced, it is refused, and the records after it are folded as if it never came.
    far = BASE + 10 * AHEAD_MS
    messages: list[SourceMessage] = [
        Msg(0, record(0, far), BASE),
        Msg(1, record(1, BASE), BASE),
        Msg(2, record(2, BASE + 1000), BASE + 1000),
    ]
    dead, late, rows = run(config([], event_time=ON), messages, [1])
    assert (dead, late) == ([(0, "expression", "EventTimeAheadError")], [])
    assert sum(r["n"] for _, r in rows) == 2
