"""Measure a consumer group's lag from the broker, without a running worker.

Per partition, lag is the log end offset minus the group's committed offset, with the two
cases a naive subtraction gets wrong:

- nothing committed yet: the group's ``startFrom`` decides; ``earliest`` will consume the
  whole retained log (log end - log start), ``latest`` will consume nothing already there (0);
  a committed offset that disappears (expired at zero workers) is remembered, since the
  workers' checkpoints stand (:class:`Positions`);
- retention (or ``DeleteRecords``) removed records past the committed offset
  (committed < log start): the consumer resets to the log start, so what it will really
  consume is log end - log start, not log end - committed.

The operator's autoscaler (``streamherd.operator.autoscaling``) uses a :class:`LagProbe` per
Kafka cluster to measure many pipelines' groups in a few requests, which is what lets it scale
a pipeline that has zero workers, whatever image they run. The per-partition rule,
:func:`~streamherd.workers.lag.partition_lag`, lives with the workers (workers/lag.py), whose
exported lag follows it too; the workers never build a :class:`LagProbe`, which would start an
offsets-topic reader. Besides confluent_kafka this module needs only the workers' Kafka
endpoint model and that rule (the operator imports the workers' shared modules, never the
other way round).

Requests per :meth:`LagProbe.measure_many` call, whatever the number of groups: one Metadata
request (partition counts), one ListOffsets fan-out for log starts and one for log ends (all
partitions of all topics plus the high watermarks of ``__consumer_offsets``; librdkafka groups
them by partition leader), one ListOffsets for the last stable offsets of
``__consumer_offsets``, and the Fetch requests that bring the committed offsets up to date
(:mod:`streamherd.operator.offsetstopic`: one consumer per probe reads every group's commits
from ``__consumer_offsets``, up to the offsets just listed, so a commit acknowledged before
the call is always seen).

OffsetFetch is the fallback, one request per group (plus a FindCoordinator). It measures the
groups whose ``__consumer_offsets`` partition holds an open transaction or was not read to
its end within half the request timeout (start-up on a big cluster), and every group when the
offsets topic cannot be read (not authorized: logged once, then OffsetFetch for good) or
when ``read_offsets_topic=False``. It is sent by a short-lived consumer *of that group*
(``Consumer.committed``), a few at a time, never by the admin client: librdkafka (2.16
included, confluentinc/librdkafka#5040) dereferences the handle's consumer group when an
OffsetFetch answer says NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE, and an admin client
has none, so ListConsumerGroupOffsets kills the whole process with a segfault in thread
``rdk:main`` whenever a coordinator is not ready (a fresh cluster creating
``__consumer_offsets``, a coordinator moving). Decision 0031 has the details.

A probe may be used by several threads at once (the operator's executor) and closed while
they run: the admin client is thread-safe, the reader serialises its consumer behind its own
lock, the probe's lock guards creating and closing what it owns, and a call on a closed
probe fails with :class:`LagProbeError`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec as _OffsetSpec

from streamherd.operator.offsetstopic import (
    OFFSETS_TOPIC,
    PERMANENT_ERRORS,
    CatchUp,
    OffsetsTopicReader,
)
from streamherd.workers.config import KafkaEndpoint
from streamherd.workers.lag import StartFrom, partition_lag

# OffsetSpec's factory methods are untyped in confluent-kafka's stubs.
OffsetSpec: Any = _OffsetSpec

log = logging.getLogger(__name__)

#: The only settings logs, errors and status may show: what the manifest itself says.
#: Everything else may come from a Secret (the SASL username, the CA bundle, the client
#: certificate and key, their passwords) and is never shown, named only by its key.
SHOWN_SETTINGS: Final = frozenset({"security.protocol", "sasl.mechanism"})

# OffsetFetch fallback: consumers in flight at once per probe (each one has a few librdkafka
# threads and connections for its short life).
FETCH_CONCURRENCY = 8


class LagProbeError(RuntimeError):
    """The lag of a group could not be measured (broker unreachable, partition leaderless...)."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a measurement."""

    topic: str
    partition: int
    log_start: int
    log_end: int
    committed: int | None
    lag: int


