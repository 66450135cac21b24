"""operator/runtime.py: the bookkeeping of known pipelines, delayed retries and coalescing.

Whatever the order of sightings, retries and deletions, a deleted pipeline leaves nothing
behind in the runtime (no index entry, no lock, no timer that would reconcile it later), and
the other pipelines keep theirs; a retry asked for while one waits does not move it; a
trigger for a pipeline kopf has not seen, or one already queued, schedules nothing. The
reconciles themselves run against the real API server in tests/integration/operator/.
"""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from unittest.mock import patch

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.builders.meta import PIPELINE_LABEL
from streamherd.operator.builders.workload import build_deployment
from streamherd.operator.kube import Kube, Manifest
from streamherd.operator.kubecache import WatchCache
from streamherd.operator.runtime import (
    DELETIONS_KEPT,
    Key,
    OperatorContext,
    _reconcile_blocking,
    pipeline_key,
    pod_seen,
    retry_later,
    schedule,
    start_watch_cache,
)
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import parse_pipeline
from streamherd.operator.workerpods import UNSCHEDULED_GRACE, pod_trouble, selector
from tests.unit.operator.operator_testkit import SETTINGS, FakeKube, example_doc, with_meta

KEYS = [("ns", "a"), ("ns", "b"), ("other", "a")]
LATER = 3600.0  # no retry fires while a test runs


def context() -> OperatorContext:
    return OperatorContext(
        settings=OperatorSettings(),
        kube=cast(Kube, FakeKube()),
        executor=ThreadPoolExecutor(max_workers=1),
    )


operations = st.lists(
    st.tuples(st.sampled_from(["remember", "retry", "lock", "forget"]), st.sampled_from(KEYS)),
    max_size=30,
)


@given(operations)
def test_a_forgotten_pipeline_leaves_nothing_behind(ops: list[tuple[str, Key]]) -> None:
    async def run() -> None:
        ctx = context()
        timers: dict[Key, list[asyncio.TimerHandle]] = {key: [] for key in KEYS}
        known: set[Key] = set()
        for op, key in ops:
            if op == "remember":
                ctx.remember(key)
                known.add(key)
            elif op == "retry":
                retry_later(ctx, key, LATER)
                if not any(t is ctx.retries[key] for t in timers[key]):
                    timers[key].append(ctx.retries[key])
            elif op == "lock":
                ctx.lock(key)
            else:
                ctx.forget(key)
                known.discard(key)
                assert key not in ctx.secrets_of
                assert key not in ctx.locks
                assert key not in ctx.retries
                assert all(t.cancelled() for t in timers[key])
        assert set(ctx.secrets_of) == known
        for key in KEYS:
            waiting = ctx.retries.get(key)
            # At most one live timer per pipeline, and it is the one in ctx.retries.
            live = [t for t in timers[key] if not t.cancelled()]
            assert live == ([waiting] if waiting is not None else [])
        for handle in ctx.retries.values():
            handle.cancel()
        ctx.executor.shutdown()

    asyncio.run(run())


def test_a_second_retry_keeps_the_first() -> None:
    async def run() -> None:
        ctx = context()
        retry_later(ctx, KEYS[0], LATER)
        first = ctx.retries[KEYS[0]]
        retry_later(ctx, KEYS[0], 1.0)  # sooner, but one is already waiting
        assert ctx.retries[KEYS[0]] is first
        assert not first.cancelled()
        first.cancel()
        ctx.executor.shutdown()

    asyncio.run(run())


def test_remembering_again_keeps_the_secrets_a_reconcile_found() -> None:
    ctx = context()
    ctx.remember(KEYS[0])
    ctx.secrets_of[KEYS[0]] = ("kafka-credentials",)
    ctx.remember(KEYS[0])  # a later event of the same pipeline
    assert ctx.pipelines_using("ns", "kafka-credentials") == [KEYS[0]]
    ctx.executor.shutdown()


