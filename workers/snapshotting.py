"""Snapshots on request: a consistent copy of each partition's state and offset, kept in Kafka.

A StreamPipelineSnapshot (``streamherd.operator.snapshots``) is taken by the pipeline's own
workers and stored in a Kafka topic of its own on the source's cluster, named
``streamherd-snapshot_<namespace>_<pipeline>_<snapshot>`` (``_`` cannot occur in a
Kubernetes name, so the three names split back unambiguously). The operator creates the
topic: its existence is the request. Each worker looks for such topics of its pipeline (one
metadata request every ``POLL_SECONDS``), and at its next checkpoint boundary writes, for
every partition it owns that the topic does not hold yet, the checkpoint it has just made
durable. The operator reads the topic back and lists the snapshot once every partition of
the source is in it (docs/lifecycle.md, decision 0070).

The records are backend-neutral: each holds one partition's *checkpoint document* (the
``streamherd.workers.checkpointing`` envelope, CRC included: topic, partition, next offset,
state, fingerprint and its description), not a file of one backend. Whatever backend made the
checkpoint (the volume's files, or a Kafka changelog) hands a ``Checkpoint`` to
:class:`SnapshotTaker`; a restore reads ``Checkpoint`` objects back with :func:`read_snapshot`.
A document larger than ``CHUNK_BYTES`` is split over several records (the broker's default
``message.max.bytes`` is 1 MB); the headers say which write and which piece a record is, and
the reader keeps, per partition, the last write whose pieces are all there.

Used by the engine (``streamherd.workers.engine``: the taker, and restore with
``state.restoreFrom``) and by the operator (topic names, :func:`read_snapshot`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from streamherd.workers.checkpointing import Checkpoint, CheckpointError, decode, encode
from streamherd.workers.logs import log_event

log = logging.getLogger("streamherd.worker.snapshots")

TOPIC_PREFIX: Final = "streamherd-snapshot_"
#: Largest piece of a checkpoint document in one record (the broker's default limit is 1 MB).
CHUNK_BYTES: Final = 512 * 1024
#: Least time between two looks for new snapshot topics (one metadata request each).
POLL_SECONDS: Final = 5.0
PART_HEADER: Final = "streamherd.part"  # "<index>/<count>"
WRITE_HEADER: Final = "streamherd.write"  # one id per write of one partition
#: A volume snapshot's name (kept before a reset or replay); any other name is a resource.

Key = tuple[str, int]


def snapshot_topic(namespace: str, pipeline: str, name: str) -> str:
    """The topic that holds snapshot `name` of `pipeline` in `namespace`."""
    return f"{TOPIC_PREFIX}{namespace}_{pipeline}_{name}"


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """(namespace, pipeline, snapshot) of a snapshot topic; None for any other topic."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    parts = topic[len(TOPIC_PREFIX) :].split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


# --------------------------------------------------------------------------- records


Record = tuple[bytes, bytes, dict[str, str | bytes | None]]


def records(checkpoint: Checkpoint, write: str | None = None) -> list[Record]:
    """(key, value, headers) of the records that hold one partition's checkpoint."""
    data = encode(checkpoint)
    write = write or uuid.uuid4().hex
    key = f"{checkpoint.topic}/{checkpoint.partition}".encode()
    pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    out: list[Record] = []
    for i, piece in enumerate(pieces):
        headers: dict[str, str | bytes | None] = {
            PART_HEADER: f"{i}/{len(pieces)}".encode(),
            WRITE_HEADER: write.encode(),
        }
        out.append((key, piece, headers))
    return out


@dataclass
class _Write:
    count: int
    pieces: dict[int, bytes] = field(default_factory=dict)


@dataclass
class SnapshotContents:
    """What a snapshot topic holds: per partition, its checkpoint and its encoded size."""

    checkpoints: dict[Key, Checkpoint] = field(default_factory=dict)
    sizes: dict[Key, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(self.sizes.values())


def assemble(
    messages: Iterable[tuple[bytes | None, bytes | None, Mapping[str, bytes]]],
) -> SnapshotContents:
    """Rebuild each partition's last complete write from records in topic order. A record
    that is not ours, or a write that fails its checksum, is named in ``problems`` and
    skipped (an earlier complete write of that partition stands)."""
    writes: dict[tuple[bytes, bytes], _Write] = {}
    contents = SnapshotContents()
    for key, value, headers in messages:
        try:
            index, count = (int(x) for x in headers[PART_HEADER].decode().split("/"))
            write_id = headers[WRITE_HEADER]
        except (KeyError, ValueError, UnicodeDecodeError):
            contents.problems.append(f"a record without snapshot headers (key {key!r})")
            continue
        if key is None or value is None or not 0 <= index < count:
            contents.problems.append(f"a malformed snapshot record (key {key!r})")
            continue
        write = writes.setdefault((key, write_id), _Write(count))
        write.pieces[index] = value
        if len(write.pieces) < write.count:
            continue
        data = b"".join(write.pieces[i] for i in range(write.count))
        del writes[(key, write_id)]
        try:
            checkpoint = decode(data)
        except CheckpointError as error:
            contents.problems.append(f"{key.decode(errors='replace')}: {error}")
            continue
        if f"{checkpoint.topic}/{checkpoint.partition}".encode() != key:
            contents.problems.append(f"{key.decode(errors='replace')}: holds another partition")
            continue
        where = (checkpoint.topic, checkpoint.partition)
        contents.checkpoints[where] = checkpoint
        contents.sizes[where] = len(data)
    return contents


#: Errors of a topic made a moment ago, whose partitions have no leader yet (the client
#: does not mark them retriable when it raises them itself).
_NOT_SERVED_YET: Final = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
    }
)


