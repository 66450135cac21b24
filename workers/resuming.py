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

``resume_point`` is the rule, a pure function (the engine applies it in ``_restore`` and
``_new_state``; tests/unit/workers/test_worker_resume_model.py checks it against a model of
runs in either mode, switched at will, killed at every step of their commit protocols):

1. a pending checkpoint whose generation is the committed one is the committed state (the
   worker died between the commit and the rename): promote it, in either mode;
2. a checkpoint of an exactly-once run resumes when the committed generation is its own
   (or, with no generation committed since, the offset is its own);
3. a checkpoint an at-least-once run wrote (no generation) resumes whatever the exactly-once
   authority says: that run came after every exactly-once commit the authority holds (an
   exactly-once commit always replaces the checkpoint too), and it never wrote the
   database's offsets table, so the table's offsets are older than the checkpoint. Whether
   the group's offset was moved by someone else since is then the at-least-once rule's
   question (``moved_by_someone_else``), asked with the group's committed offset;
4. anything else in exactly-once mode (an exactly-once checkpoint of another generation: the
   offset was reset with Kafka's own tools, or the volume was lost) starts at the committed
   offset with empty state, and says so.

At-least-once cannot judge a pending checkpoint rule 1 does not promote (with a PostgreSQL
sink only the database knows whether its transaction committed). It leaves it until its own
first checkpoint of the partition, which supersedes it: written, then the pending one
discarded, then the group's offset committed. Discarded at once, the next exactly-once
worker would find the database's offsets with no checkpoint of theirs; kept after, it
would be promoted over the newer state, whose group offset then looks like a reset.

Before rule 3 existed, switching ``delivery`` from exactly-once to at-least-once and back
with a PostgreSQL sink resumed at the database's offsets from before the switch with empty
state: partial window results were written over full ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamherd.workers.checkpointing import Checkpoint

#: The committed offset and its metadata (the generation; empty without one).
Committed = tuple[int, str]


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


def resume_point(
    main: Checkpoint | None,
    pending: Checkpoint | None,
    committed: Committed | None,
    *,
    exactly_once: bool,
) -> Resume:
    """The resume point of a partition with checkpoints `main` and `pending` (None: none),
    `committed` the authority's committed (offset, generation) (exactly-once: the group's
    or the sink's offsets table; at-least-once: the group's; None: nothing committed)."""
    offset, generation = committed if committed is not None else (None, "")
    # A pending checkpoint of a transaction that did not commit (by the authority) is
    # discarded in exactly-once mode. At-least-once leaves one it cannot judge: with a
    # PostgreSQL sink only the database knows whether it committed (its offsets table),
    # and the next exactly-once worker asks it (rule 1 or 4); until then it harms nothing.
    leftover = pending is not None and exactly_once
    if pending is not None and generation and pending.generation == generation:
        return Resume(pending, pending.next_offset, promote=True)
    left = pending is not None and not exactly_once
    if main is not None and not main.generation:
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
