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

Incremental checkpoints (decision 0095). A state with windows is written as format v2: the
``.ckpt`` file (the *head*) holds everything but the windows plus the list of its
*segments*, immutable files under ``<directory>/<topic>/<partition>.seg/``: one *base* (every
window) and then *deltas* (the windows changed since the checkpoint before: the new
accumulator, or null for a window that closed). A checkpoint made of the changes alone
(``Checkpoint.changes``) writes one delta segment (fsync, rename, fsync of its directory) and
then replaces the head atomically as before: the head is the commit point, so a crash before
it leaves the old checkpoint whole and the new segment an orphan, deleted later. When the
deltas outgrow ``COMPACT_RATIO`` of the base (or ``MAX_DELTAS``), the store folds base and
deltas into a new base instead, so a restore reads at most about 1.5 times the live state.
Stateless checkpoints, and every file format v1 wrote (state inline), are still read; v1 is
still written for a state without windows. A worker of an older version refuses a v2 file
(unknown format): a downgrade needs the state reset or the v1 files kept.

Each file also records the state fingerprint it was written under (``fingerprint`` and its
description ``stateShape``, from ``streamherd.workers.fingerprint``), so the engine can refuse
state written for another window or aggregate list, and, for a Kafka source, the consumer
group and the committed offset it was written with (``group``, ``committed``), so the engine
notices an offset reset made with Kafka's own tools; files without them are legacy files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import orjson

from streamherd.workers.logs import log_event

FORMAT: Final = "streamherd.io/checkpoint/v1"
#: A head whose windows live in segment files (see the module docstring).
FORMAT_V2: Final = "streamherd.io/checkpoint/v2"
SEGMENT_FORMAT: Final = "streamherd.io/checkpoint-segment/v1"
#: Fold the deltas into a new base once their bytes exceed this fraction of the base's (and
#: MIN_COMPACT_BYTES): rewriting the base costs O(state) once per ~ratio*base bytes of
#: changes, so amortized the cost of a checkpoint stays proportional to its changes.
COMPACT_RATIO: Final = 0.5
MIN_COMPACT_BYTES: Final = 1 << 20
#: At most this many deltas on a base (bounds the files a restore opens).
MAX_DELTAS: Final = 64
#: Where kept copies of checkpoints go, under the checkpoint directory: '@' is not allowed in
#: a Kafka topic name, so no topic's folder can ever be this one.
SNAPSHOTS: Final = "@snapshots"
STDLIB: Final = "json"  # the envelope's "encoding" when the body was written by the stdlib
#: A segment no head lists that this store did not write is deleted once it is this old
#: (seconds): superseded by a writer before a restart, or the orphan of a crash. Younger, it
#: may be another worker's, whose head is about to list it again (decision 0164).
ORPHAN_SECONDS: Final = 6 * 3600.0

log = logging.getLogger("streamherd.worker")


class CheckpointError(RuntimeError):
    """A checkpoint file that exists but cannot be trusted."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint in a streamherd format this worker does not know: a newer streamherd
    wrote it. The engine holds its partition rather than fail (decision 0156)."""


class CheckpointRefused(CheckpointError):
    """The broker refused a checkpoint's offsets, committed in one transaction with its
    state (the changelog backend, at-least-once): the consumer group has moved on (this
    worker was cut off past the session timeout, and its partitions are another's:
    KIP-447). Nothing of it is visible; the engine skips this checkpoint (at-least-once
    replays from the last one)."""


class CheckpointPostponed(CheckpointError):
    """The state backend could not take a checkpoint for now: its broker or a coordinator
    stayed unavailable through the retries (a rolling restart, a coordinator moving).
    Nothing of it is visible; the engine skips it, keeping its changes, and the next
    interval tries again. A failure that waiting does not cure raises something else."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint file that cannot be read as written (torn, a flipped bit, a segment it
    lists missing or of another size), named: the engine holds its partition (a restart
    would find it the same)."""


class CheckpointPendingChanged(CheckpointError):
    """A pending checkpoint judged for adoption was replaced by its writer before it could be
    promoted: judge the partition's checkpoints again (:meth:`CheckpointStore.adopt`)."""


class CheckpointBaseMoved(CheckpointError):
    """The partition's committed head is not the one this store last read or wrote: another
    writer (a worker the group had given the partition to meanwhile, or one that was frozen
    and woke) replaced it. Changes cannot be stacked on a stranger's state: the engine
    writes the whole state instead."""

    def __init__(self, topic: str, partition: int) -> None:
        super().__init__(f"the checkpoint of {topic}[{partition}] was replaced by another writer")
        self.topic, self.partition = topic, partition


class CheckpointBehind(CheckpointBaseMoved):
    """The other writer's head is further on in the partition than this checkpoint (its
    ``next_offset`` is greater). Written whole, this state would set the partition's
    checkpoint back behind offsets the group may have committed from that head, which a
    restore reads as an offset reset by someone else (empty state there). The at-least-once
    engine skips such a checkpoint: the writer is the one the group left behind (its next
    poll says so), or an owner still catching up with what a left-behind writer had read
    (it checkpoints again once it has passed that offset)."""


