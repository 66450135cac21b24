"""The operator's Kafka admin side: create, check and delete a pipeline's internal topics.

The reconciler (operator/reconciler.py) asks :class:`InternalTopics` to make sure the
topics a pipeline's workers use (operator/builders/topics.py: repartition, changelog) exist
on the source's cluster before it applies the workers; the deletion handler
(operator/handlers.py) asks it to delete them when the pipeline goes (unless
``spec.state.retainOnDelete``).

- One admin client per cluster (servers plus security settings, the autoscaler's
  :class:`~streamherd.operator.lagprobe.ClusterConfig`), shared by every pipeline on it:
  an operator/kafkaadmin.py :class:`~streamherd.operator.kafkaadmin.KafkaAdmin`, which owns
  the client's creation, its timeouts and its errors. Credentials come from the pipeline's
  Secrets through the resolver the operator passes in (``cluster_from_secrets``, as for the
  lag probe) and never reach a log line, a condition or an event.
- Idempotent: a topic that exists is checked, never recreated. One with fewer partitions
  than the source's most, or with another ``cleanup.policy``/``retention.ms`` than the
  operator sets, is reported (it holds data: recreating it would lose it), with advice
  (:func:`mismatch_message`) that never has a partition count changed under its state.
  Fewer partitions alone are status ``fewer``, usable as they are (the advice is to leave
  them); a configuration that differs is ``mismatch``, which needs a person.
- Bounded: attempts run in a small pool of their own. A pipeline's first reconcile waits
  for its first attempt (every broker call has a ``timeout``; a healthy broker answers well
  within it), so the topics exist before the workers are applied and the first status
  already says how it went; later reconciles never wait: while a new attempt runs they get
  what the last one found (so a retry costs no status write). After a failure (broker
  unreachable, Secret missing) the same pipeline is not tried again before its backoff (5 s
  doubling to 5 min) is over, whatever triggers its reconciles, so an unreachable broker
  costs one attempt per backoff, not one per Deployment event; and for ``BACKOFF_START``
  seconds after a cluster failed to answer, other pipelines on it fail at once with the
  same answer instead of each waiting its timeout. A success is trusted for ``recheck``
  seconds.
- Partitions: the most of the source topics (``^pattern`` topics match by regular
  expression, as in the consumer's subscription), read from the broker's metadata.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Final

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.topics import (
    TOPICS_USABLE,
    TopicSpec,
    TopicsReport,
    TopicsStatus,
    TopicState,
    all_internal_names,
    internal_topics,
)
from streamherd.operator.kafkaadmin import (
    AdminFactory,
    KafkaAdmin,
    KafkaAdminError,
    TopicConfigRefused,
    TopicRequest,
    logged_admin,
)
from streamherd.operator.lagprobe import ClusterConfig

log = logging.getLogger(__name__)

#: First wait after a failure, and the most (doubling in between).
BACKOFF_START: Final = 5.0
BACKOFF_MAX: Final = 300.0
#: Checks in a row that may find a topic the broker does not list or describe yet
#: ("checking": made or deleted a moment ago) before it is a problem for a person: 5 + 10 +
#: 20 + 40 s of backoff. A principal that may create a topic but not Describe it (an ACL)
#: would otherwise leave it "checking" for good.
BEHIND_CHECKS: Final = 4

ClusterResolver = Callable[[StreamPipeline], ClusterConfig]


#: The broker could not be asked (unreachable, timed out, not authorized): the admin's own
#: error (operator/kafkaadmin.py), under the name the deletion handler knows.
TopicAdminError = KafkaAdminError


# --------------------------------------------------------------------------- pure checks


def source_partitions(topics: Sequence[str], metadata: Mapping[str, int]) -> int | None:
    """The most partitions of any source topic (``^`` patterns match by regex), or None
    when none of them exists. `metadata`: topic name -> partition count."""
    counts = []
    for topic in topics:
        if topic.startswith("^"):
            pattern = re.compile(topic)
            counts += [n for name, n in metadata.items() if pattern.match(name)]
        elif topic in metadata:
            counts.append(metadata[topic])
    return max(counts) if counts else None


def topic_problems(
    spec: TopicSpec, partitions: int, wanted: int, config: Mapping[str, str]
) -> list[str]:
    """What is wrong with an existing internal topic: fewer partitions than the source's
    most, or a configuration entry the operator sets with another value."""
    problems = []
    if partitions < wanted:
        problems.append(
            f"{spec.name} has {partitions} partitions, the source topics' most is {wanted}"
        )
    for key, value in sorted(spec.config.items()):
        have = config.get(key)
        if have != value:
            problems.append(f"{spec.name} has {key}={have}, the operator sets {value}")
    return problems


def mismatch_message(states: Sequence[TopicState], wanted: int) -> str:
    """What is wrong with the existing internal topics (`states`), and what to do about it.

    A configuration is set right with kafka-configs. A partition count is not to be
    changed while the topic holds state: it decides where the state lives (a key's
    repartition partition is CRC-32 of the key modulo the count; a consumed partition's
    changelog partition is its number modulo the count), so adding partitions would move
    keys to other window state (an open window gives two results) or restore a partition
    empty, which no state fingerprint shows. The workers use the count the topic has,
    whatever the source's (workers/repartitioning.py ``ensure_topic``), so leaving it is
    safe; what it costs is parallelism."""
    problems = [p for t in states for p in t.problems]
    short = [
        t for t in states
        if not t.created and t.partitions is not None and t.partitions < wanted
    ]  # fmt: skip
    # topic_problems: one problem for a short count, one per configuration entry.
    configured = any(
        t.partitions is not None and len(t.problems) > (1 if t in short else 0) for t in states
    )
    advice = ["not recreated (it holds data)"]
    if configured:
        advice.append("set the configuration with kafka-configs")
    if short:
        moves, costs = [], []
        for t in short:
            if t.spec.purpose == "repartition":
                moves.append("a key's repartition partition (open windows split in two results)")
                costs.append(f"the windows run on at most {t.partitions} workers")
            else:
                moves.append("a partition's changelog partition (its state restores empty)")
                costs.append("several partitions share a changelog partition")
        names = ", ".join(t.spec.name for t in short)
        advice.append(
            f"do not add partitions to {names} (kafka-topics --alter): the count decides "
            f"{' and '.join(moves)}; leave {'it' if len(short) == 1 else 'them'}, the workers "
            f"use the count a topic has, whatever the source's ({'; '.join(costs)}). For more, "
            "run the pipeline under a new name (its internal topics are created with the "
            "source's partitions) from a startFrom time, and delete a topic only when no state "
            f"of the pipeline lives in it (it is created again with {wanted})"
        )
    return "; ".join(problems) + ": " + "; ".join(advice)


def backoff(failures: int) -> float:
    """Seconds to wait after the n-th failure in a row (n >= 1)."""
    return float(min(BACKOFF_MAX, BACKOFF_START * 2 ** max(0, failures - 1)))


# --------------------------------------------------------------------------- the manager


@dataclass
class _Memory:
    """What the manager remembers of one pipeline's last attempt."""

    fingerprint: tuple[Any, ...]
    report: TopicsReport
    at: float
    failures: int = 0
    # Of those failures, the last ones in a row that found topics the broker does not list
    # or describe ("checking"): BEHIND_CHECKS bounds them, whatever failed before.
    behind: int = 0


