"""Where an exactly-once abort seeks a partition that started without a checkpoint.

A partition with no checkpoint starts at the group's committed offset (empty state there:
a stateless pipeline's offsets, a checkpoint lost, or of another generation), or, with
nothing committed, at ``startFromTimeMs``'s offset. ``Engine._abort_and_rewind`` rebuilds
every owned partition from its commit and seeks it (the consumer keeps its position through
an abort). Each case below runs the exactly-once schedules' model
(tests/unit/workers/test_worker_exactly_once_schedules.py: its broker, group consumer and
transactional producer; both state backends; a filter and a window) through one abort, and
checks where the abort sought the partition and that every record is then visible once.

Found here (helper-123): a partition sought to its start time's offset on assign was rebuilt
with no start and not sought back (its first record was read with a next offset set, so it
had no ``read_from``): the records of the aborted transaction were skipped. It now starts at
that time again, as on assign (and is held and paused if the broker does not give the offset).
"""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from confluent_kafka import TopicPartition

import tests.unit.workers.test_worker_exactly_once_schedules as eos
from streamherd.workers.engine import Engine
from tests.unit.workers.test_worker_exactly_once_schedules import Event, check_end, run
from tests.unit.workers.test_worker_input_lost import TOPIC

#: Two partitions of 8 records each (offsets 0-7), both assigned at once; p1 revoked inside
#: poll 2 after its records were handed out, the revoke's transaction failing (its offsets
#: refused): aborted, with p0 still owned. Two records per partition and poll.
BASE: dict[str, Any] = {
    "gaps": [[0] * 7, [0] * 7],
    "initial": [0, 1],
    "events": [Event(2, "revoke", 1, "after")],
    "later_events": [],
    "faults": {("send_offsets", 1): "abortable"},
    "chunk": 2,
    "start_from": "earliest",
    "lookup_failures": 0,
    "batch_size": 12,
    "serve": [False],
    "produce": {},
    "checkpoints": set(),
    "preset": {},
    "start_time": None,
}
#: name: (the schedule's changes, where the abort seeks p0 with a filter, with a window).
CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    # The group committed 3 (no checkpoint): p0 read 3-4, its first transaction aborts.
    "group offset, abort before any commit": ({"preset": {0: (3, "")}}, 3, 3),
    # The same with a generation no checkpoint has (a lost volume, another epoch's).
    "group offset of another generation": ({"preset": {0: (3, "elsewhere")}}, 3, 3),
    # The group committed 2; this worker committed p0 at 4 (its checkpoint), read 4-5.
    "group offset, one commit, then an abort": (
        {
            "preset": {0: (2, "")},
            "checkpoints": {1},
            "events": [Event(3, "revoke", 1, "after")],
            "faults": {("send_offsets", 2): "abortable"},
        },
        4,
        4,
    ),
    # p0 assigned inside the open transaction at the group's 2, read 2-5, then the abort.
    "group offset, assigned mid-transaction": (
        {
            "initial": [1],
            "preset": {0: (2, "")},
            "events": [Event(2, "assign", 0, "before"), Event(4, "revoke", 1, "after")],
        },
        2,
        2,
    ),
    # Nothing committed, startFromTimeMs at record 2's time (a window's start: 0): p0 read
    # 2-3 (0-1), its first transaction aborts. Not sought before the fix: 2-3 were lost.
    "start time, abort before any commit": ({"start_time": 2}, 2, 0),
    # The same after one commit (p0 at 4, 2 with a window): back to the commit.
    "start time, one commit, then an abort": (
        {
            "start_time": 2,
            "checkpoints": {1},
            "events": [Event(3, "revoke", 1, "after")],
            "faults": {("send_offsets", 2): "abortable"},
        },
        4,
        2,
    ),
}


