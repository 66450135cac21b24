"""Deciding the prepared PostgreSQL transactions of an exactly-once pipeline: the Kafka side
of the decision, shared by the engine (on assign) and ``streamherd recover`` (a pipeline
whose workers are gone).

The decision itself is :func:`streamherd.workers.twophase.resolve` (pure) run by
:meth:`PostgresTransactionalSink.recover`; what it needs from Kafka is here: the group's
committed offset metadata, read stably (:func:`committed_reader`), and the fencing of a dead
writer's transactional id before the evidence is read (:func:`writer_fence`).

A prepared transaction normally lives for one Kafka commit. One whose writer died is decided
by whoever is next assigned its partitions; with the pipeline deleted or scaled to zero
nobody is, and it would hold its partitions' offsets rows locked for good. :func:`recover_stopped`
is that decision for a stopped pipeline: it refuses while the group has members (the live
workers decide their own), acts as the owner of every partition the side table names, and
applies the same rule the workers apply (docs/storage.md, "Operations").
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streamherd.workers.config import KafkaSourceConfig, WorkerConfig, postgres_two_phase
from streamherd.workers.kafkaclients import (
    TransactionalProducer,
    client_config,
    producer_config,
    transaction_timeout_ms,
)
from streamherd.workers.logs import log_event
from streamherd.workers.sinks_postgres_offsets import (
    CommittedMetadata,
    Fence,
    PostgresTransactionalSink,
)
from streamherd.workers.twophase import TP, Resolution

log = logging.getLogger(__name__)

#: How long ``recover`` waits for the brokers to describe the consumer group.
GROUP_LOOKUP_SECONDS: float = 30.0

#: ``TopicPartition``s -> their committed offsets and metadata (a consumer's ``committed``).
CommittedLookup = Callable[[list[TopicPartition], float], list[TopicPartition]]


def committed_reader(lookup: CommittedLookup) -> CommittedMetadata:
    """The committed offset metadata of partitions as the decision reads it: a partition
    whose answer carries an error is left out (not read); None: nothing committed."""

    def committed(partitions: list[TP]) -> dict[TP, str | None]:
        asked = [TopicPartition(t, p) for t, p in partitions]
        try:
            answer = lookup(asked, 10)
        except KafkaException as error:
            log_event(log, logging.WARNING, "committed-lookup-failed", error=str(error))
            return {}
        return {
            (tp.topic, tp.partition): (tp.metadata or "") if tp.offset >= 0 else None
            for tp in answer
            if tp.error is None
        }

    return committed


def writer_fence(kafka: KafkaSourceConfig, transaction_timeout_ms: int) -> Fence:
    """Fences writers: ``init_transactions`` with each one's transactional id aborts its
    open transaction (or waits for its commit to finish) and fences that producer, so its
    transaction is decided from here on."""

    def fence(writers: list[str]) -> None:
        for writer in writers:
            conf = producer_config(kafka)
            conf["transactional.id"] = writer
            conf["transaction.timeout.ms"] = transaction_timeout_ms
            TransactionalProducer(conf).init_transactions(30)
            log_event(log, logging.WARNING, "writer-fenced", writer=writer)

    return fence


class KafkaUnreachableError(RuntimeError):
    """The brokers did not say whether the pipeline's consumer group has members."""


class EvidenceMissingError(RuntimeError):
    """What Kafka committed cannot be read here: deciding would be a guess."""


class PipelineRunningError(RuntimeError):
    """The pipeline's consumer group has members: its workers decide their own."""


def group_members(kafka: KafkaSourceConfig) -> int:
    """How many members the pipeline's consumer group has now (0: empty or unknown)."""
    admin = AdminClient(client_config(kafka))
    future = admin.describe_consumer_groups([kafka.consumer_group])[kafka.consumer_group]
    try:
        described = future.result(timeout=GROUP_LOOKUP_SECONDS)
    except (KafkaException, TimeoutError) as error:
        raise KafkaUnreachableError(
            f"consumer group {kafka.consumer_group}: no answer from {kafka.bootstrap_servers} "
            f"within {GROUP_LOOKUP_SECONDS:g} s ({type(error).__name__}: {error})"
        ) from error
    if described.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        return 0
    return len(described.members)


