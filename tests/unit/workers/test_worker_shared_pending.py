"""Exactly-once: two writers of one partition's pending checkpoints on one shared volume.

The group gives a partition to worker B while worker A is cut off (frozen, or away from the
broker alone) somewhere in its commit protocol: before staging its pending checkpoint,
after staging it, or after its transaction committed but before the rename that promotes
it. A wakes while B runs, anywhere in B's protocol, and finishes what it was doing: it
stages (and then its transaction is fenced by the broker), or it renames. Each writer's
pending checkpoint has its own file (workers/checkpointing.py ``pending_paths``), so A can
neither replace nor rename nor delete B's; B judges A's on restore (workers/resuming.py
``resume_among``).

The broker here is a model of the one thing Kafka decides: a transaction commits only if
its writer is still in the group's current generation (KIP-447), and the committed offset
then carries the transaction's id. The invariants, over any such schedule: no step of B's
fails, and at every moment a restore would resume exactly the state and offset of the last
committed transaction, whoever committed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import Checkpoint, CheckpointBaseMoved, CheckpointStore
from streamherd.workers.resuming import Resume, resume_among
from streamherd.workers.windowing import PartitionWindows
from tests.unit.workers.test_worker_incremental_checkpoints import (
    PLANS,
    TOPIC,
    as_bytes,
    make_checkpoint,
    windows_of,
)

PLAN = PLANS[False]


@dataclass
class Broker:
    """The group's generation and the committed offset with its transaction's id; what
    each committed transaction's state was (the truth a restore must find)."""

    epoch: int = 0
    committed: tuple[int, str] | None = None
    states: dict[str, tuple[int, dict[bytes, bytes]]] = field(default_factory=dict)

    def join(self) -> int:
        self.epoch += 1
        return self.epoch

    def commit(self, epoch: int, generation: str, offset: int, state: dict[bytes, bytes]) -> bool:
        if epoch != self.epoch:
            return False  # fenced: the group moved on
        self.committed = (offset, generation)
        self.states[generation] = (offset, state)
        return True


def judge(store: CheckpointStore, broker: Broker) -> Resume:
    return resume_among(
        store.load(TOPIC, 0),
        store.pending_checkpoints(TOPIC, 0),
        broker.committed,
        exactly_once=True,
    )


class Writer:
    """One exactly-once worker: its state of partition 0 and its own store."""

    def __init__(self, directory: Path, name: str, broker: Broker) -> None:
        self.name, self.broker = name, broker
        self.store = CheckpointStore(directory, min_compact_bytes=0, max_deltas=3)
        self.epoch = broker.join()
        self.windows = PartitionWindows(PLAN)
        self.offset = 0
        self.transactions = 0
        self.generation = ""
        self.fenced = False

    def restore(self) -> None:
        resume = judge(self.store, self.broker)
        if resume.promote:
            assert resume.checkpoint is not None
            self.store.adopt(TOPIC, 0, resume.checkpoint.generation)
        if resume.discard_pending:
            self.store.discard_pending(TOPIC, 0)
        checkpoint = resume.checkpoint
        if checkpoint is None:
            self.windows, self.offset = PartitionWindows(PLAN), resume.offset or 0
        else:
            self.windows = PartitionWindows.from_json(PLAN, checkpoint.state, base=True)
            self.offset = checkpoint.next_offset

    def add(self, key: str, t: int) -> None:
        self.windows.add(key, t, self.windows.plan.values({"v": 1}))
        self.offset += 1

    def checkpoint(self, whole: bool = False) -> Checkpoint:
        cp = make_checkpoint(0, self.offset, self.windows, whole)
        return replace(cp, generation=self.generation)

    def stage(self) -> None:
        """As the engine stages: changes where it can, whole when the base moved."""
        self.transactions += 1
        self.generation = f"{self.name}-{self.transactions}"
        try:
            self.store.save([self.checkpoint()], pending=True)
        except CheckpointBaseMoved:
            self.store.save([self.checkpoint(whole=True)], pending=True)

    def commit(self) -> bool:
        ok = self.broker.commit(
            self.epoch, self.generation, self.offset, as_bytes(windows_of(self.windows))
        )
        self.fenced = not ok
        return ok

    def promote(self) -> None:
        self.store.promote([(TOPIC, 0)])
        self.windows.checkpointed()

    def rewind(self) -> None:
        """As the engine after an aborted transaction (_abort_and_rewind): its own pending
        checkpoints go, and the partition goes back to its committed checkpoint, judging no
        other writer's pending one (this worker may be the one the group left behind, and
        the owner's pending checkpoint is not its to delete)."""
        self.store.abort()
        resume = resume_among(self.store.load(TOPIC, 0), [], self.broker.committed,
                              exactly_once=True)  # fmt: skip
        assert not resume.discard_pending
        checkpoint = resume.checkpoint
        self.windows = (
            PartitionWindows.from_json(PLAN, checkpoint.state, base=True)
            if checkpoint is not None
            else PartitionWindows(PLAN)
        )

    def cycle(self) -> None:
        self.stage()
        assert self.commit(), f"{self.name} is the owner: its transaction commits"
        self.promote()


