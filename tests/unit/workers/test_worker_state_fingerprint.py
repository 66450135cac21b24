"""The engine and the state fingerprint: checkpoints carry it; state of another fingerprint is
never restored. With `refuse` the partitions are held (nothing consumed, the checkpoint files
byte for byte as found, the worker not ready and saying why, a metric); with `reset` the state
starts empty at the checkpoint's offsets and the results are those of the new spec; a legacy
checkpoint (no fingerprint) is adopted and stamped. Generator source, real checkpoint files.
"""

from __future__ import annotations

import io
import threading
import zlib
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamherd.workers.checkpointing import CheckpointError, CheckpointStore, decode, encode
from streamherd.workers.config import GeneratorSourceConfig, WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.fingerprint import (
    accepted_fingerprints,
    is_volume_snapshot,
    snapshot_name,
)
from streamherd.workers.generating import GENERATOR_TOPIC, ClickGenerator
from streamherd.workers.metrics import EngineMetrics
from tests.infra.processes import wait_until

GENERATOR = {
    "count": 12000,
    "keys": 40,
    "partitions": 4,
    "startTimeMs": 1767225600000,
    "timeStepMs": 5,
}
OLD_WINDOW: dict[str, Any] = {
    "keyBy": "user",
    "size": "10s",
    "eventTime": {"field": "ts"},
    "aggregates": [
        {"name": "clicks", "function": "count"},
        {"name": "kb", "function": "sum", "expression": "bytes / 1024"},
    ],
}
# Two edits at once: a new size and the aggregates swapped (values would be swapped).
NEW_WINDOW: dict[str, Any] = {
    **OLD_WINDOW,
    "size": "5s",
    "aggregates": list(reversed(OLD_WINDOW["aggregates"])),
}


def config(
    checkpoints: Path,
    window: dict[str, Any],
    *,
    endless: bool = False,
    before: list[dict[str, Any]] | None = None,
    **state: Any,
) -> WorkerConfig:
    generator = {**GENERATOR, "count": None} if endless else GENERATOR
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "fp"},
            "source": {"generator": generator},
            "processor": {"steps": [*(before or []), {"window": window}]},
            "sink": {"stdout": {}},
            "checkpoint": {"directory": str(checkpoints), "intervalSeconds": 3600},
            "runtime": {"metricsPort": 0, "batchSize": 500},
            **({"state": state} if state else {}),
        }
    )


class StopAfter(io.StringIO):
    """A stdout sink that stops the run once `lines` results were written."""

    def __init__(self, stop: threading.Event, lines: int) -> None:
        super().__init__()
        self.stop, self.lines = stop, lines

    def write(self, s: str) -> int:
        n = super().write(s)
        if self.getvalue().count("\n") >= self.lines:
            self.stop.set()
        return n


def run(cfg: WorkerConfig, *, stop_after: int | None = None) -> tuple[Engine, str]:
    """Run an engine to its end (or `stop_after` results); returns it and its output."""
    stop = threading.Event()
    out: io.StringIO = StopAfter(stop, stop_after) if stop_after else io.StringIO()
    engine = Engine(cfg, stop=stop, out=out, metrics=EngineMetrics("fp"))
    engine.run()
    return engine, out.getvalue()


def readiness_while_running(cfg: WorkerConfig) -> tuple[Engine, tuple[bool, str]]:
    """Run an endless engine in a thread until its partitions are set up; what ready() says
    then; stop it."""
    stop = threading.Event()
    engine = Engine(cfg, stop=stop, out=io.StringIO(), metrics=EngineMetrics("fp"))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    # Every partition's state is set up before the generator starts.
    assert cfg.source.generator is not None
    wanted = cfg.source.generator.partitions
    wait_until(
        "the engine's partitions set up", lambda: len(engine.partitions) == wanted, timeout=30
    )
    said = engine.ready()
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    return engine, said


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / GENERATOR_TOPIC).glob("*.ckpt"))}


