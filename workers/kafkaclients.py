"""librdkafka client settings built from WorkerConfig endpoints (security included).

Used by the engine for its consumer, its sink/dead-letter producer, and by tests. Secret
material is read here, at start-up, from the environment variables and files the
WorkerConfig names; the returned dicts must never be logged (they hold the SASL password).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, not in its stubs
    AdminClient,
    ConfigResource,
    ResourceType,
)

from streamherd.workers.config import (
    MAX_TRANSACTION_TIMEOUT_MS,
    KafkaEndpoint,
    KafkaSourceConfig,
    WorkerConfig,
)

T = TypeVar("T")


class SecurityConfigError(RuntimeError):
    """Missing secret material: names the variable or file, never a value."""


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise SecurityConfigError(f"environment variable {name} is not set")
    try:
        value.encode()
    except UnicodeEncodeError:
        # Not UTF-8 in the Secret (os.environ keeps the bytes as surrogates): the encoder's
        # message would quote the character and its position.
        raise SecurityConfigError(
            f"environment variable {name} is not UTF-8 text (the value is not shown)"
        ) from None
    return value


def _file(path: str) -> str:
    if not Path(path).is_file():
        raise SecurityConfigError(f"file {path} does not exist")
    return path


def client_config(endpoint: KafkaEndpoint) -> dict[str, Any]:
    """bootstrap.servers plus security.* / sasl.* / ssl.* for one endpoint."""
    sec = endpoint.security
    conf: dict[str, Any] = {
        "bootstrap.servers": endpoint.bootstrap_servers,
        "security.protocol": sec.protocol,
        "client.id": f"streamherd-{socket.gethostname()}",
    }
    if sec.protocol.startswith("SASL"):
        conf["sasl.mechanism"] = sec.sasl_mechanism or "PLAIN"
        if sec.sasl_username_env:
            conf["sasl.username"] = _env(sec.sasl_username_env)
        if sec.sasl_password_env:
            conf["sasl.password"] = _env(sec.sasl_password_env)
    if sec.ca_file:
        conf["ssl.ca.location"] = _file(sec.ca_file)
    if sec.cert_file:
        conf["ssl.certificate.location"] = _file(sec.cert_file)
    if sec.key_file:
        conf["ssl.key.location"] = _file(sec.key_file)
    return conf


#: Session timeout: how long a killed worker's partitions wait before moving (10 s; the
#: broker's minimum is 6 s). Short enough that a crashed pod is replaced quickly.
SESSION_TIMEOUT_MS = 10_000
#: How long the loop may go without a poll before the consumer leaves the group.
MAX_POLL_INTERVAL_MS: Final = 300_000
METADATA_REFRESH_MS = 30_000


def consumer_config(source: KafkaSourceConfig) -> dict[str, Any]:
    conf = client_config(source)
    conf.update(
        {
            "group.id": source.consumer_group,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            # Offsets are stored by our commit after a durable checkpoint, never by librdkafka.
            "enable.auto.offset.store": False,
            # For a position the log no longer holds (retention deleted past it): the log
            # start, never the log end, which skipped every record still there under
            # startFrom: latest (decision 0201). A start without any position is the
            # engine's own (Engine._start_offset, _pin_latest), by startFrom.
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 2_000,
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            # Transactional producers upstream: never read aborted records.
            "isolation.level": "read_committed",
            # Partitions added to a source topic are seen (consumed, and judged by a keyed
            # window: engine._refresh_logs) within 30 s, not librdkafka's default 5 min.
            "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        }
    )
    instance = os.environ.get("STREAMHERD_GROUP_INSTANCE_ID")
    if instance:
        # Static membership: a restarted pod with the same id gets its partitions back
        # without waiting for the session timeout (StatefulSet-style identities).
        conf["group.instance.id"] = instance
    return conf


def producer_config(endpoint: KafkaEndpoint) -> dict[str, Any]:
    conf = client_config(endpoint)
    conf.update(
        {
            "enable.idempotence": True,  # no duplicates or reordering from producer retries
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
        }
    )
    return conf


#: The least transaction timeout (``transaction.timeout.ms``) of a worker's producers: a
#: worker killed inside a transaction holds read_committed readers back until its successor
#: starts (same transactional id) or this passes; the broker aborts the transaction then.
TRANSACTION_TIMEOUT_MS: Final = 60_000


def transaction_timeout_ms(config: WorkerConfig) -> int:
    """A pipeline's transaction timeout: a minute, or six checkpoint intervals if longer
    (a checkpoint's transaction stays open for up to an interval), but never above what
    brokers allow by default (MAX_TRANSACTION_TIMEOUT_MS): above it the producer could not
    start at all (INVALID_TRANSACTION_TIMEOUT, a crash loop), which is why exactly-once
    intervals stop at MAX_EXACTLY_ONCE_INTERVAL_SECONDS."""
    wanted = max(TRANSACTION_TIMEOUT_MS, 6 * round(config.checkpoint.interval_seconds * 1000))
    return min(wanted, MAX_TRANSACTION_TIMEOUT_MS)


@dataclass(frozen=True)
class TopicLimits:
    """What a topic's broker refuses a record for, as its configuration says."""

    max_message_bytes: int | None  # the largest record batch it takes
    compacted: bool  # cleanup.policy holds compact: a record without a key is refused


def topic_limits(
    endpoint: KafkaEndpoint, topics: list[str], timeout: float = 10.0
) -> dict[str, TopicLimits]:
    """Each topic's limits as its broker answers (DescribeConfigs). A topic it does not
    answer for (missing, not allowed to describe, no broker in time) is left out: the
    caller keeps its defaults."""
    admin = AdminClient(client_config(endpoint))
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in dict.fromkeys(topics)]
    found: dict[str, TopicLimits] = {}
    try:
        futures = admin.describe_configs(resources, request_timeout=timeout)
    except Exception:  # noqa: BLE001 - no answer: defaults
        return found
    for resource, future in futures.items():
        try:
            entries = future.result(timeout)
        except Exception:  # noqa: BLE001, S112 - this topic unanswered: its defaults
            continue
        size, policy = entries.get("max.message.bytes"), entries.get("cleanup.policy")
        found[resource.name] = TopicLimits(
            int(size.value) if size is not None and size.value is not None else None,
            policy is not None
            and "compact" in (p.strip() for p in str(policy.value or "").split(",")),
        )
    return found


