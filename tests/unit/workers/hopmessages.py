"""Repartition-topic and source messages as the consumer hands them over, for the unit tests
of the repartition hop (the accessors the hop's two ends and the engine read), and what an
upstream of format 1 wrote (the reference format 3 is compared with)."""

from __future__ import annotations

from dataclasses import dataclass

from streamherd.workers.processing import Failure, Item, kafka_timestamp
from streamherd.workers.repartitioning import (
    EXACT_HEADER,
    UPSTREAM_HEADER,
    encode_hop,
    upstream_header,
)
from streamherd.workers.values import canonical_key, key_text
from streamherd.workers.windowing import WindowPlan


@dataclass(frozen=True)
class Msg:
    """A message of partition 0 of the repartition topic ``rp``."""

    value_: bytes
    headers_: list[tuple[str, bytes]]
    offset_: int = 0
    timestamp_: int | None = None  # the producer's (create time) when set

    def headers(self) -> list[tuple[str, bytes]]:
        return self.headers_

    def value(self) -> bytes:
        return self.value_

    def key(self) -> bytes | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0) if self.timestamp_ is None else (1, self.timestamp_)

    def topic(self) -> str:
        return "rp"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_

    def error(self) -> None:
        return None


@dataclass(frozen=True)
class SourceMsg:
    """A message of a source partition (``src``), as the upstream step reads it."""

    partition_: int
    offset_: int
    value_: bytes | None = None
    key_: bytes | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def value(self) -> bytes | None:
        return self.value_

    def key(self) -> bytes | None:
        return self.key_

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def topic(self) -> str:
        return "src"

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def error(self) -> None:
        return None


def format_1(
    plan: WindowPlan,
    items: list[Item],
    *,
    partition: int,
    top: int | None,
    failures: list[Failure],
) -> tuple[list[tuple[str, Msg]], int | None]:
    """What an upstream of format 1 (the engine before format 3, refusing records by their
    values upstream as it does now) wrote for one source batch of topic ``src``: per
    surviving record its key text and its message (the JSON record, its
    ``streamherd.upstream`` and ``streamherd.exact`` headers); and the new maximum."""
    out: list[tuple[str, Msg]] = []
    for record, m in items:
        offset = m.offset()
        assert offset is not None
        try:
            key = canonical_key(plan.key(record))
            stamp = kafka_timestamp(m)
            event_ms = plan.event_time(record, stamp if plan.kafka_time else None)
            plan.values(record)  # a record its window refuses is dead-lettered here
            value, exact = encode_hop(record)
        except Exception as error:  # the record's fault, dead-lettered, as the engine did
            failures.append(Failure(m, "expression", error))
            continue
        # eventTime.maxAhead as format 3's upstream judges it, so that both formats are
        # compared on the same records (a real format-1 writer predates the rule; the
        # downstream does not judge format 1).
        if top is None or event_ms - top > plan.ahead_ms:
            refused = plan.too_far_ahead(event_ms, top, stamp)
            if refused is not None:
                failures.append(Failure(m, "expression", refused))
                continue
        headers = [(UPSTREAM_HEADER, upstream_header("src", partition, offset, top))]
        if exact is not None:
            headers.append((EXACT_HEADER, exact))
        when = stamp if stamp is not None and stamp > 0 else None  # as the engine produced it
        out.append((key_text(key), Msg(value, headers, offset, when)))
        if top is None or event_ms > top:
            top = event_ms
    return out, top
