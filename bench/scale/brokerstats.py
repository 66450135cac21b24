"""Broker requests a lag probe sends, counted from librdkafka's statistics (bench/scale only).

A :class:`~streamherd.workers.lagprobe.LagProbe` has one admin client and, when it reads
``__consumer_offsets``, one consumer; both get ``statistics.interval.ms`` and this counter's
callback through ``extra_config``. Per client and broker, librdkafka's ``tx`` counts every
request really sent and ``req`` counts them by type for most types; the ones ``req`` leaves
out are reported as "other". The probe's OffsetFetch fallback is sent by short-lived
per-group consumers that never serve callbacks, so its requests are not counted here.
Used by run_operator.py (the operator at scale) and bench_lagprobe.py (the probe alone).
"""

from __future__ import annotations

import json
import threading
from typing import Any

OTHER = "other (OffsetFetch...)"


class RequestCounter:
    """The latest totals of every client that reported statistics, summed on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, dict[str, int]] = {}

    def config(self) -> dict[str, Any]:
        """librdkafka properties that make a client report here every second."""
        return {"statistics.interval.ms": 1000, "stats_cb": self.on_stats}

    def on_stats(self, text: str) -> None:
        stats = json.loads(text)
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