def _moved(topic: str, partition: int, theirs: int | None, ours: int) -> CheckpointBaseMoved:
    if theirs is not None and theirs > ours:
        return CheckpointBehind(topic, partition)
    return CheckpointBaseMoved(topic, partition)


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
    # The Kafka cluster (its cluster id) the offsets belong to; None when it was not known
    # (a generator source, a checkpoint of an earlier version). A checkpoint of another
    # cluster is never restored: its offsets and state mean nothing there (the engine).
    cluster: str | None = None
    # The log within the cluster: its topic's id (Kafka's topic id, KIP-516: a topic deleted
    # and created again under the same name has another) and its partition count when the
    # checkpoint was written (keys spread by the partition count: a keyed window's key
    # moves when it changes). None when not known (an earlier version, no answer).
    topic_id: str | None = None
    partitions: int | None = None
    # The pipeline generation whose config the writer ran (WorkerConfig.state.specGeneration),
    # when that config resets or replays; None otherwise, and in earlier versions'.
    spec_generation: int | None = None
    # The uid of the StreamPipeline whose config the writer ran (state.pipelineUid), with
    # spec_generation: generations are counted per pipeline, and one created again under
    # the name (retainOnDelete keeps the state) counts from 1 again.
    pipeline_uid: str | None = None
    # The state epoch of the writer's config (state.epoch, decision 0175): the generation
    # whose roll last started the state anew. None when its config names none.
    epoch: int | None = None
    # Where the source's own sequence began (epoch ms), for a source that cannot tell it
    # again after a restart: the generator without startTimeMs (the wall clock at its first
    # start). A restart goes on with the same sequence (the same event times); None for a
    # log (Kafka), and in earlier versions' checkpoints.
    origin_ms: int | None = None
    # Where the run that wrote it commits its offsets (workers/resuming.py): ``group`` or a
    # sink's offsets table, ``postgres:<table>``; None in a checkpoint of an earlier version.
    authority: str | None = None
    # An incremental checkpoint: ``state`` holds everything but its "windows", and this the
    # windows changed since the backend's committed checkpoint of the partition, each
    # ``[key, start, accumulator]`` or ``[key, start, None]`` (closed: deleted). None: a full
    # checkpoint (``state`` whole). Backends always load full checkpoints.
    changes: Sequence[Sequence[Any]] | None = field(default=None, compare=False)


def _envelope(fmt: str, doc: Mapping[str, Any]) -> bytes:
    """``doc`` as JSON after a header line with its format, length and CRC32."""
    envelope: dict[str, Any] = {"format": fmt}
    try:
        body = orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, a lone surrogate
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        body = text.encode("utf-8", "surrogatepass")  # a lone surrogate: its 3 bytes
        envelope["encoding"] = STDLIB
    if "encoding" in envelope:
        envelope[ENCODING_CRC] = zlib.crc32(body, _STDLIB_SEED)
    header = orjson.dumps({**envelope, "crc32": zlib.crc32(body), "length": len(body)})
    return header + b"\n" + body + b"\n"


#: A body the stdlib wrote has a second CRC in its header, from this seed: the header's
#: "encoding" picks the reader (the stdlib's keeps integers beyond 64 bits exact, orjson's
#: makes them floats), and the CRC covers the body alone, so one flipped bit in that key or
#: value had a sum of 2**70 read back as a float, with no error (a helper's finding). A
#: header that has it must name the encoding and match it; an older streamherd ignores it
#: (the format is the same), and a flip in its own name leaves the encoding as written.
ENCODING_CRC: Final = "encodingCrc32"
_STDLIB_SEED: Final = zlib.crc32(b"streamherd.io/checkpoint-encoding:json")


def _open_envelope(data: bytes, formats: Iterable[str]) -> tuple[str, Any]:
    """(format, document) of an envelope; CheckpointError when torn, corrupted or unknown."""
    try:
        header_line, body_and_rest = data.split(b"\n", 1)
        header = orjson.loads(header_line)
        body = body_and_rest[: header["length"]]
        fmt = header.get("format")
        if fmt not in formats:
            if type(fmt) is str and fmt.startswith("streamherd.io/checkpoint"):
                raise CheckpointFormatError(
                    f"unknown checkpoint format {fmt!r}: this worker reads "
                    f"{', '.join(formats)}, so a newer streamherd wrote it"
                )
            raise CheckpointError(f"unknown checkpoint format {fmt!r}")
        stdlib = header.get("encoding") == STDLIB
        if len(body) != header["length"] or zlib.crc32(body) != header["crc32"]:
            raise CheckpointError("checkpoint checksum mismatch (torn or corrupted file)")
        if ENCODING_CRC in header and (
            not stdlib or header[ENCODING_CRC] != zlib.crc32(body, _STDLIB_SEED)
        ):
            raise CheckpointError("checkpoint header damaged (its encoding does not match)")
        doc = json.loads(body.decode("utf-8", "surrogatepass")) if stdlib else orjson.loads(body)
        return str(fmt), doc
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"unreadable checkpoint: {error}") from None


