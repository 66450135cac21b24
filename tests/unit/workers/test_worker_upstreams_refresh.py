"""A repartitioned pipeline asks for its source topics' partitions again (helper-94's
finding): the upstreams known at start are what each downstream partition waits for
before its windows close, so with topics a ``^`` pattern matches only later, or a named
topic created after the start, none was known and no window ever closed, with no error;
and a partition added later was never waited for."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers import engine as engine_module
from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.repartitioning import Mark, UpstreamClock, source_partitions
from tests.unit.workers.test_worker_repartition_parity import config

T = 1_767_225_600_000


@dataclass
class Partition:
    leader: int = 1


@dataclass
class Topic:
    partitions: dict[int, Partition]
    error: Any = None


@dataclass
class Metadata:
    topics: dict[str, Topic] = field(default_factory=dict)


class Admin:
    """An admin client whose cluster's topics the test changes; `failing`: a timeout."""

    def __init__(self) -> None:
        self.metadata = Metadata()
        self.failing = False
        self.asked = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Metadata:
        self.asked += 1
        if self.failing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "metadata timed out"))
        return self.metadata

    def create(self, name: str, partitions: int) -> None:
        self.metadata.topics[name] = Topic({p: Partition() for p in range(partitions)})


def downstream(engine: Engine, partition: int) -> PartitionState:
    st = PartitionState("rp", partition)
    st.clock = UpstreamClock(known=engine._upstreams)
    engine.partitions[("rp", partition)] = st
    return st


def test_a_pattern_with_no_topic_yet_waits_without_blocking() -> None:
    admin = Admin()
    assert source_partitions(admin, ["^clicks-.*"], timeout=1) == frozenset()
    admin.create("clicks-eu", 2)
    assert source_partitions(admin, ["^clicks-.*"], wait=False) == {
        ("clicks-eu", 0),
        ("clicks-eu", 1),
    }


@pytest.mark.parametrize("topics", [["^clicks-.*"], ["clicks-eu"]])
def test_topics_seen_after_the_start_are_waited_for_and_close_windows(
    topics: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(0, False, True)
    kafka = cfg.source.kafka
    assert kafka is not None
    source = cfg.source.model_copy(update={"kafka": kafka.model_copy(update={"topics": topics})})
    cfg = cfg.model_copy(update={"source": source})
    engine = Engine(cfg, stop=threading.Event(), out=io.StringIO())
    admin = Admin()
    engine._admin = admin  # type: ignore[assignment]
    engine._upstreams = source_partitions(admin, topics, timeout=0.1)  # nothing yet
    clocks = [downstream(engine, q).clock for q in range(2)]
    admin.create("clicks-eu", 2)
    for clock in clocks:  # both source partitions are heard from, then go idle
        assert clock is not None
        for p in (0, 1):
            clock.take(Mark(("clicks-eu", p), 10, T + 3_600_000, marker=True))
        assert clock.closing_level() is None  # no upstream known: nothing may close
    asked = admin.asked
    engine._retry_upstreams(engine._upstreams_at - 1)  # not due yet: not asked
    assert admin.asked == asked
    engine._retry_upstreams(engine._upstreams_at)
    assert engine._upstreams == {("clicks-eu", 0), ("clicks-eu", 1)}
    for clock in clocks:
        assert clock is not None and clock.closing_level() == T + 3_600_000
    # A partition added later is waited for: nothing closes until it has its say.
    admin.create("clicks-eu", 3)
    engine._retry_upstreams(engine._upstreams_at)
    for clock in clocks:
        assert clock is not None and clock.closing_level() is None
        clock.take(Mark(("clicks-eu", 2), 4, T + 60_000, marker=True))
        assert clock.closing_level() == T + 60_000
    # A topic deleted (a pattern's) says nothing again: forgotten, not waited for for ever;
    # one listed without a leader for a while is kept.
    admin.create("clicks-us", 1)
    engine._retry_upstreams(engine._upstreams_at)
    if topics == ["^clicks-.*"]:
        assert ("clicks-us", 0) in engine._upstreams
        for clock in clocks:
            assert clock is not None and clock.closing_level() is None
        admin.metadata.topics["clicks-us"].partitions[0].leader = -1
        engine._retry_upstreams(engine._upstreams_at)
        assert ("clicks-us", 0) in engine._upstreams
        del admin.metadata.topics["clicks-us"]
        engine._retry_upstreams(engine._upstreams_at)
        assert ("clicks-us", 0) not in engine._upstreams
        for clock in clocks:
            assert clock is not None and clock.closing_level() == T + 60_000
    # A lookup that fails is tried again later; what is known stays known.
    admin.failing = True
    known = engine._upstreams
    engine._retry_upstreams(engine._upstreams_at)
    assert engine._upstreams == known
    assert engine_module.UPSTREAMS_REFRESH_SECONDS > 0


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["create", "grow", "delete", "leaderless", "recover", "fail"]),
            st.sampled_from(["clicks-eu", "clicks-us", "clicks-ap", "views"]),
            st.integers(1, 4),
        ),
        max_size=25,
    )
)
def test_the_upstreams_follow_the_cluster_through_any_changes(
    steps: list[tuple[str, str, int]],
) -> None:
    """Over any sequence of topics created, grown, deleted, left without a leader for a
    while, and failed lookups: every partition with a leader of a topic the pattern matches
    is waited for; none of a topic the cluster no longer lists is; a topic without all its
    leaders keeps what was known of it."""
    cfg = config(0, False, True)
    kafka = cfg.source.kafka
    assert kafka is not None
    source = cfg.source.model_copy(
        update={"kafka": kafka.model_copy(update={"topics": ["^clicks-.*"]})}
    )
    engine = Engine(
        cfg.model_copy(update={"source": source}), stop=threading.Event(), out=io.StringIO()
    )
    admin = Admin()
    engine._admin = admin  # type: ignore[assignment]
    for action, topic, n in steps:
        before = engine._upstreams
        found = admin.metadata.topics.get(topic)
        admin.failing = action == "fail"
        if action == "create" and found is None:
            admin.create(topic, n)
        elif action == "grow" and found is not None:
            admin.create(topic, max(n, len(found.partitions)))
        elif action == "delete":
            admin.metadata.topics.pop(topic, None)
        elif action == "leaderless" and found is not None:
            found.partitions[0].leader = -1
        elif action == "recover" and found is not None:
            for p in found.partitions.values():
                p.leader = 1
        engine._retry_upstreams(engine._upstreams_at)
        if admin.failing:
            assert engine._upstreams == before
            continue
        listed = admin.metadata.topics
        for name, t in listed.items():
            led = all(p.leader >= 0 for p in t.partitions.values())
            mine = {u for u in engine._upstreams if u[0] == name}
            if name.startswith("clicks-") and led:
                assert mine == {(name, p) for p in t.partitions}
            elif name.startswith("clicks-"):
                assert mine == {u for u in before if u[0] == name}
            else:
                assert not mine
        assert all(u[0] in listed for u in engine._upstreams)
