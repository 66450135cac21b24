"""The engine's seams (workers/seams.py): the one loop runs a source and a state backend it
has never heard of, defined here, and a run stopped and restarted through that backend gives
exactly the uninterrupted run's windows."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from unittest import mock

import orjson
import pytest
from confluent_kafka import TopicPartition

from streamherd.workers import engine as engine_module
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.fingerprint import config_fingerprint, fingerprint
from streamherd.workers.kafkaclients import StuckCallError
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.processing import SyntheticMessage
from streamherd.workers.seams import PartitionEvent, Source, StateBackend

TOPIC = "memory"
PARTITIONS = 3
RECORDS = 6_000


def records() -> list[SyntheticMessage]:
    out = []
    offsets = [0] * PARTITIONS
    for i in range(RECORDS):
        index = (i * 7) % 23
        user, p = f"u{index}", index % PARTITIONS  # keyed by user: one window state per user
        ts = 1_767_225_600_000 + i * 7
        rec = {"user": user, "bytes": i % 101, "ts": ts}
        out.append(SyntheticMessage(TOPIC, p, offsets[p], user.encode(), rec, ts))
        offsets[p] += 1
    return out


class ListSource:
    """A finite in-memory source, no consumer group; stops the engine after ``stop_after``
    records (a shutdown in the middle)."""

    name = "memory"
    group_offsets = False
    cluster_id: str | None = None
    origin_ms: int | None = None

    def __init__(self, stop: threading.Event, stop_after: int | None = None) -> None:
        self.stop, self.stop_after = stop, stop_after
        self.pending: list[SyntheticMessage] = []
        self.given = 0

    def open(self, assigned: PartitionEvent, revoked: PartitionEvent, lost: PartitionEvent) -> None:
        assigned([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])

    def adopt_origin(self, origin_ms: int) -> None:
        pass  # its records name their own times

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        batch, self.pending = self.pending[:max_records], self.pending[max_records:]
        self.given += len(batch)
        if self.stop_after is not None and self.given >= self.stop_after:
            self.stop.set()
        return list(batch)

    @property
    def exhausted(self) -> bool:
        return not self.pending

    def describe(self) -> Mapping[str, Any]:
        return {"source": self.name}

    def assign(self, start: list[TopicPartition]) -> None:
        resume = {tp.partition: max(tp.offset, 0) for tp in start}
        self.pending = [m for m in records() if m.offset() >= resume[m.partition()]]

    def unassign(self, partitions: list[TopicPartition]) -> None:
        pass

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def seek(self, partition: TopicPartition) -> None:
        raise AssertionError("not used without a group")

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return []

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        return []

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        return []

    def watermarks(
        self, partition: TopicPartition, *, fresh: bool = False
    ) -> tuple[int, int] | None:
        return None

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return []  # no transaction markers in memory

    def group_metadata(self) -> Any:
        raise AssertionError("not used without a group")

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, tuple[str | None, int]]:
        return {}

    def close(self) -> None:
        pass


class DictBackend:
    """Checkpoints in a dict, stored as their encoded bytes (nothing shared by reference)."""

    name = "dict"

    def __init__(self) -> None:
        self.saved: dict[tuple[str, int], bytes] = {}
        self.saves = 0

    def prepare(self, partitions: list[tuple[str, int]]) -> None:
        pass

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        data = self.saved.get((topic, partition))
        if data is None:
            return None
        doc = orjson.loads(data)
        return Checkpoint(topic, partition, doc.pop("next_offset"), doc.pop("state"), **doc)

    def pending_checkpoints(self, topic: str, partition: int) -> list[Checkpoint]:
        return []

    def save(self, checkpoints: list[Checkpoint], *, group: Any = None) -> None:
        self.saves += 1
        for c in checkpoints:
            self.saved[(c.topic, c.partition)] = orjson.dumps(
                {
                    "next_offset": c.next_offset,
                    "state": c.state,
                    "pipeline": c.pipeline,
                    "fingerprint": c.fingerprint,
                    "state_shape": c.state_shape,
                }
            )

    def stage(self, checkpoints: list[Checkpoint]) -> None:
        raise AssertionError("at-least-once only")

    def promote(self, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        raise AssertionError("at-least-once only")

    def adopt(self, topic: str, partition: int, pending: Checkpoint) -> None:
        raise AssertionError("at-least-once only")

    def discard_pending(self, topic: str, partition: int) -> None:
        pass

    def abort(self) -> None:
        pass

    def release(self, topic: str, partition: int) -> None:
        pass

    def keep(self, name: str, topic: str, partition: int) -> str | None:
        raise AssertionError("no fingerprint change here")

    def load_snapshot(self, name: str, topic: str, partition: int) -> Checkpoint | None:
        return None

    def kept_snapshots(self) -> list[str] | None:
        return []

    def close(self) -> None:
        pass


def config(key_by: str = "user") -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "seams"},
            "source": {"generator": {"partitions": PARTITIONS}},
            "processor": {
                "steps": [
                    {
                        "window": {
                            "keyBy": key_by,
                            "size": "2s",
                            "eventTime": {"field": "ts"},
                            "aggregates": [
                                {"name": "clicks", "function": "count"},
                                {"name": "bytes", "function": "sum", "expression": "bytes"},
                            ],
                        }
                    }
                ]
            },
            "sink": {"stdout": {}},
            "checkpoint": {"directory": "/nonexistent/never-written", "intervalSeconds": 3600},
            "runtime": {"metricsPort": 0, "batchSize": 250},
        }
    )


def run(
    backend: StateBackend, stop_after: int | None, key_by: str = "user"
) -> tuple[list[dict[str, Any]], str]:
    stop = threading.Event()
    out = io.StringIO()
    source: Source = ListSource(stop, stop_after)
    engine = Engine(
        config(key_by), stop=stop, out=out, metrics=EngineMetrics("seams"), source=source,
        state=backend,
    )  # fmt: skip
    summary = engine.run()
    assert not [st for st in engine.partitions.values() if st.held is not None]
    return [orjson.loads(line) for line in out.getvalue().splitlines()], summary.reason


def windows(rows: list[dict[str, Any]]) -> dict[tuple[Any, str], tuple[int, int]]:
    out: dict[tuple[Any, str], tuple[int, int]] = {}
    for row in rows:
        window = (row["key"], row["window_start"])
        assert window not in out, f"{window} emitted twice"
        out[window] = (row["clicks"], row["bytes"])
    return out


def test_a_source_and_a_backend_the_loop_does_not_know() -> None:
    whole, reason = run(DictBackend(), None)
    assert reason == "exhausted"
    expected = windows(whole)
    reference: dict[tuple[Any, str], list[int]] = {}
    for m in records():
        rec = m.record()
        start = rec["ts"] - rec["ts"] % 2000
        row = reference.setdefault((rec["user"], start), [0, 0])
        row[0] += 1
        row[1] += rec["bytes"]
    assert len(expected) == len(reference)
    assert sorted(expected.values()) == sorted(tuple(v) for v in reference.values())

    backend = DictBackend()
    first, reason = run(backend, RECORDS // 2)
    assert reason == "stopped"
    assert len(backend.saved) == PARTITIONS and backend.saves >= 1  # the shutdown checkpoint
    second, reason = run(backend, None)
    assert reason == "exhausted"
    assert windows(first + second) == expected  # each window once, with the same value


class FailingSource(ListSource):
    """Raises ``error`` from its second poll; counts its close() calls."""

    def __init__(self, stop: threading.Event, error: Exception) -> None:
        super().__init__(stop)
        self.error, self.polls, self.closed = error, 0, 0

    def poll(self, max_records: int, timeout: float) -> list[Any]:
        self.polls += 1
        if self.polls == 2:
            raise self.error
        return super().poll(max_records, timeout)

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("stuck", [True, False])
def test_a_stuck_client_leaves_without_closing_the_source_and_its_error_stands(
    stuck: bool,
) -> None:
    """A librdkafka call that ignored its timeout still holds the producer: closing the
    consumer would revoke through the engine's callback, whose abort conflicts with that call
    and raised its own error in place of StuckCallError, so the worker exited as an ordinary
    failure (code 1) instead of as a stuck client (code 4, workers/main.py). Any other error
    still closes the source."""
    stop = threading.Event()
    error: Exception = StuckCallError("x") if stuck else RuntimeError("y")
    source = FailingSource(stop, error)
    engine = Engine(
        config(), stop=stop, out=io.StringIO(), metrics=EngineMetrics("seams"), source=source,
        state=DictBackend(),
    )  # fmt: skip
    with pytest.raises(type(error)):
        engine.run()
    assert source.closed == (0 if stuck else 1)


class Clock:
    """The engine's clock (``time`` in workers/engine.py): still, but for what a test
    advances; everything else is the real ``time`` module's."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class SlowRestores(DictBackend):
    """Each partition's checkpoint takes ``seconds`` of the engine's clock to load (a large
    state); records at each load what the liveness probe would be told then."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.engine: Engine | None = None
        self.health: list[tuple[bool, str]] = []

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        assert self.engine is not None
        self.health.append(self.engine.healthy())
        self.clock.now += self.seconds
        return super().load(topic, partition)


def test_restoring_one_partition_after_another_is_no_stuck_loop() -> None:
    """An assignment restores its partitions one after another, inside the rebalance. The
    heartbeat (``/healthz``, the liveness probe) was not renewed until the loop polled
    again, so a worker taking over several large states (40 s each here: about a million
    windows on a volume, docs/engine.md) was reported stuck after the second, killed by
    the liveness probe, and began the same restore again: a restart loop. Each partition
    restored is now a heartbeat."""
    clock = Clock()
    backend = SlowRestores(clock, seconds=40.0)
    stop = threading.Event()
    source = ListSource(stop)
    with mock.patch.object(engine_module, "time", clock):
        engine = Engine(config(), stop=stop, out=io.StringIO(), metrics=EngineMetrics("slow"),
                        source=source, state=backend)  # fmt: skip
        backend.engine = engine
        assert engine.run().reason == "exhausted"
    assert len(backend.health) == PARTITIONS >= 3
    assert backend.health == [(True, "ok")] * PARTITIONS


def test_an_upgrade_that_reads_an_expression_better_keeps_the_running_state() -> None:
    """A keyBy written on lines that go in and out (a YAML block): an earlier streamherd
    compared it as written, this one by its tokens, so the fingerprint moved with the
    upgrade. The checkpoints the running pipeline wrote before it are still its own state:
    restored (no partition held, as refuse did), each window once with its value."""
    key_by = "user\n    + ''\n  + ''"
    whole, reason = run(DictBackend(), None, key_by)
    assert reason == "exhausted"
    backend = DictBackend()
    first, reason = run(backend, RECORDS // 2, key_by)
    assert reason == "stopped"
    # As the earlier version stamped them: its fingerprint of the text as written.
    _, description = config_fingerprint(config(key_by))
    earlier = {**description, "window": {**description["window"], "keyBy": key_by.strip()}}
    assert fingerprint(earlier) != config_fingerprint(config(key_by))[0]
    for tp, data in backend.saved.items():
        doc = orjson.loads(data)
        doc.update(fingerprint=fingerprint(earlier), state_shape=earlier)
        backend.saved[tp] = orjson.dumps(doc)
    second, reason = run(backend, None, key_by)  # asserts that no partition is held
    assert reason == "exhausted"
    assert windows(first + second) == windows(whole)
