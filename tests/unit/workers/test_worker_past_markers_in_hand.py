"""helper-116: _past_markers (bdc773f) commits the consumer's position, which librdkafka
moves when a record is handed out, not when the engine folds it. Records handed out by a
poll but not yet folded when a checkpoint runs are then skipped: here, a partition assigned
inside a poll (cooperative-sticky) under startFrom latest is pinned by _pin_starts, which
checkpoints every partition before that poll's records are processed."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import TopicPartition

from tests.unit.workers.test_worker_input_lost import TOPIC, DeletingSource, KeptBackend, Log, run


class IncrementalSource(DeletingSource):
    """p0 is assigned at open; p1 inside the third poll, after p0's records of that poll were
    handed out (as librdkafka serves a rebalance op queued behind fetched messages).
    positions(): the offset after the last record handed out, as librdkafka's app position."""

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        self.assigned = assigned
        self.handed_to: dict[int, int] = {}
        assigned([TopicPartition(TOPIC, 0)])

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        batch = super().poll(max_records, timeout)
        for m in batch:
            self.handed_to[m.partition()] = m.offset() + 1
        if self.polls == 3:
            self.assigned([TopicPartition(TOPIC, 1)])
        return batch

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.handed_to.get(tp.partition, -1001))
            for tp in partitions
        ]

    @property
    def exhausted(self) -> bool:
        return self.polls >= 3 and not any(self.queue.values())


def test_records_in_hand_when_a_pin_checkpoints_are_not_skipped(monkeypatch: Any) -> None:
    monkeypatch.setattr("streamherd.workers.engine.LAG_REFRESH_SECONDS", 0.0)
    log = Log(offsets={0: list(range(100)), 1: list(range(10))}, low={0: 0, 1: 0},
              group={0: (0, "")})  # fmt: skip
    source = IncrementalSource(threading.Event(), log, chunk=10)
    read, _ = run("latest", KeptBackend(), source)
    p0 = sorted(o for p, o in read if p == 0)
    assert p0 == list(range(100)), f"p0 missing {sorted(set(range(100)) - set(p0))}"


class RevokingSource(IncrementalSource):
    """Both partitions assigned at open; p1 revoked inside the third poll, after that poll's
    records of both were handed out (cooperative-sticky: p0 stays)."""

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        self.assigned, self.revoked = assigned, revoked
        self.handed_to = {}
        assigned([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        batch = DeletingSource.poll(self, max_records, timeout)
        for m in batch:
            self.handed_to[m.partition()] = m.offset() + 1
        if self.polls == 3:
            self.revoked([TopicPartition(TOPIC, 1)])
        return batch


def test_a_revoke_inside_a_poll_commits_no_record_in_hand(monkeypatch: Any) -> None:
    monkeypatch.setattr("streamherd.workers.engine.LAG_REFRESH_SECONDS", 0.0)
    log = Log(offsets={0: list(range(100)), 1: list(range(100))}, low={0: 0, 1: 0},
              group={0: (0, ""), 1: (0, "")})  # fmt: skip
    source = RevokingSource(threading.Event(), log, chunk=10)
    read, _ = run("earliest", KeptBackend(), source)
    p1 = {o for p, o in read if p == 1}
    # The next owner of p1 starts at the committed offset: nothing before it may be unread.
    committed = log.group[1][0]
    assert set(range(committed)) <= p1, f"p1 committed {committed}, read up to {max(p1) + 1}"
