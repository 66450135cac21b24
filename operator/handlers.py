"""kopf handlers for streampipelines.streamherd.io/v1alpha1: thin triggers of one reconcile.

Every trigger ends in the same level-based ``reconciler.reconcile`` for one pipeline, run
in a thread (the kubernetes client is blocking) under a per-pipeline lock, on a fresh GET
of the pipeline so it never works from a stale body:

- on.resume / on.create / on.update of a StreamPipeline;
- events of owned children from the operator's watch cache (kube.WatchCache): any change of
  a Deployment (status follows pods becoming Ready), the deletion of any child (it is
  recreated at once);
- on.event of Secrets that some pipeline references (rotation rolls the workers), found
  through an in-memory index kept by on.event of the pipelines;
- the builtin autoscaler's handlers (operator/autoscaling/handlers.py), which call
  ``reconcile_key`` after each scaling decision;
- one operator-wide resync loop that visits every known pipeline once per
  ``resync_interval``, spread evenly, so drift (a hand-edited or deleted child) is repaired.
  It replaces per-pipeline kopf timers, which would force a finalizer on every pipeline.

Triggers that may fire in bursts (child events, the resync, the autoscaler) are coalesced:
at most one reconcile per pipeline waits while one runs, and the waiting one reads the newest
state, so a rollout's dozen Deployment updates cost two or three reconciles, not a dozen.
Reads come from the watch cache (kube.py), so an unchanged pipeline costs no API call but
the Secrets it references.

Children need no cleanup on deletion (they carry ownerReferences; the garbage collector
removes them). The internal Kafka topics (operator/topicadmin.py) do: a pipeline that has
some and no ``spec.state.retainOnDelete`` gets kopf's finalizer (``streamherd.io/finalizer``)
through an on.delete handler filtered to exactly those pipelines, which deletes the topics
with a bounded number of retries and then lets the deletion finish (decision 0066). Other
pipelines get no finalizer. The StreamPipelineSnapshot handlers (operator/snapshots.py:
timers, and an on.delete that deletes the snapshot's Kafka topic, so a finalizer on each
snapshot) are registered here too. ``build_registry`` makes a fresh registry for given
settings: the operator and the tests each build their own.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import kopf

from streamherd.operator.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION, StreamPipeline
from streamherd.operator.autoscaling.handlers import register_autoscaler
from streamherd.operator.builders import CHILD_KINDS
from streamherd.operator.builders.meta import MANAGED_BY, PIPELINE_LABEL
from streamherd.operator.events import event_body
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.kopfstate import InMemoryDiffBaseStorage, QuietProgressStorage
from streamherd.operator.kube import ApiError, Kube, Manifest
from streamherd.operator.peering import PeeringGate
from streamherd.operator.reconciler import EventNote, ReconcileMemo, ReconcileResult, reconcile
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.shadowtopics import KafkaShadowClient
from streamherd.operator.snapshots import (
    delete_state_snapshots,
    lists_state_snapshots,
    register_snapshots,
)
from streamherd.operator.topicadmin import InternalTopics, TopicAdminError
from streamherd.operator.validation import parse_pipeline

log = logging.getLogger(__name__)

PREFIX: Final = "streamherd.io"
CACHE_SYNC_TIMEOUT: Final = 60.0
#: Tries of the deletion of a pipeline's internal topics (5 s apart, then doubling up to a
#: minute: about 7 minutes in all) before the pipeline is let go with the topics kept.
TOPIC_DELETE_RETRIES: Final = 10
Key = tuple[str, str]  # (namespace, name)


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
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # HA: our own loops (resync, autoscaler) run only in the active replica (kopf pauses
    # only its handlers). None: no peering, always active.
    gate: PeeringGate | None = None
    # Creates, checks and deletes internal Kafka topics (None: not managed, e.g. in tests
    # that run no broker; the workers then create what they need).
    topics: InternalTopics | None = None
    # Delayed reconciles asked for by a reconcile (internal topics not ready yet).
    retries: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)

    async def is_active(self) -> bool:
        """Whether this replica should run background work now (see operator/peering.py)."""
        if self.gate is None:
            return True
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.gate.is_active)

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def pipelines_using(self, namespace: str, secret: str) -> list[Key]:
        return sorted(
            key for key, names in self.secrets_of.items() if key[0] == namespace and secret in names
        )


def _reconcile_blocking(
    ctx: OperatorContext, key: Key
) -> tuple[Manifest | None, ReconcileResult | None]:
    """GET the pipeline, reconcile it, post the events. Runs in the thread pool."""
    namespace, name = key
    if ctx.kube.cache is not None:
        # After a (re)start, wait for the first lists rather than GET every child of every
        # pipeline while they load (lookups fall back to GETs if this times out).
        ctx.kube.cache.wait_synced(CACHE_SYNC_TIMEOUT)
    body = ctx.kube.get(f"{GROUP}/{VERSION}", KIND, namespace, name)
    if body is None and ctx.kube.cache is not None:
        # Not in the cache: created a moment ago (kopf's watch was faster) or deleted.
        body = ctx.kube.get(f"{GROUP}/{VERSION}", KIND, namespace, name, cached=False)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return body, None
    result = reconcile(
        body, ctx.kube, ctx.settings, pool=ctx.apply_pool, memo=ctx.memo,
        kafka=lambda p: _shadow_kafka(ctx, p), topics=ctx.topics,
    )  # fmt: skip
    for note in result.events:
        event = event_body(body, note)
        if ctx.event_pool is not None:
            # Fire and forget: the reconcile thread does not wait for an Event's round trip.
            ctx.event_pool.submit(_post_event, ctx.kube, event)
        else:
            _post_event(ctx.kube, event)
    return body, result


def _shadow_kafka(ctx: OperatorContext, pipeline: StreamPipeline) -> KafkaShadowClient:
    """The source cluster of a pipeline under shadow verification (operator/verifying.py),
    with its credentials; created only when a verification needs it."""
    return KafkaShadowClient(cluster_from_secrets(ctx.kube, pipeline))


def _post_event(kube: Kube, event: Manifest) -> None:
    try:
        kube.create_event(event)
    except ApiError as e:  # events are best effort
        obj = event["involvedObject"]
        log.debug("could not post event %s for %s/%s: %s", event["reason"], obj["namespace"],
                  obj["name"], e)  # fmt: skip


async def reconcile_key(
    ctx: OperatorContext, key: Key, *, coalesce: bool = False, refresh: bool = False
) -> ReconcileResult | None:
    """Reconcile one pipeline by name (the autoscaler calls this after a decision).

    coalesce: return at once (None) when a reconcile of this pipeline is already queued and
    not started: that one will see whatever prompted this call.
    refresh: run in the refresh pool (a Deployment changed: mostly a status update).
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
        body, result = await loop.run_in_executor(pool, _reconcile_blocking, ctx, key)
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


