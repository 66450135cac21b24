"""KafkaAdmin.topics(names): each described topic's answer read on its own.

The check of a pipeline's internal topics asks the broker about its own topics only
(DescribeTopics, one future per name). Which answers mean "not there" and which mean the
broker could not be asked decides between a pipeline's "no-source" and a whole cluster's
"unreachable", so each kind of answer is pinned here with futures settled the way the
client settles them (the real broker's answers are in tests/integration/test_topicadmin.py).
"""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.kafkaadmin import NO_ANSWER, KafkaAdmin, KafkaAdminError, TopicRequest


class DescribingAdmin:
    """Answers describe_topics from a table: partitions, or an error code per name."""

    def __init__(self, answers: dict[str, tuple[str, int]]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Future[Any]]:
        self.asked.append(list(topics.topic_names))
        out: dict[str, Future[Any]] = {}
        for name in topics.topic_names:
            future: Future[Any] = Future()
            kind, value = self.answers[name]
            if kind == "partitions":
                future.set_result(SimpleNamespace(partitions=list(range(value))))
            else:
                future.set_exception(KafkaException(KafkaError(value)))
            out[name] = future
        return out

    def poll(self, timeout: float) -> int:
        return 0


def admin(answers: dict[str, tuple[str, int]]) -> tuple[KafkaAdmin, DescribingAdmin]:
    client = DescribingAdmin(answers)
    return KafkaAdmin(client, 1.0), client  # type: ignore[arg-type]


def test_missing_refused_and_unseen_topics_are_absent_and_the_rest_counted() -> None:
    kafka, client = admin(
        {
            "three": ("partitions", 3),
            "seven": ("partitions", 7),
            "none": ("partitions", 0),  # no partitions: left out, as a listing does
            "missing": ("error", KafkaError.UNKNOWN_TOPIC_OR_PART),
            "not-ours": ("error", KafkaError.TOPIC_AUTHORIZATION_FAILED),
            ".": ("error", KafkaError.TOPIC_EXCEPTION),  # a name Kafka refuses
        }
    )
    names = ["seven", "three", "none", "missing", "not-ours", ".", "three"]
    assert kafka.topics(names) == {"three": 3, "seven": 7}
    assert client.asked == [sorted(set(names))]  # one request, each name once
    assert kafka.topics([]) == {} and len(client.asked) == 1  # nothing to ask: no request


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (KafkaError._TRANSPORT, NO_ANSWER),
        (KafkaError._TIMED_OUT, NO_ANSWER),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, "CLUSTER_AUTHORIZATION_FAILED"),
    ],
)
def test_any_other_answer_means_the_broker_could_not_be_asked(code: int, words: str) -> None:
    kafka, _ = admin({"three": ("partitions", 3), "broken": ("error", code)})
    with pytest.raises(KafkaAdminError) as raised:
        kafka.topics(["three", "broken"])
    assert words in str(raised.value)


ABSENT_CODES = [
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
]
FAILURE_CODES = [
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.REQUEST_TIMED_OUT,
]
answers = st.one_of(
    st.tuples(st.just("partitions"), st.integers(0, 64)),
    st.tuples(st.just("error"), st.sampled_from(ABSENT_CODES)),
)


@given(
    st.dictionaries(st.text("ab.-_9", min_size=1, max_size=6), answers, max_size=8),
    st.one_of(st.none(), st.sampled_from(FAILURE_CODES)),
)
def test_a_topic_answer_decides_about_that_topic_only(
    table: dict[str, tuple[str, int]], failure: int | None
) -> None:
    """Any mix of names and per-topic answers: the topics with partitions are counted, every
    "not there" answer is absent, and only an answer that says the broker could not be
    asked fails the whole check (one pipeline's odd name never reads as a cluster down)."""
    if failure is not None:
        table = {**table, "failing": ("error", failure)}
    kafka, _ = admin(table)
    if failure is not None:
        with pytest.raises(KafkaAdminError):
            kafka.topics(list(table))
        return
    expected = {n: v for n, (kind, v) in table.items() if kind == "partitions" and v > 0}
    assert kafka.topics(list(table)) == expected


class SilentAdmin:
    """A broker that took the connection and never answers: no future is ever settled."""

    def __init__(self) -> None:
        self.futures: list[Future[Any]] = []

    def _never(self, items: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        out: dict[Any, Future[Any]] = {}
        for item in items:
            out[item] = Future()
            self.futures.append(out[item])
        return out

    create_topics = delete_topics = delete_consumer_groups = describe_configs = _never

    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Future[Any]]:
        return self._never(list(topics.topic_names))

    def poll(self, timeout: float) -> int:
        return 0


def test_no_answer_from_a_broker_is_an_admin_error_never_a_bare_timeout() -> None:
    """A SASL client on a plaintext listener waits for an answer that never comes: every
    request says NO_ANSWER (a refusal the callers report), none raises TimeoutError (which
    the snapshot timer did not catch: a traceback every minute and no status)."""
    admin = KafkaAdmin(SilentAdmin(), timeout=0.05)  # type: ignore[arg-type]
    for ask in (
        lambda: admin.topics(["a"]),
        lambda: admin.topic_configs(["a"]),
        lambda: admin.create_topics([TopicRequest("a", 1, {})]),
    ):
        with pytest.raises(KafkaAdminError, match="no broker answered"):
            ask()
    assert admin.delete_topics(["a"]).failed == {"a": NO_ANSWER}
    assert admin.delete_groups(["g"]) == {"g": NO_ANSWER}
