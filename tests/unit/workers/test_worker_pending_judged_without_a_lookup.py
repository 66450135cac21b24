"""At-least-once judges an exactly-once run's pending checkpoint by the group's answer even
when the assignment's committed-offset lookup fails.

A roll from exactlyOnce to atLeastOnce can meet a partition with no checkpoint but a pending
one: the exactly-once worker committed its transaction (the group's offset carries the
transaction's generation) and was killed before promoting its first checkpoint. Only the
group's answer tells that it committed (workers/resuming.py, rule 1). When the assignment's
lookup failed, the partition was restored without it: empty state at the group's offset, the
pending checkpoint discarded by the first at-least-once checkpoint, so the windows open there
lost every record before that offset. The assignment now asks again, as exactly-once does
(waited for while it times out; then the worker restarts).

The model's property draws the same case among its schedules (``pending``, with
``check_pending_judged``); these are its examples, spelled out.

Built on the at-least-once run-loop model (test_worker_commit_never_passes_unfolded.py),
with its invariant judged as ever; its pipeline holds no state, so what is checked is the
engine's judgment: the pending checkpoint is adopted."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

from confluent_kafka import TopicPartition

import tests.unit.workers.test_worker_commit_never_passes_unfolded as alo
from streamherd.workers.checkpointing import Checkpoint, CheckpointDamaged
from streamherd.workers.engine import Engine
from tests.unit.workers.test_worker_commit_never_passes_unfolded import GroupConsumer
from tests.unit.workers.test_worker_input_lost import TOPIC
from tests.unit.workers.test_worker_refetch_starts import schedule

GENERATION = "eos-run-1"
COMMITTED = 6  # where the exactly-once run's last transaction left p0


class CommittedByExactlyOnce(GroupConsumer):
    """The group as the exactly-once run left it: p0 committed at 6 with its generation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group[0] = COMMITTED

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, tp.offset, metadata=GENERATION)
            if tp.partition == 0
            else tp
            for tp in super().committed(partitions, timeout)
        ]


class PendingLeft(alo.JudgedBackend):
    """The checkpoints as the exactly-once run left them: none of p0, a pending one (the
    model's backend judges each adoption: the pending checkpoint left, as it was)."""

    left: list[Checkpoint] = []

    def __init__(self) -> None:
        super().__init__({c.partition: c for c in self.left})


def pending_of_p0() -> Checkpoint:
    """A checkpoint of p0 this pipeline writes, as a pending one of the exactly-once run."""
    backends: list[alo.JudgedBackend] = []

    class Kept(alo.JudgedBackend):
        def __init__(self) -> None:
            super().__init__()
            backends.append(self)

    with patch.object(alo, "JudgedBackend", Kept):
        alo.run(schedule(checkpoints={1}))
    written = backends[0].kept[(TOPIC, 0)]
    return replace(written, next_offset=COMMITTED, generation=GENERATION)


def run_after_exactly_once(**changes: Any) -> tuple[GroupConsumer, PendingLeft]:
    """An at-least-once worker's run over what the exactly-once run left (the schedule
    `changes`): its consumer and backend."""
    PendingLeft.left = [pending_of_p0()]
    backends: list[PendingLeft] = []

    class Recorded(PendingLeft):
        def __init__(self) -> None:
            super().__init__()
            backends.append(self)

    with (
        patch.object(alo, "GroupConsumer", CommittedByExactlyOnce),
        patch.object(alo, "JudgedBackend", Recorded),
    ):
        consumer, _ = alo.run(schedule(**changes))
    (backend,) = backends
    return consumer, backend


def test_a_pending_checkpoint_is_judged_by_the_group_when_the_first_lookup_failed() -> None:
    consumer, backend = run_after_exactly_once(lookup_failures=1)
    assert backend.adopted == [0], (
        f"the pending checkpoint was not promoted (adopted {backend.adopted}, still pending "
        f"{[c.generation for c in backend.pending.values()]}): p0 restarted with empty state"
    )
    reread = sorted(o for p, o in consumer.written() if p == 0 and o < COMMITTED)
    assert not reread, f"read again below the committed offset: {reread}"


def test_without_a_failed_lookup_it_is_judged_as_before() -> None:
    _, backend = run_after_exactly_once()
    assert backend.adopted == [0]


class Damaged:
    """A state backend whose p0 files cannot be read; p1 has only a pending checkpoint."""

    def __init__(self, pending: Checkpoint) -> None:
        self.pending = pending

    def pending_checkpoints(self, topic: str, partition: int) -> list[Checkpoint]:
        if partition == 0:
            raise CheckpointDamaged("p0: unreadable checkpoint")
        return [self.pending]

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        return None


def test_a_checkpoint_that_cannot_be_read_is_left_to_its_restore() -> None:
    """The look for a pending checkpoint to judge reads checkpoints before the restores do:
    one it cannot read is not its to judge (its partition's restore holds it, the others
    going on); it raised out of the assignment and stopped the worker (CI's run of the
    damage tests, before the look was limited to a lookup that failed)."""
    pending = replace(pending_of_p0(), partition=1)
    fake = SimpleNamespace(state=Damaged(pending))
    judged = Engine._unjudged_pending
    assert judged(fake, [TopicPartition(TOPIC, 0)]) is False  # type: ignore[arg-type]
    assert judged(fake, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]) is True  # type: ignore[arg-type]
