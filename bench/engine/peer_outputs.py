"""The window results of the engine and of its peers, read back and compared window by window.

Used by bench_peers.py (and unit-tested in tests/unit/test_bench_peer_outputs.py): the
benchmark's claim of *equal work* rests on this comparison. Every implementation writes one
record per closed 60 s tumbling window of one user, in its own format:

- the streamherd engine: ``{"key": user, "window_start": ISO-8601, "clicks": n, "bytes": s}``;
- Quix Streams: Kafka key = user, value ``{"start": ms, "end": ms, "clicks": n, "bytes": s}``;
- the peers written for this benchmark (Kafka Streams, Flink, Bytewax):
  ``{"user": user, "start": ms, "clicks": n, "bytes": s}``.

Each is parsed into ``{(user, window start in ms): (count, sum)}``. The same window written
twice with the same result (an at-least-once replay) counts as a duplicate, with two different
results as a conflict.

Which windows must be equal: the engine closes a window when the event time of its source
partition passes the window's end (no lateness) and leaves the last windows open when the input
stops; so do Kafka Streams (stream time per task, i.e. per partition) and Quix. Flink's
watermark is the minimum over partitions; Bytewax here uses the event time per key. On this
workload (every partition carries every second of event time) the rules close the same windows,
except at the end of the input: a window whose end lies after ``closed_until`` (the smallest
last event time over the input's partitions) may be closed by one rule and open by another, and
Flink (its bounded source ends with the watermark at +infinity) and Bytewax close every window
at the end of their input. Those windows are counted on each side and left out; every window
that ends at or before ``closed_until`` must be present on both sides with the same count and
sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

Window = tuple[str, int]  # (user, window start, ms since the epoch)
Result = tuple[int, int]  # (count, sum of bytes)
Records = Iterable[tuple[bytes | None, bytes | None]]  # (Kafka key, value)
WINDOW_MS = 60_000


@dataclass
class Outputs:
    """One implementation's window results."""

    windows: dict[Window, Result] = field(default_factory=dict)
    duplicates: int = 0  # a window written again with the same result
    conflicts: list[Window] = field(default_factory=list)  # ... with another result

    def add(self, window: Window, result: Result) -> None:
        seen = self.windows.get(window)
        if seen is None:
            self.windows[window] = result
        elif seen == result:
            self.duplicates += 1
        else:
            self.conflicts.append(window)


def _parse(records: Records, row: Callable[[bytes | None, Any], tuple[Window, Result]]) -> Outputs:
    out = Outputs()
    for key, value in records:
        if value is None:
            raise ValueError(f"a window result without a value (key {key!r})")
        window, result = row(key, orjson.loads(value))
        out.add(window, result)
    return out


def _engine_row(_key: bytes | None, row: Any) -> tuple[Window, Result]:
    start = datetime.fromisoformat(row["window_start"].replace("Z", "+00:00"))
    return (row["key"], round(start.timestamp() * 1000)), (row["clicks"], row["bytes"])


def _quix_row(key: bytes | None, row: Any) -> tuple[Window, Result]:
    if key is None:
        raise ValueError(f"a Quix window result without a key: {row}")
    return (key.decode(), int(row["start"])), (row["clicks"], row["bytes"])


def _peer_row(_key: bytes | None, row: Any) -> tuple[Window, Result]:
    return (row["user"], int(row["start"])), (row["clicks"], row["bytes"])


def engine_outputs(records: Records) -> Outputs:
    return _parse(records, _engine_row)


def quix_outputs(records: Records) -> Outputs:
    return _parse(records, _quix_row)


def peer_outputs(records: Records) -> Outputs:
    return _parse(records, _peer_row)


@dataclass(frozen=True)
class Comparison:
    """A peer's windows against the reference's (the engine's)."""

    compared: int  # windows ending at or before closed_until in the reference
    missing: list[Window]  # ... of those, absent from the peer
    extra: list[Window]  # closed in the peer, absent from the reference
    different: list[Window]  # in both, another count or sum
    conflicts: list[Window]  # the peer wrote one window with two results
    duplicates: int  # the peer wrote one window twice, the same result
    open_reference: int  # windows ending after closed_until, in the reference (not compared)
    open_peer: int  # ... in the peer (e.g. Bytewax's flush at the end of its input)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.conflicts)

    def describe(self) -> str:
        if self.equal:
            text = f"identical ({self.compared:,} windows)"
        else:
            parts = [
                f"{len(items)} {what} (e.g. {sorted(items)[:2]})"
                for what, items in (
                    ("missing", self.missing),
                    ("extra", self.extra),
                    ("with another count/sum", self.different),
                    ("written with two results", self.conflicts),
                )
                if items
            ]
            text = f"DIFFERENT of {self.compared:,} windows: " + ", ".join(parts)
        if self.duplicates:
            text += f"; {self.duplicates:,} written twice"
        if self.open_peer or self.open_reference:
            text += (
                f"; still open at the end of the input, not compared: "
                f"{self.open_reference:,} in the engine's output, {self.open_peer:,} in this one"
            )
        return text


def compare(reference: Outputs, peer: Outputs, closed_until: int) -> Comparison:
    """Compare every window that ends at or before ``closed_until`` (event time, ms)."""

    def closed(window: Window) -> bool:
        return window[1] + WINDOW_MS <= closed_until

    ref = {w: r for w, r in reference.windows.items() if closed(w)}
    got = {w: r for w, r in peer.windows.items() if closed(w)}
    return Comparison(
        compared=len(ref),
        missing=sorted(set(ref) - set(got)),
        extra=sorted(set(got) - set(ref)),
        different=sorted(w for w in set(ref) & set(got) if ref[w] != got[w]),
        conflicts=sorted(w for w in peer.conflicts if closed(w)),
        duplicates=peer.duplicates,
        open_reference=len(reference.windows) - len(ref),
        open_peer=len(peer.windows) - len(got),
    )