def needs_topic_cleanup(body: Manifest) -> bool:
    """Whether deleting this pipeline must delete internal topics first (so it gets the
    finalizer): the operator has seen some of its internal topics on the broker (status
    lists them with their partitions) and the spec does not keep them
    (spec.state.retainOnDelete). A pipeline whose broker was never reached has none to
    delete, and its deletion is never held up by a broker that does not answer."""
    listed = (body.get("status") or {}).get("internalTopics") or []
    if not any(isinstance(t, dict) and t.get("partitions") for t in listed):
        return False
    spec = body.get("spec") or {}
    return (spec.get("state") or {}).get("retainOnDelete") is not True


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
    return kinds


def start_watch_cache(ctx: OperatorContext, loop: asyncio.AbstractEventLoop) -> None:
    """Blocking (run it in the executor): start the cache; child events schedule reconciles."""

    def on_event(type_: str, kind: str, obj: Manifest) -> None:
        # Called in a watch thread, after the cache took the change. A Deployment's every
        # change matters (status follows its pods); other children only when deleted (a hand
        # edit of them is repaired by the resync, as decision 0001 says).
        meta = obj.get("metadata") or {}
        if kind == KIND:
            # A spec change the cache saw (kopf's on.update may have read an older copy).
            observed = (obj.get("status") or {}).get("observedGeneration")
            if type_ != "DELETED" and meta.get("generation") != observed:
                key = _key(meta.get("namespace"), meta.get("name"))
                loop.call_soon_threadsafe(schedule, ctx, key)
            return
        if kind != "Deployment" and type_ != "DELETED":
            return
        pipeline = (meta.get("labels") or {}).get(PIPELINE_LABEL)
        if pipeline:
            key = _key(meta.get("namespace"), pipeline)
            # A Deployment's change (its pods) is a status refresh: the small refresh pool.
            # A deleted child is a real repair: the main pool.
            loop.call_soon_threadsafe(schedule, ctx, key, type_ != "DELETED")

    ctx.kube.start_cache(cached_kinds(ctx.kube), ctx.settings.namespaces, on_event)


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


