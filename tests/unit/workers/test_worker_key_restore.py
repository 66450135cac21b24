"""Restoring a checkpoint written before UTF-8 bytes keys were read as strings (goes with the
``PartitionWindows.from_json`` change, /tmp/keyings-work/windowing-restore.patch).

Such a checkpoint holds a raw source's key b"u1" as ``{"bytes": "dTE="}``; the worker now
holds and writes it as "u1". Both state backends identify a window by its key as written,
so changes alone (an incremental checkpoint) would write "u1" beside the old entry and a
close would delete "u1" only: the old entry would come back at every restore, a window
closed and emitted long ago emitted again with what it held at the upgrade. A state holding
such a key is therefore no base: the next checkpoint is whole and the old entries go. A
window that meets its string's window of the same start (a ``keyBy`` that gave both forms,
two windows before) stays apart under its old form: no values lost, emitted as before.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from streamherd.workers import changelog
from streamherd.workers.checkpointing import Checkpoint, CheckpointStore
from streamherd.workers.config import ProcessorConfig
from streamherd.workers.processing import Processor
from streamherd.workers.windowing import STATE_VERSION, PartitionWindows, WindowPlan

BASE = 1_767_225_600_000
TOPIC = "in"


def plan() -> WindowPlan:
    window = {
        "keyBy": "key",
        "size": "10s",
        "aggregates": [{"name": "n", "function": "count"}],
    }
    compiled = Processor.compile(ProcessorConfig.model_validate({"steps": [{"window": window}]}))
    assert compiled.window is not None
    return compiled.window


def b64(data: bytes) -> dict[str, str]:
    return {"bytes": base64.b64encode(data).decode()}


def old_state(*windows: list[Any]) -> dict[str, Any]:
    """A window state as the worker before the change wrote it."""
    return {"v": STATE_VERSION, "maxEventMs": BASE + 100, "windows": list(windows)}


def checkpoint(windows: PartitionWindows, offset: int) -> Checkpoint:
    """What the engine writes (``Engine._state_of``): the changes when based, else whole."""
    if windows.based:
        state, changes = windows.head_json(), windows.changes()
    else:
        state, changes = windows.to_json(), None
    return Checkpoint(TOPIC, 0, offset, state, "ns/p", fingerprint="f" * 16, changes=changes)


def test_a_state_holding_an_old_bytes_key_is_no_base() -> None:
    restored = PartitionWindows.from_json(plan(), old_state([b64(b"u1"), BASE, [2]]), base=True)
    assert set(restored.windows) == {("u1", BASE)}
    assert not restored.based
    # Bytes that are not UTF-8 are written as before: still a base.
    again = PartitionWindows.from_json(plan(), old_state([b64(b"\xff"), BASE, [2]]), base=True)
    assert set(again.windows) == {(b"\xff", BASE)}
    assert again.based


def test_a_window_closed_after_the_upgrade_never_comes_back_volume(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(
        [
            Checkpoint(
                TOPIC,
                0,
                1,
                old_state([b64(b"u1"), BASE, [2]]),
                "ns/p",
                fingerprint="f" * 16,
            )
        ]
    )
    for _ in range(2):  # the upgrade's restore, and every one after it
        loaded = store.load(TOPIC, 0)
        assert loaded is not None
        windows = PartitionWindows.from_json(plan(), loaded.state, base=True)
        if ("u1", BASE) not in windows.windows:
            assert windows.windows == {}
            continue
        windows.add("u1", BASE + 200, [None])  # a record of the window after the upgrade
        store.save([checkpoint(windows, 2)])
        windows.checkpointed()
        rows = windows.close(everything=True)
        assert [(k, r["n"]) for k, r in rows] == [("u1|2026-01-01T00:00:00.000Z", 3)]
        store.save([checkpoint(windows, 3)])  # the close: its window deleted
        windows.checkpointed()
    loaded = store.load(TOPIC, 0)
    assert loaded is not None and loaded.state is not None
    assert loaded.state["windows"] == []


def test_a_window_closed_after_the_upgrade_never_comes_back_changelog() -> None:
    records: dict[bytes, bytes] = {}
    first = Checkpoint(
        TOPIC, 0, 1, old_state([b64(b"u1"), BASE, [2]]), "ns/p", fingerprint="f" * 16
    )
    changelog.apply(records, changelog.delta(records, first).items())
    for offset in (2, 3):
        loaded = changelog.decode(TOPIC, 0, records)
        assert loaded is not None
        windows = PartitionWindows.from_json(plan(), loaded.state, base=True)
        if offset == 2:
            windows.add("u1", BASE + 200, [None])
        else:
            assert [(k, r["n"]) for k, r in windows.close(everything=True)] == [
                ("u1|2026-01-01T00:00:00.000Z", 3)
            ]
        changelog.apply(records, changelog.delta(records, checkpoint(windows, offset)).items())
        windows.checkpointed()
    loaded = changelog.decode(TOPIC, 0, records)
    assert loaded is not None and loaded.state is not None
    assert loaded.state["windows"] == []


def test_an_old_bytes_window_meeting_its_string_window_loses_nothing() -> None:
    for order in (1, -1):
        entries = [
            [b64(b"none"), BASE, [2]],
            ["none", BASE, [3]],
            [b64(b"\xff"), BASE, [1]],
        ]
        restored = PartitionWindows.from_json(plan(), old_state(*entries[::order]), base=True)
        assert restored.windows == {
            ("none", BASE): [3],
            (b"none", BASE): [2],
            (b"\xff", BASE): [1],
        }
        restored.add("none", BASE + 200, [None])  # new records fold into the string's window
        rows = restored.close(everything=True)
        assert sorted(r["n"] for _, r in rows) == [1, 2, 4]