def test_schedule_skips_unknown_and_already_queued_pipelines() -> None:
    async def run() -> None:
        ctx = context()
        schedule(ctx, KEYS[0])  # kopf has not seen it: nothing to reconcile yet
        ctx.remember(KEYS[1])
        ctx.pending.add(KEYS[1])  # a coalesced reconcile is queued and not started
        schedule(ctx, KEYS[1])
        schedule(ctx, KEYS[1], refresh=True)
        assert ctx.tasks == set()
        ctx.executor.shutdown()

    asyncio.run(run())


def test_a_pipeline_key_is_two_strings_with_a_namespace() -> None:
    assert pipeline_key("ns", "a") == ("ns", "a")
    assert pipeline_key(None, "a") == ("default", "a")
    assert pipeline_key("ns", None) == ("ns", "")


def test_a_reconcile_on_a_stale_copy_of_a_pipeline_being_deleted_makes_nothing() -> None:
    """kopf has seen the pipeline being deleted (its event handler runs before the deletion
    handlers, which stop the workers and delete the topics); a reconcile queued meanwhile
    reads a watch cache still without the deletionTimestamp. It makes nothing: before, it
    applied the workers' Deployment again, whose workers could write the topics again on a
    broker that auto-creates them (decision 0176 §9). A pipeline created again under the
    name (another uid) is reconciled; the record goes with the pipeline."""
    kube = FakeKube()
    kube.cache = None  # type: ignore[attr-defined]  # what _reconcile_blocking asks of Kube
    doc = with_meta(example_doc("02-clicks-per-minute"), namespace="default", uid="u-1")
    name = kube.put(doc)["metadata"]["name"]
    key = ("default", name)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ctx = OperatorContext(settings=SETTINGS, kube=cast(Kube, kube), executor=pool)
        ctx.remember(key)
        ctx.seen_deleting(key, "u-1")
        body, result = _reconcile_blocking(ctx, key)
        assert body is not None and "deletionTimestamp" not in body["metadata"]  # stale
        assert result is None
        assert kube.applies == [] and kube.writes == 0
        ctx.seen_deleting(key, "u-0")  # a pipeline of the name deleted before this one
        _, result = _reconcile_blocking(ctx, key)
        assert result is not None and f"Deployment/{name}" in kube.applies
        ctx.seen_deleting(key, "u-1")
        ctx.forget(key)  # DELETED: a reconcile queued before it may still read a stale cache
        assert _reconcile_blocking(ctx, key)[1] is None
        for n in range(DELETIONS_KEPT):  # the record is one of the last DELETIONS_KEPT
            ctx.seen_deleting(("other", f"p{n}"), f"u{n}")
        assert len(ctx.deleting) == DELETIONS_KEPT and key not in ctx.deleting


def worker_pod(name: str, *, crashing: bool, deleting: bool = False) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    state = (
        {"waiting": {"reason": "CrashLoopBackOff"}} if crashing else {"running": {"startedAt": now}}
    )
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "labels": {PIPELINE_LABEL: "a"}}
    if deleting:
        meta["deletionTimestamp"] = now
    return {
        "metadata": meta,
        "status": {
            "containerStatuses": [
                {
                    "name": "worker",
                    "ready": not crashing,
                    "state": state,
                    "lastState": {"terminated": {"exitCode": 2, "finishedAt": now}},
                }
            ]
        },
    }


def test_a_pod_reconciles_its_pipeline_when_what_it_says_changes() -> None:
    """pod_seen (the watch cache's worker pods): a change of what a pod says keeps it from
    being ready (its deletion included) schedules its pipeline once; the same again, a
    healthy pod's every change, and a pod of no pipeline schedule nothing."""

    async def run() -> list[Key]:
        ctx = context()
        ctx.remember(KEYS[0])
        scheduled: list[Key] = []
        now = datetime.now(UTC)
        with patch(
            "streamherd.operator.runtime.schedule",
            lambda _ctx, key, refresh=False: scheduled.append(key),
        ):
            pod_seen(ctx, "ADDED", worker_pod("w-1", crashing=False), now)  # on its way up
            pod_seen(ctx, "MODIFIED", worker_pod("w-1", crashing=True), now)  # crashed
            pod_seen(ctx, "MODIFIED", worker_pod("w-1", crashing=True), now)  # the same
            assert ctx.pod_troubles == {
                ("ns", "w-1"): pod_trouble(worker_pod("w-1", crashing=True), now)
            }
            pod_seen(ctx, "MODIFIED", worker_pod("w-1", crashing=False), now)  # running again
            pod_seen(ctx, "MODIFIED", worker_pod("w-2", crashing=True), now)
            pod_seen(ctx, "DELETED", worker_pod("w-2", crashing=True), now)  # said, and gone
            stray = worker_pod("w-3", crashing=True)
            stray["metadata"]["labels"] = {}
            pod_seen(ctx, "ADDED", stray, now)
        # Only pods with something to say are remembered (a deleted one is forgotten).
        assert set(ctx.pod_troubles) == {("ns", "w-3")}
        ctx.executor.shutdown()
        return scheduled

    assert asyncio.run(run()) == [KEYS[0]] * 4