def rewinds(schedule: dict[str, Any], *, windowed: bool, changelogged: bool) -> list[Any]:
    """Run ``schedule``; the partitions each abort sought, and where."""
    sought: list[dict[int, int]] = []
    rewind = Engine._abort_and_rewind

    def noted(engine: Engine, source: Any, why: str, **how: Any) -> None:
        seeks: dict[int, int] = {}
        seek = source.seek

        def seek_noted(tp: TopicPartition) -> None:
            seeks[tp.partition] = tp.offset
            seek(tp)

        with patch.object(source, "seek", seek_noted):
            rewind(engine, source, why, **how)
        sought.append(seeks)

    with patch.object(Engine, "_abort_and_rewind", noted):
        outcome = run(schedule, windowed=windowed, changelogged=changelogged)
    with patch.object(eos, "event", lambda _: None):  # Hypothesis's, outside a test of its
        check_end(outcome)
    return sought


@pytest.mark.parametrize("changelogged", [False, True], ids=["volume", "changelog"])
@pytest.mark.parametrize("windowed", [False, True], ids=["filter", "window"])
@pytest.mark.parametrize("case", CASES)
def test_an_abort_seeks_a_partition_back_to_its_start_or_commit(
    case: str, windowed: bool, changelogged: bool
) -> None:
    changes, filtered, windowed_at = CASES[case]
    sought = rewinds({**BASE, **changes}, windowed=windowed, changelogged=changelogged)
    assert sought, "no abort"
    assert sought[0].get(0) == (windowed_at if windowed else filtered), sought


class SlowTimes(eos.GroupConsumer):
    """Answers offsets for times as the model's broker does, but gives none for p0 at its
    second and third lookups (the abort's and the first retry's)."""

    lookups = 0

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        answer = super().offsets_for_times(partitions, timeout)
        if any(tp.partition == 0 for tp in partitions):
            SlowTimes.lookups += 1
            if SlowTimes.lookups in (2, 3):
                return [tp for tp in answer if tp.partition != 0]
        return answer


def test_a_start_time_not_given_again_at_an_abort_holds_and_pauses_the_partition() -> None:
    """p0 started at its time's offset; the abort's lookup of it gets no answer: p0 is held
    and paused (not read from wherever the consumer was), then sought to its time's offset
    and resumed once the broker answers (_retry_seeks), every record visible once."""
    SlowTimes.lookups = 0
    after: list[tuple[str | None, bool]] = []
    rewind = Engine._abort_and_rewind

    def judged(engine: Engine, source: Any, why: str, **how: Any) -> None:
        rewind(engine, source, why, **how)
        st = engine.partitions.get((TOPIC, 0))
        if st is not None:
            after.append((st.held, 0 in source.paused))

    with (
        patch.object(eos, "GroupConsumer", SlowTimes),
        patch.object(Engine, "_abort_and_rewind", judged),
    ):
        outcome = run({**BASE, "start_time": 2})
    assert after and after[0][0] is not None and after[0][1], after  # held and paused
    assert SlowTimes.lookups > 3  # asked again until the broker answered
    with patch.object(eos, "event", lambda _: None):
        check_end(outcome)


def test_a_latest_start_is_pinned_again_after_an_abort() -> None:
    """Under ``startFrom: latest`` a new partition's start is pinned (a checkpoint at the
    log end before its first record is folded). The pin's own transaction aborts here: p0
    is rebuilt with nothing committed. It must start where this worker began and be pinned
    there again by the next loop; left unpinned, a worker killed before its next commit
    left its successor to resolve ``latest`` anew, past the records this one had read."""
    after: list[tuple[int | None, int | None, bool]] = []
    rewind = Engine._abort_and_rewind

    def judged(engine: Engine, source: Any, why: str, **how: Any) -> None:
        rewind(engine, source, why, **how)
        st = engine.partitions.get((TOPIC, 0))
        if st is not None:
            after.append((st.next_offset, st.read_from, engine._pins_due))

    schedule = {**BASE, "start_from": "latest", "events": [], "produce": {0: 3},
                "faults": {("send_offsets", 1): "abortable"}}  # fmt: skip
    with patch.object(Engine, "_abort_and_rewind", judged):
        outcome = run(schedule)
    assert after and after[0] == (8, 8, True), after  # the log end at the assignment
    with patch.object(eos, "event", lambda _: None):
        check_end(outcome)
