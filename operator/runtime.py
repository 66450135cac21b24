"""The controller runtime around the reconciler: what runs ``reconciler.reconcile`` for one
pipeline, when, and where.

``OperatorContext`` holds the shared state, created once at start-up (operator/main.py) and
handed to kopf's handlers in its memo (no globals): the thread pools, a lock per pipeline,
the pipelines known and the Secrets each references, the queued and the delayed reconciles.

- ``reconcile_key`` runs one reconcile in a thread (the kubernetes client is blocking) under
  the pipeline's lock, on a fresh read of the pipeline so it never works from a stale body,
  and posts its Events; a reconcile that asks for it is run again later (``retry_later``).
- Triggers that may fire in bursts (child events, the resync, the autoscaler, retries) go
  through ``schedule`` / ``reconcile_quietly``, which coalesce: at most one reconcile per
  pipeline waits while one runs, and the waiting one reads the newest state, so a rollout's
  dozen Deployment updates cost two or three reconciles, not a dozen.
- ``start_runtime`` starts the watch cache (operator/kubecache.py), whose events of owned
  children schedule reconciles: any change of a Deployment (status follows pods becoming
  Ready), the deletion of any child (it is recreated at once); and one operator-wide
  ``resync_loop`` that visits every known pipeline once per ``resync_interval``, spread
  evenly, so drift (a hand-edited or deleted child) is repaired. It replaces per-pipeline
  kopf timers, which would force a finalizer on every pipeline. ``stop_runtime`` stops them.

Reads come from the watch cache, so an unchanged pipeline costs no API call but the Secrets
it references. The kopf handlers that call into this (operator/handlers.py) and the builtin
autoscaler's (operator/autoscaling/handlers.py, handed ``reconcile_key``) sit above it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from streamherd.operator.api.v1alpha1 import GROUP, KIND, VERSION, StreamPipeline
from streamherd.operator.builders import CHILD_KINDS
from streamherd.operator.builders.meta import INSTANCE_LABEL, MANAGED_BY, PIPELINE_LABEL, WORKER_APP
from streamherd.operator.events import event_body
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.kube import ApiError, Kube, Manifest
from streamherd.operator.kubecache import start_cache
from streamherd.operator.peering import PeeringGate
from streamherd.operator.reconciler import ReconcileMemo, ReconcileResult, reconcile
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.shadowtopics import KafkaShadowClient
from streamherd.operator.topicadmin import InternalTopics
from streamherd.operator.validation import stored_status
from streamherd.operator.workerpods import counts_at, pod_trouble

log = logging.getLogger(__name__)

CACHE_SYNC_TIMEOUT: Final = 60.0
Key = tuple[str, str]  # (namespace, name)


#: How many pipelines' deletions the runtime remembers (OperatorContext.seen_deleting): far
#: more than can be deleted within a watch cache's lag, and a few hundred kB at most.
DELETIONS_KEPT: Final = 4096


@dataclass
class OperatorContext:
    """What the handlers share, created once at start-up and passed in (no globals)."""

    settings: OperatorSettings
    kube: Kube
    executor: ThreadPoolExecutor
    # A small pool for the reconciles that Deployment events trigger (pods became ready:
    # mostly a status refresh), so Ready follows the pods instead of queueing behind a
    # burst of creates in `executor` (None: they use `executor`).
    refresh_executor: ThreadPoolExecutor | None = None
    # Where a reconcile applies a wave of independent children concurrently (None: one
    # after the other), and where Events are posted without the reconcile waiting for them
    # (None: inline). Both must differ from the pools that run reconciles.
    apply_pool: ThreadPoolExecutor | None = None
    event_pool: ThreadPoolExecutor | None = None
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # The parsed spec and desired children of recent reconciles (reconciler.ReconcileMemo).
    memo: ReconcileMemo = field(default_factory=ReconcileMemo)
    # pipeline -> the Secrets it references, and the reverse index for Secret events
    secrets_of: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    resync_task: asyncio.Task[None] | None = None
    # Pipelines with a coalesced reconcile queued but not started (see reconcile_key).
    pending: set[Key] = field(default_factory=set)
    # pipeline -> the uid kopf has seen being deleted (see deleting()): no reconcile of it
    # from then on, whatever a watch cache behind kopf's watch still says.
    deleting: dict[Key, str] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # HA: our own loops (resync, autoscaler) run only in the active replica (kopf pauses
    # only its handlers). None: no peering, always active.
    gate: PeeringGate | None = None
    # Creates, checks and deletes internal Kafka topics (None: not managed, e.g. in tests
    # that run no broker; the workers then create what they need).
    topics: InternalTopics | None = None
    # Delayed reconciles asked for by a reconcile (internal topics not ready yet).
    retries: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    # Worker pod -> what it last said keeps it from being ready (operator/workerpods.py;
    # None: nothing). A change schedules its pipeline's reconcile (see start_watch_cache).
    pod_troubles: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # A later look at a pipeline whose pod waits for a node (workerpods.counts_at).
    looks: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)

    async def is_active(self) -> bool:
        """Whether this replica should run background work now (see operator/peering.py)."""
        if self.gate is None:
            return True
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.gate.is_active)

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def remember(self, key: Key) -> None:
        """A pipeline kopf has seen: the resync visits it, ``schedule`` takes it."""
        self.secrets_of.setdefault(key, ())

    def seen_deleting(self, key: Key, uid: str) -> None:
        """kopf has seen pipeline `key` (of `uid`) being deleted: its event handlers run
        before its deletion handlers, so from before they stop the workers and shadows and
        delete the topics, no reconcile of it makes anything. A reconcile reads the pipeline
        from the watch cache, which can be behind kopf's watch: queued by the deletion's
        own work (a Deployment deleted), it would apply the workers or the shadows again
        after the handlers have finished, to write their topics again on a broker that
        auto-creates topics (decision 0176 §8)."""
        if uid:
            self.deleting.pop(key, None)  # re-inserted: the most recent last
            self.deleting[key] = uid
            while len(self.deleting) > DELETIONS_KEPT:  # the oldest go first
                del self.deleting[next(iter(self.deleting))]

    def forget(self, key: Key) -> None:
        """A deleted pipeline: drop what the runtime keeps of it (a delayed retry is cancelled).
        Its deletion's record stays (one of the last :data:`DELETIONS_KEPT`): a reconcile
        queued before the pipeline went may read a watch cache that still has it."""
        self.secrets_of.pop(key, None)
        self.locks.pop(key, None)
        for timers in (self.retries, self.looks):
            waiting = timers.pop(key, None)
            if waiting is not None:
                waiting.cancel()
        if self.topics is not None:
            self.topics.forget(*key)

    def pipelines_using(self, namespace: str, secret: str) -> list[Key]:
        return sorted(
            key for key, names in self.secrets_of.items() if key[0] == namespace and secret in names
        )


def _reconcile_blocking(
    ctx: OperatorContext, key: Key, seen_generation: int | None = None
) -> tuple[Manifest | None, ReconcileResult | None]:
    """GET the pipeline, reconcile it, post the events. Runs in the thread pool.
    `seen_generation`: the generation kopf's watch saw (its handlers'), which the watch
    cache may not have yet."""
    namespace, name = key
    if ctx.kube.cache is not None:
        # After a (re)start, wait for the first lists rather than GET every child of every
        # pipeline while they load (lookups fall back to GETs if this times out).
        ctx.kube.cache.wait_synced(CACHE_SYNC_TIMEOUT)
    body = ctx.kube.get(f"{GROUP}/{VERSION}", KIND, namespace, name)
    cached_generation = int(((body or {}).get("metadata") or {}).get("generation") or 0)
    if ctx.kube.cache is not None and (
        # Not in the cache: created a moment ago (kopf's watch was faster) or deleted.
        body is None
        # Behind kopf's watch: an edit kopf saw and the cache has not. After an API-server
        # outage the cache's watch may still be in its backoff (up to 30 s): reconciled from
        # the older spec, the edit waited for the cache's relist (helper-129 saw 29 s).
        or (seen_generation is not None and cached_generation < seen_generation)
    ):
        body = ctx.kube.get(f"{GROUP}/{VERSION}", KIND, namespace, name, cached=False)
    meta = (body or {}).get("metadata") or {}
    if body is None or meta.get("deletionTimestamp") or ctx.deleting.get(key) == meta.get("uid"):
        return body, None  # gone, or being deleted (the cache may not say so yet)
    result = reconcile(
        body, ctx.kube, ctx.settings, pool=ctx.apply_pool, memo=ctx.memo,
        kafka=lambda p: shadow_kafka(ctx, p), topics=ctx.topics,
    )  # fmt: skip
    for note in result.events:
        event = event_body(body, note)
        if ctx.event_pool is not None:
            # Fire and forget: the reconcile thread does not wait for an Event's round trip.
            ctx.event_pool.submit(post_event, ctx.kube, event)
        else:
            post_event(ctx.kube, event)
    return body, result


def shadow_kafka(ctx: OperatorContext, pipeline: StreamPipeline) -> KafkaShadowClient:
    """The source cluster of a pipeline under shadow verification (operator/verifying.py),
    with its credentials; created only when a verification needs it."""
    return KafkaShadowClient(cluster_from_secrets(ctx.kube, pipeline))


def post_event(kube: Kube, event: Manifest) -> None:
    try:
        kube.create_event(event)
    except ApiError as e:  # events are best effort
        obj = event["involvedObject"]
        log.debug("could not post event %s for %s/%s: %s", event["reason"], obj["namespace"],
                  obj["name"], e)  # fmt: skip


async def reconcile_key(
    ctx: OperatorContext,
    key: Key,
    *,
    coalesce: bool = False,
    refresh: bool = False,
    seen_generation: int | None = None,
) -> ReconcileResult | None:
    """Reconcile one pipeline by name (the autoscaler calls this after a decision).

    coalesce: return at once (None) when a reconcile of this pipeline is already queued and
    not started: that one will see whatever prompted this call.
    refresh: run in the refresh pool (a Deployment changed: mostly a status update).
    seen_generation: the pipeline's generation as kopf's handler saw it (a newer one than
    the watch cache's is read from the API server).
    Raises kube.ApiError on transient API failures; None when the pipeline is gone.
    """
    if coalesce:
        if key in ctx.pending:
            return None
        ctx.pending.add(key)
    async with ctx.lock(key):
        if coalesce:
            ctx.pending.discard(key)
        loop = asyncio.get_running_loop()
        pool = ctx.refresh_executor if refresh and ctx.refresh_executor else ctx.executor
        body, result = await loop.run_in_executor(
            pool, _reconcile_blocking, ctx, key, seen_generation
        )
    if body is None:
        ctx.secrets_of.pop(key, None)
        ctx.locks.pop(key, None)
    if result is not None:
        ctx.secrets_of[key] = result.secret_names
        if result.retry_after is not None:
            retry_later(ctx, key, result.retry_after)
        if result.applied or result.deleted:
            log.info(
                "reconciled %s/%s: applied %s, deleted %s",
                key[0], key[1], list(result.applied), list(result.deleted),
            )  # fmt: skip
        elif result.status is None and not result.events:
            # The idle case (tests/integration/operator counts these to prove that idle
            # reconciles happen and write nothing).
            log.debug("reconciled %s/%s: nothing to write", key[0], key[1])
    return result


async def reconcile_quietly(ctx: OperatorContext, key: Key, *, refresh: bool = False) -> None:
    """reconcile_key for background triggers (coalesced): errors are logged, the next resync
    retries."""
    try:
        await reconcile_key(ctx, key, coalesce=True, refresh=refresh)
    except ApiError as e:
        if e.status == 404:  # deleted (or its namespace) while we worked: nothing to do
            log.debug("reconcile of %s/%s: gone: %s", key[0], key[1], e)
            return
        log.warning("reconcile of %s/%s failed (will retry): %s", key[0], key[1], e)
    except Exception:
        log.exception("reconcile of %s/%s crashed (will retry)", key[0], key[1])


async def _reconcile_if_active(ctx: OperatorContext, key: Key, refresh: bool) -> None:
    # HA: kopf pauses its own handlers in a standby replica, not our cache's callbacks.
    if await ctx.is_active():
        await reconcile_quietly(ctx, key, refresh=refresh)


def retry_later(ctx: OperatorContext, key: Key, delay: float) -> None:
    """One coalesced reconcile of `key` in `delay` seconds (an earlier one asked for stays);
    the internal topics' backoff (operator/topicadmin.py) bounds how often that is."""
    waiting = ctx.retries.get(key)
    if waiting is not None and not waiting.cancelled():
        return
    loop = asyncio.get_running_loop()

    def fire() -> None:
        ctx.retries.pop(key, None)
        schedule(ctx, key)

    ctx.retries[key] = loop.call_later(delay, fire)


def schedule(ctx: OperatorContext, key: Key, refresh: bool = False) -> None:
    """Queue a coalesced reconcile of a known pipeline (from the event loop's thread);
    refresh: in the refresh pool (see OperatorContext.refresh_executor)."""
    if key not in ctx.secrets_of or key in ctx.pending:
        return
    task = asyncio.get_running_loop().create_task(_reconcile_if_active(ctx, key, refresh))
    ctx.tasks.add(task)  # a reference, so the task is not garbage-collected
    task.add_done_callback(ctx.tasks.discard)


def cached_kinds(kube: Kube) -> list[tuple[str, str, str]]:
    """What the watch cache holds: the pipelines, and every served child kind (ours only,
    by label). Optional APIs installed later are read with GETs until the next start."""
    own = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    kinds = [(f"{GROUP}/{VERSION}", KIND, "")]
    for child in CHILD_KINDS:
        if not child.optional_api or kube.served(child.api_version, child.kind):
            kinds.append((child.api_version, child.kind, own))
    # The workers' pods (not the shadows'): why workers are not ready (decision 0210).
    kinds.append(("v1", "Pod", f"app.kubernetes.io/name={WORKER_APP}"))
    return kinds


def pod_seen(ctx: OperatorContext, type_: str, pod: Manifest, now: datetime) -> None:
    """A worker pod's change, from the watch cache (in the event loop's thread): when what
    it says keeps it from being ready changes (a crash, a failed pull, and back to nothing),
    its pipeline is reconciled, so that Ready and Degraded say so. Nothing else the
    operator watches changes when a container crashes; a pod on its normal way up says
    nothing and schedules nothing (a thousand pipelines being created cost no reconcile)."""
    meta = pod.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    said = pod_trouble(pod, now)
    before = ctx.pod_troubles.pop((namespace, name), None)
    if said is not None and type_ != "DELETED":
        ctx.pod_troubles[(namespace, name)] = said
    pipeline = (meta.get("labels") or {}).get(PIPELINE_LABEL)
    # A deletion too, when the pod said something (as last seen, or as its last state says:
    # the first list after a restart is not heard): an unscheduled or a failed pod is deleted
    # at once, with no MODIFIED that says nothing first, and a relist reports a pod that
    # vanished as DELETED; the status would go on quoting a pod that is gone.
    changed = (before is not None or said is not None) if type_ == "DELETED" else said != before
    if not isinstance(pipeline, str):
        return
    key = pipeline_key(namespace, pipeline)
    if changed:
        schedule(ctx, key, refresh=True)
    at = counts_at(pod, now) if type_ != "DELETED" else None
    if at is not None:
        # It will say something with no change of its own: look again then.
        look_at(ctx, key, (at - now).total_seconds() + 1.0)


def look_at(ctx: OperatorContext, key: Key, delay: float) -> None:
    """One reconcile of `key` in `delay` seconds for a pod that will count by then
    (workerpods.counts_at); one waiting per pipeline, cancelled when it is forgotten."""
    waiting = ctx.looks.get(key)
    if waiting is not None and not waiting.cancelled():
        return

    def fire() -> None:
        ctx.looks.pop(key, None)
        schedule(ctx, key, refresh=True)

    ctx.looks[key] = asyncio.get_running_loop().call_later(max(delay, 0.0), fire)


def start_watch_cache(ctx: OperatorContext, loop: asyncio.AbstractEventLoop) -> None:
    """Blocking (run it in the executor): start the cache; child events schedule reconciles."""

    def on_event(type_: str, kind: str, obj: Manifest) -> None:
        # Called in a watch thread, after the cache took the change. A Deployment's every
        # change matters (status follows its pods); other children only when deleted (a hand
        # edit of them is repaired by the resync, as decision 0001 says).
        meta = obj.get("metadata") or {}
        if kind == "Pod":
            loop.call_soon_threadsafe(pod_seen, ctx, type_, obj, datetime.now(UTC))
            return
        if kind == KIND:
            # A spec change the cache saw (kopf's on.update may have read an older copy).
            observed = stored_status(obj).get("observedGeneration")
            if type_ != "DELETED" and meta.get("generation") != observed:
                key = pipeline_key(meta.get("namespace"), meta.get("name"))
                loop.call_soon_threadsafe(schedule, ctx, key)
            return
        if kind != "Deployment" and type_ != "DELETED":
            return
        pipeline = (meta.get("labels") or {}).get(PIPELINE_LABEL)
        if pipeline:
            key = pipeline_key(meta.get("namespace"), pipeline)
            # A Deployment's change (its pods) is a status refresh: the small refresh pool.
            # A deleted child is a real repair: the main pool.
            loop.call_soon_threadsafe(schedule, ctx, key, type_ != "DELETED")

    # Indexed by the label the workers' Deployment selects by (workerpods.selector: name and
    # instance), not by PIPELINE_LABEL, which that selector does not name: a selection of one
    # pipeline's pods would read every worker pod of the namespace.
    start_cache(
        ctx.kube, cached_kinds(ctx.kube), ctx.settings.namespaces, on_event,
        index_label=INSTANCE_LABEL,
    )  # fmt: skip


async def resync_loop(ctx: OperatorContext) -> None:
    """Visit every known pipeline once per resync interval, spread over the interval."""
    interval = max(ctx.settings.resync_interval_seconds, 1.0)
    while True:
        keys = sorted(ctx.secrets_of)
        if not keys:
            await asyncio.sleep(interval)
            continue
        gap = interval / len(keys)
        for key in keys:
            await asyncio.sleep(gap)
            if key in ctx.secrets_of and await ctx.is_active():
                await reconcile_quietly(ctx, key)


async def start_runtime(ctx: OperatorContext) -> None:
    """Start the watch cache (its child events schedule reconciles) and the resync loop."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(ctx.executor, start_watch_cache, ctx, loop)
    ctx.resync_task = asyncio.create_task(resync_loop(ctx), name="streamherd-resync")


def stop_runtime(ctx: OperatorContext) -> None:
    """Stop the resync loop and the watch cache, close the topic admin, shut the pools."""
    if ctx.resync_task is not None:
        ctx.resync_task.cancel()
    if ctx.kube.cache is not None:
        ctx.kube.cache.stop()
    if ctx.topics is not None:
        ctx.topics.close()
    for pool in (ctx.executor, ctx.refresh_executor, ctx.apply_pool, ctx.event_pool):
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def pipeline_key(namespace: str | None, name: str | None) -> Key:
    return (str(namespace or "default"), str(name or ""))
