"""The engine's cost limits, in one place: what an expression, a record and a window may cost.

Used by ``streamherd.workers.expressions`` (the static limits at compile time, the run-time
budget of every operation an expression performs), ``streamherd.workers.values`` (key
shapes), ``streamherd.workers.windowing`` (windows per record) and ``streamherd.workers.sinks``
(dead letters that must fit the producer's message size). Manifest validation calls the
same functions (:func:`check_window_count`; ``expressions.compile_expression`` applies the
static expression limits), so the engine and ``streamherd validate`` refuse the same things.

Why limits at all: one hostile record or expression must not be able to make a worker build
a gigabyte string, an integer whose decimal form Python refuses to write, or 86 million
windows. Each limit is far above what a real pipeline needs (docs/engine.md, "Limits").
"""

from __future__ import annotations

import sys
from typing import Final

__all__ = [
    "MAX_COMPOSITE_KEY_DEPTH",
    "MAX_COMPOSITE_KEY_ITEMS",
    "MAX_EXPRESSION_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_HELD_STRING_BYTES",
    "MAX_HOP_ENTRY_BYTES",
    "MAX_INT_BITS",
    "MAX_KEY_BYTES",
    "MAX_NUMBER_LITERAL",
    "MAX_ROUND_DIGITS",
    "MAX_SEQUENCE_LENGTH",
    "MAX_STRING_LENGTH",
    "MAX_STRING_LITERAL",
    "MAX_WINDOWS_PER_RECORD",
    "RECURSION_LIMIT",
    "LimitError",
    "check_window_count",
    "ensure_recursion_headroom",
    "windows_per_record",
]


class LimitError(ArithmeticError):
    """A record whose evaluation went over a limit; dead-lettered with reason ``limit``."""


# ---------------------------------------------------------------- static (compile time)

#: Characters in one expression.
MAX_EXPRESSION_LENGTH: Final = 4096
#: Nesting of one expression: brackets, operators, unary chains, calls, dotted paths.
MAX_EXPRESSION_DEPTH: Final = 64
#: Characters of one string literal (quotes included).
MAX_STRING_LITERAL: Final = 1024
#: Characters of one number literal (``1.7976931348623157e308`` has 22).
MAX_NUMBER_LITERAL: Final = 64

# ---------------------------------------------------------------- run time (per record)

#: Bits of an integer an expression computes (about 1233 decimal digits: far from Python's
#: 4300-digit limit on int/str conversion, so every such integer can be written as text).
MAX_INT_BITS: Final = 4096
#: Characters of a string an expression computes (joins, ``str()``, ``upper()``, ...). An
#: expression holds at most one such value per nesting level while it is evaluated, so the
#: worst case is MAX_EXPRESSION_DEPTH x 256 Ki characters x 4 bytes = 64 MiB.
MAX_STRING_LENGTH: Final = 1 << 18
#: Items of an array an expression computes (``tags + more``).
MAX_SEQUENCE_LENGTH: Final = 1 << 16
#: ``round(x, n)``: ``abs(n)`` at most this (``round(5, -10**9)`` would compute 10**10**9).
MAX_ROUND_DIGITS: Final = 400
#: A composite (array) key: nesting and items.
MAX_COMPOSITE_KEY_DEPTH: Final = 8
MAX_COMPOSITE_KEY_ITEMS: Final = 64

# ---------------------------------------------------------------- state (per record)
#
# What one record may put into a window's state, in bytes of its JSON form as a checkpoint
# writes it (escapes counted): a window's entry is one Kafka record of the changelog (and a
# min/max holds one value it has seen), so key + 32 aggregates' strings stay well under
# librdkafka's message.max.bytes (1,000,000) whatever the backend: a record is refused by
# its own values, so volume and changelog pipelines give the same results (decision 0168).

#: A window key's JSON form (``"..."`` with its quotes; an array's whole text).
MAX_KEY_BYTES: Final = 65_536
#: A string a min/max aggregate takes (its JSON form, quotes included).
MAX_HELD_STRING_BYTES: Final = 16_384
#: One record's entry in a repartition message (its key, event time, values, and its source
#: key and value, which a dead letter downstream holds) with the message's key (the window
#: key's text): one Kafka message with its framing, under librdkafka's default
#: message.max.bytes (1,000,000).
MAX_HOP_ENTRY_BYTES: Final = 1_000_000 - 16_384

# ---------------------------------------------------------------- windows

#: Windows one record belongs to (size / slide of a hopping window): a day of windows
#: sliding every 24 s, or an hour sliding every second. Each is one accumulator per key.
MAX_WINDOWS_PER_RECORD: Final = 3600


#: Python's recursion limit in a worker. A decoded record is at most 1024 levels deep (the
#: JSON decoder's limit), and comparing, joining or printing such a value recurses once per
#: level: with this headroom no record makes it raise RecursionError, so the outcome never
#: depends on how deep in the stack the batch path evaluating it is (fused or generic).
RECURSION_LIMIT: Final = 10_000


def ensure_recursion_headroom() -> None:
    """Raise the interpreter's recursion limit to :data:`RECURSION_LIMIT` (never lower it)."""
    if sys.getrecursionlimit() < RECURSION_LIMIT:
        sys.setrecursionlimit(RECURSION_LIMIT)


def windows_per_record(size_ms: int, slide_ms: int) -> int:
    """How many windows one record belongs to (1 for tumbling windows: slide = size)."""
    return max(size_ms // max(slide_ms, 1), 1)


def check_window_count(size_ms: int, slide_ms: int) -> None:
    """Raise ValueError when a window of ``size_ms`` sliding every ``slide_ms`` would put
    one record into more than :data:`MAX_WINDOWS_PER_RECORD` windows."""
    count = windows_per_record(size_ms, slide_ms)
    if count > MAX_WINDOWS_PER_RECORD:
        raise ValueError(
            f"size / slide = {count}: every record would belong to {count} windows, at most "
            f"{MAX_WINDOWS_PER_RECORD} are allowed (make slide longer or size shorter)"
        )
