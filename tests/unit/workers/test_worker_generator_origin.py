"""A generator without startTimeMs goes on with the same sequence after a restart
(helper-94's finding): its first event time was the wall clock of each start, while a
restart resumes the checkpointed offsets, so every record after it moved by the downtime
(4,000 records stopped at 2,500 and resumed 3.7 s later: 15 windows instead of 10, every
one different). The origin is kept in each checkpoint (Checkpoint.origin_ms) and adopted."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest

from streamherd.workers import changelog, generating
from streamherd.workers.checkpointing import Checkpoint, decode, encode
from streamherd.workers.config import WorkerConfig
from streamherd.workers.main import run_pipeline

T0 = 1_767_225_600_000


def config(directory: Path, *, window: bool) -> WorkerConfig:
    steps: list[dict[str, Any]] = [{"filter": "status < 500"}]
    if window:
        steps.append({"window": {"keyBy": "user", "size": "2s", "eventTime": {"field": "ts"},
                                 "aggregates": [{"name": "n", "function": "count"}]}})  # fmt: skip
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "g"},
            "source": {"generator": {"count": 4000, "keys": 5, "partitions": 2, "timeStepMs": 5}},
            "processor": {"steps": steps},
            "sink": {"stdout": {}},
            "checkpoint": {"directory": str(directory), "intervalSeconds": 5},
            "runtime": {"metricsPort": 0, "batchSize": 250},
        }
    )


class StopAfter(io.StringIO):
    """The results, stopping the run once `lines` were written."""

    def __init__(self, stop: threading.Event, lines: int) -> None:
        super().__init__()
        self.stop, self.lines = stop, lines

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\n") >= self.lines:
            self.stop.set()
        return written


def results(text: str, *, window: bool) -> dict[Any, Any]:
    docs = [orjson.loads(line) for line in text.splitlines()]
    if window:
        return {(d["key"], d["window_start"]): d["n"] for d in docs}
    return {(d["user"], d["ts"]): d["bytes"] for d in docs}


@pytest.mark.parametrize("window", [True, False], ids=["window", "stateless"])
@pytest.mark.parametrize("stops", [(3,), (1, 4), (6, 2, 1)])
def test_restarts_at_other_wall_clocks_change_no_result(
    tmp_path: Path, window: bool, stops: tuple[int, ...]
) -> None:
    whole = io.StringIO()
    with mock.patch.object(generating, "wall_clock_ms", lambda: T0):
        run_pipeline(config(tmp_path / "a", window=window), out=whole)
    outputs = []
    for n, lines in enumerate(stops):
        stop = threading.Event()
        out = StopAfter(stop, lines if window else lines * 200)
        with mock.patch.object(generating, "wall_clock_ms", lambda n=n: T0 + 3_700 * n):
            run_pipeline(config(tmp_path / "b", window=window), stop=stop, out=out)
        outputs.append(out.getvalue())
    last = io.StringIO()
    with mock.patch.object(generating, "wall_clock_ms", lambda: T0 + 100_000):
        run_pipeline(config(tmp_path / "b", window=window), out=last)
    expected = results(whole.getvalue(), window=window)
    # Each life stopped part-way (after some results, before the end).
    assert all(0 < len(results(o, window=window)) < len(expected) for o in outputs)
    resumed = results("".join(outputs) + last.getvalue(), window=window)
    assert resumed == expected


def test_the_origin_survives_both_backends_encodings() -> None:
    checkpoint = Checkpoint("generator", 1, 42, state={"windows": []}, origin_ms=1_767_225_600_123)
    assert decode(encode(checkpoint)).origin_ms == 1_767_225_600_123
    restored = changelog.decode("generator", 1, changelog.encode(checkpoint))
    assert restored is not None and restored.origin_ms == 1_767_225_600_123
    assert decode(encode(Checkpoint("t", 0, 1))).origin_ms is None
