"""Where a partition resumes, as a model: its state always covers exactly the records before
the offset it resumes at, whatever runs came before it, in which delivery mode, killed at
which step of their commit protocols.

One partition, seen by the engine's pure rules (workers/resuming.py): ``resume_point``
(which checkpoint, from which offset) and ``moved_by_someone_else`` (the at-least-once
reset check). Around them, a model of what the engine, the broker and the database do with
them: a run resumes, folds records, and checkpoints by its mode's protocol, any step of
which a kill may interrupt:

- at-least-once: the checkpoint (no generation), the discard of a pending checkpoint it
  left, the group's offset without metadata;
- exactly-once into Kafka: a pending checkpoint stamped with the transaction's id, the
  transaction (the group's offset with the id as metadata), the rename to committed;
- exactly-once into PostgreSQL: the pending checkpoint, the database's transaction (the
  offsets table), the group's offset with the id (the lag figures; may be lost), the rename.

Between runs the user may switch ``delivery``, switch a PostgreSQL sink's table (each table
has its own offsets row), or move the group's offset with Kafka's own tools. The state is
the range of offsets folded into it: after every resume it must end at the resume offset
(no record lost or folded twice) and begin at the first offset, or at an offset the user
reset the group to. The rule the engine had before (exactly-once trusted the authority's
offset over an at-least-once checkpoint) fails it:
``test_the_old_rule_loses_state_on_a_delivery_switch`` finds the switch that shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import find, given, settings
from hypothesis import strategies as st

from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.resuming import (
    GROUP,
    Committed,
    Resume,
    moved_by_someone_else,
    resume_point,
)

Mode = Literal["alo", "eos"]
Sink = Literal["kafka", "postgres"]
Rule = Callable[..., Resume]
MODES: tuple[Mode, ...] = ("alo", "eos")
#: Where a kill may stop a checkpoint: after step 1, 2 or 3 of its mode's protocol.
KILL_POINTS = (1, 2, 3)


@dataclass
class World:
    """What outlives a worker: its checkpoints, the group's committed offset and metadata,
    the database's offsets table (exactly-once into PostgreSQL writes it) and the offsets
    the user reset the group to."""

    sink: Sink
    main: Checkpoint | None = None
    pending: Checkpoint | None = None
    group: Committed | None = None
    tables: dict[str, Committed] = field(default_factory=dict)  # each table's offsets row
    table: str = "A"  # the sink's table now (a PostgreSQL sink)
    resets: set[int] = field(default_factory=set)
    transactions: int = 0

    def authority(self, mode: Mode) -> str:
        """Where a worker of `mode` keeps its offsets (workers/resuming.py)."""
        return f"postgres:{self.table}" if mode == "eos" and self.sink == "postgres" else GROUP

    def checkpoint(self, start: int, end: int, generation: str, mode: Mode) -> Checkpoint:
        return Checkpoint(
            "t", 0, end, state={"from": start, "to": end}, generation=generation, group="g",
            committed=self.group[0] if self.group is not None else None,
            authority=self.authority(mode),
        )  # fmt: skip


def resume(world: World, mode: Mode, rule: Rule) -> tuple[tuple[int, int], int] | None:
    """The state (first offset, next offset) a worker of `mode` resumes with, and the
    resume offset, by the engine's steps (``_restore``, ``_new_state``, ``_on_assign``)."""
    authority = world.authority(mode)
    committed = world.tables.get(world.table) if authority != GROUP else world.group
    r = rule(world.main, world.pending, committed, exactly_once=mode == "eos",
             authority=authority, group=world.group)  # fmt: skip
    if r.undecided is not None:
        return None  # held: the partition does not run, nothing changes
    if r.promote:
        world.main, world.pending = world.pending, None
    elif r.discard_pending:
        world.pending = None
    checkpoint = r.checkpoint
    position = r.offset if mode == "eos" else None
    if checkpoint is not None:
        position = checkpoint.next_offset
    group = world.group[0] if world.group is not None else None
    # The group's offset judges the checkpoint unless a database holds the offsets.
    judged = mode == "alo" or world.sink == "kafka" or r.judged_by_group
    if (
        checkpoint is not None
        and judged
        and moved_by_someone_else(group, checkpoint.committed, checkpoint.next_offset)
    ):
        checkpoint, position = None, group
    if position is None:
        position = group if group is not None else 0
    if checkpoint is None:
        return (position, position), position
    assert checkpoint.state is not None
    return (checkpoint.state["from"], checkpoint.state["to"]), position


def run(world: World, mode: Mode, steps: list[int], kill: int | None, rule: Rule) -> None:
    """One worker: resumes, then per step folds that many records and checkpoints; `kill`
    stops it at that step of its last checkpoint (None: it stops cleanly)."""
    resumed = resume(world, mode, rule)
    if resumed is None:
        return  # held
    (first, end), position = resumed
    check(world, first, end, position)
    for i, count in enumerate(steps):
        end = position = position + count
        stop = kill if i == len(steps) - 1 else None
        if not checkpoint(world, mode, first, end, stop):
            return


def checkpoint(world: World, mode: Mode, first: int, end: int, kill: int | None) -> bool:
    """Its mode's checkpoint protocol; False when killed (at step `kill`)."""
    if mode == "alo":
        world.main = world.checkpoint(first, end, "", mode)
        if kill == 1:
            return False
        world.pending = None  # superseded (a no-op after the run's first checkpoint)
        if kill == 2:
            return False
        world.group = (end, "")
        return kill is None
    world.transactions += 1
    generation = f"g{world.transactions}"
    world.pending = world.checkpoint(first, end, generation, mode)
    if kill == 1:
        return False
    if world.sink == "postgres":
        world.tables[world.table] = (end, generation)
        if kill == 2:
            return False  # the group's offset is lost with the worker
    world.group = (end, generation)
    if kill == 2 or kill == 3:
        return False
    world.main, world.pending = world.pending, None
    return True


