"""`streamherd run` judges the edits the engine cannot, as the operator does before a roll
(decision 0197): a source topic removed whose partitions' checkpoints hold open windows,
and a move to the kafka backend leaving the directory's windows behind. Before, a local run
on the old --checkpoint-dir dropped those windows without a word (helper-87's finding)."""

from __future__ import annotations

import copy
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.cli import main
from streamherd.operator.local import left_behind, localize, worker_config
from streamherd.workers.checkpointing import Checkpoint, CheckpointStore
from streamherd.workers.config import WorkerConfig
from tests.infra.paths import EXAMPLES_DIR

KAFKA: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "02-clicks-per-minute.yaml").read_text())
LOCAL: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "01-clicks-local.yaml").read_text())
WINDOW = [["/home", 60_000, [3, 100, 7]]]  # one open window: [key, start, accumulator]


def manifest(
    base: dict[str, Any], *, topics: list[str] | None = None, policy: str, backend: str
) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    spec = doc["spec"]
    if topics is not None:
        spec["source"]["kafka"]["topics"] = topics
    spec["processor"]["steps"][-1]["window"]["repartition"] = "never"
    spec.setdefault("upgrade", {})["onStateChange"] = policy
    if policy == "replay":
        spec["upgrade"]["replayFrom"] = "2026-01-01T00:00:00Z"
    spec["checkpoint"] = {"interval": "10s", "backend": backend}
    return doc


def stored(directory: Path, topic: str, partitions: int, *, windows: bool) -> None:
    state = {"windows": WINDOW if windows else [], "watermark": 0}
    CheckpointStore(directory).save(
        [Checkpoint(topic, p, 10, state=state) for p in range(partitions)]
    )


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main(["run", str(path), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--bootstrap-servers", "127.0.0.1:9", "--max-seconds", "5"])  # fmt: skip
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("what", "policy", "windows"),
    list(itertools.product(["removed", "backend"], ["refuse", "reset", "replay"], [True, False])),
)
def test_what_a_run_would_lose_is_judged_by_the_policy(
    tmp_path: Path, what: str, policy: str, windows: bool
) -> None:
    if what == "removed":  # clicks-old was read before; the manifest reads clicks only
        stored(tmp_path / "ck", "clicks-old", 2, windows=windows)
        stored(tmp_path / "ck", "clicks", 1, windows=True)  # read on: nothing lost
        doc = manifest(KAFKA, topics=["clicks"], policy=policy, backend="volume")
    else:  # the same topic, its state in the directory, the manifest now on the kafka backend
        stored(tmp_path / "ck", "clicks", 2, windows=windows)
        doc = manifest(KAFKA, policy=policy, backend="kafka")
    config = _config(tmp_path, doc)
    refusal, warning = left_behind(config)
    if not windows:  # closed windows only: nothing to lose
        assert (refusal, warning) == (None, None)
        return
    topic = "clicks-old" if what == "removed" else "clicks"
    refused = policy == "refuse" or (what == "backend" and policy == "replay")
    said = refusal if refused else warning
    assert said is not None and (refusal is None) != refused
    assert f"{topic} (partitions 0, 1)" in said, said
    if refused:
        assert "onStateChange" in said and "--checkpoint-dir" in said, said


def test_a_refused_run_stops_before_it_reads_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No broker at 127.0.0.1:9: the refusal comes first, and nothing on disk changes."""
    stored(tmp_path / "ck", "clicks-old", 1, windows=True)
    before = sorted((p, p.read_bytes()) for p in (tmp_path / "ck").rglob("*") if p.is_file())
    code, err = run(tmp_path, capsys, manifest(KAFKA, topics=["clicks"], policy="refuse",
                                                  backend="volume"))  # fmt: skip
    assert code == 1 and "error: the checkpoints in" in err and "clicks-old" in err, err
    after = sorted((p, p.read_bytes()) for p in (tmp_path / "ck").rglob("*") if p.is_file())
    assert after == before


def test_a_generator_run_after_a_kafka_one_is_judged_too(tmp_path: Path) -> None:
    stored(tmp_path / "ck", "clicks", 1, windows=True)
    doc = copy.deepcopy(LOCAL)
    doc["spec"].setdefault("upgrade", {})["onStateChange"] = "refuse"
    refusal, _ = left_behind(_config(tmp_path, doc))
    assert refusal is not None and "clicks (partitions 0)" in refusal


def test_the_repartition_topic_and_the_generator_are_read(tmp_path: Path) -> None:
    """Windows on a topic the run reads are the engine's to judge (it loads them)."""
    stored(tmp_path / "ck", "generator", 2, windows=True)
    assert left_behind(_config(tmp_path, copy.deepcopy(LOCAL))) == (None, None)
    other = tmp_path / "other"
    other.mkdir()
    config = _config(other, copy.deepcopy(KAFKA))
    assert config.repartition is not None  # keyBy page over a topic not known to be keyed
    stored(other / "ck", config.repartition.topic, 2, windows=True)
    stored(other / "ck", "clicks", 2, windows=False)
    assert left_behind(config) == (None, None)


def _config(tmp_path: Path, doc: dict[str, Any]) -> WorkerConfig:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    err = io.StringIO()
    rendered = worker_config(str(path), err)
    assert rendered is not None, err.getvalue()
    return localize(
        rendered, checkpoint_dir=str(tmp_path / "ck"), metrics_port=0, bootstrap_servers=None
    )
