"""Per-partition checkpoints: window state and the next offset, written as ONE atomic file.

Used by the engine (``streamherd.workers.engine``): on the checkpoint interval, on revoke
and on shutdown it saves, for each partition it owns, the state that reflects exactly the
records before ``next_offset``; on assign it loads the file and seeks to ``next_offset``.
Because state and offset live in one file replaced atomically (temp file, fsync, rename,
fsync of the directory), a ``kill -9`` at any moment leaves either the old or the new pair,
never a mix: no record is lost and none is counted twice in the state.

Layout: ``<directory>/<topic>/<partition>.ckpt``. The file is JSON (orjson) wrapped in a
small envelope with a CRC32, so a torn or corrupted file is detected instead of trusted.
A state orjson cannot write (an integer beyond 64 bits, e.g. a large ``sum``) is written by
the stdlib ``json`` instead, and the envelope says so (``"encoding": "json"``): orjson would
read such an integer back as a float, the stdlib reads it back exactly.

Each file also records the state fingerprint it was written under (``fingerprint`` and its
description ``stateShape``, from ``streamherd.workers.fingerprint``), so the engine can refuse
state written for another window or aggregate list, and, for a Kafka source, the consumer
group and the committed offset it was written with (``group``, ``committed``), so the engine
notices an offset reset made with Kafka's own tools; files without them are legacy files.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

FORMAT: Final = "streamherd.io/checkpoint/v1"
#: Where kept copies of checkpoints go, under the checkpoint directory: '@' is not allowed in
#: a Kafka topic name, so no topic's folder can ever be this one.
SNAPSHOTS: Final = "@snapshots"
STDLIB: Final = "json"  # the envelope's "encoding" when the body was written by the stdlib


class CheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be trusted."""


@dataclass(frozen=True)
class Checkpoint:
    """State of one partition after every record before ``next_offset`` was processed."""

    topic: str
    partition: int
    next_offset: int
    state: Mapping[str, Any] | None = None
    pipeline: str = ""
    written_at: float = field(default=0.0, compare=False)
    # Exactly-once mode: the id committed with the offsets (as offset metadata) in the
    # transaction this checkpoint belongs to; empty in at-least-once mode.
    generation: str = ""
    # The state fingerprint it was written under (workers/fingerprint.py) and its structured
    # description; None in a checkpoint written before fingerprints existed (a legacy one).
    fingerprint: str | None = None
    state_shape: Mapping[str, Any] | None = None
    # The consumer group it belongs to and the group's committed offset the broker had
    # confirmed when it was written (None: nothing yet). With next_offset they bound what the
    # group's committed offset can be if only this pipeline moved it (docs/lifecycle.md).
    group: str | None = None
    committed: int | None = None
    # The snapshot this partition's state was restored from (carried by every later
    # checkpoint, so a restart does not restore it again); None if never restored.
    restored_from: str | None = None


def encode(checkpoint: Checkpoint) -> bytes:
    doc = {
        "topic": checkpoint.topic,
        "partition": checkpoint.partition,
        "nextOffset": checkpoint.next_offset,
        "pipeline": checkpoint.pipeline,
        "writtenAt": checkpoint.written_at or time.time(),
        "state": checkpoint.state,
    }
    if checkpoint.generation:
        doc["generation"] = checkpoint.generation
    if checkpoint.fingerprint is not None:
        doc["fingerprint"] = checkpoint.fingerprint
        doc["stateShape"] = checkpoint.state_shape
    if checkpoint.group is not None:
        doc["group"] = checkpoint.group
        doc["committed"] = checkpoint.committed
    if checkpoint.restored_from is not None:
        doc["restoredFrom"] = checkpoint.restored_from
    envelope: dict[str, Any] = {"format": FORMAT}
    try:
        body = orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits; rare, so slower
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        envelope["encoding"] = STDLIB
    header = orjson.dumps({**envelope, "crc32": zlib.crc32(body), "length": len(body)})
    return header + b"\n" + body + b"\n"