@dataclass
class InternalTopics:
    """Ensures and deletes internal topics through shared admin clients (thread-safe)."""

    resolve_cluster: ClusterResolver
    admin_factory: AdminFactory = logged_admin
    timeout: float = 5.0
    recheck: float = 300.0
    #: How long a pipeline's first reconcile waits for its first attempt (None: the broker
    #: calls' own bound, timeout plus a margin).
    wait: float | None = None
    clock: Callable[[], float] = time.monotonic
    workers: int = 8
    _admins: dict[ClusterConfig, KafkaAdmin] = field(default_factory=dict)
    _memory: dict[tuple[str, str], _Memory] = field(default_factory=dict)
    _running: dict[tuple[str, str], Future[TopicsReport]] = field(default_factory=dict)
    # Clusters that just failed to answer: until when, and what they said.
    _down: dict[ClusterConfig, tuple[float, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            # Dropped, not closed: an attempt still running in the pool keeps its own.
            self._admins.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _admin(self, cluster: ClusterConfig) -> KafkaAdmin:
        with self._lock:
            admin = self._admins.get(cluster)
            if admin is None:
                admin = KafkaAdmin.connect(cluster, self.timeout, self.admin_factory)
                self._admins[cluster] = admin
            return admin

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._memory.pop((namespace, name), None)

    def ensure(self, pipeline: StreamPipeline) -> TopicsReport | None:
        """Make sure the pipeline's internal topics exist as they should; None when it has
        none. Never raises: failures are in the report (and retried after a backoff)."""
        specs = internal_topics(pipeline)
        if not specs:
            self.forget(pipeline.namespace, pipeline.name)
            return None
        kafka = pipeline.spec.source.kafka
        assert kafka is not None  # only a Kafka source has internal topics
        key = (pipeline.namespace, pipeline.name)
        fingerprint = (
            str(pipeline.metadata.get("uid") or ""),
            kafka.bootstrap_servers,
            tuple(kafka.topics),
            tuple((s.name, tuple(sorted(s.created_with.items()))) for s in specs),
        )
        now = self.clock()
        with self._lock:
            memory = self._memory.get(key)
            if memory is not None and memory.fingerprint == fingerprint:
                age = now - memory.at
                usable = memory.report.status in TOPICS_USABLE
                if usable and age < self.recheck:
                    return memory.report
                if not usable and age < backoff(memory.failures):
                    return _with_retry(memory.report, backoff(memory.failures) - age)
            running = self._running.get(key)
            if running is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="topics")
                # _attempt removes it again under this lock, so never before it is set.
                running = self._pool.submit(self._attempt, pipeline, key, fingerprint, memory)
                self._running[key] = running
        known = memory is not None and memory.fingerprint == fingerprint
        if known and not running.done():
            # What the last attempt found stands until this one is over: a status that
            # flipped to "checking" and back at every retry would be two writes per retry.
            assert memory is not None
            return _with_retry(memory.report, self.timeout + 1.0)
        wait = self.wait if self.wait is not None else 3 * self.timeout + 1.0
        try:
            return running.result(timeout=wait)
        except (FutureTimeout, CancelledError):
            return TopicsReport(
                "checking",
                message=f"asking {kafka.bootstrap_servers} about the internal topics",
                retry_after=self.timeout + 1.0,
            )

    def _attempt(
        self,
        pipeline: StreamPipeline,
        key: tuple[str, str],
        fingerprint: tuple[Any, ...],
        memory: _Memory | None,
    ) -> TopicsReport:
        """One try at the broker (in the pool); its outcome is remembered."""
        kafka = pipeline.spec.source.kafka
        assert kafka is not None
        specs = internal_topics(pipeline)
        cluster: ClusterConfig | None = None
        try:
            cluster = self.resolve_cluster(pipeline)
            with self._lock:
                down = self._down.get(cluster)
            if down is not None and self.clock() < down[0]:
                raise TopicAdminError(down[1])
            report = self._ensure(self._admin(cluster), list(kafka.topics), specs)
            with self._lock:
                self._down.pop(cluster, None)
        except TopicAdminError as e:
            report = TopicsReport(
                "unreachable",
                message=f"cannot reach {kafka.bootstrap_servers} to create or check the "
                f"internal topics: {e}",
            )
            if cluster is not None:
                with self._lock:
                    self._down.setdefault(cluster, (self.clock() + BACKOFF_START, str(e)))
                    if self._down[cluster][0] <= self.clock():
                        self._down[cluster] = (self.clock() + BACKOFF_START, str(e))
        except Exception as e:  # noqa: BLE001 - a resolver (Secrets) or client failure
            report = TopicsReport(
                "unreachable",
                message=f"cannot connect to {kafka.bootstrap_servers}: {type(e).__name__}: {e}",
            )
        failures = behind = 0
        known = memory if memory is not None and memory.fingerprint == fingerprint else None
        if report.status not in TOPICS_USABLE:
            failures = (known.failures if known else 0) + 1
            if report.status == "checking":
                behind = (known.behind if known else 0) + 1
                if behind > BEHIND_CHECKS:
                    report = _still_behind(report, behind)
            report = _with_retry(report, backoff(failures))
        # Remembered without the `created` marks: a later reconcile that gets it from memory
        # must not announce the creation again.
        kept = TopicsReport(
            report.status,
            tuple(TopicState(t.spec, t.partitions, False, t.problems) for t in report.topics),
            report.message,
            report.retry_after,
        )
        with self._lock:
            self._memory[key] = _Memory(fingerprint, kept, self.clock(), failures, behind)
            self._running.pop(key, None)
        for t in report.created:
            log.info("internal topic %s created (%s partitions)", t.spec.name, t.partitions)
        return report

    def _ensure(
        self, admin: KafkaAdmin, sources: list[str], specs: list[TopicSpec]
    ) -> TopicsReport:
        # Just these topics' metadata, unless a source is a pattern (then every topic's).
        names = (
            None
            if any(t.startswith("^") for t in sources)
            else [*sources, *(s.name for s in specs)]
        )
        metadata = admin.topics(names)
        wanted = source_partitions(sources, metadata)
        if wanted is None:
            return TopicsReport(
                "no-source",
                message=f"none of the source topics {', '.join(sources)} exists yet: the "
                "internal topics get the source topics' most partitions, so they are created "
                "once one does",
            )
        missing = [s for s in specs if s.name not in metadata]
        created: set[str] = set()
        if missing:
            created = _create(admin, missing, wanted)
            # A worker (or another operator replica) may have made one meanwhile: read back.
            metadata = admin.topics(names)
        # Only what was there before: a topic made a moment ago has the configuration it
        # was made with, and the broker may not describe it yet (UNKNOWN_TOPIC_OR_PART).
        configs = admin.topic_configs([s.name for s in specs if s.name not in created])
        states = []
        # Topics the broker has not caught up with: made (by this try or just before it,
        # by a worker or another operator) but not listed, or listed but not described.
        # Neither is a mismatch nor a broker that cannot be reached (which would hold off
        # every pipeline on the cluster): the next try, a backoff later, sees them.
        behind: list[str] = []
        for spec in specs:
            partitions = metadata.get(spec.name, wanted if spec.name in created else None)
            problems: list[str] = []
            if partitions is None or (spec.name not in created and spec.name not in configs):
                behind.append(spec.name)
                problems.append(f"{spec.name}: the broker does not list or describe it")
            elif spec.name not in created:
                problems = topic_problems(spec, partitions, wanted, configs[spec.name])
            states.append(TopicState(spec, partitions, spec.name in created, tuple(problems)))
        if behind:
            return TopicsReport(
                "checking",
                tuple(states),
                f"the broker does not list or describe {', '.join(behind)} yet (created or "
                "deleted a moment ago): checked again shortly",
            )
        if any(t.problems for t in states):
            # Fewer partitions alone are to be left as they are (the advice): the workers
            # run on them, at that parallelism, so that is no trouble that needs a person.
            only_fewer = all(
                len(t.problems) == (1 if t.partitions is not None and t.partitions < wanted else 0)
                for t in states
            )
            status: TopicsStatus = "fewer" if only_fewer else "mismatch"
            return TopicsReport(status, tuple(states), mismatch_message(states, wanted))
        return TopicsReport("ready", tuple(states), _ready_message(states))

    def delete(self, pipeline: StreamPipeline) -> list[str]:
        """Delete every internal topic the pipeline may have (any purpose, any earlier
        spec); returns the ones deleted. Raises TopicAdminError when the broker cannot be
        asked (the caller retries a bounded number of times)."""
        kafka = pipeline.spec.source.kafka
        self.forget(pipeline.namespace, pipeline.name)
        if kafka is None:
            return []
        try:
            cluster = self.resolve_cluster(pipeline)
        except Exception as e:  # noqa: BLE001 - Secrets gone (a namespace being deleted)
            raise TopicAdminError(f"cannot build the connection: {e}") from None
        admin = self._admin(cluster)
        names = all_internal_names(pipeline)
        listed = admin.topics(names)
        present = [n for n in names if n in listed]
        deleted = admin.delete_topics(present)
        for name in deleted.names:
            log.info("internal topic %s deleted", name)
        if deleted.failed:
            raise TopicAdminError("; ".join(sorted(set(deleted.failed.values()))))
        return deleted.names


def _create(admin: KafkaAdmin, missing: Sequence[TopicSpec], wanted: int) -> set[str]:
    """Create the ``missing`` topics with their configuration and tuning; the names made.

    Some clusters let a topic set only a few settings and refuse a creation that names any
    other (MSK Serverless takes ``cleanup.policy``, ``retention.ms`` and a few more; a
    broker's ``CreateTopicPolicy``). The tuning bounds a restore, it does not keep the state
    correct: a topic refused with it is made with its checked entries alone, as operators
    before the tuning made it (decision 0193), rather than not at all. A refusal of the
    checked entries themselves is raised as ever."""
    try:
        return admin.create_topics([TopicRequest(s.name, wanted, s.created_with) for s in missing])
    except TopicConfigRefused as refused:
        again = [s for s in missing if s.name in refused.refused and s.tuning]
        if len(again) < len(refused.refused):
            raise
        log.warning(
            "the broker refused the tuning of %s (%s): created with %s alone",
            ", ".join(s.name for s in again),
            refused,
            ", ".join(sorted({k for s in again for k in s.config})),
        )
        made = admin.create_topics([TopicRequest(s.name, wanted, s.config) for s in again])
        return set(refused.created) | made


def _still_behind(report: TopicsReport, checks: int) -> TopicsReport:
    """A "checking" report after ``checks`` checks in a row found topics the broker does
    not list or describe: no longer a moment after their creation, a mismatch a person
    looks at (TopicMismatch), still checked again at each backoff."""
    return TopicsReport(
        "mismatch",
        report.topics,
        "; ".join(report.problems)
        + f", in {checks} checks in a row: not a topic made or deleted a moment ago. Most "
        "likely the operator may create the topic but not Describe it or its configuration "
        "(the principal's ACLs), or something deletes and recreates it",
        report.retry_after,
    )


def _with_retry(report: TopicsReport, seconds: float) -> TopicsReport:
    return TopicsReport(report.status, report.topics, report.message, max(1.0, seconds))


def _ready_message(states: Sequence[TopicState]) -> str:
    return "; ".join(
        f"{t.spec.purpose} topic {t.spec.name} ({t.partitions} partitions)" for t in states
    )


__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
    "InternalTopics",
    "TopicAdminError",
    "TopicState",
    "TopicsReport",
    "backoff",
    "logged_admin",
    "source_partitions",
    "topic_problems",
]
