"""Every group's committed offsets, read from the ``__consumer_offsets`` topic by one consumer.

The operator's lag probe (``operator/lagprobe.py``) asks this reader for committed offsets
instead of sending one FindCoordinator and one OffsetFetch per group: librdkafka's
ListConsumerGroupOffsets takes one group per request, and OffsetFetch v8+ (KIP-709, many
groups per request) is not exposed by it. The group coordinators write every offset commit
to the compacted ``__consumer_offsets`` topic; one consumer with all its partitions assigned
(no group membership, nothing ever committed) sees every commit of every group, the way
Burrow does. The workers never start one: only :class:`~streamherd.operator.lagprobe.LagProbe`
does, in the operator.

The record format (Kafka's ``group-coordinator`` message schemas, checked against the 4.3.1
jar the tests run):

- key: int16 version, then for versions 0 and 1 (``LegacyOffsetCommitKey`` /
  ``OffsetCommitKey``) group (string), topic (string), partition (int32). Version 2 is the
  classic group's metadata, 3 and up are KIP-848 / share / streams group records: ignored.
- value: int16 version, then offset (int64) in every version; v1 adds an expire timestamp,
  v3 a leader epoch before the metadata; v4 is the first flexible version (compact string,
  tagged fields; tag 0 is the topic id), which Kafka 4.x writes. A null value is a
  tombstone: the offset was deleted (DeleteConsumerGroupOffsets, group deletion, expiry).

Freshness is exact, not eventual. :meth:`OffsetsTopicReader.catch_up` is given the topic's
end offsets (the last stable offset, read committed, and the high watermark) measured at the
start of a poll and consumes until it has reached them. An offset commit is acknowledged
only once it is below the high watermark, so a commit that finished before the poll is always
seen. A partition whose last stable offset is below its high watermark holds an open
transaction (transactional offset commits): a read-committed consumer cannot see past it,
so it is reported as not caught up and its groups are measured with OffsetFetch, as are
the groups of partitions not caught up within the time budget (a big cluster at start-up).
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"

# Errors after which reading the offsets topic will not work without an operator's change
# (ACLs): the probe stops trying and measures with OffsetFetch for good.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
    }
)


class RecordFormatError(ValueError):
    """An ``__consumer_offsets`` record whose bytes do not match its declared version."""


# --------------------------------------------------------------------------- the decoder


@dataclass(frozen=True)
class OffsetCommitKey:
    """Which offset a commit record is about."""

    group: str
    topic: str
    partition: int


@dataclass(frozen=True)
class OffsetCommitValue:
    """What was committed. Fields a version does not carry are None."""

    version: int
    offset: int
    leader_epoch: int | None = None
    metadata: str | None = None
    commit_timestamp: int | None = None
    expire_timestamp: int | None = None
    topic_id: bytes | None = None  # v4 tagged field 0 (16 bytes)


class _Reader:
    """A cursor over bytes with the Kafka protocol's primitive types."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RecordFormatError(f"record too short: need {n} bytes at {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise RecordFormatError("unsigned varint longer than 5 bytes")

    def string(self) -> str:
        n = self.int16()
        if n < 0:
            raise RecordFormatError("null string where a string is required")
        return self.take(n).decode("utf-8")

    def compact_string(self) -> str:
        n = self.uvarint() - 1
        if n < 0:
            raise RecordFormatError("null compact string where a string is required")
        return self.take(n).decode("utf-8")


def decode_key(data: bytes) -> OffsetCommitKey | None:
    """The offset commit a key is about; None for every other record type."""
    r = _Reader(data)
    version = r.int16()
    if version not in (0, 1):
        return None
    return OffsetCommitKey(r.string(), r.string(), r.int32())


def decode_value(data: bytes) -> OffsetCommitValue:
    """An offset commit's value (the caller handles a null value: a tombstone)."""
    r = _Reader(data)
    version = r.int16()
    offset = r.int64()  # the first field of every version, past and future
    if version in (0, 2):
        return OffsetCommitValue(version, offset, None, r.string(), r.int64())
    if version == 1:
        return OffsetCommitValue(version, offset, None, r.string(), r.int64(), r.int64())
    if version == 3:
        return OffsetCommitValue(version, offset, r.int32(), r.string(), r.int64())
    if version == 4:
        epoch, metadata, ts = r.int32(), r.compact_string(), r.int64()
        topic_id = None
        for _ in range(r.uvarint()):
            tag, size = r.uvarint(), r.uvarint()
            raw = r.take(size)
            if tag == 0:
                topic_id = raw
        return OffsetCommitValue(version, offset, epoch, metadata, ts, topic_id=topic_id)
    if version < 0:
        raise RecordFormatError(f"negative value version {version}")
    # A newer version (KIP-915 keeps the offset first): the offset is what the lag needs.
    return OffsetCommitValue(version, offset)


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (UTF-16 code units, 32-bit wrap-around), signed."""
    h = 0
    units = text.encode("utf-16-be")
    for i in range(0, len(units), 2):
        h = (31 * h + (units[i] << 8 | units[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def offsets_partition_for(group: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition of a group: Kafka's
    ``Utils.abs(groupId.hashCode()) % partitions`` (``Utils.abs(MIN_VALUE)`` is 0)."""
    h = java_string_hash(group)
    return (0 if h == -(2**31) else abs(h)) % partitions