def configure_kopf(
    kopf_settings: kopf.OperatorSettings,
    ops: OperatorSettings,
    diffbase: InMemoryDiffBaseStorage | None = None,
) -> None:
    """kopf's own settings (docs/operator.md explains each choice). diffbase: the registry's
    storage (see build_registry), so deleted pipelines can be forgotten."""
    diffbase = diffbase if diffbase is not None else InMemoryDiffBaseStorage()
    # Progress annotations only while a handler is retried (operator/kopfstate.py).
    kopf_settings.persistence.progress_storage = QuietProgressStorage(prefix=PREFIX)
    # The last handled state in memory, not in an annotation: no PATCH per handled change
    # (operator/kopfstate.py says why that is safe for a level-based reconcile).
    kopf_settings.persistence.diffbase_storage = diffbase
    kopf_settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # After a patch of its own (now only progress annotations, when a handler is retried)
    # kopf waits this long for the patched version to come back through its watch before it
    # trusts an event of that object again. At the default 5 s a busy API server (N=1000:
    # watch events seconds late) let kopf read a pre-patch event and handle it twice.
    kopf_settings.persistence.consistency_timeout = 30
    # We post our own Events; kopf adds one only for warnings and errors (handler failures).
    kopf_settings.posting.level = logging.WARNING
    # Re-establish watches well before load balancers or the API server time them out.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.connect_timeout = 30
    # No cap on kopf's per-object workers: each lingers idle_timeout (5 s) after its last
    # event while holding its slot, so a cap of 20 let kopf start at most 4 pipelines a
    # second (300 pipelines took 75 s to resume; decision 0030). They are cheap asyncio
    # tasks; what bounds the load on the API server is the reconcile thread pool.
    kopf_settings.queueing.worker_limit = None
    kopf_settings.execution.max_workers = ops.max_workers
    kopf_settings.networking.request_timeout = 60
    # Throttled (429) requests wait what the API server asks, not kopf's shorter backoffs.
    kopf_settings.networking.enforce_retry_after = True
    if ops.peering:
        kopf_settings.peering.name = ops.peering
        kopf_settings.peering.priority = ops.priority
        kopf_settings.peering.mandatory = True
        kopf_settings.peering.standalone = False
    else:
        kopf_settings.peering.standalone = True


def _key(namespace: str | None, name: str | None) -> Key:
    return (str(namespace or "default"), str(name or ""))


