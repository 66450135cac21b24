"""Where results and failed records go: Kafka topic, stdout, PostgreSQL, dead-letter topic.

Used by the engine (``streamherd.workers.engine``), which writes outputs as they are
produced and calls :meth:`Outputs.flush` before every checkpoint: a checkpoint that drops
a closed window from state is only written once that window's result is delivered, which
is what makes output at-least-once (docs/decisions/0002-delivery-guarantees.md).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TextIO

from confluent_kafka import KafkaError, KafkaException, Producer

from streamherd.workers.config import (
    DeadLetterConfig,
    KafkaEndpoint,
    KafkaSourceConfig,
    SinkConfig,
)
from streamherd.workers.expressions import compile_expression
from streamherd.workers.kafkaclients import (
    FatalClientError,
    TransactionalProducer,
    producer_config,
    topic_limits,
)
from streamherd.workers.logs import log_event
from streamherd.workers.metrics import EngineMetrics, SinkMetrics
from streamherd.workers.processing import (
    Failure,
    SourceMessage,
    encode_output,
    error_headers,
    type_name,
)
from streamherd.workers.sinks_postgres import PostgresSink
from streamherd.workers.sinks_postgres_offsets import (
    CommittedMetadata,
    Fence,
    PostgresTransactionalSink,
)
from streamherd.workers.values import key_expression_text, result_key_value

log = logging.getLogger("streamherd.worker")

#: Above this many undelivered messages the sink is "behind": consumption pauses.
HIGH_WATER = 200_000
LOW_WATER = 50_000
#: How long :meth:`Outputs.discard` serves the purged records' delivery reports.
DISCARD_SECONDS: Final = 2.0


class DeliveryError(RuntimeError):
    """The broker refused or never acknowledged an output record: do not checkpoint."""


class SinkRefusedError(RuntimeError):
    """The sink refused a result: too large, or not a row it can ever store (it is
    dead-lettered with reason ``sink``)."""


#: librdkafka's default ``message.max.bytes``: the producer refuses larger messages itself.
DEFAULT_MESSAGE_MAX_BYTES: Final = 1_000_000
#: Room left under ``message.max.bytes`` for the record's framing (librdkafka counts it).
FRAMING_BYTES: Final = 1024
#: A dead letter the broker refused as too large is sent again with at most this much of the
#: original value (and then with none, headers only).
SHORT_VALUE_BYTES: Final = 1024
#: How long a record sent again alone (after a refused batch) is waited for.
ALONE_SECONDS: Final = 10.0
#: Broker and producer errors that say "this record is too large", not "the sink is down".
SIZE_ERRORS: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,  # the producer's message.max.bytes, or the broker's
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
    }
)
#: Broker errors that refuse a result for what it is, so that sending it again alone tells
#: which record of the batch it was: too large, or no key for a compacted topic
#: (INVALID_RECORD: it failed the worker, which met it again after every restart: a
#: helper's finding). Not INVALID_TIMESTAMP: results carry the producer's clock, so that
#: one is the worker's (a skewed node), and fails it loudly as before.
RESULT_ERRORS: Final = SIZE_ERRORS | {KafkaError.INVALID_RECORD}

Headers = list[tuple[str, bytes]]

# Header names of a truncated dead letter.
TRUNCATED: Final = "streamherd.truncated"
TRUNCATED_REASON: Final = "streamherd.truncated.reason"
ORIGINAL_SIZE: Final = "streamherd.original.size"
ORIGINAL_KEY_SIZE: Final = "streamherd.original.key.size"


def message_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Bytes of a record as the producer counts them, framing aside."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


def truncate(
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    why: str,
    *,
    value_bytes: int,
    key_bytes: int,
) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter with its value cut to ``value_bytes`` and its key to ``key_bytes``;
    headers say so, with the original sizes (kept from an earlier cut) and why."""
    known = {k for k, _ in headers}
    kept = [(k, v) for k, v in headers if k not in (TRUNCATED, TRUNCATED_REASON)]
    kept += [(TRUNCATED, b"true"), (TRUNCATED_REASON, why.encode(errors="replace")[:300])]
    if ORIGINAL_SIZE not in known:
        kept.append((ORIGINAL_SIZE, str(len(value or b"")).encode()))
    if ORIGINAL_KEY_SIZE not in known:
        kept.append((ORIGINAL_KEY_SIZE, str(len(key or b"")).encode()))
    if key is not None:
        key = key[: max(key_bytes, 0)]
    if value is not None:
        value = value[: max(value_bytes, 0)]
    return key, value, kept


