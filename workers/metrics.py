"""Every Prometheus metric the worker exports, in one place, plus its HTTP endpoints.

:data:`METRICS` is the single list of names, types, help texts and labels: the engine
creates its collectors from it (:class:`EngineMetrics`), and docs tooling (a generator of
docs/monitoring.md) and the operator's alert rules can read it without starting an engine.
Each engine gets its own ``CollectorRegistry``, so several engines (tests, the local run
mode) can live in one process. :class:`MetricsServer` serves ``/metrics``, ``/healthz``
(the processing loop's heartbeat is fresh) and ``/readyz`` (partitions assigned and
consuming, or a generator running) on ``runtime.metricsPort``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX: Final = "streamherd_"

Kind = Literal["counter", "gauge", "histogram"]

PARTITION_LABELS: Final = ("pipeline", "topic", "partition")
# The per-worker lag under its first name, a gauge named like a counter (`promtool check
# metrics`: non-counter metrics should not have "_total" suffix). Exported with the same
# values as streamherd_worker_consumer_lag for one release, for the dashboards and rules
# of users that still query it; nothing of the project's queries it.
DEPRECATED_LAG_TOTAL: Final = "streamherd_consumer_lag_total"
DEAD_LETTER_REASONS: Final = ("decode", "expression", "function", "late", "limit", "unkeyed")
HELD_REASONS: Final = ("state", "replay-offset", "start-offset")

_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_RESTORE_BUCKETS: Final = (
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric. ``name`` is the full Prometheus name (counters without _total)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ("pipeline",)
    buckets: tuple[float, ...] = ()


METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "streamherd_consumer_lag",
        "gauge",
        "Records behind per partition, the lag probe's rule: log end minus the committed "
        "offset; nothing committed: startFrom (earliest: log end minus log start, latest: "
        "0); committed below the log start: log end minus log start.",
        PARTITION_LABELS,
    ),
    MetricSpec(
        "streamherd_worker_consumer_lag",
        "gauge",
        "Sum of streamherd_consumer_lag over the partitions this worker owns (sum() over the "
        "workers gives the pipeline's lag).",
    ),
    MetricSpec(
        DEPRECATED_LAG_TOTAL,
        "gauge",
        "Deprecated: use streamherd_worker_consumer_lag, which has the same value (this gauge "
        "is named like a counter). Exported through the 0.1 releases, removed in 0.2.",
    ),
    MetricSpec(
        "streamherd_assigned_partitions", "gauge", "Partitions currently assigned to this worker."
    ),
    MetricSpec(
        "streamherd_records_in", "counter", "Records read from the source.", PARTITION_LABELS
    ),
    MetricSpec(
        "streamherd_records_lost",
        "counter",
        "Source records the broker deleted (retention, DeleteRecords) before the pipeline read "
        "them: it goes on from the log start.",
        PARTITION_LABELS,
    ),
    MetricSpec(
        "streamherd_repartition_records_in",
        "counter",
        "Records taken from the repartition topic (the window's side of a re-keyed pipeline), "
        "each once: replays of records already taken are dropped and not counted.",
        PARTITION_LABELS,
    ),
    MetricSpec(
        "streamherd_records_out", "counter", "Records written to the sink (incl. window results)."
    ),
    MetricSpec(
        "streamherd_records_filtered",
        "counter",
        "Records dropped by filter steps (or by a user function returning nothing).",
    ),
    MetricSpec(
        "streamherd_records_contributing",
        "counter",
        "Records folded into a window or written as a result. Every record read is counted "
        "once: records_in = records_contributing + records_filtered + records_dead_lettered.",
    ),
    MetricSpec(
        "streamherd_records_dead_lettered",
        "counter",
        "Records sent to the dead-letter topic (or only counted when none is set), by reason: "
        "decode, expression, function, late, limit, unkeyed.",
        ("pipeline", "reason"),
    ),
    MetricSpec(
        "streamherd_results_dead_lettered",
        "counter",
        "Results the sink refused (too large for it, not encodable, its key expression "
        "failed), sent to the dead-letter topic with reason sink.",
    ),
    MetricSpec(
        "streamherd_dead_letters_truncated",
        "counter",
        "Dead letters written truncated because the dead-letter topic could not take them "
        "whole (headers give the original size).",
    ),
    MetricSpec(
        "streamherd_records_late",
        "counter",
        "Records whose windows had all closed (also dead-lettered with reason late).",
    ),
    MetricSpec("streamherd_windows_emitted", "counter", "Window results emitted."),
    MetricSpec(
        "streamherd_batch_duration_seconds",
        "histogram",
        "Time to process one consumed batch (decode, steps, windows, produce).",
        buckets=_LATENCY_BUCKETS,
    ),
    MetricSpec("streamherd_batch_size", "gauge", "Records in the last consumed batch."),
    MetricSpec(
        "streamherd_event_time_lag_seconds",
        "gauge",
        "Wall clock minus the newest event time seen, per partition (windowed pipelines).",
        PARTITION_LABELS,
    ),
    MetricSpec(
        "streamherd_watermark_seconds",
        "gauge",
        "Watermark per partition, as Unix seconds (windowed pipelines).",
        PARTITION_LABELS,
    ),
    MetricSpec("streamherd_open_windows", "gauge", "Open (key, window) pairs held in state."),
    MetricSpec(
        "streamherd_checkpoint_duration_seconds",
        "histogram",
        "Time to make a checkpoint durable: flush the sink, write and fsync the files "
        "(intervals with nothing to write are not observed).",
        buckets=_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "streamherd_state_restore_seconds",
        "histogram",
        "Time to restore the state of the partitions of one assignment from the state backend "
        "(the checkpoint files, or the changelog topic read to its end).",
        buckets=_RESTORE_BUCKETS,
    ),
    MetricSpec(
        "streamherd_checkpoint_age_seconds",
        "gauge",
        "Seconds since everything read was last made durable: the last checkpoint, or the "
        "last checkpoint interval that found nothing new to write.",
    ),
    MetricSpec(
        "streamherd_checkpoints",
        "counter",
        "Durable checkpoints written (intervals with nothing new to write are not counted).",
    ),
    MetricSpec(
        "streamherd_offset_commits",
        "counter",
        "Offset commits sent after a durable checkpoint (exactly-once: transactions that "
        "committed offsets); intervals with no offset to commit are not counted.",
    ),
    MetricSpec(
        "streamherd_rebalances",
        "counter",
        "Rebalance events, by kind: assign, revoke, lost.",
        ("pipeline", "kind"),
    ),
    MetricSpec(
        "streamherd_paused",
        "gauge",
        "1 while consumption is paused because the sink is behind (backpressure).",
    ),
    MetricSpec("streamherd_errors", "counter", "Engine errors, by kind.", ("pipeline", "kind")),
    MetricSpec(
        "streamherd_state_restore_refused",
        "gauge",
        "1 while a partition is held (not consumed, not checkpointed) because its checkpoint "
        "was written under another state fingerprint and the policy is refuse, or in a "
        "window state version or checkpoint format this worker cannot read (a newer "
        "streamherd wrote it).",
        PARTITION_LABELS,
    ),
    MetricSpec(
        "streamherd_partition_held",
        "gauge",
        "1 while an assigned partition is held (not consumed, not checkpointed; /readyz says "
        "why), by reason: state (its checkpoint is not restored: see "
        "streamherd_state_restore_refused), replay-offset (the broker has given no offset "
        "for its replay's or startFrom's time yet), start-offset (startFrom latest, or a "
        "start time: its committed offset or log end could not be read yet). The last two "
        "are asked again at each lag refresh. No series while the partition is not held.",
        (*PARTITION_LABELS, "reason"),
    ),
    MetricSpec(
        "streamherd_state_discarded",
        "counter",
        "Partition states discarded on purpose, by reason: reset or replay (the upgrade "
        "policy for a checkpoint of another state fingerprint), offset-reset (the group's "
        "committed offset was moved with Kafka's tools, or the checkpoint is another group's).",
        ("pipeline", "reason"),
    ),
    MetricSpec(
        "streamherd_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of the processing loop's last iteration (healthz uses it).",
    ),
    # Sinks that confirm writes themselves (PostgreSQL, workers/sinks_postgres.py).
    MetricSpec(
        "streamherd_sink_up",
        "gauge",
        "1 while the sink accepts writes, 0 during an outage (results wait, nothing is lost).",
        ("pipeline", "sink"),
    ),
    MetricSpec(
        "streamherd_sink_errors",
        "counter",
        "Failed sink writes, by kind: connection (the database unreachable or not "
        "answering), sql (PostgreSQL refused a statement or a row), client (psycopg could "
        "not send a row's value), fenced (exactly-once: the offsets table holds another "
        "worker's generation: rolled back, the worker stops). Other failed writes are tried "
        "again; rows refused (sql, client) are dead-lettered, counted once per batch.",
        ("pipeline", "sink", "kind"),
    ),
    MetricSpec(
        "streamherd_sink_pending_records",
        "gauge",
        "Results queued for the sink and not yet confirmed (committed).",
        ("pipeline", "sink"),
    ),
    MetricSpec(
        "streamherd_sink_rows_written",
        "counter",
        "Results the sink confirmed (committed), replays included.",
        ("pipeline", "sink"),
    ),
    MetricSpec(
        "streamherd_sink_write_duration_seconds",
        "histogram",
        "Time to write and commit one batch of results.",
        ("pipeline", "sink"),
        _LATENCY_BUCKETS,
    ),
)

METRICS_BY_NAME: Final = {spec.name: spec for spec in METRICS}


class EngineMetrics:
    """The collectors of one engine, built from :data:`METRICS`, in their own registry."""

    def __init__(self, pipeline: str, registry: CollectorRegistry | None = None) -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry(auto_describe=True)
        made: dict[str, Counter | Gauge | Histogram] = {}
        for spec in METRICS:
            if spec.kind == "counter":
                made[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            elif spec.kind == "gauge":
                made[spec.name] = Gauge(spec.name, spec.help, spec.labels, registry=self.registry)
            else:
                made[spec.name] = Histogram(
                    spec.name,
                    spec.help,
                    spec.labels,
                    buckets=spec.buckets,
                    registry=self.registry,
                )
        self._made = made
        # Held while the lag series change and while a scrape renders, so a scrape shows
        # the partitions' lag and their total from one refresh (see set_lag).
        self._lag_lock = threading.Lock()
        self._lags: dict[tuple[str, int], int] = {}
        # The reason each held partition's streamherd_partition_held series carries.
        self._held: dict[tuple[str, int], str] = {}
        p = pipeline
        # Record counts of an exactly-once engine wait here for its transaction: applied
        # when it commits (settle), forgotten when it aborts (discard_pending), since the
        # records are then read again and their results written again (helper-115: after
        # an abort the counters held every re-read record and re-emitted window twice).
        self._deferring = False
        self._pending: dict[int, tuple[Any, float]] = {}
        self._read_to: dict[tuple[str, int, str | None], int] = {}
        self._lag_totals = (
            self.gauge("streamherd_worker_consumer_lag").labels(p),
            self.gauge(DEPRECATED_LAG_TOTAL).labels(p),
        )
        self.assigned = self.gauge("streamherd_assigned_partitions").labels(p)
        self.records_out = _Deferred(self, self.counter("streamherd_records_out").labels(p))
        self.filtered = _Deferred(self, self.counter("streamherd_records_filtered").labels(p))
        self.late = _Deferred(self, self.counter("streamherd_records_late").labels(p))
        self.contributing = _Deferred(
            self, self.counter("streamherd_records_contributing").labels(p)
        )
        self.results_dead_lettered = _Deferred(
            self, self.counter("streamherd_results_dead_lettered").labels(p)
        )
        self.truncated = _Deferred(
            self, self.counter("streamherd_dead_letters_truncated").labels(p)
        )
        self.windows_emitted = _Deferred(self, self.counter("streamherd_windows_emitted").labels(p))
        self.batch_duration = self.histogram("streamherd_batch_duration_seconds").labels(p)
        self.batch_size = self.gauge("streamherd_batch_size").labels(p)
        self.open_windows = self.gauge("streamherd_open_windows").labels(p)
        self.checkpoint_duration = self.histogram("streamherd_checkpoint_duration_seconds").labels(
            p
        )
        self.state_restore = self.histogram("streamherd_state_restore_seconds").labels(p)
        self.checkpoints = self.counter("streamherd_checkpoints").labels(p)
        self.commits = self.counter("streamherd_offset_commits").labels(p)
        self.paused = self.gauge("streamherd_paused").labels(p)
        self.heartbeat = self.gauge("streamherd_heartbeat_timestamp_seconds").labels(p)
        # Every dead-letter reason exists from the start at 0: a counter born with its first
        # burst already in it shows no rate() or increase(), and the DLQ alert would miss it.
        for reason in DEAD_LETTER_REASONS:
            self.counter("streamherd_records_dead_lettered").labels(p, reason)
        self._last_checkpoint = time.time()
        self.gauge("streamherd_checkpoint_age_seconds").labels(p).set_function(
            lambda: time.time() - self._last_checkpoint
        )

    def counter(self, name: str) -> Counter:
        metric = self._made[name]
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str) -> Gauge:
        metric = self._made[name]
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, name: str) -> Histogram:
        metric = self._made[name]
        assert isinstance(metric, Histogram)
        return metric

    def defer_records(self) -> None:
        """Exactly-once: record counts wait for the transaction (see settle)."""
        self._deferring = True

    def _add(self, child: Any, count: float) -> None:
        if not self._deferring:
            child.inc(count)
            return
        _, before = self._pending.get(id(child), (child, 0.0))
        self._pending[id(child)] = (child, before + count)

    def settle(self) -> None:
        """The transaction committed: what it counted is for good."""
        pending, self._pending = self._pending, {}
        for child, count in pending.values():
            if count:
                child.inc(count)

    def discard_pending(self) -> None:
        """The transaction aborted (or its engine failed): its records are read again."""
        self._pending = {}

    def checkpointed(self, duration: float, *, written: bool) -> None:
        """A checkpoint interval made everything read so far durable: the checkpoint age
        starts again. ``written``: it wrote a checkpoint (some partition had changed); an
        interval with nothing to write is no checkpoint, and neither counted nor timed."""
        self._last_checkpoint = time.time()
        if written:
            self.checkpoints.inc()
            self.checkpoint_duration.observe(duration)

    def dead_lettered(self, reason: str, count: int = 1) -> None:
        self._add(self.counter("streamherd_records_dead_lettered").labels(self.pipeline, reason),
                  count)  # fmt: skip

    def rebalance(self, kind: str) -> None:
        self.counter("streamherd_rebalances").labels(self.pipeline, kind).inc()

    def error(self, kind: str) -> None:
        self.counter("streamherd_errors").labels(self.pipeline, kind).inc()

    def read_to(self, log: tuple[str, int, str | None]) -> int:
        """The offset after the last record of ``log`` (topic, partition, topic id) that
        :meth:`records_in` counted in this process (-1: none)."""
        return self._read_to.get(log, -1)

    def records_in(self, log: tuple[str, int, str | None], count: int, end: int) -> None:
        """``count`` records of ``log`` read for the first time in this process, up to the
        offset ``end`` (exclusive). Counted at once, in either mode, each record once: the
        records an exactly-once abort rewinds are read again and not counted again (they
        are the loop's work in progress: tests and dashboards watch it move)."""
        topic, partition, _ = log
        self._read_to[log] = max(self._read_to.get(log, -1), end)
        if count:
            self.counter("streamherd_records_in").labels(self.pipeline, topic, str(partition)).inc(
                count
            )

    def records_lost(self, topic: str, partition: int, count: int) -> None:
        self._add(
            self.counter("streamherd_records_lost").labels(self.pipeline, topic, str(partition)),
            count,
        )

    def repartition_records_in(self, topic: str, partition: int, count: int) -> None:
        self._add(
            self.counter("streamherd_repartition_records_in").labels(
                self.pipeline, topic, str(partition)
            ),
            count,
        )

    def set_partition(self, name: str, topic: str, partition: int, value: float) -> None:
        self.gauge(name).labels(self.pipeline, topic, str(partition)).set(value)

    def set_lag(self, lags: Mapping[tuple[str, int], int | None]) -> None:
        """One lag refresh: each owned partition's lag (None: not measured this time, its
        last value stands) and their total, as one snapshot. A scrape sees
        ``streamherd_worker_consumer_lag`` (and its deprecated twin) equal to the sum of the
        ``streamherd_consumer_lag`` series it shows, never one refresh's partitions beside
        another's total."""
        with self._lag_lock:
            gauge = self.gauge("streamherd_consumer_lag")
            for (topic, partition), lag in lags.items():
                if lag is not None:
                    self._lags[(topic, partition)] = lag
                    gauge.labels(self.pipeline, topic, str(partition)).set(lag)
            self._set_lag_total()

    def _set_lag_total(self) -> None:
        total = sum(self._lags.values())
        for gauge in self._lag_totals:
            gauge.set(total)

    def partition_held(self, topic: str, partition: int, reason: str | None) -> None:
        """The partition is held for ``reason`` (one of :data:`HELD_REASONS`), or no longer
        held (None): its ``streamherd_partition_held`` series, one at a time."""
        assert reason is None or reason in HELD_REASONS, reason
        gauge = self.gauge("streamherd_partition_held")
        before = self._held.pop((topic, partition), None)
        if before is not None and before != reason:
            with contextlib.suppress(KeyError):
                gauge.remove(self.pipeline, topic, str(partition), before)
        if reason is not None:
            self._held[(topic, partition)] = reason
            gauge.labels(self.pipeline, topic, str(partition), reason).set(1)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop per-partition gauges of a partition this worker no longer owns (and its lag
        from the total, in the same snapshot)."""
        self.partition_held(topic, partition, None)
        with self._lag_lock:
            if self._lags.pop((topic, partition), None) is not None:
                self._set_lag_total()
            for name in (
                "streamherd_consumer_lag",
                "streamherd_event_time_lag_seconds",
                "streamherd_watermark_seconds",
                "streamherd_state_restore_refused",
            ):
                with contextlib.suppress(KeyError):
                    self.gauge(name).remove(self.pipeline, topic, str(partition))

    def render(self) -> bytes:
        with self._lag_lock:
            return generate_latest(self.registry)


class _Deferred:
    """A counter child whose increments go through :meth:`EngineMetrics._add`."""

    def __init__(self, metrics: EngineMetrics, child: Any) -> None:
        self._metrics = metrics
        self._child = child

    def inc(self, amount: float = 1) -> None:
        self._metrics._add(self._child, amount)


class SinkMetrics:
    """How the outputs report to the engine's metrics, in one place: the ``streamherd_sink_*``
    series of a sink that confirms its writes (workers/sinks_postgres.py and
    workers/sinks_postgres_offsets.py), labelled with the sink, and the dead-letter counts of
    the outputs (workers/sinks.py). Without an engine's metrics (a sink made alone, in a
    test) every call does nothing, so no caller checks for them."""

    def __init__(self, metrics: EngineMetrics | None, sink: str = "") -> None:
        self._metrics = metrics
        self._labels = (metrics.pipeline if metrics is not None else "", sink)

    def confirming(self) -> None:
        """The sink confirms its writes: its series exist from the start (down, nothing
        pending), before its first connection."""
        self.up(False)
        self.pending(0)

    def up(self, up: bool) -> None:
        if self._metrics is not None:
            self._metrics.gauge("streamherd_sink_up").labels(*self._labels).set(1 if up else 0)

    def pending(self, records: int) -> None:
        if self._metrics is not None:
            self._metrics.gauge("streamherd_sink_pending_records").labels(*self._labels).set(
                records
            )

    def failed(self, kind: str) -> None:
        """A write attempt failed: ``connection``, ``sql`` or ``client``
        (workers/sinks_postgres.py: failure_kind), or ``fenced``. A new kind is named in
        the help text of ``streamherd_sink_errors`` and docs/monitoring.md
        (tests/unit/monitoring/test_sink_error_kinds.py)."""
        if self._metrics is not None:
            self._metrics.counter("streamherd_sink_errors").labels(*self._labels, kind).inc()

    def written(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` confirmed, written and committed in ``seconds``."""
        if self._metrics is not None:
            self._metrics.histogram("streamherd_sink_write_duration_seconds").labels(
                *self._labels
            ).observe(seconds)
            self._metrics.counter("streamherd_sink_rows_written").labels(*self._labels).inc(rows)

    def result_dead_lettered(self) -> None:
        """A result the sink cannot take went to the dead-letter topic (reason ``sink``)."""
        if self._metrics is not None:
            self._metrics.results_dead_lettered.inc()

    def dead_letter_truncated(self) -> None:
        if self._metrics is not None:
            self._metrics.truncated.inc()

    def dead_letter_lost(self) -> None:
        """Even a dead letter's headers alone were refused."""
        if self._metrics is not None:
            self._metrics.error("dead-letter-refused")


Probe = Callable[[], tuple[bool, str]]


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a daemon thread."""

    def __init__(
        self, metrics: EngineMetrics, port: int, healthy: Probe, ready: Probe, host: str = ""
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (outer.healthy if path == "/healthz" else outer.ready)()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the structured logs

        self.healthy = healthy
        self.ready = ready
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="streamherd-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