def test_a_troubled_pod_gone_without_a_deletion_notice_reconciles_its_pipeline() -> None:
    """A pod that said something and goes without a MODIFIED that says nothing first (an
    unscheduled or a failed pod is deleted at once, without a grace period; a relist finds
    it gone) reconciles its pipeline: the status would still quote a pod that no longer
    exists. A pod that said nothing, or whose graceful deletion already said so, does not."""

    async def run() -> list[Key]:
        ctx = context()
        ctx.remember(KEYS[0])
        scheduled: list[Key] = []
        now = datetime.now(UTC)
        unscheduled = worker_pod("w-1", crashing=False)
        unscheduled["status"] = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient cpu."}
            ],
        }  # fmt: skip
        with patch(
            "streamherd.operator.runtime.schedule",
            lambda _ctx, key, refresh=False: scheduled.append(key),
        ):
            pod_seen(ctx, "ADDED", unscheduled, now)  # 1: not scheduled
            pod_seen(ctx, "DELETED", unscheduled, now)  # 2: gone, at once
            pod_seen(ctx, "MODIFIED", worker_pod("w-2", crashing=True), now)  # 3
            pod_seen(ctx, "MODIFIED", worker_pod("w-2", crashing=True, deleting=True), now)  # 4
            pod_seen(ctx, "DELETED", worker_pod("w-2", crashing=True, deleting=True), now)
            pod_seen(ctx, "DELETED", worker_pod("w-3", crashing=False), now)  # said nothing
            # Listed at a restart (not heard), deleted at once: its last state says.
            pod_seen(
                ctx,
                "DELETED",
                {**unscheduled, "metadata": {**unscheduled["metadata"], "name": "w-4"}},
                now,
            )  # 5
        assert ctx.pod_troubles == {}
        ctx.executor.shutdown()
        return scheduled

    assert asyncio.run(run()) == [KEYS[0]] * 5