@dataclass(frozen=True)
class GroupLag:
    """The lag of one consumer group over its topics, at one moment."""

    group: str
    partitions: tuple[PartitionLag, ...]
    measured_at: float  # time.time() when the answers were in
    missing_topics: tuple[str, ...] = ()  # topics that do not exist (yet)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def partition_count(self) -> int:
        return len(self.partitions)

    @property
    def log_end_total(self) -> int:
        """Sum of log end offsets: its growth over time is the input rate."""
        return sum(p.log_end for p in self.partitions)

    @property
    def position_total(self) -> int:
        """Sum over partitions of where the group really is (log end - lag).

        Its growth over time is the drain rate; unlike the committed offsets it also copes
        with no-commit partitions and with retention jumps.
        """
        return self.log_end_total - self.total

    def by_partition(self) -> dict[tuple[str, int], int]:
        return {(p.topic, p.partition): p.lag for p in self.partitions}


@dataclass(frozen=True)
class GroupSpec:
    """What to measure: a group, the topics it consumes, and its no-commit policy."""

    group: str
    topics: tuple[str, ...]
    start_from: StartFrom = "earliest"
    #: Topics the group reads from their beginning whatever start_from says: a re-keyed
    #: pipeline's repartition topic (decision 0090). Measured by start_from, 40,000 entries
    #: waiting there under `startFrom: latest` counted as no lag (a helper's finding).
    from_beginning: tuple[str, ...] = ()

    def start_for(self, topic: str) -> StartFrom:
        return "earliest" if topic in self.from_beginning else self.start_from


# --------------------------------------------------------------------------- positions

#: A group the probe has not measured for this long is forgotten by :class:`Positions`
#: (its pipeline deleted, or moved to another group or cluster): a day longer than the
#: broker's default offsets.retention.minutes (7 days), so that a pipeline suspended (not
#: measured) until its offsets expired is still measured from them when it resumes (an
#: hour, as first set, forgot it long before: a review's finding).
POSITIONS_TTL: Final = 8 * 86400.0


