"""A repartition-topic message as the consumer hands it over, for the unit tests of the
repartition hop (the accessors ``fold_downstream`` and the engine read)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Msg:
    """A message of partition 0 of the repartition topic ``rp``."""

    value_: bytes
    headers_: list[tuple[str, bytes]]
    offset_: int = 0

    def headers(self) -> list[tuple[str, bytes]]:
        return self.headers_

    def value(self) -> bytes:
        return self.value_

    def key(self) -> bytes | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def topic(self) -> str:
        return "rp"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_

    def error(self) -> None:
        return None