def started(tmp_path: Path) -> tuple[dict[str, bytes], int]:
    """A first run under OLD_WINDOW stopped with open windows; (its files, records read)."""
    engine, _ = run(config(tmp_path, OLD_WINDOW), stop_after=30)
    found = files(tmp_path)
    assert len(found) == 4
    store = CheckpointStore(tmp_path)
    loaded = [store.load(GENERATOR_TOPIC, int(name.split(".")[0])) for name in found]
    assert any(c is not None and c.state and c.state["windows"] for c in loaded)
    assert 0 < engine.counters.records_in < GENERATOR["count"]
    return found, engine.counters.records_in


def test_checkpoints_carry_the_fingerprint(tmp_path: Path) -> None:
    started(tmp_path)
    engine = Engine(config(tmp_path, OLD_WINDOW), stop=threading.Event(), out=io.StringIO())
    for data in files(tmp_path).values():
        checkpoint = decode(data)
        assert checkpoint.fingerprint == engine.fingerprint
        assert checkpoint.state_shape == engine.state_shape


def test_refuse_holds_the_partitions_and_touches_nothing(tmp_path: Path) -> None:
    before, first_in = started(tmp_path)
    engine, (ok, why) = readiness_while_running(config(tmp_path, NEW_WINDOW, endless=True))
    assert engine.counters.records_in == 0
    assert files(tmp_path) == before  # byte for byte: never overwritten, never mixed
    assert not ok
    assert "4 partitions held" in why and "window.size: 10000 -> 5000" in why, why
    assert "window.aggregates: reordered" in why and "refused" in why
    for p in range(4):
        value = engine.metrics.registry.get_sample_value(
            "streamherd_state_restore_refused",
            {"pipeline": "fp", "topic": GENERATOR_TOPIC, "partition": str(p)},
        )
        assert value == 1
    # Going back to the spec the state was written for resumes it exactly.
    back, _ = run(config(tmp_path, OLD_WINDOW))
    assert first_in + back.counters.records_in == GENERATOR["count"]