class Positions:
    """Where a group's workers will read from, as far as the probe has seen, for partitions
    whose committed offset is gone or was never there.

    - **A committed offset that disappears** is not where the workers resume. The broker
      deletes the offsets of a group that has had no member for ``offsets.retention.minutes``
      (7 days by default: a pipeline scaled to zero, or suspended, that long), and a user may
      delete them. The workers' checkpoints stand then (docs/lifecycle.md), at about the last
      committed offset (they commit only after a durable checkpoint). Measured by
      ``startFrom`` instead, the lag read 0 under ``latest``, so a pipeline at zero workers
      never woke for new input again, and under ``earliest`` the whole retained log, which
      woke it to as many workers as that backlog asks for.
    - **Nothing ever committed, under latest:** the records that arrive after the probe first
      saw the partition are lag. Measured as 0, they never woke a pipeline at zero whose
      offsets had expired before the operator (and this memory) started.

    Kept in memory per probe (one per cluster, for the operator's life) for
    :data:`POSITIONS_TTL` after the group was last measured: after a restart, or a suspend
    longer than that, an expired group reads by ``startFrom`` until it commits again, as
    before. A topic created again while the pipeline is at zero is measured from the old
    log's offset (too low a lag, but for an empty new log above it: the whole log); its
    workers hold it under ``refuse``. Thread-safe."""

    def __init__(self, ttl: float = POSITIONS_TTL) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        # group -> (last measured, monotonic; {(topic, partition): offset})
        self._seen: dict[str, tuple[float, dict[tuple[str, int], int]]] = {}

    def position(
        self, group: str, tp: tuple[str, int], committed: int | None, log_end: int, *,
        start_from: StartFrom, now: float,
    ) -> int | None:  # fmt: skip
        """The offset the lag of ``tp`` is measured from: ``committed`` when there is one
        (remembered), else the one remembered (None: none, ``startFrom`` decides)."""
        with self._lock:
            _, known = self._seen.get(group, (now, {}))
            self._seen[group] = (now, known)
            if committed is not None:
                known[tp] = committed
                return committed
            if tp not in known and start_from == "latest":
                known[tp] = log_end  # what is there now is not to be read; what comes is
            return known.get(tp)

    def forget_idle(self, now: float) -> None:
        """Forget the groups not measured within the time to live."""
        with self._lock:
            for group in [g for g, (t, _) in self._seen.items() if now - t > self._ttl]:
                del self._seen[group]

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach one Kafka cluster: the key under which one admin client is shared.

    ``settings`` are librdkafka properties (``security.protocol``, ``sasl.*``, ``ssl.*``),
    kept as sorted pairs so equal configurations compare and hash equal. They are left out of
    ``repr`` because they may carry a password.
    """

    bootstrap_servers: str
    settings: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, bootstrap_servers: str, settings: Mapping[str, str] | None = None) -> ClusterConfig:
        return cls(bootstrap_servers, tuple(sorted((settings or {}).items())))

    @classmethod
    def from_endpoint(
        cls, endpoint: KafkaEndpoint, environ: Mapping[str, str] | None = None
    ) -> ClusterConfig:
        """The configuration a worker uses, SASL credentials read from its environment."""
        env = os.environ if environ is None else environ
        sec = endpoint.security
        settings: dict[str, str] = {"security.protocol": sec.protocol.lower()}
        if sec.sasl_mechanism:
            settings["sasl.mechanism"] = sec.sasl_mechanism
        if sec.sasl_username_env:
            settings["sasl.username"] = env.get(sec.sasl_username_env, "")
        if sec.sasl_password_env:
            settings["sasl.password"] = env.get(sec.sasl_password_env, "")
        if sec.ca_file:
            settings["ssl.ca.location"] = sec.ca_file
        if sec.cert_file:
            settings["ssl.certificate.location"] = sec.cert_file
        if sec.key_file:
            settings["ssl.key.location"] = sec.key_file
        return cls.of(endpoint.bootstrap_servers, settings)

    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap_servers, **dict(self.settings)}

    def describe(self) -> str:
        """For logs, errors and status: the servers and the settings the manifest states
        (:data:`SHOWN_SETTINGS`); any other setting by its key only, its value hidden."""
        shown = {k: v if k in SHOWN_SETTINGS else "<hidden>" for k, v in self.settings}
        return f"{self.bootstrap_servers} {shown}" if shown else self.bootstrap_servers

    def redact(self, text: str, public: Iterable[str] = ()) -> str:
        """``text`` (a client library's error, say) with the value of every hidden setting,
        and every line of a multi-line one (a PEM), replaced by ``<hidden>``: librdkafka may
        quote a value it refuses.

        The text the spec states stays as it is where a value is only part of it: the
        bootstrap servers (the list, and each ``host:port``) and ``public`` (the group and
        topic names, say). A value inside one (a SASL user ``analytics`` in
        ``analytics-kafka-bootstrap:9092``) was marked inside it, so anyone who may read
        the spec read where the value is (a helper's finding). A value that holds a stated
        text (``svc-orders-reader`` and the topic ``orders``) is hidden whole: each
        occurrence of a value is kept only when it lies within an occurrence of a stated
        text (a review's finding: standing the stated texts aside first let such a value
        through). A value that *is* one of them cannot be told from it, and is shown."""
        pieces: set[str] = set()
        for key, value in self.settings:
            if key not in SHOWN_SETTINGS and value:
                pieces.add(value)
                pieces.update(s for line in value.splitlines() if len(s := line.strip()) >= 8)
        if not pieces:
            return text
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        stated = {self.bootstrap_servers, *servers, *(p for p in public if p)}
        within = [(i, i + len(t)) for t in stated for i in _occurrences(text, t)]
        hidden: list[tuple[int, int]] = []
        for piece in pieces:
            for i in _occurrences(text, piece):
                span = (i, i + len(piece))
                if not any(a <= span[0] and span[1] <= b for a, b in within):
                    hidden.append(span)
        out, at = [], 0
        for a, b in sorted(hidden):
            if b <= at:
                continue  # inside a span hidden already
            out += [text[at : max(a, at)], "<hidden>"]
            at = b
        return "".join([*out, text[at:]])


def _occurrences(text: str, piece: str) -> list[int]:
    """Where ``piece`` starts in ``text``, overlapping occurrences included."""
    found, i = [], text.find(piece)
    while i >= 0:
        found.append(i)
        i = text.find(piece, i + 1)
    return found


# --------------------------------------------------------------------------- the probe


@dataclass
class ProbeCounters:
    """What a probe did so far (benchmarks and tests read it; the operator does not)."""

    calls: int = 0
    groups: int = 0
    from_topic: int = 0  # groups whose committed offsets came from __consumer_offsets
    from_fetch: int = 0  # groups measured with an OffsetFetch (fallback)


class LagProbe:
    """One AdminClient (and one ``__consumer_offsets`` reader) for one cluster, measuring
    the lag of many groups at once.

    Thread-safe (see the module docstring), but every call blocks: the operator runs it in a
    small executor. Close it when done; calls after (or during) close fail with
    :class:`LagProbeError`.
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        request_timeout: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
        read_offsets_topic: bool = True,
        fetch_hook: Callable[[Consumer], None] | None = None,
    ) -> None:
        self.cluster = cluster
        # Benchmarks only (see fetch_committed); the operator passes none.
        self._fetch_hook = fetch_hook
        self.request_timeout = request_timeout
        self._conf: dict[str, Any] = {**cluster.client_config(), **(extra_config or {})}
        self._admin: AdminClient | None = AdminClient(self._conf)
        # Guards creating and closing the reader and the fetch pool, and the counters.
        self._lock = threading.Lock()
        self._reader: OffsetsTopicReader | None = None
        self._fetcher: ThreadPoolExecutor | None = None
        # None while the offsets topic may be read; otherwise why it is not (for good).
        self._disabled: str | None = None if read_offsets_topic else "read_offsets_topic=False"
        self._logged: set[str] = set()
        self.counters = ProbeCounters()
        self.positions = Positions()

    def close(self) -> None:
        with self._lock:
            # AdminClient has no close(); dropping the reference lets librdkafka tear down
            # once no running call holds it any more.
            self._admin = None
            reader, self._reader = self._reader, None
            fetcher, self._fetcher = self._fetcher, None
        if reader is not None:
            # Waits for a catch-up in progress (the reader's lock); that call then reports
            # the reader closed.
            reader.close()
        if fetcher is not None:
            # Fetches already running end by their deadline and close their consumer.
            fetcher.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> LagProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reader(self) -> OffsetsTopicReader | None:
        """The offsets-topic reader, once started (None before and after giving up)."""
        return self._reader

    @property
    def offsets_topic_disabled(self) -> str | None:
        """Why committed offsets come from OffsetFetch for good, or None."""
        return self._disabled

    def measure(self, spec: GroupSpec) -> GroupLag:
        result = self.measure_many([spec])[spec.group]
        if isinstance(result, Exception):
            raise result
        return result

    def measure_many(self, specs: Sequence[GroupSpec]) -> dict[str, GroupLag | LagProbeError]:
        """Measure every group; a group that fails gets a LagProbeError, the others do not."""
        if not specs:
            return {}
        admin = self._client()
        # Serve queued client events: with a `logger` in the configuration, librdkafka's log
        # lines wait on this queue until polled (the operator's go to its own logger).
        admin.poll(0)
        started = time.monotonic()
        deadline = started + self.request_timeout
        partitions, offsets_topic = self._partitions(admin, {t for s in specs for t in s.topics})
        all_tps = sorted({tp for tps in partitions.values() for tp in tps})
        use_topic = self._disabled is None
        if use_topic and offsets_topic is None:
            # Missing from the metadata: no group ever committed on this cluster, or we may
            # not describe it. Only OffsetFetch tells the two apart.
            self._note("absent", f"{OFFSETS_TOPIC} is not in the metadata", level=logging.INFO)
            use_topic = False
        topic_tps = [(OFFSETS_TOPIC, p) for p in range(offsets_topic or 0)] if use_topic else []
        # Issue every request before waiting for any: they travel concurrently. The offsets
        # topic's high watermarks ride in the log-end request.
        starts = self._list_offsets(admin, all_tps, OffsetSpec.earliest())
        ends = self._list_offsets(admin, all_tps + topic_tps, OffsetSpec.latest())
        stable = self._list_offsets(
            admin, topic_tps, OffsetSpec.latest(), IsolationLevel.READ_COMMITTED
        )
        start_offsets, start_errors = _offsets(starts, deadline)
        end_offsets, end_errors = _offsets(ends, deadline)
        caught: CatchUp | None = None
        if topic_tps:
            budget = min(deadline, started + self.request_timeout / 2)
            caught = self._catch_up(len(topic_tps), end_offsets, end_errors, stable, budget)
        fetches: dict[str, Future[dict[tuple[str, int], int | None]]] = {}
        from_topic: dict[str, Mapping[tuple[str, int], int]] = {}
        for spec in specs:
            tps = [tp for t in spec.topics for tp in partitions.get(t, ())]
            if not tps or spec.group in fetches or spec.group in from_topic:
                continue
            reader = self._reader
            if (
                caught is not None
                and reader is not None
                and reader.group_partition(spec.group) in caught.current
            ):
                from_topic[spec.group] = reader.committed(spec.group)
                continue
            try:
                fetches[spec.group] = self._fetch_pool().submit(
                    fetch_committed,
                    self._conf,
                    spec.group,
                    tps,
                    deadline,
                    before_close=self._fetch_hook,
                )
            except RuntimeError as exc:  # the pool was shut down: closed meanwhile
                raise LagProbeError(f"lag probe for {self.cluster.describe()} closed") from exc
        measured_at = time.time()
        with self._lock:
            self.counters.calls += 1
            self.counters.groups += len(specs)
            self.counters.from_topic += len(from_topic)
            self.counters.from_fetch += len(fetches)
        errors = {
            tp: msg for tp, msg in {**start_errors, **end_errors}.items() if tp[0] != OFFSETS_TOPIC
        }
        out: dict[str, GroupLag | LagProbeError] = {}
        self.positions.forget_idle(time.monotonic())
        for spec in specs:
            out[spec.group] = self._assemble(
                spec,
                partitions=partitions,
                fetch=fetches.get(spec.group),
                known=from_topic.get(spec.group),
                starts=start_offsets,
                ends=end_offsets,
                errors={tp: repr(e) for tp, e in errors.items()},
                deadline=deadline,
                measured_at=measured_at,
            )
        return out

    # ----------------------------------------------------------------------- internals

    def _client(self) -> AdminClient:
        admin = self._admin
        if admin is None:
            raise LagProbeError(f"lag probe for {self.cluster.describe()} is closed")
        return admin

    def _fetch_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._admin is None:
                raise LagProbeError(f"lag probe for {self.cluster.describe()} is closed")
            if self._fetcher is None:
                self._fetcher = ThreadPoolExecutor(
                    FETCH_CONCURRENCY, thread_name_prefix="streamherd-offsetfetch"
                )
            return self._fetcher

    def _note(self, kind: str, reason: str, *, level: int = logging.WARNING) -> None:
        """Log why OffsetFetch is used, once per kind (later ones at debug level)."""
        if kind in self._logged:
            log.debug("lag probe %s: %s", self.cluster.describe(), reason)
            return
        self._logged.add(kind)
        log.log(
            level,
            "lag probe %s: committed offsets from OffsetFetch (one request per group): %s",
            self.cluster.describe(),
            reason,
        )

    def _give_up(self, reason: str) -> None:
        self._disabled = reason
        self._note("disabled", f"{reason}; not reading {OFFSETS_TOPIC} again")
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _reader_for_catch_up(self) -> OffsetsTopicReader:
        """The reader, started on first use; one per probe even when calls race."""
        with self._lock:
            if self._admin is None:
                raise KafkaException(KafkaError(KafkaError._DESTROY, "lag probe closed"))
            if self._reader is None:
                self._reader = OffsetsTopicReader(self._conf)
            return self._reader

    def _catch_up(
        self,
        count: int,
        ends: Mapping[tuple[str, int], int],
        end_errors: Mapping[tuple[str, int], Exception],
        stable: Mapping[Any, Future[Any]],
        deadline: float,
    ) -> CatchUp | None:
        """Bring the reader up to the offsets topic's ends; None when it cannot be read."""
        lso, lso_errors = _offsets(stable, deadline)
        failures = [e for tp, e in {**end_errors, **lso_errors}.items() if tp[0] == OFFSETS_TOPIC]
        try:
            if failures:
                raise failures[0]
            reader = self._reader_for_catch_up()
            targets = {p: (lso[(OFFSETS_TOPIC, p)], ends[(OFFSETS_TOPIC, p)]) for p in range(count)}
            caught = reader.catch_up(count, targets, deadline)
        except (KafkaException, FutureTimeout) as exc:
            if permanent_failure(exc):
                self._give_up(f"cannot read {OFFSETS_TOPIC}: {exc}")
            else:
                self._note("transient", f"cannot read {OFFSETS_TOPIC} this time: {exc!r}")
            return None
        # Open transactions come and go in normal operation: debug. Being behind is expected
        # once, at start-up on a big cluster.
        if caught.behind:
            self._note("behind", caught.reason, level=logging.INFO)
        elif caught.unstable:
            self._note("transactions", caught.reason, level=logging.DEBUG)
        return caught

    def _partitions(
        self, admin: AdminClient, topics: Iterable[str]
    ) -> tuple[dict[str, list[tuple[str, int]]], int | None]:
        """Partitions of each existing topic, from one Metadata request for all topics, and
        the partition count of ``__consumer_offsets`` (None when it is not listed).

        Asking for all topics, not named ones, never auto-creates a topic on brokers with
        auto.create.topics.enable.
        """
        wanted = set(topics)
        try:
            meta = admin.list_topics(timeout=self.request_timeout)
        except KafkaException as exc:
            raise LagProbeError(
                f"cannot read metadata from {self.cluster.describe()}: "
                f"{self.cluster.redact(str(exc), wanted)}"
            ) from exc
        out: dict[str, list[tuple[str, int]]] = {}
        for name, topic in meta.topics.items():
            if name in wanted and topic.error is None:
                out[name] = [(name, p) for p in sorted(topic.partitions)]
        offsets = meta.topics.get(OFFSETS_TOPIC)
        count = len(offsets.partitions) if offsets is not None and offsets.error is None else None
        return out, count or None

    def _list_offsets(
        self, admin: AdminClient, tps: list[tuple[str, int]], spec: Any, isolation: Any = None
    ) -> dict[Any, Any]:
        if not tps:
            return {}
        request = {TopicPartition(t, p): spec for t, p in tps}
        kwargs: dict[str, Any] = {"request_timeout": self.request_timeout}
        if isolation is not None:
            kwargs["isolation_level"] = isolation
        futures: dict[Any, Any] = admin.list_offsets(request, **kwargs)
        return futures

    def _assemble(
        self,
        spec: GroupSpec,
        *,
        partitions: Mapping[str, list[tuple[str, int]]],
        fetch: Future[dict[tuple[str, int], int | None]] | None,
        known: Mapping[tuple[str, int], int] | None,
        starts: Mapping[tuple[str, int], int],
        ends: Mapping[tuple[str, int], int],
        errors: Mapping[tuple[str, int], str],
        deadline: float,
        measured_at: float,
    ) -> GroupLag | LagProbeError:
        tps = [tp for t in spec.topics for tp in partitions.get(t, ())]
        missing = tuple(t for t in spec.topics if t not in partitions)
        bad = [f"{t}[{p}]: {errors[(t, p)]}" for t, p in tps if (t, p) in errors]
        if bad:
            return LagProbeError(f"group {spec.group}: offsets unavailable: {'; '.join(bad)}")
        committed: dict[tuple[str, int], int | None] = dict(known or {})
        if fetch is not None:
            try:
                committed.update(fetch.result(timeout=max(0.0, deadline - time.monotonic())))
            except LagProbeError as exc:
                return exc
            except (KafkaException, FutureTimeout, CancelledError) as exc:
                return LagProbeError(f"group {spec.group}: committed offsets unavailable: {exc!r}")
        rows = []
        now = time.monotonic()
        for t, p in tps:
            start, end, done = starts[(t, p)], ends[(t, p)], committed.get((t, p))
            policy = spec.start_for(t)
            at = self.positions.position(spec.group, (t, p), done, end, start_from=policy, now=now)
            rows.append(PartitionLag(t, p, start, end, done, partition_lag(start, end, at, policy)))
        return GroupLag(spec.group, tuple(rows), measured_at, missing)


def fetch_committed(
    client_config: Mapping[str, Any],
    group: str,
    tps: Sequence[tuple[str, int]],
    deadline: float,
    *,
    before_close: Callable[[Consumer], None] | None = None,
) -> dict[tuple[str, int], int | None]:
    """The group's committed offsets by OffsetFetch, sent by a consumer of that group.

    The consumer never subscribes (no JoinGroup, no LeaveGroup) nor commits; it exists
    because librdkafka retries an OffsetFetch answered NOT_COORDINATOR safely only on a
    handle that has a consumer group (on an admin client the same answer is a segfault).
    Read-uncommitted, so librdkafka does not ask for stable offsets: like the admin API,
    the answer does not wait for a group's open transaction. ``deadline`` is a
    ``time.monotonic()`` value. None means: nothing committed.

    ``before_close`` (benchmarks only; the operator passes none) is called with the consumer
    after the OffsetFetch answered, before it closes: a bench serves its statistics there,
    which this short-lived consumer would otherwise never report.
    """
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        raise LagProbeError(f"group {group}: no time left for OffsetFetch")
    consumer = Consumer(
        {
            **client_config,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        answer = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout)
        if before_close is not None:
            before_close(consumer)
    finally:
        consumer.close()
    out: dict[tuple[str, int], int | None] = {}
    for tp in answer:
        if tp.error is not None:
            raise LagProbeError(f"group {group}: {tp.topic}[{tp.partition}]: {tp.error}")
        # A negative offset (OFFSET_INVALID, -1001) means: nothing committed.
        out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return out


def permanent_failure(exc: BaseException) -> bool:
    """Whether reading the offsets topic failed for a reason retrying will not fix (ACLs)."""
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    err = exc.args[0]
    return isinstance(err, KafkaError) and err.code() in PERMANENT_ERRORS


def _offsets(
    futures: Mapping[Any, Future[Any]], deadline: float
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], Exception]]:
    offsets: dict[tuple[str, int], int] = {}
    errors: dict[tuple[str, int], Exception] = {}
    for tp, future in futures.items():
        key = (tp.topic, tp.partition)
        try:
            offsets[key] = int(future.result(timeout=max(0.0, deadline - time.monotonic())).offset)
        except (KafkaException, FutureTimeout) as exc:
            errors[key] = exc
    return offsets, errors


def lag_rate(older: GroupLag, newer: GroupLag) -> tuple[float, float]:
    """(input rate, drain rate) in records/s between two measurements of one group."""
    dt = newer.measured_at - older.measured_at
    if dt <= 0 or not math.isfinite(dt):
        return 0.0, 0.0
    return (
        max(0.0, (newer.log_end_total - older.log_end_total) / dt),
        max(0.0, (newer.position_total - older.position_total) / dt),
    )


__all__ = [
    "ClusterConfig",
    "GroupLag",
    "GroupSpec",
    "LagProbe",
    "LagProbeError",
    "PartitionLag",
    "Positions",
    "ProbeCounters",
    "StartFrom",
    "fetch_committed",
    "lag_rate",
    "partition_lag",
    "permanent_failure",
]
