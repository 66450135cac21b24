"""`streamherd operator`, with the lag probe's broker requests counted (bench/scale only).

bench_scale.py starts the operator through this file instead of `streamherd operator` so it
can count what the builtin autoscaler asks of the Kafka brokers. Nothing else changes: the
operator, its handlers and its lag probe are the real ones. The probe class the autoscaler
builds per cluster (``poller.LagProbe``) is swapped for a subclass that

- turns on librdkafka's statistics (``statistics.interval.ms``) on both long-lived clients
  of the probe, the admin client and the ``__consumer_offsets`` reader (brokerstats.py):
  per broker, ``tx`` counts every request the client really sent, and ``req`` some of them
  by type (Metadata, ListOffsets, Fetch, FindCoordinator, ...; the rest is "other"). The
  OffsetFetch fallback's short-lived per-group consumers live for one request and are never
  polled, so they report no statistics: the fallback shows in ``from_fetch`` (groups), not
  in the request counts;
- counts ``measure_many`` calls and the groups in them, and how many groups were answered
  from the offsets topic or by OffsetFetch (the fallback);

and writes the running totals, as JSON, to the file named by STREAMHERD_BENCH_BROKER_STATS
after every call (atomically: temp file + rename).

    python -m bench.scale.run_operator --kubeconfig ... [any `streamherd operator` flag]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.scale.brokerstats import RequestCounter
from streamherd import cli
from streamherd.operator.autoscaling import handlers as autoscaling_handlers
from streamherd.operator.autoscaling import poller
from streamherd.operator.lagprobe import (
    ClusterConfig,
    GroupLag,
    GroupSpec,
    LagProbe,
    LagProbeError,
)

STATS_FILE = os.environ.get("STREAMHERD_BENCH_BROKER_STATS")
_lock = threading.Lock()
_poll_lock = threading.Lock()
# cluster description -> {"calls", "groups", "from_topic", "from_fetch", "requests": {...}}
_totals: dict[str, dict[str, Any]] = {}
_counters: dict[str, RequestCounter] = {}


def _write() -> None:
    if not STATS_FILE:
        return
    for name, counter in _counters.items():
        _totals[name]["requests"] = counter.totals()
    tmp = Path(f"{STATS_FILE}.tmp")
    tmp.write_text(json.dumps({"time": time.time(), "clusters": _totals}))
    tmp.replace(STATS_FILE)


class CountingProbe(LagProbe):
    """A LagProbe that reports librdkafka's request counters and its own call counts."""

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        extra_config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._name = cluster.describe()
        with _lock:
            _totals.setdefault(
                self._name,
                {"calls": 0, "groups": 0, "from_topic": 0, "from_fetch": 0, "requests": {}},
            )
            counter = _counters.setdefault(self._name, RequestCounter())
        # Everything else (timeouts, read_offsets_topic, fetch_hook) is LagProbe's own.
        super().__init__(
            cluster, extra_config={**(extra_config or {}), **counter.config()}, **options
        )

    def measure_many(self, specs: Sequence[GroupSpec]) -> dict[str, GroupLag | LagProbeError]:
        before = (self.counters.from_topic, self.counters.from_fetch)
        result = super().measure_many(specs)
        # Statistics callbacks are served by poll() on the admin client's main queue and by
        # the reader's consumer; one thread at a time.
        # Local references: a concurrent close() may drop the probe's own.
        admin, reader = self._admin, self.reader
        with _poll_lock:
            if admin is not None:
                admin.poll(0)
            if reader is not None:
                reader.serve()
        with _lock:
            totals = _totals[self._name]
            totals["calls"] += 1
            totals["groups"] += len(specs)
            totals["from_topic"] += self.counters.from_topic - before[0]
            totals["from_fetch"] += self.counters.from_fetch - before[1]
            _write()
        return result


# The autoscaler builds its probes through handlers.logged_probe, which names the class
# in its own module; poller.Autoscaler's default (no factory given) names it in poller.
# Both are swapped: swapping only poller's left the probe uncounted (0 requests reported).
setattr(poller, "LagProbe", CountingProbe)  # noqa: B010
setattr(autoscaling_handlers, "LagProbe", CountingProbe)  # noqa: B010

if __name__ == "__main__":
    sys.exit(cli.main(["operator", *sys.argv[1:]]))
