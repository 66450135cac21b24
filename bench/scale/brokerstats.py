"""Broker requests a lag probe sends, counted from librdkafka's statistics (bench/scale only).

A :class:`~streamherd.operator.lagprobe.LagProbe` has one admin client and, when it reads
``__consumer_offsets``, one consumer; both get ``statistics.interval.ms`` and this counter's
callback through ``extra_config``. Per client and broker, librdkafka's ``tx`` counts every
request really sent and ``req`` counts them by type for most types; the ones ``req`` leaves
out are reported as "other". The probe's OffsetFetch fallback is sent by short-lived
per-group consumers (``fetch_committed``) that close long before librdkafka's first
statistics tick; :meth:`RequestCounter.fetch_hook`, passed as the probe's ``fetch_hook``,
keeps each of them open until it reported once after its OffsetFetch answered, so their
requests are counted too (bench_lagprobe.py; the operator passes no hook, so
run_operator.py, which counts the operator's own probes, does not see them). Used by
run_operator.py (the operator at scale) and bench_lagprobe.py (the probe alone).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from confluent_kafka import Consumer

OTHER = "other (OffsetFetch...)"


class RequestCounter:
    """The latest totals of every client that reported statistics, summed on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, dict[str, int]] = {}
        # The librdkafka time (rd_clock: CLOCK_MONOTONIC, microseconds) of the newest report
        # served on this thread: fetch_hook waits for one newer than its start.
        self._served = threading.local()
        self.hook_seconds = 0.0  # total time fetch_hook waited (all threads)
        self.hooked = 0  # fallback consumers that reported through fetch_hook
        self.hook_timeouts = 0  # ... and those that did not report in time (not counted)

    def config(self, interval_ms: int = 1000) -> dict[str, Any]:
        """librdkafka properties that make a client report here every ``interval_ms``."""
        return {"statistics.interval.ms": interval_ms, "stats_cb": self.on_stats}

    def fetch_hook(self, consumer: Consumer, timeout: float = 5.0) -> None:
        """Serve ``consumer``'s statistics until it reported once after this call began.

        Called by ``fetch_committed`` after the OffsetFetch answered and before close: every
        request that consumer sends (connections, FindCoordinator, OffsetFetch) is then in
        ``tx``. Waits up to one statistics interval (the consumer's, from ``config``).
        """
        began = time.monotonic()
        self._served.ts = None
        while True:
            # poll() on a consumer that never subscribed returns no message; it serves the
            # statistics callback (on this thread, hence the thread-local).
            consumer.poll(0.005)
            ts = self._served.ts
            reported = ts is not None and ts / 1e6 >= began
            if reported or time.monotonic() - began > timeout:
                break
        with self._lock:
            self.hook_seconds += time.monotonic() - began
            if reported:
                self.hooked += 1
            else:
                self.hook_timeouts += 1

    def on_stats(self, text: str) -> None:
        stats = json.loads(text)
        self._served.ts = int(stats.get("ts") or 0)
        requests: dict[str, int] = {}
        sent = 0
        for broker in (stats.get("brokers") or {}).values():
            sent += int(broker.get("tx") or 0)
            for kind, count in (broker.get("req") or {}).items():
                requests[kind] = requests.get(kind, 0) + int(count)
        requests = {k: v for k, v in requests.items() if v}
        requests[OTHER] = sent - sum(requests.values())
        with self._lock:
            # Totals since the client started: the newest report replaces the older one.
            self._clients[str(stats.get("name"))] = requests

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for requests in self._clients.values():
                for kind, count in requests.items():
                    out[kind] = out.get(kind, 0) + count
        return {k: v for k, v in sorted(out.items()) if v}


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    return {k: v for k, v in sorted(out.items()) if v}