def check(world: World, first: int, end: int, position: int) -> None:
    assert end == position, f"state ends at {end}, resumed at {position}"
    assert first == 0 or first in world.resets, f"state begins at {first}: records lost"


runs = st.lists(
    st.tuples(
        st.sampled_from(MODES),
        st.lists(st.integers(1, 5), min_size=1, max_size=3),
        st.none() | st.sampled_from(KILL_POINTS),
        st.none() | st.integers(0, 40),  # the user resets the group's offset before it
        st.sampled_from(["A", "B"]),  # the PostgreSQL sink's table (edited between runs)
    ),
    min_size=1,
    max_size=8,
)


History = list[tuple[Mode, list[int], int | None, int | None, str]]


def play(sink: Sink, history: History, rule: Rule, last: tuple[Mode, ...] = ("alo", "eos")) -> None:
    world = World(sink)
    for mode, steps, kill, reset, table in history:
        world.table = table
        if reset is not None:
            world.group = (reset, "")
            world.resets.add(reset)
        run(world, mode, steps, kill, rule)
    # Last, a worker of each mode in `last` resumes (and is killed at once).
    for mode in last:
        resumed = resume(world, mode, rule)
        if resumed is not None:
            (first, end), position = resumed
            check(world, first, end, position)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["kafka", "postgres"]), runs)
def test_state_always_covers_exactly_the_records_before_the_resume_offset(
    sink: Sink, history: History
) -> None:
    play(sink, history, resume_point)


def old_rule(
    main: Checkpoint | None,
    pending: Checkpoint | None,
    committed: Committed | None,
    *,
    exactly_once: bool,
    **_: object,
) -> Resume:
    """The engine's rule before workers/resuming.py: exactly-once trusted the authority's
    offset and generation over any checkpoint, at-least-once ignored pending ones."""
    if not exactly_once:
        return Resume(main, main.next_offset if main is not None else None)
    offset, generation = committed if committed is not None else (None, "")
    if pending is not None and generation and pending.generation == generation:
        return Resume(pending, pending.next_offset, promote=True)
    if main is not None and (
        main.generation == generation if generation else offset in (None, main.next_offset)
    ):
        return Resume(main, main.next_offset, discard_pending=pending is not None)
    return Resume(None, offset, discard_pending=pending is not None, mismatch=True)


def fails(sink: Sink, rule: Rule, last: tuple[Mode, ...]) -> Callable[[History], bool]:
    def failing(history: History) -> bool:
        try:
            play(sink, history, rule, last)
        except AssertionError:
            return True
        return False

    return failing


def test_the_old_rule_loses_state_on_a_delivery_switch() -> None:
    """The model finds both of the old rule's failures, and the rule of today passes the
    histories it finds:

    - with a PostgreSQL sink, an exactly-once worker after an at-least-once run resumed at
      the database's offsets from before that run, with empty state;
    - at-least-once after an exactly-once worker killed between its commit and the rename
      ignored the pending checkpoint: empty state at the committed offset."""
    cases: list[tuple[Sink, tuple[Mode, ...]]] = [
        ("postgres", ("eos",)),
        ("kafka", ("alo",)),
        ("postgres", ("alo",)),
    ]
    for sink, last in cases:
        history = find(runs, fails(sink, old_rule, last), settings=settings(max_examples=5000))
        if last == ("eos",):  # a delivery switch, or a switch of the sink's table
            assert (
                any(mode == "alo" for mode, *_ in history)
                or len({table for *_, table in history}) > 1
            ), history
        play(sink, history, resume_point, last)


def test_exactly_once_into_postgres_switched_to_at_least_once_and_back() -> None:
    """The history of the report: the database's offsets are from before the
    at-least-once run; the checkpoint it wrote wins, and the table is left to be updated
    (compare-and-set on its generation) by the next exactly-once commit."""
    world = World("postgres")
    run(world, "eos", [10], None, resume_point)
    run(world, "alo", [5, 5], None, resume_point)
    assert world.tables == {"A": (10, "g1")}
    assert world.main is not None and world.main.next_offset == 20
    assert resume(world, "eos", resume_point) == ((0, 20), 20)


def test_a_postgresql_table_switched_and_back_resumes_from_the_checkpoint() -> None:
    """Exactly-once into table A, then B, then A again: A's offsets row is from before B;
    the checkpoint of the run into B wins (its authority was B), as a reviewer found the
    rule before it did not (empty state at A's old offset)."""
    world = World("postgres")
    run(world, "eos", [10], None, resume_point)
    world.table = "B"
    run(world, "eos", [5, 5], None, resume_point)
    world.table = "A"
    assert world.tables == {"A": (10, "g1"), "B": (20, "g3")}
    assert resume(world, "eos", resume_point) == ((0, 20), 20)


def test_a_pending_checkpoint_of_another_table_the_group_does_not_confirm_is_held() -> None:
    world = World("postgres")
    run(world, "eos", [1], 2, resume_point)  # table A committed, the group's commit lost
    world.table = "B"
    assert resume(world, "eos", resume_point) is None  # held: undecided
    world.table = "A"  # back: table A's worker decides it (its row names the generation)
    assert resume(world, "eos", resume_point) == ((0, 1), 1)
