"""State backends behind the engine's ``StateBackend`` seam (``streamherd.workers.seams``).

``VolumeBackend``: per-partition checkpoint files on a volume (``workers/checkpointing.py``;
all workers of a pipeline share it, ReadWriteMany). ``ChangelogBackend``
(``workers/changelog.py``): a compacted Kafka topic, no volume. ``open_state_backend`` is
the one place that maps a ``WorkerConfig`` to a backend; the engine only sees the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamherd.workers.changelog import ChangelogBackend
from streamherd.workers.checkpointing import Checkpoint, CheckpointStore
from streamherd.workers.config import WorkerConfig
from streamherd.workers.kafkaclients import TransactionalProducer
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.seams import StateBackend


class VolumeBackend:
    """Checkpoint files: state and offset in one atomic file per partition (temp file,
    fsync, rename); exactly-once stages ``<partition>.<writer>.pending.ckpt`` files, promoted by
    renames once the transaction committed (each writer's under its own name: see
    ``CheckpointStore.pending_paths``)."""

    name = "volume"

    def __init__(self, directory: str) -> None:
        self.store = CheckpointStore(directory)

    def prepare(self, partitions: list[tuple[str, int]]) -> None:
        pass  # each file is read when its partition is restored

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        return self.store.load(topic, partition)

    def pending_checkpoints(self, topic: str, partition: int) -> list[Checkpoint]:
        return self.store.pending_checkpoints(topic, partition)

    def save(self, checkpoints: list[Checkpoint], *, group: Any = None) -> None:
        self.store.save(checkpoints)  # files: no broker to fence them (decision 0164)

    def stage(self, checkpoints: list[Checkpoint]) -> None:
        self.store.save(checkpoints, pending=True)

    def promote(self, partitions: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return self.store.promote(partitions)

    def adopt(self, topic: str, partition: int, pending: Checkpoint) -> None:
        self.store.adopt(topic, partition, pending.generation)

    def discard_pending(self, topic: str, partition: int) -> None:
        self.store.discard_pending(topic, partition)

    def abort(self) -> None:
        self.store.abort()  # this writer's pending files (another's are not its to judge)

    def release(self, topic: str, partition: int) -> None:
        pass  # nothing cached

    def keep(self, name: str, topic: str, partition: int) -> str | None:
        kept = self.store.keep(name, topic, partition)
        return None if kept is None else str(kept)

    def load_snapshot(self, name: str, topic: str, partition: int) -> Checkpoint | None:
        return self.store.load_snapshot(name, topic, partition)

    def kept_snapshots(self) -> list[str] | None:
        return self.store.snapshot_names()

    def close(self) -> None:
        pass


def open_state_backend(
    config: WorkerConfig,
    *,
    transactional_id: str,
    transaction: TransactionalProducer | None = None,
    metrics: EngineMetrics | None = None,
    progress: Callable[[], None] | None = None,
) -> StateBackend:
    """The state backend a WorkerConfig names: the changelog topic when
    ``checkpoint.changelog`` is set (on the source's cluster), else the volume's files.
    ``transaction``: exactly-once mode's producer, whose transactions the changelog joins;
    ``transactional_id``: the worker's, from which the changelog's own producer (at-least-once
    mode) takes its id; ``progress``: called as a restore reads records (the engine's
    heartbeat: a long restore is work, not a stuck loop)."""
    changelog = config.checkpoint.changelog
    if changelog is None:
        return VolumeBackend(config.checkpoint.directory)
    source = config.source.kafka
    if source is None:
        raise ValueError("checkpoint.changelog needs a Kafka source (the changelog's cluster)")
    return ChangelogBackend(
        source,
        changelog,
        transactional_id=f"{transactional_id}.changelog",
        transaction=transaction,
        metrics=metrics,
        progress=progress,
    )
