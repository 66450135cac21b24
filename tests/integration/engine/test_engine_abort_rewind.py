"""An aborted transaction rewinds every partition to where its state starts, on the real broker.

Exactly-once mode (workers/engine.py, ``_abort_and_rewind``): a transaction whose commit
fails (the broker refuses its offsets because a rebalance moved the group's generation, or
the partitions were lost) is aborted, and every partition still owned goes back to its
committed checkpoint and offset. A partition with nothing committed yet (no offset in the
group, no checkpoint) goes back to empty state, so it must also go back to where this worker
began reading it: the consumer keeps its position through an abort, and without a seek the
records read in the aborted transaction are never read again. That was the bug behind
"the first window of every page short of ~45% of its records" in the changelog SIGKILL test
(session 5): a worker read the first re-keyed records from fresh repartition partitions,
its commit failed in a rebalance, and their state restarted empty past those records.

The engine runs in this process against the real broker, with its real transactions and
state backends; the one thing the test decides is the moment a commit fails (a commit
racing a rebalance cannot be scheduled from outside), by calling the engine's own abort path
from its loop thread, between two batches, exactly where a failed commit calls it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine, RunSummary
from streamherd.workers.metrics import EngineMetrics
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import wait_until
from tests.integration.engine.test_engine_repartition import (
    by_key,
    check,
    flush,
    page_clicks,
    page_reference,
    repartitioned_config,
    topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

RECORDS = 4_000


def engine_config(
    broker: KafkaBroker, tmp: Path, backend: str, repartition: bool
) -> tuple[dict[str, Any], str, str, str]:
    src, sink, dlq = topics(broker)
    config = repartitioned_config(broker, src, sink, dlq, tmp / "ck")
    if not repartition:
        del config["repartition"]  # the test keys its input by page (the window's key)
    config["delivery"] = "exactlyOnce"
    # No commit by the clock while the script runs (its transaction timeout, 6 intervals,
    # stays under the broker's 15 min maximum): the test decides when transactions end.
    config["checkpoint"]["intervalSeconds"] = 120
    if backend == "changelog":
        config["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
    return config, src, sink, dlq


class Scripted:
    """Runs an engine in a thread; ``steps`` are called in order from its loop thread (the
    progress callback, between batches), each until it returns True."""

    def __init__(self, config: dict[str, Any], steps: list[Callable[[Engine], bool]]) -> None:
        self.stop = threading.Event()
        self.steps = list(steps)
        self.done = 0
        self.engine = Engine(
            WorkerConfig.model_validate(config),
            stop=self.stop,
            out=io.StringIO(),
            progress=self._progress,
            metrics=EngineMetrics("abort-rewind"),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _progress(self, _summary: RunSummary) -> None:
        if self.done < len(self.steps) and self.steps[self.done](self.engine):
            self.done += 1

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as error:  # reported by the test thread (__exit__)
            self.error = error

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the engine did not stop"
        if self.error is not None:
            raise self.error

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 120) -> None:
        def check() -> bool:
            if self.error is not None or not self.thread.is_alive():
                raise AssertionError(f"the engine stopped while waiting for {what}: {self.error}")
            return condition()

        wait_until(what, check, timeout)


def fresh_and_read(engine: Engine, role: str) -> list[tuple[str, int]]:
    """The partitions of ``role`` that read records with nothing committed or checkpointed."""
    return [
        tp
        for tp, st in engine.partitions.items()
        if st.role == role
        and st.next_offset is not None
        and st.committed is None
        and not st.restored
    ]


def flushed(engine: Engine, flush_ts: int) -> bool:
    """Every window partition has seen the flush records: all their windows are closed."""
    levels = []
    for st in list(engine.partitions.values()):
        if st.role == "downstream" and st.clock is not None:
            levels.append(st.clock.closing_level())
        elif st.role == "direct" and st.windows is not None:
            levels.append(st.windows.max_event_ms)
    return bool(levels) and all(type(v) is int and v >= flush_ts for v in levels)


def results_once(broker: KafkaBroker, sink: str, dlq: str, expected: dict[str, Any]) -> None:
    """The read_committed sink holds every window once with the reference value."""
    got, seen = by_key(broker.consume_all(sink, timeout=60))
    check(got, expected)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} windows committed more than once: {list(twice)[:3]}"
    assert broker.consume_all(dlq) == []


def emitted_and_committed(run: Scripted, flush_ts: int) -> None:
    """Wait until the flush closed every window and that was committed (the results)."""

    def done() -> bool:
        states = list(run.engine.partitions.values())
        return flushed(run.engine, flush_ts) and not any(st.dirty for st in states)

    run.wait("the flush records folded everywhere and committed", done)


def commit_every_tick(engine: Engine) -> bool:
    """The last step: a commit at every progress tick (about once a second), so the results
    come out; never done."""
    engine._commit_transaction("the test: a tick", 30)
    return False


@pytest.mark.parametrize("backend", ["changelog", "volume"])
def test_an_abort_before_the_first_commit_reads_fresh_partitions_again(
    kafka_broker: KafkaBroker, tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit at all yet: every partition is fresh when the transaction aborts."""
    monkeypatch.setenv("STREAMHERD_WORKER_ID", f"abort-{backend}")
    config, src, sink, dlq = engine_config(kafka_broker, tmp_path, backend, repartition=False)
    records = list(page_clicks(0, RECORDS))
    # Keyed by page this time: each page's windows live in one partition, no re-keying.
    kafka_broker.produce(src, [(rec["page"], rec) for _user, rec in records])
    aborted: list[list[tuple[str, int]]] = []

    def abort_once_all_read(engine: Engine) -> bool:
        if engine.counters.records_in < len(records):
            return False
        aborted.append(fresh_and_read(engine, "direct"))
        assert engine.source is not None
        engine._abort_and_rewind(engine.source, "the test: a commit that failed")
        return True

    with Scripted(config, [abort_once_all_read, commit_every_tick]) as run:
        run.wait("every record read, then the transaction aborted", lambda: run.done == 1)
        assert len(aborted[0]) >= 2, aborted  # the abort met fresh partitions that had read
        flush(kafka_broker, src, records[-1][1]["ts"])
        emitted_and_committed(run, records[-1][1]["ts"] + 86_400_000)
    results_once(kafka_broker, sink, dlq, page_reference(records))