def recover_stopped(
    config: WorkerConfig, env: Mapping[str, str], *, wait: float | None = None
) -> Resolution:
    """Decide what a stopped exactly-once pipeline into PostgreSQL left prepared.

    Raises ValueError when the pipeline does not commit in two phases or its tables are not
    in the database (TablesMissingError: nothing is created there), PipelineRunningError
    while its group has members, KafkaUnsettledError when Kafka's answer stays
    unstable for ``wait`` seconds (default: the transaction timeout and 30 s), and
    psycopg.Error on database errors."""
    kafka = config.source.kafka
    postgres = config.sink.postgres
    if config.delivery != "exactlyOnce" or postgres is None or kafka is None:
        raise ValueError(
            "nothing to recover: only an exactly-once pipeline from Kafka into PostgreSQL "
            "prepares transactions"
        )
    if not postgres_two_phase(config):
        raise ValueError(
            "nothing to recover: this pipeline writes only to PostgreSQL, in one phase "
            "(no prepared transactions; its offsets commit with its rows)"
        )
    members = group_members(kafka)
    if members:
        raise PipelineRunningError(
            f"consumer group {kafka.consumer_group} has {members} member(s): the pipeline's "
            "workers are running and decide what they prepared; stop the pipeline first "
            "(delete it, or scale it to 0 replicas) and run this again"
        )
    timeout_ms = transaction_timeout_ms(config)
    sink = PostgresTransactionalSink(
        postgres,
        f"{config.pipeline.namespace}/{config.pipeline.name}",
        kafka.consumer_group,
        env=env,
        two_phase=True,
        # A writer id no worker has: every transaction found is another's, fenced first.
        writer=f"streamherd-recover-{uuid.uuid4().hex}",
        create=False,
    )
    conf = client_config(kafka)
    conf.update(
        {
            "group.id": kafka.consumer_group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer = Consumer(conf)
    fence_writers = writer_fence(kafka, timeout_ms)

    def fence(writers: list[str]) -> None:
        # Asked again before every fence: a worker that started meanwhile decides its own,
        # and fencing it would only disrupt it.
        running = group_members(kafka)
        if running:
            raise PipelineRunningError(
                f"consumer group {kafka.consumer_group} has {running} member(s) again: the "
                "pipeline was started during the recovery; its workers decide the rest"
            )
        fence_writers(writers)

    try:
        covered = sink.covered_partitions()
        committed = committed_reader(consumer.committed)
        topics = {t for t, _ in covered}
        listed = consumer.list_topics(timeout=GROUP_LOOKUP_SECONDS).topics if topics else {}
        present = {t for t in topics if t in listed and listed[t].error is None}
        check_evidence(covered, present, committed(covered), sink.committed(covered))
        return sink.recover(
            covered,
            committed,
            fence,
            wait=timeout_ms / 1000 + 30 if wait is None else wait,
        )
    finally:
        consumer.close()
        sink.close()


def check_evidence(
    covered: list[TP],
    present: set[str],
    kafka_side: Mapping[TP, str | None],
    database_side: Mapping[TP, tuple[int, str]],
) -> None:
    """Refuse to decide without evidence. A worker reads a partition with nothing committed
    as "Kafka never committed" (roll back), which holds for a live group on its own cluster.
    Here the brokers may be another cluster's (a port-forward, staging), or the group's
    offsets may have expired while the pipeline was stopped (``offsets.retention.minutes``,
    7 days by default): then a committed transaction would be rolled back. So the covered
    topics must exist on these brokers, and every covered partition must have a committed
    offset (a transaction of Kafka's commits its offsets with its outputs: a partition that
    shows an earlier generation proves the prepared one's never committed; one that shows
    nothing proves nothing here). ``present``: the covered topics the brokers have."""
    absent = sorted({t for t, _ in covered} - present)
    if absent:
        raise EvidenceMissingError(
            f"the brokers have no topic {', '.join(absent)}: not the pipeline's cluster "
            "(check --bootstrap-servers); nothing decided"
        )
    lost = sorted(tp for tp in covered if kafka_side.get(tp, "") is None)
    if lost:
        shown = ", ".join(f"{t}[{p}]" for t, p in lost[:5]) + (" and more" if len(lost) > 5 else "")
        if any(tp in database_side for tp in lost):
            why = (
                "the database holds committed offsets of them, so the group's offsets "
                "expired or were deleted while the pipeline was stopped"
            )
        else:
            why = (
                "either the pipeline never committed them (its transaction then aborted: "
                "roll it back) or the group's offsets expired or were deleted while it was "
                "stopped (it may have committed)"
            )
        raise EvidenceMissingError(
            f"the consumer group has no committed offset for {shown}: {why}; whether Kafka "
            "committed cannot be read, so nothing is decided (decide by hand from the "
            "pipeline's Kafka outputs: docs/storage.md, Operations)"
        )
