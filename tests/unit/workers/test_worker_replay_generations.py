"""A replay of a repartitioned pipeline folds only what the replaying spec wrote.

A replay empties each downstream partition and seeks it back in the repartition topic; the
upstreams write the source records from the replay time again, under the new spec. What the
earlier spec's upstreams wrote is still on the topic there (and, in a rolling update, still
being written): folded first, it would bring the old spec's steps, and lateness and progress
measured from before the replay time, and turn the new entries into duplicates (a review's
finding: the replay computed with the previous spec's filter). The clock of a partition a
replay emptied names that replay's generation (``UpstreamClock.since``), and every message
carries its writer's (``GENERATION_HEADER``).

The property: whatever an earlier generation wrote (either format, records and markers,
another value for every record, with or without a generation), interleaved in any order with
what the replaying generation and later ones wrote, the downstream's state, closed windows
and dead letters are those of folding the replaying generations' messages alone, on both
folds (format 3's ``fold_hop`` and the record-by-record ``fold_downstream``); and the clock
keeps ``since`` across a checkpoint.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.rekeying import fold_hop
from streamherd.workers.repartitioning import (
    GENERATION_HEADER,
    UpstreamClock,
    close_windows,
    fold_downstream,
    superseded,
)
from streamherd.workers.windowing import PartitionWindows
from tests.unit.workers.hopmessages import Msg
from tests.unit.workers.test_worker_exact_results import bits
from tests.unit.workers.test_worker_rekeying import PLAN, Upstream, plan_for, state

REPLAY = 7  # the generation of the replay that emptied the downstream partition


def stamped(messages: list[Msg], generation: int | None) -> list[Msg]:
    """``messages`` as a worker of ``generation`` writes them (None: a worker whose config
    names none, or an earlier version)."""
    if generation is None:
        return messages
    header = (GENERATION_HEADER, str(generation).encode())
    return [Msg(m.value_, [*m.headers_, header], m.offset_) for m in messages]


a_source_partition = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(-300, 1_500), st.integers(0, 9)),
    max_size=12,
)


def written(
    p: int, rows: list[tuple[str, int, int]], fmt: int, plan_lateness: int, data: st.DataObject
) -> list[Msg]:
    """What one generation's upstream of source partition ``p`` wrote to a single repartition
    partition for ``rows`` (key, event-time step, value), from offset 0, in batches."""
    upstream = Upstream(p, plan_for(plan_lateness, hopping=False), queues=1)
    records, t = [], 0
    for k, delta, v in rows:
        t += delta
        records.append({"k": k, "ts": t, "v": v, "w": 1})
    out: list[Msg] = []
    i = 0
    while i < len(records):
        n = data.draw(st.integers(1, 5), label="batch")
        (chunk,) = upstream.batch(i, records[i : i + n], fmt, idle=False)
        out += chunk[0]
        i += n
    return out


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    old=st.lists(a_source_partition, min_size=1, max_size=2),
    new=st.lists(a_source_partition, min_size=1, max_size=2),
    fmt=st.sampled_from([1, 3]),
    lateness=st.sampled_from([0, 400]),
    data=st.data(),
)
def test_a_replayed_partition_folds_only_the_replaying_generations_messages(
    old: list[list[tuple[str, int, int]]],
    new: list[list[tuple[str, int, int]]],
    fmt: int,
    lateness: int,
    data: st.DataObject,
) -> None:
    plan = plan_for(lateness, hopping=False)
    earlier = st.none() | st.integers(0, REPLAY - 1)
    stale: list[list[Msg]] = [
        stamped(written(p, rows, fmt, lateness, data), data.draw(earlier, label="old gen"))
        for p, rows in enumerate(old)
    ]
    fresh: list[list[Msg]] = []
    for p, rows in enumerate(new):
        messages = written(p, rows, fmt, lateness, data)
        # The replaying generation, then (a compatible edit later) a later one, batch by batch.
        cut = data.draw(st.integers(0, len(messages)), label="later from")
        later = data.draw(st.integers(REPLAY + 1, REPLAY + 3), label="later gen")
        fresh.append(stamped(messages[:cut], REPLAY) + stamped(messages[cut:], later))
    # Any interleaving: the old spec's writers go on during a rolling update.
    lanes = [list(lane) for lane in stale + fresh]
    merged: list[Msg] = []
    while any(lanes):
        merged.append(
            lanes[data.draw(st.sampled_from([i for i, lane in enumerate(lanes) if lane]))].pop(0)
        )
    only_fresh = [m for lane in fresh for m in lane]
    only_fresh = [m for m in merged if any(m is f for f in only_fresh)]  # in merged order
    known = frozenset(("src", p) for p in range(max(len(old), len(new))))
    for fold in ("hop", "record"):
        if fold == "record" and fmt == 3:
            continue  # fold_downstream reads format 1 only
        ours = (PartitionWindows(plan), UpstreamClock(known=known, since=REPLAY))
        reference = (PartitionWindows(plan), UpstreamClock(known=known, since=REPLAY))
        results: list[Any] = []
        for (windows, clock), messages in ((ours, merged), (reference, only_fresh)):
            if fold == "hop":
                failures, late, _, _ = fold_hop(windows, clock, messages, PLAN)
            else:
                failures, late, _, _ = fold_downstream(windows, clock, messages)
            closed = [(k, bits(r)) for k, r in close_windows(windows, clock)]
            ids = sorted((f.message.offset(), f.reason, str(f.error)) for f in failures)
            results.append((state(windows, clock), closed, ids, late))
        assert results[0] == results[1]
        # The clock keeps the replay's generation across a checkpoint.
        assert UpstreamClock.from_json(ours[1].to_json()).since == REPLAY


def test_a_clock_no_replay_emptied_folds_every_generation_and_is_written_as_before() -> None:
    clock = UpstreamClock()
    for headers in ([], [(GENERATION_HEADER, b"3")], [(GENERATION_HEADER, b"x")]):
        assert not superseded(clock, headers)
    assert "since" not in clock.to_json()
    assert UpstreamClock.from_json(clock.to_json()).since is None


def test_a_message_naming_no_generation_or_a_malformed_one_is_superseded_after_a_replay() -> None:
    clock = UpstreamClock(since=REPLAY)
    assert superseded(clock, [])
    assert superseded(clock, None)
    assert superseded(clock, [(GENERATION_HEADER, b"six")])
    assert superseded(clock, [(GENERATION_HEADER, str(REPLAY - 1).encode())])
    assert not superseded(clock, [(GENERATION_HEADER, str(REPLAY).encode())])
    assert not superseded(clock, [(GENERATION_HEADER, str(REPLAY + 40).encode())])
