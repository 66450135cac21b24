"""Two-phase commit into PostgreSQL with Kafka's transaction as the decider: the names and
the recovery decision (pure; no I/O).

Used by :mod:`streamherd.workers.sinks_postgres_offsets` when an exactly-once pipeline into
PostgreSQL also writes to Kafka (dead letters, repartition records, changelog records:
decision 0155, docs/storage.md). A checkpoint of generation G is

1. PostgreSQL: the partitions it covers recorded in the side table ``streamherd_prepared``
   (autocommitted), then one transaction with the result rows, the offsets rows
   (compare-and-set) and the deletion of its own side rows, ended by ``PREPARE TRANSACTION
   '<prefix>:<G>'``;
2. Kafka: the open transaction (the checkpoint's dead letters, repartition and changelog
   records) gets the input offsets with ``G`` as their metadata and commits;
3. PostgreSQL: ``COMMIT PREPARED`` (or ``ROLLBACK PREPARED`` when Kafka's transaction was
   aborted).

A worker that dies between 1 and 3 leaves a prepared transaction behind. :func:`resolve`
decides its fate from what Kafka committed: if any partition it covers has G as its
committed offset's metadata (read ``read_committed``, so a pending transaction's offsets are
not taken as committed, KIP-447), Kafka's transaction committed and so must PostgreSQL's;
otherwise Kafka's can no longer commit and PostgreSQL's rolls back. The evidence cannot be
overwritten before the decision: a later checkpoint of a covered partition must first update
its offsets row, which the prepared transaction holds locked, and only sends offsets to Kafka
after that.

Who may decide: a worker for which the prepared transaction's writer should no longer
commit Kafka's side — the gid covers a partition this worker is being assigned (the group
moved on: the writer's offsets would be refused, KIP-447 fencing), or the writer was this
worker's previous incarnation (same transactional id: fenced by ``init_transactions``). A
live writer's transaction between its PREPARE and its Kafka commit is never touched. And
because the deciding worker may itself be stale (frozen past its session after it was
assigned the partitions), the writer's Kafka transaction is fenced first
(:func:`to_fence`: ``init_transactions`` with the writer's transactional id, unless a later
incarnation of the writer has registered since, which did just that): the evidence read
after it is final.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: (topic, partition)
TP = tuple[str, int]

SIDE_TABLE: Final = "streamherd_prepared"
WRITERS_TABLE: Final = "streamherd_writers"
#: PostgreSQL's limit for a prepared transaction's identifier (bytes, less one).
GID_MAX: Final = 199


def gid_prefix(sink_table: str, consumer_group: str) -> str:
    """What every prepared transaction of one pipeline's offsets (results table and consumer
    group) is named with: short and fixed-length whatever the names are."""
    digest = hashlib.sha256(f"{sink_table}\0{consumer_group}".encode()).hexdigest()[:20]
    return f"streamherd-{digest}"


def gid_of(prefix: str, generation: str) -> str:
    gid = f"{prefix}:{generation}"
    if len(gid.encode()) > GID_MAX:
        raise ValueError(f"prepared transaction id longer than {GID_MAX} bytes: {gid!r}")
    return gid


def generation_of(prefix: str, gid: str) -> str | None:
    """The generation a gid of this prefix names; None for another pipeline's gid."""
    head = f"{prefix}:"
    return gid[len(head) :] if gid.startswith(head) and len(gid) > len(head) else None


@dataclass(frozen=True)
class Covered:
    """What the side table says of one gid: which worker prepared it, and what it covers."""

    writer: str
    partitions: frozenset[TP]


@dataclass(frozen=True)
class Resolution:
    """What to do with this pipeline's prepared transactions and side rows."""

    commit: frozenset[str]
    rollback: frozenset[str]
    # Ours to decide, but Kafka's answer for its partitions could not be read stably (a
    # transaction of its writer still pending, the broker unreachable): ask again.
    undecided: frozenset[str]
    # Prepared with no side rows: the side table was changed by hand. Never guessed.
    unexplained: frozenset[str]
    # Side rows of gids that are not prepared (their writer died before PREPARE, or its
    # transaction rolled back): deleted, when they are ours to decide.
    forget: frozenset[str]


