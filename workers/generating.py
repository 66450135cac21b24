"""The generator source: synthetic click events, deterministic by seed, in simulated partitions.

Used by the engine (``streamherd.workers.engine``) for demos and the local run mode
(``streamherd run``). Records go through exactly the same path as Kafka records: they carry
a topic (:data:`GENERATOR_TOPIC`), a partition and an offset, are checkpointed per partition
and, after a restart, the generator replays its sequence and skips what each partition's
checkpoint already holds. A user's clicks always land in the same partition (``user index
mod partitions``), like a Kafka topic keyed by user, so per-partition windows keyed by user
are global results.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any, Final

from streamherd.workers.config import GeneratorSourceConfig
from streamherd.workers.processing import SyntheticMessage

GENERATOR_TOPIC: Final = "generator"

PAGES: Final = ("/", "/products", "/products/42", "/cart", "/checkout", "/search", "/healthz")
_STATUS: Final = (200,) * 90 + (301,) * 2 + (404,) * 5 + (500,) * 3


def wall_clock_ms() -> int:
    """Now, in epoch ms: the origin of a sequence whose config names none."""
    return int(time.time() * 1000)


class ClickGenerator:
    """Endless (or ``count``-long) deterministic stream of {user, page, bytes, status, ...}."""

    def __init__(
        self,
        config: GeneratorSourceConfig,
        resume: Mapping[int, int] | None = None,
        *,
        origin_ms: int | None = None,
    ):
        """`resume`: per partition, the offset to go on from; `origin_ms`: the event time of
        the first record when the config names none (startTimeMs), the one a checkpoint of
        this sequence recorded; else the wall clock now."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._index = 0
        self._offsets = [0] * config.partitions
        self._resume = dict(resume or {})
        if config.start_time_ms is not None:
            origin_ms = config.start_time_ms
        self.start_ms = origin_ms if origin_ms is not None else wall_clock_ms()
        self._started = time.monotonic()
        self.generated = 0

    @property
    def partitions(self) -> range:
        return range(self.config.partitions)

    @property
    def exhausted(self) -> bool:
        return self.config.count is not None and self._index >= self.config.count

    def record(self, index: int) -> tuple[int, dict[str, Any]]:
        """The next record of the sequence (``index`` must be the next one) and its user."""
        rng = self._rng
        user = rng.randrange(self.config.keys)
        record = {
            "user": f"user-{user}",
            "page": PAGES[rng.randrange(len(PAGES))],
            "bytes": rng.randint(200, 20_000),
            "status": _STATUS[rng.randrange(len(_STATUS))],
            "latency_ms": rng.randint(1, 800),
            "ts": self.start_ms + index * self.config.time_step_ms,
        }
        return user, record

    def poll(self, max_records: int) -> list[SyntheticMessage]:
        """Up to ``max_records`` messages; paced to ``rate`` when one is set."""
        cfg = self.config
        limit = max_records
        if cfg.count is not None:
            limit = min(limit, cfg.count - self._index)
        if cfg.rate is not None:
            due = int((time.monotonic() - self._started) * cfg.rate) + 1 - self._index
            if due <= 0:
                time.sleep(min(1.0 / cfg.rate, 0.1))
                return []
            limit = min(limit, due)
        out: list[SyntheticMessage] = []
        parts = cfg.partitions
        for _ in range(max(limit, 0)):
            user, record = self.record(self._index)
            self._index += 1
            partition = user % parts
            offset = self._offsets[partition]
            self._offsets[partition] = offset + 1
            if offset < self._resume.get(partition, 0):
                continue  # already reflected in this partition's checkpoint
            out.append(
                SyntheticMessage(
                    GENERATOR_TOPIC,
                    partition,
                    offset,
                    record["user"].encode(),
                    record,
                    record["ts"],
                )
            )
        self.generated += len(out)
        return out

    def end_offsets(self) -> dict[int, int]:
        """Next offset per partition so far (the generator's "log end")."""
        return dict(enumerate(self._offsets))
