"""kopf's run of one of the operator's deletion handlers, for the unit tests: the handler of
the registry the operator builds, called as kopf calls it on the stored pipeline marked as
being deleted, against the fake API server."""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from unittest import mock

import kopf

from streamherd.operator import handlers
from streamherd.operator.handlers import build_registry
from streamherd.operator.kube import Kube
from streamherd.operator.runtime import OperatorContext
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, body_of

REGISTRY = build_registry(SETTINGS)


def workers_stop_at_once() -> Any:
    """The deletion handlers' 1 s between looks at a Deployment they stopped, not waited:
    FakeKube deletes it at once (unless foreground_lingers), so the next look finds it gone
    and the second is only slept (a third of the lifecycle property's time)."""
    return mock.patch.object(handlers, "WORKERS_STOP_POLL_SECONDS", 0.0)


def run_deletion_handler(
    kube: FakeKube,
    handler_id: str,
    name: str,
    retry: int = 0,
    *,
    filtered: bool = False,
    topics: Any = None,
) -> str | None:
    """Run deletion handler `handler_id` for pipeline `name` (try `retry`); the
    TemporaryError it raised (None: it succeeded). `filtered`: assert first that its `when`
    filter takes the pipeline (it holds the finalizer). `topics`: the context's
    InternalTopics (None: not managed)."""
    (handler,) = [h for h in REGISTRY._changing.get_all_handlers() if h.id == handler_id]
    body = copy.deepcopy(body_of(kube, name))
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if filtered:
        assert handler.when is not None and handler.when(body=body)
    with ThreadPoolExecutor(max_workers=1) as pool, workers_stop_at_once():
        ctx = OperatorContext(settings=SETTINGS, kube=cast(Kube, kube), executor=pool)
        ctx.topics = topics
        try:
            asyncio.run(handler.fn(body=body, memo=kopf.Memo(ctx=ctx), retry=retry,
                                   namespace="default", name=name))  # fmt: skip
        except kopf.TemporaryError as error:
            return str(error)
    return None
