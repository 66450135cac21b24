"""The batch loop that runs one pipeline: consume, process, emit, checkpoint, commit.

Started by ``streamherd.workers.main`` (the worker pods and ``streamherd run``). One thread
does all the work, in this order, per batch (docs/engine.md explains why):

1. ``consume(batch_size, timeout)`` — rebalance callbacks run inside it, between batches,
   so partition state is never half-updated when a partition is assigned or revoked;
2. per partition: decode, stateless stages, window fold (late records -> dead letter),
   closed windows -> sink; the partition's ``next_offset`` moves past the batch;
3. every ``checkpoint.intervalSeconds`` (and on revoke, shutdown, end of a finite source):
   flush the sink and dead-letter producers (results of windows about to leave the state are
   delivered), write each partition's state + next offset as one atomic file, and only then
   commit those offsets to Kafka.

A restart (or the next owner of a partition) loads the file and seeks to its offset, so the
state reflects every record exactly once; window results emitted after the last checkpoint
are emitted again with the same deterministic key (at-least-once output).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TextIO

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamherd.workers.checkpointing import (
    Checkpoint,
    CheckpointBaseMoved,
    CheckpointBehind,
    CheckpointDamaged,
    CheckpointError,
    CheckpointFormatError,
    CheckpointPendingChanged,
    CheckpointPostponed,
    CheckpointRefused,
)
from streamherd.workers.config import (
    StateConfig,
    WorkerConfig,
    postgres_two_phase,
    topic_matcher,
)
from streamherd.workers.fingerprint import (
    accepted_fingerprints,
    changed_fields,
    config_fingerprint,
    is_volume_snapshot,
    renormalized,
    same_state,
    snapshot_name,
)
from streamherd.workers.fusing import fuse
from streamherd.workers.kafkaclients import (
    ABORT_ATTEMPTS,
    MAX_POLL_INTERVAL_MS,
    FatalClientError,
    StuckCallError,
    abort_retrying,
    client_config,
    is_fatal,
    send_offsets_fenced,
    transaction_timeout_ms,
)
from streamherd.workers.lag import StartFrom, partition_lag
from streamherd.workers.limits import ensure_recursion_headroom
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.preparedrecovery import committed_reader, writer_fence
from streamherd.workers.processing import (
    Failure,
    Item,
    LateRecordError,
    Processor,
    SourceMessage,
    WindowBatch,
    contributing,
    decode_json,
    decode_json_wide,
    decode_raw,
    decode_synthetic,
    placed_by_key,
    window_batch,
)
from streamherd.workers.rekeying import PLAN_HEADER, fold_hop, hop_plan, rekey
from streamherd.workers.repartitioning import (
    EPOCH_HEADER,
    WATERMARK_HEADER,
    WRITER_HEADER,
    Since,
    Upstream,
    UpstreamClock,
    close_windows,
    ensure_topic,
    epoch_header,
    pass_open_windows,
    source_partitions,
    upstreams_in,
    watermark_header,
    writer_header,
)
from streamherd.workers.resuming import GROUP, Resume, moved_by_someone_else, resume_among
from streamherd.workers.seams import LogIdentity, Sink, Source, StateBackend
from streamherd.workers.sinks import Outputs
from streamherd.workers.snapshotting import (
    SnapshotContents,
    SnapshotTaker,
    find_snapshot_topic,
    read_snapshot,
)
from streamherd.workers.sources import open_source
from streamherd.workers.statebackends import open_state_backend
from streamherd.workers.windowing import PartitionWindows, StateVersionError, WindowPlan

log = logging.getLogger("streamherd.worker")

LAG_REFRESH_SECONDS: Final = 1.0
#: How often a topic's partition count that could not be asked at an assignment is asked
#: again (a keyed window's checks go on the checkpoint's count until then).
LOGS_RETRY_SECONDS: Final = 30.0
#: How often a restore judges a partition's checkpoints again when the pending one it chose
#: was replaced by its writer meanwhile (CheckpointPendingChanged).
ADOPT_TRIES: Final = 3
#: How often a repartitioned pipeline asks for its source topics' partitions again.
UPSTREAMS_REFRESH_SECONDS: Final = 30.0
PROGRESS_SECONDS: Final = 1.0
#: What librdkafka's seek answers for a partition whose fetch has not started (its committed
#: offset still looked up) or is still stopping.
SEEK_NOT_STARTED: Final = frozenset({KafkaError._STATE, KafkaError._PREV_IN_PROGRESS})
HEARTBEAT_STALE_SECONDS: Final = 60.0
#: Least time between two progress markers of one source partition (repartitioned pipelines).
MARKER_SECONDS: Final = 0.5


class TransactionError(RuntimeError):
    """The transaction of a checkpoint could not be committed (fenced, or the broker
    refused it): it was aborted, and the partitions restart from the last commit."""


def whole_answer(answer: list[TopicPartition]) -> list[TopicPartition]:
    """A committed-offsets lookup's answer, raised as the first partition's error if any
    partition has one. The resume rule reads a partition missing from the answer as one with
    nothing committed: in exactly-once mode a pending checkpoint whose transaction did commit
    would then be discarded and the records after the last one read again (their outputs
    twice), so a partition's error must never pass for "nothing committed"."""
    for tp in answer:
        if tp.error is not None:
            raise KafkaException(tp.error)
    return answer


def transactional_id(config: WorkerConfig) -> str:
    """Stable per worker (the pod name), so that a restarted worker aborts its predecessor's
    open transaction at once; ``STREAMHERD_WORKER_ID`` overrides (several on one host)."""
    worker = os.environ.get("STREAMHERD_WORKER_ID") or socket.gethostname()
    return f"streamherd.{config.pipeline.namespace}.{config.pipeline.name}.{worker}"


@dataclass(frozen=True)
class RunSummary:
    """What a run did; returned by run_pipeline and passed to progress callbacks."""

    records_in: int
    records_out: int
    filtered: int
    dead_lettered: int
    late: int
    windows_emitted: int
    checkpoints: int
    elapsed_seconds: float
    finished: bool
    reason: str  # running | exhausted | stopped
    partitions: int = 0  # owned now
    held: int = 0  # of them, held (their state another spec's: the state policy)
    held_why: str | None = None  # the first held partition's reason


@dataclass
class PartitionState:
    """What the engine holds for one owned partition."""

    topic: str
    partition: int
    next_offset: int | None = None
    windows: PartitionWindows | None = None
    dirty: bool = False
    # The offset the broker has confirmed as committed for our group (None: nothing), and
    # the offset of an asynchronous commit still in flight. Only a confirmed commit counts:
    # a commit that fails (e.g. during a rebalance) must be sent again, and the lag we
    # export must be the broker's view.
    committed: int | None = None
    committing: int | None = None
    low: int | None = None
    high: int | None = None
    # What the partition is to a repartitioned pipeline (workers/repartitioning.py):
    # "direct" (no repartition: the window is here), "upstream" (a source partition: the
    # stateless steps, then re-keyed to the repartition topic) or "downstream" (a partition
    # of the repartition topic: the window).
    role: str = "direct"
    clock: UpstreamClock | None = None  # downstream: what each source partition said
    max_event_ms: int | None = None  # upstream: the largest event time so far
    marked: tuple[int, int | None] | None = None  # upstream: (offset, max) of the last marker
    marked_at: float = 0.0
    idle: bool = False  # upstream/direct: quiet for idleTimeout, and said so
    last_record_at: float = field(default_factory=time.monotonic)
    # Why this partition is held: not consumed, never checkpointed or committed, the worker
    # not ready. Its state (a checkpoint of another state fingerprint under refuse, one it
    # cannot read), or the broker's answer awaited: the offset for a replay's (or
    # startFrom's) time, the committed offset or log end under startFrom latest. Each
    # change is shown in streamherd_partition_held (EngineMetrics.partition_held).
    held: str | None = None
    # A replay start time (Unix ms) still to be turned into an offset on assign.
    replay_from_ms: int | None = None
    # Held because the group's committed offset could not be read under startFrom: latest
    # or a start time (no checkpoint): asked again by _retry_starts.
    start_unknown: bool = False
    # Restored from a checkpoint: the group it was written for and the committed offset it
    # was written with (None in legacy checkpoints), to notice an offset reset on assign.
    restored: bool = False
    checkpoint_group: str | None = None
    checkpoint_committed: int | None = None
    # The group's committed offset before a seek back in time (a replay), recorded in the
    # checkpoints until a commit of the new position is confirmed: until then the broker
    # still holds it, and it must not look like someone else's offset reset.
    committed_before_seek: int | None = None
    # The committed offset the partition's checkpoint file records (as last written/read).
    written_committed: int | None = None
    # The snapshot its state came from (WorkerConfig.state.restoreFrom), carried on.
    restored_from: str | None = None
    # The origin of the source's sequence its checkpoint recorded (Checkpoint.origin_ms).
    origin_ms: int | None = None
    # Assigned with nothing to start from (no checkpoint, no committed offset): the offset
    # of the first record this worker read from it. An aborted transaction rewinds it there,
    # as it rewinds the others to their committed offsets (_abort_and_rewind).
    read_from: int | None = None
    # Restored from a snapshot just now: the group's offset is expected to be elsewhere.
    from_snapshot: bool = False
    # The offset after the last record this state object took from the consumer (None:
    # none yet). While next_offset still equals it, no seek or rewind came between, and the
    # consumer's position past it can only be control records (transaction markers) and
    # aborted records the consumer skipped (_past_markers).
    delivered_to: int | None = None
    # The consumer's position of this partition when it was assigned, if it had one: left
    # from an earlier ownership (a poll hands out records of a partition it revokes inside
    # it, and librdkafka can move the position past them after the revoke). Never taken
    # for markers passed: it is past records this ownership has not read.
    left_position: int | None = None
    # Exactly-once, restored from a checkpoint an at-least-once run wrote: the group's
    # committed offset tells whether it was reset since, as in at-least-once mode.
    judged_by_group: bool = False
    # At-least-once, a pending checkpoint an exactly-once run left: discarded once this
    # worker's own checkpoint of the partition is written (workers/resuming.py).
    pending_left: bool = False
    # The log its state belongs to (Source.describe_logs): its topic's id and partition
    # count, recorded in its checkpoints (None: not known).
    log_topic_id: str | None = None
    log_partitions: int | None = None
    # The state epoch and pipeline uid of the checkpoint its state was restored from, kept
    # in its checkpoints while this worker's config names no epoch (decision 0175).
    carried: tuple[str | None, int] | None = None


def unseen(messages: list[SourceMessage], next_offset: int | None) -> list[SourceMessage]:
    """The fetched messages of a partition not yet reflected in its state: those at or past
    its ``next_offset`` (a re-fetch after a seek is never counted twice)."""
    if next_offset is None or (messages[0].offset() or 0) >= next_offset:
        return messages
    return [m for m in messages if (m.offset() or 0) >= next_offset]


def first_read(next_offset: int | None, read_from: int | None, first: int | None) -> int | None:
    """A partition's ``read_from`` after a batch whose first offset is ``first``: that offset
    while the partition has no ``next_offset`` (nothing read since it started empty), else
    unchanged."""
    return first if next_offset is None else read_from


def rewind_offset(restored_next: int | None, read_from: int | None) -> int | None:
    """Where a partition seeks after an aborted transaction: its committed checkpoint's next
    offset, or, with nothing committed (it restarts empty), the first offset this worker
    read from it (the consumer keeps its position through an abort: without that seek the
    aborted transaction's records would be skipped); None: it read nothing, no seek."""
    return restored_next if restored_next is not None else read_from


@dataclass
class _Counters:
    records_in: int = 0
    records_out: int = 0
    filtered: int = 0
    contributing: int = 0
    dead_lettered: int = 0
    late: int = 0
    windows_emitted: int = 0
    checkpoints: int = 0
    repartitioned: int = 0  # records an upstream produced to the repartition topic
    rekeyed_in: int = 0  # records a downstream took from it (duplicates excluded)
    duplicates: int = 0
    started: float = field(default_factory=time.monotonic)


def committed_by_partition(
    answer: Iterable[TopicPartition],
) -> dict[tuple[str, int], tuple[int, str]]:
    """A committed-offsets answer by partition: (offset, metadata: the generation, empty
    without one), for the partitions that have one committed."""
    return {
        (tp.topic, tp.partition): (tp.offset, tp.metadata or "") for tp in answer if tp.offset >= 0
    }


class Engine:
    """One pipeline's processing loop; see the module docstring for the order of things."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        stop: threading.Event,
        out: TextIO,
        progress: Callable[[RunSummary], None] | None = None,
        metrics: EngineMetrics | None = None,
        fused: bool = True,
        source: Source | None = None,
        state: StateBackend | None = None,
    ) -> None:
        """``source`` and ``state`` replace the ones the config names (any implementation
        of the seams' protocols: workers/seams.py)."""
        ensure_recursion_headroom()  # no record's depth may decide its fate (limits.py)
        self.config = config
        self.pipeline = f"{config.pipeline.namespace}/{config.pipeline.name}"
        self.stop = stop
        self.progress = progress
        self.metrics = metrics or EngineMetrics(config.pipeline.name)
        self.processor = Processor.compile(config.processor)
        self.exactly_once = config.delivery == "exactlyOnce"
        # A replaced engine's uncommitted counts went with its transaction.
        self.metrics.discard_pending()
        if self.exactly_once:
            self.metrics.defer_records()
        # Exactly-once: a worker that died inside a transaction holds read_committed readers
        # back until it passes (or until its successor, with the same transactional.id,
        # starts: pods keep their name across container restarts).
        self._transaction_timeout_ms = transaction_timeout_ms(config)
        # What shapes this pipeline's state; stamped on every checkpoint, compared on restore.
        self.fingerprint, self.state_shape = config_fingerprint(config)
        self.state_policy = config.state or StateConfig()
        self.outputs: Sink = Outputs(
            config.sink,
            config.dead_letter,
            self.pipeline,
            out,
            metrics=self.metrics,
            source=config.source.kafka,
            transactional={
                "transactional.id": transactional_id(config),
                "transaction.timeout.ms": self._transaction_timeout_ms,
            }
            if self.exactly_once
            else None,
            two_phase=self.exactly_once and postgres_two_phase(config),
        )
        # Exactly-once into a database: the sink commits the offsets in its own transaction
        # (workers/sinks_postgres_offsets.py), not Kafka's; they win over the group's.
        self.sink_offsets = self.exactly_once and self.outputs.keeps_offsets
        # Where this worker's offsets live, recorded in its checkpoints (workers/resuming.py).
        sink_table = config.sink.postgres.table if config.sink.postgres is not None else None
        self.authority = f"postgres:{sink_table}" if self.sink_offsets else GROUP
        # Exactly-once with a Kafka transaction: into Kafka, or into a database with Kafka
        # outputs besides (dead letters, repartition, changelog), where Kafka's transaction
        # decides the database's prepared one (two phases, decision 0155).
        self.kafka_transaction = self.exactly_once and (
            not self.sink_offsets or self.outputs.two_phase
        )
        self.two_phase = self.sink_offsets and self.outputs.two_phase
        # Fault injection for the tests of two phases: "<point>:<seconds>" pauses the worker
        # after each such point ("prepared", "kafka-committed"), so that a test can kill it
        # there. Unset in production.
        self._pause_at = os.environ.get("STREAMHERD_FAULT_PAUSE", "")
        # Where checkpoints live (workers/statebackends.py); exactly-once joins its writes to
        # the outputs' transaction.
        self.state: StateBackend = state or open_state_backend(
            config,
            transactional_id=transactional_id(config),
            transaction=self.outputs.transaction if self.kafka_transaction else None,
            metrics=self.metrics,
            progress=self._beat,
        )
        self._given_source = source
        # Exactly-once: each transaction's id, committed as offset metadata with its offsets
        # and written into the checkpoints it covers (restore picks the one that committed).
        self._generation_prefix = uuid.uuid4().hex[:12]
        self._transactions = 0
        self.partitions: dict[tuple[str, int], PartitionState] = {}
        self.counters = _Counters()
        # The counters as the last committed transaction left them: an exactly-once abort
        # goes back to them, as the metrics drop what they deferred (its records are read
        # again and counted then; helper-116: the run's summary counted them twice).
        self._counted = replace(self.counters)
        self.heartbeat = time.monotonic()
        # The source (workers/sources.py) while run() runs; None before and after.
        self.source: Source | None = None
        self._paused = False
        self._last_checkpoint = time.monotonic()
        # Partitions whose `startFrom: latest` start was just resolved: a checkpoint pins it
        # before their first record is folded (_pin_latest).
        self._pins_due = False
        # Since the loop's last poll began: the partitions the consumer was moved back on
        # (an abort's rewind to their commits, an assignment after they were dropped), and
        # where to; and the partitions dropped (revoked, lost). What that poll handed out
        # of a partition moved is not folded: it is sought there again (_refetch).
        self._seeked: dict[tuple[str, int], int] = {}
        self._dropped: set[tuple[str, int]] = set()
        self._reassigned: set[tuple[str, int]] = set()  # of _seeked: by an assignment
        # The discards this worker made, by partition and snapshot: an exactly-once abort
        # before their first commit rebuilds the partitions, which discards (and keeps)
        # the same checkpoint again; counted and warned of once.
        self._discarded: set[tuple[str, int, str]] = set()
        # By partition, the offset up to which this worker counted records lost (_lost): an
        # abort or a lost assignment rewinds the partition to its checkpoint, before a gap
        # already counted, and its next fetch jumps over the same gap again.
        # With the log's topic id when known: a topic deleted and created again starts its
        # offsets anew, and its gaps are other records (a review's finding).
        self._lost_through: dict[tuple[str, int], tuple[str | None, int]] = {}
        self._last_lag = 0.0
        self._running = False
        # Its clients are set up and its source open (the "started" event): a failure
        # before is a failure to start (workers/main.py run_pipeline judges it).
        self.began = False
        # The consumer group has given this worker an assignment, possibly empty (a standby
        # while replicas >= partitions): from then on it is ready.
        self._joined = False
        # Partitions just assigned whose committed offsets a dead worker's open transaction
        # holds (``_stable_committed`` waits): not ready until they are known and restored.
        self._awaiting_offsets = 0
        # From a poll until its records are folded: librdkafka moved the consumer's
        # position past records the engine holds but has not folded yet (a rebalance
        # callback inside that poll, the pins' checkpoint after it): _past_markers must not
        # take it for the end of what was folded (helper-116).
        self._in_hand = False
        # Set when an error escaped the loop or an output was not delivered: from then on no
        # checkpoint or commit may be written (it could cover records whose output is lost).
        self._broken = False
        # Snapshots on request, and a snapshot kept in Kafka to restore (snapshot hooks below).
        self._snapshots: SnapshotTaker | None = None
        self._kafka_snapshot: SnapshotContents | None = None
        self._decode: Callable[[list[SourceMessage], list[Failure]], list[Item]]
        topics = config.source.kafka.topics if config.source.kafka is not None else ()
        self.repartition = config.repartition if config.source.kafka is not None else None
        self._repartition_partitions = 0
        self._upstreams: frozenset[Upstream] = frozenset()
        # The topics' ids and partition counts, as of the last assignment (or the last
        # retry of one that failed: _retry_logs).
        self._logs: dict[str, LogIdentity] = {}
        self._logs_retry_at = 0.0
        self._upstreams_at = time.monotonic() + UPSTREAMS_REFRESH_SECONDS
        # Why the worker stops to restart (the loop stops gracefully, then exits non-zero).
        self.restart_reason: str | None = None
        self._reads_topic = topic_matcher(topics)
        self._admin: AdminClient | None = None
        # What a repartition message's entries were evaluated under (workers/rekeying.py):
        # a downstream folds only its own plan's, and dead-letters another's.
        self._hop_plan = hop_plan(
            config.processor,
            config.source.kafka.format if config.source.kafka is not None else "generator",
        )
        # What every repartition message and marker carries: who wrote it (a partition a
        # replay emptied skips what was written before the replay).
        self._hop_headers: list[tuple[str, bytes]] = [
            (WRITER_HEADER, writer_header(self.fingerprint, self.state_policy.spec_generation))
        ]
        if self.state_policy.epoch is not None:  # and in which state epoch (decision 0175)
            self._hop_headers.append((EPOCH_HEADER, epoch_header(self.state_policy.epoch)))
        # A pattern ("^...") may match several topics.
        # A repartitioned pipeline consumes the repartition topic too: its partition 1 and
        # a source topic's partition 1 are different partitions with different roles.
        self._several_topics = (
            len(topics) > 1
            or any(t.startswith("^") for t in topics)
            or self.repartition is not None
        )
        if config.source.generator is not None:
            self._decode = decode_synthetic
        elif config.source.kafka is not None and config.source.kafka.format == "raw":
            self._decode = decode_raw
        elif self.processor.window is not None:
            # Windows: a number beyond the double range in a field is an infinity, as on the
            # fused path (processing.decode_json_wide); stateless output is whole records.
            self._decode = decode_json_wide
        else:
            self._decode = decode_json
        # The window batch: the pipeline's fused function when its shape allows one (JSON
        # from Kafka, filters, a window; workers/fusing.py), else the generic stage path.
        # ``fused=False`` forces the generic path (benchmarks, tests).
        self._window_batch: Callable[[list[SourceMessage], PartitionWindows], WindowBatch]
        fused_batch = (
            fuse(config.processor, self.processor.window)
            if fused
            and self._decode is decode_json_wide
            and self.processor.window is not None
            and self.repartition is None
            else None
        )
        self.fused = fused_batch is not None
        if fused_batch is not None:
            self._window_batch = fused_batch.function
        else:
            processor, decode = self.processor, self._decode

            def generic(messages: list[SourceMessage], windows: PartitionWindows) -> WindowBatch:
                return window_batch(decode, processor, windows, messages)

            self._window_batch = generic
        # A window without a repartition trusts the topic's keying (a Kafka source; `never`
        # is the user's own word that it holds, keyless records included): such a window
        # refuses the records a producer placed without a key (processing.placed_by_key).
        window_spec = next((s.window for s in config.processor.steps if s.window), None)
        self._trusted_keying: str | None = (
            f"its topic's keying (keyBy `{window_spec.key_by}`, no repartition)"
            if window_spec is not None
            and config.source.kafka is not None
            and self.repartition is None
            and window_spec.repartition != "never"
            else None
        )

    # ------------------------------------------------------------------ probes

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self.heartbeat
        if age > HEARTBEAT_STALE_SECONDS:
            return False, f"processing loop stuck for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        ok, why = self.healthy()
        if not ok:
            return ok, why
        if not self._running:
            return False, "not running"
        sink_ok, sink_why = self.outputs.health()  # e.g. the database is down
        if not sink_ok:
            return False, sink_why
        held = [st for st in self.partitions.values() if st.held is not None]
        if held:
            return False, f"{len(held)} partitions held: {held[0].held}"
        if self.source is not None and not self.source.group_offsets:
            return True, f"{self.source.name} running"
        if not self._joined:
            return False, "not yet in the consumer group"
        if self._awaiting_offsets:
            # Before: "no partitions assigned (standby)", ready, while the assignment waited
            # up to the transaction timeout with none of its partitions set up yet.
            return False, (
                f"{self._awaiting_offsets} assigned partitions wait for their committed "
                "offsets (a dead worker's transaction holds them until the broker aborts it)"
            )
        if not self.partitions:
            # Ready with nothing to do: a rolling update with maxUnavailable 0 adds a pod
            # before it removes one, and with as many workers as partitions the new pod is
            # given none until the old one leaves; unready, it would hold the rollout forever.
            return True, "in the consumer group, no partitions assigned (standby)"
        return True, f"{len(self.partitions)} partitions assigned"

    # ------------------------------------------------------------------ state

    def _restore(
        self,
        topic: str,
        partition: int,
        committed: tuple[int, str] | None,
        group: tuple[int, str] | None = None,
        *,
        rewinding: bool = False,
    ) -> Resume:
        """Where the partition resumes (workers/resuming.py ``resume_among``: the rule, from
        the partition's committed and pending checkpoints, the committed offset and
        generation of this worker's authority (in exactly-once mode the group's or the
        sink's offsets table, in at-least-once mode the group's) and the group's)."""
        for tries in range(1, ADOPT_TRIES + 1):
            main = self.state.load(topic, partition)
            # Rewinding after an abort (the partition not newly assigned), no other writer's
            # pending checkpoint is judged: this worker may be the one the group left
            # behind, and the owner's pending one is not its to delete (its own went with
            # the abort).
            pendings = [] if rewinding else self.state.pending_checkpoints(topic, partition)
            resume = resume_among(
                main,
                pendings,
                committed,
                exactly_once=self.exactly_once,
                authority=self.authority,
                group=group,
            )
            if not resume.promote:
                break
            assert resume.checkpoint is not None
            try:
                self.state.adopt(topic, partition, resume.checkpoint)
                break
            except CheckpointPendingChanged:
                if tries == ADOPT_TRIES:
                    raise
                log_event(log, logging.WARNING, "pending-checkpoint-changed", topic=topic,
                          partition=partition, action="judged again")  # fmt: skip
        if resume.discard_pending:  # the others, if one was promoted
            self.state.discard_pending(topic, partition)
        if resume.mismatch:
            self.metrics.error("checkpoint-mismatch")
            log_event(
                log,
                logging.WARNING,
                "checkpoint-does-not-match-commit",
                topic=topic,
                partition=partition,
                committed=committed[0] if committed is not None else None,
                checkpoint=main.next_offset if main is not None else None,
                action="starting from the committed offset with empty state",
            )
        if resume.judged_by_group:
            log_event(log, logging.INFO, "resuming-at-least-once-checkpoint", topic=topic,
                      partition=partition, checkpoint=resume.offset,
                      committed=committed[0] if committed is not None else None)  # fmt: skip
        return resume

    def _new_state(
        self,
        topic: str,
        partition: int,
        committed: tuple[int, str] | None = None,
        group: tuple[int, str] | None = None,
        *,
        rewinding: bool = False,
    ) -> PartitionState:
        st = PartitionState(topic, partition)
        start: int | None = None
        try:
            # The committed checkpoint (in exactly-once mode the committed transaction's),
            # unless state.restoreFrom replaces it: the snapshot's state and offset then go
            # in together, the offset committed with the first checkpoint that writes it.
            resume = self._restore(topic, partition, committed, group, rewinding=rewinding)
            if resume.undecided is not None and not self._undecided(st, resume.undecided):
                # Discarded under reset or replay: judged again without it.
                resume = self._restore(topic, partition, committed, group, rewinding=rewinding)
            st.judged_by_group, st.pending_left = resume.judged_by_group, resume.pending_left
            # At-least-once: the group's committed offset is read (and judged) on assign.
            start = resume.offset if self.exactly_once else None
            checkpoint = self._restore_point(st, resume.checkpoint)
        except CheckpointFormatError as error:  # a newer streamherd wrote it: hold (0156)
            checkpoint, start = None, None
            self._hold_unreadable(st, error)
        except CheckpointDamaged as error:
            # A damaged file (torn, a flipped bit, a segment missing): held, nothing read or
            # written, the other partitions going on, and the file named. It stopped the
            # worker at every start before, the log naming no file (a helper's finding).
            # Other checkpoint errors (a race with another writer) still stop the worker:
            # the restart judges the partition again.
            checkpoint, start = None, None
            self._hold(
                st,
                f"{topic}[{partition}]: cannot read its checkpoint ({error}); held until it "
                "is mended: put back a good copy of the file (from a volume snapshot), or delete "
                "the partition's files to start it anew from the group's offset",
                "checkpoint-unreadable",
                {"topic": topic, "partition": partition, "error": str(error)},
            )
        st.log_topic_id, st.log_partitions = self._logs.get(topic, (None, None))
        if checkpoint is not None and not st.from_snapshot and self._foreign_log(st, checkpoint):
            # Never restored: its offsets and state are of another log (another cluster, or
            # the topic deleted and created again). Held (refuse), or the partition starts
            # as a new one would: the group's committed offset, or startFrom (reset), or
            # the replay time (replay).
            checkpoint = None
            # The group's offset (the broker deletes a deleted topic's): a sink's offsets
            # table still holds the old log's.
            told = committed if self.authority == GROUP else group
            start = told[0] if told is not None else None
        plan = self.processor.window
        # Keys moved: a keyed window's checkpoint of another partition count (judged below).
        moved = (
            None if checkpoint is None or st.held is not None else self._keys_moved(st, checkpoint)
        )
        if checkpoint is not None and moved is None:
            if st.log_topic_id is None:  # not known now: the checkpoint's is kept
                st.log_topic_id = checkpoint.topic_id
            if st.log_partitions is None:
                st.log_partitions = checkpoint.partitions
            elif checkpoint.partitions is None and self._keyed(topic):
                # An earlier version's checkpoint: recorded at the next checkpoint even if
                # no record arrives, so that a later change of the count is judged.
                st.dirty = True
        if checkpoint is not None:
            st.next_offset = checkpoint.next_offset
            st.committed = checkpoint.next_offset
            st.origin_ms = checkpoint.origin_ms  # its offsets are of that sequence
            st.restored = True
            st.checkpoint_group, st.checkpoint_committed = checkpoint.group, checkpoint.committed
            st.written_committed = checkpoint.committed
        elif start is not None:  # exactly-once, nothing to restore: the group's offset
            st.next_offset = start
            st.committed = start
        restored = checkpoint.state if checkpoint is not None else None
        # A checkpoint of this fingerprint from before the state epoch: the pipeline went to
        # another state and came back, with a reset or replay each way (decision 0175).
        foreign = checkpoint is not None and self._foreign_state(checkpoint)
        stale = (
            self._before_epoch(checkpoint)
            if checkpoint is not None and not st.from_snapshot and st.held is None
            else None
        )
        # The checkpoint of another fingerprint (or epoch) a replay or reset discards (not a
        # topic created again or moved keys alone: the upstreams then do not replay).
        replayed = (
            checkpoint
            if checkpoint is not None and not st.from_snapshot and (foreign or stale is not None)
            else None
        )
        if checkpoint is not None and (foreign or moved or stale):
            if st.from_snapshot:
                # A snapshot is restored as it is, or not at all: never reset or replayed.
                st.held = (
                    f"{topic}[{partition}]: snapshot {st.restored_from} holds state of "
                    f"fingerprint {checkpoint.fingerprint}, not this pipeline's "
                    f"{self.fingerprint}: restore it with the spec it was taken under"
                    if moved is None
                    else f"{topic}[{partition}]: snapshot {st.restored_from}: {moved}"
                )
                self.metrics.set_partition("streamherd_state_restore_refused", topic, partition, 1)
                self.metrics.partition_held(topic, partition, "state")
                log_event(log, logging.ERROR, "state-restore-refused", snapshot=st.restored_from,
                          topic=topic, partition=partition)  # fmt: skip
            else:
                self._mismatch(st, checkpoint, moved, stale)
            restored = None
        elif checkpoint is not None and checkpoint.epoch is not None and not st.from_snapshot:
            # Restored whole: a worker naming no epoch (one of a spec before the epoch, alive
            # in a rollout) writes the epoch back with the state, or the epoch's workers
            # would take the state it goes on with for an earlier era's (a review). Not a
            # snapshot's: it may be another pipeline's, whose uid and epoch are not ours.
            st.carried = (checkpoint.pipeline_uid, checkpoint.epoch)
        # The backend's own committed checkpoint: the base of incremental checkpoints.
        base = checkpoint is not None and not st.from_snapshot
        if self.repartition is not None and plan is not None:
            if self._is_repartition_topic(topic):
                st.role = "downstream"
                if st.held is None:
                    st.windows = self._restored_windows(st, plan, restored, base)
                st.clock = UpstreamClock.from_json(restored)
                epoch = self.state_policy.epoch
                if (
                    replayed is not None
                    and st.held is None
                    and (st.replay_from_ms is not None or stale is not None)
                ):
                    # Emptied by a replay of another fingerprint's state: what was written
                    # before it is skipped; the replaying upstreams write it again (their
                    # checkpoints are of that fingerprint too: decision 0172). Emptied as
                    # state from before the epoch, even under reset: what is in flight after
                    # its checkpoint was read before two state changes, and no spec since
                    # read it (0175). A reset of another fingerprint's state folds what is
                    # in flight, as ever (0172).
                    st.clock.since = Since(self.fingerprint, replayed.spec_generation, epoch)
                elif st.clock.since is not None:
                    st.clock.since = st.clock.since.restored_by(
                        self.state_policy.spec_generation, epoch
                    )
                    if (
                        checkpoint is not None
                        and checkpoint.fingerprint != self.fingerprint
                        and st.clock.since.fingerprint == checkpoint.fingerprint
                    ):
                        # Adopted as the same state under an earlier normalization of its
                        # expressions (_foreign_state): the replay it records was of this
                        # state, whose writers now name this fingerprint. Kept as it was,
                        # every record they re-key would be skipped as written before it.
                        # Its writers of an earlier image, in flight across the upgrade,
                        # still name the earlier fingerprint: the same state (also).
                        since = st.clock.since
                        st.clock.since = replace(
                            since,
                            fingerprint=self.fingerprint,
                            also=tuple(dict.fromkeys((*since.also, since.fingerprint))),
                        )
                st.clock.known = self._upstreams
                st.clock.reads = self._reads_topic
            else:
                st.role = "upstream"
                top = (restored or {}).get("maxEventMs")
                st.max_event_ms = None if top is None else int(top)
        elif plan is not None and st.held is None:
            st.windows = self._restored_windows(st, plan, restored, base)
        if st.held is None:  # rebuilt (an abort's rewind): its earlier hold is over
            self.metrics.partition_held(topic, partition, None)
        self.partitions[(topic, partition)] = st
        self.metrics.assigned.set(len(self.partitions))
        log_event(
            log,
            logging.INFO,
            "partition-restored" if checkpoint else "partition-new",
            topic=topic,
            partition=partition,
            next_offset=st.next_offset,
            open_windows=len(st.windows.windows) if st.windows else 0,
            fingerprint=checkpoint.fingerprint if checkpoint else self.fingerprint,
        )
        return st

    def _undecided(self, st: PartitionState, authority: str) -> bool:
        """A pending checkpoint of another sink table whose commit cannot be told here
        (workers/resuming.py): held under refuse (True), else discarded (False)."""
        if self.state_policy.on_fingerprint_mismatch == "refuse":
            self._hold(
                st,
                f"{st.topic}[{st.partition}]: a pending checkpoint of {authority}, whose "
                "commit this worker cannot tell (the group's offset does not confirm it): run "
                "the pipeline with that sink table until it is decided, or set "
                "spec.upgrade.onStateChange to reset to discard it",
                "state-restore-refused",
                {"topic": st.topic, "partition": st.partition, "pending_of": authority},
            )
            return True
        self.state.discard_pending(st.topic, st.partition)
        log_event(log, logging.WARNING, "pending-checkpoint-discarded", topic=st.topic,
                  partition=st.partition, pending_of=authority)  # fmt: skip
        return False

    def _restore_point(self, st: PartitionState, own: Checkpoint | None) -> Checkpoint | None:
        """The checkpoint to restore: the partition's own (`own`: the file's, or with
        exactly-once the committed transaction's), or, with ``state.restoreFrom``, the
        snapshot's, unless the own one says it was already restored from it."""
        name = self.state_policy.restore_from
        if name is None:
            return own
        if own is not None and own.restored_from == name:
            st.restored_from = name
            return own
        kept = self._snapshot_checkpoint(name, st.topic, st.partition)
        if kept is None:
            names = self.state.kept_snapshots() if is_volume_snapshot(name) else None
            if names is not None and not set(self._kept_names(name)) & set(names):
                # Not a snapshot that holds no checkpoint of this partition: no snapshot of
                # that name at all (a typo, another pipeline's volume). Resuming would say
                # "restored" and restore nothing: held, saying what the volume keeps.
                self._hold(
                    st,
                    f"{st.topic}[{st.partition}]: spec.state.restoreFrom {name} is not in the "
                    f"checkpoint volume (it keeps: {', '.join(names[-5:]) or 'no snapshot'}); "
                    "name one it keeps, or remove spec.state.restoreFrom",
                    "snapshot-not-found",
                    {"snapshot": name, "topic": st.topic, "partition": st.partition},
                )
                return own
            log_event(log, logging.WARNING, "snapshot-has-no-partition", snapshot=name,
                      topic=st.topic, partition=st.partition)  # fmt: skip
            return own
        log_event(
            log,
            logging.WARNING,
            "restoring-snapshot",
            snapshot=name,
            topic=st.topic,
            partition=st.partition,
            next_offset=kept.next_offset,
            replacing=own.next_offset if own is not None else None,
        )
        st.restored_from = name
        st.from_snapshot = True
        st.dirty = True  # recorded at once: a restart must not restore it a second time
        return kept

    def _restored_windows(
        self, st: PartitionState, plan: WindowPlan, restored: Any, base: bool
    ) -> PartitionWindows | None:
        """The partition's windows from its checkpoint's state. A state in a version this
        worker cannot read (a newer streamherd wrote it: a rollback to an older image, decision
        0156) holds the partition, like a foreign fingerprint under refuse: not consumed,
        its checkpoint byte for byte as found, the worker not ready and saying why. Raising
        here would end the worker in every restart: a crash loop that hides the reason."""
        try:
            return PartitionWindows.from_json(plan, restored, base=base)
        except StateVersionError as error:
            self._hold_unreadable(st, error)
            return None

    def _hold_unreadable(self, st: PartitionState, error: Exception) -> None:
        """Hold a partition whose checkpoint a newer streamherd wrote (its file format or
        its window state version): see :meth:`_restored_windows`."""
        self._hold(
            st,
            f"{st.topic}[{st.partition}]: cannot read its checkpoint ({error}); run the "
            "streamherd version that wrote it, or a newer one",
            "state-version-unsupported",
            {"topic": st.topic, "partition": st.partition, "error": str(error)},
        )

    def _cluster_id(self) -> str | None:
        source = self.source
        return source.cluster_id if source is not None else None

    def _foreign_log(self, st: PartitionState, checkpoint: Checkpoint) -> bool:
        """Whether ``checkpoint`` was written against another log than the partition reads
        now: another Kafka cluster (its bootstrapServers edited to another cluster, or the
        cluster rebuilt under the same name), or another topic under the same name (deleted
        and created again: Kafka's topic id differs). Then its offsets point into another
        log, and restoring it would skip records or fold another log's into this one's
        windows, without an error. The ids tell, so a new address of the same cluster is no
        change. A checkpoint or a source without an id (an earlier version, a broker that
        did not answer) is not judged. The policy is the state policy's: refuse holds the
        partition, reset and replay keep the checkpoint as a snapshot and start anew."""
        now = self._cluster_id()
        if checkpoint.cluster is not None and now is not None and checkpoint.cluster != now:
            then, what = checkpoint.cluster, f"Kafka cluster {checkpoint.cluster}"
            fields = {"checkpoint_cluster": checkpoint.cluster, "cluster": now}
            since = (
                f"the source is now cluster {now}: the offsets and state of another cluster's log"
            )
            where, reason = "cluster", "another Kafka cluster"
        elif (
            checkpoint.topic_id is not None
            and st.log_topic_id is not None
            and checkpoint.topic_id != st.log_topic_id
        ):
            then, what = checkpoint.topic_id, f"topic id {checkpoint.topic_id}"
            fields = {"checkpoint_topic_id": checkpoint.topic_id, "topic_id": st.log_topic_id}
            since = (
                f"the topic is now {st.log_topic_id} (deleted and created again): the offsets "
                "and state of the old topic's log"
            )
            where, reason = "topic", "the topic was created again"
        else:
            return False
        described: dict[str, Any] = {"topic": st.topic, "partition": st.partition, **fields}
        if self.state_policy.on_fingerprint_mismatch == "refuse":
            self._hold(
                st,
                f"{st.topic}[{st.partition}]: its checkpoint is of {what}, and {since} are "
                "not restored (spec.upgrade.onStateChange: refuse; reset starts the partition "
                "anew, replay from a time)",
                "state-restore-refused",
                described,
            )
            return True
        name = snapshot_name(checkpoint.fingerprint or "legacy", self.fingerprint)
        digest = hashlib.sha256(then.encode()).hexdigest()[:12]
        self._discard(st, checkpoint, f"{name}-{where}-{digest}", {**described, "reason": reason})
        return True

    def _hold(
        self, st: PartitionState, message: str, event: str, fields: Mapping[str, Any]
    ) -> None:
        """Hold the partition (not consumed, not checkpointed; the worker not ready and
        saying why)."""
        st.held = message
        self.metrics.set_partition("streamherd_state_restore_refused", st.topic, st.partition, 1)
        self.metrics.partition_held(st.topic, st.partition, "state")
        log_event(log, logging.ERROR, event, **fields)

    def _discard(
        self, st: PartitionState, checkpoint: Checkpoint, name: str, fields: Mapping[str, Any]
    ) -> None:
        """Start the partition from empty state under the reset or replay policy (a refuse
        policy resets: only state from before the state epoch is discarded under it), after
        keeping ``checkpoint`` as snapshot ``name``: what could not be kept is never
        discarded (the partition is held instead)."""
        configured = self.state_policy.on_fingerprint_mismatch
        policy = "reset" if configured == "refuse" else configured
        try:
            kept = self.state.keep(name, st.topic, st.partition)
        except OSError as error:
            self._hold(
                st,
                f"{st.topic}[{st.partition}]: cannot keep a snapshot before {policy}: {error}",
                "state-snapshot-failed",
                {**fields, "error": str(error)},
            )
            return
        again = (st.topic, st.partition, name) in self._discarded
        self._discarded.add((st.topic, st.partition, name))
        if not again:
            self.metrics.counter("streamherd_state_discarded").labels(
                self.metrics.pipeline, policy
            ).inc()
        # Written at the next checkpoint even if no record arrives, so a restart does not
        # apply the policy a second time (a replay would go back again).
        st.dirty = True
        if policy == "replay" and self.state_policy.replay_from_ms is not None:
            st.replay_from_ms = self._replay_start(st, self.state_policy.replay_from_ms)
        log_event(
            log,
            logging.INFO if again else logging.WARNING,
            "state-discarded",
            again=again,
            policy=policy,
            snapshot=str(kept),
            replay_from_ms=st.replay_from_ms,
            open_windows_dropped=len((checkpoint.state or {}).get("windows") or ()),
            **fields,
        )

    def _foreign_state(self, checkpoint: Checkpoint) -> bool:
        """Whether a checkpoint holds state written under another fingerprint.

        A checkpoint without state (a stateless pipeline's) holds only an offset: any
        pipeline may go on from it. One without a fingerprint was written before
        fingerprints existed (legacy): it is adopted, as every earlier version did, and
        the next checkpoint stamps it (docs/lifecycle.md: legacy checkpoints)."""
        if checkpoint.state is None or checkpoint.fingerprint is None:
            return False
        # The same state under an earlier normalization of its expressions is adopted; the
        # next checkpoint stamps this fingerprint.
        return not same_state(
            checkpoint.fingerprint, checkpoint.state_shape, self.fingerprint, self.state_shape
        )

    def _mismatch(
        self,
        st: PartitionState,
        checkpoint: Checkpoint,
        moved: str | None = None,
        stale: str | None = None,
    ) -> None:
        """Apply the state policy to a partition whose checkpoint has another fingerprint,
        or (`moved`: why) whose keys moved to other partitions: hold it (refuse), or start
        it from empty state (reset: at the checkpoint's offset; replay: at the replay time).
        Never restores the foreign state, so nothing mixes.

        A checkpoint from before the state epoch (`stale`: why, decision 0175) is discarded
        whatever the policy now: the reset or replay that started the epoch already decided
        its fate (the policy may have been set back to refuse since); one of a later epoch
        is held, left to that epoch's workers."""
        foreign = self._foreign_state(checkpoint)
        # Its description read by this version's rule: what an earlier one compared as
        # written (an expression's spacing) is not named as a change.
        shape = checkpoint.state_shape
        recorded = renormalized(shape, self.state_shape) if isinstance(shape, Mapping) else shape
        changes = changed_fields(recorded, self.state_shape) if foreign else []
        whys = [*changes, *([moved] if moved else []), *([stale] if stale else [])]
        what = "; ".join(whys) or "unknown fields"
        fields: dict[str, Any] = {
            "topic": st.topic,
            "partition": st.partition,
            "checkpoint_fingerprint": checkpoint.fingerprint,
            "fingerprint": self.fingerprint,
            "changed": what,
        }
        if stale is not None:  # of this fingerprint (_before_epoch judges no other)
            fields.update(checkpoint_epoch=checkpoint.epoch, epoch=self.state_policy.epoch)
            if self._of_a_later_epoch(checkpoint):
                self._hold(st, f"{st.topic}[{st.partition}]: {stale}", "state-of-a-later-spec",
                           fields)  # fmt: skip
                return
        elif foreign and self.state_policy.on_fingerprint_mismatch != "refuse":
            later = self._written_by_a_later_spec(checkpoint)
            if later is not None:
                self._hold(st, f"{st.topic}[{st.partition}]: {later}", "state-of-a-later-spec",
                           fields)  # fmt: skip
                return
        if self.state_policy.on_fingerprint_mismatch == "refuse" and stale is None:
            why = (
                f"checkpoint state fingerprint {checkpoint.fingerprint} differs from this "
                f"pipeline's {self.fingerprint} ({what})"
                if foreign
                else what
            )
            self._hold(
                st,
                f"{st.topic}[{st.partition}]: {why}; refused to restore it "
                "(spec.upgrade.onStateChange: refuse)",
                "state-restore-refused",
                fields,
            )
            return
        # Kept before it is discarded: the open windows of the old spec stay recoverable.
        name = snapshot_name(
            checkpoint.fingerprint or "legacy", self.fingerprint, self.state_policy.epoch
        )
        if moved and checkpoint.partitions is not None and stale is None:
            name = f"{name}-partitions-{checkpoint.partitions}"
        self._discard(st, checkpoint, name, fields)

    def _era_of(self, st: PartitionState) -> dict[str, Any]:
        """The pipeline uid and state epoch a checkpoint of ``st`` carries: the config's;
        a config naming no epoch writes back the restored checkpoint's, when it is of this
        pipeline (the config names no uid, or the same one)."""
        uid, epoch = self.state_policy.pipeline_uid, self.state_policy.epoch
        if epoch is None and st.carried is not None and uid in (None, st.carried[0]):
            return {"pipeline_uid": st.carried[0], "epoch": st.carried[1]}
        return {"pipeline_uid": uid, "epoch": epoch}

    def _before_epoch(self, checkpoint: Checkpoint) -> str | None:
        """Why a checkpoint of this very fingerprint is not this state epoch's (decision
        0175), or None (it is, or no epoch is known: the config names none).

        Reset and replay start the state anew at the generation the operator names
        (``state.epoch``), and every worker of the pipeline from then on names it and
        stamps it. A checkpoint of the fingerprint that names an earlier epoch, none, or
        another pipeline (uid) was written before: the pipeline ran this spec, went to
        another state and came back. Its partition was not taken in between (a repartition
        topic the middle spec had no use for, a source topic it did not read), so nothing
        wrote over it, and the fingerprint alone would restore it: windows from before two
        resets. A checkpoint of a later epoch belongs to a later spec's workers."""
        epoch = self.state_policy.epoch
        if epoch is None or checkpoint.state is None or self._foreign_state(checkpoint):
            return None
        ours = checkpoint.pipeline_uid == self.state_policy.pipeline_uid
        theirs = checkpoint.epoch
        if ours and theirs == epoch:
            return None
        if self._of_a_later_epoch(checkpoint):
            return (
                f"checkpoint state epoch {theirs} is later than this worker's {epoch} (the "
                f"generation whose roll started the state anew): left to the workers of that "
                "epoch: held"
            )
        written = (
            "by another pipeline of this name"
            if not ours
            else "in no state epoch"
            if theirs is None
            else f"in state epoch {theirs}"
        )
        return (
            f"checkpoint state of fingerprint {checkpoint.fingerprint} was written {written}, "
            f"before generation {epoch} started the state anew (the pipeline went to another "
            "state and came back): discarded"
        )

    def _of_a_later_epoch(self, checkpoint: Checkpoint) -> bool:
        """Whether a checkpoint names a state epoch of this pipeline later than the
        worker's own (a worker of an earlier spec meets a later one's state)."""
        epoch, theirs = self.state_policy.epoch, checkpoint.epoch
        return (
            epoch is not None
            and theirs is not None
            and theirs > epoch
            and checkpoint.pipeline_uid == self.state_policy.pipeline_uid
        )

    def _written_by_a_later_spec(self, checkpoint: Checkpoint) -> str | None:
        """Why a checkpoint of another fingerprint is not this worker's to discard, or None.

        Reset and replay discard the state of the spec they replace. In a rolling update a
        partition can go back to a worker of the previous spec (a new pod dies, a rebalance)
        whose config resets too (the policy stays in the spec): that worker would discard
        the new spec's state and compute the old spec on (a review's finding). Checkpoints
        carry the generation whose config wrote them; a worker leaves state of a later
        generation alone (the partition is held until a worker of that spec takes it)."""
        theirs = checkpoint.spec_generation
        mine = self.state_policy.spec_generation
        if theirs is None or (mine is not None and theirs <= mine):
            return None
        uid, my_uid = checkpoint.pipeline_uid, self.state_policy.pipeline_uid
        if uid is not None and my_uid is not None and uid != my_uid:
            # Another pipeline of this name (deleted with retainOnDelete, created again: its
            # generations count from 1 again): its generations order nothing of this one's,
            # and its state is discarded under the policy like any other spec's. Before, it
            # was held until this pipeline's generation passed the other's.
            return None
        this = f"generation {mine}" if mine is not None else "an earlier generation"
        return (
            f"checkpoint state fingerprint {checkpoint.fingerprint} was written by the workers "
            f"of generation {theirs} of the spec; this worker runs {this} (fingerprint "
            f"{self.fingerprint}) and leaves that state to them: held"
        )

    def _keyed(self, topic: str) -> bool:
        """Whether a partition of `topic` holds windows whose keys the topic's partitioner
        placed: a window without a repartition (the topic's keying is trusted), or the
        repartition topic's own partitions."""
        if self.processor.window is None:
            return False
        return self.repartition is None or self._is_repartition_topic(topic)

    def _keys_moved(self, st: PartitionState, checkpoint: Checkpoint) -> str | None:
        """Why a keyed window's checkpoint cannot be restored as it is: its topic had
        another partition count when it was written (a producer spreads keys by the count:
        most keys now live in another partition, and each open window of such a key would
        end as two partial results), or None. Not judged when either count is unknown."""
        now, then = st.log_partitions, checkpoint.partitions
        if not self._keyed(st.topic) or now is None or then is None or now == then:
            return None
        return (
            f"topic {st.topic} has {now} partitions, its checkpoint was written with {then}: "
            "its keys moved between partitions, and an open window's key would give two "
            "partial results"
        )

    # ------------------------------------------------------------------ snapshot hooks
    # Snapshots on request and restoring one kept in Kafka (workers/snapshotting.py). The
    # engine only says which partitions are at a checkpoint boundary and hands over the
    # checkpoints it made durable; the snapshot module does the rest.

    def _snapshot_wanted(self, states: list[PartitionState]) -> set[tuple[str, int]]:
        """The partitions a requested snapshot still needs: checkpointed at this boundary
        even when nothing changed (a snapshot holds every partition)."""
        if self._snapshots is None or not states:
            return set()
        wanted = self._snapshots.wanted((st.topic, st.partition) for st in states)
        for st in states:
            if (st.topic, st.partition) in wanted and st.next_offset is None:
                # Nothing read yet: its state is empty at the group's committed offset.
                st.next_offset = st.committed
        return wanted

    def _snapshot_taken(self, checkpoints: list[Checkpoint]) -> None:
        checkpoints = [c for c in checkpoints if c.changes is None]  # a snapshot's are whole
        if self._snapshots is None or not checkpoints:
            return
        try:
            self._snapshots.taken(checkpoints)
        except KafkaException as error:  # the next checkpoint tries again
            self.metrics.error("snapshot")
            log_event(log, logging.WARNING, "snapshot-write-failed", error=str(error))

    def _snapshot_checkpoint(self, name: str, topic: str, partition: int) -> Checkpoint | None:
        """A partition's checkpoint in snapshot `name`: kept by the state backend before a
        reset or replay (`<old>-to-<new>`), or in Kafka (a StreamPipelineSnapshot of the
        namespace, read once)."""
        if is_volume_snapshot(name):
            for kept_as in self._kept_names(name):
                kept = self.state.load_snapshot(kept_as, topic, partition)
                if kept is not None:
                    return kept
            return None
        source = self.config.source.kafka
        if source is None:
            return None
        if self._kafka_snapshot is None:
            found = find_snapshot_topic(self._list_topics(), self.config.pipeline.namespace, name)
            contents = read_snapshot(client_config(source), found) if found is not None else None
            if contents is None:
                log_event(log, logging.WARNING, "snapshot-not-found", snapshot=name)
                return None
            self._kafka_snapshot = contents
        return self._kafka_snapshot.checkpoints.get((topic, partition))

    def _kept_names(self, name: str) -> list[str]:
        """``name`` (a kept snapshot, ``<old>-to-<new>...``), then, when it names this
        spec's state as ``<old>``, the same snapshot by that state's earlier-rules names.

        The workers of a reset name what they keep by the fingerprint its checkpoint was
        stamped with: a checkpoint an earlier image's worker wrote, or one no record has
        changed since an operator upgrade across decision 0204, carries the earlier rules'
        name, while the operator lists this version's; the listed name, restored, held
        those partitions as not in the volume (helper-113's finding). Only for this spec's
        own state: restoreFrom names a snapshot of the spec's state, which the operator
        checks by this version's rules."""
        old, sep, rest = name.partition("-to-")
        if not sep or old != self.fingerprint:
            return [name]
        aliases = sorted(accepted_fingerprints(self.state_shape) - {old})
        return [name, *(f"{alias}-to-{rest}" for alias in aliases)]

    def _list_topics(self, timeout: float = 10.0) -> list[str]:
        """The topics of the source's cluster (snapshot topics are found by name)."""
        source = self.config.source.kafka
        assert source is not None
        if self._admin is None:
            self._admin = AdminClient(client_config(source))
        return list(self._admin.list_topics(timeout=timeout).topics)

    def _drop_state(self, topic: str, partition: int) -> None:
        self.partitions.pop((topic, partition), None)
        self._seeked.pop((topic, partition), None)
        self._dropped.add((topic, partition))
        self.state.release(topic, partition)
        self.metrics.forget_partition(topic, partition)
        self.metrics.assigned.set(len(self.partitions))

    # ------------------------------------------------------------------ rebalance callbacks

    def _committed_with_metadata(
        self, source: Source, partitions: list[TopicPartition], *, assigned: bool = False
    ) -> dict[tuple[str, int], tuple[int, str]]:
        """``assigned``: the group has just assigned ``partitions`` to this worker."""
        if self.sink_offsets:  # the sink's offsets (and generations) win over the group's
            owned = [(tp.topic, tp.partition) for tp in partitions]
            if self.two_phase and assigned:
                # First decide what dead workers left prepared on these partitions: the
                # table's offsets are only final once no prepared transaction holds them.
                # Only on an assignment: a rewind's view of what it owns may be stale (its
                # partitions lost meanwhile), and another worker's transaction on them live.
                self._recover_prepared(source, owned)
            return self.outputs.committed_offsets(owned)
        asked = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        # Waited for on an assignment only: a rewind (an abort, partitions revoked or lost)
        # runs inside other callbacks, after retries of its own (a review's finding).
        answer = (
            self._stable_committed(source, asked)
            if assigned
            else whole_answer(source.committed(asked, timeout=10))
        )
        return committed_by_partition(answer)

    def _unjudged_pending(self, asked: list[TopicPartition]) -> bool:
        """Whether a partition of ``asked`` has no checkpoint but a pending one of an
        exactly-once run (with a generation): only the group's committed offset judges it
        (workers/resuming.py, rule 1). A checkpoint that cannot be read is not judged here:
        its partition's restore holds it, the others going on (as without this look)."""

        def unjudged(tp: TopicPartition) -> bool:
            try:
                pendings = self.state.pending_checkpoints(tp.topic, tp.partition)
                return any(p.generation for p in pendings) and (
                    self.state.load(tp.topic, tp.partition) is None
                )
            except CheckpointError:
                return False

        return any(unjudged(tp) for tp in asked)

    def _stable_committed(
        self, source: Source, asked: list[TopicPartition]
    ) -> list[TopicPartition]:
        """The group's committed offsets of ``asked`` (read stably where the consumer reads
        ``read_committed``: exactly-once), waited for while the lookup times out, up to the
        transaction timeout + 30 s (never past two minutes short of the poll interval); then
        the timeout raises, as before (the worker restarts). On an assignment only: every
        exactly-once one, and an at-least-once one that must judge a pending checkpoint
        (:meth:`_unjudged_pending`).

        A worker killed between sending its offsets to its transaction and committing it
        leaves them pending until the broker aborts that transaction at its timeout, and a
        stable lookup of any partition they cover times out until then. Raised out of the
        assignment at the first timeout, it restarted the engine, whose leaving rebalanced
        the group: every member's assignment then met the same pending offsets and
        restarted in turn, a healthy worker several times in a minute, against a bound of
        five restarts in five minutes (helper-112's finding). Waiting here, the group is
        stalled for the same minute, with no restart and no rebalance; each try is a
        heartbeat of the loop (the liveness probe)."""
        # Never near the poll interval: the consumer would leave the group meanwhile, and the
        # assignment's restores run after this, inside the same callback.
        wait = min(self._transaction_timeout_ms / 1000 + 30, MAX_POLL_INTERVAL_MS / 1000 - 120)
        deadline = time.monotonic() + wait
        waited = time.monotonic()
        try:
            while True:
                try:
                    return whole_answer(source.committed(asked, timeout=10))
                except KafkaException as error:
                    code = error.args[0].code() if error.args else None
                    if (
                        code not in (KafkaError._TIMED_OUT, KafkaError.UNSTABLE_OFFSET_COMMIT)
                        or time.monotonic() >= deadline
                        or self.stop.is_set()
                    ):
                        raise
                    self._awaiting_offsets = len(asked)  # not ready meanwhile (ready())
                    self._beat()
                    log_event(log, logging.WARNING, "committed-offsets-unstable",
                              partitions=len(asked), waited_s=round(time.monotonic() - waited, 1),
                              error=str(error))  # fmt: skip
        finally:
            self._awaiting_offsets = 0

    def _retry_logs(self, now: float) -> None:
        """Ask again for the partition count of a keyed window's topic that an assignment
        could not ask (its describe timed out): until then the partition goes on the count
        its checkpoint recorded, and a topic that grew since would be taken for the one
        partition it had (no keyless record refused, no moved keys judged; a helper's
        finding). Known again, a changed count restarts the worker as at an assignment."""
        source = self.source
        if source is None or not source.group_offsets or now < self._logs_retry_at:
            return
        if all(t in self._logs or not self._keyed(t) for t, _ in self.partitions):
            return
        self._logs_retry_at = now + LOGS_RETRY_SECONDS
        self._refresh_logs(source, [], forget=False)

    def _retry_upstreams(self, now: float) -> None:
        """Ask a repartitioned pipeline's source topics for their partitions again: the
        ones known at start are the upstreams each downstream partition waits for before
        its windows close, so a topic created after the start (a named one the start did
        not wait for long enough, or one a ``^`` pattern matches later) or a partition
        added would never be waited for, or, when none was known, no window would ever
        close (helper-94's finding). The set only grows (Kafka removes no partition)."""
        admin, kafka = self._admin, self.config.source.kafka
        if self.repartition is None or admin is None or kafka is None or now < self._upstreams_at:
            return
        self._upstreams_at = now + UPSTREAMS_REFRESH_SECONDS
        try:
            metadata = admin.list_topics(timeout=5.0)
        except KafkaException as error:
            log_event(log, logging.WARNING, "upstreams-lookup-failed", error=str(error))
            return
        found = upstreams_in(metadata, kafka.topics)
        # A topic deleted (one a pattern matched) says nothing ever again: forgotten, or
        # no window would close. One listed without all its leaders is kept as it was.
        present = set(metadata.topics)
        grown = frozenset(u for u in self._upstreams if u[0] in present) | found
        if grown == self._upstreams:
            return
        log_event(log, logging.INFO, "upstreams-changed", known=len(self._upstreams),
                  now=len(grown))  # fmt: skip
        self._upstreams = grown
        for st in self.partitions.values():
            if st.clock is not None:
                st.clock.known = grown

    def _refresh_logs(
        self, source: Source, partitions: list[TopicPartition], *, forget: bool = True
    ) -> None:
        """The topics' ids and partition counts, asked on every assignment (a topic that
        gains partitions rebalances its group, so this sees it), for the partitions
        assigned now (judged as they are restored) and those this worker keeps: a keyed
        window of a topic whose partition count changed while it ran stops the worker to
        restart, so that every partition is judged from its checkpoint (which records the
        count its state was built with) by the state policy."""
        if not source.group_offsets:
            return
        topics = {tp.topic for tp in partitions} | {t for t, _ in self.partitions}
        try:
            found = source.describe_logs(sorted(topics))
        except KafkaException as error:
            log_event(log, logging.WARNING, "describe-topics-failed", error=str(error))
            found = {}
        for topic in topics:
            if topic in found:
                self._logs[topic] = found[topic]
            elif forget:  # an assignment: not known now, not judged (a retry keeps them)
                self._logs.pop(topic, None)
        assigned = {(tp.topic, tp.partition) for tp in partitions}
        for key, st in self.partitions.items():
            now = self._logs.get(st.topic)
            if key in assigned or now is None or st.log_partitions is None:
                continue
            if self._keyed(st.topic) and now[1] != st.log_partitions and st.held is None:
                self.restart_reason = (
                    f"topic {st.topic} now has {now[1]} partitions ({st.log_partitions} when "
                    "this worker's state was built): restarting, so that every partition is "
                    "judged from its checkpoint"
                )
                log_event(log, logging.WARNING, "partition-count-changed", topic=st.topic,
                          partitions=now[1], was=st.log_partitions, action="restart")  # fmt: skip
                # Every keyed partition's count is recorded by the stop's checkpoint, quiet
                # ones too (only changed partitions are checkpointed otherwise).
                for other in self.partitions.values():
                    if self._keyed(other.topic) and other.held is None:
                        other.dirty = other.dirty or other.next_offset is not None
                self.stop.set()
                return

    def _recover_prepared(self, source: Source, assigned: list[tuple[str, int]]) -> None:
        """Two phases: resolve the prepared transactions covering ``assigned`` (or left by
        this worker's previous incarnation) from Kafka's committed offsets, read stably:
        a transaction still pending on them is waited for, up to Kafka's transaction
        timeout (the broker aborts a dead producer's transaction by then)."""
        kafka = self.config.source.kafka
        assert kafka is not None
        self.outputs.recover_prepared(
            assigned,
            committed_reader(source.committed),
            writer_fence(kafka, self._transaction_timeout_ms),
            wait=self._transaction_timeout_ms / 1000 + 30,
            between=self._beat,  # the wait lasts up to 90 s; liveness says stuck after 60
        )

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        source = self.source
        assert source is not None
        self._joined = True
        self.metrics.rebalance("assign")
        # What the group (or, exactly-once, the sink's offsets table) committed: offset and
        # transaction id. At-least-once reads the group's once, here: a pending checkpoint
        # an exactly-once run left behind is promoted when its transaction committed.
        asked = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        answer: list[TopicPartition] | None = None
        lookup_failed = False
        if self.exactly_once:
            committed = self._committed_with_metadata(source, partitions, assigned=True)
        if (not self.exactly_once or self.sink_offsets) and source.group_offsets:
            # The group's (with exactly-once into a table: besides the table's, to judge a
            # checkpoint of another authority: workers/resuming.py).
            try:
                answer = source.committed(asked, timeout=10)
            except KafkaException as error:
                log_event(log, logging.WARNING, "committed-lookup-failed", error=str(error))
                lookup_failed = True
        group = committed_by_partition(answer or ())
        restoring = time.perf_counter()
        self._refresh_logs(source, partitions)
        self.state.prepare([(tp.topic, tp.partition) for tp in partitions])
        self._beat()
        if lookup_failed and not self.exactly_once and self._unjudged_pending(asked):
            # Only the group's answer tells whether an exactly-once run's pending checkpoint
            # (with no checkpoint before it: its worker was killed before promoting it)
            # committed. Restored without it, the partition started at the group's offset
            # with empty state and the first checkpoint discarded the pending one: its
            # windows lost the records before that offset. Asked as exactly-once asks
            # (waited for while it times out, then raised: the worker restarts).
            answer = self._stable_committed(source, asked)
            group = committed_by_partition(answer)
        if not self.exactly_once:
            committed = group
        states = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            states.append(self._new_state(*key, committed.get(key), group.get(key)))
            # A restore is the loop's work: each partition restored is a heartbeat, so that
            # an assignment of several large states (a takeover) is not taken for a stuck
            # loop, its worker killed by the liveness probe and the restore begun again.
            self._beat()
        self.metrics.state_restore.observe(time.perf_counter() - restoring)
        # The broker's committed offsets, for every partition: a partition restored from its
        # checkpoint may be ahead of them (the previous owner died, or its last commit
        # failed, after the checkpoint was durable). The next checkpoint commits it; until
        # then the exported lag is the broker's view, like the lag probe's. They also show
        # an offset reset made with Kafka's own tools, which is honoured.
        if not source.group_offsets:
            # No consumer group (the generator): the checkpoints are the only offsets, and
            # there are no offsets for times to replay from.
            for st in states:
                if st.replay_from_ms is not None:
                    # Its state starts empty at the checkpoint's offset (a reset), and the
                    # log says so.
                    log_event(log, logging.WARNING, "replay-unsupported-by-source",
                              source=source.name, partition=st.partition,
                              offset=st.next_offset)  # fmt: skip
                    st.replay_from_ms = None
        looked_up: set[tuple[str, int]] = set()  # the group's answer is known: committed
        try:
            if answer is None and source.group_offsets:
                answer = source.committed(asked, timeout=10)
            for tp in answer or ():
                st = self.partitions[(tp.topic, tp.partition)]
                st.committed = tp.offset if tp.offset >= 0 else None
                if tp.error is None:
                    looked_up.add((tp.topic, tp.partition))
                if st.next_offset is None and st.committed is not None:
                    log_event(
                        log,
                        logging.WARNING,
                        "no-checkpoint-using-committed-offset",
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=tp.offset,
                    )
                elif (not self.sink_offsets or st.judged_by_group) and self._offset_reset(st):
                    # (With the sink's offsets the group's are only the lag figures, unless
                    # the checkpoint is of an at-least-once run, whose authority they were.)
                    pass
                elif st.next_offset is not None and st.committed != st.next_offset:
                    log_event(
                        log,
                        logging.INFO,
                        "commit-behind-checkpoint",
                        topic=tp.topic,
                        partition=tp.partition,
                        committed=st.committed,
                        checkpoint=st.next_offset,
                    )
                self._start_from_time(st)
                if (tp.topic, tp.partition) in looked_up:
                    self._pin_latest(source, st)
        except KafkaException as error:
            log_event(log, logging.WARNING, "committed-lookup-failed", error=str(error))
        self._hold_unknown_starts(states, looked_up)
        start = [
            TopicPartition(
                st.topic,
                st.partition,
                self._start_offset(st, (st.topic, st.partition) in looked_up, self._start_latest),
            )
            for st in states
        ]
        start = self._replay_offsets(source, start)
        start = [
            self._from_log_start(source, tp, (tp.topic, tp.partition) in looked_up) for tp in start
        ]
        # A generator without startTimeMs goes on with the sequence its checkpoints are
        # of: a restart then changes no event time (before, the wall clock of each start
        # shifted every record after it, and their windows, by the downtime).
        origins = sorted({st.origin_ms for st in states if st.origin_ms is not None})
        if origins:
            source.adopt_origin(origins[0])
        for tp in start:
            st = self.partitions[(tp.topic, tp.partition)]
            if st.next_offset is not None and tp.offset == st.next_offset:
                # The consumer starts at the next offset: what it passes before handing out
                # a record can only be markers and aborted records (_past_markers). A
                # checkpoint (or a reset) standing on a commit marker, one an earlier
                # version wrote, then reaches the log end without a record to come.
                st.delivered_to = st.next_offset
        source.assign(start)
        self._left_positions(
            source,
            start,
            at={
                (tp.topic, tp.partition): self._resolved(
                    self.partitions[(tp.topic, tp.partition)], tp.offset,
                    (tp.topic, tp.partition) in looked_up,
                )
                for tp in start
            },
        )  # fmt: skip
        for tp in start:
            key = (tp.topic, tp.partition)
            st = self.partitions[key]
            at = self._resolved(st, tp.offset, key in looked_up)
            if key in self._dropped and st.held is None and at is not None:
                # Dropped earlier in the poll that assigns it again (the assignment lost or
                # revoked, then given back): what the poll handed out of it may be of the
                # earlier ownership, before this start. (A start the consumer resolves
                # later, the log end or a committed offset the group did not tell, is left
                # to it: a seek there could only guess.)
                self._seeked[key] = at
                self._reassigned.add(key)
        held = [tp for tp in start if self.partitions[(tp.topic, tp.partition)].held]
        if self._paused:
            source.pause(start)
        elif held:
            source.pause(held)
        log_event(log, logging.INFO, "assigned", partitions=_names(partitions))

    @property
    def _start_latest(self) -> bool:
        kafka = self.config.source.kafka
        return kafka is not None and kafka.start_from == "latest"

    @staticmethod
    def _start_offset(st: PartitionState, looked_up: bool, latest: bool = False) -> int:
        """Where an assigned partition starts: its checkpoint's (or replay's) offset, else
        the group's committed offset (OFFSET_INVALID: librdkafka reads it, and resets a
        position the log no longer holds to the log start: decision 0201), else
        ``startFrom`` (a ``latest`` one pinned by ``_pin_latest``, or OFFSET_END; when the
        group could not be asked under ``earliest`` without a start time, OFFSET_INVALID:
        with nothing committed, the log start; otherwise held: ``_hold_unknown_starts``).
        ``looked_up``: the group answered for this partition (``st.committed`` is its word).
        A repartition partition with nothing committed starts at its beginning whatever
        ``startFrom`` says: the topic holds only what this pipeline's upstreams wrote, from
        where ``startFrom`` put *them*, so its log end would skip records already re-keyed
        (a worker killed before its first commit), and re-reading is exact (exactly-once:
        aborted records are invisible; at-least-once: the source-offset dedupe)."""
        if st.next_offset is not None:
            return st.next_offset
        if st.start_unknown:
            return OFFSET_END  # held (paused): a place, until _retry_starts seeks it
        if st.role == "downstream" and looked_up and st.committed is None:
            return OFFSET_BEGINNING
        if latest and looked_up and st.committed is None:
            # Not pinned (_pin_latest could not read the log end): the log end, as the
            # consumer resolves it. The consumer's own reset is ``earliest`` now (decision
            # 0201): it is for a position the log no longer holds.
            return OFFSET_END
        return OFFSET_INVALID

    def _offset_reset(self, st: PartitionState) -> bool:
        """Whether the group's committed offset (just read into ``st.committed``) was moved
        by someone else since the checkpoint, e.g. ``kafka-consumer-groups.sh
        --reset-offsets``; if so, honour it: empty state at that offset.

        The checkpoint knows the committed offset it was written with and its own next
        offset; this pipeline only ever commits offsets between the two (the ones of its own
        checkpoints, in order), so a committed offset outside them was set by someone else.
        A checkpoint of another consumer group belongs to that group: the group's own
        committed offset (or startFrom) wins. A group with no committed offset at all (its
        offsets expired while the pipeline was suspended, or it was deleted) is not a reset:
        the checkpoint stands."""
        source = self.config.source.kafka
        if source is None or st.held is not None or not st.restored:
            return False
        if st.from_snapshot:
            # Going back to a snapshot moves the group's offset on purpose, like a replay:
            # handled here, not someone else's reset.
            st.committed_before_seek, st.committed = st.committed, None
            return True
        if st.checkpoint_group is None:  # a legacy checkpoint: nothing to compare with
            return False
        group = source.consumer_group
        if st.checkpoint_group == group:
            if not moved_by_someone_else(st.committed, st.checkpoint_committed, st.next_offset):
                return False
            why = "the group's committed offset moved without this pipeline"
        else:
            why = f"the checkpoint belongs to consumer group {st.checkpoint_group}"
        log_event(
            log,
            logging.WARNING,
            "offset-reset-detected",
            topic=st.topic,
            partition=st.partition,
            group=group,
            reason=why,
            checkpoint_offset=st.next_offset,
            checkpoint_committed=st.checkpoint_committed,
            committed=st.committed,
            open_windows_dropped=len(st.windows.windows) if st.windows else 0,
        )
        self.metrics.counter("streamherd_state_discarded").labels(
            self.metrics.pipeline, "offset-reset"
        ).inc()
        plan = self.processor.window
        st.windows = PartitionWindows.from_json(plan, None) if plan is not None else None
        st.next_offset = st.committed  # None: nothing committed, startFrom decides
        st.restored = False
        st.dirty = st.next_offset is not None
        return True

    def _pin_latest(self, source: Source, st: PartitionState) -> None:
        """A partition with nothing to resume from (no checkpoint, nothing committed) under
        ``startFrom: latest`` starts at the log end as the broker says now, and a checkpoint
        of its empty state there is written before its first record is folded (the run
        loop's next turn: ``_pin_starts``). Left to the consumer, ``latest`` is resolved
        again after a restart: a worker killed before its first checkpoint started at the
        log's new end, and every record it had read (folded into windows it never emitted)
        was skipped for good, in either delivery mode (a kill-schedule probe). ``earliest``
        and a time resolve to the same offsets again (but what retention deleted)."""
        kafka = self.config.source.kafka
        if (
            kafka is None
            or kafka.start_from != "latest"
            or st.role == "downstream"  # the repartition topic starts at its beginning
            or st.next_offset is not None
            or st.committed is not None
            or st.replay_from_ms is not None
            or st.held is not None
        ):
            return
        marks = source.watermarks(TopicPartition(st.topic, st.partition), fresh=True)
        if marks is None:  # the broker did not say: the consumer resolves it, unpinned
            log_event(log, logging.WARNING, "start-not-pinned", topic=st.topic,
                      partition=st.partition, start_from="latest")  # fmt: skip
            return
        # read_from too: an exactly-once abort before the pin committed rewinds there.
        st.next_offset = st.read_from = marks[1]
        st.dirty = True
        self._pins_due = True
        log_event(log, logging.INFO, "start-pinned", topic=st.topic, partition=st.partition,
                  offset=st.next_offset, start_from="latest")  # fmt: skip

    def _pin_again(self, st: PartitionState, read_from: int | None) -> None:
        """A ``startFrom: latest`` partition rebuilt with nothing committed by an abort
        (its pin's transaction, or the first after it, aborted) starts where this worker
        began reading it, pinned again before its records are folded, as on assign: left
        unpinned, a worker killed before its next commit left the next one to resolve
        ``latest`` anew, past every record this one had read (helper-123's finding)."""
        kafka = self.config.source.kafka
        if (
            kafka is None
            or kafka.start_from != "latest"
            or st.role == "downstream"
            or read_from is None
            or st.next_offset is not None
            or st.committed is not None
            or st.held is not None
        ):
            return
        st.next_offset = st.read_from = read_from
        st.dirty = True
        self._pins_due = True
        log_event(log, logging.INFO, "start-pinned", topic=st.topic, partition=st.partition,
                  offset=read_from, start_from="latest", again="aborted")  # fmt: skip

    def _pin_starts(self) -> None:
        """Write the checkpoint that pins the starts ``_pin_latest`` resolved (and commit its
        offsets), before any record of theirs is folded. Tried once: if it cannot be
        written now (a sink that does not flush), the next interval's checkpoint does it."""
        self._pins_due = False
        if not self._checkpoint(list(self.partitions.values()), sync=True, reason="start"):
            log_event(log, logging.WARNING, "start-pin-postponed",
                      action="pinned by the next checkpoint")  # fmt: skip

    def _left_positions(
        self,
        source: Source,
        assigned: list[TopicPartition],
        at: Mapping[tuple[str, int], int | None] | None = None,
    ) -> None:
        """Note the positions the consumer kept for partitions just assigned (a fresh
        assignment has none) as ``left_position``: _past_markers never takes them. A
        partition whose start ``at`` names is sought there, which resets the position (its
        fetch not started yet, the seek is refused: the position stays noted; it is
        forgotten once the partition is read up to it)."""
        try:
            found = source.positions([TopicPartition(tp.topic, tp.partition) for tp in assigned])
        except KafkaException:
            found = []
        for tp in found:
            key = (tp.topic, tp.partition)
            st = self.partitions.get(key)
            if st is None or tp.offset < 0:
                continue
            st.left_position = tp.offset
            start = (at or {}).get(key)
            if start is not None and st.held is None:
                try:
                    self._seek(source, key, start)
                except KafkaException as error:
                    if error.args[0].code() not in SEEK_NOT_STARTED:
                        raise
            log_event(log, logging.INFO, "position-left", topic=tp.topic, partition=tp.partition,
                      position=tp.offset, reset=st.left_position is None)  # fmt: skip

    def _seek(self, source: Source, key: tuple[str, int], offset: int) -> None:
        """Seek ``key`` to ``offset``. A seek resets the consumer's position: none is left
        from an earlier ownership (``left_position`` forgotten)."""
        source.seek(TopicPartition(*key, offset))
        st = self.partitions.get(key)
        if st is not None:
            st.left_position = None

    def _refetch(self, source: Source, messages: list[SourceMessage]) -> list[SourceMessage]:
        """``messages`` without those of the partitions the consumer was moved back on
        during the poll that returned them (inside a rebalance callback, or by the pins'
        abort after it), each sought to where it was moved again. A poll hands out records
        fetched before such a move and after it alike: the ones before, folded into the
        rebuilt state, made the records between its start and them look read (skipped:
        lost, in either mode; helper-117's exactly-once schedules). Those after are read
        again from there."""
        kept: list[SourceMessage] = []
        dropped: set[tuple[str, int]] = set()
        unsought: list[TopicPartition] = []
        for m in messages:
            key = (m.topic(), m.partition())
            if key in self._seeked:
                dropped.add(key)
            else:
                kept.append(m)
        for key in dropped:  # none in hand: where the consumer was moved stands
            try:
                self._seek(source, key, self._seeked[key])
            except KafkaException as error:
                # Assigned at an offset the consumer still looks up: its fetch has not
                # started (librdkafka answers _STATE), so nothing of the new ownership was
                # handed out: the start it was assigned stands.
                code = error.args[0].code()
                if key not in self._reassigned or code not in SEEK_NOT_STARTED:
                    raise
                unsought.append(TopicPartition(*key))
        # Read after the consume call moved positions (its end, past what it returned):
        # a reassigned partition not sought keeps one from its earlier ownership.
        unsought += [TopicPartition(*k) for k in self._reassigned if k not in dropped]
        if unsought:
            self._left_positions(source, unsought)
        return kept

    @staticmethod
    def _resolved(st: PartitionState, offset: int, looked_up: bool) -> int | None:
        """An assignment's start as an offset a seek can take: an absolute one or the log
        start as it is; for OFFSET_INVALID the group's committed offset, or with the group
        saying none, ``auto.offset.reset`` (the log start). None when it is the log end or
        the group could not be asked: only the consumer's own resolution can say."""
        if offset >= 0 or offset == OFFSET_BEGINNING:
            return offset
        if offset != OFFSET_INVALID or not looked_up:
            return None
        return st.committed if st.committed is not None else OFFSET_BEGINNING

    def _start_from_time(self, st: PartitionState) -> None:
        """A partition with nothing to resume from (no checkpoint, no committed offset)
        starts at ``startFrom``'s time, when it is one."""
        source = self.config.source.kafka
        if (
            source is not None
            and source.start_from_time_ms is not None
            and st.role != "downstream"  # the repartition topic starts at its beginning
            and st.next_offset is None
            and st.committed is None
            and st.held is None
        ):
            st.replay_from_ms = self._replay_start(st, source.start_from_time_ms)

    def _replay_start(self, st: PartitionState, time_ms: int) -> int:
        """Where a replay from `time_ms` (or ``startFrom``'s time) seeks a source partition
        to: the start of the earliest window holding that time, so that the window is
        computed whole (:meth:`_seek_to_time` closes the ones before). Seeking to the time
        itself re-emitted the window holding it with part of its records, under the key of
        its whole result: in a compacted topic or an upserting table the partial result
        replaced the whole one (helper-94's finding). The time itself without a window,
        and for the repartition topic (its entries carry the source's times)."""
        plan = self.processor.window
        if plan is None or self._is_repartition_topic(st.topic):
            return time_ms  # (by topic: a partition's role is set after this is asked)
        return int(plan.window_starts(time_ms)[0])

    def _is_repartition_topic(self, topic: str) -> bool:
        return self.repartition is not None and topic == self.repartition.topic

    def _replay_offsets(self, source: Source, start: list[TopicPartition]) -> list[TopicPartition]:
        """`start` with each partition to replay moved to the first offset at or after its
        replay time (the broker's offsets for times; past the last record: the log end)."""
        wanted = [
            TopicPartition(tp.topic, tp.partition, st.replay_from_ms)
            for tp in start
            if (st := self.partitions[(tp.topic, tp.partition)]).replay_from_ms is not None
        ]
        if not wanted:
            return start
        try:
            found = {(tp.topic, tp.partition): tp for tp in source.offsets_for_times(wanted, 10)}
        except KafkaException as error:
            found = {}
            log_event(log, logging.WARNING, "replay-offset-lookup-failed", error=str(error))
        moved: list[TopicPartition] = []
        for tp in start:
            st = self.partitions[(tp.topic, tp.partition)]
            if st.replay_from_ms is None:
                moved.append(tp)
                continue
            offset = self._offset_for_time(source, tp, found.get((tp.topic, tp.partition)))
            if offset is None:
                # Without the offset the replay cannot start where it must: hold the
                # partition (never guess); the loop asks again (_retry_seeks).
                st.held = (
                    f"{tp.topic}[{tp.partition}]: no offset for replay time {st.replay_from_ms}"
                    " yet (asking the broker again)"
                )
                self.metrics.partition_held(tp.topic, tp.partition, "replay-offset")
                moved.append(tp)
                continue
            self._seek_to_time(st, offset)
            moved.append(TopicPartition(tp.topic, tp.partition, offset))
        return moved

    @staticmethod
    def _offset_for_time(
        source: Source, tp: TopicPartition, hit: TopicPartition | None
    ) -> int | None:
        """The offset the broker gave for a time (past the last record: the log end);
        None when it gave none or the log end cannot be read."""
        if hit is None or hit.error is not None:
            return None
        if hit.offset >= 0:
            return int(hit.offset)
        marks = source.watermarks(tp, fresh=True)
        return None if marks is None else marks[1]

    def _from_log_start(
        self, source: Source, tp: TopicPartition, looked_up: bool
    ) -> TopicPartition:
        """`tp`, an assigned partition's start, moved to the log start when the broker deleted
        records past the group's committed offset it resumes from (no checkpoint): retention
        or DeleteRecords while the pipeline was stopped, suspended, at zero workers or far
        behind. The records lost are counted and said (:meth:`_lost`). Left to the
        consumer, a position before the log start is out of range and reset by
        ``auto.offset.reset``: under ``startFrom: latest`` to the log end, skipping every
        record still there, silently; now ``earliest`` (decision 0201), and this only counts.
        A checkpoint's position is judged by the fetch that jumps instead
        (:meth:`_overtaken`): no round trip per partition on every assignment. The start is
        pinned as ``_pin_latest`` pins one (a checkpoint there before its first record), so
        that a restart does not count the same gap again."""
        st = self.partitions[(tp.topic, tp.partition)]
        if (
            not source.group_offsets
            or tp.offset >= 0
            or not looked_up
            or st.committed is None
            or st.held is not None  # not consumed: judged when it is
        ):
            return tp
        position = st.committed
        marks = source.watermarks(TopicPartition(tp.topic, tp.partition))
        if marks is None or position >= marks[0]:
            return tp
        self._lost(st, position, marks[0])
        st.next_offset = st.read_from = marks[0]
        st.dirty = True
        self._pins_due = True
        return TopicPartition(tp.topic, tp.partition, marks[0])

    def _overtaken(
        self, st: PartitionState, fetched: list[SourceMessage], expected: int | None
    ) -> None:
        """A fetch of `st` skipped offsets: it began past `expected` (the next offset, or
        before the first record the committed offset the partition resumed from), or its
        records skip offsets between them. A gap is ordinary (compaction, transaction
        markers, aborted records) unless the broker deleted records before they were read
        and the consumer's out-of-range reset went to the log start (``auto.offset.reset`` is
        ``earliest``: decision 0201): the one jump from below the log start to a record at or
        past it, wherever it falls in the batch (one ``consume()`` can hand out records
        fetched before a deletion and the first ones after the reset together). A gap with
        records below the log start on both sides is a marker or compaction among records
        prefetched before the deletion: nothing lost. Counted (:meth:`_lost`), with the log
        start the fetches report (librdkafka keeps it from every fetch response, before it
        hands out the records): no round trip in the loop."""
        source = self.source
        if source is None or not source.group_offsets:
            return
        marks = source.watermarks(TopicPartition(st.topic, st.partition))
        if marks is None:
            return
        log_start = marks[0]
        position = expected  # where the next record should be
        for message in fetched:
            offset = message.offset() or 0
            if offset >= log_start:  # every later record is past it too
                if position is not None and position < log_start:
                    self._lost(st, position, log_start)
                return
            position = offset + 1 if position is None else max(position, offset + 1)

    def _lost(self, st: PartitionState, position: int, resumes_at: int) -> None:
        """The records of `st` from `position` up to `resumes_at`, the log start, will never
        be read: count and say so (the caller moves the partition on: its records past the
        gap are folded next, or its start is set there). Only what this worker has not
        counted yet: after a rewind (an exactly-once abort, partitions lost and assigned
        again) the same gap is jumped again, and was counted twice. What a rewind undid
        past the gap and the broker deleted since is lost anew, and counted."""
        key = (st.topic, st.partition)
        topic_id, through = self._lost_through.get(key, (st.log_topic_id, position))
        if topic_id is not None and st.log_topic_id is not None and topic_id != st.log_topic_id:
            through = position  # another log of the name: nothing of it counted yet
        position = max(position, through)
        if position < resumes_at:
            self._lost_through[key] = (st.log_topic_id or topic_id, resumes_at)
            self._count_lost(st, position, resumes_at)

    def _count_lost(self, st: PartitionState, position: int, resumes_at: int) -> None:
        """Count and say the records of `st` from `position` up to `resumes_at` lost."""
        lost = resumes_at - position
        self.metrics.records_lost(st.topic, st.partition, lost)
        log_event(log, logging.WARNING, "input-lost", topic=st.topic, partition=st.partition,
                  first=position, resumes_at=resumes_at, records=lost,
                  cause="deleted by the broker (retention or DeleteRecords) before they "
                  "were read")  # fmt: skip

    def _seek_to_time(self, st: PartitionState, offset: int) -> None:
        """Start `st` at `offset` (its replay or startFrom time's) from empty state."""
        log_event(
            log,
            logging.WARNING if st.restored else logging.INFO,
            "seek-to-time",
            topic=st.topic,
            partition=st.partition,
            replay_from_ms=st.replay_from_ms,
            offset=offset,
            checkpoint_offset=st.next_offset,
        )
        st.next_offset = offset
        # The group's committed offset will step back to it with the next checkpoint.
        st.committed_before_seek = st.committed
        st.committed = None
        plan = self.processor.window
        if (
            plan is not None
            and not self._is_repartition_topic(st.topic)
            and st.replay_from_ms is not None
        ):
            # The windows that start before the replay's first are not computed again (their
            # results stand): they start closed, and a record of theirs read from here (one
            # written after its time) is late, as if the partition had read up to there.
            floor = st.replay_from_ms + plan.size_ms - plan.slide_ms + plan.lateness_ms
            windows = st.windows
            if windows is not None and (
                windows.max_event_ms is None or windows.max_event_ms < floor
            ):
                windows.max_event_ms = floor
            if st.role == "upstream" and (st.max_event_ms is None or st.max_event_ms < floor):
                st.max_event_ms = floor
        st.replay_from_ms = None
        st.dirty = True

    def _hold_unknown_starts(
        self, states: list[PartitionState], looked_up: set[tuple[str, int]]
    ) -> None:
        """Hold the partitions whose start the group could not tell under ``startFrom:
        latest`` or a start time (``startFromTimeMs``; nothing to resume from, the
        committed-offset lookup failed: the broker did not answer in time). Left to
        librdkafka they started at the committed offset or, with none, at
        ``auto.offset.reset``, the log start since decision 0201: under ``latest`` a new
        pipeline read the topic's whole retained history it was told to skip (session 27's
        finding), and under ``earliest`` with a start time it read and folded the records
        before the time (a review's finding). Held, they are asked again at the next lag
        refresh (:meth:`_retry_starts`). Under ``earliest`` without a time the consumer's
        resolution is the start the spec asks for: not held."""
        kafka = self.config.source.kafka
        if (
            kafka is None
            or (kafka.start_from != "latest" and kafka.start_from_time_ms is None)
            or self.source is None
            or not self.source.group_offsets
        ):
            return
        start_from: str = kafka.start_from
        if kafka.start_from_time_ms is not None:
            start_from += f", startFromTimeMs {kafka.start_from_time_ms}"
        for st in states:
            if (
                (st.topic, st.partition) in looked_up
                or st.next_offset is not None
                or st.held is not None
                or st.role == "downstream"  # starts at its beginning whatever the answer
                or st.replay_from_ms is not None
            ):
                continue
            st.start_unknown = True
            st.held = (
                f"{st.topic}[{st.partition}]: its committed offset could not be read "
                f"(startFrom: {start_from}, no checkpoint); asking the broker again"
            )
            self.metrics.partition_held(st.topic, st.partition, "start-offset")
            log_event(log, logging.WARNING, "start-unknown", topic=st.topic,
                      partition=st.partition, start_from=kafka.start_from,
                      start_from_time_ms=kafka.start_from_time_ms)  # fmt: skip

    def _retry_starts(self) -> None:
        """Ask again for the committed offsets of the partitions :meth:`_hold_unknown_starts`
        held; start each where the group says, or, with nothing committed, at its start
        time (held until the broker gives that time's offset: :meth:`_retry_seeks`), else
        at the log end pinned (:meth:`_pin_latest`), and resume it."""
        source = self.source
        waiting = [st for st in self.partitions.values() if st.start_unknown]
        if source is None or not waiting:
            return
        asked = [TopicPartition(st.topic, st.partition) for st in waiting]
        try:
            answer = source.committed(asked, timeout=5)
        except KafkaException:
            return
        for tp in answer:
            st = self.partitions.get((tp.topic, tp.partition))
            if st is None or not st.start_unknown or tp.error is not None:
                continue
            st.committed = tp.offset if tp.offset >= 0 else None
            st.held = None
            if st.committed is None:
                # Nothing committed: startFromTimeMs first, as on assign (asked only for the
                # partitions of the group's answer there). Pinned at the log end instead, a
                # start time before it skipped every record from the time on.
                self._start_from_time(st)
                if st.replay_from_ms is not None:
                    st.start_unknown = False
                    st.held = (
                        f"{st.topic}[{st.partition}]: no offset for start time "
                        f"{st.replay_from_ms} yet (asking the broker again)"
                    )
                    self.metrics.partition_held(st.topic, st.partition, "replay-offset")
                    continue  # sought and resumed by _retry_seeks
                self._pin_latest(source, st)
                if st.next_offset is None:  # the log end not read: held, asked again
                    st.held = (
                        f"{st.topic}[{st.partition}]: its log end could not be read "
                        "(startFrom: latest); asking the broker again"
                    )
                    continue
                offset = st.next_offset
            else:
                placed = self._from_log_start(
                    source, TopicPartition(st.topic, st.partition, OFFSET_INVALID), True
                )
                offset = placed.offset if placed.offset >= 0 else st.committed
            st.start_unknown = False
            self.metrics.partition_held(st.topic, st.partition, None)
            self._seek(source, (st.topic, st.partition), offset)
            log_event(log, logging.INFO, "start-found", topic=st.topic, partition=st.partition,
                      offset=offset)  # fmt: skip
            if not self._paused:
                source.resume([TopicPartition(st.topic, st.partition)])

    def _retry_seeks(self) -> None:
        """Partitions held because the broker gave no offset for their replay or startFrom
        time: ask again (once per lag refresh), seek and resume them when it answers."""
        source = self.source
        waiting = [
            st
            for st in self.partitions.values()
            if st.held is not None and st.replay_from_ms is not None
        ]
        if source is None or not waiting:
            return
        wanted = [TopicPartition(st.topic, st.partition, st.replay_from_ms or 0) for st in waiting]
        try:
            found = {(tp.topic, tp.partition): tp for tp in source.offsets_for_times(wanted, 5)}
        except KafkaException:
            return
        for st in waiting:
            tp = TopicPartition(st.topic, st.partition)
            offset = self._offset_for_time(source, tp, found.get((st.topic, st.partition)))
            if offset is None:
                continue
            if self.processor.window is not None:
                st.windows = PartitionWindows.from_json(self.processor.window, None)
            self._seek_to_time(st, offset)
            st.held = None
            self.metrics.partition_held(st.topic, st.partition, None)
            self._seek(source, (st.topic, st.partition), offset)
            if not self._paused:
                source.resume([tp])

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        source = self.source
        assert source is not None
        self.metrics.rebalance("revoke")
        states = [
            self.partitions[(tp.topic, tp.partition)]
            for tp in partitions
            if (tp.topic, tp.partition) in self.partitions
        ]
        # Hand the partitions over with their state durable and their offsets committed,
        # so the next owner continues exactly where we stopped.
        self._checkpoint(states, sync=True, reason="revoke")
        for tp in partitions:
            self._drop_state(tp.topic, tp.partition)
        source.unassign(partitions)
        log_event(log, logging.INFO, "revoked", partitions=_names(partitions))

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        source = self.source
        assert source is not None
        # Another worker may own them already: writing a checkpoint or committing now
        # could only go backwards. Drop the state; the owner restores the last checkpoint.
        # Out of the group until its next assignment: not ready meanwhile.
        self._joined = False
        self.metrics.rebalance("lost")
        for tp in partitions:
            self._drop_state(tp.topic, tp.partition)
        source.unassign(partitions)
        if self.exactly_once and not self._broken:
            # The open transaction may hold outputs of the lost partitions: it can never
            # commit (the group moved on). Abort it and rewind what is left to its commit.
            # (A broken engine is closing: its producer may be unusable, and an abort's
            # error would hide the one the worker stops with.)
            self._abort_and_rewind(source, "partitions lost")
        log_event(log, logging.WARNING, "partitions-lost", partitions=_names(partitions))

    # ------------------------------------------------------------------ processing

    def _process(self, messages: list[Any]) -> None:
        started = time.perf_counter()
        groups: dict[tuple[str, int], list[SourceMessage]] = {}
        # A batch holds runs of one partition (librdkafka hands out whole fetches), so the
        # group is looked up only when the partition changes, and the topic is only read
        # per message when several topics are consumed (profiled: per-message calls here
        # cost as much as a filter).
        several_topics = self._several_topics
        last_partition: int | None = None
        last_topic: str | None = None
        append: Callable[[SourceMessage], None] | None = None
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self.metrics.error("consume")
                    log_event(log, logging.WARNING, "consume-error", error=str(error))
                    if error.fatal():
                        raise KafkaException(error)
                continue
            partition = m.partition()
            if (
                append is None
                or partition != last_partition
                or (several_topics and m.topic() != last_topic)
            ):
                last_partition, last_topic = partition, m.topic()
                append = groups.setdefault((last_topic, partition), []).append
            append(m)
        total = 0
        for tp, fetched in groups.items():
            st = self.partitions.get(tp)
            if st is None or st.held is not None:
                # Revoked within this consume call, or held (fetched before its pause).
                continue
            first = fetched[0].offset() or 0
            # Where the fetch should begin: the next offset, or before the first record the
            # committed offset the consumer resumed from (no checkpoint: OFFSET_INVALID).
            expected = st.next_offset if st.next_offset is not None else st.committed
            if (expected is not None and first > expected) or (
                (fetched[-1].offset() or 0) - first + 1 != len(fetched)
            ):
                self._overtaken(st, fetched, expected)
            group = unseen(fetched, st.next_offset)
            if not group:
                continue
            total += len(group)
            self._process_partition(st, group)
        self.metrics.batch_size.set(total)
        if total:
            self.metrics.batch_duration.observe(time.perf_counter() - started)

    def _count_read(self, st: PartitionState, messages: list[SourceMessage]) -> None:
        """Count the records of ``messages`` this process had not read before (an
        exactly-once abort rewinds to the last commit: what it reads again was counted)."""
        log = (st.topic, st.partition, st.log_topic_id)
        read_to = self.metrics.read_to(log)
        first = messages[0].offset() or 0
        fresh = (
            len(messages)
            if first >= read_to
            else sum(1 for m in messages if (m.offset() or 0) >= read_to)
        )
        self.metrics.records_in(log, fresh, (messages[-1].offset() or 0) + 1)

    def _event_time_lag(self, st: PartitionState, max_event_ms: int | None) -> None:
        """Export the wall clock's distance from the newest event time of ``st`` seen."""
        if max_event_ms is not None:
            self.metrics.set_partition(
                "streamherd_event_time_lag_seconds",
                st.topic,
                st.partition,
                time.time() - max_event_ms / 1000,
            )

    def _process_partition(self, st: PartitionState, messages: list[SourceMessage]) -> None:
        st.read_from = first_read(st.next_offset, st.read_from, messages[0].offset())
        if st.role == "upstream":
            self._process_upstream(st, messages)
        elif st.role == "downstream":
            self._process_downstream(st, messages)
        else:
            self._process_direct(st, messages)
        st.last_record_at = time.monotonic()
        last = messages[-1].offset()
        assert last is not None
        st.next_offset = st.delivered_to = last + 1
        st.dirty = True

    def _process_direct(self, st: PartitionState, messages: list[SourceMessage]) -> None:
        n_in = len(messages)
        self.counters.records_in += n_in
        self._count_read(st, messages)
        rows: list[tuple[bytes | str | None, Any]]
        sources: list[SourceMessage] = []
        if self.processor.window is not None and st.windows is not None:
            windows = st.windows
            failures: list[Failure] = []
            # A topic of one partition holds every key: no record there is misplaced (when
            # it gains partitions, its keyed checkpoints are judged: _keys_moved).
            placed = (
                messages
                if self._trusted_keying is None or st.log_partitions == 1
                else placed_by_key(messages, failures, self._trusted_keying)
            )
            batch = self._window_batch(placed, windows) if placed else WindowBatch([], [], 0)
            failures += batch.failures
            filtered, late = batch.filtered, len(batch.late)
            for m, event_ms in batch.late:
                failures.append(
                    Failure(
                        m,
                        "late",
                        LateRecordError(
                            f"event time {event_ms} is behind the watermark "
                            f"{windows.watermark_ms} by more than the allowed lateness"
                        ),
                    )
                )
            closed = windows.close()
            rows = list(closed)
            self.counters.windows_emitted += len(rows)
            self.counters.late += late
            self.metrics.windows_emitted.inc(len(rows))
            self.metrics.late.inc(late)
            self._event_time_lag(st, windows.max_event_ms)
            if windows.max_event_ms is not None:
                self.metrics.set_partition(
                    "streamherd_watermark_seconds",
                    st.topic,
                    st.partition,
                    (windows.watermark_ms or 0) / 1000,
                )
        else:
            failures = []
            items = self._decode(messages, failures)
            n_decoded = len(items)
            items = self.processor.run(items, failures)
            stage_failures = len(failures) - (n_in - n_decoded)
            filtered = n_decoded - self.processor.survivors(items) - stage_failures
            rows = [(m.key(), record) for record, m in items]
            sources = [m for _, m in items]
        if rows:
            # A result the sink refuses is dead-lettered with the coordinates of its record
            # (a window's: the record of the batch that closed it).
            self.outputs.write(rows, sources if self.processor.window is None else messages[-1])
        if failures:
            self._dead_letter(failures)
        self.counters.records_out += len(rows)
        self.counters.filtered += filtered
        self.counters.contributing += contributing(n_in, filtered, self._failed(failures))
        self.metrics.records_out.inc(len(rows))
        self.metrics.filtered.inc(filtered)
        self.metrics.contributing.inc(contributing(n_in, filtered, self._failed(failures)))
        st.idle = False

    def _process_upstream(self, st: PartitionState, messages: list[SourceMessage]) -> None:
        """A source partition of a repartitioned pipeline: the stateless steps, the window's
        key, event time and aggregate values, then each record re-keyed to the repartition
        topic."""
        assert self.repartition is not None and self.processor.window is not None
        n_in = len(messages)
        self.counters.records_in += n_in
        self._count_read(st, messages)
        failures: list[Failure] = []
        items = self._decode(messages, failures)
        n_decoded = len(items)
        items = self.processor.run(items, failures)
        stage_failures = len(failures) - (n_in - n_decoded)
        # Source records with no item left, as on the direct path: a user function that
        # fans one record out must not hide another that a filter dropped.
        filtered = n_decoded - self.processor.survivors(items) - stage_failures
        # Format 3 (workers/rekeying.py): key, event time and values evaluated here, one
        # message per repartition partition, named by this spec's plan.
        rows, st.max_event_ms, carried = rekey(
            self.processor.window,
            items,
            plan_id=self._hop_plan,
            topic=st.topic,
            partition=st.partition,
            max_event_ms=st.max_event_ms,
            failures=failures,
            partitions=self._repartition_partitions,
            headers=self._hop_headers,
        )
        if rows:
            self.outputs.repartition(self.repartition.topic, self._repartition_partitions, rows)
        if failures:
            self._dead_letter(failures)
        self.counters.repartitioned += carried
        self.counters.filtered += filtered
        # The newest event time of this source partition (its windows are downstream).
        self._event_time_lag(st, st.max_event_ms)
        self.metrics.filtered.inc(filtered)
        # Contributing here means: on its way to the window (a downstream failure or a
        # late record is dead-lettered there, and counted there as well).
        self.counters.contributing += contributing(n_in, filtered, self._failed(failures))
        self.metrics.contributing.inc(contributing(n_in, filtered, self._failed(failures)))
        last = messages[-1].offset()
        assert last is not None
        # No longer idle, and the marker says so: sent while still idle it told every
        # downstream partition that this one was quiet with the records just re-keyed, and
        # when all were, they closed everything: the window emitted with its first records,
        # the rest of it late (a probe on the broker, 3 runs in 3).
        was_idle, st.idle = st.idle, False
        self._mark(st, last, force=was_idle)

    def _mark(self, st: PartitionState, offset: int, *, force: bool = False) -> None:
        """Tell every downstream partition how far this source partition has got."""
        assert self.repartition is not None
        now = time.monotonic()
        mark = (offset, st.max_event_ms)
        if not force and (mark == st.marked or now - st.marked_at < MARKER_SECONDS):
            return
        header = watermark_header(st.topic, st.partition, offset, st.max_event_ms, st.idle)
        self.outputs.repartition_marker(
            self.repartition.topic,
            self._repartition_partitions,
            [
                (WATERMARK_HEADER, header),
                (PLAN_HEADER, self._hop_plan.encode()),
                *self._hop_headers,
            ],
        )
        st.marked, st.marked_at = mark, now

    def _process_downstream(self, st: PartitionState, messages: list[SourceMessage]) -> None:
        """A partition of the repartition topic: drop replays, fold each record with its
        source partition's lateness, close what the slowest source partition allows."""
        windows, clock = st.windows, st.clock
        assert windows is not None and clock is not None
        failures, late, duplicates, taken = fold_hop(windows, clock, messages, self._hop_plan)
        self.counters.rekeyed_in += taken
        self.metrics.repartition_records_in(st.topic, st.partition, taken)
        rows = close_windows(windows, clock)
        level = clock.closing_level()
        windows.max_event_ms = level if type(level) is int else None
        if type(level) is int:
            # The windows of a repartitioned pipeline live here: their watermark is how far
            # every source partition has got (helper-115: before, none was exported).
            self.metrics.set_partition(
                "streamherd_watermark_seconds", st.topic, st.partition, level / 1000
            )
        if rows:
            self.outputs.write(list(rows))
        if failures:
            self._dead_letter(failures)
        self.counters.windows_emitted += len(rows)
        self.counters.records_out += len(rows)
        self.counters.late += late
        self.counters.duplicates += duplicates
        self.metrics.windows_emitted.inc(len(rows))
        self.metrics.records_out.inc(len(rows))
        self.metrics.late.inc(late)

    def _failed(self, failures: list[Failure]) -> int:
        """How many source records ``failures`` name: a user function's records of one source
        record may fail each (one dead letter each), the source record counts once."""
        if self.processor.one_to_one:
            return len(failures)
        return len({id(f.message) for f in failures})

    def _dead_letter(self, failures: list[Failure]) -> None:
        self.outputs.dead_letter(failures)
        self.counters.dead_lettered += len(failures)
        by_reason: dict[str, int] = {}
        for failure in failures:
            by_reason[failure.reason] = by_reason.get(failure.reason, 0) + 1
        for reason, count in by_reason.items():
            self.metrics.dead_lettered(reason, count)
        first = failures[0]
        log_event(
            log,
            logging.INFO if self.outputs.has_dead_letter else logging.WARNING,
            "dead-lettered",
            count=len(failures),
            reason=first.reason,
            error=first.kind,
            message=first.text[:200],
            topic=first.message.topic(),
            partition=first.message.partition(),
            offset=first.message.offset(),
        )

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(
        self, states: list[PartitionState], *, sync: bool, reason: str, timeout: float = 30.0
    ) -> bool:
        """Flush outputs, write state+offset files, then commit. False if not yet possible."""
        if self._broken:
            return False
        # A held partition's checkpoint and committed offset stay exactly as found.
        states = [st for st in states if st.held is None]
        self._past_markers(states)
        if self.exactly_once:
            return self._commit_transaction(reason, timeout)
        started = time.perf_counter()
        for st in states:
            if st.role == "upstream" and st.next_offset is not None:
                self._mark(
                    st, st.next_offset - 1, force=st.marked != (st.next_offset - 1, st.max_event_ms)
                )
        try:
            flushed = self.outputs.flush(timeout)
        except Exception:
            self._broken = True
            raise
        if not flushed:
            self.metrics.error("flush-timeout")
            log_event(log, logging.WARNING, "checkpoint-postponed", reason="sink flush timeout")
            return False
        wanted = self._snapshot_wanted(states)
        dirty = [
            st
            for st in states
            if (st.dirty or (st.topic, st.partition) in wanted) and st.next_offset is not None
        ]
        behind: set[tuple[str, int]] = set()
        if dirty:
            try:
                saved = self._save(dirty, full=wanted)
            except CheckpointRefused as refused:
                # The broker refused the offsets committed with the state: this worker was
                # left behind by the group. Nothing was written; its next poll says so.
                self.metrics.error("checkpoint-refused")
                log_event(log, logging.WARNING, "checkpoint-refused", reason=reason,
                          error=str(refused), action="not committed")  # fmt: skip
                return False
            except CheckpointPostponed as postponed:
                # The state's broker is away for now (a restart, a coordinator moving):
                # nothing was written, the changes are kept, the next interval tries again.
                self.metrics.error("checkpoint-postponed")
                log_event(log, logging.WARNING, "checkpoint-postponed", reason=reason,
                          error=str(postponed), action="not committed")  # fmt: skip
                return False
            self._snapshot_taken(saved)
            # A partition skipped as behind another writer's head has no checkpoint of its
            # offset: committing it would break "checkpoint before commit".
            behind = {(st.topic, st.partition) for st in dirty} - {
                (c.topic, c.partition) for c in saved
            }
            states = [st for st in states if (st.topic, st.partition) not in behind]
            dirty = [st for st in dirty if (st.topic, st.partition) not in behind]
            if dirty:
                self.counters.checkpoints += 1
        duration = time.perf_counter() - started
        # Only a checkpoint written is counted (an interval with nothing new renews the age).
        self.metrics.checkpointed(duration, written=bool(dirty))
        self._last_checkpoint = time.monotonic()
        if dirty:
            log_event(
                log,
                logging.DEBUG,
                "checkpoint",
                reason=reason,
                partitions=len(dirty),
                duration_ms=round(duration * 1000, 1),
            )
        self._commit(states, sync=sync)
        if sync:
            # The confirmed commit goes into the files too (see _on_committed): the last
            # checkpoint before a stop then names the exact committed offset.
            confirmed = [st for st in states if st.dirty and st.next_offset is not None]
            if confirmed:
                try:
                    self._save(confirmed)
                except (CheckpointError, KafkaException, OSError) as error:
                    # Only the confirmed offset in the files was wanted: the checkpoint just
                    # written holds the state; the next one (or the next owner) does it.
                    log_event(log, logging.WARNING, "checkpoint-confirm-skipped",
                              error=str(error))  # fmt: skip
        return True

    def _past_markers(self, states: list[PartitionState]) -> None:
        """Move the next offset of caught-up partitions past what the consumer skipped after
        their last record: a transactional topic (another exactly-once writer's output, or
        this pipeline's own repartition topic in exactly-once mode) ends each transaction
        with a commit marker, an offset no record holds. Committing the last record's
        offset + 1 left the group one offset short of the log end for good: lag 1 per
        partition in the workers', the probe's and the broker's figures, and
        StreamherdNoProgress firing for a quiet pipeline (helper-115). A Java consumer
        commits its position, which is past the markers; so does this, only for a
        partition whose next offset is still the one after its last record (no seek or
        rewind since) and whose position is not past the log end it knows."""
        source = self.source
        if source is None or self._in_hand:
            return
        behind = [
            st
            for st in states
            if st.delivered_to is not None
            and st.next_offset == st.delivered_to
            and st.high is not None
            and st.next_offset < st.high
        ]
        if not behind:
            return
        try:
            found = source.positions([TopicPartition(st.topic, st.partition) for st in behind])
        except KafkaException:
            return
        at = {(tp.topic, tp.partition): tp.offset for tp in found}
        for st in behind:
            position = at.get((st.topic, st.partition), -1)
            assert st.next_offset is not None and st.high is not None
            if st.left_position is not None and st.next_offset >= st.left_position:
                st.left_position = None  # read up to it: any position past it is this one's
            if st.next_offset < position <= st.high and position != st.left_position:
                st.next_offset = st.delivered_to = position
                st.dirty = True

    def _commit_transaction(self, reason: str, timeout: float, *, final: bool = False) -> bool:
        """Exactly-once checkpoint: every owned partition's pending checkpoint, then one
        transaction commit with the outputs, dead letters, repartition records and the
        offsets (fenced by the group's generation, KIP-447), then the pending checkpoints
        become the committed ones, and the next transaction begins."""
        source = self.source
        if source is None:
            return True
        started = time.perf_counter()
        states = [st for st in self.partitions.values() if st.held is None]
        self._past_markers(states)
        for st in states:
            if st.role == "upstream" and st.next_offset is not None:
                mark = (st.next_offset - 1, st.max_event_ms)
                self._mark(st, st.next_offset - 1, force=st.marked != mark)
        wanted = self._snapshot_wanted(states)
        dirty = [
            st
            for st in states
            if (st.dirty or (st.topic, st.partition) in wanted) and st.next_offset is not None
        ]
        self._transactions += 1
        generation = f"{self._generation_prefix}-{self._transactions}"
        saved: list[Checkpoint] = []
        if dirty:
            saved = self._save(dirty, pending=True, generation=generation, full=wanted)  # joins it
        if self.two_phase:
            if not self._commit_two_phases(source, dirty, generation, reason, timeout):
                return False
        elif self.sink_offsets:
            if not self._commit_to_sink(source, dirty, generation, reason):
                return False
        elif not self._commit_to_kafka(source, dirty, generation, reason, timeout):
            return False
        if dirty:
            taken = self.state.promote([(st.topic, st.partition) for st in dirty])
            for topic, partition in taken:
                # This worker's transaction committed, and a worker the group gave the
                # partition to since judged (and promoted) its checkpoint on restore: this
                # one was cut off (frozen, or away from the broker alone) in between.
                log_event(log, logging.WARNING, "checkpoint-taken-over", topic=topic,
                          partition=partition, action="the next poll revokes it")  # fmt: skip
            for st in dirty:
                if st.windows is not None:
                    st.windows.checkpointed()
                st.dirty = False
                st.committed = st.next_offset
                st.written_committed = st.committed
            self.counters.checkpoints += 1
            self._snapshot_taken(saved)  # committed now: a snapshot may hold them
        self.outputs.take_errors()  # a committed transaction delivered everything
        self.metrics.settle()  # its records and results are counted for good
        self._counted = replace(self.counters)
        if not final and self.kafka_transaction:
            self.outputs.transaction.begin_transaction()
        duration = time.perf_counter() - started
        # A transaction with no partition's offsets in it wrote no checkpoint and committed
        # no offset: counted as neither (it renews the checkpoint age).
        self.metrics.checkpointed(duration, written=bool(dirty))
        if dirty:
            self.metrics.commits.inc()
        self._last_checkpoint = time.monotonic()
        log_event(
            log,
            logging.DEBUG,
            "transaction-committed",
            reason=reason,
            partitions=len(dirty),
            duration_ms=round(duration * 1000, 1),
        )
        return True

    def _commit_to_sink(
        self, source: Source, dirty: list[PartitionState], generation: str, reason: str
    ) -> bool:
        """Exactly-once into a database: the results and offsets in its transaction; False
        when it could not commit (nothing did: the next checkpoint tries again). Fenced, or
        a COMMIT whose outcome is unknown: the worker stops (TransactionError), and whoever
        takes the partitions next restores what the sink's offsets table says."""
        offsets = [(st.topic, st.partition, st.next_offset or 0) for st in dirty]
        try:
            committed = self.outputs.commit_offsets(offsets, generation)
        except Exception as error:  # any failure to decide stops the worker
            raise self._sink_undecided(reason, error) from error
        if not committed:
            self._sink_postponed(source, reason, "committed")
            return False
        if offsets and source.group_offsets:
            # The group's offsets feed the lag figures (the operator's probe, the
            # autoscaler): the sink's win on assign, so a lost commit here is harmless. The
            # generation goes with them: a worker switched to at-least-once judges a pending
            # checkpoint this worker left by it (workers/resuming.py, rule 1).
            try:
                source.commit(
                    [TopicPartition(t, p, o, metadata=generation) for t, p, o in offsets],
                    asynchronous=True,
                )
            except KafkaException as error:
                log_event(log, logging.WARNING, "commit-failed", error=str(error))
        return True

    def _sink_undecided(self, reason: str, error: Exception) -> TransactionError:
        """The sink's transaction failed in a way that leaves its outcome open, or it was
        fenced: the worker is broken and stops with the returned error."""
        self._broken = True
        self.metrics.error("transaction")
        log_event(log, logging.ERROR, "transaction-failed", reason=reason, error=str(error))
        return TransactionError(f"sink transaction failed: {error}")

    def _sink_postponed(self, source: Source, reason: str, step: str) -> None:
        """The sink refused before anything was decided (the database is down): the
        checkpoint waits. Before a revoke the queued rows include the outgoing partitions',
        which must never commit without their offsets: drop them all and go back to the
        last commit."""
        self.metrics.error("transaction")
        log_event(log, logging.WARNING, "checkpoint-postponed", reason=f"sink not {step}")
        if reason == "revoke":
            self._abort_and_rewind(source, f"sink not {step} before a revoke")

    def _commit_two_phases(
        self,
        source: Source,
        dirty: list[PartitionState],
        generation: str,
        reason: str,
        timeout: float,
    ) -> bool:
        """Exactly-once into a database with Kafka outputs (decision 0155): the database's
        transaction prepared (results, offsets), then Kafka's committed (dead letters,
        repartition and changelog records, the offsets with the generation as metadata),
        then the database's committed. False: postponed (the database refused before its
        prepare), or both aborted and the partitions rewound. Any outcome that is not
        certain ends the engine and leaves the prepared transaction to recovery, which
        decides from Kafka's offsets: the database's stops the worker (TransactionError); a
        Kafka client's starts the engine again in-process (FatalClientError, decision 0194)."""
        offsets = [(st.topic, st.partition, st.next_offset or 0) for st in dirty]
        prepared = False
        if offsets:
            try:
                prepared = self.outputs.prepare_offsets(offsets, generation)
            except Exception as error:  # fenced, or a prepare whose outcome is unknown
                raise self._sink_undecided(reason, error) from error
            if not prepared:
                if self.outputs.refusals_pending and reason in ("interval", "idle"):
                    # Put off while finding the rows the table refuses: Kafka's transaction,
                    # open since the last commit, would time out over several tries (and
                    # its abort replay the same rows: a review's finding). Begun again, the
                    # records since the checkpoint read again; the sink keeps what it found.
                    why = "sink finding refused rows: transaction begun again"
                    log_event(log, logging.WARNING, "checkpoint-postponed", reason=why)
                    self._abort_and_rewind(source, "sink still finding refused rows")
                    return False
                self._sink_postponed(source, reason, "prepared")
                return False
            self._fault_pause("prepared", generation)
        producer = self.outputs.transaction
        try:
            if offsets:
                send_offsets_fenced(
                    producer,
                    [TopicPartition(t, p, o, metadata=generation) for t, p, o in offsets],
                    source.group_metadata(),
                    timeout,
                )
            producer.commit_transaction(timeout)
        except KafkaException as error:
            self.metrics.error("transaction")
            log_event(log, logging.WARNING, "transaction-failed", reason=reason, error=str(error))
            # Only an abort that succeeded proves Kafka's transaction will never commit; then,
            # and only then, the database's prepared one may roll back. A producer that failed
            # fatally (fenced: its transaction outlived the timeout) or cannot abort is
            # replaced with the engine (decision 0194); the prepared transaction stays, and the
            # next engine's recovery decides it from Kafka's committed offsets, as a restarted
            # worker's would (the next producer's init_transactions ends this transaction).
            if is_fatal(error):
                self._broken = True
                raise FatalClientError(
                    f"transaction failed fatally ({error}); its prepared database transaction "
                    "is left to recovery"
                ) from error
            self._abort_kafka("; its prepared database transaction is left to recovery")
            if prepared:
                self._decide_prepared(commit=False)
            self._abort_and_rewind(source, str(error), kafka_aborted=True)
            return False
        if prepared:
            self._fault_pause("kafka-committed", generation)
            self._decide_prepared(commit=True)
        return True

    def _decide_prepared(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK PREPARED; a failure stops the worker (recovery decides the
        same from Kafka's committed offsets)."""
        try:
            if commit:
                self.outputs.commit_prepared()
            else:
                self.outputs.rollback_prepared()
        except Exception as error:
            self._broken = True
            self.metrics.error("transaction")
            log_event(log, logging.ERROR, "transaction-failed", reason="decide-prepared",
                      error=str(error))  # fmt: skip
            raise TransactionError(f"prepared transaction not decided: {error}") from error

    def _fault_pause(self, point: str, generation: str) -> None:
        where, _, seconds = self._pause_at.partition(":")
        if where == point:
            log_event(log, logging.WARNING, "fault-pause", point=point, generation=generation,
                      seconds=seconds)  # fmt: skip
            time.sleep(float(seconds or 1))

    def _commit_to_kafka(
        self,
        source: Source,
        dirty: list[PartitionState],
        generation: str,
        reason: str,
        timeout: float,
    ) -> bool:
        """The Kafka transaction: outputs, dead letters, repartition records, changelog
        records and the offsets (fenced by the group's generation, KIP-447); False when it
        was aborted and the partitions rewound."""
        producer = self.outputs.transaction
        try:
            if dirty:
                offsets = [
                    TopicPartition(st.topic, st.partition, st.next_offset or 0, metadata=generation)
                    for st in dirty
                ]
                send_offsets_fenced(producer, offsets, source.group_metadata(), timeout)
            producer.commit_transaction(timeout)
        except KafkaException as error:
            self.metrics.error("transaction")
            log_event(log, logging.WARNING, "transaction-failed", reason=reason, error=str(error))
            if is_fatal(error):
                self._broken = True
                raise FatalClientError(f"transaction failed fatally: {error}") from error
            self._abort_and_rewind(source, str(error))
            return False
        return True

    def _abort_kafka(self, consequence: str) -> None:
        """Abort Kafka's open transaction, retried. One that does not complete (the broker
        away or busy past every attempt; a CI run of the broker-freeze test) leaves a
        producer that can neither commit nor begin: the next producer's init_transactions
        ends that transaction, so the clients are replaced (FatalClientError, decision
        0194). ``consequence`` ends the error's message (what is left to the next engine)."""
        try:
            abort_retrying(self.outputs.transaction, 30, ABORT_ATTEMPTS, self._beat)
        except KafkaException as error:
            log_event(log, logging.ERROR, "transaction-abort-failed", error=str(error))
            self._broken = True
            message = f"cannot abort the transaction ({error}){consequence}"
            raise FatalClientError(message) from error

    def _abort_and_rewind(self, source: Source, why: str, *, kafka_aborted: bool = False) -> None:
        """Abort the open transaction; every owned partition goes back to its committed
        checkpoint and offset (the aborted outputs' effects on state are forgotten).
        ``kafka_aborted``: Kafka's transaction was aborted already."""
        self.metrics.discard_pending()  # its records are read again, and counted then
        self.counters = replace(self._counted)
        if self.sink_offsets:
            self.outputs.abort()  # the sink's transaction never began: drop its rows
        if self.kafka_transaction and not kafka_aborted:
            self._abort_kafka("")
        self.state.abort()
        if self.kafka_transaction:
            # Open before the partitions are rebuilt: a partition whose committed checkpoint
            # a reset or replay discards keeps it again (the first copy went with the
            # aborted transaction), and the changelog backend writes that copy with the
            # transaction; with none open it failed, and the partition was held until the
            # worker restarted (a helper's finding).
            self.outputs.transaction.begin_transaction()
        owned = [TopicPartition(t, p) for t, p in self.partitions]
        committed = self._committed_with_metadata(source, owned) if owned else {}
        rewound: list[TopicPartition] = []
        held_before: set[tuple[str, int]] = set()
        for tp in owned:
            before = self.partitions[(tp.topic, tp.partition)]
            read_from = before.read_from
            if before.held is not None:
                held_before.add((tp.topic, tp.partition))
            st = self._new_state(
                tp.topic, tp.partition, committed.get((tp.topic, tp.partition)), rewinding=True
            )
            st.left_position = before.left_position
            if st.next_offset is None and not before.start_unknown:
                # Nothing committed (no checkpoint, no committed offset): it starts at
                # startFrom's time again, as on assign; _replay_offsets seeks or holds it.
                # Rebuilt with no start, one held for that offset was never sought or
                # resumed (helper-119), and one sought there on assign was not sought back:
                # the aborted transaction's records were skipped (helper-123).
                st.committed = before.committed
                self._start_from_time(st)
                self._pin_again(st, read_from)
            if before.start_unknown and st.held is None:
                if st.next_offset is None:
                    # Still held, paused, its start asked again (_retry_starts): rebuilt
                    # unheld, it stayed paused for good.
                    st.start_unknown, st.held = True, before.held
                    self.metrics.partition_held(tp.topic, tp.partition, "start-offset")
                elif not self._paused:  # a start found meanwhile: seeked below, resumed
                    source.resume([TopicPartition(tp.topic, tp.partition)])
            self._beat()  # a restore is the loop's work (see _on_assign)
            # The consumer keeps its position through an abort: every partition must seek.
            # One with nothing committed restarts empty, so it reads again from where this
            # worker began (else the records of the aborted transaction would be skipped).
            offset = rewind_offset(st.next_offset, read_from)
            rewound.append(
                TopicPartition(tp.topic, tp.partition, OFFSET_INVALID if offset is None else offset)
            )
        # A partition whose replay the abort undid (its committed checkpoint is still the
        # discarded spec's) starts at the replay time again, as on assign: from the
        # checkpoint's offset it would be a reset (a review's finding).
        for tp in self._replay_offsets(source, rewound):
            key = (tp.topic, tp.partition)
            if tp.offset >= 0:
                self._seek(source, key, tp.offset)
                self._seeked[key] = tp.offset
                if key in held_before and self.partitions[key].held is None and not self._paused:
                    source.resume([TopicPartition(tp.topic, tp.partition)])  # its hold is over
            if key not in held_before and self.partitions[key].held is not None:
                # Held by the rebuild (its time's offset not given, its checkpoint refused):
                # paused, as on assign (_retry_seeks seeks and resumes one given its offset).
                source.pause([TopicPartition(tp.topic, tp.partition)])
        log_event(log, logging.WARNING, "transaction-aborted", why=why, partitions=len(owned))

    @staticmethod
    def _state_of(
        st: PartitionState, full: bool
    ) -> tuple[dict[str, Any] | None, list[list[Any]] | None]:
        """(state, changes): the whole state, or (``full`` False and the windows based on
        the backend's committed checkpoint) the state without its windows and the windows
        changed since that checkpoint (decision 0095)."""
        if st.role == "upstream":
            return {"maxEventMs": st.max_event_ms}, None
        if st.windows is None:
            return None, None
        changes = None
        if st.windows.based and not full:
            state, changes = st.windows.head_json(), st.windows.changes()
        else:
            state = st.windows.to_json()
        if st.clock is not None:
            state.update(st.clock.to_json())
        return state, changes

    def _save(
        self,
        states: list[PartitionState],
        *,
        pending: bool = False,
        generation: str = "",
        full: set[tuple[str, int]] | None = None,
    ) -> list[Checkpoint]:
        """Write the checkpoint files of `states` (durable when this returns); exactly-once
        writes them pending, stamped with the transaction's id, until it commits. Each is
        the changes since the last one where it can be; whole for the partitions in ``full``
        (a snapshot wants them)."""
        whole = set(full or ())
        while True:
            checkpoints = self._checkpoints_of(states, generation, whole)
            try:
                if pending:
                    self.state.stage(checkpoints)
                else:
                    source = self.source
                    group = source.group_metadata() if source and source.group_offsets else None
                    self.state.save(checkpoints, group=group)
                break
            except CheckpointBaseMoved as moved:
                tp = (moved.topic, moved.partition)
                if isinstance(moved, CheckpointBehind) and not pending:
                    # The other writer's checkpoint is further on: this state, written
                    # whole, would set it back (a restore then sees an offset reset). This
                    # worker was left behind by the group, or is catching up with what a
                    # left-behind one had read: no checkpoint of it now, its changes kept.
                    log_event(log, logging.WARNING, "checkpoint-behind-another",
                              topic=moved.topic, partition=moved.partition,
                              action="skipped")  # fmt: skip
                    states = [st for st in states if (st.topic, st.partition) != tp]
                    continue
                if tp in whole:
                    raise  # a whole checkpoint builds on nothing: never moved
                # Another writer replaced the partition's checkpoint since this worker's
                # (one that held it while this one was cut off, or a frozen one that woke):
                # this worker's state is whole by itself, so it is written whole.
                log_event(log, logging.WARNING, "checkpoint-replaced", topic=moved.topic,
                          partition=moved.partition, action="written whole")  # fmt: skip
                whole.add(tp)
        if pending:
            return checkpoints
        for st in states:
            if st.pending_left:  # superseded by the checkpoint just written
                self.state.discard_pending(st.topic, st.partition)
                st.pending_left = False
            if st.windows is not None:
                st.windows.checkpointed()  # only now: a failed save keeps the changes
            st.dirty = False
            st.written_committed = st.committed
        return checkpoints

    def _checkpoints_of(
        self, states: list[PartitionState], generation: str, full: set[tuple[str, int]]
    ) -> list[Checkpoint]:
        """The checkpoints of `states`: whole for the partitions in `full`, else each the
        changes since the last one where it can be."""
        source = self.config.source.kafka
        group = source.consumer_group if source is not None else None
        checkpoints = []
        for st in states:
            committed = st.committed if st.committed is not None else st.committed_before_seek
            state, changes = self._state_of(st, (st.topic, st.partition) in full)
            checkpoints.append(
                Checkpoint(
                    topic=st.topic,
                    partition=st.partition,
                    next_offset=st.next_offset,  # type: ignore[arg-type]
                    state=state,
                    changes=changes,
                    pipeline=self.pipeline,
                    fingerprint=self.fingerprint,
                    state_shape=self.state_shape,
                    group=group,
                    committed=committed,
                    restored_from=st.restored_from,
                    generation=generation,
                    cluster=self._cluster_id(),
                    topic_id=st.log_topic_id,
                    partitions=st.log_partitions,
                    authority=self.authority,
                    spec_generation=self.state_policy.spec_generation,
                    origin_ms=self.source.origin_ms if self.source is not None else None,
                    **self._era_of(st),
                )
            )
        return checkpoints

    def _commit(self, states: list[PartitionState], *, sync: bool) -> None:
        source = self.source
        if source is None or not source.group_offsets:
            return
        pending = [
            st
            for st in states
            if st.next_offset is not None
            and st.next_offset != st.committed
            # An asynchronous commit of this offset is on its way; a synchronous one (revoke,
            # shutdown) sends it again rather than trust a commit nobody has confirmed.
            and (sync or st.next_offset != st.committing)
        ]
        if not pending:
            return
        offsets = [TopicPartition(st.topic, st.partition, st.next_offset or 0) for st in pending]
        try:
            if sync:
                confirmed = source.commit(offsets, asynchronous=False)
                self._on_committed(None, confirmed)
            else:
                source.commit(offsets, asynchronous=True)
                for st in pending:
                    st.committing = st.next_offset
            self.metrics.commits.inc()
        except KafkaException as error:
            # The checkpoint file is the truth; a failed commit only delays the broker's view
            # and is sent again with the next checkpoint.
            self.metrics.error("commit")
            log_event(log, logging.WARNING, "commit-failed", error=str(error))

    def _on_committed(self, error: Any, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to a commit (served from consume(), and for synchronous ones
        from _commit): record what the broker confirmed; forget what failed, to resend it."""
        failed = []
        for tp in partitions:
            st = self.partitions.get((tp.topic, tp.partition))
            if st is None:
                continue  # revoked meanwhile: the next owner reads the broker's offset
            if st.committing == tp.offset:
                st.committing = None
            if error is None and tp.error is None:
                # Commits of one member reach the broker in order: never step backwards.
                if st.committed is None or tp.offset > st.committed:
                    st.committed = tp.offset
                # Once the commit of the checkpointed offset is confirmed, the next
                # checkpoint records it (one more write per partition when idle), so the
                # committed offsets this pipeline may have set narrow down to exactly one
                # and any offset reset made meanwhile is noticed (_offset_reset).
                if st.committed == st.next_offset and st.written_committed != st.committed:
                    st.dirty = True
            else:
                failed.append(f"{tp.topic}[{tp.partition}]@{tp.offset}")
        if error is not None or failed:
            self.metrics.error("commit")
            log_event(
                log,
                logging.WARNING,
                "commit-failed",
                error=str(error) if error is not None else "partition errors",
                partitions=",".join(failed),
            )

    def _maybe_checkpoint(self) -> None:
        interval = self.config.checkpoint.interval_seconds
        if time.monotonic() - self._last_checkpoint >= interval:
            done = self._checkpoint(list(self.partitions.values()), sync=False, reason="interval")
            if not done:
                # sink not confirmed (database down): retry in a while, not every loop
                self._last_checkpoint = time.monotonic() - interval + min(interval, 5.0)

    # ------------------------------------------------------------------ lag and backpressure

    def _refresh_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_lag < LAG_REFRESH_SECONDS:
            return
        self._last_lag = now
        self._retry_seeks()
        self._retry_starts()
        self._retry_logs(now)
        self._retry_upstreams(now)
        open_windows = 0
        lags: dict[tuple[str, int], int | None] = {}
        for st in list(self.partitions.values()):
            if st.windows is not None:
                open_windows += len(st.windows.windows)
            lags[(st.topic, st.partition)] = self._partition_lag(st)
        self.metrics.set_lag(lags)
        self.metrics.open_windows.set(open_windows)

    def _partition_lag(self, st: PartitionState) -> int | None:
        source = self.source
        if source is None:
            return None
        marks = source.watermarks(TopicPartition(st.topic, st.partition))
        if marks is None:
            return None
        low, high = marks
        if not source.group_offsets:
            # No consumer group: nothing is committed; the lag is what is left to read.
            return max(high - (st.next_offset or 0), 0)
        st.low, st.high = low, high
        # The lag probe's rule (workers/lag.py), so the exported figure, the operator's
        # probe and the broker's view agree: log end - committed; nothing committed yet ->
        # startFrom; committed behind the log start (retention) -> log end - log start. A
        # repartition partition starts at its beginning whatever startFrom says
        # (_start_offset), and the probe counts it so (LagSpec.from_beginning): its records
        # waiting under `latest` were exported as no lag.
        kafka = self.config.source.kafka
        start_from: StartFrom = (
            "latest"
            if kafka is not None and kafka.start_from == "latest" and st.role != "downstream"
            else "earliest"
        )
        return partition_lag(low, high, st.committed, start_from)

    def _check_idle(self) -> None:
        """Partitions with nothing new for idleTimeout and nothing left to read stop holding
        event time back: a direct window closes its open windows, a source partition of a
        repartitioned pipeline tells the downstream partitions not to wait for it."""
        source = self.config.source.kafka
        timeout = source.idle_timeout_seconds if source is not None else None
        if timeout is None:
            return
        now = time.monotonic()
        quiet: list[tuple[PartitionState, int | None]] = []  # direct windows, watermark before
        for st in list(self.partitions.values()):
            if st.idle or st.role == "downstream" or now - st.last_record_at < timeout:
                continue
            if st.high is None:
                continue
            position = st.next_offset if st.next_offset is not None else st.committed
            if position is None:
                position = st.low if st.low is not None else 0
            if position < st.high:
                continue  # records are waiting: not quiet, only slow
            st.idle = True
            if st.role == "upstream":
                self._mark(st, position - 1, force=True)
                self.outputs.poll(0)
                log_event(
                    log, logging.INFO, "partition-idle", topic=st.topic, partition=st.partition
                )
            elif st.windows is not None and st.windows.windows:
                quiet.append((st, st.windows.max_event_ms))
                pass_open_windows(st.windows)
                st.dirty = True
        if not quiet:
            return
        # Idleness is the one rule that depends on wall-clock time, so a restart does not
        # repeat it: the moved watermark is made durable before the windows' results leave
        # (at-least-once; exactly-once's results leave with the checkpoint's transaction).
        # Else a restart from the checkpoint before found the windows open, folded a record
        # this worker had dead-lettered as late, and emitted a second, different result (a
        # helper's finding). A restart after it closes them again with the same values.
        states = [st for st, _ in quiet]
        if not self.exactly_once:
            # A checkpoint of these partitions only: the others' interval goes on (it would
            # never come while partitions went quiet in turn more often than it).
            interval_from = self._last_checkpoint
            done = self._checkpoint(states, sync=False, reason="idle")
            self._last_checkpoint = interval_from
            if not done:
                # Not recorded (the sink not flushed): tried again in 5 s, not every pass.
                for st, before in quiet:
                    st.idle = False
                    st.last_record_at = now - timeout + min(timeout, 5.0)
                    if st.windows is not None:
                        st.windows.max_event_ms = before
                return
        for st in states:
            assert st.windows is not None
            rows = st.windows.close()
            self.outputs.write(list(rows))
            st.dirty = True
            self.counters.windows_emitted += len(rows)
            self.counters.records_out += len(rows)
            self.metrics.windows_emitted.inc(len(rows))
            self.metrics.records_out.inc(len(rows))
            log_event(
                log,
                logging.INFO,
                "partition-idle",
                topic=st.topic,
                partition=st.partition,
                closed=len(rows),
            )

    def _backpressure(self) -> None:
        source = self.source
        if source is None:
            return
        if not self._paused and self.outputs.behind():
            assigned = [TopicPartition(t, p) for t, p in self.partitions]
            source.pause(assigned)
            self._paused = True
            self.metrics.paused.set(1)
            log_event(log, logging.INFO, "paused", reason="sink behind")
        elif self._paused and self.outputs.caught_up():
            assigned = [
                TopicPartition(t, p) for (t, p), st in self.partitions.items() if st.held is None
            ]
            source.resume(assigned)
            self._paused = False
            self.metrics.paused.set(0)
            log_event(log, logging.INFO, "resumed")

    # ------------------------------------------------------------------ the loop

    def summary(self, reason: str, finished: bool) -> RunSummary:
        c = self.counters
        return RunSummary(
            records_in=c.records_in,
            records_out=c.records_out,
            filtered=c.filtered,
            dead_lettered=c.dead_lettered,
            late=c.late,
            windows_emitted=c.windows_emitted,
            checkpoints=c.checkpoints,
            elapsed_seconds=time.monotonic() - c.started,
            finished=finished,
            reason=reason,
            partitions=len(self.partitions),
            held=len(held := [st.held for st in self.partitions.values() if st.held is not None]),
            held_why=held[0] if held else None,
        )

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()
        self.metrics.heartbeat.set(time.time())

    def run(self) -> RunSummary:
        self._running = True
        try:
            reason = self._run()
        except KafkaException as error:
            self._broken = True
            if is_fatal(error):  # e.g. a produce() on a producer the broker fenced
                raise FatalClientError(f"a Kafka client failed fatally: {error}") from error
            raise
        except BaseException:
            self._broken = True
            raise
        finally:
            self._running = False
            # Stops the PostgreSQL writer thread: a failed engine's writes no checkpoint
            # covers are not written on (the next engine writes them again).
            self.outputs.close(drain=not self._broken)
            self.state.close()
        summary = self.summary(reason, finished=True)
        if self.progress is not None:
            self.progress(summary)
        log_event(
            log,
            logging.INFO,
            "stopped",
            reason=reason,
            records_in=summary.records_in,
            records_out=summary.records_out,
            dead_lettered=summary.dead_lettered,
        )
        return summary

    def _tick(self, last_progress: list[float]) -> None:
        self._beat()
        self._refresh_lag()
        self._check_idle()
        if self.progress is not None and time.monotonic() - last_progress[0] >= PROGRESS_SECONDS:
            last_progress[0] = time.monotonic()
            self.progress(self.summary("running", finished=False))

    def _topics(self) -> list[str]:
        """What to consume: the source's topics and, for a repartitioned pipeline, the
        repartition topic (created here when missing)."""
        kafka = self.config.source.kafka
        if kafka is None:
            return []
        topics = list(kafka.topics)
        if self.repartition is not None:
            admin = self._admin = AdminClient(client_config(kafka))
            self._upstreams = source_partitions(admin, kafka.topics)
            wanted = self.repartition.partitions or max(
                (
                    sum(1 for t, _ in self._upstreams if t == name)
                    for name in {t for t, _ in self._upstreams}
                ),
                default=1,
            )
            self._repartition_partitions = ensure_topic(
                admin, self.repartition.topic, wanted, self.repartition.retention_ms
            )
            topics.append(self.repartition.topic)
        return topics

    def _run(self) -> str:
        """The one processing loop, whatever the source, sink or state backend."""
        runtime = self.config.runtime
        source = self.source = self._given_source or open_source(
            self.config, self._topics(), self._on_committed
        )
        stuck = False  # a librdkafka call still holds the producer: no goodbye to the group
        if self.kafka_transaction:
            # Fences an earlier incarnation with the same transactional.id and aborts its
            # open transaction, then opens ours: every output from here on is inside one.
            producer = self.outputs.transaction
            producer.init_transactions(30)
            producer.begin_transaction()
        if self.two_phase:
            # The database is reached (and allows prepared transactions) before the group is
            # joined: a server that does not stops the worker here, with the setting named.
            # This incarnation is registered: its predecessors (fenced just now) need no
            # fencing by whoever decides what they left prepared; this worker decides that
            # itself with its first assignment, whatever partitions it holds.
            self.outputs.register_writer(self._generation_prefix)
        if self.config.source.kafka is not None:
            self._snapshots = SnapshotTaker(
                self.config.pipeline.namespace,
                self.config.pipeline.name,
                client_config(self.config.source.kafka),
                lambda: self._list_topics(timeout=2),
            )
        try:
            # Partition events come from inside poll() (a consumer group's rebalances), or
            # at once from here (a source that owns every partition: the generator).
            source.open(self._on_assign, self._on_revoke, self._on_lost)
            self.began = True
            log_event(
                log,
                logging.INFO,
                "started",
                **source.describe(),
                pipeline=self.pipeline,
                batch="fused" if self.fused else "generic",
                delivery=self.config.delivery,
            )
            last_progress = [time.monotonic()]
            while not self.stop.is_set() and not self._broken and not source.exhausted:
                self._in_hand = True
                self._seeked, self._dropped, self._reassigned = {}, set(), set()
                messages = source.poll(runtime.batch_size, runtime.batch_timeout_seconds)
                if self._pins_due:  # assigned inside that poll: before its records fold
                    self._pin_starts()
                if self._seeked:
                    messages = self._refetch(source, messages)
                if messages:
                    self._process(messages)
                self._in_hand = False
                self.outputs.poll(0)
                self._backpressure()
                self._maybe_checkpoint()
                self._tick(last_progress)
            if self._broken:
                return "failed"
            states = list(self.partitions.values())

            if source.exhausted and not self.stop.is_set():
                # A finite source has ended: every window is complete, emit them all.
                for st in states:
                    if st.windows is not None and st.windows.windows:
                        rows: list[tuple[bytes | str | None, Any]] = list(
                            st.windows.close(everything=True)
                        )
                        self.outputs.write(rows)
                        self.counters.windows_emitted += len(rows)
                        self.counters.records_out += len(rows)
                        self.metrics.windows_emitted.inc(len(rows))
                        self.metrics.records_out.inc(len(rows))
                        st.dirty = True
                reason = "exhausted"
            elif self.restart_reason is not None:
                # The checkpoints below record the partition count each state was built
                # with: the restart judges them (_refresh_logs).
                reason = "restart"
            else:
                reason = "stopped"
            # Graceful stop: finish (done: the batch above completed), checkpoint, commit,
            # leave. A consumer group's close() then revokes the partitions through
            # _on_revoke, which needs a little of the grace period.
            reserve = 2.0 if source.group_offsets else 0.0
            deadline = time.monotonic() + runtime.shutdown_grace_seconds
            self._checkpoint(
                states,
                sync=True,
                reason="shutdown" if source.group_offsets else reason,
                timeout=max(deadline - time.monotonic() - reserve, 1.0),
            )
            self._refresh_lag(force=True)
        except StuckCallError:
            # A librdkafka call still holds the transactional producer: close() would revoke
            # through _on_revoke, whose abort conflicts with that call and would replace this
            # error with its own; the worker leaves without a goodbye (workers/main.py), as
            # a crash does.
            self._broken = True
            stuck = True
            raise
        except BaseException:
            self._broken = True  # before close(): its revoke callback must not checkpoint
            raise
        finally:
            if not stuck:
                source.close()
            self.source = None
            if self._snapshots is not None:
                self._snapshots.close()
                self._snapshots = None
        return reason


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