#: Where A was cut off in its protocol, and what it does on waking.
FREEZES = ("before-stage", "after-stage", "after-commit")
#: Where in B's steps A wakes: before B's restore, or inside one of B's cycles.
WAKES = ("before-restore", "before-stage", "after-stage", "after-commit", "after-promote")

B_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(0, 9)),
        st.tuples(st.just("cycle")),
    ),
    min_size=1,
    max_size=12,
)


def wake(a: Writer, frozen_at: str) -> None:
    """A finishes what it was doing when it was cut off at `frozen_at`, then tries once
    more."""
    if frozen_at == "after-commit":
        a.promote()  # the rename of a transaction that did commit
    else:
        if frozen_at == "before-stage":
            a.stage()
        assert not a.commit(), "the group moved on: A's transaction is fenced"
        a.rewind()  # an abortable failure: the engine aborts and rewinds, and goes on
    a.add("z", 5000)  # A goes on, as far as its next poll
    a.stage()
    assert not a.commit(), "the group moved on: A's transaction is fenced"
    a.rewind()


def assert_restore_finds_the_committed(directory: Path, broker: Broker) -> None:
    """What a restore would resume right now is the last committed transaction's state."""
    resume = judge(CheckpointStore(directory), broker)
    assert broker.committed is not None
    offset, generation = broker.committed
    assert resume.checkpoint is not None, "a committed transaction's state was lost"
    assert resume.checkpoint.generation == generation
    assert resume.checkpoint.next_offset == offset
    assert as_bytes(windows_of(resume.checkpoint.state)) == broker.states[generation][1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    a_cycles=st.integers(1, 3),
    frozen_at=st.sampled_from(FREEZES),
    b_steps=B_STEPS,
    wake_step=st.integers(0, 11),
    wake_at=st.sampled_from(WAKES),
)
def test_a_writer_left_behind_never_touches_the_owners_pending_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
    a_cycles: int,
    frozen_at: str,
    b_steps: list[tuple[Any, ...]],
    wake_step: int,
    wake_at: str,
) -> None:
    directory = tmp_path_factory.mktemp("shared")
    broker = Broker()
    a = Writer(directory, "a", broker)
    a.restore()
    for i in range(a_cycles):
        a.add("abc"[i % 3], i * 1000)
        a.cycle()
    a.add("a", 9000)
    # A is cut off at `frozen_at` in the middle of its next checkpoint.
    if frozen_at != "before-stage":
        a.stage()
    if frozen_at == "after-commit":
        assert a.commit()
    b = Writer(directory, "b", broker)  # the group's next generation: A is fenced from here
    awake = False
    if wake_at == "before-restore":
        wake(a, frozen_at)
        awake = True
    b.restore()
    assert_restore_finds_the_committed(directory, broker)
    for index, step in enumerate(b_steps):
        due = not awake and index >= min(wake_step, len(b_steps) - 1)
        if step[0] == "add":
            b.add(step[1], step[2] * 1000)
            if due:
                wake(a, frozen_at)
                awake = True
            continue
        if due and wake_at == "before-stage":
            wake(a, frozen_at)
            awake = True
        b.stage()
        if due and wake_at == "after-stage":
            wake(a, frozen_at)
            awake = True
        assert b.commit()
        if due and wake_at == "after-commit":
            wake(a, frozen_at)
            awake = True
        b.promote()
        if due and not awake:
            wake(a, frozen_at)
            awake = True
        assert_restore_finds_the_committed(directory, broker)
    if not awake:
        wake(a, frozen_at)
    assert_restore_finds_the_committed(directory, broker)
    # The next owner restores: exactly the last committed transaction, and goes on.
    c = Writer(directory, "c", broker)
    c.restore()
    assert broker.committed is not None
    assert (c.offset, as_bytes(windows_of(c.windows))) == broker.states[broker.committed[1]]
    c.add("c", 7000)
    c.cycle()
    assert_restore_finds_the_committed(directory, broker)


def test_a_pending_checkpoint_an_older_streamherd_staged_is_judged_and_adopted(
    tmp_path: Path,
) -> None:
    """An older streamherd staged ``<partition>.pending.ckpt``; its transaction committed
    before the upgrade's restart: the new worker finds it among the pending ones and adopts
    it, and a pending file of partition 10 is never taken for partition 1's."""
    broker = Broker()
    old = Writer(tmp_path, "old", broker)
    old.restore()
    old.add("a", 0)
    old.stage()
    assert old.commit()
    staged = old.store.path(TOPIC, 0, pending=True)
    staged.rename(staged.with_name("0.pending.ckpt"))  # the name every writer shared
    (staged.parent / "10.pending.ckpt").write_bytes(b"not partition 0's")
    new = Writer(tmp_path, "new", broker)
    assert [p.name for p in new.store.pending_paths(TOPIC, 0)] == ["0.pending.ckpt"]
    new.restore()
    assert (new.offset, as_bytes(windows_of(new.windows))) == broker.states["old-1"]
    assert new.store.pending_paths(TOPIC, 0) == []
