"""An event time is the millisecond it falls in, in every format (helper-94's finding: a
time of 59.9996 s was rounded into the next minute's window as epochSeconds or iso8601,
and an epochMillis float was truncated toward zero: three rules, one wrong for each)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.windowing import ISO_MAX_MS, ISO_MIN_MS, floor_ms, time_converter

#: Times a float in seconds tells to the microsecond (a unit in its last place is under half
#: a microsecond up to 2**41 ms, the year 2039; floor_ms allows one unit of the product's).
NEAR = 2**41 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def convert(fmt: str, value: object) -> int:
    return time_converter("ts", fmt)(value)


@settings(max_examples=1000)
@given(
    ms=st.integers(-NEAR, NEAR)
    | st.integers(NEAR - 10**7, NEAR)
    | st.integers(-NEAR, 10**7 - NEAR),
    micros=st.integers(0, 999) | st.sampled_from([0, 1, 998, 999]),
)
def test_a_time_within_a_millisecond_falls_in_it(ms: int, micros: int) -> None:
    total_us = ms * 1000 + micros
    seconds = str(Decimal(total_us).scaleb(-6))  # the exact decimal text
    assert convert("epochSeconds", float(seconds)) == ms, seconds
    assert convert("epochSeconds", seconds) == ms, seconds
    assert convert("epochMillis", total_us / 1000) == ms, total_us
    iso = (EPOCH + timedelta(microseconds=total_us)).isoformat().replace("+00:00", "Z")
    assert convert("iso8601", iso) == ms, iso


@settings(max_examples=300)
@given(ms=st.integers(ISO_MIN_MS, ISO_MAX_MS), micros=st.integers(0, 999))
def test_iso_times_are_exact_over_the_whole_range(ms: int, micros: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ms * 1000 + micros)
    assert convert("iso8601", moment.isoformat()) == ms


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (1.001 * 1000, 1001),  # the product's float error: 1000.9999999999999
        (0.1 * 3 * 1000, 300),  # 300.00000000000006
        (1767225659999.6, 1767225659999),
        (-60000.5, -60001),  # before 1970: floored, not truncated toward zero
        (-0.0, 0),
        (5.0, 5),
    ],
)
def test_floor_ms(value: float, want: int) -> None:
    assert floor_ms(value) == want


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_time_is_refused_with_an_event_time_error(value: float) -> None:
    for fmt in ("epochSeconds", "epochMillis"):
        with pytest.raises(Exception, match="is not") as caught:
            convert(fmt, value)
        assert type(caught.value).__name__ == "EventTimeError"
