"""Abort and rewind under exactly-once, as a model: every record is folded into committed
state exactly once, whatever the schedule of batches, commits, aborts and kills.

One partition of a source topic, seen by the engine's own pure rules (workers/engine.py):
``unseen`` (which fetched messages the state has not reflected), ``first_read`` (the
offset this worker began reading from, for a partition that started empty) and
``rewind_offset`` (where an aborted transaction seeks). Around them, a model of what the
engine and the broker do with them: the consumer's position (kept through an abort, moved
only by a seek), a batch folding its records into the partition's state, a transaction that
commits the state with its next offset, an abort that puts back the committed checkpoint (or
empty state), and a kill (a new worker restores the committed checkpoint, or starts at
``startFrom``). Hypothesis draws the schedule; after every commit the committed state holds
each offset from ``startFrom`` to its next offset exactly once. The real broker test of the
same bug is tests/integration/engine/test_engine_abort_rewind.py.

A partition may also begin at an offset the group committed with no checkpoint of it (a
stateless pipeline's, a checkpoint lost or of another generation): workers/resuming.py's
``resume_point`` puts it there with empty state, on assign, after an abort and after a kill,
until this worker's first commit; the rule then counts from that offset
(tests/integration/engine/test_engine_abort_rewind_starts.py on the real broker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import find, given, settings
from hypothesis import strategies as st

from streamherd.workers.engine import first_read, rewind_offset, unseen
from streamherd.workers.processing import SourceMessage
from streamherd.workers.resuming import resume_point
from tests.unit.workers.sourcemessages import Msg


def offset_of(message: SourceMessage) -> int:
    """A fetched message's offset (a consumed record always has one)."""
    offset = message.offset()
    assert offset is not None
    return offset


Rewind = Callable[[int | None, int | None], int | None]


@dataclass
class Partition:
    """The engine's state of one partition, the consumer's position and the broker's
    committed checkpoint (next offset and the offsets folded into the state)."""

    end: int  # the log's end: offsets start_from .. end - 1 exist
    start_from: int  # where a group with nothing committed starts (startFrom)
    rewind: Rewind
    # The group's committed offset before this worker, with no checkpoint of it (None: none).
    group: int | None = None
    position: int = 0
    next_offset: int | None = None
    read_from: int | None = None
    folded: list[int] = field(default_factory=list)
    committed: tuple[int, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        self.kill()  # the first worker: assigned as a new one is

    def fetch(self, count: int, back: int = 0) -> None:
        """consume(): up to ``count`` records from the position, or (``back``) from an
        earlier offset a fetch before the last seek had buffered; then the batch."""
        if back and self.next_offset is not None:
            self.position = max(self.start_from, self.next_offset - back)
        fetched = range(self.position, min(self.position + count, self.end))
        messages: list[SourceMessage] = [Msg(o, b"{}") for o in fetched]
        self.position += len(messages)
        if not messages:
            return
        group = [offset_of(m) for m in unseen(messages, self.next_offset)]
        if not group:
            return
        self.read_from = first_read(self.next_offset, self.read_from, group[0])
        self.folded += group  # the window fold
        self.next_offset = group[-1] + 1

    def commit(self) -> None:
        """A checkpoint interval's transaction commits: the state with its next offset."""
        if self.next_offset is not None:
            self.committed = (self.next_offset, tuple(self.folded))
            self.check()

    def abort(self) -> None:
        """_abort_and_rewind: the committed checkpoint (or empty state) and a seek."""
        read_from = self.read_from
        self._restore()
        offset = self.rewind(self.next_offset, read_from)
        if offset is not None:
            self.position = offset

    def kill(self) -> None:
        """A new worker: the committed checkpoint, or ``startFrom`` with nothing committed."""
        self._restore()
        self.position = self.next_offset if self.next_offset is not None else self.start_from

    def _restore(self) -> None:
        self.read_from = None  # a new PartitionState
        if self.committed is None:
            # Nothing this worker committed: the group's offset with empty state, or none.
            told = None if self.group is None else (self.group, "")
            self.next_offset = resume_point(None, None, told, exactly_once=True).offset
            self.folded = []
        else:
            self.next_offset, self.folded = self.committed[0], list(self.committed[1])

    def check(self) -> None:
        """Committed state = every offset from where the partition began (the group's
        offset, or startFrom) to its next offset, each once."""
        assert self.committed is not None
        next_offset, folded = self.committed
        began = self.start_from if self.group is None else self.group
        assert Counter(folded) == Counter(range(began, next_offset)), (
            f"committed up to {next_offset}: {sorted(folded)}"
        )

    def finish(self) -> None:
        """Read to the end and commit: the last committed state holds the whole log."""
        while self.position < self.end:
            self.fetch(self.end)
        self.commit()
        if (self.start_from if self.group is None else self.group) < self.end:
            assert self.committed is not None and self.committed[0] == self.end


actions = st.lists(
    st.one_of(
        st.tuples(st.just("fetch"), st.integers(1, 6), st.just(0)),
        st.tuples(st.just("fetch"), st.integers(1, 6), st.integers(1, 5)),  # buffered, stale
        st.tuples(st.just("commit"), st.just(0), st.just(0)),
        st.tuples(st.just("abort"), st.just(0), st.just(0)),
        st.tuples(st.just("kill"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


def run(
    schedule: list[tuple[str, int, int]],
    end: int,
    start_from: int,
    rewind: Rewind,
    group: int | None = None,
) -> None:
    start_from = min(start_from, end)
    partition = Partition(
        end=end,
        start_from=start_from,
        rewind=rewind,
        # In the log (a committed offset before the log start is the consumer's reset's).
        group=None if group is None else min(start_from + group, end),
    )
    for action, count, back in schedule:
        if action == "fetch":
            partition.fetch(count, back)
        else:
            getattr(partition, action)()
    partition.finish()


@settings(max_examples=1000, deadline=None)
@given(
    schedule=actions,
    end=st.integers(0, 30),
    start_from=st.integers(0, 10),
    group=st.none() | st.integers(0, 12),  # past startFrom
)
def test_every_record_is_folded_into_committed_state_exactly_once(
    schedule: list[tuple[str, int, int]], end: int, start_from: int, group: int | None
) -> None:
    run(schedule, end, start_from, rewind_offset, group)


def test_the_model_finds_the_bug_the_rewind_fixed() -> None:
    """Without the seek back to ``read_from`` (the rule before the fix: only a committed
    checkpoint's offset), an abort before the first commit skips the aborted records."""

    def committed_only(restored_next: int | None, read_from: int | None) -> int | None:
        return restored_next

    def fails(case: tuple[list[tuple[str, int, int]], int, int]) -> bool:
        try:
            run(*case, committed_only)
        except AssertionError:
            return True
        return False

    schedule, end, start_from = find(
        st.tuples(actions, st.integers(0, 30), st.integers(0, 10)), fails
    )
    assert ("abort", 0, 0) in schedule and end > start_from
