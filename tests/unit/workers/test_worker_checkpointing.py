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


def test_the_log_identity_round_trips_and_an_older_checkpoint_has_none() -> None:
    cp = Checkpoint("clicks", 3, 1234, {"v": 1}, "ns/p", cluster="MkU3OEVBNTcwNTJENDM2Qk",
                    topic_id="kB3c9Yx1Qp2o0mUuWw4Lrg", partitions=6)  # fmt: skip
    back = decode(encode(cp))
    assert (back.cluster, back.topic_id, back.partitions) == (
        "MkU3OEVBNTcwNTJENDM2Qk",
        "kB3c9Yx1Qp2o0mUuWw4Lrg",
        6,
    )
    old = decode(encode(Checkpoint("clicks", 3, 1234, {"v": 1}, "ns/p")))
    assert (old.cluster, old.topic_id, old.partitions) == (None, None, None)


def test_the_spec_generation_round_trips_and_an_older_checkpoint_has_none() -> None:
    cp = Checkpoint("clicks", 3, 1234, {"v": 1}, "ns/p", spec_generation=2**40)
    assert decode(encode(cp)).spec_generation == 2**40
    assert decode(encode(Checkpoint("clicks", 3, 1234, {"v": 1}, "ns/p"))).spec_generation is None


def test_the_state_epoch_and_uid_round_trip_and_an_older_checkpoint_has_none() -> None:
    cp = Checkpoint("clicks", 3, 1234, {"v": 1}, "ns/p", pipeline_uid="u-1", epoch=2**40)
    back = decode(encode(cp))
    assert (back.epoch, back.pipeline_uid) == (2**40, "u-1")
    old = decode(encode(Checkpoint("clicks", 3, 1234, {"v": 1}, "ns/p")))
    assert (old.epoch, old.pipeline_uid) == (None, None)


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


def test_state_beyond_64_bits_round_trips_exactly(tmp_path: Path) -> None:
    # A sum past 64 bits (orjson writes up to 2**64 - 1, refuses more): written by the stdlib,
    # read back as the same int, never as a float. Other values keep their type.
    big = 2**64 + 12345
    state = {"v": 1, "maxEventMs": 10, "windows": [["a", 0, [3, big, 0.1, "s", [big, 2]]]]}
    data = encode(Checkpoint("clicks", 0, 99, state, "ns/p"))
    assert b'"encoding":"json"' in data.split(b"\n", 1)[0]
    back = decode(data)
    assert back.state == state
    windows = back.state["windows"] if back.state else []
    assert type(windows[0][2][1]) is int
    negative = {"v": 1, "windows": [["a", 0, [-(2**63) - 1]]]}
    assert decode(encode(Checkpoint("clicks", 0, 99, negative))).state == negative
    store = CheckpointStore(tmp_path)
    store.save([Checkpoint("clicks", 0, 99, state)])
    loaded = store.load("clicks", 0)
    assert loaded is not None
    assert loaded.state == state


def test_small_state_stays_orjson() -> None:
    state = {"v": 1, "windows": [["a", 0, [2**63 + 1, 2**64 - 1, -(2**63)]]]}
    data = encode(Checkpoint("t", 0, 1, state))
    assert b"encoding" not in data.split(b"\n", 1)[0]
    assert decode(data).state == state
