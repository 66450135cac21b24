"""Damaged and hostile checkpoint directories (helper-97's findings, session 26): a flipped
bit in the header's ``encoding`` had a sum beyond 64 bits read back as a float, silently; a
damaged file stopped the worker at every start, the log naming no file; a folder in a
partition's segment folder failed every checkpoint after it was durable; new folders were
not made durable in their parents."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from streamherd.workers import checkpointing
from streamherd.workers.checkpointing import (
    Checkpoint,
    CheckpointError,
    CheckpointPendingChanged,
    CheckpointStore,
    decode,
    encode,
)
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.generating import GENERATOR_TOPIC
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.resuming import resume_among

BIG = {"windows": [["a", 0, {"n": 3, "s": 2**70 + 1}]]}  # the stdlib writes it (orjson cannot)


def flips(data: bytes, end: int) -> list[bytes]:
    out = []
    for i in range(end):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            out.append(bytes(flipped))
    return out


def test_no_single_bit_flip_of_the_header_changes_a_restored_value() -> None:
    data = encode(Checkpoint("in", 0, 5, state=BIG))
    header_end = data.index(b"\n")
    assert b'"encoding":"json"' in data[:header_end]
    # What every version checks is as it was (an older streamherd reads the file).
    header = json.loads(data[:header_end])
    body = data[header_end + 1 : header_end + 1 + header["length"]]
    assert header["crc32"] == zlib.crc32(body)
    for flipped in flips(data, header_end):
        try:
            got = decode(flipped)
        except CheckpointError:
            continue
        assert got.state == BIG and type(got.state["windows"][0][2]["s"]) is int


def test_a_stdlib_file_from_before_the_seed_still_reads() -> None:
    body = json.dumps({"topic": "in", "partition": 0, "nextOffset": 5, "state": BIG}).encode()
    header = json.dumps(
        {
            "format": checkpointing.FORMAT,
            "encoding": "json",
            "crc32": zlib.crc32(body),
            "length": len(body),
        }
    ).encode()
    got = decode(header + b"\n" + body + b"\n")
    assert got.state == BIG


def save(directory: Path, partition: int = 0) -> CheckpointStore:
    store = CheckpointStore(directory)
    store.save([Checkpoint("in", partition, 5, state=BIG)])
    return store


def test_a_damaged_file_is_named(tmp_path: Path) -> None:
    store = save(tmp_path)
    segment = next(store.segments_dir("in", 0).iterdir())
    data = bytearray(segment.read_bytes())
    data[-5] ^= 1  # a flipped bit in its body
    segment.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(str(segment))):
        CheckpointStore(tmp_path).load("in", 0)
    (tmp_path / "in" / "0.pending.ckpt").write_bytes(b"")  # a writer's, torn
    with pytest.raises(CheckpointError, match=re.escape("0.pending.ckpt")):
        CheckpointStore(tmp_path).pending_checkpoints("in", 0)


@pytest.mark.parametrize("leftover", ["folder", "unremovable"])
def test_a_leftover_in_a_segment_folder_fails_no_checkpoint(
    tmp_path: Path, leftover: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = save(tmp_path)
    folder = store.segments_dir("in", 0)
    odd = folder / ("lost+found" if leftover == "folder" else "old.delta")
    if leftover == "folder":
        odd.mkdir()
    else:
        odd.write_bytes(b"x")
        real = Path.unlink

        def refuse(path: Path, missing_ok: bool = False) -> None:
            if path == odd:
                raise PermissionError(13, "Permission denied", str(path))
            real(path, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", refuse)
    monkeypatch.setattr(checkpointing, "ORPHAN_SECONDS", -1.0)  # every leftover is due
    store.save([Checkpoint("in", 0, 9, state={"windows": [["b", 0, {"n": 1}]]})])
    assert odd.exists()
    got = CheckpointStore(tmp_path).load("in", 0)
    assert got is not None and got.next_offset == 9


def test_new_folders_are_made_durable_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = checkpointing._fsync_dir

    def sync(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(checkpointing, "_fsync_dir", sync)
    store = save(tmp_path)
    assert tmp_path in synced and tmp_path / "in" in synced  # "in" made in tmp_path, 0.seg in it
    synced.clear()
    store.keep("old-to-new", "in", 0)
    kept = tmp_path / checkpointing.SNAPSHOTS
    for folder in (kept, kept / "old-to-new", kept / "old-to-new" / "in"):
        assert (folder.parent in synced and folder in synced) or folder.parent in synced


def config(directory: Path, count: int) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "damaged"},
            "source": {
                "generator": {
                    "count": count,
                    "keys": 40,
                    "partitions": 4,
                    "startTimeMs": 1_767_225_600_000,
                    "timeStepMs": 5,
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
            "runtime": {"metricsPort": 0, "batchSize": 500},
        }
    )


def run(directory: Path, count: int) -> Any:
    engine = Engine(
        config(directory, count), stop=threading.Event(), out=io.StringIO(),
        metrics=EngineMetrics("damaged"),
    )  # fmt: skip
    return engine.run()


@pytest.mark.parametrize("damage", ["flipped", "empty pending", "segment gone"])
def test_a_damaged_partition_is_held_named_and_the_others_go_on(
    tmp_path: Path, damage: str
) -> None:
    run(tmp_path, 2000)
    top = tmp_path / GENERATOR_TOPIC
    if damage == "flipped":
        data = bytearray((top / "2.ckpt").read_bytes())
        data[-5] ^= 1
        (top / "2.ckpt").write_bytes(bytes(data))
    elif damage == "empty pending":
        (top / "2.pending.ckpt").write_bytes(b"")
    else:
        next((top / "2.seg").iterdir()).unlink()
    summary = run(tmp_path, 4000)
    assert summary.held == 1 and summary.held_why is not None
    assert "generator[2]: cannot read its checkpoint" in summary.held_why
    assert summary.records_in > 0  # the other partitions read on


def test_adopt_promotes_the_pending_checkpoint_it_judged_or_none(tmp_path: Path) -> None:
    """A writer the group left behind (W) commits g1, renames its pending file itself and
    stages g2 (which the broker fences) between the new owner's (N) judgment of g1 and its
    adopt: N renamed g2 over the head, and a restart found a transaction that never
    committed (empty state at the committed offset, g1's windows lost)."""

    def pending(offset: int, n: int, generation: str) -> Checkpoint:
        return Checkpoint("in", 0, offset, state={"windows": [["a", 0, {"n": n}]]},
                          generation=generation)  # fmt: skip

    writer = CheckpointStore(tmp_path)
    writer.save([pending(10, 10, "g0")], pending=True)
    writer.promote([("in", 0)])
    writer.save([pending(20, 20, "g1")], pending=True)
    committed = (20, "g1")
    owner = CheckpointStore(tmp_path)
    judged = resume_among(
        owner.load("in", 0), owner.pending_checkpoints("in", 0), committed, exactly_once=True
    )
    assert judged.promote and judged.checkpoint is not None
    writer.promote([("in", 0)])  # its own g1, renamed by itself
    writer.save([pending(35, 35, "g2")], pending=True)  # staged, to be fenced
    with pytest.raises(CheckpointPendingChanged):
        owner.adopt("in", 0, judged.checkpoint.generation)
    assert [c.generation for c in owner.pending_checkpoints("in", 0)] == ["g2"]  # put back
    again = resume_among(
        owner.load("in", 0), owner.pending_checkpoints("in", 0), committed, exactly_once=True
    )
    assert again.checkpoint is not None and again.checkpoint.generation == "g1"
    assert again.checkpoint.state == {"windows": [["a", 0, {"n": 20}]]}
    assert not list(tmp_path.rglob("*.adopting"))


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links"])
def test_a_crash_inside_adopt_loses_no_committed_checkpoint(
    tmp_path: Path, links: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adopt of a judged pending checkpoint, stopped at its rename over the head (a
    crash there): the next restore still finds the committed transaction's checkpoint."""
    writer = CheckpointStore(tmp_path)
    writer.save([Checkpoint("in", 0, 10, state={"windows": []}, generation="g0")], pending=True)
    writer.promote([("in", 0)])
    writer.save(
        [Checkpoint("in", 0, 20, state={"windows": [["a", 0, {"n": 20}]]}, generation="g1")],
        pending=True,
    )
    committed = (20, "g1")
    owner = CheckpointStore(tmp_path)
    judged = resume_among(
        owner.load("in", 0), owner.pending_checkpoints("in", 0), committed, exactly_once=True
    )
    assert judged.promote and judged.checkpoint is not None
    if not links:
        monkeypatch.setattr(os, "link", _no_links)
    real = Path.replace

    def crash(path: Path, target: Any) -> Any:
        if Path(target) == owner.path("in", 0):
            raise SystemExit("killed")
        return real(path, target)

    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(SystemExit):
        owner.adopt("in", 0, judged.checkpoint.generation)
    monkeypatch.setattr(Path, "replace", real)
    fresh = CheckpointStore(tmp_path)
    again = resume_among(
        fresh.load("in", 0), fresh.pending_checkpoints("in", 0), committed, exactly_once=True
    )
    assert again.checkpoint is not None and again.checkpoint.generation == "g1"
    assert again.checkpoint.state == {"windows": [["a", 0, {"n": 20}]]}
    fresh.adopt("in", 0, "g1")
    assert [p.name for p in fresh.pending_paths("in", 0)] == []  # its first name removed
    head = CheckpointStore(tmp_path).load("in", 0)
    assert head is not None and head.generation == "g1"


def _no_links(source: Any, target: Any) -> None:
    raise OSError(95, "Operation not supported")


def test_temp_files_a_crash_left_beside_the_heads_are_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while a head was written (``.<p>.ckpt.<writer>.tmp``, a pending head's too)
    or adopted (``.<name>.<writer>.adopting``) left its temp file in the topic folder, and
    only the segment folders were ever collected: one more file per crash, for ever (a
    helper's finding, session 26). Now the first checkpoint of a topic sweeps them: this
    store's own at once, another writer's once orphaned by its change time (an adopting
    link shares an old pending head's mtime)."""
    store = CheckpointStore(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    old_other = folder / ".0.other.pending.ckpt.other.adopting"
    old_other.write_bytes(b"half a head")
    time.sleep(1.0)
    monkeypatch.setattr(checkpointing, "ORPHAN_SECONDS", 0.5)  # old_other is orphaned
    mine = [
        folder / f".0.ckpt.{store.writer}.tmp",
        folder / f".0.{store.writer}.pending.ckpt.{store.writer}.tmp",
        folder / f".7.other.pending.ckpt.{store.writer}.adopting",
    ]
    fresh_other = folder / ".0.ckpt.other.tmp"  # another writer, maybe writing it now
    linked = folder / ".3.other.pending.ckpt.other2.adopting"  # an adopt under way
    for path in [*mine, fresh_other, linked]:
        path.write_bytes(b"half a head")
    day_ago = linked.stat().st_mtime - 86_400
    os.utime(linked, (day_ago, day_ago))  # the pending head it links to is a day old
    store.save([Checkpoint("in", 0, 9, state={"windows": [["b", 0, {"n": 1}]]})])
    assert [p.exists() for p in mine] == [False, False, False]
    assert not old_other.exists()
    assert fresh_other.exists() and linked.exists()
    got = CheckpointStore(tmp_path).load("in", 0)
    assert got is not None and got.next_offset == 9
