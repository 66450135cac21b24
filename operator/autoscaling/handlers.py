"""Wires the builtin autoscaler into the operator: one loop, status, Events, metrics.

``register_autoscaler(registry)`` adds to the operator's kopf registry (built by
``streamherd.operator.handlers.build_registry``):

- an index of the pipelines in ``builtin`` mode (not suspended, with a Kafka source) and
  their poll intervals, fed by :meth:`AutoscalerState.track` from the operator's one
  on.event handler of the pipelines (or, ``index_events=True``, by an on.event handler of
  its own);
- a start-up handler that starts one :meth:`Autoscaler.run` loop for all of them, and a
  clean-up handler that stops it and closes the Kafka admin connections.

For each due pipeline the loop reads the pipeline and its Deployment, asks
:meth:`Autoscaler.evaluate`, writes ``status.desiredReplicas``, ``lag``, ``lastScaleTime`` and
``lastScaleReason`` (only when they change), posts an Event per scaling decision, updates the
operator metrics and, when the replica count changes, calls the reconcile it was given (the
operator's ``runtime.reconcile_key``) so the Deployment is applied with the new count (the
workload builder reads ``status.desiredReplicas``). Status keys written here are the ones the
reconciler leaves alone (reconciler.OWN_STATUS_KEYS).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import kopf
from prometheus_client import Counter, Gauge

from streamherd.operator.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION, StreamPipeline
from streamherd.operator.autoscaling.decision import NO_DATA, REASONS, STEADY
from streamherd.operator.autoscaling.poller import Autoscaler, ScaleResult
from streamherd.operator.builders.meta import config_map_name
from streamherd.operator.events import event_body
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.kafkalogging import shared_kafka_log
from streamherd.operator.kube import ApiError, Manifest
from streamherd.operator.lagprobe import ClusterConfig, LagProbe
from streamherd.operator.reconciler import EventNote
from streamherd.operator.upgrades import config_source
from streamherd.operator.validation import parse_pipeline, stored_status
from streamherd.workers.config import parse_duration

log = logging.getLogger(__name__)

Key = tuple[str, str]
#: Reconciles one pipeline by key after a decision changed its replicas: the operator's
#: ``runtime.reconcile_key``, handed in by ``handlers.build_registry`` (unit tests hand in a
#: stand-in), so this layer does not depend on the runtime's context.
Reconcile = Callable[[Any, Key], Awaitable[object]]

PIPELINE_LAG: Final = Gauge(
    "streamherd_operator_pipeline_lag",
    "Total consumer lag of a pipeline as last measured by the operator (records).",
    ["namespace", "pipeline"],
)
DESIRED_REPLICAS: Final = Gauge(
    "streamherd_operator_desired_replicas",
    "Workers the builtin autoscaler wants for a pipeline.",
    ["namespace", "pipeline"],
)
SCALING_DECISIONS: Final = Counter(
    "streamherd_operator_scaling_decisions",
    "Autoscaling decisions by reason (Steady included; ScaleUp/ScaleDown/... change replicas).",
    ["namespace", "pipeline", "reason"],
)


def wants_builtin(body: Manifest) -> float | None:
    """The poll interval of a pipeline the builtin autoscaler manages, else None."""
    spec = body.get("spec") or {}
    scaling = spec.get("autoscaling") or {}
    if spec.get("suspend") or (scaling.get("mode") or "builtin") != "builtin":
        return None
    if not (spec.get("source") or {}).get("kafka"):
        return None
    try:
        return parse_duration(scaling.get("pollInterval") or "15s")
    except ValueError:
        return None


def status_patch(result: ScaleResult, status: Mapping[str, Any], now: datetime) -> Manifest:
    """The autoscaler's status keys that changed (empty: nothing to write)."""
    patch: Manifest = {}
    if result.lag is not None and status.get("lag") != result.lag:
        patch["lag"] = result.lag
    if result.reason != NO_DATA and status.get("desiredReplicas") != result.desired:
        patch["desiredReplicas"] = result.desired
    if result.changed and result.reason not in (NO_DATA, STEADY):
        patch["lastScaleTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        patch["lastScaleReason"] = f"{result.reason}: {result.message}"[:1024]
    return patch


@dataclass
class AutoscalerState:
    """The registry-level state: the index of managed pipelines and the running loop."""

    intervals: dict[Key, float] = field(default_factory=dict)
    autoscaler: Autoscaler | None = None
    task: asyncio.Task[None] | None = None
    # The parsed pipeline per key and resourceVersion: an idle pipeline's body does not
    # change between polls, and parsing it with the models was most of the idle CPU.
    parsed: dict[Key, tuple[str, StreamPipeline | None]] = field(default_factory=dict)

    def managed(self) -> Iterable[tuple[Key, float]]:
        return list(self.intervals.items())

    def track(self, type_: str | None, key: Key, body: Manifest | kopf.Body) -> None:
        """Index a pipeline event (DELETED, or a body that may or may not be builtin)."""
        interval = None if type_ == "DELETED" else wants_builtin(dict(body))
        if interval is None:
            self.intervals.pop(key, None)
            self.parsed.pop(key, None)
            forget_series(key)
        else:
            self.intervals[key] = interval


def forget_series(key: Key) -> None:
    """Remove a pipeline's series once the autoscaler no longer manages it (deleted,
    suspended, another mode or source): kept, the gauges showed its last lag and count for
    good, and its decisions' counters would pile up with every pipeline ever scaled."""
    for gauge in (PIPELINE_LAG, DESIRED_REPLICAS):
        with contextlib.suppress(KeyError):  # never set
            gauge.remove(*key)
    for reason in REASONS:
        with contextlib.suppress(KeyError):
            SCALING_DECISIONS.remove(*key, reason)


def valid_pipeline(body: Manifest) -> StreamPipeline | None:
    """The pipeline model of `body`, or None when the reconciler refuses it (the same rule
    set: operator/validation.py): the autoscaler leaves such a pipeline alone, quietly,
    since its status already says what is wrong."""
    pipeline, problems = parse_pipeline({k: v for k, v in body.items() if k != "status"})
    if pipeline is None or problems:
        return None
    return StreamPipeline.model_validate(body)


def parse_cached(
    body: Manifest, key: Key, cache: dict[Key, tuple[str, StreamPipeline | None]]
) -> StreamPipeline | None:
    """valid_pipeline(body), parsed once per resourceVersion."""
    version = str((body.get("metadata") or {}).get("resourceVersion") or "")
    hit = cache.get(key)
    if version and hit is not None and hit[0] == version:
        return hit[1]
    pipeline = valid_pipeline(body)
    if version:
        cache[key] = (version, pipeline)
    return pipeline


async def scale_once(
    ctx: Any,
    autoscaler: Autoscaler,
    key: Key,
    parsed: dict[Key, tuple[str, StreamPipeline | None]] | None = None,
    *,
    reconcile: Reconcile,
    managed: Callable[[Key], bool] | None = None,
) -> ScaleResult | None:
    """One autoscaling round for one pipeline (``ctx``: the operator's OperatorContext;
    ``parsed``: a cache of parsed pipelines, see :func:`parse_cached`; ``reconcile``: called
    when the Deployment must change; ``managed``: whether the index still holds a key)."""
    namespace, name = key
    loop = asyncio.get_running_loop()
    kube = ctx.kube
    # Writes go to the refresh pool when there is one: while a burst of creates fills the
    # reconcile pool, the autoscaler's first decisions must not wait for all of it (they
    # then landed after convergence, as writes of "idle" pipelines; docs/scale.md).
    pool = getattr(ctx, "refresh_executor", None) or ctx.executor
    body = await _read(kube, pool, f"{GROUP}/{VERSION}", KIND, namespace, name)
    if body is None or wants_builtin(body) is None:
        return None
    pipeline = valid_pipeline(body) if parsed is None else parse_cached(body, key, parsed)
    if pipeline is None:
        return None  # invalid: the reconciler's status says why; nothing to scale
    # The lag of what the workers run: an edit of the group or the topics held (a state
    # change refused) leaves them on the ConfigMap's; measured by the spec, the new group
    # with no offsets read as the whole log, and the held pipeline scaled up for it (a
    # review's finding).
    live_config = await _read(kube, pool, "v1", "ConfigMap", namespace, config_map_name(name))
    pipeline = as_running(pipeline, live_config)
    dep = await _read(kube, pool, "apps/v1", "Deployment", namespace, name)
    if dep is None:
        # Not created yet (the reconciler creates it at minReplicas): no replicas to start
        # from. Deciding now would read "0 running" and report a wake-up from zero for a
        # pipeline that was never at zero; the next round measures against the Deployment.
        return None
    spec_replicas = int((dep.get("spec") or {}).get("replicas") or 0)
    status = stored_status(body)
    wanted = status.get("desiredReplicas")
    current = int(wanted) if isinstance(wanted, int) else spec_replicas
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    result = await autoscaler.evaluate(pipeline, current, running=min(ready, current))
    # The lag took a round trip or more: a pipeline switched away from builtin meanwhile
    # (the reconciler clears this era's keys) must not get them back from this decision.
    now_body = await _read(kube, pool, f"{GROUP}/{VERSION}", KIND, namespace, name)
    if now_body is None or wants_builtin(now_body) is None:
        return None
    patch = status_patch(result, status, datetime.now(UTC))
    if patch:
        # Only onto the pipeline as just read: a write of the reconciler in between (one
        # that ends this autoscaler's era, say) makes it a conflict, and the next round
        # decides again from what is there, rather than write this decision over it.
        version = (now_body.get("metadata") or {}).get("resourceVersion")
        write = functools.partial(kube.patch_status, namespace, name, patch, version)
        try:
            await loop.run_in_executor(pool, write)
        except ApiError as e:
            if e.status != 409:
                raise
            log.debug("scaling decision for %s/%s not written: %s", namespace, name, e)
            return None
    if managed is None or managed(key):
        # A pipeline deleted (or switched away) while the decision was written: the index
        # removed its series then (forget_series), and set now they would stay for good.
        SCALING_DECISIONS.labels(namespace, name, result.reason).inc()
        if result.lag is not None:
            PIPELINE_LAG.labels(namespace, name).set(result.lag)
        DESIRED_REPLICAS.labels(namespace, name).set(result.desired)
    if "lastScaleTime" in patch:
        note = EventNote(
            "Normal", result.reason, f"{current} -> {result.desired}: {result.message}"
        )
        try:
            await loop.run_in_executor(pool, kube.create_event, event_body(body, note))
        except ApiError as e:  # events are best effort
            log.debug("could not post scaling event for %s/%s: %s", namespace, name, e)
        log.info(
            "scaled %s/%s %d -> %d (%s)", namespace, name, current, result.desired, result.message
        )
    if "desiredReplicas" in patch and (dep is None or result.desired != spec_replicas):
        # Only when the Deployment must change: a first decision that keeps the replicas
        # (the common case for a new pipeline) needs no reconcile.
        await reconcile(ctx, key)
    return result


def as_running(pipeline: StreamPipeline, config_map: Manifest | None) -> StreamPipeline:
    """``pipeline`` with the consumer group and source topics its workers' ConfigMap gives
    them, where they differ from the spec's (an edit held, or not rolled out yet)."""
    kafka = pipeline.spec.source.kafka
    group, topics = config_source(config_map)  # one parse: this runs every poll
    if kafka is None or (
        group in (None, pipeline.consumer_group) and topics in (None, tuple(kafka.topics))
    ):
        return pipeline
    update: dict[str, Any] = {}
    if group is not None:
        update["consumer_group"] = group
    if topics is not None:
        update["topics"] = list(topics)
    source = pipeline.spec.source.model_copy(update={"kafka": kafka.model_copy(update=update)})
    spec = pipeline.spec.model_copy(update={"source": source})
    return pipeline.model_copy(update={"spec": spec})


async def _read(kube: Any, pool: Any, *ref: str) -> Manifest | None:
    """kube.get(api_version, kind, namespace, name) answered from the watch cache without a
    thread when it can be (memory only), else in `pool`."""
    cache = getattr(kube, "cache", None)
    if cache is not None:
        hit, obj = cache.lookup(*ref)
        if hit:
            found: Manifest | None = obj
            return found
    loop = asyncio.get_running_loop()
    got: Manifest | None = await loop.run_in_executor(pool, kube.get, *ref)
    return got


def logged_probe(cluster: ClusterConfig) -> LagProbe:
    """A lag probe whose librdkafka lines go through our logger (operator/kafkalogging.py)."""
    return LagProbe(cluster, extra_config={"logger": shared_kafka_log(cluster.describe())})


def register_autoscaler(
    registry: Any, *, reconcile: Reconcile, index_events: bool = True, **autoscaler_kwargs: Any
) -> AutoscalerState:
    """Add the builtin autoscaler's handlers to a kopf registry; returns its state.

    reconcile: what applies a pipeline's new replica count (the operator's reconcile_key).

    index_events: register an on.event handler of its own for the index; False when the
    caller feeds :meth:`AutoscalerState.track` from its own handler (the operator does).
    """
    state = AutoscalerState()
    resource = (GROUP, VERSION, PLURAL)

    if index_events:

        @kopf.on.event(*resource, id="autoscaler-index", registry=registry)
        async def index(
            type: str | None, body: kopf.Body, namespace: str | None, name: str | None, **_: Any
        ) -> None:
            state.track(type, (str(namespace or "default"), str(name or "")), body)

    @kopf.on.startup(id="autoscaler-start", registry=registry)
    async def start(memo: kopf.Memo, **_: Any) -> None:
        ctx = memo["ctx"]
        kwargs = {"probe_factory": logged_probe, **autoscaler_kwargs}
        autoscaler = Autoscaler(
            resolve_cluster=lambda p: cluster_from_secrets(ctx.kube, p), **kwargs
        )
        state.autoscaler = autoscaler

        async def act(key: Key) -> None:
            # HA: kopf pauses its handlers in standby replicas, not this loop (peering.py).
            if await ctx.is_active():
                await scale_once(
                    ctx,
                    autoscaler,
                    key,
                    state.parsed,
                    reconcile=reconcile,
                    managed=state.intervals.__contains__,
                )

        state.task = asyncio.create_task(
            autoscaler.run(state.managed, act), name="streamherd-autoscaler"
        )

    @kopf.on.cleanup(id="autoscaler-stop", registry=registry)
    async def stop(**_: Any) -> None:
        if state.task is not None:
            state.task.cancel()
        if state.autoscaler is not None:
            state.autoscaler.close()

    _ = (start, stop)
    return state


__all__ = [
    "AutoscalerState",
    "Reconcile",
    "parse_cached",
    "register_autoscaler",
    "scale_once",
    "status_patch",
    "wants_builtin",
]
