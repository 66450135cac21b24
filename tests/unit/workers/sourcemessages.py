"""A consumed message as the engine reads it (``processing.SourceMessage``), for the workers'
unit tests: any value bytes (poison, or None: a tombstone) at an offset and a time the test
chooses. It satisfies the engine's Protocol as it is, so a batch of them is a
``list[SourceMessage]`` when annotated so (a list is invariant), without a cast; and the two
batch paths as one type. The repartition topic's own stand-in, with headers, is
``hopmessages.Msg``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from streamherd.workers.fusing import FusedBatch
from streamherd.workers.processing import (
    Processor,
    SourceMessage,
    WindowBatch,
    decode_json,
    window_batch,
)
from streamherd.workers.windowing import PartitionWindows

#: 2026-01-01T00:00:00Z in milliseconds: the default event time of the tests' records.
BASE: Final = 1_767_225_600_000


@dataclass(frozen=True)
class Msg:
    """A message of topic ``in`` with key ``k``; ``value_`` None is a tombstone."""

    offset_: int
    value_: bytes | None
    timestamp_ms: int = BASE
    partition_: int = 0

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes | None:
        return self.value_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.timestamp_ms)  # TIMESTAMP_CREATE_TIME, as SyntheticMessage

    def error(self) -> None:
        return None


#: One of the two batch paths over a partition's windows: the fused function or the generic
#: ``window_batch`` (they must agree on every batch).
BatchPath = Callable[[list[SourceMessage], PartitionWindows], WindowBatch]


def batch_paths(fused: FusedBatch, processor: Processor) -> list[BatchPath]:
    """The fused batch function and the generic one over JSON records, for ``processor``."""

    def generic(messages: list[SourceMessage], windows: PartitionWindows) -> WindowBatch:
        return window_batch(decode_json, processor, windows, messages)

    return [fused, generic]
