"""Two writers of one partition's checkpoints on one shared volume.

The group gives a partition to another worker while the first is cut off (frozen, or away
from the broker alone) past the session timeout; the first wakes and, before its next poll
tells it, finishes what it was doing, perhaps in the middle of a checkpoint. The store keeps
the two writers' states from mixing (workers/checkpointing.py):

- an incremental checkpoint is stacked only on the head its own store last read or wrote;
  on another, CheckpointBaseMoved, and the engine writes its state whole, unless the other
  head is further on in the partition (CheckpointBehind: the engine skips the checkpoint,
  keeping its changes, rather than set the partition's checkpoint back);
- a store deletes only segments it wrote or superseded, so a head written by the other
  writer a moment later never lists a missing one.

The invariants, over any interleaving of two writers' state changes and saves (a save of
one split around the other's whole save, as a freeze would split it): every load succeeds
and gives exactly the state of the writer whose head it read, and the head's offset never
goes back (a head behind the group's committed offset reads as an offset reset: empty
state there, and partial windows).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import (
    Checkpoint,
    CheckpointBaseMoved,
    CheckpointBehind,
    CheckpointStore,
)
from streamherd.workers.windowing import PartitionWindows
from tests.unit.workers.test_worker_incremental_checkpoints import (
    PLANS,
    TOPIC,
    as_bytes,
    make_checkpoint,
    windows_of,
)

PLAN = PLANS[False]


class Writer:
    """One worker's view: its state of partition 0, its own store on the shared volume."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.store = CheckpointStore(directory, min_compact_bytes=0, max_deltas=3)
        self.windows = PartitionWindows(PLAN)
        self.offset = 0
        self.last_saved: dict[bytes, bytes] = {}  # the state of its last checkpoint

    def add(self, key: str, t: int) -> None:
        self.windows.add(key, t, self.windows.plan.values({"v": 1}))
        self.offset += 1

    def checkpoint(self, whole: bool = False) -> Checkpoint:
        cp = make_checkpoint(0, self.offset, self.windows, whole)
        return Checkpoint(
            cp.topic, cp.partition, cp.next_offset, cp.state, cp.pipeline,
            fingerprint=cp.fingerprint, changes=cp.changes, restored_from=self.name,
        )  # fmt: skip

    def save(self) -> None:
        """As the engine saves: changes where it can, whole when the base moved, nothing
        (its changes kept) when the other head is further on."""
        try:
            self.store.save([self.checkpoint()])
        except CheckpointBehind:
            return
        except CheckpointBaseMoved:
            try:
                self.store.save([self.checkpoint(whole=True)])
            except CheckpointBehind:
                return
        self.saved()

    def saved(self) -> None:
        self.windows.checkpointed()
        self.last_saved = as_bytes(windows_of(self.windows))


def loaded(directory: Path) -> tuple[str | None, int, dict[bytes, bytes]] | None:
    checkpoint = CheckpointStore(directory).load(TOPIC, 0)
    if checkpoint is None:
        return None
    return checkpoint.restored_from, checkpoint.next_offset, as_bytes(windows_of(checkpoint.state))


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 1), st.sampled_from("abc"), st.integers(0, 9)),
        st.tuples(st.just("save"), st.integers(0, 1)),
        st.tuples(st.just("split"), st.integers(0, 1)),  # frozen mid-save, the other saves
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(steps=STEPS, fresh=st.booleans())
# w1 never read a head; its first, whole checkpoint must not set w0's back.
@example(steps=[("add", 0, "a", 0), ("save", 0), ("save", 1)], fresh=True)
def test_two_writers_never_mix_states_or_lose_segments(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[Any, ...]], fresh: bool
) -> None:
    """``fresh``: the partition has no checkpoint yet when both writers read it (the group
    gave it to w1 before w0's first checkpoint); else w1 takes over from w0's first one."""
    directory = tmp_path_factory.mktemp("shared")
    writers = [Writer(directory, "w0"), Writer(directory, "w1")]
    head_offset = 0
    if fresh:
        for writer in writers:
            assert writer.store.load(TOPIC, 0) is None  # as a restore reads it
    else:
        writers[0].add("a", 0)
        writers[0].save()
        # w1 takes the partition over from w0's checkpoint, as a restore does.
        restored = writers[1].store.load(TOPIC, 0)
        assert restored is not None
        writers[1].windows = PartitionWindows.from_json(PLAN, restored.state, base=True)
        writers[1].offset = restored.next_offset
        writers[1].last_saved = writers[0].last_saved
        head_offset = restored.next_offset
    for step in steps:
        one = writers[step[1]]
        other = writers[1 - step[1]]
        if step[0] == "add":
            one.add(f"{step[2]}", step[3] * 1000)
            continue
        if step[0] == "save":
            one.save()
        else:
            # `one` writes its segments, freezes; `other` saves; `one` wakes and installs
            # the head it had prepared (the rest of CheckpointStore.save), or, when the
            # head it built on is gone, writes its state whole, or nothing when that head
            # is further on, as the engine does.
            checkpoint = one.checkpoint()
            try:
                data, base = one.store._encode(checkpoint)
            except CheckpointBehind:
                other.save()
                data = b""
            except CheckpointBaseMoved:
                checkpoint = one.checkpoint(whole=True)
                data, base = one.store._encode(checkpoint)
            if data:
                other.save()
                try:
                    one.store._install(checkpoint, data, base, pending=False)
                    one.store._collect(TOPIC, 0)
                    one.saved()
                except CheckpointBehind:
                    pass
                except CheckpointBaseMoved:
                    with contextlib.suppress(CheckpointBehind):
                        one.store.save([one.checkpoint(whole=True)])
                        one.saved()
        found = loaded(directory)
        if found is None:
            assert fresh and head_offset == 0, "the head is gone"
            continue
        who, offset, state = found
        owner = next(w for w in writers if w.name == who)
        assert state == owner.last_saved, f"{who}'s head holds another state"
        assert offset >= head_offset, f"the head went back from {head_offset} to {offset}"
        head_offset = offset
