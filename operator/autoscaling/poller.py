"""The lag poller and the ``Autoscaler`` the operator calls: measure, remember, decide.

Built for a thousand pipelines on one operator:

- one :class:`~streamherd.operator.lagprobe.LagProbe` (one librdkafka admin connection) per
  Kafka cluster, keyed by :class:`~streamherd.operator.lagprobe.ClusterConfig` (servers plus
  security settings), shared by every pipeline on that cluster;
- requests for the same cluster that arrive within a short batch window are measured in one
  ``measure_many`` call (one Metadata request, two ListOffsets fan-outs, one OffsetFetch per
  group, pipelined), in a small thread pool because confluent-kafka calls block;
- no task or thread per pipeline: :meth:`Autoscaler.run` is one loop that keeps, per
  pipeline, the next due time, first placed at a stable offset inside the poll interval
  (a hash of the pipeline's key) and then moved by the interval plus a little jitter, so
  polls stay spread over the interval instead of bunching up;
- a bounded :class:`~streamherd.operator.autoscaling.decision.History` per pipeline.

The operator side (status, Events, the Deployment) is in ``autoscaling/handlers.py``; the
decision itself is the pure ``decision.decide``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.autoscaling.decision import (
    BOUNDS,
    NO_DATA,
    Decision,
    History,
    Policy,
    Sample,
    decide,
    policy_for,
)
from streamherd.operator.builders.keying import repartition_topic
from streamherd.operator.lagprobe import (
    ClusterConfig,
    GroupLag,
    GroupSpec,
    LagProbe,
    LagProbeError,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
ClusterResolver = Callable[[StreamPipeline], ClusterConfig]
ProbeFactory = Callable[[ClusterConfig], LagProbe]


@dataclass(frozen=True)
class ScaleResult:
    """What the operator acts on: the replicas wanted, why, and what was measured."""

    desired: int
    reason: str
    message: str
    lag: int | None
    stuck: tuple[tuple[str, int], ...]
    changed: bool  # desired differs from the current replicas
    decision: Decision


def plain_cluster(pipeline: StreamPipeline) -> ClusterConfig:
    """The source cluster without credentials (tests, PLAINTEXT clusters)."""
    kafka = pipeline.spec.source.kafka
    if kafka is None:
        raise ValueError("pipeline has no Kafka source")
    return ClusterConfig.of(kafka.bootstrap_servers)


def _offset(key: Key, interval: float) -> float:
    """A stable place for this pipeline inside the poll interval (spreads first polls)."""
    digest = hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


# How often a pipeline whose lag keeps failing to be measured for the same reason is
# warned about again (seconds); the polls in between log at debug level.
UNMEASURED_REMINDER = 600.0


@dataclass
class _Unmeasured:
    """Why a pipeline's lag is not measured, since when, when it was last warned about."""

    why: str
    since: float
    warned: float
    polls: int


@dataclass
class _Batch:
    specs: dict[str, GroupSpec] = field(default_factory=dict)
    #: (group, the waiter's own topics, its future): pipelines may share a group.
    waiters: list[tuple[str, tuple[str, ...], asyncio.Future[GroupLag | LagProbeError]]] = field(
        default_factory=list
    )


def _own(result: GroupLag | LagProbeError, topics: tuple[str, ...]) -> GroupLag | LagProbeError:
    """The part of a group's lag over `topics` (a pipeline's: the group may be shared)."""
    if isinstance(result, LagProbeError):
        return result
    mine = set(topics)
    if all(p.topic in mine for p in result.partitions) and all(
        t in mine for t in result.missing_topics
    ):
        return result
    return replace(
        result,
        partitions=tuple(p for p in result.partitions if p.topic in mine),
        missing_topics=tuple(t for t in result.missing_topics if t in mine),
    )