def ours(covered: Covered, assigned: Iterable[TP], writer: str) -> bool:
    """Whether this worker may decide a gid: it covers a partition being assigned to it, or
    its writer was this worker's previous incarnation."""
    return covered.writer == writer or not covered.partitions.isdisjoint(assigned)


def wanted_partitions(
    prepared: Iterable[str],
    side: Mapping[str, Covered],
    *,
    prefix: str,
    assigned: Iterable[TP],
    writer: str,
) -> frozenset[TP]:
    """The partitions whose committed offsets :func:`resolve` needs."""
    mine = frozenset(assigned)
    found: set[TP] = set()
    for gid in prepared:
        covered = side.get(gid)
        if generation_of(prefix, gid) is not None and covered and ours(covered, mine, writer):
            found |= covered.partitions
    return frozenset(found)


def incarnation_of(generation: str) -> str:
    """The worker incarnation a generation was made by (``<incarnation>-<counter>``)."""
    return generation.rpartition("-")[0]


def to_fence(
    prepared: Iterable[str],
    side: Mapping[str, Covered],
    incarnations: Mapping[str, str],
    *,
    prefix: str,
    assigned: Iterable[TP],
    writer: str,
) -> frozenset[str]:
    """The writers (transactional ids) whose Kafka transactions must be fenced before the
    prepared ones this worker may decide are decided: each such gid's writer, unless it is
    this worker (its start fenced its earlier incarnations) or a later incarnation of that
    writer registered since (``incarnations``: writer -> its latest incarnation; a later
    one's ``init_transactions`` fenced the gid's). Fencing makes the decision safe even when
    this worker is itself stale (frozen past its session while deciding): the writer's
    transaction is then decided before the evidence is read."""
    mine = frozenset(assigned)
    out: set[str] = set()
    for gid in prepared:
        generation = generation_of(prefix, gid)
        covered = side.get(gid)
        if generation is None or not covered or not ours(covered, mine, writer):
            continue
        if covered.writer == writer:
            continue
        latest = incarnations.get(covered.writer)
        if latest is None or latest == incarnation_of(generation):
            out.add(covered.writer)
    return frozenset(out)


def resolve(
    prepared: Iterable[str],
    side: Mapping[str, Covered],
    committed: Mapping[TP, str | None],
    *,
    prefix: str,
    assigned: Iterable[TP],
    writer: str,
) -> Resolution:
    """The decision for this pipeline's (``prefix``) prepared transactions ``prepared`` (gids
    of any pipeline), given the side table (gid -> writer and covered partitions), Kafka's
    committed offset metadata read stably (a partition missing: not read; None: nothing
    committed), the partitions being assigned to this worker and its writer id."""
    mine = frozenset(assigned)
    commit: set[str] = set()
    rollback: set[str] = set()
    undecided: set[str] = set()
    unexplained: set[str] = set()
    ours_prepared: set[str] = set()
    for gid in prepared:
        generation = generation_of(prefix, gid)
        if generation is None:
            continue  # another pipeline's
        ours_prepared.add(gid)
        covered = side.get(gid)
        if covered is None or not covered.partitions:
            unexplained.add(gid)
            continue
        if not ours(covered, mine, writer):
            continue  # its writer may still commit Kafka's side: not ours to decide
        seen = [committed[tp] for tp in covered.partitions if tp in committed]
        if generation in seen:
            commit.add(gid)
        elif len(seen) == len(covered.partitions):
            rollback.add(gid)
        else:
            undecided.add(gid)
    forget = {
        gid
        for gid, covered in side.items()
        if gid not in ours_prepared
        and generation_of(prefix, gid) is not None
        and ours(covered, mine, writer)
    }
    return Resolution(
        frozenset(commit),
        frozenset(rollback),
        frozenset(undecided),
        frozenset(unexplained),
        frozenset(forget),
    )
