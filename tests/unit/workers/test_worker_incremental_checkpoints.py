"""Incremental checkpoints (decision 0095): windows track what changed since the last
successful checkpoint, and both state backends write only that.

Properties, for any sequence of records, window closes, checkpoints that succeed, fail or
crash at any file write (volume) or transaction (changelog), pending checkpoints promoted or
discarded (exactly-once), log compaction (changelog) and restarts:

- what a restart restores is exactly the state at the last successful checkpoint of each
  partition (for the volume: per partition, a head replaced is a checkpoint made);
- a failed checkpoint keeps the changes, so the next one that succeeds is exact again;
- the volume store leaves no segment file behind that no head lists;
- an old (v1) checkpoint file is read, and incremental checkpoints build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamherd.workers import changelog
from streamherd.workers.checkpointing import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    decode_head,
    encode,
    fold_windows,
    window_id,
)
from streamherd.workers.config import ProcessorConfig
from streamherd.workers.processing import Processor
from streamherd.workers.windowing import PartitionWindows, WindowPlan

BASE = 1_767_225_600_000
TOPIC = "in"


def compile_plan(hopping: bool) -> WindowPlan:
    window: dict[str, Any] = {
        "keyBy": "user",
        "size": "10s",
        "eventTime": {"field": "ts"},
        "aggregates": [
            {"name": "n", "function": "count"},
            {"name": "s", "function": "sum", "expression": "x"},
            {"name": "a", "function": "avg", "expression": "x"},
        ],
    }
    if hopping:
        window.update({"type": "hopping", "slide": "5s"})
    plan = Processor.compile(ProcessorConfig.model_validate({"steps": [{"window": window}]}))
    assert plan.window is not None
    return plan.window


PLANS = {False: compile_plan(False), True: compile_plan(True)}

# One step of a run: records into a partition, a close of what the watermark passed, a
# checkpoint (of every partition), or a crash (a restart from the backend).
record = st.tuples(
    st.just("add"),
    st.integers(0, 1),  # partition
    st.sampled_from(["a", "b", "c", "d", "e", 7, None]),  # key
    st.integers(0, 60_000),  # event time offset
    st.one_of(st.integers(-5, 5), st.floats(-1e3, 1e3), st.integers(2**63, 2**65)),
)
close = st.tuples(st.just("close"), st.integers(0, 1), st.booleans())
checkpoint_step = st.tuples(
    st.just("checkpoint"),
    # How it ends: ok; the k-th write fails (the worker goes on); the worker dies at the k-th
    # write; exactly-once: staged then promoted, staged then aborted, staged then the worker
    # dies after its transaction committed (restart promotes the pending one).
    st.sampled_from(["ok", "fail", "crash", "stage-ok", "stage-abort", "stage-crash"]),
    st.integers(0, 5),
    st.booleans(),  # full (a snapshot wants it) rather than incremental
)
steps = st.lists(st.one_of(record, record, record, close, checkpoint_step), max_size=60)


def windows_of(state: PartitionWindows | Mapping[str, Any] | None) -> dict[bytes, list[Any]]:
    """Window id -> [key, start, accumulator], in state form."""
    if state is None:
        return {}
    data = state.to_json() if isinstance(state, PartitionWindows) else state
    return fold_windows({}, data.get("windows") or ())


def as_bytes(windows: dict[bytes, list[Any]]) -> dict[bytes, bytes]:
    return {k: orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for k, v in windows.items()}


def make_checkpoint(p: int, offset: int, windows: PartitionWindows, full: bool) -> Checkpoint:
    if windows.based and not full:
        state, changes = windows.head_json(), windows.changes()
    else:
        state, changes = windows.to_json(), None
    return Checkpoint(TOPIC, p, offset, state, "ns/p", fingerprint="f" * 16, changes=changes)


class FailingStore(CheckpointStore):
    """A store whose ``fail_at``-th file write raises before its rename (nothing of it
    visible), as a full disk or a kill at that moment would leave it; records which
    checkpoint files it did replace."""

    def __init__(self, directory: Path, fail_at: int | None) -> None:
        super().__init__(directory, min_compact_bytes=0, compact_ratio=0.5, max_deltas=3)
        self.fail_at = fail_at
        self.writes = 0
        self.replaced: list[Path] = []

    def _write(self, target: Path, data: bytes) -> None:
        if self.fail_at is not None and self.writes == self.fail_at:
            raise OSError("injected: no space left on device")
        self.writes += 1
        super()._write(target, data)
        self.replaced.append(target)


class Run:
    """Two partitions' windows, the offset of each, and what each last committed."""

    def __init__(self, plan: WindowPlan) -> None:
        self.plan = plan
        self.windows = {p: PartitionWindows(plan) for p in (0, 1)}
        self.offsets = {0: 0, 1: 0}
        self.committed: dict[int, tuple[int, dict[bytes, bytes]] | None] = {0: None, 1: None}

    def apply(self, step: tuple[Any, ...]) -> None:
        if step[0] == "add":
            _, p, key, dt, x = step
            self.offsets[p] += 1
            values = self.plan.values({"x": x})
            self.windows[p].add(key if isinstance(key, str) else str(key), BASE + dt, values)
        else:
            _, p, everything = step
            self.windows[p].close(everything=everything)

    def restart(self, load: Any) -> None:
        """A new worker: each partition's state from the backend, as the engine does it."""
        for p in (0, 1):
            cp = load(p)
            expected = self.committed[p]
            if expected is None:
                assert cp is None
                self.windows[p] = PartitionWindows(self.plan)
                self.offsets[p] = 0
                continue
            assert cp is not None and cp.changes is None
            assert (cp.next_offset, as_bytes(windows_of(cp.state))) == expected
            self.windows[p] = PartitionWindows.from_json(self.plan, cp.state, base=True)
            self.offsets[p] = cp.next_offset

    def snapshot(self, p: int) -> tuple[int, dict[bytes, bytes]]:
        return self.offsets[p], as_bytes(windows_of(self.windows[p]))


