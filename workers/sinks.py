"""Where results and failed records go: Kafka topic, stdout, PostgreSQL, dead-letter topic.

Used by the engine (``streamherd.workers.engine``), which writes outputs as they are
produced and calls :meth:`Outputs.flush` before every checkpoint: a checkpoint that drops
a closed window from state is only written once that window's result is delivered, which
is what makes output at-least-once (docs/decisions/0002-delivery-guarantees.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, TextIO

from confluent_kafka import KafkaError, Producer

from streamherd.workers.config import DeadLetterConfig, KafkaEndpoint, SinkConfig
from streamherd.workers.expressions import compile_expression
from streamherd.workers.kafkaclients import producer_config
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.processing import Failure, encode_output, error_headers
from streamherd.workers.sinks_postgres import PostgresSink
from streamherd.workers.values import text_of

log = logging.getLogger("streamherd.worker")

#: Above this many undelivered messages the sink is "behind": consumption pauses.
HIGH_WATER = 200_000
LOW_WATER = 50_000


class DeliveryError(RuntimeError):
    """The broker refused or never acknowledged an output record: do not checkpoint."""


class _Producers:
    """One idempotent producer per distinct endpoint (sink and DLQ usually share one)."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, Producer] = {}
        self._errors: list[str] = []
        self._lock = threading.Lock()

    def _on_delivery(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            with self._lock:
                self._errors.append(str(error))

    def get(self, endpoint: KafkaEndpoint) -> Producer:
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
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._producers = _Producers()
        self._out = out
        self._sink_producer: Producer | None = None
        self._topic = ""
        self._key_fn = None
        self._headers: list[tuple[str, bytes]] = []
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
        # issue 6: PostgreSQL sink (queued rows, confirmed by its writer thread)
        self._postgres = (
            PostgresSink(sink.postgres, pipeline, metrics) if sink.postgres is not None else None
        )
        self._dlq_producer: Producer | None = None
        self._dlq_topic = ""
        if dead_letter is not None:
            self._dlq_producer = self._producers.get(dead_letter)
            self._dlq_topic = dead_letter.topic

    @property
    def has_dead_letter(self) -> bool:
        return self._dlq_producer is not None

    def write(self, rows: list[tuple[bytes | str | None, Mapping[str, Any] | bytes]]) -> None:
        """Write results: (default key, value). The sink's key expression wins when set."""
        if self._postgres is not None:
            self._postgres.write([value for _, value in rows])
            return
        if self._sink_producer is None:
            lines = [encode_output(value).decode("utf-8", errors="replace") for _, value in rows]
            if lines:
                self._out.write("\n".join(lines) + "\n")
            return
        producer, topic, headers, key_fn = (
            self._sink_producer,
            self._topic,
            self._headers or None,
            self._key_fn,
        )
        for default_key, value in rows:
            key = default_key
            if key_fn is not None and not isinstance(value, bytes):
                computed = key_fn(value)
                key = None if computed is None else text_of(computed)
            _produce(producer, topic=topic, key=key, value=encode_output(value), headers=headers)
        producer.poll(0)

    def dead_letter(self, failures: list[Failure]) -> None:
        if self._dlq_producer is None:
            return
        for failure in failures:
            m = failure.message
            _produce(
                self._dlq_producer,
                topic=self._dlq_topic,
                key=m.key(),
                value=m.value(),
                headers=error_headers(failure, self.pipeline),
            )
        self._dlq_producer.poll(0)

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

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()

    def poll(self, timeout: float = 0.0) -> None:
        for producer in self._producers.all():
            producer.poll(timeout)

    def flush(self, timeout: float) -> bool:
        """Deliver everything written so far; False when time ran out. Raises DeliveryError."""
        self._out.flush()
        if self._postgres is not None and not self._postgres.flush(timeout):
            return False  # not confirmed by the database yet: no checkpoint may cover it
        pending = 0
        for producer in self._producers.all():
            pending += producer.flush(timeout)
        errors = self._producers.take_errors()
        if errors:
            raise DeliveryError(f"{len(errors)} output records failed: {errors[0]}")
        return pending == 0
