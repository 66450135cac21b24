"""The Kafka side of a shadow verification (operator/verifying.py): offsets, topics, reads.

A shadow run needs a few things from the pipeline's source cluster that the rest of the
operator does not: the running consumer group's committed offsets, the input's end offsets,
an internal output topic per shadow (created before the shadows start, deleted after), the
shadows' own groups seeded with the running group's offsets, and a full read of each
shadow's output topic. :class:`ShadowKafka` is that surface (a Protocol, so the reconciler's
unit tests use a fake); :class:`KafkaShadowClient` implements it with confluent-kafka, per
reconcile that needs it: the topics and groups through operator/kafkaadmin.py's
:class:`~streamherd.operator.kafkaadmin.KafkaAdmin` (the operator's one admin path, as for
the repartition and changelog topics), the offsets and reads with short-lived consumers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamherd.operator.kafkaadmin import KafkaAdmin, KafkaAdminError, TopicRequest
from streamherd.operator.lagprobe import ClusterConfig

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]
#: librdkafka's "no committed offset".
NO_OFFSET: Final = -1001
TIMEOUT: Final = 15.0


class ShadowKafkaError(Exception):
    """A Kafka call of a shadow verification failed (the reconcile retries later)."""


class ShadowKafka(Protocol):
    """What a shadow verification asks of the source cluster."""

    def committed(self, group: str, topics: Sequence[str]) -> Offsets:
        """The group's committed offset of every partition of `topics` (NO_OFFSET: none)."""
        ...

    def end_offsets(self, topics: Sequence[str]) -> Offsets:
        """The log-end offset of every partition of `topics`."""
        ...

    def commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit `offsets` for `group` (a new group: nobody consumes in it yet)."""
        ...

    def create_topic(self, name: str, partitions: int) -> None:
        """Create `name` unless it exists."""
        ...

    def read_all(self, topic: str) -> list[bytes | None]:
        """Every value of `topic` from its start to its current end, read_committed."""
        ...

    def delete_topics(self, names: Iterable[str]) -> list[str]:
        """Delete the topics that exist; returns those that could not be deleted yet (not
        those the broker refuses to delete for good: kept, with a warning; a run whose
        topics a broker never deletes is not retried every few seconds for ever)."""
        ...

    def delete_groups(self, groups: Iterable[str]) -> list[str]:
        """Delete the groups; returns those still there (members have not left yet)."""
        ...

    def kept_topics(self) -> Mapping[str, str]:
        """The topics :meth:`delete_topics` found the broker refuses to delete for good,
        with the broker's answer: kept (the deletion says which, and why)."""
        ...


class KafkaShadowClient:
    """:class:`ShadowKafka` over confluent-kafka; `close()` when done."""

    def __init__(self, cluster: ClusterConfig) -> None:
        self._config = cluster.client_config()
        self._kept: dict[str, str] = {}  # kept_topics
        try:
            self._admin = KafkaAdmin.connect(cluster, TIMEOUT)
        except KafkaAdminError as e:
            raise ShadowKafkaError(str(e)) from e

    def close(self) -> None:
        self._admin.close()

    def _consumer(self, group: str | None = None) -> Any:
        return Consumer(
            {
                **self._config,
                "group.id": group or f"streamherd-operator-reader-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )

    def _partitions(self, consumer: Any, topics: Sequence[str]) -> list[TopicPartition]:
        out = []
        for topic in topics:
            md = consumer.list_topics(topic, timeout=TIMEOUT).topics.get(topic)
            if md is None or md.error is not None:
                raise ShadowKafkaError(f"topic {topic}: {md.error if md else 'not found'}")
            out += [TopicPartition(topic, p) for p in sorted(md.partitions)]
        return out

    def committed(self, group: str, topics: Sequence[str]) -> Offsets:
        consumer = self._consumer(group)
        try:
            tps = self._partitions(consumer, topics)
            return {(tp.topic, tp.partition): tp.offset
                    for tp in consumer.committed(tps, timeout=TIMEOUT)}  # fmt: skip
        except KafkaException as e:
            raise ShadowKafkaError(f"committed offsets of {group}: {e}") from e
        finally:
            consumer.close()

    def end_offsets(self, topics: Sequence[str]) -> Offsets:
        consumer = self._consumer()
        try:
            out: Offsets = {}
            for tp in self._partitions(consumer, topics):
                _low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT)
                out[(tp.topic, tp.partition)] = high
            return out
        except KafkaException as e:
            raise ShadowKafkaError(f"end offsets of {list(topics)}: {e}") from e
        finally:
            consumer.close()

    def commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        consumer = self._consumer(group)
        try:
            tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
            if tps:
                consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:
            raise ShadowKafkaError(f"committing the start offsets of {group}: {e}") from e
        finally:
            consumer.close()

    def create_topic(self, name: str, partitions: int) -> None:
        try:
            self._admin.create_topics([TopicRequest(name, partitions)])
        except KafkaAdminError as e:
            raise ShadowKafkaError(f"creating topic {name}: {e}") from e

    def read_all(self, topic: str) -> list[bytes | None]:
        consumer = self._consumer()
        try:
            tps = self._partitions(consumer, [topic])
            ends = {}
            for tp in tps:
                low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT)
                if high > low:
                    ends[tp.partition] = high
            if not ends:
                return []
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            values: list[bytes | None] = []
            left = set(ends)
            while left:
                msg = consumer.poll(TIMEOUT)
                if msg is None:
                    raise ShadowKafkaError(f"reading {topic}: no record within {TIMEOUT}s")
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        left.discard(msg.partition())
                        continue
                    raise ShadowKafkaError(f"reading {topic}: {msg.error()}")
                values.append(msg.value())
                if (msg.offset() or 0) + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
            return values
        except KafkaException as e:
            raise ShadowKafkaError(f"reading {topic}: {e}") from e
        finally:
            consumer.close()

    def delete_topics(self, names: Iterable[str]) -> list[str]:
        wanted = list(names)
        refused: frozenset[str] = frozenset()
        try:
            deleted = self._admin.delete_topics(wanted)
            failed, refused = deleted.failed, deleted.refused
        except KafkaAdminError as e:
            failed = dict.fromkeys(wanted, str(e))
        for name, why in sorted(failed.items()):
            if name in refused:  # kept, said: trying again every few seconds changes nothing
                self._kept[name] = why
                log.warning("shadow topic %s is kept: the broker refuses to delete it: %s",
                            name, why)  # fmt: skip
            else:
                log.warning("could not delete shadow topic %s: %s", name, why)
        return sorted(set(failed) - refused)

    def kept_topics(self) -> Mapping[str, str]:
        return dict(self._kept)

    def delete_groups(self, groups: Iterable[str]) -> list[str]:
        wanted = list(groups)
        try:
            left = self._admin.delete_groups(wanted)
        except KafkaAdminError as e:
            left = dict.fromkeys(wanted, str(e))
        for group, why in sorted(left.items()):
            # Still has members (the shadow pods are going away): tried again later.
            log.info("shadow consumer group %s not deleted yet: %s", group, why)
        return sorted(left)