class Autoscaler:
    """Measures lag through shared probes, keeps bounded histories, returns decisions."""

    def __init__(
        self,
        *,
        resolve_cluster: ClusterResolver = plain_cluster,
        probe_factory: ProbeFactory | None = None,
        executor: ThreadPoolExecutor | None = None,
        batch_window: float = 0.05,
        jitter: float = 0.1,
        tuning: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._resolve = resolve_cluster
        self._factory: ProbeFactory = probe_factory or LagProbe
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(4, thread_name_prefix="streamherd-lag")
        self._batch_window = batch_window
        self._jitter = jitter
        self._tuning = dict(tuning or {})
        self._rng = rng or random.Random()
        self._probes: dict[ClusterConfig, LagProbe] = {}
        self._batches: dict[ClusterConfig, _Batch] = {}
        self._histories: dict[Key, History] = {}
        self._due: dict[Key, float] = {}
        self._unmeasured: dict[Key, _Unmeasured] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------------- measuring

    def probe_count(self) -> int:
        return len(self._probes)

    def history(self, key: Key) -> History | None:
        return self._histories.get(key)

    def forget(self, key: Key) -> None:
        """Drop a deleted pipeline's history and schedule."""
        self._histories.pop(key, None)
        self._due.pop(key, None)
        self._unmeasured.pop(key, None)

    def _report_unmeasured(self, key: Key, why: str, at: float) -> None:
        """A warning when a pipeline's lag stops being measured or fails for a new reason,
        then one reminder every UNMEASURED_REMINDER seconds, not one line per poll (an
        unreachable broker would otherwise write a warning per pipeline per poll)."""
        known = self._unmeasured.get(key)
        if known is None or known.why != why:
            log.warning("lag of %s/%s not measured: %s", key[0], key[1], why)
            self._unmeasured[key] = _Unmeasured(why, at, at, 1)
            return
        known.polls += 1
        if at - known.warned >= UNMEASURED_REMINDER:
            log.warning(
                "lag of %s/%s still not measured after %d polls over %.0fs: %s",
                key[0], key[1], known.polls, at - known.since, why,
            )  # fmt: skip
            known.warned = at
        else:
            log.debug("lag of %s/%s not measured: %s", key[0], key[1], why)

    def _report_measured(self, key: Key) -> None:
        known = self._unmeasured.pop(key, None)
        if known is not None:
            log.info(
                "lag of %s/%s measured again after %d failed polls", key[0], key[1], known.polls
            )

    def close(self) -> None:
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _probe(self, cluster: ClusterConfig) -> LagProbe:
        probe = self._probes.get(cluster)
        if probe is None:
            probe = self._probes[cluster] = self._factory(cluster)
        return probe

    async def measure(self, pipeline: StreamPipeline) -> GroupLag | LagProbeError:
        """This pipeline's group lag, batched with other requests for the same cluster."""
        kafka = pipeline.spec.source.kafka
        group = pipeline.consumer_group
        if kafka is None or group is None:
            return LagProbeError("pipeline has no Kafka source: nothing to measure")
        try:
            cluster = self._resolve(pipeline)
        # The resolver is pluggable (Secrets, files): whatever it raises becomes a reported
        # measurement failure for this pipeline, never a crash of the shared loop.
        except Exception as exc:  # noqa: BLE001
            return LagProbeError(f"cannot build the Kafka connection: {exc}")
        # The group consumes its repartition topic too (the window's side of a re-keyed
        # pipeline, workers/repartitioning.py): records waiting there are lag as well. The
        # engine reads a partition of it never committed from its beginning (decision 0090),
        # whatever the source's startFrom, so the probe measures it so.
        repartition = repartition_topic(pipeline)
        internal = (repartition,) if repartition is not None else ()
        topics = (*kafka.topics, *internal)
        spec = GroupSpec(group, topics, kafka.start_policy, from_beginning=internal)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[GroupLag | LagProbeError] = loop.create_future()
        batch = self._batches.get(cluster)
        if batch is None:
            batch = self._batches[cluster] = _Batch()
            task = loop.create_task(self._flush(cluster), name="streamherd-lag-batch")
            self._tasks.add(task)  # a reference, so the task is not garbage-collected
            task.add_done_callback(self._tasks.discard)
        # Pipelines sharing a consumer group are measured once over all their topics, and
        # each gets its own topics' part: keyed by group alone, the last one's topics were
        # measured and both got that lag (another pipeline's backlog; a helper's finding).
        known = batch.specs.get(group)
        if known is not None:
            more = tuple(t for t in topics if t not in known.topics)
            spec = replace(
                known,
                topics=(*known.topics, *more),
                from_beginning=(*known.from_beginning, *internal),
            )
        batch.specs[group] = spec
        batch.waiters.append((group, topics, waiter))
        return await waiter

    async def _flush(self, cluster: ClusterConfig) -> None:
        await asyncio.sleep(self._batch_window)
        batch = self._batches.pop(cluster)
        loop = asyncio.get_running_loop()
        try:
            probe = self._probe(cluster)
            results = await loop.run_in_executor(
                self._executor, probe.measure_many, list(batch.specs.values())
            )
        # Every waiter must be answered, whatever failed: an unanswered one would hang its
        # pipeline's autoscaling for good.
        except Exception as exc:  # noqa: BLE001
            # The error goes to the status and the log: librdkafka may quote a setting it
            # refuses, and the settings carry the Secrets' values.
            text = (
                str(exc)
                if isinstance(exc, LagProbeError)
                else f"lag probe for {cluster.describe()}: {exc!r}"
            )
            named = [n for spec in batch.specs.values() for n in (spec.group, *spec.topics)]
            err = LagProbeError(cluster.redact(text, named))
            results = dict.fromkeys(batch.specs, err)
        for group, topics, waiter in batch.waiters:
            if not waiter.done():
                waiter.set_result(_own(results[group], topics))

    # ----------------------------------------------------------------------- deciding

    def policy(self, pipeline: StreamPipeline) -> Policy:
        return policy_for(pipeline, **self._tuning)

    async def evaluate(
        self,
        pipeline: StreamPipeline,
        current_replicas: int,
        now: float | None = None,
        *,
        running: int | None = None,
    ) -> ScaleResult:
        """Measure the pipeline's lag, add it to its history, and decide.

        ``current_replicas``: the replicas asked for now (the decision's starting point);
        ``running``: the workers actually consuming (the Deployment's ready replicas), which
        the throughput estimate divides by; the current replicas when not given.
        """
        key = (pipeline.namespace, pipeline.name)
        policy = self.policy(pipeline)
        history = self._histories.get(key)
        if history is None or history.horizon != History.for_policy(policy).horizon:
            history = History.for_policy(policy).with_capacity(
                history.capacity if history else None
            )
            history = _refill(history, self._histories.get(key))
        measured = await self.measure(pipeline)
        at = time.time() if now is None else now
        partitions = 0
        if isinstance(measured, GroupLag):
            history = history.add(
                Sample.from_group_lag(
                    measured, current_replicas if running is None else running, at
                )
            )
            partitions = measured.partition_count
            self._report_measured(key)
        else:
            self._report_unmeasured(key, str(measured), at)
            last = history.samples[-1] if history.samples else None
            partitions = len(last.partitions) if last else 0
        decision = decide(policy, history, current_replicas, partitions, at)
        if not isinstance(measured, GroupLag) and decision.reason != BOUNDS:
            # No data, no action (docs/autoscaling.md): the samples before the failure,
            # judged at a later time, scaled to zero on data that covered less than the
            # idle timeout (a helper's finding). Bounds alone are the spec's, and apply.
            decision = Decision(
                current_replicas,
                NO_DATA,
                f"lag not measured: {measured}",
                capacity=history.capacity,
            )
        self._histories[key] = history.with_capacity(decision.capacity)
        return ScaleResult(
            desired=decision.replicas,
            reason=decision.reason,
            message=decision.message,
            lag=decision.lag,
            stuck=decision.stuck_partitions,
            changed=decision.replicas != current_replicas,
            decision=decision,
        )

    # ----------------------------------------------------------------------- scheduling

    def due(self, keys: Iterable[tuple[Key, float]], now: float) -> list[Key]:
        """Which of these (pipeline, poll interval) are due now; reschedules them.

        A new pipeline is first due at a stable offset inside its interval; after each poll
        it is due one interval later, give or take the jitter fraction.
        """
        out: list[Key] = []
        seen: set[Key] = set()
        for key, interval in keys:
            seen.add(key)
            nxt = self._due.get(key)
            if nxt is None:
                self._due[key] = now + _offset(key, interval)
                continue
            if nxt <= now:
                out.append(key)
                spread = 1 + self._rng.uniform(-self._jitter, self._jitter)
                # Never schedule into the past after a long stall: that would burst.
                self._due[key] = max(nxt + interval * spread, now + interval * 0.5)
        for gone in set(self._due) - seen:
            self.forget(gone)
        return out

    async def run(
        self,
        pipelines: Callable[[], Iterable[tuple[Key, float]]],
        act: Callable[[Key], Awaitable[None]],
        tick: float = 1.0,
    ) -> None:
        """Forever: every tick, start ``act`` for each due pipeline, each a task of its own.
        A pipeline whose previous act still runs is not started again. Awaiting all of a
        tick's acts before the next tick let one slow act (a reconcile waiting for its lock
        or a pool slot, a hung call) stop every other pipeline's polls (a helper's
        finding: 0.5 s polls stretched to 4 s)."""
        running: dict[Key, asyncio.Task[None]] = {}

        def done(key: Key, task: asyncio.Task[None]) -> None:
            running.pop(key, None)
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                log.warning("autoscaling %s/%s failed: %r", key[0], key[1], error)

        try:
            while True:
                for key in self.due(pipelines(), time.monotonic()):
                    if key in running:
                        continue  # its previous act still runs: this poll is skipped
                    task = asyncio.ensure_future(act(key))
                    running[key] = task
                    task.add_done_callback(functools.partial(done, key))
                await asyncio.sleep(tick)
        finally:
            for task in list(running.values()):
                task.cancel()


def _refill(history: History, old: History | None) -> History:
    """Carry samples over when the policy (and so the history horizon) changed."""
    if old is None:
        return history
    for s in old.samples:
        history = history.add(s)
    return history


__all__ = ["Autoscaler", "ClusterResolver", "ScaleResult", "plain_cluster"]
