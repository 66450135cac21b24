"""Checkpoint files: encode/decode, corruption detection, atomic replace."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamherd.workers.checkpointing import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    decode,
    encode,
)


def test_round_trip() -> None:
    cp = Checkpoint("clicks", 3, 1234, {"v": 1, "windows": [["a", 0, [1, 2.5]]]}, "ns/p")
    back = decode(encode(cp))
    assert back == cp
    assert back.written_at > 0


def test_corruption_is_detected() -> None:
    data = bytearray(encode(Checkpoint("t", 0, 10, None)))
    data[-5] ^= 0x01
    with pytest.raises(CheckpointError, match="checksum"):
        decode(bytes(data))
    with pytest.raises(CheckpointError):
        decode(encode(Checkpoint("t", 0, 10, None))[:20])
    with pytest.raises(CheckpointError):
        decode(b"garbage")


def test_store_save_load_replace(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load("t", 0) is None
    store.save([Checkpoint("t", 0, 5, {"x": 1}), Checkpoint("t", 1, 7, None)])
    assert store.load("t", 0) == Checkpoint("t", 0, 5, {"x": 1})
    store.save([Checkpoint("t", 0, 9, {"x": 2})])
    assert store.load("t", 0) == Checkpoint("t", 0, 9, {"x": 2})
    assert store.load("t", 1) == Checkpoint("t", 1, 7, None)
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["0.ckpt", "1.ckpt"]


def test_file_of_another_partition_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save([Checkpoint("t", 0, 5)])
    (tmp_path / "t" / "0.ckpt").rename(tmp_path / "t" / "1.ckpt")
    with pytest.raises(CheckpointError, match="holds"):
        store.load("t", 1)
