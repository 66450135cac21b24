"""Where an assigned partition resumes: which checkpoint's state, from which offset.

A partition's state and its offset must always go together: state folded from the records
before offset *n*, resumed at *n*. Three things on record say where a partition stands, and
which of them is the authority depends on the delivery mode that wrote them:

- the committed checkpoint (``main``) and, in exactly-once mode, a *pending* one, stamped
  with the id (*generation*) of the transaction it belongs to;
- the committed offset and its metadata: the consumer group's (Kafka's transactions commit
  the generation as the offset's metadata), or with a PostgreSQL sink in exactly-once mode
  the database's offsets table (workers/sinks_postgres_offsets.py), which only exactly-once
  workers write;
- the group's committed offset alone, which at-least-once workers commit after each
  checkpoint, without metadata.

``resume_point`` is the rule, a pure function (the engine applies it, through
``resume_among`` over every writer's pending checkpoint, in ``_restore`` and
``_new_state``; tests/unit/workers/test_worker_resume_model.py checks it against a model
of runs in either mode, switched at will, killed at every step of their commit protocols):

1. a pending checkpoint whose generation is the committed one is the committed state (the
   worker died between the commit and the rename): promote it, in either mode (one of
   another authority is judged by the group's offset, whose metadata every exactly-once
   commit sets after its authority's);
2. a checkpoint of an exactly-once run resumes when the committed generation is its own
   (or, with no generation committed since, the offset is its own);
3. a checkpoint an at-least-once run wrote (no generation), or a run whose offsets lived
   elsewhere (another sink table, or the group while this one's live in a table: its
   ``authority``), resumes whatever this worker's authority says: that run came after
   every commit this authority holds (a commit always replaces the checkpoint too), and it
   never wrote this authority's offsets, so they are older than the checkpoint. Whether
   the group's offset was moved by someone else since is then the at-least-once rule's
   question (``moved_by_someone_else``), asked with the group's committed offset, which
   every mode commits;
4. anything else in exactly-once mode (an exactly-once checkpoint of another generation: the
   offset was reset with Kafka's own tools, or the volume was lost) starts at the committed
   offset with empty state, and says so.

One case cannot be decided: in exactly-once mode, a pending checkpoint of another sink
table that the group's offset does not confirm (a worker died between that table's commit
and the group's, and the table was edited before a worker of it came back). Promoted, it
may hold records that table never committed; discarded, the table's offsets would later
match no checkpoint (rule 4: a partial window). It is held (``Resume.undecided``) until the
pipeline runs with that table again, or the state policy discards it.

At-least-once cannot judge a pending checkpoint rule 1 does not promote (with a PostgreSQL
sink only the database knows whether its transaction committed). It leaves it until its own
first checkpoint of the partition, which supersedes it: written, then the pending one
discarded, then the group's offset committed. Discarded at once, the next exactly-once
worker would find the database's offsets with no checkpoint of theirs; kept after, it
would be promoted over the newer state, whose group offset then looks like a reset.

Before rule 3 existed, switching ``delivery`` from exactly-once to at-least-once and back
with a PostgreSQL sink resumed at the database's offsets from before the switch with empty
state: partial window results were written over full ones; so did switching the sink's
table and back (the first table's offsets from before the switch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from streamherd.workers.checkpointing import Checkpoint

#: The committed offset and its metadata (the generation; empty without one).
Committed = tuple[int, str]
#: The authority of at-least-once and of exactly-once into Kafka: the consumer group.
GROUP: Final = "group"


@dataclass(frozen=True)
class Resume:
    """Where a partition resumes (``resume_point``)."""

    checkpoint: Checkpoint | None  # the state to restore; None: empty state
    offset: int | None  # where to start; None: the group's offset or startFrom decide
    promote: bool = False  # the pending checkpoint is the committed one
    discard_pending: bool = False  # a pending checkpoint of a transaction that never committed
    # The committed offset matches no checkpoint: empty state there (rule 4).
    mismatch: bool = False
    # An at-least-once checkpoint resumed in exactly-once mode (rule 3): the group's
    # committed offset, not the exactly-once authority, tells whether it was reset.
    judged_by_group: bool = False
    # At-least-once left a pending checkpoint it cannot judge: its first checkpoint of the
    # partition supersedes it, and discards it (after writing, before committing offsets).
    pending_left: bool = False
    # Exactly-once: a pending checkpoint of another authority (named) whose outcome cannot
    # be told here: the partition is held (the engine applies the state policy).
    undecided: str | None = None


def resume_point(
    main: Checkpoint | None,
    pending: Checkpoint | None,
    committed: Committed | None,
    *,
    exactly_once: bool,
    authority: str = GROUP,
    group: Committed | None = None,
) -> Resume:
    """The resume point of a partition with checkpoints `main` and `pending` (None: none),
    `committed` the committed (offset, generation) of `authority`, where this worker's
    offsets live (:data:`GROUP`, or a sink's offsets table, ``postgres:<table>``; None:
    nothing committed there), and `group` the consumer group's (None: the same as
    `committed`, or nothing committed)."""
    if authority == GROUP or group is None:
        group = committed if authority == GROUP else group
    offset, generation = committed if committed is not None else (None, "")
    # A pending checkpoint of a transaction that did not commit (by its authority) is
    # discarded in exactly-once mode. At-least-once leaves one it cannot judge: with a
    # PostgreSQL sink only the database knows whether it committed (its offsets table),
    # and the next exactly-once worker asks it (rule 1 or 4); until then it harms nothing.
    leftover = pending is not None and exactly_once
    if pending is not None and pending.generation:
        # Rule 1. A pending checkpoint of another authority (another sink table, or the
        # group's): its own authority is not read here, but the group's offset carries the
        # id of every exactly-once commit, after its authority's commit.
        told = group if _foreign(pending, authority) else committed
        if told is not None and told[1] == pending.generation:
            return Resume(pending, pending.next_offset, promote=True)
    if (
        exactly_once
        and pending is not None
        and pending.generation
        and pending.authority not in (None, GROUP, authority)
    ):
        # A pending checkpoint of another sink table, which the group does not confirm: its
        # transaction may have committed there (the group's commit after it lost), so it
        # can be neither promoted nor discarded without losing state or results. Held
        # until a worker of that table decides it (or the state policy discards it).
        return Resume(None, None, undecided=pending.authority)
    left = pending is not None and not exactly_once
    if main is not None and (not main.generation or _foreign(main, authority)):
        # Rule 3 (and at-least-once's own checkpoints): the checkpoint stands.
        return Resume(main, main.next_offset, discard_pending=leftover,
                      judged_by_group=exactly_once, pending_left=left)  # fmt: skip
    if main is not None and (
        not exactly_once
        or (main.generation == generation if generation else offset in (None, main.next_offset))
    ):
        return Resume(main, main.next_offset, discard_pending=leftover, pending_left=left)
    if not exactly_once:
        return Resume(None, None, pending_left=left)
    return Resume(
        None,
        offset,
        discard_pending=leftover,
        mismatch=main is not None or offset is not None,
    )


def resume_among(
    main: Checkpoint | None,
    pendings: Sequence[Checkpoint],
    committed: Committed | None,
    *,
    exactly_once: bool,
    authority: str = GROUP,
    group: Committed | None = None,
) -> Resume:
    """``resume_point`` with every writer's pending checkpoint of the partition: besides
    the one its last owner left, a worker the group left behind may have staged its own
    (its transaction fenced by the broker). At most one can be the committed one (rule 1:
    each transaction has its own generation): that one is promoted; else one the rule holds
    is held; else none committed, and the verdict is the same for each. The others are
    leftovers, as a lone pending checkpoint the rule does not promote (discarded in
    exactly-once mode, left to at-least-once's first checkpoint)."""
    verdicts = [
        resume_point(main, pending, committed, exactly_once=exactly_once,
                     authority=authority, group=group)
        for pending in pendings
    ] or [resume_point(main, None, committed, exactly_once=exactly_once,
                       authority=authority, group=group)]  # fmt: skip
    chosen = next(
        (r for r in verdicts if r.promote),
        next((r for r in verdicts if r.undecided is not None), verdicts[0]),
    )
    if chosen.promote and len(pendings) > 1:
        return replace(chosen, discard_pending=exactly_once, pending_left=not exactly_once)
    return chosen


def _foreign(checkpoint: Checkpoint, authority: str) -> bool:
    """Whether `checkpoint` was written by a run whose offsets lived elsewhere (None:
    written before checkpoints said: taken as this authority's)."""
    return checkpoint.authority is not None and checkpoint.authority != authority


def moved_by_someone_else(
    group_committed: int | None, checkpoint_committed: int | None, next_offset: int | None
) -> bool:
    """Whether the group's committed offset was moved by someone other than this pipeline
    (``kafka-consumer-groups.sh --reset-offsets``) since a checkpoint was written.

    The checkpoint knows the group's committed offset when it was written and its own next
    offset; the pipeline only ever commits offsets between the two (its own checkpoints',
    in order; a replay moves it back, so in either order). Nothing committed, or no next
    offset, is not a reset: the checkpoint stands."""
    if group_committed is None or next_offset is None:
        return False
    known = checkpoint_committed if checkpoint_committed is not None else -1
    return not min(known, next_offset) <= group_committed <= max(known, next_offset)
