"""The sources behind the engine's ``Source`` seam (``streamherd.workers.seams``): a Kafka
consumer group and the synthetic click generator.

``open_source(config, on_commit)`` is the one place that maps a ``WorkerConfig`` to a source;
the engine (``streamherd.workers.engine``) only sees the protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from streamherd.workers.config import GeneratorSourceConfig, KafkaSourceConfig, WorkerConfig
from streamherd.workers.generating import GENERATOR_TOPIC, ClickGenerator
from streamherd.workers.kafkaclients import client_config, consumer_config, unbare
from streamherd.workers.logs import log_event
from streamherd.workers.seams import LogIdentity, PartitionEvent, Source

CommitCallback = Callable[[Any, list[TopicPartition]], None]
#: How long a starting worker waits for the cluster's id (one metadata request).
CLUSTER_ID_TIMEOUT_SECONDS: Final = 10.0
#: How long an assignment waits for the assigned topics' ids and partition counts.
DESCRIBE_TIMEOUT_SECONDS: Final = 10.0

log = logging.getLogger("streamherd.worker")


class KafkaSource:
    """A consumer group member (cooperative-sticky, read_committed, manual commits):
    partition events are librdkafka's rebalance callbacks, served from inside poll()."""

    name = "kafka"
    group_offsets = True
    origin_ms: int | None = None  # a log: its offsets are where it begins

    def __init__(
        self, config: KafkaSourceConfig, topics: list[str], on_commit: CommitCallback
    ) -> None:
        self.config = config
        self.topics = topics
        self._on_commit = on_commit
        self._consumer: Consumer | None = None
        self._admin: AdminClient | None = None
        self.cluster_id: str | None = None

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "the source is not open"
        return self._consumer

    def open(self, assigned: PartitionEvent, revoked: PartitionEvent, lost: PartitionEvent) -> None:
        self._consumer = Consumer({**consumer_config(self.config), "on_commit": self._on_commit})
        self.cluster_id = self._cluster_id(self._consumer)
        self._consumer.subscribe(
            self.topics,
            on_assign=lambda _c, partitions: assigned(partitions),
            on_revoke=lambda _c, partitions: revoked(partitions),
            on_lost=lambda _c, partitions: lost(partitions),
        )

    @staticmethod
    def _cluster_id(consumer: Consumer) -> str | None:
        """Kafka's cluster id, from one metadata request before the group is joined (no
        topic named: a named one may be auto-created); None when no broker answers in
        time: checkpoints are then written without it and restored unchecked."""
        try:
            cluster_id = consumer.list_topics(timeout=CLUSTER_ID_TIMEOUT_SECONDS).cluster_id
        except KafkaException:
            return None
        return str(cluster_id) if cluster_id else None

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        consumer = self.consumer
        return unbare(lambda: consumer.consume(max_records, timeout))

    @property
    def exhausted(self) -> bool:
        return False  # a topic never ends

    def describe(self) -> Mapping[str, Any]:
        return {
            "source": "kafka",
            "topics": ",".join(self.config.topics),
            "group": self.config.consumer_group,
            "cluster": self.cluster_id,
        }

    def adopt_origin(self, origin_ms: int) -> None:
        pass  # never recorded: origin_ms is None

    def assign(self, start: list[TopicPartition]) -> None:
        self.consumer.incremental_assign(start)

    def unassign(self, partitions: list[TopicPartition]) -> None:
        self.consumer.incremental_unassign(partitions)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.consumer.pause(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.consumer.resume(partitions)

    def seek(self, partition: TopicPartition) -> None:
        self.consumer.seek(partition)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return list(self.consumer.committed(partitions, timeout=timeout))

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        if asynchronous:
            self.consumer.commit(offsets=offsets, asynchronous=True)
            return []
        return list(self.consumer.commit(offsets=offsets, asynchronous=False) or [])

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        return list(self.consumer.offsets_for_times(partitions, timeout))

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        consumer = self.consumer
        try:
            if fresh:
                low, high = consumer.get_watermark_offsets(partition, timeout=10, cached=False)
            else:
                # The cached figures come with every fetch response (log start included, so
                # a retention deletion shows up too); ask the broker only while unknown.
                low, high = consumer.get_watermark_offsets(partition, cached=True)
                if high < 0 or low < 0:
                    low, high = consumer.get_watermark_offsets(partition, timeout=2, cached=False)
        except KafkaException:
            return None
        if low < 0 or high < 0:
            return None
        return int(low), int(high)

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The consumer's positions (local: the offset after the last record handed out,
        moved past the control records that followed it)."""
        return list(self.consumer.position(partitions))

    def group_metadata(self) -> Any:
        return self.consumer.consumer_group_metadata()

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, LogIdentity]:
        if not topics:
            return {}
        if self._admin is None:
            self._admin = AdminClient(client_config(self.config))
        futures = self._admin.describe_topics(
            TopicCollection(sorted(set(topics))), request_timeout=DESCRIBE_TIMEOUT_SECONDS
        )
        found: dict[str, LogIdentity] = {}
        for topic, future in futures.items():
            try:
                described = future.result(timeout=DESCRIBE_TIMEOUT_SECONDS + 5)
            except Exception as error:  # noqa: BLE001 - any failure: that topic is not judged
                log_event(log, logging.WARNING, "describe-topic-failed", topic=topic,
                          error=str(error))  # fmt: skip
                continue
            topic_id = described.topic_id
            known = topic_id is not None and (
                topic_id.get_most_significant_bits() or topic_id.get_least_significant_bits()
            )  # a zero id is none (a broker that does not assign ids)
            found[topic] = (str(topic_id) if known else None, len(described.partitions))
        return found

    def close(self) -> None:
        # close() revokes every partition through the revoke event, whose checkpoint
        # commits through this consumer: forgotten only afterwards.
        consumer = self._consumer
        if consumer is not None:
            unbare(consumer.close)
        self._consumer = None
        self._admin = None


class GeneratorSource:
    """The synthetic click generator (``workers/generating.py``): every partition is assigned
    once, at open; each resumes from the offset the engine assigns it (its checkpoint's)."""

    name = "generator"
    group_offsets = False
    cluster_id: str | None = None

    def __init__(self, config: GeneratorSourceConfig) -> None:
        self.config = config
        self.generator: ClickGenerator | None = None
        self._paused: set[int] = set()
        self.origin_ms: int | None = config.start_time_ms
        self._adopted: int | None = None

    def open(self, assigned: PartitionEvent, revoked: PartitionEvent, lost: PartitionEvent) -> None:
        assigned([TopicPartition(GENERATOR_TOPIC, p) for p in range(self.config.partitions)])

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        generator = self.generator
        if generator is None:
            return []
        if self._paused and len(self._paused) >= self.config.partitions:
            time.sleep(min(timeout, 0.1))
            return []
        return list(generator.poll(max_records))

    @property
    def exhausted(self) -> bool:
        return self.generator is not None and self.generator.exhausted

    def describe(self) -> Mapping[str, Any]:
        return {"source": "generator"}

    def adopt_origin(self, origin_ms: int) -> None:
        self._adopted = origin_ms

    def assign(self, start: list[TopicPartition]) -> None:
        resume = {tp.partition: max(tp.offset, 0) for tp in start}
        self.generator = ClickGenerator(self.config, resume, origin_ms=self._adopted)
        self.origin_ms = self.generator.start_ms

    def unassign(self, partitions: list[TopicPartition]) -> None:
        pass  # never revoked

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._paused.difference_update(tp.partition for tp in partitions)

    def seek(self, partition: TopicPartition) -> None:
        raise NotImplementedError("the generator source cannot seek")

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return []  # no consumer group

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        return []  # no consumer group: the checkpoint is the only record of progress

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        return []  # no offsets for times

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        if self.generator is None:
            return None
        return 0, self.generator.end_offsets().get(partition.partition, 0)

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return []  # no control records: the next offset is the last record's + 1

    def group_metadata(self) -> Any:
        raise NotImplementedError("the generator source has no consumer group")

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, LogIdentity]:
        return {}  # its partitions never change

    def close(self) -> None:
        pass


def open_source(config: WorkerConfig, topics: list[str], on_commit: CommitCallback) -> Source:
    """The source a WorkerConfig names (not yet open: ``Source.open`` starts it)."""
    if config.source.generator is not None:
        return GeneratorSource(config.source.generator)
    assert config.source.kafka is not None
    return KafkaSource(config.source.kafka, topics, on_commit)
