"""The operator's one way to Kafka's admin API: a client per cluster, bounded calls, one error.

Every part of the operator that creates, checks or deletes something on a Kafka cluster goes
through :class:`KafkaAdmin`: operator/topicadmin.py (a pipeline's internal topics),
operator/shadowtopics.py (a verification's shadow topics and consumer groups) and
operator/snapshots.py (a snapshot's topic). What it settles for all of them:

- Creation: :meth:`KafkaAdmin.connect` makes a confluent-kafka AdminClient from a
  :class:`~streamherd.operator.lagprobe.ClusterConfig` whose librdkafka lines go through the
  operator's rate-limited logger (operator/kafkalogging.py), never to stderr, and never with
  the cluster's credentials (``ClusterConfig.describe`` leaves them out). Each call serves
  the queued lines first (``poll(0)``).
- Timeouts: every broker call carries the admin's ``timeout`` (as the request's and, for
  creating and deleting, the operation's), and every answer is waited for that long at most.
- Errors: whatever librdkafka raises becomes :class:`KafkaAdminError`, with a reason a
  person can read in a status (``reason``: one wording for every "no broker answered", so
  a status does not flip between librdkafka's variants of it). What is not an error is not
  raised: creating a topic that exists, deleting one or a group that is gone.
- Closing: :meth:`KafkaAdmin.close` (or ``with``) drops the client; AdminClient has no close
  of its own, and a client dropped while a call is pending aborts it, so the admin keeps it
  referenced until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

# The same class as confluent_kafka.admin.NewTopic, whose type stub does not re-export it.
from confluent_kafka.cimpl import NewTopic

from streamherd.operator.kafkalogging import shared_kafka_log
from streamherd.operator.lagprobe import ClusterConfig

log = logging.getLogger(__name__)


class KafkaAdminError(RuntimeError):
    """The broker could not be asked (unreachable, timed out, not authorized) or refused."""


class TopicConfigRefused(KafkaAdminError):
    """A creation refused for the configuration it asked for (``POLICY_VIOLATION``, e.g.
    a cluster that lets a topic set only a few settings, or ``INVALID_CONFIG``):
    ``refused`` the names refused so, ``created`` those the same call created."""

    def __init__(self, message: str, refused: frozenset[str], created: frozenset[str]) -> None:
        super().__init__(message)
        self.refused = refused
        self.created = created


class AdminLike(Protocol):
    """The part of confluent-kafka's AdminClient used here (tests may pass their own)."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Any]: ...
    def create_topics(self, new_topics: list[Any], **kwargs: Any) -> dict[str, Any]: ...
    def delete_topics(self, topics: list[str], **kwargs: Any) -> dict[str, Any]: ...
    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Any]: ...
    def delete_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Any]: ...
    def poll(self, timeout: float) -> int: ...


AdminFactory = Callable[[ClusterConfig], AdminLike]


def logged_admin(cluster: ClusterConfig) -> AdminLike:
    """An AdminClient whose librdkafka lines go through our logger (kafkalogging.py)."""
    # The lag probe's limiter of the same cluster: one rate limit for all its clients.
    logger = shared_kafka_log(cluster.describe())
    config: dict[str, Any] = {**cluster.client_config(), "logger": logger}
    admin: AdminLike = AdminClient(config)
    return admin