def test_a_pipeline_s_worker_pods_are_read_through_the_cache_s_index() -> None:
    """The watch cache the runtime starts indexes the worker pods by a label the Deployment's
    selector names, so that the reconciler's selection of one pipeline's pods
    (workerpods.selector) reads that pipeline's pods, not every worker pod of the namespace
    (a thousand pipelines in a namespace: 2,000 pods decoded at every reconcile of
    workers not ready)."""
    ctx = context()
    started: dict[str, Any] = {}

    def start_cache(
        kube: Kube, kinds: Any, namespaces: Any = (), on_event: Any = None,
        index_label: str | None = None,
    ) -> None:  # fmt: skip
        started.update(kinds=list(kinds), index_label=index_label)

    with patch("streamherd.operator.runtime.start_cache", start_cache):
        start_watch_cache(ctx, cast(asyncio.AbstractEventLoop, None))
    ctx.executor.shutdown()
    cache = WatchCache(
        cast(Kube, None), started["kinds"], ("ns",), None, index_label=started["index_label"]
    )
    for kind in cache._kinds.values():
        kind.synced.set()
    deployments: dict[str, Manifest] = {}
    for name in ("a", "b", "c"):
        pipeline, _ = parse_pipeline(
            with_meta(example_doc("01-clicks-local"), name=name, namespace="ns")
        )
        assert pipeline is not None
        deployments[name] = build_deployment(pipeline, SETTINGS, "hash")
        for n in range(3):
            labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
            meta = {"namespace": "ns", "name": f"{name}-{n}", "resourceVersion": "1"}
            cache.store({"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "labels": labels}})
    decoded = 0
    loads = orjson.loads

    def counting(raw: bytes) -> Any:
        nonlocal decoded
        decoded += 1
        return loads(raw)

    wanted = selector(deployments["b"])
    assert wanted is not None
    with patch("streamherd.operator.kubecache.orjson.loads", counting):
        found = cache.select("v1", "Pod", "ns", wanted)
    assert found is not None
    assert sorted(p["metadata"]["name"] for p in found) == ["b-0", "b-1", "b-2"]
    assert decoded == 3


def test_a_pod_waiting_for_a_node_gets_its_pipeline_looked_at_when_it_would_count() -> None:
    """No event comes when a pod's wait for a node outlasts the grace: pod_seen asks for one
    look at its pipeline then (one per pipeline), and forgetting the pipeline cancels it."""

    async def run() -> None:
        ctx = context()
        ctx.remember(KEYS[0])
        now = datetime.now(UTC)
        since = (now - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        waiting = {
            "metadata": {"namespace": "ns", "name": "w-1", "labels": {PIPELINE_LABEL: "a"}},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                       "reason": "Unschedulable", "message": "no node",
                                       "lastTransitionTime": since}]},
        }  # fmt: skip
        with patch("streamherd.operator.runtime.schedule") as scheduled:
            pod_seen(ctx, "ADDED", waiting, now)
            pod_seen(ctx, "MODIFIED", waiting, now)
        scheduled.assert_not_called()  # nothing to say yet
        first = ctx.looks[KEYS[0]]
        assert len(ctx.looks) == 1 and not first.cancelled()
        left = first.when() - asyncio.get_running_loop().time()
        assert UNSCHEDULED_GRACE.total_seconds() - 10 <= left <= UNSCHEDULED_GRACE.total_seconds()
        ctx.forget(KEYS[0])
        assert first.cancelled() and not ctx.looks
        ctx.executor.shutdown()

    asyncio.run(run())


class _BehindCache:
    """A watch cache that has listed, and answers reads as an older watch saw them."""

    def __init__(self, stale: dict[str, Any]) -> None:
        self.stale = stale

    def wait_synced(self, timeout: float) -> bool:
        return True


class _StaleKube(FakeKube):
    """FakeKube whose cached reads of the pipeline are a watch cache's older copy."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: _BehindCache | None = None

    def get(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = True
    ) -> dict[str, Any] | None:
        if cached and self.cache is not None and kind == "StreamPipeline":
            return copy.deepcopy(self.cache.stale)
        return super().get(api_version, kind, namespace, name, cached=cached)


def test_an_edit_kopf_saw_is_read_from_the_api_server_when_the_cache_is_behind() -> None:
    """kopf's handler saw generation 2; the watch cache still has 1 (its watch in backoff
    after an API-server outage): the reconcile reads the pipeline from the API server, not
    the older spec. Without a generation, or with the cache as new, the cache's copy."""
    kube = _StaleKube()
    doc = with_meta(example_doc("01-clicks-local"), namespace="default", uid="u-1")
    old = kube.put(doc)
    name = old["metadata"]["name"]
    kube.cache = _BehindCache(copy.deepcopy(old))
    edited = kube.objects[(old["apiVersion"], old["kind"], "default", name)]
    edited["metadata"]["generation"] = 2
    key = ("default", name)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ctx = OperatorContext(settings=SETTINGS, kube=cast(Kube, kube), executor=pool)
        ctx.remember(key)
        body, _ = _reconcile_blocking(ctx, key, seen_generation=2)
        assert body is not None and body["metadata"]["generation"] == 2
        assert kube.fresh_reads == 1
        body, _ = _reconcile_blocking(ctx, key)  # a trigger that saw no generation
        assert body is not None and body["metadata"]["generation"] == 1
        body, _ = _reconcile_blocking(ctx, key, seen_generation=1)
        assert body is not None and body["metadata"]["generation"] == 1
        assert kube.fresh_reads == 1