def read_snapshot(
    client_config: Mapping[str, Any], topic: str, timeout: float = 10.0
) -> SnapshotContents | None:
    """Read a snapshot topic from its start to its end (None: the topic does not exist, or
    was made a moment ago and its partitions have no leader yet)."""
    consumer = Consumer(
        {
            **client_config,
            # Assigned, never subscribed, never committed: the group id is only a name.
            "group.id": "streamherd-snapshot-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return None
        ends: dict[int, int] = {}
        for partition in meta.partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout, cached=False
                )
            except KafkaException as failure:
                # NOT_LEADER_FOR_PARTITION and the like: a topic made a moment ago whose
                # leader is not elected yet (raised, it failed the snapshot's reconcile
                # and a CI run; the caller asks again).
                cause = failure.args[0] if failure.args else None
                if isinstance(cause, KafkaError) and (
                    cause.code() in _NOT_SERVED_YET or cause.retriable()
                ):
                    return None
                raise
            if high > low:
                ends[partition] = high
        if not ends:
            return assemble([])
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        got: list[tuple[bytes | None, bytes | None, Mapping[str, bytes]]] = []
        deadline = time.monotonic() + timeout
        done: set[int] = set()
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise KafkaException(f"timed out reading snapshot topic {topic}")
            for message in consumer.consume(1000, 0.5):
                partition, error = message.partition() or 0, message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        done.add(partition)
                        continue
                    raise KafkaException(error)
                raw = message.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {k: v for k, v in pairs if isinstance(v, bytes)}
                got.append((message.key(), message.value(), headers))
                if (message.offset() or 0) + 1 >= ends[partition]:
                    done.add(partition)
        return assemble(got)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- taking


class SnapshotTaker:
    """The worker's side of snapshots on request (used by the engine at checkpoints).

    ``wanted(owned)`` (called at each checkpoint) looks for new snapshot topics of this
    pipeline every ``POLL_SECONDS`` and returns the owned partitions that one of them still
    needs; the engine writes their checkpoints at this boundary and hands them to
    ``taken(checkpoints)``, which writes them to every topic that needs them, durably (the
    producer is flushed) before the next batch is read."""

    def __init__(
        self,
        namespace: str,
        pipeline: str,
        client_config: Mapping[str, Any],
        list_topics: Callable[[], Iterable[str]],
        *,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.prefix = snapshot_topic(namespace, pipeline, "")
        self.client_config = dict(client_config)
        self._list_topics = list_topics
        self.poll_seconds = poll_seconds
        self._last_poll = float("-inf")
        # Topic -> the partitions it holds (read once when found, then what we wrote).
        self._held: dict[str, set[Key]] = {}
        self._producer: Producer | None = None

    def _poll(self) -> None:
        now = time.monotonic()
        if now - self._last_poll < self.poll_seconds:
            return
        self._last_poll = now
        try:
            topics = [t for t in self._list_topics() if t.startswith(self.prefix)]
        except KafkaException as error:
            log_event(log, logging.WARNING, "snapshot-lookup-failed", error=str(error))
            return
        for topic in topics:
            if topic in self._held or parse_topic(topic) is None:
                continue
            try:
                contents = read_snapshot(self.client_config, topic, timeout=5.0)
            except KafkaException as error:
                log_event(
                    log, logging.WARNING, "snapshot-read-failed", topic=topic, error=str(error)
                )
                continue
            if contents is None:
                continue
            self._held[topic] = set(contents.checkpoints)
            log_event(log, logging.INFO, "snapshot-requested", topic=topic,
                      partitions_held=len(contents.checkpoints))  # fmt: skip

    def wanted(self, owned: Iterable[Key]) -> set[Key]:
        """The owned partitions some requested snapshot does not hold yet."""
        self._poll()
        if not self._held:
            return set()
        owned = set(owned)
        return {key for held in self._held.values() for key in owned - held}

    def taken(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Write these checkpoints (just made durable) to every snapshot that lacks them.
        Raises KafkaException when the records could not all be delivered: the engine then
        tries again at its next checkpoint."""
        todo = [
            (topic, cp)
            for cp in checkpoints
            for topic, held in self._held.items()
            if (cp.topic, cp.partition) not in held
        ]
        if not todo:
            return
        if self._producer is None:
            self._producer = Producer(
                {**self.client_config, "enable.idempotence": True, "acks": "all"}
            )
        producer = self._producer
        failed: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        for topic, cp in todo:
            for key, value, headers in records(cp):
                producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=delivered
                )
                producer.poll(0)
        left = producer.flush(30)
        if left or failed:
            raise KafkaException(f"snapshot records not delivered: {failed[:3] or left}")
        for topic, cp in todo:
            self._held[topic].add((cp.topic, cp.partition))
            log_event(log, logging.INFO, "snapshot-partition-written", topic=topic,
                      partition=f"{cp.topic}[{cp.partition}]", next_offset=cp.next_offset,
                      fingerprint=cp.fingerprint)  # fmt: skip

    def forget(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self._held.pop(topic, None)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None


def find_snapshot_topic(topics: Iterable[str], namespace: str, name: str) -> str | None:
    """The topic of snapshot `name` in `namespace`, whichever pipeline it was taken from."""
    for topic in topics:
        parsed = parse_topic(topic)
        if parsed is not None and parsed[0] == namespace and parsed[2] == name:
            return topic
    return None