#: librdkafka's serialized consumer group metadata (``consumer_group_metadata()``, 2.x):
#: this tag, the generation as a native-endian int32, then the group id, the member id and
#: the group instance id. The generation is the one figure read from it.
GROUP_METADATA_TAG: Final = b"CGMDv2:"


def group_generation(metadata: object) -> int | None:
    """The generation a consumer's group metadata carries: -1 before it first joined, and
    after librdkafka learns its generation is gone (a SyncGroup's ILLEGAL_GENERATION). None
    when the metadata is in a form other than librdkafka 2.x's: nothing is known then."""
    tag = GROUP_METADATA_TAG
    if not isinstance(metadata, bytes) or not metadata.startswith(tag):
        return None
    raw = metadata[len(tag) : len(tag) + 4]
    if len(raw) < 4:
        return None
    return int.from_bytes(raw, sys.byteorder, signed=True)


def send_offsets_fenced(
    producer: TransactionalProducer,
    offsets: Sequence[TopicPartition],
    group: object,
    timeout: float,
) -> None:
    """Add ``offsets`` to the producer's open transaction, fenced by the group (KIP-447),
    and never unfenced. The broker checks a transactional offset commit against the group's
    generation only when the commit names one: one with generation -1 and no member id (the
    form of an old client's) commits whoever holds the partitions now. librdkafka hands out
    that metadata after its generation was taken away, so a worker the group has left behind
    could commit offsets, and its outputs, over the new owner's. Such metadata is refused
    here, as the broker refuses a stale generation (ILLEGAL_GENERATION: the transaction must
    abort), so every caller treats it as the fencing it is."""
    generation = group_generation(group)
    if generation is not None and generation < 0:
        raise KafkaException(
            KafkaError(
                KafkaError.ILLEGAL_GENERATION,
                "not a member of the group's current generation: offsets not sent",
                txn_requires_abort=True,
            )
        )
    producer.send_offsets_to_transaction(list(offsets), group, timeout)


#: How long past its own timeout a librdkafka call may take before it counts as stuck.
STUCK_GRACE_SECONDS: Final = 30.0


class StuckCallError(RuntimeError):
    """A librdkafka call did not return long after its own timeout. The client is unusable
    (the call still holds it): the worker must exit and start again, as after a crash, which
    exactly-once survives (the next incarnation's init_transactions fences this one)."""


#: Failures that waiting cures: a broker or coordinator restarting or moving. librdkafka
#: retries them inside a call until its timeout, then returns them as needing an abort (not
#: as retriable): a changelog's whole transaction is tried again
#: (changelog.RETRY_SECONDS); an engine that meets one starts again (main.run_pipeline).
TRANSIENT: Final = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def transient(error: KafkaError) -> bool:
    """Whether a failed transaction may succeed if tried again a moment later."""
    return not error.fatal() and (error.retriable() or error.code() in TRANSIENT)


