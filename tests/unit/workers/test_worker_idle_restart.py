"""A window closed because its partition went quiet gives one result, across any restart.

Idleness (``source.kafka.idleTimeout``) is the one rule that depends on wall-clock time, so
a restart does not repeat it. Under at-least-once the idle close emitted its windows and
recorded the moved watermark only at the next interval checkpoint: a worker killed in
between restarted from the checkpoint before, found the windows open, folded the record
the first life had dead-lettered as late, and emitted a second, different result for the
same window (a helper's finding, session 25). The moved watermark is now made durable
before the results leave.

In-process: the engine over a memory source and the real volume backend; each test kills
the first life (abandons the engine with no further checkpoint) after every step of a
schedule and checks that each window's results agree.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.metrics import EngineMetrics
from tests.unit.workers.test_worker_unkeyed import BASE_TS, TOPIC, MemorySource, message


def config(directory: Path) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "idle"},
            "source": {
                "kafka": {
                    "bootstrapServers": "127.0.0.1:9",  # never dialled: the source is given
                    "topics": [TOPIC],
                    "consumerGroup": "idle",
                    "idleTimeoutSeconds": 1,
                }
            },
            "processor": {
                "steps": [
                    {
                        "window": {
                            "keyBy": "user",
                            "size": "10s",
                            "eventTime": {"field": "ts"},
                            "aggregates": [{"name": "clicks", "function": "count"}],
                        }
                    }
                ]
            },
            "sink": {"stdout": {}},
            "checkpoint": {"directory": str(directory), "intervalSeconds": 3600},
            "runtime": {"metricsPort": 0},
        }
    )


#: Three clicks of one user in one 10 s window; the third comes after the partition went
#: quiet and its window was closed.
CLICKS = [message(0, i, b"a", {"user": "a", "ts": BASE_TS + 1000 * (i + 1)}) for i in range(3)]


class Life:
    """One worker's life: an engine over the clicks from its checkpoint on."""

    def __init__(self, directory: Path, arrived: int) -> None:
        self.out = io.StringIO()
        stop = threading.Event()
        self.engine = Engine(
            config(directory),
            stop=stop,
            out=self.out,
            metrics=EngineMetrics("idle"),
            source=MemorySource(stop, CLICKS[:arrived], 1),
        )
        self.engine._list_topics = lambda timeout=10.0: []  # type: ignore[method-assign]
        source = self.engine._given_source
        assert source is not None
        self.engine.source = source
        source.open(self.engine._on_assign, self.engine._on_revoke, self.engine._on_lost)
        self.source: Any = source

    def read(self) -> None:
        while self.source.pending:
            self.engine._process(self.source.poll(100, 0))

    def arrive(self, n: int) -> None:
        """The n-th click reaches the topic (read at once)."""
        self.source.pending = [CLICKS[n]]
        self.read()

    def quiet(self) -> None:
        """The idle timeout passes with nothing new to read."""
        st = self.engine.partitions[(TOPIC, 0)]
        st.high = st.next_offset
        st.last_record_at = time.monotonic() - 5
        self.engine._check_idle()

    def checkpoint(self) -> None:
        self.engine._checkpoint(list(self.engine.partitions.values()), sync=True, reason="test")

    def results(self) -> list[tuple[str, int]]:
        self.engine.outputs.flush(5)
        return [
            (row["window_start"], row["clicks"])
            for row in map(orjson.loads, self.out.getvalue().splitlines())
        ]


STEPS = ["read", "checkpoint", "quiet", "third", "checkpoint"]


@pytest.mark.parametrize("killed_after", range(len(STEPS) + 1))
def test_an_idle_closed_window_has_one_result_across_a_restart(
    tmp_path: Path, killed_after: int
) -> None:
    first = Life(tmp_path, arrived=2)
    for step in STEPS[:killed_after]:
        if step == "read":
            first.read()
        elif step == "checkpoint":
            first.checkpoint()
        elif step == "quiet":
            first.quiet()
        else:
            first.arrive(2)
    results = first.results()
    # Killed here: the next life starts from what the first made durable, with every
    # click that reached the topic, and runs until its partition is quiet again.
    second = Life(tmp_path, arrived=3)
    second.read()
    second.quiet()
    results += second.results()
    assert results, "the window was never emitted"
    assert len(set(results)) == 1, f"one window, different results: {results}"
    closed_early = "quiet" in STEPS[:killed_after]
    # The first life closed the window on two clicks: the third is late, in every life
    # after it. Otherwise the second life saw all three before the partition went quiet.
    assert results[0] == ("2026-01-01T00:00:00.000Z", 2 if closed_early else 3)
    # The third click is dead-lettered as late once per life that reads it after the close:
    # by the first (after "third"), and by the second when it reads it again (the first
    # made no checkpoint after reading it).
    late = first.engine.counters.late + second.engine.counters.late
    assert late == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2, 5: 1}[killed_after]


def test_an_idle_close_not_yet_recorded_waits_with_its_windows_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint that records the moved watermark cannot be made (the sink does not
    flush in time): nothing is emitted and the watermark stays where it was, so a record
    for the window still counts; a later pass closes it once the checkpoint is made."""
    life = Life(tmp_path, arrived=2)
    life.read()
    st = life.engine.partitions[(TOPIC, 0)]
    assert st.windows is not None
    before = st.windows.max_event_ms
    flushes: list[float] = []

    def refuse(timeout: float) -> bool:
        flushes.append(timeout)
        return False

    monkeypatch.setattr(life.engine.outputs, "flush", refuse)
    life.quiet()
    assert st.windows.max_event_ms == before and len(st.windows.windows) == 1
    assert not st.idle
    asked = len(flushes)
    life.engine._check_idle()  # the loop's next pass: tried again in 5 s, not at once
    assert len(flushes) == asked
    monkeypatch.undo()
    life.arrive(2)  # not late: the window is open
    life.quiet()
    assert life.results() == [("2026-01-01T00:00:00.000Z", 3)]
    assert life.engine.counters.late == 0


def test_an_idle_checkpoint_leaves_the_others_interval_alone(tmp_path: Path) -> None:
    """The idle close's checkpoint is of the quiet partitions only: the interval checkpoint
    of the others is not put off by it (partitions going quiet in turn more often than the
    interval would put it off for ever: a review's finding)."""
    life = Life(tmp_path, arrived=2)
    life.read()
    since = life.engine._last_checkpoint
    life.quiet()
    assert life.results() == [("2026-01-01T00:00:00.000Z", 2)]
    assert life.engine._last_checkpoint == since
