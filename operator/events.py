"""Events about a pipeline: the core/v1 Event body that the reconciler's notes and the
autoscaler's decisions are posted as (by operator/handlers.py and
operator/autoscaling/handlers.py). Pure: the caller posts it, best effort."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from streamherd.operator.api.v1alpha1 import GROUP, KIND, VERSION
from streamherd.operator.builders.meta import MANAGED_BY, Manifest
from streamherd.operator.reconciler import EventNote


def event_body(pipeline: Manifest, note: EventNote) -> Manifest:
    """A core/v1 Event about the pipeline (the autoscaler posts its decisions with it)."""
    meta = pipeline.get("metadata", {})
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": note.type,
        "reason": note.reason,
        "message": note.message[:1024],
        "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


__all__ = ["event_body"]