def loader(store: CheckpointStore) -> Any:
    return lambda p: store.load(TOPIC, p)


def listed_segments(store: CheckpointStore, p: int) -> set[str]:
    names: set[str] = set()
    for path in [store.path(TOPIC, p), *store.pending_paths(TOPIC, p)]:
        if path.exists():
            segments = decode_head(path.read_bytes())[1]
            names.update(s.name for s in segments or ())
    return names


def all_segments(store: CheckpointStore) -> set[str]:
    """Segment files of either partition."""
    out: set[str] = set()
    for p in (0, 1):
        seg_dir = store.segments_dir(TOPIC, p)
        if seg_dir.is_dir():
            out |= {e.name for e in seg_dir.iterdir()}
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(run_steps=steps, hopping=st.booleans(), legacy=st.booleans())
def test_the_volume_store_restores_the_last_successful_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
    run_steps: list[tuple[Any, ...]],
    hopping: bool,
    legacy: bool,
) -> None:
    directory = tmp_path_factory.mktemp("ckpt")
    run = Run(PLANS[hopping])
    store = FailingStore(directory, None)
    if legacy:  # a file as every version before 0095 wrote it: one v1 file, windows inline
        run.apply(("add", 0, "a", 1, 1))
        run.apply(("add", 0, "b", 12_000, 2))
        cp = make_checkpoint(0, run.offsets[0], run.windows[0], True)
        store.path(TOPIC, 0).parent.mkdir(parents=True)
        store.path(TOPIC, 0).write_bytes(encode(cp))
        run.committed[0] = run.snapshot(0)
        run.restart(loader(store))
    # Segments of a dead writer (the process before a crash) that no head lists any more:
    # another writer leaves them until they are ORPHAN_SECONDS old (it cannot tell them from
    # those of a live writer whose head is about to list them again).
    dead: set[str] = set()
    store = FailingStore(directory, None)
    for step in run_steps:
        if step[0] != "checkpoint":
            run.apply(step)
            continue
        _, how, k, full = step
        attempted = {p: run.snapshot(p) for p in (0, 1)}
        cps = [make_checkpoint(p, run.offsets[p], run.windows[p], full) for p in (0, 1)]
        pending = how.startswith("stage")
        # One worker, one store, as the engine keeps it; a crash starts a new one.
        store.fail_at, store.writes, store.replaced = k if how in ("fail", "crash") else None, 0, []
        try:
            store.save(cps, pending=pending)
        except OSError:
            # Per partition: the one whose checkpoint file was replaced made its checkpoint.
            for p in (0, 1):
                if store.path(TOPIC, p) in store.replaced:
                    run.committed[p] = attempted[p]
            if how == "crash":
                dead |= all_segments(store)
                store = FailingStore(directory, None)
                run.restart(loader(store))
            continue  # "fail": the worker goes on with its changes kept
        if how == "stage-abort":
            for p in (0, 1):
                store.discard_pending(TOPIC, p)
            run.restart(loader(store))  # the engine rewinds to the commit
            continue
        if how == "stage-crash":
            # The transaction committed, the worker died before promoting: its successor
            # finds the pending checkpoint that matches the committed offsets, promotes it.
            run.committed = {p: attempted[p] for p in (0, 1)}
            dead |= all_segments(store)
            store = FailingStore(directory, None)
            for p in (0, 1):
                (found,) = store.pending_checkpoints(TOPIC, p)
                store.adopt(TOPIC, p, found.generation)
            run.restart(loader(store))
            continue
        if pending:
            store.promote([(TOPIC, 0), (TOPIC, 1)])
        for p in (0, 1):
            run.windows[p].checkpointed()
            run.committed[p] = attempted[p]
            # Nothing left behind: every segment file is one a head lists, or a dead
            # writer's orphan.
            seg_dir = store.segments_dir(TOPIC, p)
            on_disk = {e.name for e in seg_dir.iterdir()} if seg_dir.is_dir() else set()
            assert listed_segments(store, p) <= on_disk
            assert on_disk - listed_segments(store, p) <= dead
            assert len(listed_segments(store, p)) <= 1 + store.max_deltas
    run.restart(loader(FailingStore(directory, None)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_steps=steps, hopping=st.booleans())
def test_the_changelog_restores_the_last_committed_checkpoint(
    run_steps: list[tuple[Any, ...]], hopping: bool
) -> None:
    """The changelog's pure parts: deltas written in transactions (a failed or crashed one
    aborts: read_committed readers never see it), the log compacted at any point, a restore
    folds the log. Both partitions share one changelog partition, as ``p % N`` may make
    them."""
    run = Run(PLANS[hopping])
    log: list[tuple[bytes, bytes | None]] = []

    def records(p: int) -> dict[bytes, bytes]:
        folded: dict[bytes, bytes] = {}
        changelog.apply(folded, log)
        return {k: v for k, v in folded.items() if changelog.owner(k) == (TOPIC, p)}

    def load(p: int) -> Checkpoint | None:
        return changelog.decode(TOPIC, p, records(p))

    for i, step in enumerate(run_steps):
        if step[0] != "checkpoint":
            run.apply(step)
            continue
        _, how, k, full = step
        attempted = {p: run.snapshot(p) for p in (0, 1)}
        cps = [make_checkpoint(p, run.offsets[p], run.windows[p], full) for p in (0, 1)]
        transaction: list[tuple[bytes, bytes | None]] = []
        for cp in cps:
            # What the backend writes: an incremental checkpoint's changes as they are, a
            # full one compared with the committed records.
            delta = changelog.delta(records(cp.partition), cp)
            if cp.changes is not None:
                assert len(delta) == len(cp.changes) + 1  # and the checkpoint record
            transaction.extend(delta.items())
        if how in ("fail", "crash", "stage-abort"):
            if how == "crash" or how == "stage-abort":
                run.restart(load)
            continue  # aborted: nothing of it in the committed log
        log.extend(transaction)
        run.committed = {p: attempted[p] for p in (0, 1)}
        if how == "stage-crash":
            run.restart(load)
            continue
        for p in (0, 1):
            run.windows[p].checkpointed()
        if k == 0:  # the cleaner ran: the latest value per key, tombstones dropped
            latest: dict[bytes, bytes | None] = {}
            for key, value in log:
                latest.pop(key, None)
                latest[key] = value
            log = [(key, value) for key, value in latest.items() if value is not None]
        if i % 7 == 0:
            run.restart(load)
    run.restart(load)


@settings(max_examples=100, deadline=None)
@given(run_steps=st.lists(st.one_of(record, close), max_size=40), hopping=st.booleans())
def test_the_changes_are_exactly_what_differs_from_the_last_checkpoint(
    run_steps: list[tuple[Any, ...]], hopping: bool
) -> None:
    run = Run(PLANS[hopping])
    before = {p: windows_of(run.windows[p]) for p in (0, 1)}
    for step in run_steps:
        run.apply(step)
    for p in (0, 1):
        windows = run.windows[p]
        now = windows_of(windows)
        differs = {w for w in set(before[p]) | set(now) if before[p].get(w) != now.get(w)}
        changed = {window_id(k, s) for k, s, _ in windows.changes()}
        # Every difference is tracked, and only windows that were touched are.
        assert differs <= changed
        assert fold_windows(dict(before[p]), windows.changes()) == now
        windows.checkpointed()
        assert windows.changes() == [] and windows.based


def test_an_incremental_checkpoint_without_a_committed_one_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    windows = PartitionWindows(PLANS[False])
    windows.based = True  # a bug in the caller: nothing was ever committed here
    with pytest.raises(CheckpointError, match="without a committed one"):
        store.save([make_checkpoint(0, 1, windows, False)])
    assert store.load(TOPIC, 0) is None


def test_an_incremental_checkpoint_writes_only_its_changes(tmp_path: Path) -> None:
    plan = PLANS[False]
    windows = PartitionWindows(plan)
    for i in range(5_000):
        windows.add(f"user-{i}", BASE + 1, plan.values({"x": i}))
    store = CheckpointStore(tmp_path)
    store.save([make_checkpoint(0, 5_000, windows, False)])  # not based yet: full
    windows.checkpointed()
    base = store.path(TOPIC, 0)
    base_bytes = sum(f.stat().st_size for f in store.segments_dir(TOPIC, 0).iterdir())
    for i in range(0, 5_000, 100):  # 1% of the keys
        windows.add(f"user-{i}", BASE + 2, plan.values({"x": 1}))
    store.save([make_checkpoint(0, 5_050, windows, False)])
    windows.checkpointed()
    segments = decode_head(base.read_bytes())[1]
    assert segments is not None and len(segments) == 2 and not segments[1].base
    assert segments[1].size < base_bytes / 50
    loaded = store.load(TOPIC, 0)
    assert loaded is not None
    assert as_bytes(windows_of(loaded.state)) == as_bytes(windows_of(windows))
    # Nothing changed: the same segments, no new file.
    store.save([make_checkpoint(0, 5_051, windows, False)])
    assert decode_head(base.read_bytes())[1] == segments


def test_a_snapshot_keeps_the_head_and_its_segments(tmp_path: Path) -> None:
    plan = PLANS[False]
    windows = PartitionWindows(plan)
    windows.add("a", BASE, plan.values({"x": 1}))
    store = CheckpointStore(tmp_path)
    store.save([make_checkpoint(0, 1, windows, True)])
    windows.checkpointed()
    windows.add("b", BASE, plan.values({"x": 2}))
    store.save([make_checkpoint(0, 2, windows, False)])
    kept = store.keep("old-to-new", TOPIC, 0)
    assert kept is not None and kept.read_bytes() == store.path(TOPIC, 0).read_bytes()
    # The kept copy stands alone: the live files move on and drop their old segments.
    windows.checkpointed()
    store.save([make_checkpoint(0, 3, PartitionWindows(plan), True)])
    snapshot = store.load_snapshot("old-to-new", TOPIC, 0)
    assert snapshot is not None and snapshot.next_offset == 2
    assert as_bytes(windows_of(snapshot.state)) == as_bytes(windows_of(windows))