def reference(window_ms: int, start: dict[int, int]) -> dict[tuple[str, str], dict[str, Any]]:
    """Counts and kB per (user, window) of the clicks at or after each partition's offset."""
    gen = ClickGenerator(GeneratorSourceConfig.model_validate(GENERATOR))
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"clicks": 0, "kb": 0.0})
    while not gen.exhausted:
        for msg in gen.poll(1000):
            if (msg.offset() or 0) < start[msg.partition() or 0]:
                continue
            rec = msg.record()
            begin = rec["ts"] - rec["ts"] % window_ms
            iso = datetime.fromtimestamp(begin / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            row = out[(rec["user"], iso)]
            row["clicks"] += 1
            row["kb"] += rec["bytes"] / 1024
    return dict(out)


def test_reset_starts_empty_at_the_checkpointed_offsets(tmp_path: Path) -> None:
    before, first_in = started(tmp_path)
    offsets = {int(name.split(".")[0]): decode(data).next_offset for name, data in before.items()}
    engine, out = run(config(tmp_path, NEW_WINDOW, onFingerprintMismatch="reset"))
    assert first_in + engine.counters.records_in == GENERATOR["count"]  # nothing read twice
    discarded = engine.metrics.registry.get_sample_value(
        "streamherd_state_discarded_total", {"pipeline": "fp", "reason": "reset"}
    )
    assert discarded == 4
    got = {}
    for line in out.splitlines():
        doc = orjson.loads(line)
        assert list(doc) == ["key", "window_start", "window_end", "kb", "clicks"]
        got[(doc["key"], doc["window_start"])] = doc
    expected = reference(5000, offsets)
    assert set(got) == set(expected)
    for k, row in got.items():
        assert row["clicks"] == expected[k]["clicks"], k
        assert abs(row["kb"] - expected[k]["kb"]) < 1e-6, k
    for data in files(tmp_path).values():
        assert decode(data).fingerprint == engine.fingerprint
    # The discarded state was kept first, byte for byte, under <old>-to-<new>.
    old = decode(next(iter(before.values()))).fingerprint
    assert old is not None
    store = CheckpointStore(tmp_path)
    for file_name, data in before.items():
        partition = int(file_name.split(".")[0])
        kept = store.snapshot_path(
            snapshot_name(old, engine.fingerprint), GENERATOR_TOPIC, partition
        )
        assert kept.read_bytes() == data


def test_a_worker_of_an_earlier_generation_leaves_a_later_ones_state_alone(
    tmp_path: Path,
) -> None:
    """A rolling update can hand a partition back to a worker of the previous spec, whose
    config resets too (onStateChange stays in the spec). Checkpoints carry the generation
    whose config wrote them: that worker holds the partition instead of discarding the
    newer spec's state (before, it discarded it and computed the old spec on), while a
    later generation resets as ever."""
    started(tmp_path)
    new, _ = run(
        config(tmp_path, NEW_WINDOW, onFingerprintMismatch="reset", specGeneration=3),
        stop_after=20,
    )
    written = files(tmp_path)
    assert {decode(d).spec_generation for d in written.values()} == {3}
    assert {decode(d).fingerprint for d in written.values()} == {new.fingerprint}
    older, (ok, why) = readiness_while_running(
        config(tmp_path, OLD_WINDOW, endless=True, onFingerprintMismatch="reset",
               specGeneration=2)
    )  # fmt: skip
    assert older.counters.records_in == 0
    assert files(tmp_path) == written  # byte for byte: the later spec's state stays
    assert not ok and "4 partitions held" in why and "generation 3" in why, why
    discarded = older.metrics.registry.get_sample_value(
        "streamherd_state_discarded_total", {"pipeline": "fp", "reason": "reset"}
    )
    assert not discarded
    # A later generation going back to the old window resets it, as any edit would.
    later, _ = run(
        config(tmp_path, OLD_WINDOW, onFingerprintMismatch="reset", specGeneration=4),
        stop_after=5,
    )
    assert (
        later.metrics.registry.get_sample_value(
            "streamherd_state_discarded_total", {"pipeline": "fp", "reason": "reset"}
        )
        == 4
    )
    assert {decode(d).spec_generation for d in files(tmp_path).values()} == {4}


def test_a_later_generation_of_another_pipeline_of_the_name_is_not_this_ones(
    tmp_path: Path,
) -> None:
    """Generations count per pipeline: one deleted with retainOnDelete and created again
    counts from 1. A checkpoint of generation 3 of the earlier pipeline (another uid) is
    discarded under reset like any other spec's state; before, the new pipeline held every
    partition until its own generation passed 3 (a review). Of the same pipeline it holds."""
    started(tmp_path)
    run(
        config(tmp_path, NEW_WINDOW, onFingerprintMismatch="reset", specGeneration=3,
               pipelineUid="uid-before"),
        stop_after=20,
    )  # fmt: skip
    assert {decode(d).pipeline_uid for d in files(tmp_path).values()} == {"uid-before"}
    _same, (ok, why) = readiness_while_running(
        config(tmp_path, OLD_WINDOW, endless=True, onFingerprintMismatch="reset",
               specGeneration=1, pipelineUid="uid-before")
    )  # fmt: skip
    assert not ok and "generation 3" in why, why
    again, (ok, why) = readiness_while_running(
        config(tmp_path, OLD_WINDOW, endless=True, onFingerprintMismatch="reset",
               specGeneration=1, pipelineUid="uid-again")
    )  # fmt: skip
    assert ok, why
    discarded = again.metrics.registry.get_sample_value(
        "streamherd_state_discarded_total", {"pipeline": "fp", "reason": "reset"}
    )
    assert discarded == 4


def discarded_by(engine: Engine, reason: str) -> float | None:
    return engine.metrics.registry.get_sample_value(
        "streamherd_state_discarded_total", {"pipeline": "fp", "reason": reason}
    )


def test_state_of_the_fingerprint_from_before_the_epoch_is_discarded_whatever_the_policy(
    tmp_path: Path,
) -> None:
    """A pipeline that went to another state and came back (a reset or replay each way)
    meets checkpoints of its fingerprint that nothing wrote over in between (decision 0175).
    The config names the state epoch (the generation whose roll started the state anew):
    a checkpoint naming an earlier epoch, none, or another pipeline is discarded (kept
    first), even under refuse (the policy may have been set back since the reset); one of
    the epoch is restored; one of a later epoch is held, left to that epoch's workers."""
    before, _ = started(tmp_path)  # as created: no epoch
    fresh, _ = run(config(tmp_path, OLD_WINDOW, pipelineUid="uid", epoch=5), stop_after=5)
    assert discarded_by(fresh, "reset") == 4
    store = CheckpointStore(tmp_path)
    kept = snapshot_name(fresh.fingerprint, fresh.fingerprint, 5)
    for file_name, data in before.items():
        partition = int(file_name.split(".")[0])
        assert store.snapshot_path(kept, GENERATOR_TOPIC, partition).read_bytes() == data
    written = files(tmp_path)
    assert {(decode(d).epoch, decode(d).pipeline_uid) for d in written.values()} == {(5, "uid")}
    # The epoch's own state is restored, whatever the policy.
    for policy in ("refuse", "reset"):
        same, (ok, why) = readiness_while_running(
            config(tmp_path, OLD_WINDOW, endless=True, onFingerprintMismatch=policy,
                   pipelineUid="uid", epoch=5)
        )  # fmt: skip
        assert ok, why
        assert not discarded_by(same, "reset")
        assert all(st.restored and st.held is None for st in same.partitions.values())
    written = files(tmp_path)
    # A worker of an earlier epoch leaves the later one's state alone, byte for byte.
    older, (ok, why) = readiness_while_running(
        config(tmp_path, OLD_WINDOW, endless=True, pipelineUid="uid", epoch=4)
    )
    assert not ok and "4 partitions held" in why and "state epoch 5" in why, why
    assert older.counters.records_in == 0
    assert files(tmp_path) == written
    # Another pipeline of the name (retainOnDelete, created again) whose own epoch has the
    # same number (its generations count from 1 again): this state is from before it.
    other, (ok, why) = readiness_while_running(
        config(tmp_path, OLD_WINDOW, endless=True, pipelineUid="uid-again", epoch=5)
    )
    assert ok, why
    assert discarded_by(other, "reset") == 4


def test_the_same_edit_made_again_keeps_its_own_snapshot(tmp_path: Path) -> None:
    """A -> B -> A -> B, a reset each time: the second A -> B keeps the state it discards
    under the roll's generation (its state epoch), beside the first one's; before, both
    had the name `<A>-to-<B>`, and the second wrote over the first (a lifecycle review)."""
    before, _ = started(tmp_path)  # A, as created
    reset: dict[str, Any] = {"onFingerprintMismatch": "reset", "pipelineUid": "uid"}
    b, _ = run(config(tmp_path, NEW_WINDOW, specGeneration=2, epoch=2, **reset), stop_after=5)
    a, _ = run(config(tmp_path, OLD_WINDOW, specGeneration=3, epoch=3, **reset), stop_after=5)
    second_a = files(tmp_path)
    run(config(tmp_path, NEW_WINDOW, specGeneration=4, epoch=4, **reset), stop_after=5)
    store = CheckpointStore(tmp_path)
    for file_name in before:
        partition = int(file_name.split(".")[0])
        first = store.snapshot_path(snapshot_name(a.fingerprint, b.fingerprint, 2),
                                    GENERATOR_TOPIC, partition)  # fmt: skip
        again = store.snapshot_path(snapshot_name(a.fingerprint, b.fingerprint, 4),
                                    GENERATOR_TOPIC, partition)  # fmt: skip
        assert first.read_bytes() == before[file_name]
        assert again.read_bytes() == second_a[file_name]
    assert all(is_volume_snapshot(snapshot_name(a.fingerprint, b.fingerprint, g)) for g in (2, 4))
    # The name is matched whole, as the CRD's rule (RE2) does: not with a trailing newline.
    assert not is_volume_snapshot(snapshot_name(a.fingerprint, b.fingerprint, 2) + "\n")


def test_a_worker_naming_no_epoch_writes_back_the_epoch_of_the_state_it_goes_on_with(
    tmp_path: Path,
) -> None:
    """A worker of a spec before the epoch (A -> B -> A, one of the first A still alive in
    the rollout) restores a checkpoint of the epoch (its fingerprint) and goes on with it.
    Written back without the epoch, the epoch's workers then took that current state for an
    earlier era's and discarded it (a review). It writes the restored epoch and uid back;
    a checkpoint of another pipeline's (another uid in its config) it does not."""
    started(tmp_path)
    fresh, _ = run(config(tmp_path, OLD_WINDOW, onFingerprintMismatch="reset",
                          pipelineUid="uid", specGeneration=7, epoch=7), stop_after=5)  # fmt: skip
    assert discarded_by(fresh, "reset") == 4
    old, _ = run(config(tmp_path, OLD_WINDOW, onFingerprintMismatch="reset",
                        pipelineUid="uid", specGeneration=1), stop_after=10)  # fmt: skip
    assert not discarded_by(old, "reset")  # it went on with the epoch's state
    assert old.counters.records_in > 0
    assert {(decode(d).epoch, decode(d).pipeline_uid) for d in files(tmp_path).values()} == {
        (7, "uid")
    }
    again, (ok, why) = readiness_while_running(
        config(tmp_path, OLD_WINDOW, endless=True, onFingerprintMismatch="reset",
               pipelineUid="uid", specGeneration=7, epoch=7)
    )  # fmt: skip
    assert ok, why
    assert not discarded_by(again, "reset")
    # A pipeline of the name created again (its own uid, no epoch yet) adopts the state and
    # stamps it as its own: the deleted pipeline's epoch is not carried over.
    other, _ = run(config(tmp_path, OLD_WINDOW, onFingerprintMismatch="reset",
                          pipelineUid="uid-again", specGeneration=1), stop_after=5)  # fmt: skip
    assert not discarded_by(other, "reset")
    assert {(decode(d).epoch, decode(d).pipeline_uid) for d in files(tmp_path).values()} == {
        (None, "uid-again")
    }


def test_a_legacy_checkpoint_is_adopted_and_stamped(tmp_path: Path) -> None:
    before, first_in = started(tmp_path)
    store = CheckpointStore(tmp_path)
    legacy = []
    for name in before:
        checkpoint = store.load(GENERATOR_TOPIC, int(name.split(".")[0]))
        assert checkpoint is not None
        legacy.append(
            type(checkpoint)(
                topic=checkpoint.topic,
                partition=checkpoint.partition,
                next_offset=checkpoint.next_offset,
                state=checkpoint.state,
                pipeline=checkpoint.pipeline,
            )
        )
    # Written as the versions before fingerprints did: one v1 file, the windows inline.
    for c in legacy:
        store.path(c.topic, c.partition).write_bytes(encode(c))
    assert all(b"fingerprint" not in encode(c) for c in legacy)
    assert any(c.state and c.state["windows"] for c in legacy)
    engine, _ = run(config(tmp_path, OLD_WINDOW))
    assert first_in + engine.counters.records_in == GENERATOR["count"]
    for data in files(tmp_path).values():
        assert decode(data).fingerprint == engine.fingerprint


def test_state_from_a_stateless_pipeline_is_only_an_offset(tmp_path: Path) -> None:
    stateless = WorkerConfig.model_validate(
        {
            **config(tmp_path, OLD_WINDOW).model_dump(by_alias=True),
            "processor": {"steps": [{"filter": "bytes > 0"}]},
        }
    )
    run(stateless, stop_after=2000)
    offsets = {n: decode(d).next_offset for n, d in files(tmp_path).items()}
    assert all(decode(d).state is None for d in files(tmp_path).values())
    engine, _ = run(config(tmp_path, OLD_WINDOW))
    assert engine.counters.records_in == GENERATOR["count"] - sum(offsets.values())


def reference_old(start: dict[int, int] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """OLD_WINDOW's results (10 s, clicks and kB) over every click, or over those at or after
    each partition's offset in `start`."""
    return reference(10_000, start or dict.fromkeys(range(4), 0))


def last_rows(output: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Each window's last result row in the stdout sink's output (later rows replace
    earlier ones)."""
    got = {}
    for line in output.splitlines():
        doc = orjson.loads(line)
        got[(doc["key"], doc["window_start"])] = doc
    return got


def test_a_kept_snapshot_restores_the_old_results(tmp_path: Path) -> None:
    """Reset to a new spec (the old state is kept), run it a while, then restore the kept
    snapshot under the old spec: the old spec's results come out as if it had never been
    replaced, and a restart does not restore it a second time."""
    stop = threading.Event()
    first_out = StopAfter(stop, 30)
    first = Engine(config(tmp_path, OLD_WINDOW), stop=stop, out=first_out)
    first.run()
    old_fp = first.fingerprint
    snapshot_offsets = {
        int(n.split(".")[0]): decode(d).next_offset for n, d in files(tmp_path).items()
    }
    # The new spec (reset) runs for a while, past the snapshot's offsets.
    new_engine, _ = run(config(tmp_path, NEW_WINDOW, onFingerprintMismatch="reset"), stop_after=20)
    name = snapshot_name(old_fp, new_engine.fingerprint)
    assert sum(decode(d).next_offset for d in files(tmp_path).values()) > sum(
        snapshot_offsets.values()
    )
    # Restore the snapshot with the spec it was taken under.
    restored, out = run(config(tmp_path, OLD_WINDOW, restoreFrom=name))
    assert restored.counters.records_in == GENERATOR["count"] - sum(snapshot_offsets.values())
    got = last_rows(first_out.getvalue() + out)
    expected = reference_old()
    assert set(got) == set(expected)
    for k, row in got.items():
        assert row["clicks"] == expected[k]["clicks"], k
        assert abs(row["kb"] - expected[k]["kb"]) < 1e-6, k
    for data in files(tmp_path).values():
        checkpoint = decode(data)
        assert checkpoint.fingerprint == old_fp and checkpoint.restored_from == name
    # A restart with the same config resumes from its own checkpoints (at the end).
    again, again_out = run(config(tmp_path, OLD_WINDOW, restoreFrom=name))
    assert again.counters.records_in == 0 and again_out == ""


def test_a_snapshot_kept_under_the_earlier_rules_name_restores_by_the_listed_one(
    tmp_path: Path,
) -> None:
    """A map before the window is part of the fingerprint since decision 0204. A reset's
    workers name what they keep by its checkpoint's stamp: an earlier image's (or one no
    record changed since the upgrade) names it by the earlier rules, while the operator
    lists it by this version's. The listed name, restored, held those partitions as not in
    the volume (helper-113's finding): the workers look for the earlier rules' name too."""
    mapped = [{"map": {"set": {"bytes": "bytes"}}}]  # reads and sets what the window sums
    stop = threading.Event()
    first_out = StopAfter(stop, 30)
    first = Engine(config(tmp_path, OLD_WINDOW, before=mapped), stop=stop, out=first_out)
    first.run()
    new_engine, _ = run(
        config(tmp_path, NEW_WINDOW, before=mapped, onFingerprintMismatch="reset"), stop_after=20
    )
    listed = snapshot_name(first.fingerprint, new_engine.fingerprint)
    (earlier,) = accepted_fingerprints(first.state_shape) - {first.fingerprint}
    kept = tmp_path / "@snapshots"
    assert sorted(p.name for p in kept.iterdir()) == [listed]
    (kept / listed).rename(kept / snapshot_name(earlier, new_engine.fingerprint))
    stop = threading.Event()
    restoring = io.StringIO()
    engine = Engine(config(tmp_path, OLD_WINDOW, before=mapped, restoreFrom=listed), stop=stop,
                    out=restoring, metrics=EngineMetrics("fp"))  # fmt: skip
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # held: the run never ends
        why = engine.ready()
        stop.set()
        thread.join(30)
        pytest.fail(f"the restore did not run to the end: {why}")
    out = restoring.getvalue()
    got = last_rows(first_out.getvalue() + out)
    expected = reference_old()
    assert set(got) == set(expected)
    assert all(row["clicks"] == expected[k]["clicks"] for k, row in got.items())
    assert all(decode(d).restored_from == listed for d in files(tmp_path).values())


def test_a_snapshot_of_another_state_is_held_not_reset(tmp_path: Path) -> None:
    started(tmp_path)
    old_fp = decode(next(iter(files(tmp_path).values()))).fingerprint
    assert old_fp is not None
    new_engine, _ = run(config(tmp_path, NEW_WINDOW, onFingerprintMismatch="reset"), stop_after=5)
    name = snapshot_name(old_fp, new_engine.fingerprint)
    # The snapshot holds OLD_WINDOW's state: restoring it under NEW_WINDOW is refused even
    # with the reset policy (a snapshot is restored as it is, or not at all).
    cfg = config(
        tmp_path, NEW_WINDOW, endless=True, onFingerprintMismatch="reset", restoreFrom=name
    )
    engine, (ok, why) = readiness_while_running(cfg)
    assert not ok and f"snapshot {name} holds state of fingerprint {old_fp}" in why, why
    assert engine.counters.records_in == 0


def test_a_snapshot_the_volume_does_not_keep_is_held_not_called_restored(tmp_path: Path) -> None:
    """restoreFrom naming no snapshot of the volume (a typo: the spec's own fingerprint to
    another) held every partition, saying what the volume keeps; before, each partition
    resumed from its own checkpoint while the operator said "restored" (a probe)."""
    files_before, _ = started(tmp_path)
    old_fp = decode(next(iter(files_before.values()))).fingerprint
    new_engine, _ = run(config(tmp_path, NEW_WINDOW, onFingerprintMismatch="reset"), stop_after=5)
    kept = snapshot_name(str(old_fp), new_engine.fingerprint)
    typo = snapshot_name(new_engine.fingerprint, "fedcba9876543210")  # of the spec's own state
    engine, (ok, why) = readiness_while_running(
        config(tmp_path, NEW_WINDOW, endless=True, restoreFrom=typo)
    )
    assert not ok and f"restoreFrom {typo} is not in the checkpoint volume" in why, why
    assert f"it keeps: {kept}" in why, why
    assert engine.counters.records_in == 0


@pytest.mark.parametrize("version", [4, 99, 0, None])
def test_a_state_version_this_worker_cannot_read_holds_the_partition(
    tmp_path: Path, version: int | None
) -> None:
    """A checkpoint a newer streamherd wrote (its window state in a version this worker does
    not read: what a rollback to an older image meets, decision 0156) holds its partition
    like a foreign fingerprint: not consumed, the file byte for byte as found, the worker
    not ready and saying why, a metric; never an exception that ends the worker (in every
    restart: a crash loop). The other partitions go on."""
    started(tmp_path)
    store = CheckpointStore(tmp_path)
    newer = store.load(GENERATOR_TOPIC, 2)
    assert newer is not None and newer.state is not None
    state = {**newer.state, "v": version}
    store.save([replace(newer, state=state)])  # a full checkpoint: head and base segment
    before = files(tmp_path)["2.ckpt"]
    engine, (ok, why) = readiness_while_running(config(tmp_path, OLD_WINDOW, endless=True))
    assert not ok
    assert "1 partitions held" in why and f"{GENERATOR_TOPIC}[2]" in why, why
    assert f"unsupported window state version {version!r}" in why, why
    assert files(tmp_path)["2.ckpt"] == before  # never overwritten by this worker
    assert engine.partitions[(GENERATOR_TOPIC, 2)].windows is None
    assert all(engine.partitions[(GENERATOR_TOPIC, p)].held is None for p in (0, 1, 3))
    value = engine.metrics.registry.get_sample_value(
        "streamherd_state_restore_refused",
        {"pipeline": "fp", "topic": GENERATOR_TOPIC, "partition": "2"},
    )
    assert value == 1


def test_a_checkpoint_format_this_worker_does_not_know_holds_the_partition(
    tmp_path: Path,
) -> None:
    """The same for the checkpoint file's own format (a head a newer streamherd wrote): the
    partition is held with the reason, the file untouched; a file that is no checkpoint of
    ours at all is still an error of its own (CheckpointError), not taken for a newer one."""
    started(tmp_path)
    path = CheckpointStore(tmp_path).path(GENERATOR_TOPIC, 1)
    body = orjson.dumps({"topic": GENERATOR_TOPIC, "partition": 1, "nextOffset": 5})
    header = {"format": "streamherd.io/checkpoint/v9", "crc32": zlib.crc32(body)}
    path.write_bytes(orjson.dumps({**header, "length": len(body)}) + b"\n" + body + b"\n")
    before = files(tmp_path)["1.ckpt"]
    engine, (ok, why) = readiness_while_running(config(tmp_path, OLD_WINDOW, endless=True))
    assert not ok
    assert "1 partitions held" in why and f"{GENERATOR_TOPIC}[1]" in why, why
    assert "unknown checkpoint format 'streamherd.io/checkpoint/v9'" in why, why
    assert "a newer streamherd wrote it" in why, why
    assert files(tmp_path)["1.ckpt"] == before
    assert all(engine.partitions[(GENERATOR_TOPIC, p)].held is None for p in (0, 2, 3))
    with pytest.raises(CheckpointError) as raised:
        decode(orjson.dumps({**header, "format": "other/v1", "length": len(body)}) + b"\n" + body)
    assert type(raised.value) is CheckpointError


@pytest.mark.parametrize(
    "edit",
    [
        {"partitions": 8},
        {"partitions": 2},
        {"seed": 2},
        {"keys": 80},
        {"timeStepMs": 7},
        {"startTimeMs": 1767225660000},
    ],
    ids=lambda edit: "-".join(f"{k}={v}" for k, v in edit.items()),
)
def test_an_edit_of_the_generators_sequence_holds_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: dict[str, Any]
) -> None:
    """A checkpoint's offsets are positions in the generator's sequence, which its seed,
    keys, partitions, time step and start time decide: under other settings they point at
    other records and keys live in other partitions (a helper's finding: 4 -> 8 partitions
    emitted 40 windows twice as partial results, 4 -> 2 counted records twice; both rolled
    as compatible). Such an edit changes the state fingerprint, so the workers hold the
    state as for any other state change, naming the field."""
    before, _ = started(tmp_path)
    ((field, value),) = edit.items()
    was = GENERATOR.get(field, 1)  # the seed's default
    monkeypatch.setitem(GENERATOR, field, value)
    _, (ok, why) = readiness_while_running(config(tmp_path, OLD_WINDOW, endless=True))
    # Byte for byte: never overwritten, never mixed (8 partitions: the new four, with no
    # state, go on from the start, as a Kafka topic's added partitions would).
    assert {name: data for name, data in files(tmp_path).items() if name in before} == before
    assert not ok
    held = min(4, value) if field == "partitions" else 4  # 2: the files of 2 and 3 stay
    assert f"{held} partitions held" in why, why
    assert f"source.generator.{field}: {was} -> {value}" in why, why


def test_how_much_of_the_generators_sequence_is_not_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``count`` and ``rate`` say how much of the same sequence, and how fast: the state
    goes on, and every record is read once across the edit."""
    _, first_in = started(tmp_path)
    more = GENERATOR["count"] + 3000
    monkeypatch.setitem(GENERATOR, "count", more)
    again, _ = run(config(tmp_path, OLD_WINDOW))
    assert first_in + again.counters.records_in == more
