"""The worker makes its changelog topic on a broker that refuses topic settings (decision
0193): a creation refused for its tuning (POLICY_VIOLATION or INVALID_CONFIG: a broker's
CreateTopicPolicy, MSK Serverless) is made again with the required entries alone, as the
operator does (tests/unit/operator/test_topic_tuning_refused.py); a refusal of the required
entries themselves, and any refusal of a topic named without required entries (the
repartition topic), is raised. The admin client is scripted: the real broker's policies
need a plugin on its classpath; the real creation is tests/integration/test_topicadmin.py."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamherd.workers.config import CHANGELOG_TOPIC_CONFIG, CHANGELOG_TOPIC_REQUIRED
from streamherd.workers.repartitioning import ensure_topic


class PolicyAdmin:
    """Refuses (with `code`) every topic whose settings `refuses` says no to."""

    def __init__(self, refuses: Callable[[Mapping[str, str]], bool], code: int) -> None:
        self.refuses, self.code = refuses, code
        self.asked: list[dict[str, str]] = []
        self.made: dict[str, int] = {}

    def create_topics(self, topics: list[Any], request_timeout: float) -> dict[str, Future[None]]:
        out: dict[str, Future[None]] = {}
        for t in topics:
            self.asked.append(dict(t.config))
            done: Future[None] = Future()
            if self.refuses(t.config):
                done.set_exception(KafkaException(KafkaError(self.code, "refused by policy")))
            else:
                self.made[t.topic] = t.num_partitions
                done.set_result(None)
            out[t.topic] = done
        return out

    def list_topics(self, topic: str, timeout: float) -> Any:
        partitions = {p: SimpleNamespace(leader=1) for p in range(self.made.get(topic, 0))}
        return SimpleNamespace(
            topics={topic: SimpleNamespace(error=None, partitions=partitions)}
            if topic in self.made
            else {}
        )


def beyond_required(config: Mapping[str, str]) -> bool:
    return bool(set(config) - CHANGELOG_TOPIC_REQUIRED)


@pytest.mark.parametrize("code", [KafkaError.POLICY_VIOLATION, KafkaError.INVALID_CONFIG])
def test_a_changelog_refused_for_its_tuning_is_made_with_the_required_entries(
    code: int, caplog: pytest.LogCaptureFixture
) -> None:
    admin = PolicyAdmin(beyond_required, code)
    with caplog.at_level(logging.WARNING, "streamherd.worker"):
        count = ensure_topic(admin, "t.changelog", 4, 0, config=CHANGELOG_TOPIC_CONFIG,  # type: ignore[arg-type]
                             required=CHANGELOG_TOPIC_REQUIRED, what="changelog")  # fmt: skip
    assert count == 4 and admin.made == {"t.changelog": 4}
    assert admin.asked == [dict(CHANGELOG_TOPIC_CONFIG), {"cleanup.policy": "compact"}]
    assert "refused the settings of changelog topic t.changelog" in caplog.text
    assert "created with cleanup.policy alone" in caplog.text


def test_a_refusal_of_the_required_entries_is_raised() -> None:
    admin = PolicyAdmin(lambda config: True, KafkaError.POLICY_VIOLATION)
    with pytest.raises(KafkaException):
        ensure_topic(admin, "t.changelog", 4, 0, config=CHANGELOG_TOPIC_CONFIG,  # type: ignore[arg-type]
                     required=CHANGELOG_TOPIC_REQUIRED, what="changelog")  # fmt: skip
    assert admin.asked == [dict(CHANGELOG_TOPIC_CONFIG), {"cleanup.policy": "compact"}]
    assert admin.made == {}


def test_a_repartition_topic_refused_is_raised_as_before() -> None:
    """Its retention keeps records until every downstream read them: nothing is dropped."""
    admin = PolicyAdmin(lambda config: True, KafkaError.POLICY_VIOLATION)
    with pytest.raises(KafkaException):
        ensure_topic(admin, "t.repartition", 4, 3_600_000)  # type: ignore[arg-type]
    assert len(admin.asked) == 1


def test_another_failure_is_raised_and_an_existing_topic_is_used() -> None:
    admin = PolicyAdmin(lambda config: True, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        ensure_topic(admin, "t.changelog", 4, 0, config=CHANGELOG_TOPIC_CONFIG,  # type: ignore[arg-type]
                     required=CHANGELOG_TOPIC_REQUIRED, what="changelog")  # fmt: skip
    assert len(admin.asked) == 1
    exists = PolicyAdmin(lambda config: True, KafkaError.TOPIC_ALREADY_EXISTS)
    exists.made["t.changelog"] = 2
    assert ensure_topic(exists, "t.changelog", 4, 0, config=CHANGELOG_TOPIC_CONFIG,  # type: ignore[arg-type]
                        required=CHANGELOG_TOPIC_REQUIRED, what="changelog") == 2  # fmt: skip
