"""A replay of a repartitioned pipeline folds only what was written after it.

A replay empties each downstream partition and seeks it back in the repartition topic; the
upstreams write the source records from the replay time again, under the new spec. What the
earlier spec's upstreams wrote is still on the topic there (and, in a rolling update, still
being written): folded first, it would bring the old spec's steps, and lateness and progress
measured from before the replay time, and turn the new entries into duplicates (a review's
finding: the replay computed with the previous spec's filter). The clock of a partition a
replay emptied names who that replay was (``UpstreamClock.since``: the state fingerprint and
the generation of the state it discarded), and every message names its writer
(``WRITER_HEADER``).

The property: whatever was written before the replay (either format, records and markers,
another value for every record; by a writer of another fingerprint, of an earlier
generation, or naming nobody), interleaved in any order with what the replay's writers and
later ones wrote (a later generation, or a config naming none: the policy set back to
refuse), the downstream's state, closed windows and dead letters are those of folding the
later messages alone, on both folds (format 3's ``fold_hop`` and the record-by-record
``fold_downstream``); and the clock keeps ``since`` across a checkpoint.

Under an operator that names state epochs (decision 0175) the partition's ``since`` names
the epoch too, and every writer since names it (``EPOCH_HEADER``): then what this very
fingerprint wrote before the epoch is skipped even when it names no generation (A -> B -> A
with A's writers under the refuse policy), which the generation alone cannot tell.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.rekeying import fold_hop
from streamherd.workers.repartitioning import (
    EPOCH_HEADER,
    WRITER_HEADER,
    Since,
    UpstreamClock,
    close_windows,
    epoch_header,
    fold_downstream,
    superseded,
    writer_header,
)
from streamherd.workers.windowing import PartitionWindows
from tests.unit.workers.hopmessages import Msg
from tests.unit.workers.test_worker_exact_results import bits
from tests.unit.workers.test_worker_rekeying import PLAN, Upstream, plan_for, state

FLOOR = 4  # the generation of the last writer of the state the replay discarded
EPOCH = FLOOR + 2  # the generation whose roll started the state anew (decision 0175)
OURS = "f" * 16  # the state fingerprint of the replay's spec
THEIRS = "e" * 16  # the fingerprint of the spec before the edit

#: Writers, as (fingerprint, generation, state epoch); None: a message without headers.
Writer = tuple[str, int | None, int | None] | None


def stamped(messages: list[Msg], writer: Writer) -> list[Msg]:
    """``messages`` as ``writer`` writes them."""
    if writer is None:
        return messages
    fingerprint, generation, epoch = writer
    headers = [(WRITER_HEADER, writer_header(fingerprint, generation))]
    if epoch is not None:
        headers.append((EPOCH_HEADER, epoch_header(epoch)))
    return [Msg(m.value_, [*m.headers_, *headers], m.offset_) for m in messages]


def epochs(low: int, high: int) -> st.SearchStrategy[int | None]:
    return st.none() | st.integers(low, high)


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
    since=st.sampled_from(
        [Since(OURS, FLOOR), Since(OURS), Since(OURS, FLOOR, EPOCH), Since(OURS, None, EPOCH)]
    ),
    data=st.data(),
)
def test_a_replayed_partition_folds_only_what_was_written_after_the_replay(
    old: list[list[tuple[str, int, int]]],
    new: list[list[tuple[str, int, int]]],
    fmt: int,
    lateness: int,
    since: Since,
    data: st.DataObject,
) -> None:
    plan = plan_for(lateness, hopping=False)
    # Before the replay: another spec (any generation: one of a pipeline deleted with
    # retainOnDelete may be above the replay's), none named, or (told by the generation
    # only) this fingerprint before an edit away from it and back.
    before: st.SearchStrategy[Writer] = st.one_of(
        st.none(),
        st.tuples(st.just(THEIRS), epochs(0, FLOOR + 9), epochs(1, EPOCH + 9)),
    )
    if since.generation is not None:
        before = before | st.tuples(st.just(OURS), st.integers(0, FLOOR), epochs(1, EPOCH))
    if since.epoch is not None:  # this fingerprint before the epoch: any generation, or none
        before = before | st.tuples(st.just(OURS), epochs(0, EPOCH - 1), epochs(1, EPOCH - 1))
    # After it: any generation of the replay's spec (a rollout that saw several edits, in
    # any order), or none (the policy set back to refuse); in an epoch, every one names it.
    after = st.tuples(
        st.just(OURS),
        epochs(max(FLOOR + 1, since.epoch or 0), FLOOR + 6),
        st.just(since.epoch) if since.epoch is not None else epochs(1, EPOCH + 3),
    )
    stale: list[list[Msg]] = [
        stamped(written(p, rows, fmt, lateness, data), data.draw(before, label="before"))
        for p, rows in enumerate(old)
    ]
    fresh: list[list[Msg]] = []
    for p, rows in enumerate(new):
        messages = written(p, rows, fmt, lateness, data)
        # One writer, then (an edit later, or a worker of another generation) another.
        cut = data.draw(st.integers(0, len(messages)), label="cut")
        fresh.append(
            stamped(messages[:cut], data.draw(after, label="first"))
            + stamped(messages[cut:], data.draw(after, label="then"))
        )
    # Any interleaving: the old spec's writers go on during a rolling update.
    lanes = [list(lane) for lane in stale + fresh]
    merged: list[Msg] = []
    while any(lanes):
        lane = data.draw(st.sampled_from([i for i, lane in enumerate(lanes) if lane]))
        merged.append(lanes[lane].pop(0))
    kept = {id(m) for lane in fresh for m in lane}
    only_fresh = [m for m in merged if id(m) in kept]
    known = frozenset(("src", p) for p in range(max(len(old), len(new))))
    for fold in ("hop", "record"):
        if fold == "record" and fmt == 3:
            continue  # fold_downstream reads format 1 only
        ours = (PartitionWindows(plan), UpstreamClock(known=known, since=since))
        # The reference skips nothing: it folds the later messages alone.
        reference = (PartitionWindows(plan), UpstreamClock(known=known))
        results: list[Any] = []
        for (windows, clock), messages in ((ours, merged), (reference, only_fresh)):
            if fold == "hop":
                failures, late, _, _ = fold_hop(windows, clock, messages, PLAN)
            else:
                failures, late, _, _ = fold_downstream(windows, clock, messages)
            clock.since = since  # compared with the rest of the clock
            closed = [(k, bits(r)) for k, r in close_windows(windows, clock)]
            ids = sorted((f.message.offset(), f.reason, str(f.error)) for f in failures)
            results.append((state(windows, clock), closed, ids, late))
        assert results[0] == results[1]
        # The clock keeps who the replay was across a checkpoint.
        assert UpstreamClock.from_json(ours[1].to_json()).since == since


def test_a_clock_no_replay_emptied_folds_every_writer_and_is_written_as_before() -> None:
    clock = UpstreamClock()
    for headers in ([], [(WRITER_HEADER, b"x/3")], [(WRITER_HEADER, b"junk")]):
        assert not superseded(clock, headers)
    assert "since" not in clock.to_json()
    assert UpstreamClock.from_json(clock.to_json()).since is None


def test_after_a_replay_a_message_naming_no_writer_or_a_malformed_one_is_superseded() -> None:
    clock = UpstreamClock(since=Since(OURS, FLOOR))
    for headers in (None, [], [(WRITER_HEADER, b"no-slash")], [(WRITER_HEADER, b"f/x")]):
        assert superseded(clock, headers)
    assert superseded(clock, [(WRITER_HEADER, writer_header(OURS, FLOOR))])  # A -> B -> A
    assert superseded(clock, [(WRITER_HEADER, writer_header(THEIRS, None))])
    assert superseded(clock, [(WRITER_HEADER, writer_header(THEIRS, FLOOR + 40))])
    assert not superseded(clock, [(WRITER_HEADER, writer_header(OURS, FLOOR + 1))])
    assert not superseded(clock, [(WRITER_HEADER, writer_header(OURS, None))])


def test_a_replay_of_another_pipeline_of_the_name_is_judged_by_the_fingerprint_alone() -> None:
    """A pipeline deleted with retainOnDelete and created again counts its generations from 1:
    a worker of the discarded state's generation or an earlier one restoring the clock is
    of that other pipeline, and the generation orders nothing of its writers."""
    replay = Since(OURS, FLOOR)
    assert replay.restored_by(FLOOR + 1) == replay
    assert replay.restored_by(FLOOR + 5) == replay
    assert replay.restored_by(None) == replay
    assert replay.restored_by(FLOOR) == Since(OURS)
    assert replay.restored_by(1) == Since(OURS)
    clock = UpstreamClock(since=replay.restored_by(1))
    assert not superseded(clock, [(WRITER_HEADER, writer_header(OURS, 1))])  # this pipeline's
    assert superseded(clock, [(WRITER_HEADER, writer_header(THEIRS, 1))])


def test_a_clocks_epoch_is_kept_only_by_a_worker_of_that_epoch_or_a_later_one() -> None:
    """A clock restored by a worker of an earlier epoch (or of none) is another pipeline's (a
    snapshot of it restored into this one): its epoch would skip every writer of this one."""
    since = Since(OURS, FLOOR, EPOCH)
    assert since.restored_by(EPOCH + 1, EPOCH) == since
    assert since.restored_by(EPOCH + 1, EPOCH + 3) == since
    assert since.restored_by(EPOCH + 1, EPOCH - 1) == Since(OURS, FLOOR)
    assert since.restored_by(EPOCH + 1, None) == Since(OURS, FLOOR)
    assert since.restored_by(FLOOR, None) == Since(OURS)
    assert UpstreamClock.from_json(UpstreamClock(since=since).to_json()).since == since
    clock = UpstreamClock(since=since)
    ours = (WRITER_HEADER, writer_header(OURS, None))
    assert superseded(clock, [ours])  # before the epoch, naming no generation
    assert superseded(clock, [ours, (EPOCH_HEADER, epoch_header(EPOCH - 1))])
    assert superseded(clock, [ours, (EPOCH_HEADER, b"junk")])
    assert not superseded(clock, [ours, (EPOCH_HEADER, epoch_header(EPOCH))])
    assert superseded(clock, [(WRITER_HEADER, writer_header(THEIRS, None)),
                              (EPOCH_HEADER, epoch_header(EPOCH))])  # fmt: skip