def _document(checkpoint: Checkpoint) -> dict[str, Any]:
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
    if checkpoint.cluster is not None:
        doc["cluster"] = checkpoint.cluster
    if checkpoint.topic_id is not None:
        doc["topicId"] = checkpoint.topic_id
    if checkpoint.partitions is not None:
        doc["partitions"] = checkpoint.partitions
    if checkpoint.authority is not None:
        doc["authority"] = checkpoint.authority
    if checkpoint.spec_generation is not None:
        doc["specGeneration"] = checkpoint.spec_generation
    if checkpoint.pipeline_uid is not None:
        doc["pipelineUid"] = checkpoint.pipeline_uid
    if checkpoint.epoch is not None:
        doc["epoch"] = checkpoint.epoch
    if checkpoint.origin_ms is not None:
        doc["originMs"] = checkpoint.origin_ms
    return doc


def encode(checkpoint: Checkpoint) -> bytes:
    """A full checkpoint as one v1 file (state inline)."""
    if checkpoint.changes is not None:
        raise ValueError("an incremental checkpoint has no single-file form")
    return _envelope(FORMAT, _document(checkpoint))


@dataclass(frozen=True)
class Segment:
    """One segment file a v2 head lists: its name under ``<partition>.seg/`` and size."""

    name: str
    size: int
    base: bool


def _checkpoint_of(doc: Mapping[str, Any]) -> Checkpoint:
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
        cluster=doc.get("cluster"),
        topic_id=doc.get("topicId"),
        partitions=doc.get("partitions"),
        authority=doc.get("authority"),
        spec_generation=optional_int(doc.get("specGeneration")),
        pipeline_uid=optional_str(doc.get("pipelineUid")),
        epoch=optional_int(doc.get("epoch")),
        origin_ms=optional_int(doc.get("originMs")),
    )


def optional_str(value: Any) -> str | None:
    """An optional string field of a checkpoint document."""
    return None if value is None else str(value)


def optional_int(value: Any) -> int | None:
    """An optional integer field of a checkpoint document."""
    return None if value is None else int(value)


def decode_head(data: bytes) -> tuple[Checkpoint, list[Segment] | None]:
    """A checkpoint file: the checkpoint (of a v2 head: its state without the windows) and
    the head's segments (None for a v1 file, whose state is whole)."""
    fmt, doc = _open_envelope(data, (FORMAT, FORMAT_V2))
    try:
        checkpoint = _checkpoint_of(doc)
        if fmt == FORMAT:
            return checkpoint, None
        segments = [
            Segment(str(s["name"]), int(s["size"]), bool(s["base"])) for s in doc["segments"]
        ]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"unreadable checkpoint: {error}") from None
    if not segments or not segments[0].base or any(s.base for s in segments[1:]):
        raise CheckpointError("checkpoint head lists no base segment first")
    return checkpoint, segments


def decode(data: bytes) -> Checkpoint:
    """A checkpoint file's checkpoint; a v2 head's state is without its windows (they are in
    its segments: :meth:`CheckpointStore.load` reads them)."""
    return decode_head(data)[0]


def encode_head(checkpoint: Checkpoint, segments: Sequence[Segment]) -> bytes:
    """A v2 head: the checkpoint without its windows, and the segments that hold them."""
    doc = _document(checkpoint)
    doc["state"] = {k: v for k, v in (checkpoint.state or {}).items() if k != "windows"}
    doc["segments"] = [{"name": s.name, "size": s.size, "base": s.base} for s in segments]
    return _envelope(FORMAT_V2, doc)


def encode_segment(topic: str, partition: int, base: bool, windows: Iterable[Any]) -> bytes:
    """A segment: ``[key, start, accumulator]`` per window (a delta's may be null: deleted)."""
    doc = {"topic": topic, "partition": partition, "base": base, "windows": list(windows)}
    return _envelope(SEGMENT_FORMAT, doc)


