"""Exact totals (workers/summing.py): the same bits in any order, and the right bits.

Oracles independent of the module: ``math.fsum`` (correctly rounded, C) for finite floats,
``fractions.Fraction`` arithmetic for mixed integers and floats, and IEEE 754's rules for NaN,
the infinities and the sign of zero.
"""

from __future__ import annotations

import contextlib
import math
import struct
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers import summing
from streamherd.workers.values import decode_value, encode_value

FLOAT_MAX = 1.7976931348623157e308


def bits(value: Any) -> Any:
    """A value with its floats as their bits (NaN == NaN, -0.0 != 0.0)."""
    if type(value) is float:
        return ("f", struct.pack(">d", value).hex())
    if type(value) is list:
        return [bits(v) for v in value]
    return value


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, width=64),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, FLOAT_MAX, -FLOAT_MAX, 1e308, 0.1, 1.5]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([2**1100, -(2**1100), 10**400]),
)


def fold(values: list[Any]) -> Any:
    held = None
    for v in values:
        held = summing.add(held, v)
    return held


def oracle(values: list[Any]) -> Any:
    """The IEEE 754 sum of the values, computed exactly and rounded once."""
    if not any(type(v) is float for v in values):
        return sum(values) if values else None
    finite = [v for v in values if type(v) is int or math.isfinite(v)]
    specials = [v for v in values if type(v) is float and not math.isfinite(v)]
    if any(v != v for v in specials) or (math.inf in specials and -math.inf in specials):
        return math.nan
    if specials:
        return specials[0]
    exact = sum((Fraction(v) for v in finite), Fraction(0))
    if exact == 0:
        negative = all(type(v) is float and math.copysign(1.0, v) < 0 for v in values)
        return -0.0 if negative else 0.0
    if all(type(v) is float for v in values) and abs(exact) < Fraction(FLOAT_MAX) / 2:
        # The C oracle, where its result cannot overflow; its partial sums still may
        # (1e308 + 8e307 - 9e307 raises), and then the exact sum rounded decides.
        with contextlib.suppress(OverflowError):
            return math.fsum(values)
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


@settings(max_examples=400, deadline=None)
@given(st.lists(numbers, max_size=12), st.randoms(use_true_random=False))
def test_a_total_is_the_same_in_any_order(values: list[Any], rnd: Any) -> None:
    shuffled = list(values)
    rnd.shuffle(shuffled)
    assert bits(fold(values)) == bits(fold(shuffled))
    assert bits(summing.total(fold(values))) == bits(summing.total(fold(shuffled)))


@settings(max_examples=400, deadline=None)
@given(st.lists(numbers, max_size=12))
def test_a_total_is_the_exact_sum_rounded_once(values: list[Any]) -> None:
    got = summing.total(fold(values))
    want = oracle(values)
    if type(want) is float and want != want:
        assert bits(got) == bits(summing.CANONICAL_NAN)  # one NaN, whatever the inputs held
    else:
        assert bits(got) == bits(want)
        assert type(got) is type(want)  # ints stay ints until a float comes


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers, min_size=1, max_size=12))
def test_a_mean_is_the_exact_quotient_rounded_once(values: list[Any]) -> None:
    got = summing.mean(fold(values), len(values))
    specials = [v for v in values if type(v) is float and not math.isfinite(v)]
    if specials:  # the mean of an infinity is that infinity; of NaN or both, NaN
        want = oracle(specials)
        assert bits(got) == bits(summing.CANONICAL_NAN if want != want else want)
        return
    exact = sum((Fraction(v) for v in values), Fraction(0)) / len(values)
    if exact == 0:
        assert bits(got) == bits(oracle(values) / len(values))  # the sign of a zero total
        return
    try:
        want = float(exact)
    except OverflowError:  # only integers can be that large (an avg refuses them first)
        want = math.inf if exact > 0 else -math.inf
    assert bits(got) == bits(want)


def test_rounding_once_differs_from_rounding_at_each_step() -> None:
    # The running float sum of these is 0.0 or 1.0 depending on the order; the exact one is 1.
    values = [1e100, 1.0, -1e100]
    assert (1e100 + 1.0) - 1e100 == 0.0
    assert summing.total(fold(values)) == 1.0
    # Beyond the float range on the way, back within it at the end.
    assert summing.total(fold([FLOAT_MAX, FLOAT_MAX, -FLOAT_MAX])) == FLOAT_MAX
    assert summing.mean(fold([FLOAT_MAX, FLOAT_MAX]), 2) == FLOAT_MAX
    # An integer beyond the float range and a float have a sum now (no refusal).
    assert summing.total(fold([2**1100, 0.5, -(2**1100)])) == 0.5
    assert summing.total(fold([2**1100, 0.5])) == math.inf


def test_zeros_nan_and_infinities_follow_ieee_754() -> None:
    assert bits(summing.total(fold([-0.0]))) == bits(-0.0)
    assert bits(summing.total(fold([-0.0, -0.0]))) == bits(-0.0)
    assert bits(summing.total(fold([-0.0, 0.0]))) == bits(0.0)
    assert bits(summing.total(fold([-0.0, 0]))) == bits(0.0)  # Python: -0.0 + 0 == 0.0
    assert bits(summing.total(fold([1.0, -1.0]))) == bits(0.0)
    assert summing.total(fold([math.inf, 1.0])) == math.inf
    assert summing.total(fold([-math.inf, 2**1100])) == -math.inf
    assert bits(summing.total(fold([math.inf, -math.inf]))) == bits(summing.CANONICAL_NAN)
    negative_nan = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]
    assert bits(summing.total(fold([negative_nan]))) == bits(summing.CANONICAL_NAN)
    assert summing.total(None) is None
    assert summing.mean(None, 0) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers, max_size=12))
def test_a_total_survives_its_state_form_bit_for_bit(values: list[Any]) -> None:
    held = fold(values)
    assert summing.is_total(held)
    restored = decode_value(encode_value(held))
    assert bits(restored) == bits(held)
    assert bits(summing.total(restored)) == bits(summing.total(held))


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_running_float_of_an_older_checkpoint_restores_as_that_value(value: float) -> None:
    held = summing.from_float(value)
    assert summing.is_total(held)
    want = summing.CANONICAL_NAN if value != value else value
    assert bits(summing.total(held)) == bits(want)
