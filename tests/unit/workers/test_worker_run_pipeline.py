"""run_pipeline with the generator source: examples/01-clicks-local.yaml's settings give the
right windows on stdout; a stopped run resumes from its checkpoints without double counting; a
Ctrl-C inside a user function stops the run."""

from __future__ import annotations

import io
import signal
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streamherd.workers.config import GeneratorSourceConfig, WorkerConfig
from streamherd.workers.engine import RunSummary
from streamherd.workers.generating import ClickGenerator
from streamherd.workers.main import run_pipeline
from tests.unit.workers import userfuncs

GENERATOR = {"count": 20000, "keys": 50, "startTimeMs": 1767225600000, "timeStepMs": 5}


def example_01(checkpoints: Path, **runtime: Any) -> WorkerConfig:
    """The WorkerConfig examples/01-clicks-local.yaml stands for (built by hand here)."""
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "clicks-local"},
            "source": {"generator": GENERATOR},
            "processor": {
                "steps": [
                    {"filter": "page != '/healthz'"},
                    {"map": {"set": {"kb": "bytes / 1024"}}},
                    {
                        "window": {
                            "keyBy": "user",
                            "type": "tumbling",
                            "size": "10s",
                            "eventTime": {"field": "ts", "format": "epochMillis"},
                            "aggregates": [
                                {"name": "clicks", "function": "count"},
                                {"name": "kb", "function": "sum", "expression": "kb"},
                            ],
                        }
                    },
                ]
            },
            "sink": {"stdout": {}},
            "checkpoint": {"directory": str(checkpoints), "intervalSeconds": 5},
            "runtime": {"metricsPort": 0, **runtime},
        }
    )


def reference() -> dict[tuple[str, str], dict[str, Any]]:
    """The expected windows, computed straight from the generated clicks."""
    gen = ClickGenerator(GeneratorSourceConfig.model_validate(GENERATOR))
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"clicks": 0, "kb": 0.0})
    while not gen.exhausted:
        for msg in gen.poll(1000):
            rec = msg.record()
            if rec["page"] == "/healthz":
                continue
            start = rec["ts"] - rec["ts"] % 10_000
            iso = datetime.fromtimestamp(start / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            row = out[(rec["user"], iso)]
            row["clicks"] += 1
            row["kb"] += rec["bytes"] / 1024
    return dict(out)


def rows(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for line in text.splitlines():
        doc = orjson.loads(line)
        # later rows (replays) replace earlier ones, as a sink dedupes by the output key
        result[(doc["key"], doc["window_start"])] = doc
    return result


def test_example_01_prints_the_right_windows(tmp_path: Path) -> None:
    out = io.StringIO()
    progress: list[RunSummary] = []
    summary = run_pipeline(example_01(tmp_path), out=out, progress=progress.append)
    assert summary.reason == "exhausted" and summary.finished
    assert summary.records_in == 20000
    expected = reference()
    got = rows(out.getvalue())
    assert len(out.getvalue().splitlines()) == len(expected) == summary.windows_emitted
    assert set(got) == set(expected)
    for k, row in got.items():
        assert row["clicks"] == expected[k]["clicks"], k
        assert abs(row["kb"] - expected[k]["kb"]) < 1e-6, k
        start = datetime.fromisoformat(row["window_start"])
        assert datetime.fromisoformat(row["window_end"]) - start == timedelta(seconds=10)
    assert summary.filtered == 20000 - sum(r["clicks"] for r in expected.values())
    assert progress[-1] == summary


def test_stopped_run_resumes_from_checkpoint(tmp_path: Path) -> None:
    """Stop after a few batches, run again on the same checkpoints: every click counted once."""
    stop = threading.Event()
    batches = {"n": 0}

    cfg = example_01(tmp_path, batchSize=1000)

    def stop_soon(_summary: RunSummary) -> None:
        batches["n"] += 1

    # Stop deterministically once some windows were printed: the sink raises the flag.
    class StopAfter(io.StringIO):
        def write(self, s: str) -> int:
            n = super().write(s)
            if self.getvalue().count("\n") >= 40:
                stop.set()
            return n

    first = StopAfter()
    s1 = run_pipeline(cfg, stop=stop, out=first, progress=stop_soon)
    assert s1.reason == "stopped"
    assert 0 < s1.records_in < 20000
    second = io.StringIO()
    s2 = run_pipeline(cfg, out=second)
    assert s2.reason == "exhausted"
    assert s1.records_in + s2.records_in == 20000  # no record read twice into the state
    combined = rows(first.getvalue() + second.getvalue())
    expected = reference()
    assert set(combined) == set(expected)
    assert all(combined[k]["clicks"] == expected[k]["clicks"] for k in expected)


def test_a_real_sigint_inside_a_user_function_stops_an_in_process_run(tmp_path: Path) -> None:
    """A program runs a pipeline in-process and leaves SIGINT as Python sets it (raise
    KeyboardInterrupt). A Ctrl-C that lands inside the user function must stop the run, as
    it stops the worker and `streamherd run`, not be taken for the function's own
    KeyboardInterrupt, which the engine dead-letters with its record (decision 0187):
    run_pipeline turns SIGINT into its stop flag while it runs, and restores the handler."""
    doc = example_01(tmp_path).model_dump(by_alias=True, mode="json", exclude_none=True)
    doc["processor"]["function"] = {"callable": "tests.unit.workers.userfuncs:interrupt_once"}
    cfg = WorkerConfig.model_validate(doc)
    userfuncs.INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        summary = run_pipeline(cfg, out=io.StringIO())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert userfuncs.INTERRUPTED == [True]
    assert (summary.reason, summary.dead_lettered) == ("stopped", 0)
    assert 0 < summary.records_in < 20000