def build_registry(ops: OperatorSettings) -> Any:
    """A kopf OperatorRegistry with all our handlers bound to `ops`."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)
    backoff = 5.0
    diffbase = InMemoryDiffBaseStorage()

    @kopf.on.login(id="login", registry=registry)
    def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        ctx: OperatorContext = memo["ctx"]
        return connection_info(ctx.kube)

    @kopf.on.startup(id="configure", registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_kopf(settings, ops, diffbase)
        ctx: OperatorContext = memo["ctx"]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(ctx.executor, start_watch_cache, ctx, loop)
        ctx.resync_task = asyncio.create_task(resync_loop(ctx), name="streamherd-resync")

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        if ctx.resync_task is not None:
            ctx.resync_task.cancel()
        if ctx.kube.cache is not None:
            ctx.kube.cache.stop()
        if ctx.topics is not None:
            ctx.topics.close()
        for pool in (ctx.executor, ctx.refresh_executor, ctx.apply_pool, ctx.event_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", registry=registry)
    async def changed(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        try:
            result = await reconcile_key(ctx, _key(namespace, name))
        except ApiError as e:
            raise kopf.TemporaryError(f"API error: {e}", delay=backoff) from e
        if result is not None and result.invalid:
            # The status already says why; kopf stops retrying until the spec changes.
            raise kopf.PermanentError(f"invalid spec: {result.invalid}")

    # The builtin autoscaler (operator/autoscaling/handlers.py) adds its loop and its
    # start/stop; after a decision it calls reconcile_key() above. Its index of managed
    # pipelines is kept by our one on.event handler below: kopf runs (and logs) every
    # on.event handler for every pipeline event, and our own status writes come back as
    # events, so one handler instead of two halves that work.
    autoscaler = register_autoscaler(registry, reconcile=reconcile_key, index_events=False)

    @kopf.on.event(*resource, id="track-pipeline", registry=registry)
    async def pipeline_event(
        type: str | None,
        body: kopf.Body,
        namespace: str | None,
        name: str | None,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        ctx: OperatorContext = memo["ctx"]
        key = _key(namespace, name)
        if type == "DELETED":
            ctx.secrets_of.pop(key, None)
            ctx.locks.pop(key, None)
            waiting = ctx.retries.pop(key, None)
            if waiting is not None:
                waiting.cancel()
            if ctx.topics is not None:
                ctx.topics.forget(*key)
            diffbase.forget(body.get("metadata", {}).get("uid"))
        else:
            ctx.secrets_of.setdefault(key, ())
        autoscaler.track(type, key, body)

    def referenced(namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any) -> bool:
        ctx: OperatorContext = memo["ctx"]
        return bool(ctx.pipelines_using(str(namespace), str(name)))

    @kopf.on.event("", "v1", "secrets", id="secret-changed", when=referenced, registry=registry)
    async def secret_event(
        type: str | None, namespace: str | None, name: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        ctx: OperatorContext = memo["ctx"]
        if type is None:
            return
        for key in ctx.pipelines_using(str(namespace), str(name)):
            await reconcile_quietly(ctx, key)

    # StreamPipelineSnapshots: taken on request, listed, deleted (operator/snapshots.py).
    register_snapshots(registry)

    def cleans_topics(body: kopf.Body, **_: Any) -> bool:
        return needs_topic_cleanup(dict(body))

    @kopf.on.delete(
        *resource,
        id="delete-topics",
        when=cleans_topics,
        retries=TOPIC_DELETE_RETRIES,
        backoff=backoff,
        registry=registry,
    )
    async def delete_topics(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        ctx: OperatorContext = memo["ctx"]
        if ctx.topics is None:
            return
        pipeline, _problems = parse_pipeline(dict(body))
        if pipeline is None or pipeline.spec.state.retain_on_delete:
            return
        loop = asyncio.get_running_loop()
        try:
            deleted = await loop.run_in_executor(ctx.executor, ctx.topics.delete, pipeline)
        except TopicAdminError as e:
            note = EventNote(
                "Warning",
                "TopicDeleteFailed",
                f"cannot delete the internal topics yet (try {retry + 1} of "
                f"{TOPIC_DELETE_RETRIES}; after the last the pipeline is deleted and the "
                f"topics are kept): {e}",
            )
            await loop.run_in_executor(
                ctx.executor, _post_event, ctx.kube, event_body(dict(body), note)
            )
            delay = min(60.0, backoff * 2**retry)
            raise kopf.TemporaryError(str(e), delay=delay) from e
        if deleted:
            note = EventNote(
                "Normal", "TopicsDeleted", "deleted Kafka topics " + ", ".join(deleted)
            )
            await loop.run_in_executor(
                ctx.executor, _post_event, ctx.kube, event_body(dict(body), note)
            )

    def keeps_snapshots(body: kopf.Body, **_: Any) -> bool:
        return lists_state_snapshots(dict(body))

    @kopf.on.delete(
        *resource,
        id="delete-snapshots",
        when=keeps_snapshots,
        retries=TOPIC_DELETE_RETRIES,
        backoff=backoff,
        registry=registry,
    )
    async def delete_snapshots(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        # The snapshots taken before a reset or replay go with the pipeline (decision 0110),
        # deleted while it is still there: their finalizers reach Kafka with its credentials.
        ctx: OperatorContext = memo["ctx"]
        meta = body.get("metadata") or {}
        ns, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(
            ctx.executor, delete_state_snapshots, ctx.kube, ns, name, uid
        )
        if left:
            raise kopf.TemporaryError(
                f"waiting for StreamPipelineSnapshots {', '.join(left)} to delete their topics",
                delay=3,
            )

    _ = (
        login, startup, cleanup, changed, pipeline_event, secret_event, delete_topics,
        delete_snapshots,
    )  # fmt: skip
    return registry


def connection_info(kube: Kube) -> kopf.ConnectionInfo:
    """kopf's credentials from the same client configuration the Kube client uses."""
    cfg = kube.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )
