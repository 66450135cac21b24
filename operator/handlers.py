"""kopf handlers for streampipelines.streamherd.io/v1alpha1: the registration and the wiring.

Every trigger ends in the same level-based ``reconciler.reconcile`` for one pipeline, run by
the controller runtime (operator/runtime.py: thread pools, a lock per pipeline, coalescing,
retries, the watch cache's triggers and the resync loop). The triggers registered here:

- on.resume / on.create / on.update of a StreamPipeline (``runtime.reconcile_key``);
- on.event of the pipelines, which keeps the runtime's index of known pipelines and of the
  Secrets they reference, and the builtin autoscaler's index;
- on.event of Secrets that some pipeline references (rotation rolls the workers);
- the builtin autoscaler's handlers (operator/autoscaling/handlers.py), handed
  ``runtime.reconcile_key`` to call after each scaling decision;
- on.startup / on.cleanup, which set kopf's own settings (``configure_kopf``) and start and
  stop the runtime (the watch cache, whose child events schedule reconciles, and the resync
  loop).

Children need no cleanup on deletion (they carry ownerReferences; the garbage collector
removes them). What lives on Kafka does, through kopf's finalizer (``streamherd.io/finalizer``)
and on.delete handlers, each filtered to exactly the pipelines that need it, so other
pipelines get no finalizer; each retries a bounded number of times and then lets the
deletion finish:

- delete-topics: the internal topics (operator/topicadmin.py) of a pipeline that has some
  and no ``spec.state.retainOnDelete`` (decision 0066);
- delete-shadows: the shadows, topics and consumer groups of a verification under way
  (operator/verifying.py), whatever ``retainOnDelete`` says (decision 0176);
- delete-snapshots: the StreamPipelineSnapshots taken before its resets and replays
  (decision 0110), or with ``retainOnDelete`` (as it is at the deletion) the release of the
  Ready ones as kept state: no owner, labelled retained (decision 0177; the reconcile
  releases them as soon as the option is on, so a foreground deletion finds none owned);
  those it requested under ``retainOnDelete`` (no owner) go too while not Ready (0178).

The StreamPipelineSnapshot handlers (operator/snapshots.py: timers, and an on.delete that
deletes the snapshot's Kafka topic, so a finalizer on each snapshot) are registered here
too. ``build_registry`` makes a fresh registry for given settings: the operator and the
tests each build their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, NoReturn

import kopf

from streamherd.operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from streamherd.operator.autoscaling.handlers import register_autoscaler
from streamherd.operator.builders.meta import FINALIZER
from streamherd.operator.builders.shadow import ROLES, shadow_name
from streamherd.operator.builders.snapshot import retains_on_delete
from streamherd.operator.events import event_body
from streamherd.operator.kopfstate import InMemoryDiffBaseStorage, QuietProgressStorage
from streamherd.operator.kube import ApiError, Kube, Manifest
from streamherd.operator.reconciler import EventNote, stop_workers
from streamherd.operator.runtime import (
    OperatorContext,
    pipeline_key,
    post_event,
    reconcile_key,
    reconcile_quietly,
    shadow_kafka,
    start_runtime,
    stop_runtime,
)
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.shadowtopics import ShadowKafkaError
from streamherd.operator.snapshots import (
    delete_state_snapshots,
    keep_state_snapshots,
    lists_state_snapshots,
    register_snapshots,
)
from streamherd.operator.topicadmin import TopicAdminError
from streamherd.operator.validation import deletion_pipeline, stored_list, stored_status
from streamherd.operator.verifying import delete_verification, verification_left

PREFIX: Final = "streamherd.io"
#: Tries of the deletion of a pipeline's internal topics (5 s apart, then doubling up to a
#: minute: about 7 minutes in all) before the pipeline is let go with the topics kept.
TOPIC_DELETE_RETRIES: Final = 10
#: How often a deletion looks whether the workers have stopped (reconciler.stop_workers).
WORKERS_STOP_POLL_SECONDS: Final = 1.0


async def stop_deployment(ctx: OperatorContext, body: Manifest, name: str, then: str) -> None:
    """Stop the deleted pipeline's Deployment `name` (its workers, or a shadow) before what
    they write goes (reconciler.stop_workers; only one it controls: a Deployment of that
    name another pipeline controls is left alone): waited for here, not by retries, which
    count the broker's refusals. If it is not gone in time, a Warning says so and that `then`
    happens anyway."""
    meta = body.get("metadata") or {}
    namespace, uid = str(meta.get("namespace")), str(meta.get("uid") or "")
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (
        wait := await loop.run_in_executor(
            ctx.executor, stop_workers, ctx.kube, namespace, name, uid
        )
    ) is not None and loop.time() - started < wait:
        await asyncio.sleep(WORKERS_STOP_POLL_SECONDS)
    if wait is not None:
        note = EventNote(
            "Warning",
            "WorkersNotStopped",
            f"the pods of Deployment {name} are not gone after {wait:.0f}s; {then} anyway (a "
            "worker still writing may create its topics again on a broker that auto-creates "
            "topics)",
        )
        await tell(ctx, body, note)


async def tell(ctx: OperatorContext, body: Manifest, note: EventNote) -> None:
    """Post `note` as an event of the pipeline `body`."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(ctx.executor, post_event, ctx.kube, event_body(body, note))


async def try_again(
    ctx: OperatorContext, body: Manifest, reason: str, message: str, delay: float
) -> NoReturn:
    """A deletion step that did not finish: a Warning `reason` says why (its `message`
    names the try and what happens after the last), and kopf tries again in `delay`."""
    await tell(ctx, body, EventNote("Warning", reason, message))
    raise kopf.TemporaryError(message, delay=delay)


def shadows_deleted(run: str, kept: dict[str, str]) -> EventNote:
    """The event of a deletion of verification run `run`'s shadows, topics and groups;
    `kept`: the topics the broker refuses to delete for good, with its answer (decision
    0176 §7), named in a Warning: they stay on the broker until someone deletes them."""
    if not kept:
        return EventNote(
            "Normal",
            "ShadowsDeleted",
            f"deleted the shadows, topics and consumer groups of verification run {run}",
        )
    why = "; ".join(f"{topic}: {answer}" for topic, answer in sorted(kept.items()))
    return EventNote(
        "Warning",
        "ShadowTopicsKept",
        f"deleted the shadows and consumer groups of verification run {run} and its other "
        f"topics; the broker refuses to delete Kafka topics {', '.join(sorted(kept))}, so they "
        f"are kept ({why}): delete them yourself once the broker allows it",
    )


def needs_topic_cleanup(body: Manifest) -> bool:
    """Whether deleting this pipeline must delete internal topics first (so it gets the
    finalizer): the operator has seen some of its internal topics on the broker (status
    lists them with their partitions) and the spec does not keep them
    (spec.state.retainOnDelete). A pipeline whose broker was never reached has none to
    delete, and its deletion is never held up by a broker that does not answer."""
    listed = stored_list(stored_status(body), "internalTopics")
    if not any(isinstance(t, dict) and t.get("partitions") for t in listed):
        return False
    return not retains_on_delete(body)


def topics_not_deleted(body: Manifest) -> EventNote:
    """The Warning of a deletion that cannot reach the broker to delete the internal topics
    status lists: the stored spec's source no longer parses (so neither the cluster nor the
    credentials are known)."""
    listed = stored_list(stored_status(body), "internalTopics")
    names = sorted(str(t.get("name")) for t in listed if isinstance(t, dict) and t.get("name"))
    return EventNote(
        "Warning",
        "TopicsNotDeleted",
        "cannot delete the internal topics: spec.source no longer parses, so the source "
        f"cluster cannot be reached; Kafka topics {', '.join(names) or '(none named)'} are "
        "kept: delete them yourself",
    )


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
    kopf_settings.persistence.finalizer = FINALIZER
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
        await start_runtime(memo["ctx"])

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        stop_runtime(memo["ctx"])

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", registry=registry)
    async def changed(
        namespace: str | None, name: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        ctx: OperatorContext = memo["ctx"]
        generation = body.get("metadata", {}).get("generation")
        try:
            result = await reconcile_key(
                ctx, pipeline_key(namespace, name),
                seen_generation=generation if isinstance(generation, int) else None,
            )  # fmt: skip
        except ApiError as e:
            raise kopf.TemporaryError(f"API error: {e}", delay=backoff) from e
        if result is not None and result.invalid:
            # The status already says why; kopf stops retrying until the spec changes.
            raise kopf.PermanentError(f"invalid spec: {result.invalid}")

    # The builtin autoscaler (operator/autoscaling/handlers.py) adds its loop and its
    # start/stop; after a decision it calls runtime.reconcile_key(). Its index of managed
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
        key = pipeline_key(namespace, name)
        meta = body.get("metadata") or {}
        if type == "DELETED":
            ctx.forget(key)
            diffbase.forget(meta.get("uid"))
        else:
            ctx.remember(key)
            if meta.get("deletionTimestamp"):
                ctx.seen_deleting(key, str(meta.get("uid") or ""))
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
        # Kept or deleted as the filter and every other decision of the deletion read it
        # (retains_on_delete, from the raw object): a stored spec of a shape the models
        # refuse (spec.state: "retain") made this handler keep the topics while the
        # delete-snapshots handler deleted the snapshots.
        if ctx.topics is None or retains_on_delete(body):
            return
        pipeline = deletion_pipeline(dict(body))
        if pipeline is None:
            await tell(ctx, dict(body), topics_not_deleted(dict(body)))
            return
        loop = asyncio.get_running_loop()
        # A reconcile already under way (it read the pipeline before the deletion) may still
        # apply the workers or ensure the topics: it finishes first. Those that start from
        # now on make nothing (OperatorContext.seen_deleting, decision 0176 §9).
        async with ctx.lock(pipeline_key(pipeline.namespace, pipeline.name)):
            pass
        # The workers first: one still writing would create the topics again.
        await stop_deployment(ctx, dict(body), pipeline.name, "deleting the internal topics")
        try:
            deleted = await loop.run_in_executor(ctx.executor, ctx.topics.delete, pipeline)
        except TopicAdminError as e:
            message = (
                f"cannot delete the internal topics yet (try {retry + 1} of "
                f"{TOPIC_DELETE_RETRIES}; after the last the pipeline is deleted and the "
                f"topics are kept): {e}"
            )
            await try_again(ctx, dict(body), "TopicDeleteFailed", message,
                            min(60.0, backoff * 2**retry))  # fmt: skip
        if deleted:
            note = EventNote(
                "Normal", "TopicsDeleted", "deleted Kafka topics " + ", ".join(deleted)
            )
            await tell(ctx, dict(body), note)

    def cleans_shadows(body: kopf.Body, **_: Any) -> bool:
        return verification_left(dict(body))

    @kopf.on.delete(
        *resource,
        id="delete-shadows",
        when=cleans_shadows,
        retries=TOPIC_DELETE_RETRIES,
        backoff=backoff,
        registry=registry,
    )
    async def delete_shadows(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        # A verification under way (decision 0176): its shadows stop first (one still
        # running would write its topic again, and a group with members cannot be deleted),
        # then its topics and groups go. Under the pipeline's lock, so that a reconcile
        # under way (one that starts the run) is over first.
        ctx: OperatorContext = memo["ctx"]
        loop = asyncio.get_running_loop()
        status = dict(stored_status(body))
        # Whatever else the spec says now: the run's names and the cluster come from the
        # name and the source (an edit the models refuse does not leak what status names).
        pipeline = deletion_pipeline(dict(body))
        if pipeline is None:
            run = str((status.get("verification") or {}).get("run"))
            note = EventNote(
                "Warning",
                "ShadowsNotDeleted",
                f"cannot delete the topics and consumer groups of verification run {run}: "
                "spec.source no longer parses, so the source cluster cannot be reached; they "
                f"are kept (topics streamherd.<namespace>.<name>.shadow.{run}.*, groups "
                f"<group>.shadow.{run}.*): delete them yourself",
            )
            await tell(ctx, dict(body), note)
            return
        left: list[str] | None = None
        kept: dict[str, str] = {}
        why = ""
        async with ctx.lock(pipeline_key(pipeline.namespace, pipeline.name)):
            for role in ROLES:
                shadow = shadow_name(pipeline.name, role)
                await stop_deployment(ctx, dict(body), shadow, "deleting its topics and groups")
            try:
                left, kept = await loop.run_in_executor(
                    ctx.executor, delete_verification, pipeline, ctx.kube,
                    lambda p: shadow_kafka(ctx, p), status,
                )  # fmt: skip
            except ShadowKafkaError as e:
                why = str(e)
        if left is None or left:
            what = why or "still there: " + ", ".join(left or [])
            message = (
                f"cannot delete the verification's shadow topics and consumer groups yet "
                f"(try {retry + 1} of {TOPIC_DELETE_RETRIES}; after the last the pipeline is "
                f"deleted and they are kept): {what}"
            )
            await try_again(ctx, dict(body), "ShadowsNotDeleted", message,
                            min(60.0, backoff * 2**retry))  # fmt: skip
        run = str((status.get("verification") or {}).get("run"))
        await tell(ctx, dict(body), shadows_deleted(run, kept))

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
        # With retainOnDelete the Ready ones are the state it keeps: released instead,
        # whenever it was set; the unfinished ones go all the same (decision 0177).
        ctx: OperatorContext = memo["ctx"]
        meta = body.get("metadata") or {}
        ns, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid"))
        loop = asyncio.get_running_loop()
        # A reconcile under way may still request or release a snapshot: it finishes first;
        # those that start from now on make nothing (decision 0176 §9).
        async with ctx.lock(pipeline_key(ns, name)):
            pass
        if retains_on_delete(body):
            # Mostly done by the reconcile already (decision 0177): a foreground deletion's
            # garbage collector deletes what is still owned at once, racing this handler.
            kept = await loop.run_in_executor(
                ctx.executor, keep_state_snapshots, ctx.kube, ns, name, uid
            )
            if kept:
                note = EventNote(
                    "Normal",
                    "SnapshotsKept",
                    f"kept StreamPipelineSnapshots {', '.join(kept)} (spec.state."
                    "retainOnDelete): no owner, labelled streamherd.io/retained=true, with their "
                    "Kafka topics; delete them yourself when you no longer want them",
                )
                await tell(ctx, dict(body), note)
        # What is still owned goes (with retainOnDelete: the unfinished ones, no state), and
        # the unfinished ones it requested under retainOnDelete, unowned (decision 0178).
        created = meta.get("creationTimestamp")
        left = await loop.run_in_executor(
            ctx.executor, delete_state_snapshots, ctx.kube, ns, name, uid,
            str(created) if created else None,
        )  # fmt: skip
        if left:
            raise kopf.TemporaryError(
                f"waiting for StreamPipelineSnapshots {', '.join(left)} to delete their topics",
                delay=3,
            )

    _ = (
        login, startup, cleanup, changed, pipeline_event, secret_event, delete_topics,
        delete_shadows, delete_snapshots,
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