class FatalClientError(RuntimeError):
    """A Kafka client of the engine reached librdkafka's fatal state, where it can never be
    used again and must be replaced: most often a transactional producer fenced because the
    broker ended its transaction (it outlived ``transaction.timeout.ms`` while the broker
    was away; librdkafka then says "fenced by a newer instance") or because a newer
    producer of the same transactional id started. Nothing of the open transaction was
    committed; new clients start clean from the last committed checkpoint
    (:func:`streamherd.workers.main.run_pipeline`, decision 0194)."""


def is_fatal(error: KafkaException) -> bool:
    """Whether a client's error put it in librdkafka's fatal state: the error says so, or
    it is ``_FATAL`` (a call on a client already there: produce() raises that)."""
    reason = error.args[0] if error.args else None
    return isinstance(reason, KafkaError) and (reason.fatal() or reason.code() == KafkaError._FATAL)


#: How often an abort whose time ran out is called again (librdkafka: "retry call to
#: resume") before the producer is given up (decision 0194).
ABORT_ATTEMPTS: Final = 3


def unbare(call: Callable[[], T]) -> T:
    """``call()``, with a bare ``KafkaError`` it raises turned into the ``KafkaException`` it
    is. confluent-kafka can raise the error object itself, no exception instance, from a call
    that ran a rebalance callback which failed (a CI run of the broker-crash test: the
    committed offsets asked in the assignment timed out after the broker came back, and
    ``consume()`` raised it); no ``except Exception`` catches that, so the worker died past
    its own error handling. For the consumer's calls that run callbacks: consume, close."""
    try:
        return call()
    except BaseException:
        raise
    except:  # the one place that must catch what is not an exception
        error = sys.exc_info()[1]
        if isinstance(error, KafkaError):
            raise KafkaException(error) from None
        raise


def abort_retrying(
    producer: Any, timeout: float, attempts: int, between: Callable[[], None]
) -> None:
    """``producer.abort_transaction(timeout)``, called again while it fails with a retriable
    error (its time ran out: librdkafka resumes the same abort), at most ``attempts`` times;
    ``between`` runs before each retry (the loop's heartbeat). Raises the last error, or at
    once one that is not retriable."""
    for attempt in range(1, attempts + 1):
        try:
            producer.abort_transaction(timeout)
            return
        except KafkaException as error:
            if attempt == attempts or is_fatal(error) or not error.args[0].retriable():
                raise
            between()


def bounded_call(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``, given at most ``seconds``, else :class:`StuckCallError`.

    For the librdkafka calls that take a timeout but do not always keep it:
    send_offsets_to_transaction waits on the group coordinator's lookup with no timer, and
    hung for good after the only broker restarted (librdkafka issue 5456;
    test_engine_broker_crashes.py met it in about one run of three). The call runs in a
    daemon thread; this thread waits for it, and handles signals while it waits."""
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            failed.append(error)

    thread = threading.Thread(target=run, name=f"streamherd-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise StuckCallError(f"{what} did not return within {seconds:g} s (its timeout ignored)")
    if failed:
        raise failed[0]
    return done[0]


def _bound(timeout: float, what: str) -> float:
    if timeout < 0:
        raise ValueError(f"{what} needs a finite timeout: without one it could never be bounded")
    return timeout + STUCK_GRACE_SECONDS


class TransactionalProducer(Producer):
    """The producer of a ``transactional.id``: every call that waits on the transaction
    coordinator is bounded (:func:`bounded_call`, its own timeout + STUCK_GRACE_SECONDS) and
    needs a finite timeout. Bounding the class rather than one call site covers the whole
    class of failure: send_offsets_to_transaction is the call seen hanging (librdkafka issue
    5456), and init, commit and abort wait on the same coordinator (issue 5511 is a related
    hang). ``begin_transaction`` is local and ``produce``/``poll``/``flush`` are not
    transactional calls: they are the C methods, untouched."""

    def init_transactions(self, timeout: float = -1) -> None:
        call = super().init_transactions
        bounded_call(lambda: call(timeout), _bound(timeout, "init_transactions"),
                     "init_transactions")  # fmt: skip

    def commit_transaction(self, timeout: float = -1) -> None:
        call = super().commit_transaction
        bounded_call(lambda: call(timeout), _bound(timeout, "commit_transaction"),
                     "commit_transaction")  # fmt: skip

    def abort_transaction(self, timeout: float = -1) -> None:
        call = super().abort_transaction
        bounded_call(lambda: call(timeout), _bound(timeout, "abort_transaction"),
                     "abort_transaction")  # fmt: skip

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        call = super().send_offsets_to_transaction
        bounded_call(
            lambda: call(positions, group_metadata, timeout),
            _bound(timeout, "send_offsets_to_transaction"),
            "send_offsets_to_transaction",
        )