def decode_segment(data: bytes, topic: str, partition: int) -> tuple[bool, list[Any]]:
    """(is a base, its windows) of a segment of (topic, partition)."""
    _, doc = _open_envelope(data, (SEGMENT_FORMAT,))
    try:
        if doc["topic"] != topic or doc["partition"] != partition:
            raise CheckpointError(
                f"segment of {doc['topic']}[{doc['partition']}] found for {topic}[{partition}]"
            )
        return bool(doc["base"]), list(doc["windows"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"unreadable checkpoint segment: {error}") from None


def window_id(key: Any, start: Any) -> bytes:
    """The identity of a window in state form (its key as JSON, sorted, and its start)."""
    try:
        return orjson.dumps([key, start], option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits outside values.encode_value's forms
        return b" " + json.dumps([key, start], sort_keys=True, separators=(",", ":")).encode()


def fold_windows(
    windows: dict[bytes, list[Any]], changes: Iterable[Sequence[Any]]
) -> dict[bytes, list[Any]]:
    """Apply window changes (``[key, start, accumulator or None]``) to ``windows`` (window
    id -> ``[key, start, accumulator]``) in order: the latest value wins, None deletes."""
    for change in changes:
        key, start, acc = change[0], change[1], change[2]
        wid = window_id(key, start)
        if acc is None:
            windows.pop(wid, None)
        else:
            windows[wid] = [key, start, acc]
    return windows


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each made durable in its parent (fsynced): a
    file's fsync and its folder's make the file durable only in a folder that is itself
    durable, so a partition's first checkpoint (or a snapshot kept before a reset) could be
    lost with its new folder at a power cut while its offset was committed (a helper's
    finding). Nothing is synced when they exist."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            folder.mkdir()
        _fsync_dir(folder.parent)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


#: What a store knows of a partition it read and found without a head (no digest is this
#: short): a head there later is another writer's.
NO_HEAD: Final = b"none"


def _mtime(entry: Path) -> float | None:
    """When the file was last written; None when it is gone (another writer removed it)."""
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return None


def _changed_before(entry: Path, moment: float) -> bool:
    try:
        found = entry.stat()
    except OSError:
        return False
    return max(found.st_mtime, found.st_ctime) < moment


def _older_than(entry: Path, moment: float) -> bool:
    mtime = _mtime(entry)
    return mtime is not None and mtime < moment


class CheckpointStore:
    """Reads and atomically writes checkpoint files under one directory.

    ``compact_ratio``, ``min_compact_bytes``, ``max_deltas``: when deltas are folded into a
    new base (the module's constants; tests make them small)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        compact_ratio: float = COMPACT_RATIO,
        min_compact_bytes: int = MIN_COMPACT_BYTES,
        max_deltas: int = MAX_DELTAS,
    ) -> None:
        self.directory = Path(directory)
        self.compact_ratio = compact_ratio
        self.min_compact_bytes = min_compact_bytes
        self.max_deltas = max_deltas
        # Per partition, the digest of the committed head this store last read or wrote
        # (what its engine's state is based on; NO_HEAD: it read none), and the segments
        # it wrote, which it may
        # delete once no head lists them (a shared volume has other writers; see _collect).
        self._heads: dict[tuple[str, int], bytes] = {}
        self._staged: dict[tuple[str, int], bytes] = {}
        self._mine: dict[tuple[str, int], set[str]] = {}
        # Topics whose folder this store has swept of temp files (_collect_temp: once).
        self._swept: set[str] = set()
        # This store's name among the writers of a shared volume: in its pending heads' and
        # temp files' names, so no other writer ever renames, replaces or deletes them (a
        # process id is no such name: every pod's worker may be pid 1).
        self.writer = secrets.token_hex(6)
        # The pending heads `pending_checkpoints` last found, per partition and generation:
        # the file and the digest of its bytes (what `adopt` renames).
        self._found: dict[tuple[str, int], dict[str, tuple[Path, bytes]]] = {}

    def path(self, topic: str, partition: int, *, pending: bool = False) -> Path:
        """The partition's committed head, or (``pending``) this store's own pending one."""
        middle = f".{self.writer}.pending" if pending else ""
        return self.directory / topic / f"{partition}{middle}.ckpt"

    def pending_paths(self, topic: str, partition: int) -> list[Path]:
        """Every writer's pending head of the partition (``<partition>.<writer>.pending.ckpt``;
        ``<partition>.pending.ckpt``: one an older streamherd wrote), oldest first."""
        directory = self.directory / topic
        prefix = f"{partition}."
        try:
            entries = list(directory.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".pending.ckpt")):
                continue
            # "<p>.pending.ckpt" (the legacy name) overlaps prefix and suffix: writer "".
            writer = name[len(prefix) : -len(".pending.ckpt")]
            if writer == "" or writer.isalnum():
                found.append(entry)
        return sorted(found, key=lambda e: _mtime(e) or 0.0)

    def partitions(self) -> list[tuple[str, int]]:
        """The partitions with a committed head in this store (its snapshots aside), in
        order: what a run on the directory before left (``streamherd run`` judges an edit
        of its manifest by them: operator/local.py)."""
        found = []
        try:
            topics = [t for t in self.directory.iterdir() if t.name != SNAPSHOTS and t.is_dir()]
        except OSError:  # none yet, or not one to read
            return []
        for topic in topics:
            try:
                entries = list(topic.iterdir())
            except OSError:  # not ours (lost+found of a volume's root, mode 0700)
                continue
            for entry in entries:
                stem, dot, rest = entry.name.partition(".")
                if dot and rest == "ckpt" and stem.isdigit() and stem.isascii():
                    found.append((topic.name, int(stem)))
        return sorted(found)

    def segments_dir(self, topic: str, partition: int) -> Path:
        return self.directory / topic / f"{partition}.seg"

    # ------------------------------------------------------------------ reading

    def _head(self, path: Path, topic: str, partition: int) -> list[Segment] | None:
        """The segments the head at ``path`` lists (None: none, or no such file)."""
        found = self._read_path(path, topic, partition)
        return None if found is None else found[1]

    def _read_head(
        self, topic: str, partition: int
    ) -> tuple[Checkpoint, list[Segment] | None, bytes] | None:
        """The committed head, its segments and the digest of its bytes (which head it is)."""
        return self._read_path(self.path(topic, partition), topic, partition)

    def _read_path(
        self, path: Path, topic: str, partition: int
    ) -> tuple[Checkpoint, list[Segment] | None, bytes] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            checkpoint, segments = decode_head(data)
        except CheckpointFormatError as error:  # named: a log that says which file
            raise CheckpointFormatError(f"{path}: {error}") from None
        except CheckpointError as error:
            raise CheckpointDamaged(f"{path}: {error}") from None
        if checkpoint.topic != topic or checkpoint.partition != partition:
            raise CheckpointError(f"{path} holds {checkpoint.topic}[{checkpoint.partition}]")
        return checkpoint, segments, _digest(data)

    def _windows(
        self, topic: str, partition: int, segments: Sequence[Segment]
    ) -> dict[bytes, list[Any]]:
        """The windows a head's segments hold (base, then each delta in order)."""
        windows: dict[bytes, list[Any]] = {}
        directory = self.segments_dir(topic, partition)
        for segment in segments:
            try:
                data = (directory / segment.name).read_bytes()
            except FileNotFoundError:
                raise CheckpointDamaged(
                    f"checkpoint of {topic}[{partition}] lists a missing segment {segment.name}"
                ) from None
            where = directory / segment.name
            if len(data) != segment.size:
                raise CheckpointDamaged(f"{where}: {len(data)} bytes, its head says {segment.size}")
            try:
                base, changes = decode_segment(data, topic, partition)
            except CheckpointFormatError as error:
                raise CheckpointFormatError(f"{where}: {error}") from None
            except CheckpointError as error:
                raise CheckpointDamaged(f"{where}: {error}") from None
            if base != segment.base:
                raise CheckpointDamaged(f"{where}: a {'base' if base else 'delta'}, listed as not")
            fold_windows(windows, changes)
        return windows

    def _whole(
        self, topic: str, partition: int, checkpoint: Checkpoint, segments: list[Segment] | None
    ) -> Checkpoint:
        """A head's checkpoint, whole (a v2 head's windows read from its segments)."""
        if segments is None:
            return checkpoint
        windows = self._windows(topic, partition, segments)
        return replace(
            checkpoint, state={**(checkpoint.state or {}), "windows": [*windows.values()]}
        )

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's committed checkpoint, whole; its head is this store's base from
        now on (what its next incremental checkpoint builds on)."""
        found = self._read_head(topic, partition)
        if found is None:
            self._heads[(topic, partition)] = NO_HEAD
            return None
        checkpoint, segments, digest = found
        self._heads[(topic, partition)] = digest
        return self._whole(topic, partition, checkpoint, segments)

    def pending_checkpoints(self, topic: str, partition: int) -> list[Checkpoint]:
        """Every writer's pending checkpoint of the partition, whole, oldest first: the
        exactly-once mode's staged transactions that no rename has decided yet (a worker
        that died between its commit and its rename, or one the group left behind, whose
        transaction the broker fences). Which one committed is the resume rule's question
        (workers/resuming.py); :meth:`adopt` promotes it, :meth:`discard_pending` the rest."""
        found: dict[str, tuple[Path, bytes]] = {}
        out = []
        for path in self.pending_paths(topic, partition):
            read = self._read_path(path, topic, partition)
            if read is None:
                continue  # renamed or discarded by its writer meanwhile
            checkpoint, segments, digest = read
            found[checkpoint.generation] = (path, digest)
            out.append(self._whole(topic, partition, checkpoint, segments))
        self._found[(topic, partition)] = found
        return out

    # ------------------------------------------------------------------ writing

    def _write(self, target: Path, data: bytes) -> None:
        """Write ``data`` to ``target`` through a temp file, fsynced, renamed (atomic)."""
        temp = target.with_name(f".{target.name}.{self.writer}.tmp")
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # rename is atomic on POSIX: readers see the old file or the new one, never half.
        temp.replace(target)

    def _segment(self, topic: str, partition: int, base: bool, windows: Iterable[Any]) -> Segment:
        """Write one segment file, durable (its directory fsynced) when this returns."""
        directory = self.segments_dir(topic, partition)
        _make_dirs(directory)
        # A new name every time: never the name of a segment some head may list.
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.{'base' if base else 'delta'}"
        data = encode_segment(topic, partition, base, windows)
        # Ours from before it exists (a head of ours may never list it: an aborted or
        # failed checkpoint leaves it to our own _collect).
        self._mine.setdefault((topic, partition), set()).add(name)
        self._write(directory / name, data)
        _fsync_dir(directory)
        return Segment(name, len(data), base)

    def _encode(self, checkpoint: Checkpoint) -> tuple[bytes, bytes | None]:
        """The head (or v1 file) of one checkpoint, its segments written first, and the
        digest of the committed head it builds on (None: whole, it builds on nothing)."""
        t, p = checkpoint.topic, checkpoint.partition
        state = checkpoint.state
        if checkpoint.changes is None:
            if state is None or state.get("windows") is None:
                return encode(checkpoint), None  # no windows: one v1 file, as ever
            base = self._segment(t, p, True, state["windows"])
            return encode_head(checkpoint, [base]), None
        # Incremental: on top of the committed checkpoint, which must be the engine's base:
        # the head this store last read or wrote (a stranger's would mix two states).
        found = self._read_head(t, p)
        if found is None:
            raise CheckpointError(
                f"incremental checkpoint of {t}[{p}] without a committed one to build on"
            )
        committed, segments, digest = found
        known = self._heads.get((t, p))
        if known is not None and known != digest:
            raise _moved(t, p, committed.next_offset, checkpoint.next_offset)
        deltas = segments[1:] if segments is not None else []
        delta_bytes = sum(s.size for s in deltas)
        base_bytes = segments[0].size if segments is not None else 0
        changes = list(checkpoint.changes)
        if segments is not None and not changes:
            return encode_head(checkpoint, segments), digest  # nothing changed: no segment
        if (
            segments is not None
            and len(deltas) < self.max_deltas
            and delta_bytes <= max(self.compact_ratio * base_bytes, self.min_compact_bytes)
        ):
            delta = self._segment(t, p, False, changes)
            return encode_head(checkpoint, [*segments, delta]), digest
        # Compact: base and deltas folded into a new base (a v1 file's inline windows too).
        if segments is None:
            windows: dict[bytes, list[Any]] = {}
            fold_windows(windows, (committed.state or {}).get("windows") or ())
        else:
            windows = self._windows(t, p, segments)
        fold_windows(windows, changes)
        return encode_head(checkpoint, [self._segment(t, p, True, windows.values())]), digest

    def save(self, checkpoints: list[Checkpoint], *, pending: bool = False) -> None:
        """Write each checkpoint atomically; durable (directory fsynced) when this returns.

        ``pending``: the exactly-once mode's checkpoint of a transaction not yet committed,
        beside the last committed one, under this store's own name (another writer's are
        never touched); :meth:`promote` makes it the committed one. An incremental
        checkpoint (``changes``) builds on the committed one in both cases."""
        dirs: set[Path] = set()
        for checkpoint in checkpoints:
            target = self.path(checkpoint.topic, checkpoint.partition, pending=pending)
            _make_dirs(target.parent)
            data, base = self._encode(checkpoint)
            self._install(checkpoint, data, base, pending=pending)
            dirs.add(target.parent)
        for directory in dirs:
            _fsync_dir(directory)
        if not pending:
            for checkpoint in checkpoints:
                self._collect(checkpoint.topic, checkpoint.partition)

    def _install(
        self, checkpoint: Checkpoint, data: bytes, base: bytes | None, *, pending: bool
    ) -> None:
        """Make ``data`` the partition's head (or this store's pending head). One built on a
        committed head (``base``) is installed only if that head is still the committed
        one: its segments may be gone with it (the other writer deletes what it
        supersedes), and its state is the other writer's. The look and the rename are a
        moment apart; the segments' writes and fsyncs before them, where a frozen writer
        most likely stopped, are not (CheckpointBaseMoved: the engine writes its state whole
        instead). A whole one replaces a head another writer wrote since this store's last
        (or since it read the partition and found no head: NO_HEAD) only if that head is
        not further on in the partition (CheckpointBehind otherwise,
        for either: a head set back behind offsets the group committed from it reads as an
        offset reset). A pending head needs no look: it replaces nothing but this store's
        own, and the broker fences its transaction when the group has moved on."""
        topic, partition = key = (checkpoint.topic, checkpoint.partition)
        known = self._heads.get(key)
        if not pending and (base is not None or known is not None):
            try:
                now = self._read_head(topic, partition)
            except CheckpointError:  # a head this version cannot read: not further on
                now = None
            current = now[2] if now is not None else NO_HEAD
            if current != (base if base is not None else known):
                theirs = now[0].next_offset if now is not None else None
                if base is not None:
                    raise _moved(topic, partition, theirs, checkpoint.next_offset)
                if theirs is not None and theirs > checkpoint.next_offset:
                    # Whole, over another writer's head further on: not set back either.
                    raise CheckpointBehind(topic, partition)
        self._write(self.path(topic, partition, pending=pending), data)
        if pending:
            self._staged[key] = _digest(data)
        else:
            self._heads[key] = _digest(data)

    def _collect(self, topic: str, partition: int) -> None:
        """Delete the segment files no head lists, committed or pending (those a compaction
        replaced, those of an aborted or crashed checkpoint). Only after the new head is
        durable, so a crash never leaves a head without its segments."""
        orphaned = time.time() - ORPHAN_SECONDS
        if topic not in self._swept:
            self._swept.add(topic)
            self._collect_temp(topic, orphaned)
        directory = self.segments_dir(topic, partition)
        if not directory.is_dir():
            return
        listed: set[str] = set()
        for path in (self.path(topic, partition), self.path(topic, partition, pending=True)):
            listed.update(s.name for s in self._head(path, topic, partition) or ())
        others: list[set[str]] = []  # the other writers' pending heads' list, read if needed
        mine = self._mine.setdefault((topic, partition), set())
        for entry in directory.iterdir():
            try:
                self._collect_one(
                    entry, (topic, partition), listed=listed, mine=mine, orphaned=orphaned,
                    others=others,
                )  # fmt: skip
            except (OSError, CheckpointError) as error:
                # The checkpoint is durable already: a leftover is no reason to fail it (a
                # folder such as lost+found or .snapshot, a busy NFS file, EACCES; another
                # writer's unreadable pending head). Kept, and said (a helper's finding).
                log_event(log, logging.WARNING, "checkpoint-collect-skipped", path=str(entry),
                          error=str(error))  # fmt: skip

    def _collect_temp(self, topic: str, orphaned: float) -> None:
        """Delete the temp files beside a topic's heads (``.<p>.ckpt.<writer>.tmp``, a
        pending head's, ``.<name>.<writer>.adopting``) that a crash left: this store's own
        at once (it writes and promotes them on this thread: none is in hand now), another
        writer's once orphaned. Only segment folders were collected: one file more per
        crash, for ever (a helper's finding, session 26). Once per topic and store (a crash's
        leftovers are there before it starts): a listing per partition checkpointed cost
        seconds per checkpoint with a thousand partitions (a review's finding)."""
        try:
            entries = list((self.directory / topic).iterdir())
        except OSError:
            return
        own = (f".{self.writer}.tmp", f".{self.writer}.adopting")
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith((".tmp", ".adopting"))):
                continue
            try:
                # The inode's change time too: an .adopting link shares the pending head's
                # mtime, hours old, but its ctime is the link's (a review's finding).
                due = name.endswith(own) or _changed_before(entry, orphaned)
                if due and entry.is_file() and not entry.is_symlink():
                    entry.unlink(missing_ok=True)
            except OSError as error:
                log_event(log, logging.WARNING, "checkpoint-collect-skipped", path=str(entry),
                          error=str(error))  # fmt: skip

    def _collect_one(
        self,
        entry: Path,
        key: tuple[str, int],
        *,
        listed: set[str],
        mine: set[str],
        orphaned: float,
        others: list[set[str]],
    ) -> None:
        """Delete `entry` of a partition's segment folder if no head needs it (:meth:`_collect`;
        `others`: the other writers' listed segments, read once, when first needed)."""
        if not entry.is_file() or entry.is_symlink():
            return  # only files are ever written there
        name = entry.name
        if name.startswith("."):
            # Temp files: our own, or another writer's once orphaned (it died writing).
            if name.endswith(f".{self.writer}.tmp") or _older_than(entry, orphaned):
                entry.unlink(missing_ok=True)
            return
        if name in listed:
            return
        if name in mine or _older_than(entry, orphaned):
            # Written by this store and superseded; or unlisted for long: another writer's
            # (a process before a restart, a crash's orphan). Another writer's segment may
            # be about to be listed again by its head (a worker frozen in the middle of its
            # checkpoint, woken after the group moved on, renames the head it had prepared):
            # so only ORPHAN_SECONDS later. Nor one that another writer's pending head lists:
            # it built on a committed head that listed it.
            if not others:
                others.append(self._listed_by_others(*key, orphaned))
            if name in others[0]:
                return
            entry.unlink(missing_ok=True)
            mine.discard(name)

    def _listed_by_others(self, topic: str, partition: int, orphaned: float) -> set[str]:
        """The segments other writers' pending heads list. A pending head left for
        ORPHAN_SECONDS is deleted instead: its transaction was decided long ago (Kafka
        aborts one open longer than its timeout, 15 minutes at most), and whoever took the
        partition since judged it on restore; this one was left by a writer that staged it
        after that (one the group had left behind)."""
        own = self.path(topic, partition, pending=True)
        listed: set[str] = set()
        for path in self.pending_paths(topic, partition):
            if path == own:
                continue
            if _older_than(path, orphaned):
                path.unlink(missing_ok=True)
                continue
            listed.update(s.name for s in self._head(path, topic, partition) or ())
        return listed

    def promote(self, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """This store's pending checkpoints of these partitions become the committed ones
        (atomic renames, then one fsync per directory): its transaction committed. Returns
        the partitions whose pending checkpoint was gone: another writer, given the
        partition after that commit, judged it on restore first (and promoted it). This
        store then no longer knows the committed head: its next checkpoint there is whole."""
        dirs: set[Path] = set()
        taken = []
        for topic, partition in partitions:
            key = (topic, partition)
            pending = self.path(topic, partition, pending=True)
            staged = self._staged.pop(key, None)
            try:
                pending.replace(self.path(topic, partition))
            except FileNotFoundError:
                taken.append(key)
                self._heads[key] = b""  # no head's digest: the next save is whole
                continue
            if staged is not None:
                self._heads[key] = staged
            else:
                self._heads.pop(key, None)
            dirs.add(pending.parent)
        for directory in dirs:
            _fsync_dir(directory)
        for topic, partition in partitions:
            self._collect(topic, partition)
        return taken

    def adopt(self, topic: str, partition: int, generation: str) -> None:
        """The pending checkpoint of transaction ``generation`` (as
        :meth:`pending_checkpoints` found it) becomes the committed one: its writer died,
        or was left behind by the group, between its transaction's commit and its rename.
        Gone meanwhile is fine if its writer renamed it itself (the committed head is it)."""
        key = (topic, partition)
        found = self._found.get(key, {}).get(generation)
        if found is None:
            raise CheckpointError(
                f"no pending checkpoint of {generation!r} for {topic}[{partition}]"
            )
        path, digest = found
        target = self.path(topic, partition)
        # A second name for the file judged, then checked, then renamed over the head: its
        # writer (one the group left behind, alive) may have renamed the judged file itself
        # and staged its next transaction under the same name since; renamed as found, that
        # next one became the head (a helper's finding). The original name keeps the file
        # until the rename (a crash in between loses nothing: the next restore judges it
        # again), and is removed after it.
        claimed = path.with_name(f".{path.name}.{self.writer}.adopting")
        claimed.unlink(missing_ok=True)
        try:
            os.link(path, claimed)
        except FileNotFoundError:
            now = self._read_head(topic, partition)
            if now is None or now[2] != digest:
                raise CheckpointError(
                    f"the pending checkpoint {path.name} of {topic}[{partition}] vanished "
                    "before it could be promoted"
                ) from None
        except OSError:  # no hard links on this filesystem: renamed as found
            path.replace(target)
        else:
            try:
                if _digest(claimed.read_bytes()) != digest:
                    raise CheckpointPendingChanged(
                        f"the pending checkpoint {path.name} of {topic}[{partition}] changed "
                        "while it was judged"
                    )
                claimed.replace(target)
                with contextlib.suppress(OSError):  # its first name, unless replaced since
                    if path.samefile(target):
                        path.unlink()
            finally:
                claimed.unlink(missing_ok=True)
        self._heads[key] = digest
        _fsync_dir(target.parent)
        self._collect(topic, partition)

    def abort(self) -> None:
        """The transaction of this store's pending checkpoints was aborted: delete them
        (only its own: another writer's are the next restore's to judge)."""
        for topic, partition in list(self._staged):
            self.path(topic, partition, pending=True).unlink(missing_ok=True)
        self._staged.clear()

    def discard_pending(self, topic: str, partition: int) -> None:
        """Delete every writer's pending checkpoint of the partition: the resume rule
        judged them (none committed, or one promoted before)."""
        for path in self.pending_paths(topic, partition):
            path.unlink(missing_ok=True)
        self._staged.pop((topic, partition), None)
        self._found.pop((topic, partition), None)

    # ------------------------------------------------------------------ snapshots

    def snapshot_store(self, name: str) -> CheckpointStore:
        """The store of snapshot ``name``: the same layout, under ``@snapshots/<name>``."""
        return CheckpointStore(self.directory / SNAPSHOTS / name)

    def snapshot_names(self) -> list[str]:
        """The snapshots kept in this store's directory (``@snapshots/<name>``), by name."""
        try:
            return sorted(p.name for p in (self.directory / SNAPSHOTS).iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def snapshot_path(self, name: str, topic: str, partition: int) -> Path:
        return self.snapshot_store(name).path(topic, partition)

    def load_snapshot(self, name: str, topic: str, partition: int) -> Checkpoint | None:
        """A partition's checkpoint as kept in snapshot `name`; None if it holds none."""
        return self.snapshot_store(name).load(topic, partition)

    def keep(self, name: str, topic: str, partition: int) -> Path | None:
        """Copy the partition's checkpoint file and its segments, byte for byte, into
        snapshot `name` (the segments first, the file last, each atomically; durable when
        this returns); its path, or None when there is no file. The engine keeps a
        checkpoint this way before it discards its state on purpose."""
        try:
            data = self.path(topic, partition).read_bytes()
        except FileNotFoundError:
            return None
        _, segments = decode_head(data)
        kept = self.snapshot_store(name)
        if segments is not None:
            source, target_dir = (
                self.segments_dir(topic, partition),
                kept.segments_dir(topic, partition),
            )
            _make_dirs(target_dir)
            for segment in segments:
                self._write(target_dir / segment.name, (source / segment.name).read_bytes())
            _fsync_dir(target_dir)
        target = kept.path(topic, partition)
        _make_dirs(target.parent)
        self._write(target, data)
        _fsync_dir(target.parent)
        return target
