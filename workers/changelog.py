"""The Kafka state backend: each partition's checkpoint in a compacted changelog topic.

Behind the engine's ``StateBackend`` seam (``streamherd.workers.seams``), chosen by
``WorkerConfig.checkpoint.changelog`` (``streamherd.workers.statebackends``). No volume is
needed: a worker restores a partition it is assigned by reading the changelog to its end.

Layout (docs/engine.md, decision 0060). The topic lives on the source's cluster,
``cleanup.policy=compact``; changelog partition ``p % N`` holds the checkpoints of every
consumed partition numbered ``p`` (source topics and the repartition topic alike). One
checkpoint is several records, none of which grows with the key count:

- one record per open window: key ``[topic, partition, "w", window key, window start]``,
  value the accumulator (``values.encode_value``'s exact JSON); a window that closed is a
  tombstone (null value);
- one checkpoint record: key ``[topic, partition, "c"]``, value the next offset, fingerprint,
  generation, group, committed offset and the state without its windows (watermark,
  repartition clock);
- snapshots kept before a reset or replay: the same records under
  ``[topic, partition, "s", name, ...]``.

Only what changed since the last checkpoint is written, so compaction, which keeps the
latest value per key and drops tombstones, leaves exactly the last checkpoint. An incremental
checkpoint (``Checkpoint.changes``: the engine tracks which windows changed, decision 0095)
is written as it is: one record per changed window, a tombstone per closed one, and the
checkpoint record; nothing else is encoded or compared, so its cost follows the changes. A
full checkpoint (after a reset, or the first after a snapshot restore) is compared with the
committed records, which the backend keeps (the bytes of every record it read or wrote for
the partitions it owns, updated by each checkpoint's changes), and only the differences are
written.

Atomicity: every checkpoint is written inside a Kafka transaction and read back
``read_committed``, so a reader sees all of a checkpoint's records or none, and state never
runs ahead of or behind its offset. In exactly-once mode the records join the engine's one
transaction (outputs, dead letters, offsets); in at-least-once mode the backend has its own
transactional producer (``<worker's transactional.id>.changelog``), one transaction per save,
before the engine commits the offsets (as the volume backend's fsync comes before them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamherd.workers.checkpointing import (
    Checkpoint,
    CheckpointError,
    CheckpointPostponed,
    CheckpointRefused,
    optional_int,
    optional_str,
)
from streamherd.workers.config import (
    CHANGELOG_TOPIC_CONFIG,
    CHANGELOG_TOPIC_REQUIRED,
    ChangelogConfig,
    KafkaSourceConfig,
)
from streamherd.workers.kafkaclients import (
    TRANSACTION_TIMEOUT_MS,
    FatalClientError,
    TransactionalProducer,
    client_config,
    is_fatal,
    producer_config,
    send_offsets_fenced,
    transient,
)
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.repartitioning import ensure_topic, source_partitions

log = logging.getLogger("streamherd.worker")

CHECKPOINT: Final = "c"
WINDOW: Final = "w"
SNAPSHOT: Final = "s"
#: The topic's configuration when the worker creates it (the operator creates it alike).
TOPIC_CONFIG: Final = CHANGELOG_TOPIC_CONFIG
#: Longest wait for a changelog partition to be read to its end (a transaction left open by
#: a killed worker is aborted by the broker within its timeout).
RESTORE_TIMEOUT_SECONDS: Final = 180.0

#: Longest an at-least-once checkpoint's transaction is tried again after a transient
#: failure (below) before the checkpoint is postponed to the next interval; under the
#: producer's transaction timeout, after which a retry could only fail.
RETRY_SECONDS: Final = 45.0
#: The pause before each try again.
RETRY_PAUSE_SECONDS: Final = 0.5
#: The group's answers that the member committing offsets is no longer the one it names: the
#: group has moved on (a rebalance, a member left behind). Only these refuse a checkpoint;
#: every other failure is the worker's to report.
GROUP_FENCED: Final = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)

Records = dict[bytes, bytes]
Delta = dict[bytes, bytes | None]


def refused_by_the_group(error: KafkaError) -> bool:
    """Whether a failed transaction with offsets was the group's refusal of a member it no
    longer has (not fatal: the producer itself is still good)."""
    return not error.fatal() and error.code() in GROUP_FENCED


def retrying(call: Any, deadline: float) -> None:
    """Call a transactional producer's ``call`` again while it fails with an error
    librdkafka marks retriable (a timeout: the outcome is not known yet, and the same call
    learns it), until ``deadline`` (time.monotonic())."""
    while True:
        try:
            call()
            return
        except KafkaException as error:
            if not error.args[0].retriable() or time.monotonic() > deadline:
                raise
            log_event(log, logging.WARNING, "changelog-retry", error=str(error))
            time.sleep(RETRY_PAUSE_SECONDS)  # one that fails at once must not spin


def _dumps(value: Any) -> bytes:
    """Deterministic JSON bytes; the stdlib writes what orjson cannot (an integer beyond 64
    bits outside ``values.encode_value``'s forms, a lone surrogate), marked by a leading
    space, in ASCII: a record key's bytes are its identity in the compacted topic, so they
    never change (``values.json_bytes`` measures a window key in this form)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return b" " + json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _dumps_value(value: Any) -> bytes:
    """A window's accumulator as :func:`_dumps` writes it, but the stdlib's text unescaped
    (UTF-8, a lone surrogate as its 3 bytes): escaping every non-ASCII character of the
    accumulator for one lone surrogate among them would triple the record, past what the
    limits on held strings allow for (limits.MAX_HELD_STRING_BYTES)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return b" " + text.encode("utf-8", "surrogatepass")


def _loads(data: bytes) -> Any:
    if data[:1] == b" ":
        return json.loads(data.decode("utf-8", "surrogatepass"))
    return orjson.loads(data)


def record_key(topic: str, partition: int, *rest: Any) -> bytes:
    return _dumps([topic, partition, *rest])


def owner(key: bytes) -> tuple[str, int] | None:
    """The (topic, partition) a changelog record belongs to; None for a foreign record."""
    try:
        parts = _loads(key)
    except (ValueError, TypeError):
        return None
    if type(parts) is not list or len(parts) < 3:
        return None
    topic, partition = parts[0], parts[1]
    if type(topic) is not str or type(partition) is not int:
        return None
    return topic, partition


def encode(checkpoint: Checkpoint) -> Records:
    """The records of one checkpoint (its open windows and its checkpoint record)."""
    if checkpoint.changes is not None:
        raise ValueError("an incremental checkpoint is a delta: see incremental()")
    t, p = checkpoint.topic, checkpoint.partition
    state = checkpoint.state
    records: Records = {}
    rest: dict[str, Any] | None = None
    windowed = False
    if state is not None:
        rest = {k: v for k, v in state.items() if k != "windows"}
        windows = state.get("windows")
        if windows is not None:
            windowed = True
            for key, start, acc in windows:
                records[record_key(t, p, WINDOW, key, start)] = _dumps_value(acc)
    doc: dict[str, Any] = {
        "nextOffset": checkpoint.next_offset,
        "pipeline": checkpoint.pipeline,
        "writtenAt": checkpoint.written_at or time.time(),
        "generation": checkpoint.generation,
        "fingerprint": checkpoint.fingerprint,
        "stateShape": checkpoint.state_shape,
        "group": checkpoint.group,
        "committed": checkpoint.committed,
        "restoredFrom": checkpoint.restored_from,
        "cluster": checkpoint.cluster,
        "topicId": checkpoint.topic_id,
        "partitions": checkpoint.partitions,
        "authority": checkpoint.authority,
        "state": rest,
        "windows": windowed,
    }
    if checkpoint.spec_generation is not None:
        doc["specGeneration"] = checkpoint.spec_generation
    if checkpoint.pipeline_uid is not None:
        doc["pipelineUid"] = checkpoint.pipeline_uid
    if checkpoint.epoch is not None:
        doc["epoch"] = checkpoint.epoch
    if checkpoint.origin_ms is not None:
        doc["originMs"] = checkpoint.origin_ms
    records[record_key(t, p, CHECKPOINT)] = _dumps(doc)
    return records


def decode(topic: str, partition: int, records: Mapping[bytes, bytes]) -> Checkpoint | None:
    """The checkpoint the live records of (topic, partition) hold; None without a checkpoint
    record (nothing was ever checkpointed). Raises CheckpointError on unreadable records."""
    head = records.get(record_key(topic, partition, CHECKPOINT))
    if head is None:
        return None
    try:
        doc = _loads(head)
        state = doc.get("state")
        if doc.get("windows"):
            windows = []
            for key, value in records.items():
                parts = _loads(key)
                if len(parts) == 5 and parts[2] == WINDOW:
                    windows.append([parts[3], parts[4], _loads(value)])
            state = {**(state or {}), "windows": windows}
        return Checkpoint(
            topic=topic,
            partition=partition,
            next_offset=int(doc["nextOffset"]),
            state=state,
            pipeline=doc.get("pipeline", ""),
            written_at=float(doc.get("writtenAt", 0.0)),
            generation=str(doc.get("generation") or ""),
            fingerprint=doc.get("fingerprint"),
            state_shape=doc.get("stateShape"),
            group=doc.get("group"),
            committed=doc.get("committed"),
            restored_from=doc.get("restoredFrom"),
            cluster=doc.get("cluster"),
            topic_id=doc.get("topicId"),
            partitions=doc.get("partitions"),
            authority=doc.get("authority"),
            spec_generation=optional_int(doc.get("specGeneration")),
            pipeline_uid=optional_str(doc.get("pipelineUid")),
            epoch=optional_int(doc.get("epoch")),
            origin_ms=optional_int(doc.get("originMs")),
        )
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"unreadable changelog of {topic}[{partition}]: {error}") from None


def live(records: Mapping[bytes, bytes]) -> Records:
    """The records of the checkpoint itself (no snapshots)."""
    return {k: v for k, v in records.items() if _loads(k)[2] != SNAPSHOT}


def incremental(checkpoint: Checkpoint) -> Delta:
    """The records of an incremental checkpoint (``changes``): each changed window's, a
    tombstone for each closed one, and the checkpoint record."""
    assert checkpoint.changes is not None
    t, p = checkpoint.topic, checkpoint.partition
    out: Delta = {
        record_key(t, p, WINDOW, key, start): None if acc is None else _dumps_value(acc)
        for key, start, acc in checkpoint.changes
    }
    head = encode(
        replace(checkpoint, state={**(checkpoint.state or {}), "windows": []}, changes=None)
    )
    out.update(head)
    return out


def delta(before: Mapping[bytes, bytes], checkpoint: Checkpoint) -> Delta:
    """What to write so that the live records become ``checkpoint``'s: the changed and new
    records, and a tombstone for each record it no longer has (a closed window). The
    checkpoint record is always written (its time and offset move). An incremental
    checkpoint ignores ``before``: its changes are the delta."""
    if checkpoint.changes is not None:
        return incremental(checkpoint)
    now = encode(checkpoint)
    out: Delta = {k: v for k, v in now.items() if before.get(k) != v}
    # Snapshot records stay: told apart by their kind right after (topic, partition).
    snapshots = record_key(checkpoint.topic, checkpoint.partition)[:-1] + b',"s"'
    out.update({k: None for k in before if k not in now and not k.startswith(snapshots)})
    return out


def apply(records: Records, changes: Iterable[tuple[bytes, bytes | None]]) -> None:
    """Fold changelog records in order: the latest value per key, a tombstone deletes."""
    for key, value in changes:
        if value is None:
            records.pop(key, None)
        else:
            records[key] = value


def snapshot_records(name: str, records: Mapping[bytes, bytes]) -> Records:
    """The live records of one partition, copied under snapshot ``name``'s keys."""
    out: Records = {}
    for key, value in live(records).items():
        parts = _loads(key)
        out[record_key(parts[0], parts[1], SNAPSHOT, name, *parts[2:])] = value
    return out


def snapshot_of(name: str, topic: str, partition: int, records: Mapping[bytes, bytes]) -> Records:
    """The live records snapshot ``name`` holds for (topic, partition), under their own keys."""
    out: Records = {}
    for key, value in records.items():
        parts = _loads(key)
        if len(parts) > 4 and parts[2] == SNAPSHOT and parts[3] == name:
            out[record_key(topic, partition, *parts[4:])] = value
    return out


@dataclass
class RestoreStats:
    """What one read of a changelog partition took."""

    records: int = 0
    seconds: float = 0.0


class ChangelogBackend:
    """Checkpoints as records of a compacted Kafka topic (see the module docstring)."""

    name = "changelog"

    def __init__(
        self,
        source: KafkaSourceConfig,
        changelog: ChangelogConfig,
        *,
        transactional_id: str,
        transaction: TransactionalProducer | None = None,
        metrics: EngineMetrics | None = None,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        # Called for each batch of records a restore reads: the engine's heartbeat.
        self._progress = progress
        self.topic = changelog.topic
        self._wanted_partitions = changelog.partitions
        self._transactional_id = transactional_id
        self._transaction = transaction  # exactly-once: the engine's producer
        self._metrics = metrics
        self._producer: TransactionalProducer | None = None  # at-least-once: the changelog's own
        self._reader: Consumer | None = None
        self._probe: Consumer | None = None
        self._partitions = 0
        # The committed records of every partition this worker owns, as read or written: a
        # full checkpoint is compared with them without reading the topic again (a read
        # waits for every open transaction on the changelog partition to be decided).
        self._committed: dict[tuple[str, int], Records] = {}
        # Exactly-once: what the open transaction writes, applied when it commits.
        self._staged: dict[tuple[str, int], Delta] = {}
        # Exactly-once: the log end of each changelog partition before this worker's open
        # transaction first wrote to it (a snapshot kept on assign): a restore reads up to
        # there, never waiting for its own undecided transaction.
        self._floors: dict[int, int] = {}
        self.last_restore = RestoreStats()

    # ------------------------------------------------------------------ set-up

    def open(self) -> None:
        """Create the topic if missing, the producer and the readers (at the first use)."""
        self._open()

    def _open(self) -> None:
        if self._partitions:
            return
        admin = AdminClient(client_config(self.source))
        wanted = self._wanted_partitions
        if wanted is None:
            upstreams = source_partitions(admin, self.source.topics)
            wanted = max(
                (sum(1 for t, _ in upstreams if t == name) for name in {t for t, _ in upstreams}),
                default=1,
            )
        self._partitions = ensure_topic(
            admin, self.topic, wanted, 0, config=TOPIC_CONFIG,
            required=CHANGELOG_TOPIC_REQUIRED, what="changelog",
        )  # fmt: skip
        if self._transaction is None:
            conf = producer_config(self.source)
            conf["transactional.id"] = self._transactional_id
            conf["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
            self._producer = TransactionalProducer(conf)
            # Fences our predecessor (same id) and aborts its open transaction, so its
            # half-written checkpoint never blocks or reaches a reader.
            self._producer.init_transactions(30)
        conf = client_config(self.source)
        conf.update(
            {
                "group.id": f"{self._transactional_id}.restore",  # never joined or committed
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 52_428_800,
                "max.partition.fetch.bytes": 16_777_216,
            }
        )
        self._reader = Consumer(conf)
        # The log end including open transactions (a read_committed consumer's is the last
        # stable offset): see _read_partition.
        self._probe = Consumer({**conf, "isolation.level": "read_uncommitted"})

    def changelog_partition(self, partition: int) -> int:
        self._open()
        return partition % self._partitions

    # ------------------------------------------------------------------ reading

    def _read(self, wanted: set[tuple[str, int]]) -> None:
        """Read the changelog partitions of ``wanted`` to their end (read_committed: only
        committed checkpoints) and keep each wanted partition's live records."""
        self._open()
        reader = self._reader
        assert reader is not None
        by_changelog: dict[int, set[tuple[str, int]]] = {}
        for t, p in wanted:
            by_changelog.setdefault(p % self._partitions, set()).add((t, p))
        started = time.perf_counter()
        total = 0
        for cp, owners in sorted(by_changelog.items()):
            found: dict[tuple[str, int], Records] = {o: {} for o in owners}
            total += self._read_partition(reader, cp, found)
            self._committed.update(found)
        seconds = time.perf_counter() - started
        self.last_restore = RestoreStats(total, seconds)
        log_event(log, logging.INFO, "changelog-restored", topic=self.topic,
                  partitions=len(wanted), records=total,
                  seconds=round(seconds, 3))  # fmt: skip

    def _read_partition(
        self, reader: Consumer, cp: int, found: dict[tuple[str, int], Records]
    ) -> int:
        tp = TopicPartition(self.topic, cp)
        # The log end as written, open transactions included: reading stops only once every
        # transaction before it is decided, so a checkpoint committed after a transaction
        # some dead worker left open is never missed.
        low, end = self._log_end(cp)
        if cp in self._floors:
            end = min(end, self._floors[cp])
        if end <= low:
            return 0
        reader.assign([TopicPartition(self.topic, cp, OFFSET_BEGINNING)])
        deadline = time.monotonic() + RESTORE_TIMEOUT_SECONDS
        count = 0
        # A record's key starts with its (topic, partition) as JSON: matched by prefix (a
        # changelog partition holds few owners), no JSON parsing per record.
        prefixes = [(record_key(t, p)[:-1] + b",", records) for (t, p), records in found.items()]
        try:
            while True:
                # consume() waits for the whole count or the timeout: a count a fetch fills
                # quickly, a short timeout for the last batch.
                batch = reader.consume(10_000, 0.1)
                reached = False
                for m in batch:
                    error = m.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            reached = (m.offset() or 0) >= end
                            continue
                        if error.fatal():
                            raise KafkaException(error)
                        log_event(log, logging.WARNING, "changelog-read-error",
                                  topic=self.topic, partition=cp, error=str(error))  # fmt: skip
                        continue
                    key = m.key()
                    if key is None:
                        continue
                    records = None
                    for prefix, candidate in prefixes:
                        if key.startswith(prefix):
                            records = candidate
                            break
                    if records is None:
                        continue
                    count += 1
                    value = m.value()
                    if value is None:
                        records.pop(key, None)
                    else:
                        records[key] = value
                if batch and self._progress is not None:
                    self._progress()  # records came: the restore goes on
                if not reached:
                    position = reader.position([tp])[0].offset
                    reached = position >= end
                if reached:
                    return count
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"changelog {self.topic}[{cp}] not read to its end ({end}) within "
                        f"{RESTORE_TIMEOUT_SECONDS:.0f}s: a transaction stays undecided"
                    )
        finally:
            reader.unassign()

    def _log_end(self, cp: int) -> tuple[int, int]:
        """(log start, log end) of a changelog partition; retried while the broker answers
        with a passing error (a topic just created: its leaders not yet known everywhere)."""
        assert self._probe is not None
        deadline = time.monotonic() + 60.0
        while True:
            try:
                low, high = self._probe.get_watermark_offsets(
                    TopicPartition(self.topic, cp), timeout=10, cached=False
                )
                return int(low), int(high)
            except KafkaException as error:
                if is_fatal(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def prepare(self, partitions: list[tuple[str, int]]) -> None:
        missing = {tp for tp in partitions if tp not in self._committed}
        if missing:
            self._read(missing)

    def _records(self, topic: str, partition: int) -> Records:
        if (topic, partition) not in self._committed:
            self._read({(topic, partition)})
        return self._committed[(topic, partition)]

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        return decode(topic, partition, self._records(topic, partition))

    def pending_checkpoints(self, topic: str, partition: int) -> list[Checkpoint]:
        return []  # a staged checkpoint committed with its transaction, or never

    def load_snapshot(self, name: str, topic: str, partition: int) -> Checkpoint | None:
        records = snapshot_of(name, topic, partition, self._records(topic, partition))
        return decode(topic, partition, records)

    def kept_snapshots(self) -> list[str] | None:
        return None  # each partition's records name only its own

    # ------------------------------------------------------------------ writing

    def _apply(self, tp: tuple[str, int], changes: Delta) -> None:
        """Committed: into the records at hand (if any: else they are read when needed)."""
        records = self._committed.get(tp)
        if records is not None:
            apply(records, changes.items())

    def _produce(self, producer: Producer, partition: int, changes: Delta) -> None:
        for key, value in changes.items():
            while True:
                try:
                    producer.produce(self.topic, key=key, value=value, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.05)

    def _write_alone(
        self,
        deltas: dict[tuple[str, int], Delta],
        offsets: list[TopicPartition] | None = None,
        group: Any = None,
    ) -> None:
        """At-least-once: one transaction of the changelog's own producer, committed (durable
        and visible to read_committed readers) when this returns. With ``offsets`` and the
        consumer ``group``'s metadata, the offsets commit in the same transaction, fenced by
        the group's generation (KIP-447): from a worker the group has left behind, nothing
        commits (CheckpointRefused), and its stale state never reaches the changelog."""
        producer = self._producer
        assert producer is not None
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                producer.begin_transaction()
                for (_, p), changes in deltas.items():
                    self._produce(producer, self.changelog_partition(p), changes)
                if offsets and group is not None:
                    send = partial(send_offsets_fenced, producer, offsets, group, 30)
                    retrying(send, deadline)
                retrying(partial(producer.commit_transaction, 30), deadline)
                break
            except KafkaException as exception:
                error = exception.args[0]
                if not is_fatal(exception):
                    # Else the next init (a restart) aborts it. An abort that fails (a commit
                    # still in progress) makes the next begin fail: the worker fails then.
                    with contextlib.suppress(KafkaException):
                        producer.abort_transaction(30)
                if offsets and group is not None and refused_by_the_group(error):
                    raise CheckpointRefused(f"changelog {self.topic}: {error}") from exception
                if not transient(error):
                    raise  # an authorization, a record too large, a fatal error: fail
                if time.monotonic() > deadline:
                    raise CheckpointPostponed(f"changelog {self.topic}: {error}") from exception
                log_event(log, logging.WARNING, "changelog-retry", error=str(error))
                time.sleep(RETRY_PAUSE_SECONDS)
        for tp, changes in deltas.items():
            self._apply(tp, changes)

    def _deltas(self, checkpoints: list[Checkpoint]) -> dict[tuple[str, int], Delta]:
        out: dict[tuple[str, int], Delta] = {}
        for c in checkpoints:
            tp = (c.topic, c.partition)
            if c.changes is not None:
                out[tp] = incremental(c)
            else:
                out[tp] = delta(self._records(c.topic, c.partition), c)
        return out

    def save(self, checkpoints: list[Checkpoint], *, group: Any = None) -> None:
        if checkpoints:
            offsets = [TopicPartition(c.topic, c.partition, c.next_offset) for c in checkpoints]
            self._write_alone(self._deltas(checkpoints), offsets, group)

    def stage(self, checkpoints: list[Checkpoint]) -> None:
        producer = self._transaction
        assert producer is not None, "stage() is the exactly-once mode's"
        for tp, changes in self._deltas(checkpoints).items():
            self._produce(producer, self.changelog_partition(tp[1]), changes)
            staged = self._staged.setdefault(tp, {})
            staged.update(changes)

    def promote(self, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        self._floors.clear()  # the transaction is decided
        for tp in partitions:
            changes = self._staged.pop(tp, None)
            if changes is not None:
                self._apply(tp, changes)
        return []  # committed with the transaction: no other writer can take them

    def adopt(self, topic: str, partition: int, pending: Checkpoint) -> None:
        raise CheckpointError("the changelog leaves no pending checkpoint to adopt")

    def discard_pending(self, topic: str, partition: int) -> None:
        self._staged.pop((topic, partition), None)

    def abort(self) -> None:
        self._staged.clear()
        self._floors.clear()

    def release(self, topic: str, partition: int) -> None:
        self._committed.pop((topic, partition), None)
        self._staged.pop((topic, partition), None)

    def keep(self, name: str, topic: str, partition: int) -> str | None:
        records = self._records(topic, partition)
        if decode(topic, partition, records) is None:
            return None
        copies: Delta = dict(snapshot_records(name, records))
        try:
            if self._transaction is not None:
                # Exactly-once: with the open transaction, which also carries the discard.
                cp = self.changelog_partition(partition)
                if cp not in self._floors:
                    self._floors[cp] = self._log_end(cp)[1]
                self._produce(self._transaction, cp, copies)
                self._staged.setdefault((topic, partition), {}).update(copies)
            else:
                self._write_alone({(topic, partition): copies})
        except (KafkaException, CheckpointPostponed) as error:
            if isinstance(error, KafkaException) and is_fatal(error):
                # A producer that can never write again: replaced (decision 0194).
                raise FatalClientError(f"changelog {self.topic}: {error}") from error
            raise OSError(f"changelog {self.topic}: {error}") from error
        return f"changelog {self.topic}[{self.changelog_partition(partition)}] snapshot {name}"

    def close(self) -> None:
        for consumer in (self._reader, self._probe):
            if consumer is not None:
                consumer.close()
        self._reader = self._probe = None
        if self._producer is not None:
            self._producer.flush(10)
