"""`streamherd operator`, with the lag probe's broker requests counted (bench/scale only).

bench_scale.py starts the operator through this file instead of `streamherd operator` so it
can count what the builtin autoscaler asks of the Kafka brokers. Nothing else changes: the
operator, its handlers and its lag probe are the real ones. The probe class the autoscaler
builds per cluster (``poller.LagProbe``) is swapped for a subclass that

- turns on librdkafka's statistics (``statistics.interval.ms``): per broker, ``tx`` counts
  every request the client really sent, and ``req`` some of them by type (Metadata,
  ListOffsets, FindCoordinator, ...; OffsetFetch is not among them, so the rest is reported
  as "other");
- counts ``measure_many`` calls and the groups in them;

and writes the running totals, as JSON, to the file named by STREAMHERD_BENCH_BROKER_STATS
after every call (atomically: temp file + rename).

    python bench/scale/run_operator.py --kubeconfig ... [any `streamherd operator` flag]
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streamherd import cli  # noqa: E402
from streamherd.operator.autoscaling import poller  # noqa: E402
from streamherd.workers.lagprobe import (  # noqa: E402
    ClusterConfig,
    GroupLag,
    GroupSpec,
    LagProbe,
    LagProbeError,
)

STATS_FILE = os.environ.get("STREAMHERD_BENCH_BROKER_STATS")
_lock = threading.Lock()
_poll_lock = threading.Lock()
# cluster description -> {"calls", "groups", "requests": {type: count}}
_totals: dict[str, dict[str, Any]] = {}


def _write() -> None:
    if not STATS_FILE:
        return
    tmp = Path(f"{STATS_FILE}.tmp")
    tmp.write_text(json.dumps({"time": time.time(), "clusters": _totals}))
    tmp.replace(STATS_FILE)


class CountingProbe(LagProbe):
    """A LagProbe that reports librdkafka's request counters and its own call counts."""

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        request_timeout: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._name = cluster.describe()
        with _lock:
            _totals.setdefault(self._name, {"calls": 0, "groups": 0, "requests": {}})
        extra = {
            **(extra_config or {}),
            "statistics.interval.ms": 1000,
            "stats_cb": self._on_stats,
        }
        super().__init__(cluster, request_timeout=request_timeout, extra_config=extra)

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        requests: dict[str, int] = {}
        sent = 0
        for broker in (stats.get("brokers") or {}).values():
            sent += int(broker.get("tx") or 0)
            for kind, count in (broker.get("req") or {}).items():
                requests[kind] = requests.get(kind, 0) + int(count)
        requests = {k: v for k, v in requests.items() if v}
        # librdkafka's `req` leaves some request types out (OffsetFetch among them); `tx`
        # counts every request sent, so the difference is reported as "other".
        requests["other (OffsetFetch...)"] = sent - sum(requests.values())
        with _lock:
            _totals[self._name]["requests"] = requests
            _write()

    def measure_many(self, specs: Sequence[GroupSpec]) -> dict[str, GroupLag | LagProbeError]:
        result = super().measure_many(specs)
        with _lock:
            _totals[self._name]["calls"] += 1
            _totals[self._name]["groups"] += len(specs)
            _write()
        # Statistics callbacks are served by poll() on the admin client's main queue; one
        # thread at a time.
        with _poll_lock:
            if self._admin is not None:
                self._admin.poll(0)
        return result


# The autoscaler builds its probes from this module attribute (poller.Autoscaler default).
setattr(poller, "LagProbe", CountingProbe)  # noqa: B010

if __name__ == "__main__":
    sys.exit(cli.main(["operator", *sys.argv[1:]]))