@dataclass(frozen=True)
class TopicRequest:
    """A topic to create: its name, partitions and topic-level configuration."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Deleted:
    """What a deletion did: the names deleted, and why each of the others was not (a name
    that did not exist is in neither); `refused`: those of `failed` the broker refuses to
    delete for good (deletion disabled, not authorized, a policy): trying again changes
    nothing until someone changes the broker."""

    names: list[str]
    failed: dict[str, str]
    refused: frozenset[str] = frozenset()


class KafkaAdmin:
    """One admin client of one cluster, each call bounded by ``timeout`` (thread-safe, as
    the AdminClient is)."""

    def __init__(self, client: AdminLike, timeout: float) -> None:
        self._client: AdminLike | None = client
        self.timeout = timeout

    @classmethod
    def connect(
        cls, cluster: ClusterConfig, timeout: float, factory: AdminFactory = logged_admin
    ) -> KafkaAdmin:
        """A client for ``cluster``; KafkaAdminError when librdkafka refuses its settings."""
        try:
            return cls(factory(cluster), timeout)
        except KafkaException as e:
            raise KafkaAdminError(
                f"cannot connect to {cluster.describe()}: {cluster.redact(reason(e))}"
            ) from e

    def __enter__(self) -> KafkaAdmin:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop the client (librdkafka tears it down once nothing refers to it)."""
        client, self._client = self._client, None
        if client is not None:
            client.poll(0)  # the last queued log lines

    @property
    def client(self) -> AdminLike:
        """The client itself, for a reader that takes one (workers/repartitioning.py's
        ``source_partitions``); served its queued log lines first."""
        if self._client is None:
            raise KafkaAdminError("the admin client was closed")
        self._client.poll(0)  # serve queued librdkafka log lines (kafkalogging.py)
        return self._client

    def _ask(
        self, call: Callable[..., dict[Any, Any]], items: list[Any], **timeouts: float
    ) -> dict[Any, Any]:
        """One admin request (its answers are futures), bounded by ``timeout``."""
        try:
            return call(items, request_timeout=self.timeout, **timeouts)
        except KafkaException as e:
            raise KafkaAdminError(reason(e)) from None

    def _answer(self, future: Any) -> Any:
        """One future's answer; KafkaAdminError (:data:`NO_ANSWER`) when none comes: a broker
        that takes the connection and never answers (a SASL client on a plaintext listener)
        would otherwise leave a bare TimeoutError to the caller. librdkafka ends the request
        at ``timeout``; the margin lets its own error, not ours, say why."""
        try:
            return future.result(self.timeout + min(5.0, self.timeout))
        except TimeoutError:
            raise KafkaAdminError(NO_ANSWER) from None

    def topics(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Every topic the cluster lists, with its partition count (topics with an error or
        no partitions left out); with ``names``, only those of them that exist.

        Asking for names asks the broker for just those topics' metadata. A listing of
        every topic made each pipeline's check grow with the cluster: the broker's answer
        and its decoding into Python objects cover every topic and partition there is (at
        1000 pipelines, with 333 repartition topics, the listing was 12 % of the operator's
        GIL-held samples in a py-spy profile; docs/scale.md). Describing named topics
        (DescribeTopics) never creates one, even on a broker that auto-creates the topics
        clients ask about (tests/integration/test_topicadmin.py)."""
        if names is not None:
            return self._described(sorted(set(names)))
        try:
            metadata = self.client.list_topics(timeout=self.timeout)
        except KafkaException as e:
            raise KafkaAdminError(reason(e)) from None
        return {
            name: len(t.partitions)
            for name, t in metadata.topics.items()
            if t.error is None and t.partitions
        }

    def _described(self, names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        futures = self._ask(
            lambda topics, **kw: self.client.describe_topics(TopicCollection(topics), **kw),
            names,
        )
        out: dict[str, int] = {}
        for name, future in futures.items():
            try:
                partitions = len(self._answer(future).partitions)
            except KafkaException as e:
                # As a listing leaves out a topic with an error: missing, or not ours to see.
                if _code(e) in _ABSENT:
                    continue
                raise KafkaAdminError(reason(e)) from None
            if partitions:
                out[name] = partitions
        return out

    def topic_configs(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """Each named topic's configuration entries; a topic the broker does not know
        (UNKNOWN_TOPIC_OR_PART) is left out. That is a moment, not a failure: a topic
        another client has just created can be listed before it is described (a KRaft
        broker's caches catch up one after the other), and one being deleted the other
        way round."""
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
        if not resources:
            return {}
        futures = self._ask(self.client.describe_configs, resources)
        out: dict[str, dict[str, str]] = {}
        for resource, future in futures.items():
            try:
                entries = self._answer(future)
            except KafkaException as e:
                if _code(e) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise KafkaAdminError(reason(e)) from None
            out[resource.name] = {k: str(v.value) for k, v in entries.items()}
        return out

    def create_topics(self, topics: Sequence[TopicRequest]) -> set[str]:
        """Create the topics (replication: the broker's default); the names this call
        created. One that exists already is left as it is; any other refusal raises."""
        if not topics:
            return set()
        futures = self._ask(
            self.client.create_topics,
            [
                NewTopic(
                    t.name,
                    num_partitions=t.partitions,
                    replication_factor=-1,
                    config=dict(t.config),
                )
                for t in topics
            ],
            operation_timeout=self.timeout,
        )
        created: set[str] = set()
        refused: dict[str, str] = {}
        for name, future in futures.items():
            try:
                self._answer(future)
                created.add(name)
            except KafkaException as e:
                if _code(e) in _CONFIG_REFUSED:
                    refused[name] = reason(e)
                elif _code(e) != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaAdminError(reason(e)) from None
        if refused:
            raise TopicConfigRefused(
                "; ".join(f"{n}: {why}" for n, why in sorted(refused.items())),
                frozenset(refused),
                frozenset(created),
            )
        return created

    def delete_topics(self, names: Iterable[str]) -> Deleted:
        """Delete the topics; every answer is waited for, so one refusal does not hide the
        others' outcome."""
        wanted = list(names)
        if not wanted:
            return Deleted([], {})
        futures = self._ask(self.client.delete_topics, wanted, operation_timeout=self.timeout)
        deleted: list[str] = []
        failed: dict[str, str] = {}
        refused: set[str] = set()
        for name, future in futures.items():
            try:
                self._answer(future)
                deleted.append(name)
            except KafkaAdminError as e:
                failed[name] = str(e)
            except KafkaException as e:
                if _code(e) != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    failed[name] = reason(e)
                if _code(e) in _REFUSED_FOR_GOOD:
                    refused.add(name)
        return Deleted(sorted(deleted), failed, frozenset(refused))

    def delete_groups(self, groups: Iterable[str]) -> dict[str, str]:
        """Delete the consumer groups; those still there, with why (members that have not
        left yet, typically: tried again later). A group that does not exist is gone."""
        wanted = list(groups)
        if not wanted:
            return {}
        futures = self._ask(self.client.delete_consumer_groups, wanted)
        left: dict[str, str] = {}
        for group, future in futures.items():
            try:
                self._answer(future)
            except KafkaAdminError as e:
                left[group] = str(e)
            except KafkaException as e:
                if _code(e) != KafkaError.GROUP_ID_NOT_FOUND:
                    left[group] = reason(e)
        return left


NO_ANSWER: Final = "no broker answered (connection refused, unresolved or timed out)"

#: librdkafka's ways of saying that no broker answered. Which one comes depends on timing
#: (a refused connection or a timeout first, on a loaded machine), so the status says the
#: same words for all of them: a message that alternated would rewrite the status, and post
#: a write, on every attempt (the detail goes to the operator's log).
_NO_ANSWER: Final = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
    }
)


#: A described topic's errors that mean "not there" for this client, as a listing of every
#: topic would leave it out. TOPIC_EXCEPTION: a name Kafka refuses ("." and ".." pass the
#: CRD's pattern); raised, it would mark the whole cluster unreachable for every pipeline
#: on it, where it is one pipeline's missing source.
_ABSENT: Final = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
    }
)


def reason(e: KafkaException) -> str:
    """A librdkafka error in words for a status: its name and text, or one wording for
    every way of "no broker answered"."""
    error = e.args[0] if e.args else None
    if isinstance(error, KafkaError):
        if error.code() in _NO_ANSWER:
            log.debug("no broker answered: %s: %s", error.name(), error.str())
            return NO_ANSWER
        return f"{error.name()}: {error.str()}"
    return str(e)


#: Refusals of a deletion that no retry changes (Deleted.refused).
_REFUSED_FOR_GOOD: Final = frozenset(
    {
        KafkaError.TOPIC_DELETION_DISABLED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
    }
)


#: Refusals of a creation for the configuration it names (TopicConfigRefused).
_CONFIG_REFUSED: Final = frozenset({KafkaError.POLICY_VIOLATION, KafkaError.INVALID_CONFIG})


def _code(e: KafkaException) -> Any:
    error = e.args[0] if e.args else None
    return error.code() if isinstance(error, KafkaError) else None


__all__ = [
    "AdminFactory",
    "AdminLike",
    "Deleted",
    "KafkaAdmin",
    "KafkaAdminError",
    "TopicConfigRefused",
    "TopicRequest",
    "logged_admin",
    "reason",
]
