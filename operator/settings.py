"""Operator settings: command-line flags with environment-variable defaults.

The Helm chart sets the environment; ``streamherd operator --help`` documents every flag.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

DEFAULT_WORKER_IMAGE = "ghcr.io/streamherd/streamherd:0.1.0"


@dataclass(frozen=True)
class OperatorSettings:
    """Settings the builders and the reconciler need (never secrets)."""

    worker_image: str = DEFAULT_WORKER_IMAGE
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    field_manager: str = "streamherd-operator"
    default_poll_interval_seconds: float = 15.0
    resync_interval_seconds: float = 300.0
    metrics_port: int = 8080
    health_port: int = 8081
    peering: str | None = None  # kopf peering name for HA; None: standalone
    priority: int = 0
    max_workers: int = 20
    labels: dict[str, str] = field(default_factory=dict)


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--namespace",
        action="append",
        default=[n for n in env("STREAMHERD_WATCH_NAMESPACES", "").split(",") if n],
        help="watch only this namespace (repeat for several; default: all namespaces; "
        "env STREAMHERD_WATCH_NAMESPACES=a,b)",
    )
    parser.add_argument(
        "--worker-image",
        default=env("STREAMHERD_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="image for pipelines that do not set spec.image (env STREAMHERD_WORKER_IMAGE)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("STREAMHERD_METRICS_PORT", "8080")),
        help="operator Prometheus metrics port (0: off)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(env("STREAMHERD_HEALTH_PORT", "8081")),
        help="liveness endpoint port (0: off)",
    )
    parser.add_argument(
        "--peering",
        default=env("STREAMHERD_PEERING") or None,
        help="kopf peering name: run several replicas, exactly one active (HA)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=int(env("STREAMHERD_PRIORITY", "0")),
        help="peering priority of this replica",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=float(env("STREAMHERD_RESYNC_INTERVAL", "300")),
        help="seconds between level-based re-checks of each pipeline (drift repair)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=int(env("STREAMHERD_MAX_WORKERS", "20")),
        help="pipelines reconciled concurrently",
    )
    parser.add_argument(
        "--log-level",
        default=env("STREAMHERD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )
    parser.add_argument(
        "--log-format",
        default=env("STREAMHERD_LOG_FORMAT", "plain"),
        choices=["plain", "json"],
        help="log format",
    )
    parser.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG"),
        help="kubeconfig file (default: in-cluster, then ~/.kube/config)",
    )


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    return OperatorSettings(
        worker_image=args.worker_image,
        namespaces=tuple(args.namespace),
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        peering=args.peering,
        priority=args.priority,
        resync_interval_seconds=args.resync_interval,
        max_workers=args.max_workers,
    )
