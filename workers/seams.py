"""The engine's seams: what a source, the outputs and a state backend must offer the loop.

``streamherd.workers.engine`` runs one processing loop over these three interfaces and knows
no implementation: sources live in ``streamherd.workers.sources`` (Kafka, the generator),
state backends in ``streamherd.workers.statebackends`` (volume files) and
``streamherd.workers.changelog`` (a compacted Kafka topic), the sink in
``streamherd.workers.sinks`` (Kafka, stdout, PostgreSQL, dead letters, repartition records).
Each factory (``open_source``, ``open_state_backend``) is the one place that maps a
``WorkerConfig`` to an implementation, so a new backend or sink is a module plus one line
there. Protocols only: no behaviour here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import TopicPartition

from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.processing import Failure, SourceMessage

#: A partition event handler: the partitions that were assigned, revoked or lost.
PartitionEvent = Callable[[list[TopicPartition]], None]
#: What identifies a topic's log within its cluster: its topic id (None: not known) and
#: its partition count.
LogIdentity = tuple[str | None, int]


class Source(Protocol):
    """Records per partition, with assign/revoke/lost events and offsets.

    Mirrors the consumer operations the loop needs (a Kafka consumer's, in its terms, so the
    Kafka source is a thin wrapper). A source without a consumer group (``group_offsets``
    False: the generator) assigns every partition once in :meth:`open`, has no committed
    offsets and no offsets for times; its commit is a no-op."""

    name: str
    group_offsets: bool
    #: The id of the Kafka cluster the offsets are of (Kafka's cluster.id), known once
    #: :meth:`open` returned; None without a cluster (the generator) or when the brokers
    #: did not say.
    cluster_id: str | None
    #: Where the source's own sequence begins (epoch ms) for a source that cannot tell it
    #: again after a restart (the generator without startTimeMs: the wall clock at its
    #: first start), known once :meth:`assign` returned; None for a log (Kafka). Kept in
    #: every checkpoint and handed back by :meth:`adopt_origin` before :meth:`assign`.
    origin_ms: int | None

    def adopt_origin(self, origin_ms: int) -> None:
        """Go on with the sequence that began at `origin_ms` (a restored checkpoint's)."""

    def open(self, assigned: PartitionEvent, revoked: PartitionEvent, lost: PartitionEvent) -> None:
        """Start reading; partition events are served from inside :meth:`poll` (and, for a
        source without a group, once from here)."""

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        """The next batch (messages with ``error()``, ``topic()``, ``partition()``,
        ``offset()``...); an empty list when nothing came within ``timeout``."""

    @property
    def exhausted(self) -> bool:
        """A finite source that has produced its last record."""

    def describe(self) -> Mapping[str, Any]:
        """Fields for the ``started`` log line."""

    def assign(self, start: list[TopicPartition]) -> None:
        """Take the partitions of an assign event, each from its offset (OFFSET_INVALID:
        the source's own start)."""

    def unassign(self, partitions: list[TopicPartition]) -> None: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition) -> None: ...

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        """The group's committed offsets (with their metadata); offset < 0: none."""

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        """Commit offsets; a synchronous commit returns what the broker confirmed."""

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]: ...

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        """(log start, log end) of a partition, or None when unknown; ``fresh``: asked from
        the broker now, not the figures of the last fetch."""

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where the source reads each partition next (local, no broker asked): the offset
        after the last record it handed out, moved past the control records (transaction
        markers) and aborted records that followed it; offset < 0: not known."""

    def group_metadata(self) -> Any:
        """The consumer group's metadata for a transaction's offsets (KIP-447)."""

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, LogIdentity]:
        """Each of `topics`' topic id and partition count, as the cluster says now (one
        request); topics it could not describe (no answer in time, no such topic) are
        left out: their checkpoints are then not judged by them."""

    def close(self) -> None:
        """Leave: revokes every partition through the revoke event."""


class Sink(Protocol):
    """Everything the loop writes: results to the sink, dead letters, repartition records and
    progress markers, with delivery checks (``streamherd.workers.sinks.Outputs``: the Kafka,
    stdout and PostgreSQL sinks and the dead-letter topic behind one object). In exactly-once
    mode every Kafka output goes through one transactional producer (``transaction``)."""

    @property
    def transaction(self) -> Any: ...

    @property
    def has_dead_letter(self) -> bool: ...

    def write(
        self,
        rows: list[tuple[bytes | str | None, Mapping[str, Any] | bytes]],
        sources: Sequence[SourceMessage] | SourceMessage | None = None,
    ) -> None: ...

    def dead_letter(self, failures: list[Failure], alone: bool = False) -> None: ...

    def repartition(
        self,
        topic: str,
        partitions: int,
        rows: list[tuple[str, bytes, int, int, list[tuple[str, bytes]]]],
    ) -> None: ...

    def repartition_marker(
        self, topic: str, partitions: int, headers: list[tuple[str, bytes]]
    ) -> None: ...

    def flush(self, timeout: float) -> bool:
        """Every output delivered (True) or not within ``timeout``; raises when one was lost."""

    def poll(self, timeout: float = 0.0) -> None: ...

    def behind(self) -> bool: ...

    def caught_up(self) -> bool: ...

    def health(self) -> tuple[bool, str]: ...

    def take_errors(self) -> list[str]: ...

    def close(self, *, drain: bool = True) -> None:
        """Stop writing; ``drain``: what is queued is written first (a stop), else nothing
        more is (a failed engine: no checkpoint covers it)."""

    def discard(self) -> None:
        """Drop what was written and not delivered yet: an engine replaced after a fatal
        client error (decision 0194), whose outputs no checkpoint covers."""

    # Exactly-once into a database: the sink commits the input offsets with the results in
    # its own transaction (no Kafka transaction then, unless the pipeline also writes to
    # Kafka: two phases below); they win over the group's on assign.

    @property
    def keeps_offsets(self) -> bool: ...

    def committed_offsets(
        self, partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str]]:
        """(next offset, generation) of the partitions that have committed offsets."""

    def commit_offsets(self, offsets: list[tuple[str, int, int]], generation: str) -> bool:
        """Commit the results written since the last commit with ``(topic, partition, next
        offset)``; False: nothing committed, try again later. Raises when fenced."""

    def abort(self) -> None:
        """Drop the results written since the last commit."""

    # ... and, when the pipeline writes to Kafka too, in two phases: the sink's transaction
    # is prepared, Kafka's commits, the sink's is committed (decision 0155).

    @property
    def two_phase(self) -> bool: ...

    def prepare_offsets(self, offsets: list[tuple[str, int, int]], generation: str) -> bool:
        """As ``commit_offsets``, ended by a prepare: True once prepared."""

    @property
    def refusals_pending(self) -> bool:
        """The last commit or prepare was put off while finding the rows the sink's table
        refuses (its time budget spent), not by an outage: the next try goes on from what
        it found, in a Kafka transaction begun again (the open one would time out)."""

    def commit_prepared(self) -> None:
        """Commit the prepared transaction (Kafka's committed); raises when it cannot."""

    def rollback_prepared(self) -> None:
        """Roll the prepared transaction back (Kafka's aborted) and drop its results."""

    def register_writer(self, incarnation: str) -> None:
        """Record this worker's incarnation, once its Kafka producer fenced the earlier ones."""

    def recover_prepared(
        self,
        assigned: list[tuple[str, int]],
        committed: Callable[[list[tuple[str, int]]], dict[tuple[str, int], str | None]],
        fence: Callable[[list[str]], None],
        wait: float,
        between: Callable[[], None],
    ) -> None:
        """Decide what dead workers left prepared, from Kafka's committed offset metadata
        (``committed``: read stably) after fencing their writers' Kafka transactions
        (``fence``), before ``committed_offsets`` is read; ``between`` runs before each wait
        for Kafka's answer to settle (the loop's heartbeat: the wait can last ``wait``)."""


class StateBackend(Protocol):
    """Where each partition's checkpoint (state + next offset, as one unit) lives.

    ``save`` is durable and atomic per checkpoint when it returns (at-least-once: the loop
    commits offsets only afterwards). In exactly-once mode ``stage`` writes the checkpoints
    of the open transaction (files: pending ones; Kafka: records in the transaction), and
    ``promote`` follows the transaction's commit, ``abort`` its abort."""

    name: str

    def prepare(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions are about to be restored (an assign): read what they need at once."""

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's committed checkpoint."""

    def pending_checkpoints(self, topic: str, partition: int) -> list[Checkpoint]:
        """Exactly-once: staged checkpoints that may have committed after all (one per
        writer that staged one: the last owner, and any worker the group left behind)."""

    def save(self, checkpoints: list[Checkpoint], *, group: Any = None) -> None:
        """At-least-once: the checkpoints, durable. ``group``: the consumer group's
        metadata (None: no group); a backend whose writes the broker can fence (the
        changelog) commits the checkpoints' offsets in the same transaction as their state,
        so a worker the group has left behind writes nothing (CheckpointRefused)."""

    def stage(self, checkpoints: list[Checkpoint]) -> None: ...

    def promote(self, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """This worker's staged checkpoints become the committed ones; returns those
        another worker had already judged on restore (the partition is theirs now)."""

    def adopt(self, topic: str, partition: int, pending: Checkpoint) -> None:
        """A pending checkpoint another writer left (``pending_checkpoints``) becomes the
        committed one: the resume rule found its transaction committed."""

    def discard_pending(self, topic: str, partition: int) -> None:
        """Every pending checkpoint of the partition, whoever staged it, is discarded."""

    def abort(self) -> None: ...

    def release(self, topic: str, partition: int) -> None:
        """The partition left this worker (revoke, lost): forget what is cached for it."""

    def keep(self, name: str, topic: str, partition: int) -> str | None:
        """Keep the partition's committed checkpoint as snapshot ``name`` before its state
        is discarded on purpose; where it went, or None when there was none. Raises OSError
        when it cannot (the engine then holds the partition rather than discard), and
        FatalClientError when its Kafka client can never write again (replaced, 0194)."""

    def load_snapshot(self, name: str, topic: str, partition: int) -> Checkpoint | None: ...

    def kept_snapshots(self) -> list[str] | None:
        """The names of the snapshots this backend keeps, when it can list them (the volume:
        its ``@snapshots`` folders); None when it cannot (the changelog: a partition's
        records say only what it holds itself)."""

    def close(self) -> None: ...