def fit(
    key: bytes | None, value: bytes | None, headers: Headers, limit: int, why: str
) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter cut to fit ``limit`` bytes, framing and the added headers included:
    the key keeps at most a quarter of the room, the value the rest."""
    room = limit - FRAMING_BYTES - message_size(None, None, headers) - 400  # added headers
    key_bytes = min(len(key or b""), max(room // 4, 0))
    return truncate(key, value, headers, why, value_bytes=room - key_bytes, key_bytes=key_bytes)


def shorter(
    key: bytes | None, value: bytes | None, headers: Headers, why: str
) -> tuple[bytes | None, bytes | None, Headers] | None:
    """The next, shorter form of a dead letter the broker refused as too large: at most
    :data:`SHORT_VALUE_BYTES` of the value, then none (headers only); None after that."""
    if len(value or b"") > SHORT_VALUE_BYTES or len(key or b"") > SHORT_VALUE_BYTES // 4:
        return truncate(
            key,
            value,
            headers,
            why,
            value_bytes=SHORT_VALUE_BYTES,
            key_bytes=SHORT_VALUE_BYTES // 4,
        )
    if key or value:
        return truncate(key, value, headers, why, value_bytes=0, key_bytes=0)
    return None


def is_size_error(error: KafkaError | None) -> bool:
    return error is not None and error.code() in SIZE_ERRORS


def is_result_error(error: KafkaError | None) -> bool:
    return error is not None and error.code() in RESULT_ERRORS


def encode_result(value: Mapping[str, Any] | bytes) -> bytes:
    """A result as the sink writes it (``processing.encode_output``), its ``key`` field
    holding a raw source's bytes key as ``values.result_key_value`` gives it: bytes that
    are not UTF-8 as ``{"bytes": "<base64>"}``, as the output key writes them, not with
    the invalid bytes replaced (which made every such key one ``"\ufffd"``)."""
    if type(value) is dict:
        key = value.get("key")
        if type(key) is bytes or type(key) is list:
            fixed = result_key_value(key)
            if fixed is not key:
                value = {**value, "key": fixed}
    return encode_output(value)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: JSON's grammar, but no JSON or float8 value
        raise SinkRefusedError(f"postgres sink: the number {text} is out of range")
    return number


def _no_constant(text: str) -> Any:
    raise SinkRefusedError(f"postgres sink: {text} is not JSON")


#: The exact types of a result's field (a column's value) that psycopg writes to a column
#: of their own type, kept as they are: bytes to bytea, a float (NaN and the infinities
#: too) to double precision, a Decimal to numeric, a timedelta to an interval. JSON has no
#: form for them that those columns take (bytes as text or base64, NaN as null) or none at
#: all (a Decimal, a timedelta), and the sink stored them so before it read results back.
POSTGRES_NATIVE: Final = frozenset({bytes, float, decimal.Decimal, datetime.timedelta})


def postgres_record(value: Mapping[str, Any] | bytes) -> dict[str, Any]:
    """A result as the PostgreSQL sink stores it: the JSON object a Kafka sink would write
    (:func:`encode_result`: bytes as text or base64, NaN as null), read back with integers
    exact, but a field of one of the exact types :data:`POSTGRES_NATIVE` as it is. So only
    plain JSON and those values reach the writer thread and the database: a result that is
    no JSON object, whose own methods raise (a user function's mapping), or that psycopg
    could not adapt is its record's dead letter here instead of stopping the worker, or
    being retried for ever by the writer. Raises what the result raised, or
    SinkRefusedError."""
    native: dict[str, Any] = {}
    if type(value) is dict:  # exactly: a subclass's items() is the user's code
        native = {n: v for n, v in value.items() if type(v) in POSTGRES_NATIVE and type(n) is str}
        if native:
            value = {n: None if n in native else v for n, v in value.items()}
    record = json.loads(encode_result(value), parse_float=_finite, parse_constant=_no_constant)
    if type(record) is not dict:
        raise SinkRefusedError(
            f"postgres sink: a result must be a JSON object, not {type(record).__name__}"
        )
    record.update(native)
    return record


class Coordinates:
    """Where a record came from (topic, partition, offset, timestamp), without its key,
    value or headers: what a dead letter of its result names."""

    __slots__ = ("_offset", "_partition", "_timestamp", "_topic")

    def __init__(
        self, topic: str | None, partition: int | None, offset: int | None, ts: tuple[int, int]
    ) -> None:
        self._topic, self._partition, self._offset, self._timestamp = topic, partition, offset, ts

    @classmethod
    def of(cls, source: Any) -> Coordinates | None:
        if source is None:
            return None
        return cls(source.topic(), source.partition(), source.offset(), source.timestamp())

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


class _ResultMessage:
    """A result the sink refused, as a message for the dead-letter path: the result's key
    and value with the coordinates of the record it came from."""

    __slots__ = ("_key", "_source", "_value")

    def __init__(self, source: Any, key: bytes | None, value: bytes | None) -> None:
        self._source, self._key, self._value = source, key, value

    def topic(self) -> str | None:
        return self._source.topic() if self._source is not None else None

    def partition(self) -> int | None:
        return self._source.partition() if self._source is not None else None

    def offset(self) -> int | None:
        return self._source.offset() if self._source is not None else None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return self._source.timestamp() if self._source is not None else (0, 0)

    def error(self) -> None:
        return None


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode(errors="replace")


class _Producers:
    """One idempotent producer per distinct endpoint (sink and DLQ usually share one); in
    exactly-once mode one transactional producer for every endpoint (the configuration
    has checked they are one cluster: workers/config.py exactly_once_problem)."""

    def __init__(self, transactional: dict[str, Any] | None = None) -> None:
        self._by_endpoint: dict[str, Producer] = {}
        self._errors: list[str] = []
        # A delivery failed because its producer is in librdkafka's fatal state (its queued
        # records all fail with _FATAL): no retry can deliver them, a new producer must.
        self.fatal: str | None = None
        self._lock = threading.Lock()
        self.transactional: TransactionalProducer | None = None
        self._transactional_conf = transactional

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            with self._lock:
                self._errors.append(str(error))
                if self.fatal is None and (error.fatal() or error.code() == KafkaError._FATAL):
                    self.fatal = str(error)

    def get(self, endpoint: KafkaEndpoint) -> Producer:
        if self._transactional_conf is not None:
            if self.transactional is None:
                conf = {**producer_config(endpoint), **self._transactional_conf}
                conf["on_delivery"] = self._on_delivery
                self.transactional = TransactionalProducer(conf)
            return self.transactional
        ident = endpoint.model_dump_json()
        producer = self._by_endpoint.get(ident)
        if producer is None:
            conf = producer_config(endpoint)
            conf["on_delivery"] = self._on_delivery
            producer = self._by_endpoint[ident] = Producer(conf)
        return producer

    def all(self) -> list[Producer]:
        return list(self._by_endpoint.values())

    def take_errors(self) -> list[str]:
        with self._lock:
            errors, self._errors = self._errors, []
        return errors


def _produce(producer: Producer, **kwargs: Any) -> None:
    while True:
        try:
            producer.produce(**kwargs)
            return
        except BufferError:
            producer.poll(0.05)  # local queue full: let deliveries drain, then retry


class Outputs:
    """The sink plus the dead-letter destination of one engine."""

    def __init__(
        self,
        sink: SinkConfig,
        dead_letter: DeadLetterConfig | None,
        pipeline: str,
        out: TextIO,
        *,
        metrics: EngineMetrics | None = None,
        source: KafkaSourceConfig | None = None,
        transactional: dict[str, Any] | None = None,
        two_phase: bool = False,
    ) -> None:
        """``two_phase``: exactly-once into PostgreSQL with Kafka outputs besides (dead
        letters, repartition or changelog records), committed in two phases."""
        self.pipeline = pipeline
        # Exactly-once into PostgreSQL: the database's transaction holds the results and the
        # input offsets (workers/sinks_postgres_offsets.py). Without other Kafka outputs
        # there is no Kafka transaction; with them, Kafka's transaction decides a prepared
        # one (two phases: workers/twophase.py, decision 0155).
        self._offsets: PostgresTransactionalSink | None = None
        if transactional is not None and sink.postgres is not None:
            if source is None:
                raise ValueError("exactly-once into PostgreSQL needs a Kafka source")
            self._offsets = PostgresTransactionalSink(
                sink.postgres,
                pipeline,
                source.consumer_group,
                metrics,
                two_phase=two_phase,
                writer=str(transactional.get("transactional.id", "")),
            )
            if not two_phase:
                transactional = None
        # Exactly-once: one record the broker refuses dooms the whole transaction (it is
        # aborted, and its replay meets the same record: the partition stops for good). So
        # nothing the sink or dead-letter topic would refuse is produced: their
        # max.message.bytes is learnt here, each result and dead letter is measured against
        # it before it is produced, and the producer's batches stay under the smallest
        # (decision 0169). At-least-once sends a refused record again, alone, instead.
        self._sink_max_bytes: int | None = None
        # A compacted sink topic refuses a record without a key (INVALID_RECORD): under
        # exactly-once such a result is refused before it is produced, as a too large one.
        self._sink_compacted = False
        self._dlq_limit_name = "the producer's message.max.bytes"
        dlq_topic_max: int | None = None
        if transactional is not None and (sink.kafka is not None or dead_letter is not None):
            endpoint: KafkaEndpoint = sink.kafka or dead_letter  # type: ignore[assignment]
            topics = [c.topic for c in (sink.kafka, dead_letter) if c is not None]
            described = topic_limits(endpoint, topics)
            limits = {
                topic: size - size // 100  # room for the batch's framing and compression
                for topic, found in described.items()
                if (size := found.max_message_bytes) is not None
            }
            if sink.kafka is not None and sink.kafka.topic in described:
                self._sink_compacted = described[sink.kafka.topic].compacted
            for topic in topics:
                if topic not in limits:  # not allowed to describe it, or not there yet
                    log_event(log, logging.WARNING, "topic-limit-unknown", topic=topic,
                              assumed=DEFAULT_MESSAGE_MAX_BYTES)  # fmt: skip
            if sink.kafka is not None and sink.kafka.topic in limits:
                self._sink_max_bytes = min(DEFAULT_MESSAGE_MAX_BYTES, limits[sink.kafka.topic])
                # A batch holds one topic partition's records; one larger than batch.size
                # (a repartition message) still goes, alone. The sink's limit only: the
                # batches of every other topic share the setting.
                transactional = {**transactional, "batch.size": max(self._sink_max_bytes, 1)}
            if dead_letter is not None:
                dlq_topic_max = limits.get(dead_letter.topic)
        # Exactly-once: librdkafka settings of the one transactional producer
        # (transactional.id, transaction.timeout.ms), created with the first output.
        self._producers = _Producers(transactional)
        self._out = out
        self._sink_producer: Producer | None = None
        self._topic = ""
        self._key_fn = None
        self._headers: list[tuple[str, bytes]] = []
        if transactional is not None and source is not None:
            self._producers.get(source)  # the transaction's producer exists from the start
        if sink.kafka is not None:
            if sink.kafka.transactional:
                raise ValueError(
                    "transactional (exactly-once) Kafka output is not supported by this "
                    "engine version; see docs/decisions/0002-delivery-guarantees.md"
                )
            self._sink_producer = self._producers.get(sink.kafka)
            self._topic = sink.kafka.topic
            self._key_fn = compile_expression(sink.kafka.key) if sink.kafka.key else None
            self._headers = [(k, v.encode()) for k, v in sink.kafka.headers.items()]
        # PostgreSQL sink (queued rows, confirmed by its writer thread)
        self._postgres: PostgresSink | PostgresTransactionalSink | None = self._offsets
        if sink.postgres is not None and self._offsets is None:
            self._postgres = PostgresSink(sink.postgres, pipeline, metrics)
        self._dlq_producer: Producer | None = None
        self._dlq_topic = ""
        self._dlq_max_bytes = DEFAULT_MESSAGE_MAX_BYTES
        self._dlq_alone = False
        if dead_letter is not None:
            self._dlq_producer = self._producers.get(dead_letter)
            self._dlq_topic = dead_letter.topic
            self._dlq_max_bytes = int(
                producer_config(dead_letter).get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES)
            )
            if dlq_topic_max is not None and dlq_topic_max < self._dlq_max_bytes:
                self._dlq_max_bytes = dlq_topic_max
                self._dlq_limit_name = "the dead-letter topic's max.message.bytes"
                # Several dead letters in one batch could be over it together: each goes
                # in a batch of its own (they are rare).
                self._dlq_alone = dlq_topic_max < (
                    self._sink_max_bytes or DEFAULT_MESSAGE_MAX_BYTES
                )
        self._report = SinkMetrics(metrics)
        # Refused as too large by the broker (delivery reports): (source, key, value, error)
        # of sink results, (key, value, headers, why) of dead letters. Sent on the next poll.
        self._lock = threading.Lock()
        self._retry_results: list[tuple[Any, Any]] = []  # (source, message): again, alone
        self._refused_results: list[tuple[Any, Any, Any, BaseException]] = []
        self._retry_dead_letters: list[tuple[Any, Any, Headers]] = []  # again, alone
        self._refused_dead_letters: list[tuple[Any, Any, Headers, str]] = []
        # The repartition topic lives on the source's cluster (same endpoint: one producer
        # with the sink's when they share it).
        self._source_endpoint = (
            KafkaEndpoint(bootstrap_servers=source.bootstrap_servers, security=source.security)
            if source is not None
            else None
        )

    @property
    def has_dead_letter(self) -> bool:
        return self._dlq_producer is not None

    def write(
        self,
        rows: list[tuple[bytes | str | None, Mapping[str, Any] | bytes]],
        sources: Sequence[SourceMessage] | SourceMessage | None = None,
    ) -> None:
        """Write results: (default key, value). The sink's key expression wins when set.

        ``sources``: the record each row came from (one per row, or one for all), named in
        the dead letter of a result the sink refuses: one it cannot encode, whose key
        expression fails, or that is too large for it (now, or when the broker answers).
        """
        many = isinstance(sources, Sequence)

        def source_of(i: int) -> Any:
            return sources[i] if many else sources  # type: ignore[index]

        if self._postgres is not None:
            accepted, origins = [], []
            for i, (_, value) in enumerate(rows):
                try:
                    record = postgres_record(value)
                except BaseException as error:  # noqa: BLE001 - the result's fault: dead-letter it
                    self._refuse(source_of(i), None, value, error)
                    continue
                # Judged with what the sink's connection read of the database and the table
                # (its encoding, the json columns, which key columns take a null).
                refused = self._postgres.refusal(record)
                if refused is None:
                    accepted.append(record)
                    # Its coordinates, not the record (held until confirmed: 50,000 rows of
                    # large inputs were gigabytes while the database was down).
                    origins.append((Coordinates.of(source_of(i)), value))
                else:  # never storable: retrying it would stop the pipeline for good
                    self._refuse(source_of(i), None, value, SinkRefusedError(refused))
            self._postgres.write(accepted, origins)
            self._dead_letter_refused_rows()
            return
        if self._sink_producer is None:
            lines = []
            for i, (_, value) in enumerate(rows):
                try:
                    lines.append(encode_result(value).decode("utf-8", errors="replace"))
                except BaseException as error:  # noqa: BLE001 - the result's fault: dead-letter it
                    self._refuse(source_of(i), None, value, error)
            if lines:
                self._out.write("\n".join(lines) + "\n")
            self._drain_refusals()
            return
        producer, topic, headers, key_fn = (
            self._sink_producer,
            self._topic,
            self._headers or None,
            self._key_fn,
        )
        delivered = self._sink_delivered
        for i, (default_key, value) in enumerate(rows):
            source = source_of(i)
            try:
                key = default_key
                if key_fn is not None and not isinstance(value, bytes):
                    computed = key_fn(value)
                    key = None if computed is None else key_expression_text(computed)
                if type(key) is str:
                    key = key.encode()  # a lone surrogate: the result's fault, not the worker's
                data = encode_result(value)
            except BaseException as error:  # noqa: BLE001 - the result's fault: dead-letter it
                self._refuse(source, default_key, value, error)
                continue
            if key is None and self._sink_compacted:
                self._refuse(
                    source,
                    key,
                    data,
                    SinkRefusedError(
                        "no key for the sink topic, which is compacted and refuses a record "
                        "without one: not produced, as it would fail the transaction"
                    ),
                )
                continue
            limit = self._sink_max_bytes
            if (
                limit is not None
                and message_size(_as_bytes(key), data, headers or []) + FRAMING_BYTES > limit
            ):
                self._refuse(
                    source,
                    key,
                    data,
                    SinkRefusedError(
                        f"larger than the sink topic's max.message.bytes allows ({limit} bytes "
                        "with its framing): not produced, as it would fail the transaction"
                    ),
                )
                continue
            try:
                _produce(
                    producer,
                    topic=topic,
                    key=key,
                    value=data,
                    headers=headers,
                    on_delivery=functools.partial(delivered, source),
                )
            except KafkaException as error:
                if not is_result_error(error.args[0]):
                    raise
                self._refuse(source, key, data, SinkRefusedError(str(error.args[0])))
        producer.poll(0)
        self._drain_refusals()

    # A broker refuses a whole batch when it is over the topic's max.message.bytes, so a
    # record refused in a batch is first sent again alone (produce, then flush: a batch of
    # its own); only a refusal of it alone makes it too large. Refusals are collected by
    # the delivery reports (served from poll and flush) and handled by _drain_refusals.

    def _sink_delivered(self, source: Any, error: KafkaError | None, message: Any) -> None:
        if error is None:
            return
        if is_result_error(error):
            with self._lock:
                self._retry_results.append((source, message))
        else:
            self._producers._on_delivery(error, message)

    def _sink_delivered_alone(self, source: Any, error: KafkaError | None, message: Any) -> None:
        if error is None:
            return
        if is_result_error(error):  # refused alone (too large, no key): dead-letter it
            with self._lock:
                self._refused_results.append(
                    (source, message.key(), message.value(), SinkRefusedError(str(error)))
                )
        else:
            self._producers._on_delivery(error, message)

    def _refuse(
        self, source: Any, key: Any, value: Any, error: BaseException, alone: bool = False
    ) -> None:
        """Dead-letter a result the sink cannot take (reason ``sink``)."""
        try:
            data = encode_result(value)
        except BaseException:  # noqa: BLE001 - not encodable: the headers still name its record
            # type_name: a user's class may not say its name either (its metaclass raises).
            data = f"<a {type_name(value)} result that cannot be encoded>".encode()
        message = _ResultMessage(source, _as_bytes(key), data)
        self._report.result_dead_lettered()
        # The error written once (Failure): a user's error class may not write its message.
        failure = Failure(message, "sink", error)
        log_event(
            log,
            logging.WARNING,
            "result-dead-lettered",
            error=failure.kind,
            message=failure.text[:200],
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        self.dead_letter([failure], alone=alone)

    def dead_letter(self, failures: list[Failure], alone: bool = False) -> None:
        """Send failed records to the dead-letter topic, each whole or, when it is too large
        for the producer, truncated (:func:`fit`); headers name the error and the origin."""
        if self._dlq_producer is None:
            return
        for failure in failures:
            m = failure.message
            headers = error_headers(failure, self.pipeline)
            self._send_dead_letter(m.key(), m.value(), headers, alone=alone or self._dlq_alone)
        self._dlq_producer.poll(0)

    def repartition(
        self,
        topic: str,
        partitions: int,
        rows: list[tuple[str, bytes, int, int, list[tuple[str, bytes]]]],
    ) -> None:
        """Re-keyed records ``(key text, value, timestamp ms, source offset, headers)`` to
        the repartition topic; the partition is CRC-32 of the key (stable across versions
        and clients), so every record of a key meets the same window state."""
        assert self._source_endpoint is not None
        producer = self._producers.get(self._source_endpoint)
        for key, value, stamp, _offset, headers in rows:
            raw = key.encode("utf-8", errors="surrogatepass")
            _produce(
                producer,
                topic=topic,
                partition=zlib.crc32(raw) % partitions,
                key=raw,
                value=value,
                timestamp=stamp,
                headers=headers,
            )
        producer.poll(0)

    def repartition_marker(
        self, topic: str, partitions: int, headers: list[tuple[str, bytes]]
    ) -> None:
        """A progress marker to every partition of the repartition topic."""
        assert self._source_endpoint is not None
        producer = self._producers.get(self._source_endpoint)
        for partition in range(partitions):
            _produce(producer, topic=topic, partition=partition, value=b"", headers=headers)

    # -- exactly-once into PostgreSQL: the sink keeps the input offsets with the results

    @property
    def keeps_offsets(self) -> bool:
        """The sink commits the input offsets in its own transaction (PostgreSQL)."""
        return self._offsets is not None

    def committed_offsets(
        self, partitions: list[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[int, str]]:
        assert self._offsets is not None, "the sink keeps no offsets"
        return self._offsets.committed(partitions)

    def commit_offsets(self, offsets: list[tuple[str, int, int]], generation: str) -> bool:
        assert self._offsets is not None, "the sink keeps no offsets"
        committed = self._offsets.commit(offsets, generation)
        self._dead_letter_refused_rows()  # no dead-letter topic here (else: two phases)
        return committed

    def abort(self) -> None:
        if self._offsets is not None:
            self._offsets.abort()

    @property
    def two_phase(self) -> bool:
        """The sink's transaction is prepared, then decided by Kafka's (decision 0155)."""
        return self._offsets is not None and self._offsets.two_phase

    @property
    def refusals_pending(self) -> bool:
        return self._offsets is not None and self._offsets.refusals_pending

    def prepare_offsets(self, offsets: list[tuple[str, int, int]], generation: str) -> bool:
        """Phase one; the rows the table refused are dead-lettered in Kafka's transaction,
        which commits next and decides the database's (its abort voids them)."""
        assert self._offsets is not None, "the sink keeps no offsets"
        prepared = self._offsets.prepare(offsets, generation)
        self._dead_letter_refused_rows()
        return prepared

    def commit_prepared(self) -> None:
        assert self._offsets is not None, "the sink keeps no offsets"
        self._offsets.commit_prepared()

    def rollback_prepared(self) -> None:
        assert self._offsets is not None, "the sink keeps no offsets"
        self._offsets.rollback_prepared()

    def register_writer(self, incarnation: str) -> None:
        assert self._offsets is not None, "the sink keeps no offsets"
        self._offsets.register(incarnation)

    def recover_prepared(
        self,
        assigned: list[tuple[str, int]],
        committed: CommittedMetadata,
        fence: Fence,
        wait: float,
        between: Callable[[], None],
    ) -> None:
        assert self._offsets is not None, "the sink keeps no offsets"
        self._offsets.recover(assigned, committed, fence, wait=wait, between=between)

    @property
    def transaction(self) -> TransactionalProducer:
        """The transactional producer (exactly-once mode only)."""
        producer = self._producers.transactional
        assert producer is not None, "not in exactly-once mode"
        return producer

    def take_errors(self) -> list[str]:
        return self._producers.take_errors()

    def _send_dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        cut: bool = False,
        alone: bool = False,
    ) -> None:
        producer = self._dlq_producer
        assert producer is not None
        if not cut and message_size(key, value, headers) + FRAMING_BYTES > self._dlq_max_bytes:
            why = f"larger than {self._dlq_limit_name} ({self._dlq_max_bytes})"
            key, value, headers = fit(key, value, headers, self._dlq_max_bytes, why)
            cut = True
            if message_size(key, value, headers) + FRAMING_BYTES > self._dlq_max_bytes:
                # Even its headers are over the limit (a long error message, a small
                # topic): produced, it would be refused (and fail an exactly-once
                # transaction); counted and logged instead.
                self._dead_letter_lost(headers, why)
                return
        while True:
            try:
                _produce(
                    producer,
                    topic=self._dlq_topic,
                    key=key,
                    value=value,
                    headers=headers,
                    # The headers ride along: a delivery report does not carry them.
                    on_delivery=functools.partial(
                        self._dead_letter_alone if alone else self._dead_letter_delivered, headers
                    ),
                )
                break
            except KafkaException as error:
                if not is_size_error(error.args[0]):
                    raise
                smaller = shorter(key, value, headers, str(error.args[0]))
                if smaller is None:
                    self._dead_letter_lost(headers, str(error.args[0]))
                    return
                key, value, headers = smaller
                cut = True
        if cut:
            self._report.dead_letter_truncated()
        if alone:
            producer.flush(ALONE_SECONDS)

    def _dead_letter_delivered(
        self, headers: Headers, error: KafkaError | None, message: Any
    ) -> None:
        if error is None:
            return
        if is_size_error(error):
            with self._lock:
                self._retry_dead_letters.append((message.key(), message.value(), headers))
        else:
            self._producers._on_delivery(error, message)

    def _dead_letter_alone(self, headers: Headers, error: KafkaError | None, message: Any) -> None:
        if error is None:
            return
        if is_size_error(error):  # the topic's max.message.bytes: send it again, shorter
            with self._lock:
                self._refused_dead_letters.append(
                    (message.key(), message.value(), headers, str(error))
                )
        else:
            self._producers._on_delivery(error, message)

    def _dead_letter_lost(self, headers: Headers, why: str) -> None:
        """Even the headers alone were refused: count and log it (nothing else can be done)."""
        self._report.dead_letter_lost()
        named = dict(headers)
        log_event(
            log,
            logging.ERROR,
            "dead-letter-refused",
            error=why,
            topic=named.get("streamherd.source.topic", b"").decode(errors="replace"),
            partition=named.get("streamherd.source.partition", b"").decode(errors="replace"),
            offset=named.get("streamherd.source.offset", b"").decode(errors="replace"),
        )

    def _dead_letter_refused_rows(self) -> bool:
        """Dead-letter the rows the PostgreSQL table refused (a value its column or a
        constraint refuses, a key too large for its index, a trigger's RAISE: decision
        0200), with the database's error; True when there were some."""
        if self._postgres is None:
            return False
        refused = self._postgres.take_refused()
        for (source, value), error in refused:
            self._refuse(source, None, value, error)
        return bool(refused)

    def _drain_refusals(self) -> bool:
        """Handle what the broker refused as too large, and the rows the PostgreSQL table
        refused, since the last call; True when something was sent again (see the comment
        above :meth:`_sink_delivered`)."""
        refused_rows = self._dead_letter_refused_rows()
        with self._lock:
            retry_results, self._retry_results = self._retry_results, []
            results, self._refused_results = self._refused_results, []
            retry_letters, self._retry_dead_letters = self._retry_dead_letters, []
            letters, self._refused_dead_letters = self._refused_dead_letters, []
        for source, message in retry_results:
            producer = self._sink_producer
            assert producer is not None
            _produce(
                producer,
                topic=message.topic(),
                key=message.key(),
                value=message.value(),
                headers=self._headers or None,
                on_delivery=functools.partial(self._sink_delivered_alone, source),
            )
            producer.flush(ALONE_SECONDS)
        for source, key, value, error in results:
            self._refuse(source, key, value, error, alone=True)
        for key, value, headers in retry_letters:
            self._send_dead_letter(key, value, headers, alone=True)
        for key, value, headers, why in letters:
            smaller = shorter(key, value, headers, why)
            if smaller is None:
                self._dead_letter_lost(headers, why)
            else:
                self._send_dead_letter(*smaller, cut=True, alone=True)
        return bool(refused_rows or retry_results or results or retry_letters or letters)

    def behind(self) -> bool:
        if self._postgres is not None and self._postgres.behind():
            return True
        return any(len(p) > HIGH_WATER for p in self._producers.all())

    def caught_up(self) -> bool:
        if self._postgres is not None and not self._postgres.caught_up():
            return False
        return all(len(p) < LOW_WATER for p in self._producers.all())

    def health(self) -> tuple[bool, str]:
        """Whether the sink can confirm writes now (/readyz reports it)."""
        return self._postgres.health() if self._postgres is not None else (True, "ok")

    def close(self, *, drain: bool = True) -> None:
        if self._postgres is not None:
            self._postgres.close(drain=drain)

    def discard(self) -> None:
        """Purge every producer's queue (the transaction's too): the next engine writes
        these results again from the last checkpoint, and a record of this one delivered
        after it could put an older result over a newer one (a compacted topic)."""
        producers = self._producers.all()
        if self._producers.transactional is not None:
            producers.append(self._producers.transactional)
        for producer in producers:
            with contextlib.suppress(KafkaException, RuntimeError):  # a client in its fatal state
                producer.purge(in_queue=True, in_flight=True, blocking=False)
        # Each purged record's delivery report holds its callback, and through it these
        # outputs and their producers, in librdkafka's queue, where the garbage collector
        # cannot see it: left unserved, every engine an in-process restart replaced kept its
        # producers, their threads and broker connections, for the life of the process.
        deadline = time.monotonic() + DISCARD_SECONDS
        for producer in producers:
            while len(producer) and time.monotonic() < deadline:
                with contextlib.suppress(KafkaException, RuntimeError):  # its fatal error, raised
                    producer.poll(0.05)

    def poll(self, timeout: float = 0.0) -> None:
        for producer in self._producers.all():
            producer.poll(timeout)
        self._drain_refusals()

    def flush(self, timeout: float) -> bool:
        """Deliver everything written so far; False when time ran out. Raises DeliveryError.

        A record the broker refuses as too large is dead-lettered (shorter each time), and
        that dead letter is delivered too before this returns True."""
        self._out.flush()
        if self._postgres is not None and not self._postgres.flush(timeout):
            return False  # not confirmed by the database yet: no checkpoint may cover it
        deadline = time.monotonic() + timeout
        pending = 0
        # A refused record is sent again alone; a result refused alone becomes a dead
        # letter, which may be refused (in a batch, then alone) and sent shorter: 1 KiB of
        # its value, then headers only. Each round handles the previous one's refusals.
        for _ in range(8):
            pending = 0
            for producer in self._producers.all():
                pending += producer.flush(max(deadline - time.monotonic(), 0.0))
            if not self._drain_refusals():
                break
        errors = self._producers.take_errors()
        if self._producers.fatal is not None:
            raise FatalClientError(
                f"{len(errors)} output records failed, the producer in its fatal state: "
                f"{self._producers.fatal}"
            )
        if errors:
            raise DeliveryError(f"{len(errors)} output records failed: {errors[0]}")
        return pending == 0