# --------------------------------------------------------------------------- the reader


@dataclass(frozen=True)
class CatchUp:
    """The outcome of one :meth:`OffsetsTopicReader.catch_up`.

    ``current``: the offsets-topic partitions whose commits are all in memory up to the
    targets; a group living in any other partition must be measured another way.
    """

    current: frozenset[int]
    partitions: int
    records: int  # records applied during this catch-up
    unstable: tuple[int, ...] = ()  # open transaction (or no valid end offset)
    behind: tuple[int, ...] = ()  # not read up to the end before the deadline
    left: int = 0  # records the behind partitions still had to read

    @property
    def reason(self) -> str:
        """Why some partitions are not current ("" when all are)."""
        out = []
        if self.unstable:
            out.append(f"open transactions in partitions {list(self.unstable)}")
        if self.behind:
            out.append(
                f"partitions {list(self.behind)} not read up to their end in time "
                f"({self.left} records left)"
            )
        return "; ".join(out)


@dataclass
class _State:
    # group -> (topic, partition) -> committed offset
    offsets: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    # group -> the offsets-topic partition its records were read from
    home: dict[str, int] = field(default_factory=dict)
    reached: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    records: int = 0
    skipped: int = 0  # other record types, undecodable records


class OffsetsTopicReader:
    """One consumer of ``__consumer_offsets`` and the committed offsets it has read.

    Never joins a group nor commits: partitions are assigned only during a catch-up, from
    where the previous one stopped (the beginning, the first time), so the reader costs no
    Fetch request while the operator is not polling. Calls are serialised by a lock.
    """

    def __init__(
        self,
        client_config: Mapping[str, Any],
        *,
        group_id: str = "streamherd-lag-reader",
    ) -> None:
        conf: dict[str, Any] = {
            **client_config,
            # confluent-kafka insists on a group id; it is never joined nor committed to.
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # Transactional offset commits count once their transaction commits, as for
            # OffsetFetch; aborted ones never.
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            # The pre-fetch queue is bounded: the map, not the queue, is what is kept.
            "queued.max.messages.kbytes": 16384,
        }
        self._consumer: Consumer | None = Consumer(conf)
        self._lock = threading.Lock()
        self._state = _State()
        self._count = 0  # partitions of the offsets topic

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    @property
    def partitions(self) -> int:
        return self._count

    def committed(self, group: str) -> Mapping[tuple[str, int], int]:
        """A copy of the group's committed offsets as last read (exact for the groups of
        the partitions the last :meth:`catch_up` reported current)."""
        with self._lock:
            return dict(self._state.offsets.get(group, {}))

    def group_partition(self, group: str) -> int:
        """Where the group's commits live: where they were read from, else Kafka's hash."""
        home = self._state.home.get(group)
        if home is not None:
            return home
        # -1, in no partition, before the first catch-up told the partition count.
        return offsets_partition_for(group, self._count) if self._count else -1

    def stats(self) -> dict[str, int]:
        s = self._state
        return {
            "groups": len(s.offsets),
            "committed_partitions": sum(len(v) for v in s.offsets.values()),
            "records": s.records,
            "skipped": s.skipped,
        }

    def serve(self) -> None:
        """Serve the consumer's callbacks (statistics) between catch-ups; any record already
        delivered is applied, never dropped."""
        with self._lock:
            if self._consumer is not None:
                self._apply(self._consumer.consume(num_messages=5000, timeout=0))

    def catch_up(
        self, partitions: int, targets: Mapping[int, tuple[int, int]], deadline: float
    ) -> CatchUp:
        """Consume until each partition reaches its target, or the deadline passes.

        ``targets``: partition -> (last stable offset, high watermark), measured after the
        commits that must be seen were acknowledged. Raises KafkaException for an error the
        consumer reports (the caller decides whether it is permanent).
        """
        with self._lock:
            consumer = self._consumer
            if consumer is None:
                raise KafkaException(KafkaError(KafkaError._DESTROY, "reader closed"))
            self._resize(partitions)
            state = self._state
            before = state.records
            # A partition with an open transaction is not waited for (nor read): its groups
            # are measured another way until it is stable again.
            wanted = {p: lso for p, (lso, hw) in targets.items() if lso >= hw >= 0}
            unstable = sorted(set(targets) - set(wanted))
            behind = [p for p, t in wanted.items() if state.reached.get(p, 0) < t]
            if behind:
                # Assigned only while catching up, from where the last catch-up stopped:
                # no Fetch between polls, and the first Fetch leaves at once (a resume
                # after pause() waited about a second for librdkafka's next fetch cycle).
                consumer.assign(
                    [
                        TopicPartition(OFFSETS_TOPIC, p, state.reached.get(p, OFFSET_BEGINNING))
                        for p in behind
                    ]
                )
                tps = [TopicPartition(OFFSETS_TOPIC, p) for p in behind]
                try:
                    while behind and time.monotonic() < deadline:
                        wait = min(0.01, max(0.0, deadline - time.monotonic()))
                        failed = self._apply(consumer.consume(num_messages=5000, timeout=wait))
                        self._positions(consumer, tps)
                        if failed is not None:
                            raise KafkaException(failed)
                        behind = [p for p in behind if state.reached.get(p, 0) < wanted[p]]
                finally:
                    # Records fetched but not consumed are dropped here and fetched again
                    # next time, from the offset reached (which only consumed ones move).
                    consumer.unassign()
            left = sum(wanted[p] - state.reached.get(p, 0) for p in behind)
            current = frozenset(targets) - set(unstable) - set(behind)
            return CatchUp(
                current,
                partitions,
                state.records - before,
                tuple(unstable),
                tuple(sorted(behind)),
                left,
            )

    # ----------------------------------------------------------------------- internals

    def _resize(self, partitions: int) -> None:
        if partitions == self._count:
            return
        # The partition count of the offsets topic is fixed for a cluster's life; a change
        # (a new count, or the first catch-up) starts over from the beginning.
        self._state = _State()
        self._count = partitions

    def _positions(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        # The position moves past control records (transaction markers) that are never
        # handed to the application, so the target is reachable when they end a partition.
        reached = self._state.reached
        for tp in consumer.position(tps):
            if tp.offset >= 0 and tp.offset > reached.get(tp.partition, 0):
                reached[tp.partition] = tp.offset

    def _apply(self, messages: Iterable[Any]) -> KafkaError | None:
        """Apply a batch; returns the first permanent error, after applying every record
        (the consumer's position is already past them all: none may be dropped)."""
        state = self._state
        failed: KafkaError | None = None
        for msg in messages:
            err = msg.error()
            partition = msg.partition()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # The EOF carries the offset it was reached at: the end, even when the
                    # last records were removed by compaction.
                    if msg.offset() is not None and msg.offset() > state.reached.get(partition, 0):
                        state.reached[partition] = msg.offset()
                    continue
                if err.code() in PERMANENT_ERRORS:
                    failed = failed or err
                else:
                    # librdkafka retries transient errors itself; a partition that stays
                    # behind is measured with OffsetFetch this time.
                    log.debug("%s reader: %s", OFFSETS_TOPIC, err)
                continue
            state.reached[partition] = max(state.reached.get(partition, 0), msg.offset() + 1)
            raw_key = msg.key()
            try:
                key = decode_key(raw_key) if raw_key else None
                value = msg.value()
                decoded = decode_value(value) if key is not None and value is not None else None
            except (RecordFormatError, UnicodeDecodeError) as exc:
                state.skipped += 1
                log.debug("undecodable %s record at %s: %s", OFFSETS_TOPIC, msg.offset(), exc)
                continue
            if key is None:
                state.skipped += 1
                continue
            state.records += 1
            state.home[key.group] = partition
            offsets = state.offsets.get(key.group)
            if decoded is None:  # tombstone: the offset was deleted
                if offsets is not None:
                    offsets.pop((key.topic, key.partition), None)
                    if not offsets:
                        del state.offsets[key.group]
                continue
            if offsets is None:
                offsets = state.offsets[key.group] = {}
            # Topic names repeat across groups: one string object each saves memory.
            offsets[(sys.intern(key.topic), key.partition)] = decoded.offset
        return failed


__all__ = [
    "OFFSETS_TOPIC",
    "PERMANENT_ERRORS",
    "CatchUp",
    "OffsetCommitKey",
    "OffsetCommitValue",
    "OffsetsTopicReader",
    "RecordFormatError",
    "decode_key",
    "decode_value",
    "java_string_hash",
    "offsets_partition_for",
]