def decode(data: bytes) -> Checkpoint:
    try:
        header_line, body_and_rest = data.split(b"\n", 1)
        header = orjson.loads(header_line)
        body = body_and_rest[: header["length"]]
        if header.get("format") != FORMAT:
            raise CheckpointError(f"unknown checkpoint format {header.get('format')!r}")
        if len(body) != header["length"] or zlib.crc32(body) != header["crc32"]:
            raise CheckpointError("checkpoint checksum mismatch (torn or corrupted file)")
        doc = json.loads(body) if header.get("encoding") == STDLIB else orjson.loads(body)
        return Checkpoint(
            topic=doc["topic"],
            partition=int(doc["partition"]),
            next_offset=int(doc["nextOffset"]),
            state=doc.get("state"),
            pipeline=doc.get("pipeline", ""),
            written_at=float(doc.get("writtenAt", 0.0)),
            generation=str(doc.get("generation", "")),
            fingerprint=doc.get("fingerprint"),
            state_shape=doc.get("stateShape"),
            group=doc.get("group"),
            committed=doc.get("committed"),
            restored_from=doc.get("restoredFrom"),
        )
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"unreadable checkpoint: {error}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Reads and atomically writes checkpoint files under one directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, topic: str, partition: int, *, pending: bool = False) -> Path:
        return self.directory / topic / f"{partition}{'.pending' if pending else ''}.ckpt"

    def load(self, topic: str, partition: int, *, pending: bool = False) -> Checkpoint | None:
        path = self.path(topic, partition, pending=pending)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        checkpoint = decode(data)
        if checkpoint.topic != topic or checkpoint.partition != partition:
            raise CheckpointError(f"{path} holds {checkpoint.topic}[{checkpoint.partition}]")
        return checkpoint

    def save(self, checkpoints: list[Checkpoint], *, pending: bool = False) -> None:
        """Write each checkpoint atomically; durable (directory fsynced) when this returns.

        ``pending``: the exactly-once mode's checkpoint of a transaction not yet committed,
        beside the last committed one; :meth:`promote` makes it the committed one."""
        dirs: set[Path] = set()
        for checkpoint in checkpoints:
            target = self.path(checkpoint.topic, checkpoint.partition, pending=pending)
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with temp.open("wb") as handle:
                handle.write(encode(checkpoint))
                handle.flush()
                os.fsync(handle.fileno())
            # rename is atomic on POSIX: readers see the old file or the new one, never half.
            temp.replace(target)
            dirs.add(target.parent)
        for directory in dirs:
            _fsync_dir(directory)

    def promote(self, partitions: list[tuple[str, int]]) -> None:
        """The pending checkpoints of these partitions become the committed ones (atomic
        renames, then one fsync per directory)."""
        dirs: set[Path] = set()
        for topic, partition in partitions:
            pending = self.path(topic, partition, pending=True)
            pending.replace(self.path(topic, partition))
            dirs.add(pending.parent)
        for directory in dirs:
            _fsync_dir(directory)

    def discard_pending(self, topic: str, partition: int) -> None:
        self.path(topic, partition, pending=True).unlink(missing_ok=True)

    def snapshot_path(self, name: str, topic: str, partition: int) -> Path:
        return self.directory / SNAPSHOTS / name / topic / f"{partition}.ckpt"

    def load_snapshot(self, name: str, topic: str, partition: int) -> Checkpoint | None:
        """A partition's checkpoint as kept in snapshot `name`; None if it holds none."""
        path = self.snapshot_path(name, topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        checkpoint = decode(data)
        if checkpoint.topic != topic or checkpoint.partition != partition:
            raise CheckpointError(f"{path} holds {checkpoint.topic}[{checkpoint.partition}]")
        return checkpoint

    def keep(self, name: str, topic: str, partition: int) -> Path | None:
        """Copy the partition's checkpoint file, byte for byte, into snapshot `name`
        (atomically, durable when this returns); its path, or None when there is no file.
        The engine keeps a checkpoint this way before it discards its state on purpose."""
        try:
            data = self.path(topic, partition).read_bytes()
        except FileNotFoundError:
            return None
        target = self.snapshot_path(name, topic, partition)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
        _fsync_dir(target.parent)
        return target
