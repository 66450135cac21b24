"""Exact sums and means, the same whatever the order of the values.

Used by ``streamherd.workers.windowing`` (a ``sum``'s accumulator and an ``avg``'s total)
and by ``streamherd.workers.fusing`` (which inlines the integer case and calls :func:`add`
for the rest). Float addition rounds at every step, so a running float sum depends on the
order of its values, and a repartitioned window receives its records in an order that
interleaves source partitions differently on every run. Here the total is kept exactly and
rounded once, when the result is read: the same values in any order give the same bits
(decision 0130).

A total is one of:

- ``None``: no value yet;
- an ``int``: only integers so far (exact at any size, as before; the result is that int);
- a list ``[n, k, flags]``: at least one float came. The finite values add up to exactly
  ``n / 2**k`` (``n`` an int of any size; ``k`` the largest power-of-two denominator among
  the values, at most 1074: every finite float is an integer over such a power, so the
  total is exact and the same whatever the order). ``flags`` records what has no finite
  value: :data:`NAN`, :data:`POS_INF`, :data:`NEG_INF`, and :data:`NOT_NEG_ZERO` once a
  value other than ``-0.0`` came (a sum of nothing but ``-0.0`` is ``-0.0``, as in IEEE
  754; any other zero total is ``0.0``).

:func:`total` reads a sum (the correctly rounded float of the exact total: Python's int
division is correctly rounded; beyond the float range it is an infinity, as IEEE 754
rounding gives) and :func:`mean` an average (the correctly rounded quotient of the exact
total by the count: one rounding, not two). NaN, or both infinities, give NaN (always the
same bits: :data:`CANONICAL_NAN`). The list is plain JSON (with ``values.encode_value`` for
an ``n`` beyond 64 bits), so a checkpoint holds it exactly.
"""

from __future__ import annotations

import math
from typing import Any, Final

__all__ = [
    "CANONICAL_NAN",
    "NAN",
    "NEG_INF",
    "NOT_NEG_ZERO",
    "POS_INF",
    "add",
    "from_float",
    "is_nan",
    "is_total",
    "mean",
    "total",
]

NAN: Final = 1
POS_INF: Final = 2
NEG_INF: Final = 4
NOT_NEG_ZERO: Final = 8
_INFS: Final = POS_INF | NEG_INF
_SPECIAL: Final = NAN | POS_INF | NEG_INF

#: The one NaN a total, a mean, a min or a max gives (0x7ff8000000000000), whatever NaN
#: the values held (their sign and payload would depend on which came first).
CANONICAL_NAN: Final = float("nan")

_MAX_K: Final = 1074  # 2**-1074 is the smallest float: every finite float is n / 2**k, k <= it


def add(prev: Any, value: int | float) -> Any:
    """``prev`` (a total, see the module docstring) plus ``value`` (an int or a float; not a
    bool). A list total is updated in place and returned; the others are new values."""
    if type(value) is int:
        if type(prev) is list:
            prev[0] += value << prev[1]
            prev[2] |= NOT_NEG_ZERO
            return prev
        return value if prev is None else prev + value
    if type(prev) is not list:  # the first float: the ints so far are n over 2**0
        prev = [0, 0, 0] if prev is None else [prev, 0, NOT_NEG_ZERO]
    if value - value == 0.0:  # finite (inf - inf and nan - nan are NaN)
        if value:
            numerator, denominator = value.as_integer_ratio()
            k = denominator.bit_length() - 1
            held = prev[1]
            if k > held:
                prev[0] = (prev[0] << (k - held)) + numerator
                prev[1] = k
            elif k < held:
                prev[0] += numerator << (held - k)
            else:
                prev[0] += numerator
            prev[2] |= NOT_NEG_ZERO
        elif math.copysign(1.0, value) > 0.0:  # +0.0
            prev[2] |= NOT_NEG_ZERO
        return prev
    if math.isnan(value):
        prev[2] |= NAN | NOT_NEG_ZERO
    else:
        prev[2] |= (POS_INF if value > 0.0 else NEG_INF) | NOT_NEG_ZERO
    return prev


def is_nan(value: Any) -> bool:
    """Whether ``value`` is a float NaN (any sign or payload)."""
    return type(value) is float and math.isnan(value)


def _special(flags: int) -> float | None:
    """The result a total's non-finite values impose, or None (they have none)."""
    if not flags & _SPECIAL:
        return None
    if flags & NAN or flags & _INFS == _INFS:
        return CANONICAL_NAN
    return math.inf if flags & POS_INF else -math.inf


def total(prev: Any) -> Any:
    """The value of a sum: None, the int, or the correctly rounded float of a list total."""
    if type(prev) is not list:
        return prev
    numerator, k, flags = prev
    special = _special(flags)
    if special is not None:
        return special
    if not numerator:
        return 0.0 if flags & NOT_NEG_ZERO else -0.0
    try:
        return numerator / (1 << k)  # correctly rounded (CPython's int true division)
    except OverflowError:  # beyond the float range: IEEE 754 rounds it to an infinity
        return math.inf if numerator > 0 else -math.inf


def mean(prev: Any, count: int) -> Any:
    """The average of ``count`` values whose total is ``prev``: None without values, else the
    correctly rounded quotient of the exact total by the count."""
    if not count or prev is None:  # None: a version 1 checkpoint's NaN or infinity
        return None
    if type(prev) is not list:
        try:
            return prev / count  # an int total: int division, correctly rounded
        except OverflowError:  # an int total from a checkpoint written before avg refused
            # integers beyond the float range: the mean is an infinity
            return math.inf if prev > 0 else -math.inf
    numerator, k, flags = prev
    special = _special(flags)
    if special is not None:
        return special
    if not numerator:
        return 0.0 if flags & NOT_NEG_ZERO else -0.0
    try:
        return numerator / (count << k)
    except OverflowError:
        return math.inf if numerator > 0 else -math.inf


def from_float(value: float) -> list[Any]:
    """A float total as a list total (a checkpoint of state version 1 or 2 held its sums as
    running floats: they restore as that exact value)."""
    out = add(None, value)
    assert type(out) is list
    return out


def is_total(value: Any) -> bool:
    """Whether ``value`` is a total of this module's forms (None, an int, ``[n, k, flags]``)."""
    if value is None or type(value) is int:
        return True
    return (
        type(value) is list
        and len(value) == 3
        and all(type(v) is int for v in value)
        and 0 <= value[1] <= _MAX_K
        and 0 <= value[2] < 2 * NOT_NEG_ZERO
    )
