"""`streamherd operator`: configure logging, build the kopf registry and run the operator.

Works with the handlers in operator/handlers.py and the flags in operator/settings.py.
The operator watches all namespaces unless --namespace is given (repeatable), serves a
kopf liveness endpoint on --health-port, and stops cleanly on SIGINT/SIGTERM (kopf's own
signal handling).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
import prometheus_client

from streamherd.operator.handlers import OperatorContext, build_registry
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.kube import Kube
from streamherd.operator.peering import PeeringGate
from streamherd.operator.settings import OperatorSettings, settings_from_args
from streamherd.operator.topicadmin import InternalTopics

#: Fields our loggers pass with `extra=` that a JSON line carries (operator/kafkalogging.py).
EXTRA_FIELDS = ("kafka_cluster", "kafka_facility")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (for log collectors)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in EXTRA_FIELDS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client logs request bodies at debug level (Secrets!): keep it quiet.
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


async def operate(
    settings: OperatorSettings,
    kube: Kube,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until stopped (a stop flag, or a signal)."""
    workers, refresh = pool_sizes(settings)
    ctx = OperatorContext(
        settings=settings,
        kube=kube,
        executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile"),
        refresh_executor=ThreadPoolExecutor(max_workers=refresh, thread_name_prefix="refresh"),
        # A reconcile applies at most four children of a wave besides the one it applies
        # itself, and seldom more than two (docs/scale.md).
        apply_pool=ThreadPoolExecutor(
            max_workers=2 * (workers + refresh), thread_name_prefix="apply"
        ),
        event_pool=ThreadPoolExecutor(max_workers=2, thread_name_prefix="event"),
        # The internal topics' admin clients resolve credentials as the lag probe does.
        topics=InternalTopics(
            resolve_cluster=lambda p: cluster_from_secrets(kube, p),
            recheck=settings.resync_interval_seconds,
        ),
    )
    # Our identity among kopf peers, known to us so the PeeringGate can find it: the pod
    # name (POD_ID, kopf's own convention, set by the chart) or a unique local one.
    identity = os.environ.get("POD_ID") or (
        f"streamherd@{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
    )
    if settings.peering:
        ctx.gate = PeeringGate(
            kube=kube,
            peering=settings.peering,
            identity=identity,
            priority=settings.priority,
            namespaces=settings.namespaces,
        )
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    await kopf.operator(
        identity=cast(Any, identity),
        registry=build_registry(settings),
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=liveness,
        memo=kopf.Memo(ctx=ctx),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def pool_sizes(settings: OperatorSettings) -> tuple[int, int]:
    """(reconcile threads, refresh threads): the refresh pool is half the reconcile pool,
    at least two. A refresh mostly writes a status after pods became ready; at N=1000 a
    fifth (4) fell ~140 pipelines behind their pods (docs/scale.md)."""
    workers = max(settings.max_workers, 1)
    return workers, max(2, workers // 2)


def run_operator(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    settings = settings_from_args(args)
    # Optional APIs (monitoring.coreos.com, keda.sh) installed later are noticed within a
    # resync: discovery answers are cached for at most one resync interval (and 60 s).
    kube = Kube.from_kubeconfig(
        args.kubeconfig,
        discovery_ttl=min(60.0, settings.resync_interval_seconds),
        # every thread that may send a request at once: reconcile, refresh, apply (twice
        # both), events, the autoscaler's, one watch per cached kind and namespace
        pool_size=3 * sum(pool_sizes(settings)) + 2 + 16 + 12 * max(1, len(settings.namespaces)),
    )
    logging.getLogger(__name__).info(
        "streamherd operator starting: namespaces=%s resync=%ss worker image %s",
        list(settings.namespaces) or "all",
        settings.resync_interval_seconds,
        settings.worker_image,
    )
    if settings.metrics_port:
        # The operator's own metrics (reconciles, autoscaler decisions, lag, replicas).
        prometheus_client.start_http_server(settings.metrics_port)
    try:
        asyncio.run(operate(settings, kube))
    except KeyboardInterrupt:
        return 0
    return 0
