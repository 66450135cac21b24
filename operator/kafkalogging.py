"""librdkafka's log lines through the operator's logger, rate-limited per cluster and cause.

Left alone, librdkafka (the C library under confluent-kafka, which the builtin autoscaler's
lag probe uses) writes its own lines to stderr from its threads: with an unreachable broker,
hundreds a minute, outside the JSON format the chart sets. Given a ``logger`` in the client
configuration, confluent-kafka hands each line to that object's ``log(level, fmt, facility,
client, text)`` instead, when the client is polled (operator/lagprobe.py polls its admin
client on every measurement; its consumers are polled anyway).

:class:`KafkaLog` is that object, one per Kafka cluster (a lag probe serves every pipeline
whose source is on that cluster): it forwards to the ``streamherd.kafka`` logger with the
cluster and the librdkafka facility (the cause: ``FAIL``, ``CONNECT``, ``BRKMAIN``, ...)
as fields, at most ``burst`` lines per facility per ``interval``; what it holds back is
counted and reported once the interval is over. operator/main.py's JSON formatter writes the
fields.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LOGGER_NAME = "streamherd.kafka"

# librdkafka's syslog levels, should a line arrive with one (confluent-kafka maps them to
# Python's, but a level below DEBUG is certainly a syslog one).
_SYSLOG = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
           4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}  # fmt: skip


@dataclass
class _Window:
    start: float
    shown: int = 0
    held: int = 0


class KafkaLog:
    """confluent-kafka's ``logger`` for the clients of one cluster (see the module doc)."""

    def __init__(
        self,
        cluster: str,
        *,
        burst: int = 3,
        interval: float = 60.0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.burst = burst
        self.interval = interval
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()  # librdkafka may call from several polling threads

    def log(self, level: int, msg: str, *args: object) -> None:
        """What confluent-kafka calls: ``log(level, "%s [%s] %s", facility, client, text)``."""
        facility = str(args[0]) if args else "?"
        text = str(args[-1]) if args else msg
        if level < logging.DEBUG:
            level = _SYSLOG.get(level, logging.INFO)
        now = self._clock()
        with self._lock:
            window = self._windows.get(facility)
            if window is None or now - window.start >= self.interval:
                held = window.held if window is not None else 0
                window = self._windows[facility] = _Window(start=now)
                if held:
                    self._emit(
                        logging.WARNING,
                        facility,
                        f"{held} more librdkafka {facility} lines held back in the last "
                        f"{self.interval:.0f} s",
                    )
            if window.shown >= self.burst:
                window.held += 1
                return
            window.shown += 1
        self._emit(level, facility, text)

    def _emit(self, level: int, facility: str, text: str) -> None:
        self._logger.log(
            level,
            "librdkafka %s: %s",
            facility,
            text,
            extra={"kafka_cluster": self.cluster, "kafka_facility": facility},
        )


_SHARED: dict[str, KafkaLog] = {}
_SHARED_LOCK = threading.Lock()


def shared_kafka_log(cluster: str) -> KafkaLog:
    """The one KafkaLog of a cluster (like ``logging.getLogger``: one per name, process
    wide), so that every client of it (the lag probe, the internal topics' admin client)
    shares one rate limit: two limiters would let twice the lines through."""
    with _SHARED_LOCK:
        found = _SHARED.get(cluster)
        if found is None:
            found = _SHARED[cluster] = KafkaLog(cluster)
        return found