@pytest.mark.parametrize("backend", ["changelog", "volume"])
def test_an_abort_after_the_upstream_committed_reads_fresh_repartition_partitions_again(
    kafka_broker: KafkaBroker, tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure's interleaving: the re-keyed records and the source offsets committed,
    the repartition partitions read them with nothing of theirs committed yet, and then a
    commit failed. Every source partition has an offset to go back to; the repartition
    partitions have none, and must read those records again."""
    monkeypatch.setenv("STREAMHERD_WORKER_ID", f"abort-upstream-{backend}")
    config, src, sink, dlq = engine_config(kafka_broker, tmp_path, backend, repartition=True)
    records = list(page_clicks(0, RECORDS))
    # The first half lies in the first window of every page; the second half completes it
    # and fills the next one. Without the rewind, the first window of every page came out
    # short by the first half (the CI failure's signature), the second right.
    first = records[: RECORDS // 2]
    kafka_broker.produce(src, first)
    aborted: list[list[tuple[str, int]]] = []

    def commit_once_all_rekeyed(engine: Engine) -> bool:
        if engine.counters.repartitioned < len(first):
            return False
        assert engine._commit_transaction("the test: the upstream's records", 30)
        return True

    def abort_once_all_taken(engine: Engine) -> bool:
        if engine.counters.rekeyed_in < len(first):
            return False
        aborted.append(fresh_and_read(engine, "downstream"))
        assert engine.source is not None
        engine._abort_and_rewind(engine.source, "the test: a commit that failed")
        return True

    steps: list[Callable[[Engine], bool]] = [
        commit_once_all_rekeyed,
        abort_once_all_taken,
        commit_every_tick,
    ]
    with Scripted(config, steps) as run:
        run.wait("the re-keyed records committed, read, then aborted", lambda: run.done == 2)
        assert len(aborted[0]) >= 2, aborted
        kafka_broker.produce(src, records[len(first) :])
        flush(kafka_broker, src, records[-1][1]["ts"])
        emitted_and_committed(run, records[-1][1]["ts"] + 86_400_000)
    results_once(kafka_broker, sink, dlq, page_reference(records))
